"""Curvature at a point, for a table: λ_max, λ_min, top-k, trace ± SE, per layer.

:func:`summary` — λ_max, λ_min, top-k, trace ± SE, and per-layer λ_max and
trace, as one printable dataclass.

In a process group the Lanczos runs (the whole Hessian's and each block's) use the
data-parallel operator, every rank making every product together; the deflated
Hutchinson probes (``_split``) are point-parallel, as in :func:`~basinscope.hessian.trace`:
each rank builds the whole data's operator alone and computes its share of each
round's probes (by global index), the values gathered in order. Each probe value is
then one process's bit for bit given the same Lanczos basis; the basis itself, the
eigenvalues and the trace agree with one process's to rounding (its products are
all-reduced), and are the same on every rank.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from .._checks import check_int, check_positive
from ..errors import BasinscopeError
from ..objective import Objective
from ._lanczos import Eigenpairs, _check_k, _check_tol, _lanczos, _pairs
from ._operator import HessianOperator, SymmetricOperator, check_curvature, operator, restrict
from ._split import operator_alone, point_group
from ._trace import TraceEstimate, _hutchinson

if TYPE_CHECKING:
    from ._ggn import GGNOperator


@dataclass(frozen=True)
class LayerCurvature:
    """λ_max and trace of one diagonal block ``H_BB`` (a module or parameter pattern)."""

    name: str
    n: int
    lambda_max: float
    lambda_min: float | None
    trace: float
    trace_se: float
    n_products: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class HessianSummary:
    """Curvature at a point, for a table: ``λ_max``, ``λ_min``, top-k, trace ± SE, per layer.

    ``top`` / ``bottom`` hold the full :class:`Eigenpairs` (vectors included;
    ``bottom`` is empty and ``lambda_min`` None when not asked for);
    ``trace`` the :class:`TraceEstimate` (Hutchinson deflated by the Lanczos
    basis, i.e. Hutch++ with a Krylov sketch).
    """

    lambda_max: float
    lambda_min: float | None
    top: Eigenpairs
    bottom: Eigenpairs
    trace: TraceEstimate
    n: int
    n_products: int
    per_layer: dict[str, LayerCurvature] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "lambda_max": self.lambda_max,
            "lambda_min": self.lambda_min,
            "top_k": [float(v) for v in self.top.values],
            "top_residuals": [float(r) for r in self.top.residuals],
            "lambda_min_residual": (
                float(self.bottom.residuals[0]) if len(self.bottom.residuals) else None
            ),
            "converged": self.top.converged,
            "tol": self.top.tol,
            "trace": self.trace.value,
            "trace_se": self.trace.stderr,
            "trace_probes": len(self.trace.samples),
            "trace_converged": self.trace.converged,
            "n": self.n,
            "n_products": self.n_products,
            "per_layer": {k: v.to_dict() for k, v in self.per_layer.items()},
        }


def _krylov(
    op: SymmetricOperator, k: int, bottom: int, *, tol: float, seed: int, max_products: int
) -> tuple[Eigenpairs, Eigenpairs, Tensor, float, float]:
    """One Lanczos run on ``op``: the top ``k`` and ``bottom`` pairs, the basis ``V``
    (orthonormal rows), ``tr(VHVᵀ)`` from its stored products, and ``‖H‖`` as estimated."""
    kr = _lanczos(
        op,
        k,
        bottom,
        tol=_check_tol(tol, op.dtype),
        seed=seed,
        max_products=max_products,
        max_basis=None,
    )
    exact = float((kr.basis * kr.products).sum(dtype=torch.float64))
    pairs = _pairs(kr, "top", tol, op.n), _pairs(kr, "bottom", tol, op.n)
    return *pairs, kr.basis, exact, kr.scale


def _deflated(
    obj: Objective,
    curvature: str,
    op: SymmetricOperator | None,
    V: Tensor,
    exact: float,
    *,
    rtol: float,
    atol: float,
    seed: int,
    max_probes: int,
) -> TraceEstimate:
    """``exact`` + Hutchinson on ``PHP`` (``P = I − VᵀV``), the probes made on ``op``.

    ``op`` None: on ``obj``'s operator, built here; in a process group the whole
    data's, built on each rank alone, each round's probe blocks shared over the ranks
    by index and gathered in order (as :func:`~basinscope.hessian.trace` does), so
    each value is one process's bit for bit given the same ``V``.
    """
    split = point_group(obj) if op is None else None
    if op is None:
        op = operator_alone(obj, split, curvature)
    return _hutchinson(
        op,
        V,
        exact,
        method="deflated",
        rtol=rtol,
        atol=atol,
        min_probes=10,
        max_probes=max_probes,
        seed=seed,
        spent=0,
        split=split,
    )


def _measure(
    obj: Objective,
    k: int,
    bottom: int,
    *,
    curvature: str,
    tol: float,
    trace_rtol: float,
    seed: int,
    max_products: int,
) -> tuple[Eigenpairs, Eigenpairs, TraceEstimate, int]:
    """Lanczos on ``obj``'s operator (data-parallel in a group), then the trace deflated
    by its basis (Hutch++ with a Krylov sketch; point-parallel probes in a group)."""
    rtol = check_positive("trace_rtol", trace_rtol)
    op: HessianOperator | GGNOperator | None = operator(obj, curvature=curvature)
    start = op.n_products
    k = _check_k(k, op.n)
    if k < 1:
        raise BasinscopeError(f"k must be a positive integer, got {k}")
    top, low, V, exact, scale = _krylov(
        op, k, bottom, tol=tol, seed=seed, max_products=max_products
    )
    lanczos = op.n_products - start
    if point_group(obj) is not None:
        # The probes are point-parallel, each rank's on an operator of the whole data
        # (_deflated builds it). This data-parallel operator is not needed any more:
        # dropping its last reference here frees its graphs (this rank's data shard's)
        # before the whole data's are built, so the two are never held at once and the
        # peak memory is the larger of them, not their sum. In one process the same
        # operator makes the probes (its graphs are the whole data's already).
        op = None
    tr = _deflated(
        obj,
        curvature,
        op,
        V,
        exact,
        rtol=rtol,
        atol=rtol * scale,
        seed=seed,
        max_probes=max_products,
    )
    return top, low, tr, lanczos + tr.n_products


def _layer_blocks(obj: Objective, per_layer: bool | Sequence[str]) -> list[str]:
    """The blocks of ``per_layer``: none, one per module, or the names given."""
    if per_layer is False:
        return []
    if per_layer is True:
        return obj.space.blocks
    if isinstance(per_layer, str):
        return [per_layer]
    return list(per_layer)


def summary(
    obj: Objective,
    k: int = 5,
    *,
    tol: float = 1e-4,
    trace_rtol: float = 1e-2,
    per_layer: bool | Sequence[str] = False,
    lambda_min: bool = True,
    seed: int = 0,
    max_products: int = 2000,
    curvature: str = "hessian",
) -> HessianSummary:
    """λ_max, λ_min, the top ``k`` eigenvalues and ``tr H ± SE``, optionally per layer.

    One thick-restart Lanczos run gives the top ``k`` and the smallest
    eigenpair (tolerance ``tol``, see :func:`extremes`); its basis ``V`` and
    products ``HV`` then deflate the trace: ``tr H = tr(VHVᵀ) + tr(PHP)``
    with the first exact from stored products and the second by Hutchinson to
    ``SE ≤ trace_rtol·max(|tr H|, ‖H‖)`` (Hutch++ with a Krylov sketch; no
    extra products for the sketch; the ``‖H‖`` floor stops blocks whose
    trace is near 0 from probing forever).

    In a process group Lanczos is data-parallel and the probes point-parallel (each
    rank builds the whole data's operator after freeing its shard's, and computes its
    share of the probes): the numbers are one process's to rounding, the same on
    every rank. Each rank thus builds graphs twice per measure (the whole and each
    block): its data shard's for Lanczos, then the whole data's for the probes.

    Args:
        per_layer: ``True`` for one diagonal block per module (parameters
            grouped by their module path, e.g. ``fc1.weight`` + ``fc1.bias``),
            or a list of names/patterns, one block each; every block gets its
            own λ_max, λ_min and trace (same tolerances).
        lambda_min: also find the smallest eigenvalue. It converges more slowly
            than the top (it sits at the edge of the bulk near 0: 65 products
            instead of 24 for top-5 on the benchmark MLP); a study that only
            needs λ_max and the trace passes ``False``.
        curvature: ``"hessian"`` or ``"ggn"``: every number (the blocks' too) of the
            generalised Gauss–Newton matrix instead (:class:`GGNOperator`).
    """
    check_curvature(curvature)
    if not isinstance(obj, Objective):
        raise BasinscopeError(f"summary needs a basinscope Objective, got {type(obj).__name__}")
    if _check_k(k, obj.n) < 1:
        raise BasinscopeError(f"k must be a positive integer, got {k}")
    _check_tol(tol, obj.dtype)
    check_positive("trace_rtol", trace_rtol)
    max_products = check_int("max_products", max_products, minimum=1)
    seed = check_int("seed", seed, minimum=0)
    opts = dict(
        curvature=curvature, tol=tol, trace_rtol=trace_rtol, seed=seed, max_products=max_products
    )
    blocks = _layer_blocks(obj, per_layer)
    subs = {name: restrict(obj, name) for name in blocks}  # bad names fail before any work
    n_bottom = 1 if lambda_min else 0
    top, bottom, tr, used = _measure(obj, k, n_bottom, **opts)
    layers: dict[str, LayerCurvature] = {}
    for name, sub in subs.items():
        t, b, s, u = _measure(sub, 1, n_bottom, **opts)
        layers[name] = LayerCurvature(
            name=name,
            n=sub.n,
            lambda_max=float(t.values[0]),
            lambda_min=float(b.values[0]) if n_bottom else None,
            trace=s.value,
            trace_se=s.stderr,
            n_products=u,
        )
    return HessianSummary(
        lambda_max=float(top.values[0]),
        lambda_min=float(bottom.values[0]) if n_bottom else None,
        top=top,
        bottom=bottom,
        trace=tr,
        n=obj.n,
        n_products=used,
        per_layer=layers,
    )
