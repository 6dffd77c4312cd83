"""Reading the evaluation data: ``(X, y)``, a ``Dataset`` or a ``DataLoader`` as two
tensors of the Objective's own (checked before any work: pairs, shapes, random
transforms, samplers that draw other examples each pass or draw with replacement,
iterable datasets that yield other examples each pass (up to 64 MiB of tensors:
a larger one is read once and not checked), NaN/inf values)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils import _pytree

from .._checks import check_int
from ..errors import BasinscopeError
from ._tree import Tree, leaves, length, take, tree_map


def prepare(
    data: Any,
    subset: int | None,
    seed: int,
    dtype: torch.dtype,
    device: torch.device,
    *,
    inputs: tuple[str, ...] | None = None,
) -> tuple[Tree, Tree]:
    """The evaluation data ``(x, y)`` of ``data``: read, checked, subset, cast and moved.

    ``x`` and ``y`` are tensors, tuples or dicts of tensors (examples first). Dict
    data is split: ``x`` holds the keys ``inputs`` names (default every key but
    ``"labels"``), ``y`` is the whole dict. A fixed random subset of ``subset``
    examples is drawn with ``seed`` (kept in the data's order); floating-point
    tensors take ``dtype``; the result never shares memory with the caller's
    tensors; NaN/inf values are refused.
    """
    x, y, fresh = _as_tensors(data)
    if y is not None and inputs is not None:
        raise BasinscopeError(
            "inputs= names the keys of dict data the model takes, but this data is "
            "(inputs, targets) pairs: leave inputs out"
        )
    whole = x if y is None else (x, y)
    source = leaves(whole)
    n = length(whole, "data")
    if y is not None and length(x, "inputs") != length(y, "targets"):
        raise BasinscopeError(
            f"inputs and targets differ in length ({length(x, 'inputs')} vs {length(y, 'targets')})"
        )
    if n == 0:
        raise BasinscopeError("the evaluation data is empty")
    if subset is not None:
        subset = check_int("subset", subset, minimum=1)
        if not 1 <= subset <= n:
            raise BasinscopeError(f"subset must be in [1, {n}], got {subset}")
        g = torch.Generator().manual_seed(seed)
        whole = take(whole, torch.randperm(n, generator=g)[:subset].sort().values)
    whole = tree_map(lambda t: (t.to(dtype) if t.is_floating_point() else t).to(device), whole)
    if not fresh:  # never alias the caller's memory (a later in-place change)
        whole = tree_map(
            lambda t: t.clone() if any(_shares_memory(t, s) for s in source) else t, whole
        )
    if y is None:
        _check_finite_tree("data", whole)
        return _split(whole, inputs), whole
    _check_finite_tree("inputs", whole[0])
    _check_finite_tree("targets", whole[1])
    return whole[0], whole[1]


def _split(data: Mapping[str, Tensor], inputs: tuple[str, ...] | None) -> dict[str, Tensor]:
    """The model's inputs of dict data: the keys ``inputs`` names, or all but ``labels``."""
    keys = list(data)
    if inputs is None:
        if "labels" not in data:
            raise BasinscopeError(
                f"the data is a dict without 'labels' (keys {', '.join(map(repr, keys))}); "
                "give (inputs, targets) pairs, a 'labels' field, or inputs=(the keys the "
                "model takes)"
            )
        return {k: v for k, v in data.items() if k != "labels"}
    unknown = [k for k in inputs if k not in data]
    if unknown:
        raise BasinscopeError(
            f"inputs names {', '.join(map(repr, unknown))}, not a key of the data "
            f"({', '.join(map(repr, keys))})"
        )
    return {k: data[k] for k in inputs}


def _check_finite_tree(what: str, tree: Tree) -> None:
    if torch.is_tensor(tree):
        _first_non_finite(what, tree)
        return
    named = tree.items() if isinstance(tree, Mapping) else enumerate(tree)
    for k, t in named:
        _check_finite_tree(f"{what} {k!r}" if isinstance(k, str) else f"{what}[{k}]", t)


# ---------------------------------------------------------------- reading data
# How many items of a Dataset are read twice to catch random transforms.
_REREAD = 8


def _as_tensors(data: Any) -> tuple[Tree, Tree | None, bool]:
    """Materialise ``(X, y)``, a dict, a ``Dataset`` or a ``DataLoader`` as trees.

    Returns ``(x, y, fresh)``, with ``y`` None for dict data (split later);
    ``fresh`` is False when the tensors may share memory with the caller's arrays,
    so the Objective copies them. A DataLoader is read in its dataset's order with
    every example (see :func:`_sequential_loader`); a Dataset's first items are
    read twice to refuse random transforms.
    """
    if isinstance(data, tuple | list):
        if len(data) != 2:
            raise BasinscopeError(
                f"data given as a {type(data).__name__} must be a pair (X, y), got "
                f"{len(data)} items"
            )
        return _tree("the inputs X", data[0]), _tree("the targets y", data[1]), False
    if isinstance(data, Mapping):
        return _tree("the data", data), None, False
    if isinstance(data, torch.utils.data.DataLoader):
        return (*_unpair(_from_loader(data)), True)
    if isinstance(data, torch.utils.data.Dataset) and hasattr(data, "__len__"):
        return (*_unpair(_from_dataset(data)), True)
    raise BasinscopeError(
        f"data of type {type(data).__name__} is not supported; pass (X, y) tensors, "
        "a dict of tensors, a torch Dataset or a DataLoader"
    )


def _unpair(tree: Tree) -> tuple[Tree, Tree | None]:
    """``(x, y)`` of collated pairs, ``(dict, None)`` of collated dict items."""
    return (tree, None) if isinstance(tree, Mapping) else (tree[0], tree[1])


def _tree(what: str, value: Any) -> Tree:
    """A tensor, or a tuple / dict of them, from tensors, arrays and nested numbers."""
    if isinstance(value, Mapping):
        return {k: _tree(f"{what} {k!r}", v) for k, v in value.items()}
    if isinstance(value, tuple) and value and not isinstance(value[0], int | float):
        return tuple(_tree(f"{what}[{i}]", v) for i, v in enumerate(value))
    return _tensor(what, value)


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


def _pair(item: Any, where: str) -> Any:
    """One dataset item or loader batch: a dict (split later) or the ``(x, y)`` of a
    sequence's first two entries."""
    if isinstance(item, Mapping):
        return item
    if not isinstance(item, tuple | list) or len(item) < 2:
        kind = (
            f"a {len(item)}-item {type(item).__name__}"
            if isinstance(item, tuple | list)
            else (f"a {type(item).__name__}")
        )
        raise BasinscopeError(
            f"{where} is {kind}; basinscope needs (x, y) pairs or dicts with 'labels': make "
            "the dataset return (input, target)"
        )
    return (item[0], item[1])


def _stack(what: str, parts: list[Any], cat: bool) -> Tree:
    """Items (``cat=False``) or batches (``cat=True``) of one structure joined leafwise."""
    try:
        flat = [_pytree.tree_flatten(p) for p in parts]
        spec = flat[0][1]
        if any(f[1] != spec for f in flat):
            raise ValueError("the items differ in structure (keys or nesting)")
        columns = zip(*(f[0] for f in flat), strict=True)
        join = torch.cat if cat else torch.stack
        joined = [join([torch.as_tensor(v) for v in col]) for col in columns]
    except (TypeError, ValueError, RuntimeError) as err:
        raise BasinscopeError(
            f"the {what} cannot be joined into tensors ({err}); every example needs the "
            "same structure and shapes"
        ) from err
    return _pytree.tree_unflatten(joined, spec)


def _from_dataset(ds: Any) -> Tree:
    n = len(ds)
    if n == 0:
        raise BasinscopeError("the dataset is empty")
    raw = [ds[i] for i in range(n)]
    items = [_pair(it, f"dataset item {i}") for i, it in enumerate(raw)]
    _check_rereads(ds, raw)
    return _stack("dataset's items", items, cat=False)


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


def _from_loader(loader: torch.utils.data.DataLoader) -> Tree:
    ds = loader.dataset
    if isinstance(ds, torch.utils.data.IterableDataset):
        data = _read_loader(loader)
        small = _nbytes(*leaves(data)) <= _REREAD_ITERABLE_BYTES
        if small and not _same_value(data, _read_loader(loader)):
            raise BasinscopeError(
                f"the DataLoader's {type(ds).__name__} yields other examples on a second "
                "pass (a random stream or augmentation?); basinscope needs the same data "
                "every time: pass a deterministic dataset"
            )
        return data
    indices = _sampler_indices(loader)
    if loader.batch_sampler is None:  # batch_size=None: the loader yields single items
        return _from_dataset(ds if indices is None else torch.utils.data.Subset(ds, indices))
    _check_rereads(ds)
    return _read_loader(loader, indices)


# An IterableDataset up to this size (its tensors) is read twice to refuse one that
# yields other examples on each pass; a larger one is read once (not checked).
_REREAD_ITERABLE_BYTES = 64 * 2**20


def _nbytes(*tensors: Tensor) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _read_loader(loader: torch.utils.data.DataLoader, indices: list[int] | None = None) -> Tree:
    """Every example of ``loader`` (``indices`` of its dataset), in order, joined."""
    if loader.batch_sampler is None:  # an IterableDataset yielding single items
        items = [_pair(it, f"item {i} of the DataLoader") for i, it in enumerate(loader)]
        if not items:
            raise BasinscopeError("the DataLoader yielded no items")
        return _stack("DataLoader's items", items, cat=False)
    batches = [
        _pair(batch, f"batch {b} of the DataLoader")
        for b, batch in enumerate(_sequential_loader(loader, indices))
    ]
    if not batches:
        raise BasinscopeError("the DataLoader yielded no batches")
    return _stack("DataLoader's batches", batches, cat=True)


def _sampler_indices(loader: torch.utils.data.DataLoader) -> list[int] | None:
    """The dataset indices a map-style loader evaluates: None for every example in order.

    A shuffling sampler (``RandomSampler`` without replacement over every example)
    reads every example, in the dataset's order. A sampler that picks a fixed part
    of the dataset (``SubsetRandomSampler``: ascending; a custom one that yields the
    same indices every pass: in its order) keeps its part. One that draws with
    replacement, draws another number of examples than the dataset holds, draws
    other examples on each pass or gives an example twice is refused: the
    evaluation would weigh examples by chance.
    """
    data = torch.utils.data
    batcher = loader.batch_sampler
    if batcher is None or type(batcher) is data.BatchSampler:
        sampler = loader.sampler if batcher is None else batcher.sampler
    else:
        sampler = batcher  # a custom batch sampler
    name = type(sampler).__name__
    refuse = (
        "basinscope evaluates a fixed set, each example once: pass a DataLoader without "
        "a sampler (or the dataset itself)"
    )
    if type(sampler) is data.SequentialSampler:
        return None
    if type(sampler) is data.RandomSampler:
        n, drawn = len(sampler.data_source), sampler.num_samples
        if sampler.replacement or drawn != n:
            how = "with replacement" if sampler.replacement else "without replacement"
            raise BasinscopeError(
                f"the DataLoader's RandomSampler draws {drawn} of the {n} examples {how} "
                f"on each pass; {refuse}"
            )
        return None
    if type(sampler) is data.SubsetRandomSampler:
        indices = sorted(int(i) for i in sampler.indices)
    else:
        indices, second = (list(_flat(sampler)) for _ in range(2))
        if indices != second:
            raise BasinscopeError(
                f"the DataLoader's {name} draws different examples on each pass; {refuse}"
            )
    seen: set[int] = set()
    for i in indices:
        if i in seen:
            raise BasinscopeError(
                f"the DataLoader's {name} gives example {i} more than once; {refuse}"
            )
        seen.add(i)
    return indices


def _sequential_loader(
    loader: torch.utils.data.DataLoader, indices: list[int] | None = None
) -> torch.utils.data.DataLoader:
    """A DataLoader over the same examples in the dataset's order, dropping none.

    A shuffling loader gives another order (and with ``batch_size`` chunks,
    another rounding) on every pass and ``drop_last=True`` leaves examples out;
    an evaluation reads every example of ``loader.dataset`` in order instead
    (``indices`` of it when given, see :func:`_sampler_indices`), with the same
    ``collate_fn`` and batch size.
    """
    data = torch.utils.data
    ds = loader.dataset
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


def _shares_memory(t: Tensor, source: Tensor) -> bool:
    return t.device == source.device and (
        t.untyped_storage().data_ptr() == source.untyped_storage().data_ptr()
    )


def _check_dtype(dtype: Any) -> torch.dtype:
    """``dtype`` as a floating-point ``torch.dtype`` (what a model's weights can take)."""
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise BasinscopeError(
            f"dtype must be a floating-point torch dtype (torch.float32, torch.float64, "
            f"torch.bfloat16, torch.float16), got {dtype!r}"
        )
    return dtype


def _model_device(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")
