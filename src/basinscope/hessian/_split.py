"""The curvature estimators' random probes shared over the ranks of a process group.

Two ways of sharing (:mod:`basinscope._dist`), chosen by what a measure is given:

* **data-parallel**: a curvature operator built from an Objective in a group keeps
  the graphs of its rank's contiguous data shard only, and every product is the
  all-reduced float64 sum of the shards' products: ``H v = Σ_r Σ_{c ∈ shard r}
  (N_c/N) ∇²ℓ_c v``, the same on every rank, equal to one process's to rounding.
  Sequential methods (Lanczos: :func:`~basinscope.hessian.eigenvalues`, the
  eigenvalues of :func:`~basinscope.hessian.summary`) run on it, every rank doing
  the same arithmetic on the same products; so does any measure given such an operator.
* **point-parallel**: :func:`~basinscope.hessian.trace`,
  :func:`~basinscope.hessian.density` and the trace probes of
  :func:`~basinscope.hessian.summary` (deflated by its Lanczos basis, whole and per
  block) given an Objective in a group build its operator of the whole data on each
  rank alone (:func:`operator_alone`), share each batch of independent items
  (Hutchinson probe blocks, Hutch++ sketch rows, SLQ runs) by global index
  (:func:`split_map`) and gather their values in order:
  each value is computed exactly as one process computes it, so the results and
  the partial-results files (written by rank 0) are bit-identical to one
  process's on the same device and thread count.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from .. import _dist
from ..objective import Objective
from ._operator import operator

T = TypeVar("T")
R = TypeVar("R")


def point_group(obj: Any) -> _dist.Dist | None:
    """The group a measure of ``obj`` shares its probes over: an Objective's (when
    active); none for an operator, whose products the ranks make together."""
    return _dist.active(obj.dist) if isinstance(obj, Objective) else None


def operator_alone(obj: Any, split: _dist.Dist | None, curvature: str) -> Any:
    """``operator(obj)``; with a point group, the whole data's operator built on each
    rank alone (no collective in its products), a failure anywhere raised everywhere."""
    if split is None:
        return operator(obj, curvature=curvature)
    return _dist.check(split, lambda: operator(obj, curvature=curvature))


def writer_group(op: Any) -> _dist.Dist | None:
    """The ranks that share the partial-results file of a measure of ``op`` (rank 0
    writes it): those of its Objective's active group."""
    obj = getattr(op, "obj", None)
    return _dist.active(obj.dist) if isinstance(obj, Objective) else None


def split_map(split: _dist.Dist | None, items: Sequence[T], fn: Callable[[T], R]) -> list[R]:
    """``[fn(item) for item in items]`` on every rank, each rank computing its
    contiguous share of ``items`` alone (:func:`basinscope._dist.share`) and the
    shares gathered in order; an error on any rank is raised on all of them."""
    if split is None:
        return [fn(item) for item in items]

    def mine() -> list[R]:
        return [fn(item) for item in items[_dist.share(len(items), split.rank, split.size)]]

    return [value for part in _dist.gather(split, mine) for value in part]
