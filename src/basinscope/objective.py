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
"""

from __future__ import annotations

import copy
import fnmatch
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

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


def _name_matches(name: str, pattern: str) -> bool:
    return name == pattern or name.startswith(pattern + ".") or fnmatch.fnmatchcase(name, pattern)


def _selected(name: str, p: Tensor, include: Include) -> bool:
    if include is None:
        return True
    if callable(include):
        return bool(include(name, p))
    return any(_name_matches(name, pattern) for pattern in include)


@dataclass(frozen=True)
class _FirstLayer:
    """The first parametrised layer, when the fast path applies to it."""

    path: str  # module path in the model
    weight: str  # full parameter names
    bias: str | None


def _as_tensors(data: Any) -> tuple[Tensor, Tensor]:
    """Materialise ``(X, y)``, a ``Dataset`` or a ``DataLoader`` as two tensors."""
    if isinstance(data, tuple | list) and len(data) == 2:
        x, y = data
        return torch.as_tensor(x), torch.as_tensor(y)
    if isinstance(data, torch.utils.data.DataLoader):
        xs, ys = [], []
        for batch in data:
            xs.append(torch.as_tensor(batch[0]))
            ys.append(torch.as_tensor(batch[1]))
        if not xs:
            raise BasinscopeError("the DataLoader yielded no batches")
        return torch.cat(xs), torch.cat(ys)
    if isinstance(data, torch.utils.data.Dataset) and hasattr(data, "__len__"):
        items = [data[i] for i in range(len(data))]
        if not items:
            raise BasinscopeError("the dataset is empty")
        return (
            torch.stack([torch.as_tensor(it[0]) for it in items]),
            torch.as_tensor([it[1] for it in items])
            if not torch.is_tensor(items[0][1])
            else torch.stack([it[1] for it in items]),
        )
    raise BasinscopeError(
        f"data of type {type(data).__name__} is not supported; pass (X, y) tensors, "
        "a torch Dataset or a DataLoader"
    )


class Objective:
    """A model's mean loss and accuracy over a dataset, as a function of θ ∈ ParamSpace.

    Args:
        model: any ``nn.Module``; a private deep copy is made, the original is
            never modified.
        loss_fn: ``loss_fn(outputs, targets) -> scalar`` that averages over the
            batch (every torch loss with ``reduction="mean"``).
        data: ``(X, y)`` tensors or arrays, a ``Dataset`` or a ``DataLoader``.
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
        if batch_size < 1:
            raise BasinscopeError(f"batch_size must be a positive integer, got {batch_size}")
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
        self.loss_fn = loss_fn
        self.space = space or ParamSpace(model, skip_bias_norm=skip_bias_norm)
        self.theta0 = self.space.flatten(self.model).clone()
        self.batch_size = int(batch_size)
        self.seed = seed
        self.x, self.y = self._prepare(data, subset, seed)
        self._first: _FirstLayer | None | bool = False  # False: not probed yet
        self._first_cache: tuple | None = None  # see _first_outputs
        if check_determinism:
            self._check_determinism()

    # ------------------------------------------------------------------ data
    def _prepare(self, data: Any, subset: int | None, seed: int) -> tuple[Tensor, Tensor]:
        x, y = _as_tensors(data)
        if len(x) != len(y):
            raise BasinscopeError(f"inputs and targets differ in length ({len(x)} vs {len(y)})")
        if len(x) == 0:
            raise BasinscopeError("the evaluation data is empty")
        if subset is not None:
            if not 1 <= subset <= len(x):
                raise BasinscopeError(f"subset must be in [1, {len(x)}], got {subset}")
            g = torch.Generator().manual_seed(seed)
            idx = torch.randperm(len(x), generator=g)[:subset].sort().values
            x, y = x[idx], y[idx]
        if x.is_floating_point():
            x = x.to(self.dtype)
        if y.is_floating_point():
            y = y.to(self.dtype)
        return x.to(self.device), y.to(self.device)

    def with_data(self, data: Any, *, subset: int | None = None) -> Objective:
        """The same model, loss and space on other data (e.g. the test set)."""
        other = copy.copy(self)
        other.x, other.y = self._prepare(data, subset, self.seed)
        other._first_cache = None
        return other

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
        """(batch-size × batch loss, number correct) for one chunk, in float64."""
        loss = self.loss_fn(out, y).to(torch.float64) * len(y)
        if out.ndim == 2 and out.shape[1] > 1 and not y.is_floating_point():
            correct = (out.argmax(dim=1) == y).sum().to(torch.float64)
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
        return (loss / self.n_examples).cpu(), (correct / self.n_examples).cpu()

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
        return (loss / self.n_examples).cpu(), (correct / self.n_examples).cpu()

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

    # -------------------------------------------------------------- autograd
    def grad(self, theta: Tensor | None = None) -> Tensor:
        """``∇L(θ)``, ``[n]``, exact over the whole evaluation set."""
        theta = (self.theta0 if theta is None else self._points(theta)[0]).detach()
        total = torch.zeros_like(theta)
        for x, y in self._chunks():
            t = theta.clone().requires_grad_(True)
            loss = self.loss_fn(self._forward(self.space.unflatten(t), x), y) * (
                len(y) / self.n_examples
            )
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
            t = theta.clone().requires_grad_(True)
            loss = self.loss_fn(self._forward(self.space.unflatten(t), x), y) * (
                len(y) / self.n_examples
            )
            (g,) = torch.autograd.grad(loss, t, create_graph=True)
            for k in range(len(vs)):
                (hv,) = torch.autograd.grad(g @ vs[k], t, retain_graph=k < len(vs) - 1)
                total[k] += hv
        return total[0] if torch.as_tensor(v).ndim == 1 else total

    # ---------------------------------------------------------------- probes
    def _check_determinism(self) -> None:
        x = self.x[: min(self.batch_size, 256)]
        params = self.space.unflatten(self.theta0)
        with torch.no_grad():
            a = self._forward(params, x)
            b = self._forward(params, x)
        if not torch.equal(a, b):
            diff = (a - b).abs().max().item()
            raise BasinscopeError(
                f"the model's evaluation is not deterministic (two evaluations of the same "
                f"weights differ by up to {diff:.3g}); disable dropout/noise in eval mode or "
                "pass check_determinism=False"
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
        self._first = first if self._verify_shortcut(first) else None
        return self._first

    def _verify_shortcut(self, first: _FirstLayer) -> bool:
        g = torch.Generator().manual_seed(12345)
        d = torch.randn(2, self.n, generator=g).to(self.device, self.dtype)
        d *= self.theta0.norm() / (d.norm(dim=1, keepdim=True) * 10 + 1e-12)
        coef = torch.tensor([[0.3, -0.7]], dtype=self.dtype, device=self.device)
        sub = self.with_data((self.x[:64], self.y[:64]))
        fast = sub._evaluate_shortcut(first, coef, d, self.theta0)[0]
        plain = sub.evaluate(_combine(self.theta0, coef, d))[0]
        tol = 1e-4 if self.dtype in (torch.float16, torch.bfloat16, torch.float32) else 1e-9
        return bool(torch.allclose(fast, plain, rtol=tol, atol=tol))


# First-layer outputs kept between calls of the fast path (see _first_outputs).
_CACHE_BYTES = 2**28

# Elements of θ formed at once by the plain path of `evaluate_affine` (64 MB in float32).
_POINTS_BLOCK = 2**24


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


class _StopForward(Exception):
    """Raised by a hook to end a forward pass once the first layer's input is known."""


def _model_device(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")
