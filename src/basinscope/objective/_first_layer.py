"""The first-layer shortcut engine.

For points on lines, planes and rays, ``θ = θ0 + Σ_j c_j d_j``, the first
parametrised layer (Linear, Conv, Embedding) is linear in its weights, so its
output is ``out(θ0) + Σ_j c_j out(d_j)``, computed once per data chunk; only the
rest of the network runs per point, with only the parameters after the first
layer formed per point. The first layer's outputs are kept between calls with
the same origin and directions (a surface evaluates its grid a chunk at a time).
It gives the same numbers as the plain engine (to rounding); the plan verifies
it against the plain engine before first use.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call

from ._engine import Batches
from ._space import ParamSpace
from ._tree import call

# Layers whose output is jointly linear in (weight, bias) for a fixed input.
_LINEAR_LAYERS: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.Embedding,
)

# First-layer outputs kept between calls of the fast path (see first_outputs).
_CACHE_BYTES = 2**28


@dataclass(frozen=True)
class _FirstLayer:
    """The first parametrised layer, when the fast path applies to it."""

    path: str  # module path in the model
    weight: str  # full parameter names
    bias: str | None


class FirstLayerEngine:
    """The first layer's outputs formed from ``out(θ0)`` and ``out(d_j)``; the rest per point."""

    name = "first_layer"

    def __init__(self, first: _FirstLayer):
        self.first = first

    def __repr__(self) -> str:
        return f"FirstLayerEngine({self.first.path!r})"

    @torch.no_grad()
    def evaluate(
        self, batches: Batches, coef: Tensor, dirs: Tensor, origin: Tensor
    ) -> tuple[Tensor, Tensor]:
        first = self.first
        layer = batches.model.get_submodule(first.path)
        # Only the parameters after the first layer are needed per point, so only
        # they are formed: for an MLP on images the first layer holds most of θ.
        tail = _Tail(batches.space, exclude={first.weight, first.bias}, origin=origin, dirs=dirs)
        # Python floats: `alpha=` takes a scalar without a device sync per point.
        rows = coef.tolist()
        loss = torch.zeros(len(rows), dtype=torch.float64, device=batches.device)
        correct = torch.zeros_like(loss)
        injected: list[Tensor] = []
        for x, y, base, outs in first_outputs(batches, first, layer, origin, dirs):
            # Our private copy's first layer returns the precomputed output.
            layer.forward = lambda *args, **kwargs: injected[0]
            try:
                for k, c in enumerate(rows):
                    injected[:] = [_combine_rows(base, outs, c)]
                    out = batches.forward(tail.at(c), x)
                    dl, dc = batches.stats(out, y)
                    loss[k] += dl
                    correct[k] += dc
            finally:
                del layer.forward
                injected.clear()
        return batches.reduce(loss, correct)


def first_outputs(
    batches: Batches, first: _FirstLayer, layer: nn.Module, origin: Tensor, dirs: Tensor
) -> Iterator[tuple[Tensor, Tensor, Tensor, list[Tensor]]]:
    """``(x, y, out(origin), [out(d_j)])`` of the first layer for each data chunk.

    A surface calls :meth:`Objective.evaluate_affine` once per chunk of grid points with
    the same origin and directions, and these outputs cost ``m + 1`` passes of
    the first layer over the data (for an MLP on images, more than the rest
    of a 64-point chunk's work). So they are kept for the next call when they
    fit in ``_CACHE_BYTES``, keyed by the values of the first layer's part of
    the origin and directions, which with the data determine them.
    """
    local = {"weight": first.weight} | ({"bias": first.bias} if first.bias else {})

    def layer_params(vec: Tensor, fixed: Callable[[str], Tensor]) -> dict[str, Tensor]:
        """The layer's part of a flat vector; ``fixed(k)`` outside the space."""
        chosen = batches.space.unflatten(vec)
        return {k: chosen[full] if full in chosen else fixed(k) for k, full in local.items()}

    own = lambda k: getattr(layer, k)  # noqa: E731
    zero = lambda k: torch.zeros_like(getattr(layer, k))  # noqa: E731  (directions)
    params = [layer_params(origin, own)] + [layer_params(d, zero) for d in dirs]
    cache = batches.cache.get("first_layer")
    if cache is not None and cache[0] is batches.x and _same_params(cache[1], params):
        yield from cache[2]
        return
    kept: list[tuple[Tensor, Tensor, Tensor, list[Tensor]]] | None = []
    size = 0
    for x, y in batches.chunks():
        z = _layer_input(batches.model, layer, x)
        base, *outs = [functional_call(layer, p, (z,)) for p in params]
        size += base.numel() * base.element_size() * len(params)
        if kept is not None and size <= _CACHE_BYTES:
            kept.append((x, y, base, outs))
        else:
            kept = None
        yield x, y, base, outs
    if kept is not None:
        key = [{k: v.clone() for k, v in p.items()} for p in params]
        batches.cache["first_layer"] = (batches.x, key, kept)


def _layer_input(model: nn.Module, layer: nn.Module, x: Tensor) -> Tensor:
    """The first layer's input for data ``x``: run the model up to that layer, then stop."""
    captured: list[Tensor] = []

    def stop(mod: nn.Module, args: tuple) -> None:
        captured.append(args[0])
        raise _StopForward

    handle = layer.register_forward_pre_hook(stop)
    try:
        call(model, x)
    except _StopForward:
        pass
    finally:
        handle.remove()
    return captured[0]


class _StopForward(Exception):
    """Raised by a hook to end a forward pass once the first layer's input is known."""


def _same_params(a: list[dict[str, Tensor]], b: list[dict[str, Tensor]]) -> bool:
    return len(a) == len(b) and all(
        p.keys() == q.keys() and all(torch.equal(p[k], q[k]) for k in p)
        for p, q in zip(a, b, strict=True)
    )


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
