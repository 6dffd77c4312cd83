"""An Objective's evaluations shared over the ranks of a process group.

:mod:`basinscope._dist` says how: a call with at least as many points as ranks
is **point-parallel** (each rank evaluates its contiguous share of the points on
the whole data, the shares gathered in order: bit-identical to one process,
since each point's value depends on that point alone); a call with fewer points,
a gradient and a Hessian-vector product are **data-parallel** (each rank sums
its contiguous data shard, ``Σ value / Σ count`` with the whole data's count, and
the float64 sums are all-reduced: equal to one process to rounding).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .. import _dist
from ..errors import BasinscopeError
from ._autograd import gradient, hessian_products
from ._engine import Batches, Engine, PlainEngine, evaluate_points
from ._plan import Plan, make_plan
from ._tree import take


def shard_of(batches: Batches, d: _dist.Dist) -> Batches:
    """This rank's contiguous data shard (:func:`basinscope._dist.share`) as a Batches
    whose totals are the whole data's, so the ranks' chunk losses add up to ``L(θ)``, and
    which reduces evaluations to raw sums (``Σ value``, ``Σ hits``: the ranks' sums are
    added, then divided once); kept in ``batches.cache``."""
    key = ("shard", d.rank, d.size)
    if key not in batches.cache:
        part = _dist.share(batches.n_examples, d.rank, d.size)
        shard = batches.on(take(batches.x, part), take(batches.y, part))
        shard._totals = batches.totals
        shard.raw = True
        batches.cache[key] = shard
    return batches.cache[key]


def mine(rows: Tensor, d: _dist.Dist, block: int = 1) -> Tensor:
    """This rank's contiguous share of the rows (points) of a point-parallel call, in
    whole blocks of ``block`` rows: an engine that evaluates points in blocks (vmap)
    gives a point's last bits by its place in its block, which whole blocks keep."""
    blocks = _dist.share(-(-len(rows) // block), d.rank, d.size)
    return rows[blocks.start * block : blocks.stop * block]


def cat(parts: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    """The ranks' ``(loss, accuracy)`` shares, joined in rank (= point) order."""
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def _share(fn: Any, batches: Batches, rows: Tensor, *args: Any) -> tuple[Tensor, Tensor]:
    """``fn(batches, rows, *args)``; a rank without rows (fewer points than ranks) has
    nothing to evaluate."""
    if len(rows) == 0:
        empty = torch.zeros(0, dtype=torch.float64)
        return empty, empty.clone()
    return fn(batches, rows, *args)


def _block(engine: Engine) -> int:
    """Points an engine evaluates together with place-dependent rounding (1: none)."""
    return int(getattr(engine, "block", 1)) if engine.name == "vmap" else 1


def rank_device(device: Any, d: _dist.Dist | None) -> Any:
    """``"cuda"`` without an index is ``cuda:LOCAL_RANK`` on a rank of a process group and
    the current CUDA device otherwise: a file's key then names the same device whether
    one process or rank 0 of several wrote it."""
    rank = _dist.local_rank()
    if str(device) != "cuda":
        return device
    if d is not None and rank is not None:
        return f"cuda:{rank}"
    return f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else device


def agreed_plan(batches: Batches, d: _dist.Dist, plan: Plan) -> Plan:
    """Rank 0's engine on every rank (a plan may time its candidates, and timings differ
    between processes); a rank where that engine does not verify is refused in one
    sentence on every rank, since the ranks must split points alike."""
    name = _dist.agree(d, lambda: plan.name)
    if plan.name != name:
        plan = make_plan(batches, engine=name)
    names = _dist.gather(d, lambda: plan.name)
    if len(set(names)) > 1:
        raise BasinscopeError(
            f"the ranks' evaluation engines differ ({', '.join(names)}): rank 0's {name!r} "
            "engine does not verify on every rank; give every rank the same model and data"
        )
    return plan


def evaluate(
    batches: Batches, d: _dist.Dist | None, points: Tensor, split: str = "auto"
) -> tuple[Tensor, Tensor]:
    """``(loss[K], accuracy[K])`` at the rows of ``points``, shared over ``d``'s ranks
    (data-parallel for fewer points than ranks unless ``split="points"``)."""
    if d is None:
        return evaluate_points(batches, points)
    if len(points) < d.size and split == "auto":
        shard = shard_of(batches, d)
        return batches.reduce(*_dist.reduce_sum(d, lambda: evaluate_points(shard, points)))
    return cat(_dist.gather(d, lambda: _share(evaluate_points, batches, mine(points, d))))


def evaluate_affine(
    batches: Batches,
    d: _dist.Dist | None,
    engine: Engine,
    coef: Tensor,
    dirs: Tensor,
    origin: Tensor,
    split: str = "auto",
) -> tuple[Tensor, Tensor]:
    """``engine``'s values at ``origin + coef @ dirs``, shared over ``d``'s ranks.

    Fewer points than ranks: data-parallel (the plain engine on the shards: few points
    gain nothing from the others), unless ``split="points"``.
    """
    if d is None:
        return engine.evaluate(batches, coef, dirs, origin)
    if len(coef) < d.size and split == "auto":
        shard = shard_of(batches, d)
        sums = _dist.reduce_sum(d, lambda: PlainEngine().evaluate(shard, coef, dirs, origin))
        return batches.reduce(*sums)
    return cat(
        _dist.gather(
            d, lambda: _share(engine.evaluate, batches, mine(coef, d, _block(engine)), dirs, origin)
        )
    )


def grad(batches: Batches, d: _dist.Dist | None, theta: Tensor) -> Tensor:
    """``∇L(θ)``: data-parallel over ``d``'s ranks."""
    if d is None:
        return gradient(batches, theta)
    shard = shard_of(batches, d)
    return _dist.reduce_sum(d, lambda: (gradient(shard, theta),))[0]


def hvp(batches: Batches, d: _dist.Dist | None, theta: Tensor, vs: Tensor) -> Tensor:
    """``[∇²L(θ) v_k]_k``: data-parallel over ``d``'s ranks."""
    if d is None:
        return hessian_products(batches, theta, vs)
    shard = shard_of(batches, d)
    return _dist.reduce_sum(d, lambda: (hessian_products(shard, theta, vs),))[0]
