"""The Objective: a model's loss as a function of a flat parameter vector.

Everything that measures geometry in basinscope takes an :class:`Objective`.
It holds a private copy of the user's model (in eval mode, on the chosen device
and dtype), the evaluation data as tensors, and a :class:`ParamSpace` that says
which parameters are the landscape's coordinates. It evaluates

    L(θ) = (1/N) Σ_i ℓ(f(x_i; θ), y_i),      acc(θ) = (1/N) Σ_i [argmax f(x_i; θ) = y_i]

exactly (a dataset mean, not a mean of batch means) for many points θ at once,
through ``torch.func.functional_call`` with parameter dicts built from flat
vectors. The user's model is never written to: evaluations run on the copy, so
the model is untouched even when an evaluation raises or is interrupted.

Fast path for points on lines, planes and rays, ``θ = θ0 + Σ_j c_j d_j``: the
first parametrised layer (Linear, Conv, Embedding) is linear in its weights, so
its output is ``out(θ0) + Σ_j c_j out(d_j)``, computed once per data chunk;
only the rest of the network runs per point, with only the parameters after
the first layer formed per point. The first layer's outputs are kept between
calls with the same origin and directions (a surface evaluates its grid a chunk
at a time). It gives the same numbers as the plain path (to rounding) and is
verified against it before first use.

Batched tail: when the rest of the network is a plain chain of modules (Linear,
Flatten, elementwise activations; an ``nn.Sequential`` MLP or CNN head) and the
loss is a plain ``CrossEntropyLoss``, the tail runs for a fixed block of points
at once, each Linear as one batched matrix product, instead of point by point
(:meth:`Objective._evaluate_batched`). A point's value never depends on how many
points are evaluated at once or on its place among them. Everything else (other
losses, residual or custom forwards, hooks) takes the per-point path.
"""

from __future__ import annotations

import copy
import dataclasses
import fnmatch
import functools
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from ._checks import check_int
from .errors import BasinscopeError

LossFn = Callable[[Tensor, Tensor], Tensor]
Include = Sequence[str] | Callable[[str, Tensor], bool] | None

# Layers whose output is jointly linear in (weight, bias) for a fixed input.
_LINEAR_LAYERS: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.Embedding,
)


class ParamSpace:
    """Which parameters are the landscape's coordinates, and their flat layout.

    Args:
        model: the network whose ``named_parameters()`` define the space.
        include: ``None`` for all trainable parameters; a list of parameter or
            module names or glob patterns (``"fc1"``, ``"layer2.*"``,
            ``"*.weight"``); or a predicate ``(name, param) -> bool``.
        skip_bias_norm: leave every parameter with ``ndim <= 1`` (biases and
            normalisation scales/shifts) fixed, as Li et al. (2018) do for
            their surfaces.

    Coordinates are the selected parameters concatenated in ``named_parameters``
    order; ``offsets[i]:offsets[i]+numels[i]`` is parameter ``names[i]``.
    """

    def __init__(self, model: nn.Module, *, include: Include = None, skip_bias_norm: bool = False):
        named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
        if not named:
            raise BasinscopeError("the model has no trainable parameters to span a landscape")
        chosen = [(n, p) for n, p in named if _selected(n, p, include)]
        if skip_bias_norm:
            chosen = [(n, p) for n, p in chosen if p.ndim > 1]
        if include is not None and not callable(include):
            for pattern in include:
                if not any(_name_matches(n, pattern) for n, _ in named):
                    names = ", ".join(n for n, _ in named[:8])
                    raise BasinscopeError(
                        f"no parameter matches {pattern!r}; parameter names look like {names}"
                    )
        if not chosen:
            raise BasinscopeError("the parameter selection is empty; include at least one tensor")
        self.names: list[str] = [n for n, _ in chosen]
        self.shapes: list[torch.Size] = [p.shape for _, p in chosen]
        self.numels: list[int] = [p.numel() for _, p in chosen]
        self.offsets: list[int] = []
        offset = 0
        for k in self.numels:
            self.offsets.append(offset)
            offset += k
        self.n: int = offset
        self.skip_bias_norm = skip_bias_norm

    def __len__(self) -> int:
        return self.n

    def __repr__(self) -> str:
        return f"ParamSpace(n={self.n}, tensors={len(self.names)})"

    def flatten(self, source: nn.Module | dict[str, Tensor]) -> Tensor:
        """Concatenate the selected parameters of a model (or a name->tensor dict): ``[n]``."""
        params = dict(source.named_parameters()) if isinstance(source, nn.Module) else source
        missing = [n for n in self.names if n not in params]
        if missing:
            raise BasinscopeError(
                f"parameters {missing[:3]} of this space are missing from the model"
            )
        return torch.cat([params[n].detach().reshape(-1) for n in self.names])

    def unflatten(self, vec: Tensor) -> dict[str, Tensor]:
        """Split a flat ``[n]`` vector into a name->tensor dict of views (no copies)."""
        if vec.shape != (self.n,):
            raise BasinscopeError(f"a point must have shape ({self.n},), got {tuple(vec.shape)}")
        return {
            name: vec[o : o + k].view(shape)
            for name, o, k, shape in zip(
                self.names, self.offsets, self.numels, self.shapes, strict=True
            )
        }

    def pieces(self, vec: Tensor) -> Iterator[tuple[str, Tensor]]:
        """``(name, view)`` for each parameter tensor of a flat vector."""
        yield from self.unflatten(vec).items()

    def select(self, names: Sequence[str]) -> ParamSpace:
        """The sub-space of the named parameters, in this space's order (a block of θ)."""
        unknown = [n for n in names if n not in self.names]
        if unknown or not names:
            raise BasinscopeError(
                f"parameter {unknown[0] if unknown else None!r} is not in this space; "
                f"its parameters are {', '.join(self.names[:8])}"
            )
        sub = copy.copy(self)
        keep = [i for i, n in enumerate(self.names) if n in set(names)]
        sub.names = [self.names[i] for i in keep]
        sub.shapes = [self.shapes[i] for i in keep]
        sub.numels = [self.numels[i] for i in keep]
        sub.offsets = [sum(sub.numels[:i]) for i in range(len(keep))]
        sub.n = sum(sub.numels)
        return sub


def _name_matches(name: str, pattern: str) -> bool:
    return name == pattern or name.startswith(pattern + ".") or fnmatch.fnmatchcase(name, pattern)


def _selected(name: str, p: Tensor, include: Include) -> bool:
    if include is None:
        return True
    if callable(include):
        return bool(include(name, p))
    return any(_name_matches(name, pattern) for pattern in include)


@dataclass(frozen=True)
class _Step:
    """One module of the chain after the first layer (see :class:`_Chain`)."""

    kind: str  # "linear", "flatten", "exact" (ReLU-like, any layout), "pointwise"
    path: str
    relu: bool = False  # an nn.ReLU (fused with the addition before it)
    weight: str = ""  # full parameter names of a Linear
    bias: str | None = None
    shape: tuple[int, int] = (0, 0)  # a Linear's (out, in)


@dataclass(frozen=True)
class _Chain:
    """The network after the first layer when it is a plain chain of modules.

    Every module's only input is the previous module's output, the model returns
    the last one's, and each is a Linear, a Flatten or a parameter-free
    elementwise activation; then many points can run at once as batched matrix
    products (see :meth:`Objective._evaluate_batched`).
    """

    steps: tuple[_Step, ...]
    classes: int  # width of the output (class scores)
    width: int  # largest per-example activation size along the chain


@dataclass(frozen=True)
class _FirstLayer:
    """The first parametrised layer, when the fast path applies to it."""

    path: str  # module path in the model
    weight: str  # full parameter names
    bias: str | None
    chain: _Chain | None = None  # the rest of the network, when it can run batched


# ---------------------------------------------------------------- reading data
# How many items of a Dataset are read twice to catch random transforms.
_REREAD = 8


def _as_tensors(data: Any) -> tuple[Tensor, Tensor, bool]:
    """Materialise ``(X, y)``, a ``Dataset`` or a ``DataLoader`` as two tensors.

    Returns ``(x, y, fresh)``: ``fresh`` is False when ``x``/``y`` may share memory
    with the caller's arrays (the ``(X, y)`` form), so the Objective copies them.
    A DataLoader is read in its dataset's order with every example (see
    :func:`_sequential_loader`); a Dataset's first items are read twice to
    refuse random transforms.
    """
    if isinstance(data, tuple | list):
        if len(data) != 2:
            raise BasinscopeError(
                f"data given as a {type(data).__name__} must be a pair (X, y), got "
                f"{len(data)} items"
            )
        return _tensor("the inputs X", data[0]), _tensor("the targets y", data[1]), False
    if isinstance(data, torch.utils.data.DataLoader):
        return (*_from_loader(data), True)
    if isinstance(data, torch.utils.data.Dataset) and hasattr(data, "__len__"):
        return (*_from_dataset(data), True)
    raise BasinscopeError(
        f"data of type {type(data).__name__} is not supported; pass (X, y) tensors, "
        "a torch Dataset or a DataLoader"
    )


def _tensor(what: str, value: Any) -> Tensor:
    try:
        t = torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError) as err:
        raise BasinscopeError(
            f"{what} of type {type(value).__name__} cannot be read as a tensor ({err}); "
            "give a tensor or a numeric array"
        ) from err
    if t.ndim == 0:
        raise BasinscopeError(f"{what} must have a leading example dimension, got a scalar")
    return t


