"""The multi-point engine: ``torch.func.vmap`` over stacked parameters, for any model.

The points ``θ_k = origin + Σ_j coef[k, j] · dirs[j]`` are formed ``B`` at a time as
one ``[B, n]`` matrix (elementwise, :func:`~basinscope.objective.combine`), viewed
as a dict of ``[B, ...]`` parameter tensors, and the model runs once per data
chunk for the whole block:

    out = vmap(forward, in_dims=(0, None))({name: θ[:, piece]}, x),   out[k] = f(θ_k; x)

Only the forward is vmapped. Each point's loss is the Objective's own ``(Σ value,
Σ count)`` applied to ``out[k]`` in a Python loop (a user's loss may call
``.item()`` or branch on the data, which vmap cannot batch; the loss is cheap next
to the forward), summed in float64 over the chunks and divided by the totals
exactly as :class:`~basinscope.objective.PlainEngine` does:

    L(θ_k) = Σ_chunks Σ value(out[k], y) / Σ count,   acc(θ_k) = Σ hits / Σ count.

**Agreement.** With the plain engine, to rounding (a batched kernel may sum in
another order); the plan verifies it before first use. **The other points asked
for:** point ``i`` of a call always takes place ``i mod B`` of block ``i // B``,
and every vmapped call has the same shapes (a block always holds ``B`` points, the
last one padded with copies of the origin whose values are dropped; ``B`` and the
rows per call depend on the model and the data only). A point's value is then a
function of the point and its place ``i mod B`` alone: the same points, or a split
of them at a multiple of ``B`` (a surface's chunks of 64 points), give
bit-identical values. At another place a point agrees to rounding only: a batched
kernel's result may depend on the memory alignment of a point's slab, which
follows its place (seen on the CPU for a Linear after a Conv, whose vmapped output
interleaves the points). ``tests/objective/test_vmap.py`` checks both on every
model of the zoo.

**Cost and memory.** One forward per chunk and block instead of one per chunk and
point: faster where the per-point work is small enough for the per-operation
overhead to matter (small models, small chunks); the plan times it against the
engine it would otherwise use and chooses it only when clearly faster. ``B`` points
hold ``B·n`` parameters and ``B`` points' activations, so ``B ≤ 8`` is capped by
the plain engine's budget for formed points and the chunks are cut into rows that
keep ``B × rows × (activations per example)`` under ``_ACTIVATIONS``.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Iterator

import torch
from torch import Tensor, nn
from torch.func import vmap

from ..errors import BasinscopeError
from ._engine import _POINTS_BLOCK, Batches, Engine, combine
from ._probes import _error_line
from ._space import ParamSpace
from ._tree import Tree, leaves, take

# Points per vmapped call (fixed: see the module docstring on the other points).
_BLOCK = 8

# Numbers in one call's activations, estimated as B × rows × (the input's and every
# leaf module's outputs per example): under no_grad not all of them are alive at
# once, so the estimate is an upper bound of the live ones (2**25: 128 MB in float32).
_ACTIVATIONS = 2**25

# Torch warns, once per operation, when an operation has no batching rule and vmap
# runs it point by point (e.g. CPU flash attention): the values are right, and the
# plan's timing decides whether the engine is worth it.
_SLOW_FALLBACK = r"There is a performance drop because we have not yet implemented the batching"

# The plan's timing of this engine (see faster): 8 points on the first examples,
# doubled up to a chunk until the usual engine takes _LONG_ENOUGH (by then the
# per-operation overhead vmap saves is as small a part of a point's cost as on a
# whole chunk); the best of up to 3 runs within the budget (at least one each);
# chosen when at least _SPEEDUP times as fast. Runs under _MIN_TIMED are too short
# for a timing on a busy machine to tell two engines apart.
_TIMED_POINTS = 8
_LONG_ENOUGH = 0.2
_TIME_BUDGET = 1.0
_SPEEDUP = 1.2
_MIN_TIMED = 0.05


class VmapEngine:
    """``B`` points at once through ``vmap`` of the model's forward; the loss point by point.

    Point ``i`` of a call runs at place ``i mod B`` of its block, and its value is a
    function of the point and that place: the same points split at multiples of
    ``block`` (a surface's chunks of 64) give bit-identical values, other splits
    values equal to rounding (see the module docstring).

    Args:
        block: points per vmapped call ``B`` (the last block is padded to it).
        rows: examples per vmapped call (a chunk is cut into pieces of ``rows``);
            None: whole chunks of ``batch_size``.
    """

    name = "vmap"

    def __init__(self, block: int = _BLOCK, rows: int | None = None):
        if block < 1 or (rows is not None and rows < 1):
            raise BasinscopeError(f"block and rows must be positive, got {block} and {rows}")
        self.block, self.rows = int(block), rows

    def __repr__(self) -> str:
        return f"VmapEngine(block={self.block}, rows={self.rows})"

    @torch.no_grad()
    def evaluate(
        self, batches: Batches, coef: Tensor, dirs: Tensor, origin: Tensor
    ) -> tuple[Tensor, Tensor]:
        """``(loss[K], acc[K])`` at ``origin + Σ_j coef[k, j] dirs[j]``, float64 on the CPU."""
        loss = torch.zeros(len(coef), dtype=torch.float64, device=batches.device)
        correct = torch.zeros_like(loss)
        run = vmap(batches.forward, in_dims=(0, None))
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_SLOW_FALLBACK)
            for s in range(0, len(coef), self.block):
                c = coef[s : s + self.block]
                real = len(c)
                if real < self.block:  # same shapes in every call: pad with the origin
                    c = torch.cat([c, c.new_zeros(self.block - real, c.shape[1])])
                params = _stacked(batches.space, combine(origin, c, dirs))
                for x, y in self._pieces(batches):
                    out = run(params, x)
                    for k in range(real):
                        dl, dc = batches.stats(out[k], y)
                        loss[s + k] += dl
                        correct[s + k] += dc
        return batches.reduce(loss, correct)

    def _pieces(self, batches: Batches) -> Iterator[tuple[Tree, Tree]]:
        """The chunks of ``batches``, each cut into pieces of at most ``rows`` examples."""
        for x, y in batches.chunks():
            n = len(leaves(x)[0])
            if self.rows is None or self.rows >= n:
                yield x, y
                continue
            for s in range(0, n, self.rows):
                part = slice(s, s + self.rows)
                yield take(x, part), take(y, part)


def _stacked(space: ParamSpace, points: Tensor) -> dict[str, Tensor]:
    """``points[B, n]`` as ``{name: [B, *shape]}`` views, the stacked parameters vmap maps over."""
    return {
        name: points[:, o : o + k].view(len(points), *shape)
        for name, o, k, shape in zip(
            space.names, space.offsets, space.numels, space.shapes, strict=True
        )
    }


def vmap_engine(batches: Batches) -> VmapEngine | str:
    """The engine sized for ``batches``, or why it cannot batch points here.

    ``B = min(8, _POINTS_BLOCK // n)`` points per call (the plain engine's budget
    for formed points), refused when under 2; ``rows = _ACTIVATIONS // (B · a)``
    examples per call for ``a`` numbers of activations per example (see
    :func:`activations_per_example`), whole chunks when that is at least
    ``batch_size``. Both depend on the model and the data only, never on the
    points asked for.
    """
    block = min(_BLOCK, _POINTS_BLOCK // batches.space.n)
    if block < 2:
        return f"room for one point at a time ({batches.space.n} parameters)"
    try:
        per_example = activations_per_example(batches)
    except Exception as err:
        return f"the probe forward fails ({_error_line(err)})"
    rows = max(1, int(_ACTIVATIONS // (block * per_example)))
    return VmapEngine(block, None if rows >= batches.batch_size else rows)


@torch.no_grad()
def activations_per_example(batches: Batches) -> float:
    """Numbers in the input and in every leaf module's output, per example, at ``θ0``.

    From one forward of the model on (at most) two examples; an upper bound of the
    activations alive at once under no_grad (most are freed as the forward goes),
    short of the temporaries inside a module (attention scores inside
    ``scaled_dot_product_attention``).
    """
    n = min(2, batches.n_examples)
    x = take(batches.x, slice(0, n))
    sizes = [sum(t.numel() for t in leaves(x))]

    def hook(module: nn.Module, args: tuple, out: object) -> None:
        sizes.append(sum(t.numel() for t in leaves(out)))

    handles = [
        m.register_forward_hook(hook)
        for m in batches.model.modules()
        if next(m.children(), None) is None
    ]
    try:
        batches.forward(batches.space.unflatten(batches.theta0), x)
    finally:
        for h in handles:
            h.remove()
    return max(1.0, sum(sizes) / n)


def faster(engine: Engine, usual: Engine, batches: Batches, dirs: Tensor) -> str | None:
    """None when ``engine`` is at least ``_SPEEDUP`` times as fast as ``usual`` on
    ``_TIMED_POINTS`` points ``θ0 + Σ_j c_j dirs[j]`` (``|c_j| ≤ 1/2``), else why not;
    ``""`` when ``usual`` is too quick to time (nothing to choose between).

    The data are the first 64 examples, doubled up to a chunk (``batch_size``) until
    ``usual`` takes ``_LONG_ENOUGH``: vmap saves per-operation overhead, a smaller
    part of a point's cost on more examples, so it is timed on what a point costs
    in use. Then ``usual`` and ``engine`` run alternately up to three times within
    ``_TIME_BUDGET`` seconds (at least once each) and each one's best time counts;
    a ``usual`` quicker than ``_MIN_TIMED`` even on a chunk is kept without timing
    ``engine`` (``""``: shorter runs are too noisy to compare).
    """
    g = torch.Generator().manual_seed(6789)
    coef = (torch.rand(_TIMED_POINTS, len(dirs), generator=g) - 0.5).to(dirs.device, dirs.dtype)
    most = min(batches.n_examples, max(64, batches.batch_size))
    rows = min(64, most)
    while True:
        sub = batches.on(take(batches.x, slice(0, rows)), take(batches.y, slice(0, rows)))
        first = _seconds(usual, sub, coef, dirs)
        if first >= _LONG_ENOUGH or rows == most:
            break
        rows = min(2 * rows, most)
    best = {usual.name: first, engine.name: math.inf}
    start = time.perf_counter()
    for _ in range(3):
        best[usual.name] = min(best[usual.name], _seconds(usual, sub, coef, dirs))
        if best[usual.name] < _MIN_TIMED:
            return ""
        best[engine.name] = min(best[engine.name], _seconds(engine, sub, coef, dirs))
        if time.perf_counter() - start > _TIME_BUDGET:
            break
    ratio = best[usual.name] / best[engine.name]
    if ratio < _SPEEDUP:
        return f"verified but not faster here ({ratio:.2f}× the {usual.name} engine)"
    return None


def _seconds(engine: Engine, batches: Batches, coef: Tensor, dirs: Tensor) -> float:
    """Wall-clock seconds of one ``engine.evaluate`` (its results are on the CPU: synced)."""
    start = time.perf_counter()
    engine.evaluate(batches, coef, dirs, batches.theta0)
    return time.perf_counter() - start
