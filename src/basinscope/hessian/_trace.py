"""``tr H`` by Hutchinson or Hutch++, with its standard error and a stopping rule.

:func:`trace` — Hutchinson (1989), ``tr H = E[zᵀHz]`` over Rademacher ``z``,
or Hutch++ (Meyer, Musco, Musco & Woodruff 2021): the trace of ``H`` on a
sketched dominant subspace exactly plus Hutchinson on the rest. Both report
the standard error and stop when it is ≤ ``rtol·|tr H|``.

The estimators read only a :class:`~basinscope.hessian.SymmetricOperator`
(``n``, ``dtype``, ``device``, ``matmat``).

In a process group, given an Objective, the work is point-parallel (``_split``):
each rank builds the whole data's operator alone; Hutch++'s sketch products
(``HS``, then ``HQ``) are shared by rows, and each round of probe blocks (one probe
per rank) by block index, the values gathered in order; the stopping rule then reads
them one by one as one process does, and the probes computed past the stopping one
are neither stored nor counted. Each value is one process's bit for bit, and so are
the estimate and the partial-results file (rank 0 writes it). Given an operator
(data-parallel), every rank makes every product together.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .. import _dist
from .._checks import check_int, check_positive
from .._partial import PartialResults, open_partial
from ..errors import BasinscopeError
from ._operator import Curvature, SymmetricOperator, _key, check_curvature
from ._random import _PROBE, _SKETCH, _rademacher
from ._split import operator_alone, point_group, split_map, writer_group


@dataclass(frozen=True)
class TraceEstimate:
    """``tr H`` estimated from random probes.

    Attributes:
        value: the estimate, ``exact + mean(samples)``.
        stderr: its standard error, ``std(samples)/√S`` (ddof = 1).
        method: ``"hutchinson"``, ``"hutch++"`` or ``"deflated"`` (Hutchinson
            on the complement of a Lanczos basis).
        exact: the trace on the deflated subspace (0 for Hutchinson).
        rank: dimension of that subspace.
        samples: ``[S]`` the probe values ``zᵀ(PHP)z``.
        n_products: Hessian-vector products used.
        rtol, atol: the stopping rule, ``stderr ≤ max(rtol·|value|, atol)``.
        converged: whether the rule was met within the product budget.
        seed: the probes' seed.
    """

    value: float
    stderr: float
    method: str
    exact: float
    rank: int
    samples: np.ndarray
    n_products: int
    rtol: float
    atol: float
    converged: bool
    seed: int

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["samples"] = [float(s) for s in self.samples]
        d["n_probes"] = len(self.samples)
        return d


def _probe_values(op: SymmetricOperator, Q: Tensor | None, seed: int, idx: range) -> list[float]:
    """``zᵀ(PHP)z`` of the probes ``idx`` (one ``matmat`` call, as a block is in one
    process, so that the values are one process's bit for bit)."""
    Z = torch.stack([_rademacher(op.n, seed, _PROBE, i) for i in idx]).to(op.device, op.dtype)
    if Q is not None and len(Q):
        Z = Z - (Z @ Q.T) @ Q
    return (Z * op.matmat(Z)).sum(dim=1).double().cpu().tolist()


def _take(samples: list[float], values: list[float], exact: float, rule: tuple) -> bool:
    """Add ``values`` to ``samples`` one at a time until the stopping rule
    ``SE ≤ max(rtol·|value|, atol)`` (after ``min_probes``) is met; whether it was."""
    rtol, atol, min_probes = rule
    for value in values:
        samples.append(value)
        s = len(samples)
        if s >= min_probes:
            arr = np.asarray(samples)
            se = arr.std(ddof=1) / math.sqrt(s)
            if se <= max(rtol * abs(exact + arr.mean()), atol):
                return True
    return False


def _hutchinson(
    op: SymmetricOperator,
    Q: Tensor | None,
    exact: float,
    *,
    method: str,
    rtol: float,
    atol: float,
    min_probes: int,
    max_probes: int,
    seed: int,
    spent: int,
    done: PartialResults | None = None,
    split: _dist.Dist | None = None,
) -> TraceEstimate:
    """``exact`` + Hutchinson on ``PHP`` (``P = I − QᵀQ``, ``Q`` orthonormal rows).

    Probe ``i`` is the Rademacher ``z(seed, i)``, projected by ``P``; probes are
    added until ``SE ≤ max(rtol·|value|, atol)`` (checked after every probe, so
    the result does not depend on how many products a call makes). Probe values
    already in ``done`` are reused (and counted in ``n_products``, the products
    the estimate is made of); new ones are stored there. A block is one probe
    (8 for a batched operator); with ``split`` (a point group, ``op`` each rank's
    own) each round's blocks are shared over the ranks, and the blocks after the
    stopping probe are neither stored nor counted, as one process never makes them.
    """
    used = reused = 0
    done = done if done is not None else PartialResults(None, {}, "trace probes", {})
    rank = 0 if Q is None else len(Q)
    samples: list[float] = []
    converged = rank == op.n
    block = 8 if getattr(op, "batched", False) else 1
    width = block * (1 if split is None else split.size)
    while not converged and len(samples) < max_probes:
        first = len(samples)
        blocks = [
            range(s, min(s + block, max_probes))
            for s in range(first, min(first + width, max_probes), block)
        ]
        todo = [b for b in blocks if done.missing(b)]
        found = split_map(split, todo, lambda b: _probe_values(op, Q, seed, b))
        fresh = {b.start: values for b, values in zip(todo, found, strict=True)}
        for b in blocks:
            if b.start in fresh:
                values = fresh[b.start]
                used += len(b)
                done.update(dict(zip(b, values, strict=True)))
            else:
                values = [float(done.get(i)) for i in b]
                reused += len(b)
            converged = _take(samples, values, exact, (rtol, atol, min_probes))
            if converged:
                break
    return _estimate(
        samples, exact, rank, op.n, method, rtol, atol, converged, seed, spent + used + reused
    )


def _estimate(
    samples: list[float],
    exact: float,
    rank: int,
    n: int,
    method: str,
    rtol: float,
    atol: float,
    converged: bool,
    seed: int,
    n_products: int,
) -> TraceEstimate:
    arr = np.asarray(samples, dtype=np.float64)
    s = len(arr)
    return TraceEstimate(
        value=exact + (float(arr.mean()) if s else 0.0),
        stderr=float(arr.std(ddof=1) / math.sqrt(s)) if s > 1 else (0.0 if rank == n else math.inf),
        method=method,
        exact=exact,
        rank=rank,
        samples=arr,
        n_products=n_products,
        rtol=rtol,
        atol=atol,
        converged=converged,
        seed=seed,
    )


def _rows(op: SymmetricOperator, vs: Tensor, split: _dist.Dist | None) -> Tensor:
    """``op.matmat(vs)``; with a point group the rows are shared over the ranks and
    gathered in order. The group's operator (:func:`operator_alone`) is unbatched:
    each row's product is made alone, so its value does not depend on the others."""
    if split is None:
        return op.matmat(vs)

    def mine() -> Tensor:
        part = vs[_dist.share(len(vs), split.rank, split.size)]
        return (op.matmat(part) if len(part) else part.clone()).cpu()

    return torch.cat(_dist.gather(split, mine)).to(op.device)


def _sketch(
    op: SymmetricOperator, sketch: int, seed: int, split: _dist.Dist | None = None
) -> tuple[Tensor, float]:
    """Hutch++'s ``Q = orth(HS)`` (``[sketch, n]``, orthonormal rows) and ``tr(QᵀHQ)``:
    ``2·sketch`` products, sketch column ``i`` from ``(seed, i)`` in a stream of its own."""
    S = torch.stack([_rademacher(op.n, seed, _SKETCH, i) for i in range(sketch)])
    Y = _rows(op, S.to(op.device, op.dtype), split)
    Q = torch.linalg.qr(Y.T.double()).Q.T.to(op.dtype)  # [sketch, n], orthonormal rows
    return Q, float((Q * _rows(op, Q, split)).sum(dtype=torch.float64))


def _sketch_size(sketch: int, n: int, min_probes: int, max_products: int) -> int:
    """The sketch's columns (at most ``n``), refused when the budget lacks room."""
    sketch = min(sketch, n)
    if 2 * sketch + min_probes > max_products:
        raise BasinscopeError(
            f"max_products={max_products} is too small for {2 * sketch} sketch products "
            f"and {min_probes} probes"
        )
    return sketch


def trace(
    obj: Curvature | SymmetricOperator,
    *,
    method: str = "hutchinson",
    rtol: float = 1e-2,
    atol: float = 0.0,
    min_probes: int = 10,
    max_products: int = 1000,
    sketch: int = 16,
    seed: int = 0,
    path: str | Path | None = None,
    curvature: str = "hessian",
) -> TraceEstimate:
    """``tr H`` by Hutchinson or Hutch++, with its standard error and a stopping rule.

    * ``"hutchinson"`` (Hutchinson 1989; Avron & Toledo 2011):
      ``tr H ≈ (1/S) Σ_i z_iᵀ H z_i``, Rademacher ``z_i``; the variance of one
      sample is ``2(‖H‖_F² − Σ_i H_ii²)``.
    * ``"hutch++"`` (Meyer, Musco, Musco & Woodruff 2021): ``Q = orth(HS)``
      for a Rademacher ``n×sketch`` sketch ``S``; ``tr H = tr(QᵀHQ) + tr(PHP)``,
      ``P = I − QQᵀ``, the first exact, the second by Hutchinson on ``Pz``.
      Costs ``2·sketch`` products up front and removes the variance of the
      few dominant eigenvalues of a trained network (Papyan 2019).

    Which is cheaper depends on the spectrum. Hutch++ wins when a few
    eigenvalues carry most of ``tr H`` (small or heavily overfit models); when
    the bulk carries it, Hutchinson's relative variance is already small (on
    the benchmark MLP, n = 235k: 11 products to 1% for Hutchinson, 42 for
    Hutch++), hence the default. :func:`summary` gets both: it deflates by
    its Lanczos basis, whose products it already has.

    Probes are added one at a time until ``stderr ≤ max(rtol·|value|, atol)``
    (after at least ``min_probes``) or ``max_products`` is spent
    (``converged=False``). Probe ``i`` is drawn from ``(seed, i)``, sketch
    column ``i`` from ``(seed, i)`` in a stream of its own.

    With ``path`` (a JSON file of partial results, :mod:`basinscope._partial`)
    each probe's value ``zᵀ(PHP)z`` is stored as it finishes and a rerun reuses
    them, giving the same estimate bit for bit; Hutch++'s sketch (``2·sketch``
    products) is recomputed, since storing it would take ``sketch·n`` numbers.
    Keyed by the Objective's fingerprint, θ, ``method``, ``sketch``, ``seed``
    and the operator's ``batched`` (not the stopping rule: a rerun with a
    tighter ``rtol`` continues from the stored probes).

    ``curvature="ggn"`` estimates the trace of the generalised Gauss–Newton matrix
    of an Objective instead (:class:`GGNOperator`; its file is keyed by that too).

    In a process group an Objective's probes and sketch rows are shared over the
    ranks (one process's estimate and file bit for bit; rank 0 writes the file); an
    operator's products are data-parallel, every rank making every probe.
    """
    check_curvature(curvature)
    rtol, atol = check_positive("rtol", rtol), check_positive("atol", atol, zero=True)
    if method not in ("hutchinson", "hutch++"):
        raise BasinscopeError(f"method must be 'hutchinson' or 'hutch++', got {method!r}")
    min_probes = check_int("min_probes", min_probes, minimum=2)
    sketch = check_int("sketch", sketch, minimum=1)
    max_products = check_int("max_products", max_products, minimum=1)
    seed = check_int("seed", seed, minimum=0)
    sketch = _sketch_size(sketch if method == "hutch++" else 0, obj.n, min_probes, max_products)
    split = point_group(obj)
    op = operator_alone(obj, split, curvature)
    key = _key(op, method=method, sketch=sketch, seed=seed) if path is not None else {}
    with open_partial(path, key, what="Hessian trace probes", dist=writer_group(op)) as done:
        Q, exact = _sketch(op, sketch, seed, split) if sketch else (None, 0.0)
        return _hutchinson(
            op,
            Q,
            exact,
            method=method,
            rtol=rtol,
            atol=atol,
            min_probes=min_probes,
            max_probes=max_products - 2 * sketch,
            seed=seed,
            spent=2 * sketch,
            done=done,
            split=split,
        )