def _pair(item: Any, where: str) -> tuple[Any, Any]:
    """The ``(x, y)`` of one dataset item or loader batch (a sequence's first two entries)."""
    if isinstance(item, Mapping):
        keys = ", ".join(repr(k) for k in list(item)[:4])
        raise BasinscopeError(
            f"{where} is a dict (keys {keys}); basinscope needs (x, y) pairs: make the "
            "dataset return (input, target)"
        )
    if not isinstance(item, tuple | list) or len(item) < 2:
        kind = (
            f"a {len(item)}-item {type(item).__name__}"
            if isinstance(item, tuple | list)
            else (f"a {type(item).__name__}")
        )
        raise BasinscopeError(
            f"{where} is {kind}; basinscope needs (x, y) pairs: make the dataset return "
            "(input, target)"
        )
    return item[0], item[1]


def _stack(what: str, parts: list[Any], cat: bool) -> Tensor:
    try:
        tensors = [torch.as_tensor(p) for p in parts]
        return torch.cat(tensors) if cat else torch.stack(tensors)
    except (TypeError, ValueError, RuntimeError) as err:
        raise BasinscopeError(
            f"the {what} cannot be joined into one tensor ({err}); every example needs the "
            "same shape"
        ) from err


def _from_dataset(ds: Any) -> tuple[Tensor, Tensor]:
    n = len(ds)
    if n == 0:
        raise BasinscopeError("the dataset is empty")
    raw = [ds[i] for i in range(n)]
    items = [_pair(it, f"dataset item {i}") for i, it in enumerate(raw)]
    _check_rereads(ds, raw)
    x = _stack("dataset's inputs", [it[0] for it in items], cat=False)
    ys = [it[1] for it in items]
    if torch.is_tensor(ys[0]):
        return x, _stack("dataset's targets", ys, cat=False)
    return x, _tensor("the dataset's targets", ys)


def _check_rereads(ds: Any, first: list[Any] | None = None) -> None:
    """Refuse a dataset whose first items change between two reads (random transforms).

    Reads items ``0 … min(8, len) − 1`` (again, when ``first`` holds a first read):
    negligible next to reading the whole dataset, and a random augmentation
    changes almost every item.
    """
    for i in range(min(_REREAD, len(ds))):
        a = first[i] if first is not None else ds[i]
        if not _same_value(a, ds[i]):
            raise BasinscopeError(
                f"dataset item {i} differs between two reads (random transforms or "
                "augmentation?); basinscope needs the same data every time: pass a "
                "deterministic evaluation dataset"
            )


def _same_value(a: Any, b: Any) -> bool:
    """Equal values, NaN equal to NaN (items of a dataset, outputs of a model)."""
    if torch.is_tensor(a) or isinstance(a, np.ndarray):
        try:
            ta, tb = torch.as_tensor(a), torch.as_tensor(b)
        except (TypeError, ValueError, RuntimeError):
            return False
        if ta.shape != tb.shape or ta.dtype != tb.dtype:
            return False
        if ta.is_floating_point() or ta.is_complex():
            return bool(((ta == tb) | (ta.isnan() & tb.isnan())).all())
        return torch.equal(ta, tb)
    if isinstance(a, Mapping):
        return (
            isinstance(b, Mapping)
            and list(a) == list(b)
            and all(_same_value(a[k], b[k]) for k in a)
        )
    if isinstance(a, tuple | list):
        return (
            isinstance(b, tuple | list)
            and len(a) == len(b)
            and all(_same_value(p, q) for p, q in zip(a, b, strict=True))
        )
    try:
        return bool(a == b) or (a != a and b != b)  # NaN scalars
    except Exception:
        return False


def _from_loader(loader: torch.utils.data.DataLoader) -> tuple[Tensor, Tensor]:
    ds = loader.dataset
    if loader.batch_sampler is None:  # batch_size=None: the loader yields single items
        if not isinstance(ds, torch.utils.data.IterableDataset):
            return _from_dataset(ds)
        items = [_pair(it, f"item {i} of the DataLoader") for i, it in enumerate(loader)]
        if not items:
            raise BasinscopeError("the DataLoader yielded no items")
        xs, ys = [it[0] for it in items], [it[1] for it in items]
        return _stack("DataLoader's inputs", xs, cat=False), _stack(
            "DataLoader's targets", ys, cat=False
        )
    if not isinstance(ds, torch.utils.data.IterableDataset):
        _check_rereads(ds)
    xs, ys = [], []
    for b, batch in enumerate(_sequential_loader(loader)):
        x, y = _pair(batch, f"batch {b} of the DataLoader")
        xs.append(x)
        ys.append(y)
    if not xs:
        raise BasinscopeError("the DataLoader yielded no batches")
    return _stack("DataLoader's inputs", xs, cat=True), _stack("DataLoader's targets", ys, cat=True)


def _sequential_loader(loader: torch.utils.data.DataLoader) -> torch.utils.data.DataLoader:
    """A DataLoader over the same examples in the dataset's order, dropping none.

    A shuffling loader gives another order (and with ``batch_size`` chunks,
    another rounding) on every pass and ``drop_last=True`` leaves examples out;
    an evaluation reads every example of ``loader.dataset`` in order instead,
    with the same ``collate_fn`` and batch size. A sampler that picks a fixed
    part of the dataset (``SubsetRandomSampler``, a custom one that yields the
    same indices every pass) keeps its part, in ascending order for the former;
    one that draws different examples each pass is refused.
    """
    ds = loader.dataset
    data = torch.utils.data
    indices: list[int] | None = None
    if not isinstance(ds, data.IterableDataset):
        custom = loader.batch_sampler is not None and type(loader.batch_sampler) is not (
            data.BatchSampler
        )
        sampler = loader.batch_sampler if custom else loader.sampler
        if isinstance(sampler, data.SubsetRandomSampler):
            indices = sorted(int(i) for i in sampler.indices)
        elif not isinstance(sampler, data.SequentialSampler | data.RandomSampler):
            first, second = (list(_flat(sampler)) for _ in range(2))
            if first != second:
                raise BasinscopeError(
                    f"the DataLoader's {type(sampler).__name__} draws different examples on "
                    "each pass; basinscope evaluates a fixed set: pass a DataLoader without "
                    "a sampler (or the dataset itself)"
                )
            indices = first
    batch_size = loader.batch_size or 64
    workers = loader.num_workers
    return data.DataLoader(
        ds if indices is None else data.Subset(ds, indices),
        batch_size=batch_size,
        shuffle=False,
        drop_last=False,
        collate_fn=loader.collate_fn,
        num_workers=workers,
        worker_init_fn=loader.worker_init_fn,
        multiprocessing_context=loader.multiprocessing_context if workers else None,
        timeout=loader.timeout,
    )


def _flat(sampler: Any) -> Iterator[int]:
    for i in sampler:
        if isinstance(i, int | np.integer):
            yield int(i)
        else:  # a batch sampler yields lists of indices
            yield from (int(j) for j in i)


def _first_non_finite(what: str, t: Tensor) -> None:
    """Refuse NaN/inf in ``t``, naming the first example that holds one."""
    if not (t.is_floating_point() or t.is_complex()):
        return
    bad = ~torch.isfinite(t)
    if not bool(bad.any()):
        return
    row = int(bad.reshape(len(t), -1).any(1).nonzero()[0, 0])
    kind = "NaN" if bool(t[row].isnan().any()) else "inf"
    raise BasinscopeError(
        f"the {what} hold {kind} (example {row} of {len(t)}, in {str(t.dtype)[6:]}); "
        "basinscope evaluates finite data: remove or repair those examples"
    )


def _check_finite_model(model: nn.Module) -> None:
    """Refuse a model whose parameters or buffers hold NaN or inf (a diverged run)."""
    named = [("parameter", n, t) for n, t in model.named_parameters()]
    named += [("buffer", n, t) for n, t in model.named_buffers()]
    for kind, name, t in named:
        if (t.is_floating_point() or t.is_complex()) and not bool(torch.isfinite(t).all()):
            value = "NaN" if bool(t.isnan().any()) else "inf"
            raise BasinscopeError(
                f"the model's {kind} {name!r} holds {value} (a diverged run?); basinscope "
                "measures a model with finite weights"
            )


class Objective:
    """A model's mean loss and accuracy over a dataset, as a function of θ ∈ ParamSpace.

    Args:
        model: any ``nn.Module``; a private deep copy is made, the original is
            never modified.
        loss_fn: ``loss_fn(outputs, targets) -> scalar`` that averages over the
            batch (every torch loss with ``reduction="mean"``).
        data: ``(X, y)`` tensors or arrays, a ``Dataset`` (of ``(x, y)`` items) or a
            ``DataLoader``. The Objective holds its own copy: changing the
            user's tensors afterwards changes nothing here, and nothing is ever
            written into them. A DataLoader is read in its dataset's order with
            every example (its shuffling and ``drop_last`` are not used, so the
            same numbers come out every time); a dataset whose items change
            between reads (random augmentation) is refused.
        space: the coordinates (default: all trainable parameters, or all
            matrices/filters when ``skip_bias_norm``).
        device, dtype: where and in what precision to evaluate (default: the
            model's device and dtype). ``dtype=torch.float64`` gives references.
        batch_size: examples per forward pass (bounds memory; results do not
            depend on it beyond floating-point summation order).
        subset: evaluate on a fixed random subset of this many examples, drawn
            with ``seed``.
        check_determinism: evaluate twice and refuse a model whose evaluation
            is random (dropout hard-wired on, noise layers).

    Checked before any work, each refused with one sentence: NaN/inf in the
    model's weights or buffers (a diverged run), in the inputs or float
    targets; a model that fails on the data (wrong number of features, integer
    inputs to a layer that is not an Embedding) or returns no tensor; labels
    outside ``[0, C)`` for a cross-entropy/NLL loss with ``C`` outputs, targets
    ``[N, 1]`` for it; targets whose shape an elementwise loss would broadcast;
    a loss that fails on the outputs, returns no scalar, or sums over the batch
    (probed on three examples: a batch mean lies within the examples' losses,
    a sum equals their total, which lies outside them).
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        data: Any,
        *,
        space: ParamSpace | None = None,
        skip_bias_norm: bool = False,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        batch_size: int = 4096,
        subset: int | None = None,
        seed: int = 0,
        check_determinism: bool = True,
    ):
        if not isinstance(model, nn.Module):
            raise BasinscopeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not callable(loss_fn):
            raise BasinscopeError(
                f"loss_fn must be a callable loss(outputs, targets), got {type(loss_fn).__name__}"
            )
        batch_size = check_int("batch_size", batch_size, minimum=1)
        if subset is not None:
            subset = check_int("subset", subset, minimum=1)
        seed = check_int("seed", seed)
        reduction = getattr(loss_fn, "reduction", "mean")
        if reduction != "mean":
            raise BasinscopeError(
                f"loss_fn has reduction={reduction!r}; basinscope needs a batch-mean loss "
                "(reduction='mean') to form exact dataset means"
            )
        first = next(iter(model.parameters()), None)
        self.device = torch.device(device) if device is not None else _model_device(model)
        self.dtype = dtype or (first.dtype if first is not None else torch.get_default_dtype())
        self.model = copy.deepcopy(model).to(device=self.device, dtype=self.dtype).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        _check_finite_model(self.model)
        self.loss_fn = loss_fn
        self.space = space or ParamSpace(model, skip_bias_norm=skip_bias_norm)
        self.theta0 = self.space.flatten(self.model).clone()
        self.batch_size = batch_size
        self.seed = seed
        self.x, self.y = self._prepare(data, subset, seed)
        self._set_totals()
        self._first: _FirstLayer | None | bool = False  # False: not probed yet
        self._first_cache: tuple | None = None  # see _first_outputs
        self._targets_ok: tuple[Tensor, int] | None = None  # see _batchable
        self._probe(determinism=check_determinism)

    # ------------------------------------------------------------------ data
    def _prepare(self, data: Any, subset: int | None, seed: int) -> tuple[Tensor, Tensor]:
        x, y, fresh = _as_tensors(data)
        source = (x, y)
        if len(x) != len(y):
            raise BasinscopeError(f"inputs and targets differ in length ({len(x)} vs {len(y)})")
        if len(x) == 0:
            raise BasinscopeError("the evaluation data is empty")
        if subset is not None:
            subset = check_int("subset", subset, minimum=1)
            if not 1 <= subset <= len(x):
                raise BasinscopeError(f"subset must be in [1, {len(x)}], got {subset}")
            g = torch.Generator().manual_seed(seed)
            idx = torch.randperm(len(x), generator=g)[:subset].sort().values
            x, y = x[idx], y[idx]
        if x.is_floating_point():
            x = x.to(self.dtype)
        if y.is_floating_point():
            y = y.to(self.dtype)
        x, y = x.to(self.device), y.to(self.device)
        if not fresh:  # never alias the caller's memory (a later in-place change)
            x, y = (
                t.clone() if _shares_memory(t, s) else t
                for t, s in zip((x, y), source, strict=True)
            )
        _first_non_finite("inputs", x)
        _first_non_finite("targets", y)
        return x, y

    def with_data(self, data: Any, *, subset: int | None = None) -> Objective:
        """The same model, loss and space on other data (e.g. the test set).

        The data is checked as :class:`Objective` checks its own (finite values,
        labels, shapes, one probe forward).
        """
        other = self._on(*self._prepare(data, subset, self.seed))
        other._probe(determinism=False)
        return other

    def _on(self, x: Tensor, y: Tensor) -> Objective:
        """This Objective on tensors already prepared (internal: no checks, no copy)."""
        other = copy.copy(self)
        other.x, other.y = x, y
        other._first_cache = None
        other._set_totals()
        return other

    def _set_totals(self) -> None:
        """The denominators of the dataset's loss and accuracy.

        ``L = Σ_chunks count(chunk) · mean(chunk) / Σ_chunks count(chunk)``. For most
        losses a chunk's count is its number of examples. torch's cross-entropy and
        NLL losses with class weights ``w`` or ignored targets average as
        ``Σ_i w_{y_i} ℓ_i / Σ_i w_{y_i}`` over the targets that are not ignored, so
        there the count is ``Σ_i w_{y_i}`` (ignored ones weigh 0); accuracy then
        counts only targets that are not ignored.
        """
        spec = _class_weights(self.loss_fn)
        y = self.y
        self._weighting: tuple[Tensor | None, int] | None = None
        if spec is not None and not (y.is_floating_point() or y.is_complex()):
            weight, ignore = spec
            if weight is not None or bool((y == ignore).any()):
                self._weighting = (
                    None if weight is None else weight.detach().to(y.device, torch.float64),
                    ignore,
                )
        if self._weighting is None:
            self._loss_total: float | int = self.n_examples
            self._acc_total: float | int = self.n_examples
            return
        valid = y != self._weighting[1]
        self._loss_total = float(self._count(y))
        self._acc_total = (
            int(valid.reshape(len(y), -1).all(1).sum()) if y.ndim > 1 else int(valid.sum())
        )
        if self._loss_total <= 0:
            raise BasinscopeError(
                f"every target is ignore_index {self._weighting[1]} (or has class weight 0); "
                "there is nothing to evaluate"
            )

    def _count(self, y: Tensor) -> Tensor:
        """``Σ_i w_{y_i}`` over the targets of ``y`` that are not ignored (float64)."""
        assert self._weighting is not None
        weight, ignore = self._weighting
        valid = y != ignore
        if weight is None:
            return valid.sum().to(torch.float64)
        return (weight[torch.where(valid, y, 0)] * valid).sum()

    def _share(self, y: Tensor) -> float | None:
        """A chunk's weight in the dataset's loss, ``count / total``; None for none."""
        if self._weighting is None:
            return len(y) / self.n_examples
        count = float(self._count(y))
        return count / self._loss_total if count > 0 else None

    @property
    def n_examples(self) -> int:
        return len(self.x)

    @property
    def n(self) -> int:
        """Number of coordinates."""
        return self.space.n

    def _chunks(self) -> Iterator[tuple[Tensor, Tensor]]:
        for s in range(0, len(self.x), self.batch_size):
            yield self.x[s : s + self.batch_size], self.y[s : s + self.batch_size]

    # ------------------------------------------------------------ evaluation
    def _forward(self, params: dict[str, Tensor], x: Tensor) -> Tensor:
        return functional_call(self.model, params, (x,), strict=False)

    def _stats(self, out: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """(count × batch loss, number correct) for one chunk, in float64.

        The count is the batch mean's denominator (see :meth:`_count`), so the sum
        over chunks divided by the total count is the dataset's loss whatever the
        chunks.
        """
        value = self.loss_fn(out, y).to(torch.float64)
        if self._weighting is None:
            loss = value * len(y)
        else:  # a chunk whose targets are all ignored adds nothing (its mean is 0/0)
            count = self._count(y)
            loss = torch.where(count > 0, value * count, torch.zeros_like(value))
        if out.ndim == 2 and out.shape[1] > 1 and not y.is_floating_point():
            hits = out.argmax(dim=1) == y
            if self._weighting is not None:
                hits &= y != self._weighting[1]
            correct = hits.sum().to(torch.float64)
        else:
            correct = torch.tensor(float("nan"), dtype=torch.float64, device=out.device)
        return loss, correct

    def _points(self, points: Tensor) -> Tensor:
        points = torch.as_tensor(points)
        if points.ndim == 1:
            points = points[None]
        if points.ndim != 2 or points.shape[1] != self.n:
            raise BasinscopeError(
                f"points must have shape (K, {self.n}), got {tuple(points.shape)}"
            )
        return points.to(device=self.device, dtype=self.dtype)

    @torch.no_grad()
    def evaluate(self, points: Tensor) -> tuple[Tensor, Tensor]:
        """Exact dataset-mean loss and accuracy at each point.

        Args:
            points: ``[K, n]`` (or ``[n]``) flat parameter vectors.

        Returns:
            ``(loss[K], accuracy[K])`` in float64; accuracy is NaN when the
            outputs are not class scores.
        """
        points = self._points(points)
        loss = torch.zeros(len(points), dtype=torch.float64, device=self.device)
        correct = torch.zeros_like(loss)
        for x, y in self._chunks():
            for k in range(len(points)):
                out = self._forward(self.space.unflatten(points[k]), x)
                dl, dc = self._stats(out, y)
                loss[k] += dl
                correct[k] += dc
        return (loss / self._loss_total).cpu(), (correct / self._acc_total).cpu()

    @torch.no_grad()
    def evaluate_affine(
        self,
        coefficients: Tensor,
        directions: Tensor,
        origin: Tensor | None = None,
        *,
        shortcut: bool = True,
    ) -> tuple[Tensor, Tensor]:
        """Loss and accuracy at ``origin + Σ_j c[k, j] · directions[j]`` for each row ``k``.

        Args:
            coefficients: ``[K, m]``.
            directions: ``[m, n]``.
            origin: ``[n]``, default ``θ0``.
            shortcut: use the first-layer fast path where it applies.

        Returns:
            ``(loss[K], accuracy[K])`` in float64, as :meth:`evaluate`.
        """
        coefficients = torch.as_tensor(coefficients)
        if coefficients.ndim == 1:
            coefficients = coefficients[:, None]
        directions = self._points(directions)
        if coefficients.shape[1] != len(directions):
            raise BasinscopeError(
                f"{coefficients.shape[1]} coefficients per point but {len(directions)} directions"
            )
        origin = self.theta0 if origin is None else self._points(origin)[0]
        coefficients = coefficients.to(device=self.device, dtype=self.dtype)
        first = self._first_layer() if shortcut and len(directions) else None
        if first is None:
            # Points are formed a block at a time (a [K, n] matrix of whole points
            # can be large) and elementwise, so each point's value is the same
            # whatever the number of points asked for at once.
            block = max(1, _POINTS_BLOCK // self.n)
            results = [
                self.evaluate(_combine(origin, coefficients[s : s + block], directions))
                for s in range(0, len(coefficients), block)
            ]
            return torch.cat([r[0] for r in results]), torch.cat([r[1] for r in results])
        if first.chain is not None and self._batchable(first.chain):
            return self._evaluate_batched(first, coefficients, directions, origin)
        return self._evaluate_shortcut(first, coefficients, directions, origin)

    def _evaluate_shortcut(
        self, first: _FirstLayer, coef: Tensor, dirs: Tensor, origin: Tensor
    ) -> tuple[Tensor, Tensor]:
        layer = self.model.get_submodule(first.path)
        # Only the parameters after the first layer are needed per point, so only
        # they are formed: for an MLP on images the first layer holds most of θ.
        tail = _Tail(self.space, exclude={first.weight, first.bias}, origin=origin, dirs=dirs)
        # Python floats: `alpha=` takes a scalar without a device sync per point.
        rows = coef.tolist()
        loss = torch.zeros(len(rows), dtype=torch.float64, device=self.device)
        correct = torch.zeros_like(loss)
        injected: list[Tensor] = []
        for x, y, base, outs in self._first_outputs(first, layer, origin, dirs):
            # Our private copy's first layer returns the precomputed output.
            layer.forward = lambda *args, **kwargs: injected[0]
            try:
                for k, c in enumerate(rows):
                    injected[:] = [_combine_rows(base, outs, c)]
                    out = self._forward(tail.at(c), x)
                    dl, dc = self._stats(out, y)
                    loss[k] += dl
                    correct[k] += dc
            finally:
                del layer.forward
                injected.clear()
        return (loss / self._loss_total).cpu(), (correct / self._acc_total).cpu()

    # ------------------------------------------------- batched tail (chains)
    def _batchable(self, chain: _Chain) -> bool:
        """Whether the loss is a plain cross-entropy the batched tail computes itself."""
        if not _plain_cross_entropy(self.loss_fn):
            return False
        y = self.y
        if self._targets_ok is not None and self._targets_ok[0] is y:
            return self._targets_ok[1] == chain.classes
        ok = y.ndim == 1 and y.dtype == torch.long and len(y) > 0
        if ok:
            ignore = getattr(self.loss_fn, "ignore_index", -100)
            ok = bool((y >= 0).all() and (y < chain.classes).all() and (y != ignore).all())
        self._targets_ok = (y, chain.classes if ok else -1)
        return ok

    def _evaluate_batched(
        self, first: _FirstLayer, coef: Tensor, dirs: Tensor, origin: Tensor
    ) -> tuple[Tensor, Tensor]:
        """The fast path with the rest of the network run for ``_BLOCK`` points at once.

        Per point and data chunk the first layer's output is formed as in
        :meth:`_evaluate_shortcut`; then the chain runs on ``[_BLOCK, rows, ...]``
        stacks, each Linear as one batched matrix product (one kernel call for
        all points instead of one per point, and faster per point: the lone
        ``2048×256 @ 256×128`` of an MLP's second layer is far from peak).

        A point's value does not depend on which points share its block or where
        it sits in it: blocks always hold ``_BLOCK`` points (the last is padded
        with copies), every point's slab in each stacked tensor has the same
        alignment, elementwise ops that are exactly rounded (add, multiply, max,
        ReLU) run on the whole stack and the others (exp, log, tanh, ...) slab
        by slab, and reductions run within a slab. The loss runs on the scores
        of several blocks at once (fewer, larger operations).
        """
        chain = first.chain
        assert chain is not None
        layer = self.model.get_submodule(first.path)
        rows = coef.tolist()
        padded = rows + [rows[-1]] * (-len(rows) % _BLOCK)
        params = _BlockParams(self, chain, origin, dirs, padded)
        # A leading ReLU is applied while forming the first layer's output (one pass).
        relu = chain.steps[0].relu
        loss = torch.zeros(len(padded), dtype=torch.float64, device=self.device)
        correct = torch.zeros_like(loss)
        for _, y, base, outs in self._first_outputs(first, layer, origin, dirs):
            # Bound memory: a block's widest activation holds _BLOCK × step × width numbers.
            step = max(1, min(len(y), _BLOCK_ELEMENTS // (_BLOCK * chain.width)))
            for r0 in range(0, len(y), step):
                part = slice(r0, r0 + step)
                fill = _Combiner(base[part], [o[part] for o in outs])
                used = len(y[part])
                # Rows padded to a multiple of 32 so every point's slab starts 128-byte
                # aligned (a matrix kernel may round differently on other alignments).
                pad = -used % 32
                h = base.new_empty((_BLOCK, used + pad, *base.shape[1:]))
                target = F.pad(y[part], (0, pad))
                # 0 where a class index is below the target, -inf elsewhere (see _cross_entropy)
                classes = torch.arange(chain.classes, device=y.device)[:, None]
                below = base.new_zeros((chain.classes, len(target)))
                below.masked_fill_(classes >= target, -math.inf)
                # Scores of up to `group` points, then their loss in one go.
                group = _BLOCK * max(
                    1, min(len(padded), _BLOCK_ELEMENTS // (chain.classes * len(target))) // _BLOCK
                )
                scores = base.new_empty((min(group, len(padded)), chain.classes, len(target)))
                for s in range(0, len(padded), _BLOCK):
                    block = padded[s : s + _BLOCK]
                    if pad:
                        h[:, used:].zero_()  # an activation may have written there
                    for k, c in enumerate(block):
                        fill.into(h[k, :used], c, relu=relu)
                    g = s % group
                    self._run_chain(chain, h, params.block(s), scores[g : g + _BLOCK], relu)
                    if g + _BLOCK == len(scores) or s + _BLOCK == len(padded):
                        dl, dc = _cross_entropy(scores[: g + _BLOCK], target, below, used)
                        loss[s - g : s + _BLOCK] += dl
                        correct[s - g : s + _BLOCK] += dc
        n = len(rows)
        return (loss[:n] / self._loss_total).cpu(), (correct[:n] / self._acc_total).cpu()

    def _run_chain(
        self,
        chain: _Chain,
        h: Tensor,
        params: dict[str, Tensor],
        scores: Tensor,
        skip_first: bool = False,
    ) -> None:
        """Run the chain on ``h[K, rows, ...]``, writing the class scores into ``scores[K, C, rows]``.

        The last Linear writes its output transposed (``W @ xᵀ``): the loss then
        reduces over the short class axis with the long example axis contiguous.
        A Linear's bias and a ReLU after it are applied in one pass.
        """
        steps = chain.steps[1:] if skip_first else chain.steps
        last = max(i for i, st in enumerate(steps) if st.kind == "linear")
        x = h
        skip = False
        for i, st in enumerate(steps):
            if skip:
                skip = False
                continue
            if st.kind == "linear":
                w = params[st.weight]
                b = params[st.bias] if st.bias is not None else None
                x = x.reshape(x.shape[0], x.shape[1], st.shape[1])
                if i == last:  # w is [K, out, in]
                    x = torch.bmm(w, x.transpose(1, 2), out=scores)
                    if b is not None:
                        x.add_(b.unsqueeze(2))
                    continue
                x = torch.bmm(x, w)  # w is [K, in, out]
                skip = i + 1 < len(steps) and steps[i + 1].relu
                if b is None:
                    if skip:
                        x.relu_()
                elif skip:
                    _add_relu_(x, b.unsqueeze(1))
                else:
                    x.add_(b.unsqueeze(1))
            elif st.kind == "flatten":
                x = x.flatten(2)
            else:
                module = self.model.get_submodule(st.path)
                if st.kind == "exact":
                    _exact_inplace(module, x)
                else:
                    for k in range(len(x)):
                        x[k] = module(x[k])

    def _first_outputs(
        self, first: _FirstLayer, layer: nn.Module, origin: Tensor, dirs: Tensor
    ) -> Iterator[tuple[Tensor, Tensor, Tensor, list[Tensor]]]:
        """``(x, y, out(origin), [out(d_j)])`` of the first layer for each data chunk.

        A surface calls :meth:`evaluate_affine` once per chunk of grid points with
        the same origin and directions, and these outputs cost ``m + 1`` passes of
        the first layer over the data (for an MLP on images, more than the rest
        of a 64-point chunk's work). So they are kept for the next call when they
        fit in ``_CACHE_BYTES``, keyed by the values of the first layer's part of
        the origin and directions, which with the data determine them.
        """
        local = {"weight": first.weight} | ({"bias": first.bias} if first.bias else {})

        def layer_params(vec: Tensor, fixed: Callable[[str], Tensor]) -> dict[str, Tensor]:
            """The layer's part of a flat vector; ``fixed(k)`` outside the space."""
            chosen = self.space.unflatten(vec)
            return {k: chosen[full] if full in chosen else fixed(k) for k, full in local.items()}

        own = lambda k: getattr(layer, k)  # noqa: E731
        zero = lambda k: torch.zeros_like(getattr(layer, k))  # noqa: E731  (directions)
        params = [layer_params(origin, own)] + [layer_params(d, zero) for d in dirs]
        cache = self._first_cache
        if cache is not None and cache[0] is self.x and _same_params(cache[1], params):
            yield from cache[2]
            return
        kept: list[tuple[Tensor, Tensor, Tensor, list[Tensor]]] | None = []
        size = 0
        for x, y in self._chunks():
            z = self._layer_input(layer, x)
            base, *outs = [functional_call(layer, p, (z,)) for p in params]
            size += base.numel() * base.element_size() * len(params)
            if kept is not None and size <= _CACHE_BYTES:
                kept.append((x, y, base, outs))
            else:
                kept = None
            yield x, y, base, outs
        if kept is not None:
            key = [{k: v.clone() for k, v in p.items()} for p in params]
            self._first_cache = (self.x, key, kept)

    def _layer_input(self, layer: nn.Module, x: Tensor) -> Tensor:
        """The first layer's input for data ``x``: run the model up to that layer, then stop."""
        captured: list[Tensor] = []

        def stop(mod: nn.Module, args: tuple) -> None:
            captured.append(args[0])
            raise _StopForward

        handle = layer.register_forward_pre_hook(stop)
        try:
            self.model(x)
        except _StopForward:
            pass
        finally:
            handle.remove()
        return captured[0]

    def loss(self, theta: Tensor | None = None) -> float:
        """``L(θ)`` as a Python float (default θ = θ0)."""
        return float(self.evaluate(self.theta0 if theta is None else theta)[0][0])

    def fingerprint(self) -> dict[str, Any]:
        """What determines this Objective's numbers, as a key for resumable files.

        ``{weights, space, data, loss, dtype, device, batch_size, torch_version,
        threads}``: hashes of the private model's whole state (θ0, fixed
        parameters and buffers), of the coordinate names and of the evaluation
        tensors (after the subset), a description of the loss (its class or
        code and settings), and the arithmetic's environment. See
        :func:`basinscope._keys.check_key` for how two keys are compared.
        """
        from ._keys import environment, tensor_digest, value_digest

        state = self.model.state_dict()
        return {
            "weights": value_digest([[k, tensor_digest(v)] for k, v in state.items()]),
            "space": value_digest(list(self.space.names)),
            "data": tensor_digest(self.x, self.y),
            "loss": value_digest(_describe_callable(self.loss_fn)),
            "batch_size": self.batch_size,
            **environment(self.device, self.dtype),
        }

    # -------------------------------------------------------------- autograd
    def grad(self, theta: Tensor | None = None) -> Tensor:
        """``∇L(θ)``, ``[n]``, exact over the whole evaluation set."""
        theta = (self.theta0 if theta is None else self._points(theta)[0]).detach()
        total = torch.zeros_like(theta)
        for x, y in self._chunks():
            share = self._share(y)
            if share is None:
                continue
            t = theta.clone().requires_grad_(True)
            loss = self.loss_fn(self._forward(self.space.unflatten(t), x), y) * share
            (g,) = torch.autograd.grad(loss, t)
            total += g
        return total

    def hvp(self, v: Tensor, theta: Tensor | None = None) -> Tensor:
        """Hessian-vector product ``∇²L(θ) v`` for ``v`` of shape ``[n]`` or ``[k, n]``.

        Reverse-over-reverse (double backward), summed exactly over data chunks.
        """
        theta = (self.theta0 if theta is None else self._points(theta)[0]).detach()
        vs = self._points(v)
        total = torch.zeros_like(vs)
        for x, y in self._chunks():
            share = self._share(y)
            if share is None:
                continue
            t = theta.clone().requires_grad_(True)
            loss = self.loss_fn(self._forward(self.space.unflatten(t), x), y) * share
            (g,) = torch.autograd.grad(loss, t, create_graph=True)
            for k in range(len(vs)):
                (hv,) = torch.autograd.grad(g @ vs[k], t, retain_graph=k < len(vs) - 1)
                total[k] += hv
        return total[0] if torch.as_tensor(v).ndim == 1 else total

    # ---------------------------------------------------------------- probes
    def _probe(self, determinism: bool) -> None:
        """One forward on the first examples, before any work: does the model take the
        data and return a tensor, do the targets fit the outputs and the loss, is the
        loss a batch mean; with ``determinism``, a second forward must agree exactly
        (a model whose evaluation is random is refused)."""
        x = self.x[: min(self.batch_size, 256)]
        y = self.y[: len(x)]
        params = self.space.unflatten(self.theta0)
        with torch.no_grad():
            try:
                out = self._forward(params, x)
            except Exception as err:
                raise BasinscopeError(self._forward_failure(x, err)) from err
            if isinstance(out, Mapping | tuple | list) or not torch.is_tensor(out):
                kind = (
                    f"a dict (keys {', '.join(repr(k) for k in list(out)[:4])})"
                    if isinstance(out, Mapping)
                    else f"a {type(out).__name__}"
                )
                raise BasinscopeError(
                    f"the model returns {kind}; basinscope needs a model whose forward returns "
                    "one tensor of outputs (selecting an output is not supported yet): wrap it "
                    "to return that tensor"
                )
            self._check_targets(out)
            self._check_loss(out, y)
            if determinism:
                again = self._forward(params, x)
                if not _same_value(out, again):
                    diff = (
                        (out - again).abs().max().item() if out.shape == again.shape else math.nan
                    )
                    raise BasinscopeError(
                        f"the model's evaluation is not deterministic (two evaluations of the "
                        f"same weights differ by up to {diff:.3g}); disable dropout/noise in "
                        "eval mode or pass check_determinism=False"
                    )

    def _forward_failure(self, x: Tensor, err: Exception) -> str:
        """The sentence for a model whose forward raises on the data ``x``."""
        first = next(
            (
                (path, m)
                for path, m in self.model.named_modules()
                if any(True for _ in m.parameters(recurse=False))
            ),
            None,
        )
        dtype = str(x.dtype)[6:]
        if not (x.is_floating_point() or x.is_complex()) and first is not None:
            path, module = first
            if not isinstance(module, nn.Embedding | nn.EmbeddingBag):
                return (
                    f"the inputs are integers ({dtype}) but the model's first layer "
                    f"{path or 'the model'!r} is a {type(module).__name__}, not an Embedding; "
                    "convert them to floating point (X.float())"
                )
        return (
            f"the model cannot evaluate the data: on inputs of shape {list(x.shape)} "
            f"(examples of shape {list(x.shape[1:])}, {dtype}) its forward raises "
            f"{_error_line(err)}; give inputs of the shape and dtype the model takes"
        )

    def _check_targets(self, out: Tensor) -> None:
        """Targets that fit the outputs ``out`` (of the probe's examples) and the loss."""
        y, loss_name = self.y, _loss_name(self.loss_fn)
        integer = not (y.is_floating_point() or y.is_complex())
        classes = int(out.shape[1]) if out.ndim >= 2 else 0
        known = _class_loss(self.loss_fn)
        if known is not None and integer and classes:
            if y.ndim == 2 and y.shape[1] == 1 and out.ndim == 2:
                raise BasinscopeError(
                    f"the targets have shape {list(y.shape)} but {loss_name} takes class "
                    "indices of shape [N]: pass y.squeeze(1)"
                )
            bad = _bad_labels(y, classes, known)
            if bad is not None:
                i, label = bad
                raise BasinscopeError(
                    f"the targets hold label {label} (example {i}) but the model has {classes} "
                    f"outputs; {loss_name} needs class indices in [0, {classes - 1}]"
                )
        elif integer and out.ndim == 2 and classes > 1 and y.ndim == 1:
            # Another loss of class indices: a label it cannot take would fail on some
            # later chunk, mid-work; try the first such label now.
            bad = _bad_labels(y, classes, -100)
            if bad is not None:
                i, label = bad
                try:
                    self.loss_fn(out[:1], y[i : i + 1])
                except Exception as err:
                    raise BasinscopeError(
                        f"the targets hold label {label} (example {i}) but the model has "
                        f"{classes} outputs, and loss_fn fails on it ({_error_line(err)}); give "
                        f"labels in [0, {classes - 1}]"
                    ) from err
        elif _elementwise_loss(self.loss_fn) and out.ndim >= 1 and out.shape[1:] != y.shape[1:]:
            raise BasinscopeError(
                f"the model's outputs have shape {_per_example(out)} but the targets "
                f"{_per_example(y)}; {loss_name} would broadcast one against the other: "
                "give targets of the outputs' shape"
            )

    def _check_loss(self, out: Tensor, y: Tensor) -> None:
        """The loss takes the probe's outputs and targets, returns a scalar and is a mean.

        A batch mean of ``k`` examples (class weights, label smoothing, a mean over
        elements: any convex combination) lies within ``[min_i ℓ_i, max_i ℓ_i]`` of
        the examples' own losses; a sum equals ``Σ_i ℓ_i``, outside that range once
        two examples have a loss. Only that clear case is refused.
        """
        try:
            value = self.loss_fn(out, y)
        except Exception as err:
            raise BasinscopeError(_loss_failure(out, y, err)) from err
        if not torch.is_tensor(value) or value.numel() != 1:
            got = f"shape {list(value.shape)}" if torch.is_tensor(value) else type(value).__name__
            raise BasinscopeError(
                f"loss_fn must return a scalar tensor (the batch mean), got {got}"
            )
        k = min(3, len(y))
        if out.ndim == 0 or len(out) != len(y) or k < 2:
            return
        try:
            whole = float(self.loss_fn(out[:k], y[:k]))
            each = [float(self.loss_fn(out[i : i + 1], y[i : i + 1])) for i in range(k)]
        except Exception:
            return  # a loss that needs more examples at once: nothing to tell
        if not all(math.isfinite(v) for v in [whole, *each]):
            return  # ignored examples (0/0) or overflow: no verdict
        total, lo, hi = sum(each), min(each), max(each)
        tol = 1e-4 * (abs(total) + abs(lo) + abs(hi))
        if abs(whole - total) <= tol and not lo - tol <= whole <= hi + tol:
            raise BasinscopeError(
                f"loss_fn sums over the batch (on {k} examples it gives {whole:.6g}, the sum "
                f"of their losses, not a mean within [{lo:.6g}, {hi:.6g}]), so its value "
                "would depend on batch_size; basinscope needs a batch-mean loss "
                "(reduction='mean')"
            )

    def _first_layer(self) -> _FirstLayer | None:
        """Find (once) the first parametrised layer if the fast path is valid for it.

        Valid when: it is the first module with parameters that runs; it is a
        Linear/Conv/Embedding with only weight (and bias); it runs once per
        forward; and its input does not depend on any parameter. The fast path
        is then checked numerically against the plain path at θ0.
        """
        if self._first is not False:
            return self._first  # type: ignore[return-value]
        self._first = None
        # Tied parameters (one tensor under several names) are one coordinate of the
        # space but act in several places: a precomputed part of the network would
        # freeze the copies it holds. No fast path for them.
        named_all = list(self.model.named_parameters(remove_duplicate=False))
        if len(named_all) != len(list(self.model.named_parameters())):
            return None
        calls: list[tuple[str, nn.Module, bool]] = []
        handles = []
        for path, module in self.model.named_modules():
            if any(True for _ in module.parameters(recurse=False)):

                def hook(mod: nn.Module, args: tuple, path: str = path) -> None:
                    dependent = any(torch.is_tensor(a) and a.requires_grad for a in args)
                    calls.append((path, mod, dependent))

                handles.append(module.register_forward_pre_hook(hook))
        try:
            params = {k: v.clone().requires_grad_(True) for k, v in self.model.named_parameters()}
            with torch.enable_grad():
                functional_call(self.model, params, (self.x[:2],), strict=False)
        except Exception:
            return None
        finally:
            for h in handles:
                h.remove()
        if not calls:
            return None
        path, module, dependent = calls[0]
        own = dict(module.named_parameters(recurse=False))
        if (
            dependent
            or type(module) not in _LINEAR_LAYERS
            or sum(1 for c in calls if c[0] == path) != 1
            or not set(own) <= {"weight", "bias"}
            or getattr(module, "max_norm", None) is not None
        ):
            return None
        prefix = f"{path}." if path else ""
        first = _FirstLayer(
            path=path,
            weight=prefix + "weight",
            bias=prefix + "bias" if own.get("bias") is not None else None,
        )
        if not self._verify_shortcut(first):
            return None
        chain = self._find_chain(first) if _plain_cross_entropy(self.loss_fn) else None
        if chain is not None:
            batched = dataclasses.replace(first, chain=chain)
            if self._verify_batched(batched):
                first = batched
        self._first = first
        return first

    def _find_chain(self, first: _FirstLayer) -> _Chain | None:
        """The modules after the first layer, if they form a chain the batched tail runs.

        Found by running the model once with a hook on every leaf module: each
        module after the first layer must take exactly the previous module's
        output (the same tensor object) and nothing else, run once, be one of
        the supported types, and the model must return the last module's
        output. Every parametrised module must be in the chain. Hooks of the
        user's own make the model a custom one: no chain. The chain is then
        checked numerically against the plain path (:meth:`_verify_batched`).
        """
        if self.dtype not in (torch.float32, torch.float64):
            return None
        hooks = torch.nn.modules.module
        if any(
            getattr(hooks, name, None)
            for name in ("_global_forward_hooks", "_global_forward_pre_hooks")
        ) or any(m._forward_hooks or m._forward_pre_hooks for m in self.model.modules()):
            return None
        calls: list[tuple[str, nn.Module, tuple, dict, Any]] = []
        # Tensor versions on entry to and exit from each module: an in-place change
        # between two modules (or after the last) keeps the same tensor object, so
        # only its version shows it.
        version_in: dict[str, int] = {}
        version_out: dict[str, int] = {}
        handles = []
        for path, module in self.model.named_modules():
            if next(module.children(), None) is None:

                def pre(mod: nn.Module, args: tuple, path=path) -> None:
                    if args and torch.is_tensor(args[0]):
                        version_in[path] = args[0]._version

                def hook(mod: nn.Module, args: tuple, kwargs: dict, out: Any, path=path) -> None:
                    calls.append((path, mod, args, kwargs, out))
                    if torch.is_tensor(out):
                        version_out[path] = out._version

                handles.append(module.register_forward_pre_hook(pre))
                handles.append(module.register_forward_hook(hook, with_kwargs=True))
        try:
            with torch.no_grad():
                result = self.model(self.x[:2])
        except Exception:
            return None
        finally:
            for h in handles:
                h.remove()
        paths = [c[0] for c in calls]
        if paths.count(first.path) != 1 or len(set(paths)) != len(paths):
            return None
        start = paths.index(first.path)
        prev, prev_path = calls[start][4], first.path
        if not torch.is_tensor(prev):
            return None
        width = prev[0].numel()
        steps: list[_Step] = []
        for path, module, args, kwargs, out in calls[start + 1 :]:
            if kwargs or len(args) != 1 or args[0] is not prev or not torch.is_tensor(out):
                return None
            if version_in.get(path) != version_out.get(prev_path):
                return None  # changed in place on the way
            prev_path = path
            step = _chain_step(path, module, args[0])
            if step is None:
                return None
            steps.append(step)
            prev = out
            width = max(width, out[0].numel())
        linear = [i for i, st in enumerate(steps) if st.kind == "linear"]
        if (
            result is not prev
            or result._version != version_out.get(prev_path)
            or prev.ndim != 2
            or prev.shape[1] < 2
            or not linear
            or any(st.kind == "flatten" for st in steps[linear[-1] :])
        ):
            return None
        in_chain = {first.path} | {st.path for st in steps}
        for path, module in self.model.named_modules():
            if any(True for _ in module.parameters(recurse=False)) and path not in in_chain:
                return None
        return _Chain(steps=tuple(steps), classes=int(prev.shape[1]), width=int(width))

    def _verify_shortcut(self, first: _FirstLayer) -> bool:
        g = torch.Generator().manual_seed(12345)
        d = torch.randn(2, self.n, generator=g).to(self.device, self.dtype)
        d *= self.theta0.norm() / (d.norm(dim=1, keepdim=True) * 10 + 1e-12)
        coef = torch.tensor([[0.3, -0.7]], dtype=self.dtype, device=self.device)
        sub = self._on(self.x[:64], self.y[:64])
        fast = sub._evaluate_shortcut(first, coef, d, self.theta0)[0]
        plain = sub.evaluate(_combine(self.theta0, coef, d))[0]
        tol = 1e-4 if self.dtype in (torch.float16, torch.bfloat16, torch.float32) else 1e-9
        return bool(torch.allclose(fast, plain, rtol=tol, atol=tol))

    def _verify_batched(self, first: _FirstLayer) -> bool:
        """The batched tail against the plain path, on 64 examples with targets 0, 1, 2, ..."""
        assert first.chain is not None
        g = torch.Generator().manual_seed(54321)
        d = torch.randn(2, self.n, generator=g).to(self.device, self.dtype)
        d *= self.theta0.norm() / (d.norm(dim=1, keepdim=True) * 10 + 1e-12)
        coef = torch.tensor([[0.3, -0.7], [-0.5, 0.0], [0.0, 0.0]], dtype=self.dtype)
        coef = coef.to(self.device)
        x = self.x[:64]
        y = torch.arange(len(x), device=self.device) % first.chain.classes
        sub = self._on(x, y)
        try:
            fast = sub._evaluate_batched(first, coef, d, self.theta0)[0]
        except Exception:
            return False
        plain = sub.evaluate(_combine(self.theta0, coef, d))[0]
        tol = 1e-4 if self.dtype in (torch.float16, torch.bfloat16, torch.float32) else 1e-9
        return bool(torch.allclose(fast, plain, rtol=tol, atol=tol))


# First-layer outputs kept between calls of the fast path (see _first_outputs).
_CACHE_BYTES = 2**28

# Points per block of the batched tail (fixed, so that no point's value depends on
# how many are evaluated at once), and the most numbers in one block's activation
# (2**23: 32 MB in float32); data chunks are split into rows to stay below it.
_BLOCK = 8
_BLOCK_ELEMENTS = 2**23

# Parameter-free modules applied elementwise: exactly rounded ones run on a whole
# block at once, the others (transcendental, whose vector and scalar code paths may
# round differently) slab by slab.
_EXACT = (nn.ReLU, nn.LeakyReLU, nn.Identity, nn.Dropout)
_POINTWISE = (nn.Tanh, nn.Sigmoid, nn.GELU, nn.SiLU, nn.ELU, nn.Softplus)

# Numbers per call of a transcendental function in the loss (see _by_pieces); below
# the size at which torch splits such a call between threads.
_PIECE = 2048

# ATen's fused relu(a + alpha·b) (what TorchScript fuses `add` + `relu` into): one
# pass over memory instead of two, measurably faster on these memory-bound stacks.
# Private, so looked up defensively; the fallback computes the same values.
_FUSED_ADD_RELU = getattr(torch.ops.aten, "_add_relu", None)
_FUSED_ADD_RELU_ = getattr(torch.ops.aten, "_add_relu_", None)

# Elements of θ formed at once by the plain path of `evaluate_affine` (64 MB in float32).
_POINTS_BLOCK = 2**24


def _describe_callable(fn: Any, depth: int = 0) -> Any:
    """A JSON-able description of a loss: its class and settings, or its code and closure.

    Two losses with the same description compute the same function (a module's
    hyper-parameters and tensors, a function's byte code, constants and closed-over
    values, a ``functools.partial``'s arguments are all included).
    """
    import functools

    from ._keys import tensor_digest

    if depth > 4:
        return repr(type(fn))
    if torch.is_tensor(fn):
        return tensor_digest(fn)
    if isinstance(fn, int | float | str | bool | type(None)):
        return fn
    if isinstance(fn, tuple | list):
        return [_describe_callable(v, depth + 1) for v in fn]
    if isinstance(fn, dict):
        return {str(k): _describe_callable(v, depth + 1) for k, v in sorted(fn.items(), key=str)}
    if isinstance(fn, functools.partial):
        return {
            "partial": _describe_callable(fn.func, depth + 1),
            "args": _describe_callable(list(fn.args), depth + 1),
            "kwargs": _describe_callable(dict(fn.keywords), depth + 1),
        }
    kind = type(fn)
    name = f"{kind.__module__}.{kind.__qualname__}"
    if isinstance(fn, nn.Module):
        settings = {
            k: _describe_callable(v, depth + 1)
            for k, v in vars(fn).items()
            if not k.startswith("_") and k != "training"
        }
        tensors = [[k, tensor_digest(v)] for k, v in fn.state_dict().items()]
        return {"module": name, "settings": settings, "tensors": tensors}
    code = getattr(fn, "__code__", None)
    if code is not None:
        cells = [c.cell_contents for c in (getattr(fn, "__closure__", None) or ())]
        return {
            "function": f"{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', '')}",
            "code": code.co_code.hex(),
            "consts": repr(code.co_consts),
            "closure": _describe_callable(cells, depth + 1),
            "defaults": _describe_callable(
                list(getattr(fn, "__defaults__", None) or ()), depth + 1
            ),
        }
    return {"object": name, "repr": repr(fn)[:200]}


def _shares_memory(t: Tensor, source: Tensor) -> bool:
    return t.device == source.device and (
        t.untyped_storage().data_ptr() == source.untyped_storage().data_ptr()
    )


def _per_example(t: Tensor) -> str:
    """``[N, 3, 4]`` for a tensor of ``N`` examples of shape ``[3, 4]``."""
    return "[" + ", ".join(["N", *(str(d) for d in t.shape[1:])]) + "]"


def _error_line(err: BaseException) -> str:
    """``Type: first line of the message`` of an exception from user code."""
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__


def _loss_name(loss_fn: Any) -> str:
    fn = loss_fn.func if isinstance(loss_fn, functools.partial) else loss_fn
    if isinstance(fn, nn.Module):
        return type(fn).__name__
    return fn.__name__ if any(fn is f for f in _TORCH_LOSSES) else "loss_fn"


def _class_loss(loss_fn: Any) -> int | None:
    """For torch's cross-entropy or NLL loss (class-index targets): its ``ignore_index``
    (-100 by default); None for any other loss."""
    spec = _class_weights(loss_fn)
    return None if spec is None else spec[1]


def _class_weights(loss_fn: Any) -> tuple[Tensor | None, int] | None:
    """``(weight, ignore_index)`` of torch's cross-entropy or NLL loss, else None."""
    if isinstance(loss_fn, nn.CrossEntropyLoss | nn.NLLLoss):
        return loss_fn.weight, int(loss_fn.ignore_index)
    keywords: dict[str, Any] = {}
    if isinstance(loss_fn, functools.partial):
        keywords, loss_fn = dict(loss_fn.keywords), loss_fn.func
    if loss_fn is F.cross_entropy or loss_fn is F.nll_loss:
        return keywords.get("weight"), int(keywords.get("ignore_index", -100))
    return None


def _elementwise_loss(loss_fn: Any) -> bool:
    """torch's elementwise losses, which broadcast outputs against targets of another shape."""
    fn = loss_fn.func if isinstance(loss_fn, functools.partial) else loss_fn
    return isinstance(fn, _ELEMENTWISE_MODULES) or any(fn is f for f in _ELEMENTWISE_FUNCTIONS)


def _bad_labels(y: Tensor, classes: int, ignore: int | None) -> tuple[int, int] | None:
    """``(example, label)`` of the first label outside ``[0, classes)`` (not ``ignore``)."""
    bad = (y < 0) | (y >= classes)
    if ignore is not None:
        bad &= y != ignore
    if not bool(bad.any()):
        return None
    rows = bad.reshape(len(y), -1)
    i = int(rows.any(1).nonzero()[0, 0])
    label = int(y.reshape(len(y), -1)[i][rows[i]][0])
    return i, label


def _loss_failure(out: Tensor, y: Tensor, err: Exception) -> str:
    """The sentence for a loss that raises on the probe's outputs and targets."""
    hint = "give targets the loss takes"
    integer = not (y.is_floating_point() or y.is_complex())
    if integer and y.ndim == 2 and y.shape[1] == 1 and out.ndim == 2 and out.shape[1] > 1:
        hint = "class indices have shape [N]: pass y.squeeze(1)"
    elif not integer and y.ndim == 1 and out.ndim == 2 and bool((y == y.round()).all()):
        hint = "the targets look like class indices stored as floats: pass y.long()"
    return (
        f"loss_fn fails on the model's outputs of shape {list(out.shape)} and targets of "
        f"shape {list(y.shape)} ({str(y.dtype)[6:]}): {_error_line(err)}; {hint}"
    )


_ELEMENTWISE_MODULES: tuple[type[nn.Module], ...] = (
    nn.MSELoss,
    nn.L1Loss,
    nn.SmoothL1Loss,
    nn.HuberLoss,
    nn.BCELoss,
    nn.BCEWithLogitsLoss,
)
_ELEMENTWISE_FUNCTIONS = (
    F.mse_loss,
    F.l1_loss,
    F.smooth_l1_loss,
    F.huber_loss,
    F.binary_cross_entropy,
    F.binary_cross_entropy_with_logits,
)
_TORCH_LOSSES = (F.cross_entropy, F.nll_loss, *_ELEMENTWISE_FUNCTIONS)


def _same_params(a: list[dict[str, Tensor]], b: list[dict[str, Tensor]]) -> bool:
    return len(a) == len(b) and all(
        p.keys() == q.keys() and all(torch.equal(p[k], q[k]) for k in p)
        for p, q in zip(a, b, strict=True)
    )


def _combine(origin: Tensor, coef: Tensor, dirs: Tensor) -> Tensor:
    """``origin + Σ_j coef[:, j] · dirs[j]`` as ``[K, n]``, elementwise (row k never
    depends on the other rows, unlike a matrix product whose kernel may vary with K)."""
    points = origin.repeat(len(coef), 1)
    for j in range(len(dirs)):
        points += coef[:, j : j + 1] * dirs[j]
    return points


class _Tail:
    """The parameters outside the first layer at ``origin + Σ_j c_j dirs[j]``.

    They are gathered once into a contiguous ``[n_tail]`` origin and ``[m, n_tail]``
    directions; each point then costs ``m`` fused multiply-adds over ``n_tail``
    numbers and a dict of views.
    """

    def __init__(self, space: ParamSpace, exclude: set[str], origin: Tensor, dirs: Tensor):
        keep = [i for i, name in enumerate(space.names) if name not in exclude]
        self.names = [space.names[i] for i in keep]
        self.shapes = [space.shapes[i] for i in keep]
        self.numels = [space.numels[i] for i in keep]
        pieces = [slice(space.offsets[i], space.offsets[i] + space.numels[i]) for i in keep]
        gather = lambda v: torch.cat([v[..., s] for s in pieces], dim=-1)  # noqa: E731
        self.origin = gather(origin) if keep else origin[:0]
        self.dirs = gather(dirs) if keep else dirs[:, :0]

    def at(self, c: Sequence[float]) -> dict[str, Tensor]:
        vec = _combine_rows(self.origin, self.dirs, c)
        return dict(
            zip(
                self.names,
                (p.view(s) for p, s in zip(vec.split(self.numels), self.shapes, strict=True)),
                strict=True,
            )
        )


def _combine_rows(base: Tensor, rows: Sequence[Tensor] | Tensor, c: Sequence[float]) -> Tensor:
    """``base + Σ_j c_j rows[j]`` as a new tensor, adding in order and skipping zero ``c_j``.

    Elementwise fused adds (not a tensordot) so each point's value does not
    depend on which other points are evaluated with it, and skipping zeros
    makes a batch of rays (one nonzero coefficient per point) cost O(1) per
    point instead of O(m).
    """
    out = None
    for j, cj in enumerate(c):
        if cj != 0:
            out = torch.add(base, rows[j], alpha=cj) if out is None else out.add_(rows[j], alpha=cj)
    return base.clone() if out is None else out


def _plain_cross_entropy(loss_fn: Any) -> bool:
    """``loss_fn`` is the mean cross-entropy with nothing added (no weights, no smoothing)."""
    if loss_fn is F.cross_entropy:
        return True
    return (
        type(loss_fn) is nn.CrossEntropyLoss
        and loss_fn.weight is None
        and loss_fn.label_smoothing == 0.0
        and loss_fn.reduction == "mean"
        and not (loss_fn._forward_hooks or loss_fn._forward_pre_hooks)
    )


def _chain_step(path: str, module: nn.Module, x: Tensor) -> _Step | None:
    """The batched tail's step for ``module`` (given its input ``x``), or None if unsupported."""
    kind = type(module)  # exact types: a subclass may change forward
    if kind is nn.Linear:
        if x.ndim != 2:
            return None
        prefix = f"{path}." if path else ""
        return _Step(
            kind="linear",
            path=path,
            weight=prefix + "weight",
            bias=prefix + "bias" if module.bias is not None else None,
            shape=(module.out_features, module.in_features),
        )
    if kind is nn.Flatten:
        return _Step("flatten", path) if (module.start_dim, module.end_dim) == (1, -1) else None
    if kind in _EXACT and not (kind is nn.Dropout and module.training):
        return _Step("exact", path, relu=kind is nn.ReLU)
    if kind in _POINTWISE:
        return _Step("pointwise", path)
    return None


def _exact_inplace(module: nn.Module, x: Tensor) -> None:
    """Apply an exactly rounded elementwise module (``_EXACT``) to ``x`` in place."""
    if type(module) is nn.ReLU:
        x.relu_()
    elif type(module) is nn.LeakyReLU:
        F.leaky_relu_(x, module.negative_slope)
    # Identity, Dropout in eval mode: nothing to do.


def _cross_entropy(
    scores: Tensor, target: Tensor, below: Tensor, used: int
) -> tuple[Tensor, Tensor]:
    """Per point: summed cross-entropy (float64) and number correct, over the first ``used`` rows.

    ``scores`` is ``[K, C, rows]``; ``target`` ``[rows]``; ``below[c, i]`` is 0 if
    ``c < target[i]``, else -inf. Per example ``ℓ = log Σ_c exp(s_c − m) − (s_y − m)`` with
    ``m = max_c s_c`` (what ``cross_entropy`` computes); an example is correct
    when ``s_y`` is the maximum and no lower class index reaches it (``argmax``
    returns the first maximum). Points with a non-finite loss (NaN scores) take
    their count from ``argmax`` itself.
    """
    shifted = scores - scores.amax(1, keepdim=True)
    at_y = shifted.gather(1, target.expand(len(scores), 1, -1)).squeeze(1)
    ties_below = (shifted + below).amax(1) == 0  # a lower class reaches the maximum
    hits = (at_y == 0) & ~ties_below
    # Terms below exp(floor) are too small to change a sum that holds exp(0) = 1, and
    # computing them as subnormal numbers is ~40x slower: raise them to the floor.
    shifted.clamp_min_(math.log(torch.finfo(shifted.dtype).tiny) + 1)
    _by_pieces(shifted, torch.Tensor.exp_)
    total = shifted.sum(1)
    _by_pieces(total, torch.Tensor.log_)
    loss = (total - at_y)[:, :used].to(torch.float64).sum(1)
    correct = hits[:, :used].sum(1).to(torch.float64)
    if not math.isfinite(float(loss.sum())):
        for k in torch.nonzero(~torch.isfinite(loss)).flatten().tolist():
            correct[k] = (scores[k, :, :used].argmax(0) == target[:used]).sum()
    return loss, correct


def _by_pieces(x: Tensor, op: Callable[[Tensor], Any]) -> None:
    """Apply the in-place elementwise ``op`` to each point's slab of ``x[K, ...]``, in
    pieces of ``_PIECE`` numbers.

    One operation over the whole stack may split a slab between threads, and the
    kernels of transcendental functions (vectorised, with special code for the
    ends of an array and for its alignment) may round the numbers near such a
    split differently. Here every piece is its own single-threaded call, at the
    same offset and alignment in every slab, so no value depends on where its
    point sits in the stack.
    """
    for slab in x.view(len(x), -1):
        for piece in slab.split(_PIECE):
            op(piece)


def _add_relu(a: Tensor, b: Tensor, alpha: float, out: Tensor) -> None:
    """``out = relu(a + alpha·b)`` in one pass where torch has the fused kernel."""
    if _FUSED_ADD_RELU is not None and a.device.type == "cpu":
        _FUSED_ADD_RELU.out(a, b, alpha=alpha, out=out)
    else:
        torch.add(a, b, alpha=alpha, out=out).relu_()


def _add_relu_(a: Tensor, b: Tensor) -> None:
    """``a = relu(a + b)`` in place, in one pass where torch has the fused kernel."""
    if _FUSED_ADD_RELU_ is not None and a.device.type == "cpu":
        _FUSED_ADD_RELU_(a, b)
    else:
        a.add_(b).relu_()


class _Combiner:
    """Writes ``base + Σ_j c_j rows[j]`` into a given tensor, with :func:`_combine_rows`'s
    arithmetic, keeping the sum of all but the last nonzero term for the next point:
    the points of a plane's row share their first coefficient, so each then costs
    one fused multiply-add instead of two."""

    def __init__(self, base: Tensor, rows: Sequence[Tensor] | Tensor):
        self.base, self.rows = base, rows
        self.key: tuple | None = None
        self.partial = base

    def into(self, out: Tensor, c: Sequence[float], relu: bool = False) -> None:
        """``out = base + Σ_j c_j rows[j]``, or its ReLU with the last addition fused."""
        nonzero = [j for j, cj in enumerate(c) if cj != 0]
        if not nonzero:
            out.copy_(self.base)
            if relu:
                out.relu_()
            return
        *head, last = nonzero
        key = tuple((j, c[j]) for j in head)
        if key != self.key:
            coefficients = [c[j] if j in head else 0.0 for j in range(len(c))]
            self.partial = _combine_rows(self.base, self.rows, coefficients) if head else self.base
            self.key = key
        if relu:
            _add_relu(self.partial, self.rows[last], c[last], out)
        else:
            torch.add(self.partial, self.rows[last], alpha=c[last], out=out)


class _BlockParams:
    """Per-point parameters of the chain's Linears, for blocks of ``points``.

    The chain's parameters that are coordinates are formed per point into rows of
    one ``[G, S]`` buffer (a group of up to G points, several blocks) whose row
    length is a multiple of 64 numbers (so each point's matrices share one
    alignment); those outside the space are copied once into every row. Weights
    of all Linears but the last are stored transposed (``[in, out]``, what the
    batched product reads fastest).
    """

    def __init__(
        self,
        obj: Objective,
        chain: _Chain,
        origin: Tensor,
        dirs: Tensor,
        points: Sequence[Sequence[float]],
    ):
        at_origin = obj.space.unflatten(origin)
        along = [obj.space.unflatten(d) for d in dirs]
        last = [st for st in chain.steps if st.kind == "linear"][-1]
        varying: list[tuple[str, Callable[[Tensor], Tensor]]] = []
        fixed: list[tuple[str, Tensor]] = []
        shapes: dict[str, tuple[int, ...]] = {}
        for st in chain.steps:
            if st.kind != "linear":
                continue
            module = obj.model.get_submodule(st.path)
            out, inp = st.shape
            prep = (lambda t: t) if st is last else (lambda t: t.t())  # noqa: E731
            shapes[st.weight] = (out, inp) if st is last else (inp, out)
            parts = [(st.weight, module.weight, prep)]
            if st.bias is not None:
                shapes[st.bias] = (out,)
                parts.append((st.bias, module.bias, lambda t: t))
            for name, value, fn in parts:
                if name in at_origin:
                    varying.append((name, fn))
                else:
                    fixed.append((name, fn(value.detach())))
        flat = lambda pieces: torch.cat(  # noqa: E731
            [fn(pieces[name]).reshape(-1) for name, fn in varying]
        )
        self.n_tail = sum(math.prod(shapes[name]) for name, _ in varying)
        self.origin = flat(at_origin) if varying else origin[:0]
        self.dirs = [flat(d) for d in along] if varying else []
        # Whether all directions are finite: one sum tells (it can overflow when they
        # are, which only costs time; see _form).
        self.finite = all(math.isfinite(float(d.sum())) for d in self.dirs)
        used = self.n_tail + sum(v.numel() for _, v in fixed)
        row = used + (-used % 64)
        self.points = points
        self.group = min(len(points), max(1, _BLOCK_ELEMENTS // row // _BLOCK) * _BLOCK)
        self.start: int | None = None  # first point of the group in the buffer
        self.buffer = torch.empty((self.group, row), dtype=origin.dtype, device=origin.device)
        offsets: dict[str, int] = {}
        offset = 0
        for name, _ in varying:
            offsets[name] = offset
            offset += math.prod(shapes[name])
        for name, value in fixed:
            offsets[name] = offset
            self.buffer[:, offset : offset + value.numel()] = value.reshape(-1)
            offset += value.numel()
        self.views = {
            name: self.buffer[:, o : o + math.prod(shapes[name])].view(-1, *shapes[name])
            for name, o in offsets.items()
        }

    def block(self, s: int) -> dict[str, Tensor]:
        """The parameters of points ``s, ..., s + _BLOCK - 1`` (``s`` a multiple of ``_BLOCK``)."""
        start = s - s % self.group
        if start != self.start:
            self._form(self.points[start : start + self.group])
            self.start = start
        r = s - start
        return {name: view[r : r + _BLOCK] for name, view in self.views.items()}

    def _form(self, points: Sequence[Sequence[float]]) -> None:
        """Rows ``origin + Σ_j c[k, j] dirs[j]`` for ``points``.

        Each row is ``c[k, j1]·dirs[j1] + origin + c[k, j2]·dirs[j2] + ...`` over the
        nonzero coefficients in order, with separate (exactly rounded) multiplies
        and adds. For a plane all rows are formed at once, direction by direction
        (four operations for the group: adding ``0·dirs[j]`` to a row changes
        nothing); for rays (one nonzero coefficient per point) row by row. Either
        way a row's numbers do not depend on the other rows.
        """
        if not self.n_tail:
            return
        tail = self.buffer[: len(points), : self.n_tail]
        columns = [j for j in range(len(self.dirs)) if any(c[j] != 0 for c in points)]
        terms = sum(1 for c in points for cj in c if cj != 0)
        # Direction by direction while at least half the coefficients are nonzero; and
        # never with non-finite directions (0·inf is NaN: zero coefficients are skipped).
        if self.finite and 2 * terms >= len(columns) * len(points):
            if not columns:
                tail.copy_(self.origin)
            for i, j in enumerate(columns):
                c = torch.tensor([p[j] for p in points], dtype=tail.dtype).to(tail.device)
                if i:
                    tail.add_(c[:, None] * self.dirs[j])
                else:
                    torch.mul(c[:, None], self.dirs[j], out=tail)
                    tail.add_(self.origin)
            return
        for row, c in zip(tail, points, strict=True):
            nonzero = [j for j, cj in enumerate(c) if cj != 0]
            if not nonzero:
                row.copy_(self.origin)
            for i, j in enumerate(nonzero):
                if i:
                    row.add_(self.dirs[j] * c[j])
                else:
                    torch.mul(self.dirs[j], c[j], out=row)
                    row.add_(self.origin)


class _StopForward(Exception):
    """Raised by a hook to end a forward pass once the first layer's input is known."""


def _model_device(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")
