"""Extreme eigenpairs by thick-restart Lanczos: top-k, bottom-k and λ_min from one run.

:func:`eigenvalues`, :func:`extremes` — top-k and bottom-k eigenpairs by
thick-restart Lanczos (Wu & Simon 2000) with full reorthogonalisation. Both
ends of the spectrum come from one Krylov space; the smallest eigenvalue is
found directly, not by shifting. A pair is accepted when its residual
``‖Hv − λv‖ ≤ tol·‖H‖``; a symmetric matrix then has an eigenvalue within
``‖Hv − λv‖`` of λ (Parlett, *The Symmetric Eigenvalue Problem*, Thm 4.5.1),
and typically within ``‖Hv − λv‖²/gap``.

The run reads only a :class:`~basinscope.hessian.SymmetricOperator` (``n``,
``dtype``, ``device``, ``matvec``). In a process group it runs unchanged on every
rank on the data-parallel operator: the start vector comes from ``seed`` alone and
every product is the same all-reduced tensor on every rank, so the ranks make the
same arithmetic (same device kind and thread count) and every decision (convergence,
restart, invariant subspace, budget) alike; the values agree with one process's to
rounding (with the same number of products, unless a stopping test sits at rounding
distance from its threshold, as for a tight ``tol`` on a degenerate eigenvalue).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .._checks import check_int
from ..errors import BasinscopeError
from ._operator import Curvature, SymmetricOperator, check_curvature, operator
from ._random import _LANCZOS, _generator


@dataclass(frozen=True)
class Eigenpairs:
    """Extreme eigenpairs of ``H``.

    Attributes:
        values: ``[k]`` eigenvalues, most extreme first (descending for
            ``"top"``, ascending for ``"bottom"``).
        vectors: ``[k, n]`` unit eigenvectors in the Objective's space (dtype
            and device of the Objective), sign fixed so the largest-magnitude
            entry is positive.
        residuals: ``[k]`` ``‖H v_i − λ_i v_i‖``, recomputed from stored products.
        which: ``"top"`` or ``"bottom"``.
        tol: the requested relative tolerance: accepted when every residual
            ``≤ tol·scale``.
        scale: ``‖H‖`` as estimated by the largest ``|Ritz value|``.
        n_products: Hessian-vector products used (by the whole Lanczos run).
        converged: whether all residuals met the tolerance.
        n: the dimension.
    """

    values: np.ndarray
    vectors: Tensor
    residuals: np.ndarray
    which: str
    tol: float
    scale: float
    n_products: int
    converged: bool
    n: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (without the eigenvectors)."""
        return {
            "which": self.which,
            "values": [float(v) for v in self.values],
            "residuals": [float(r) for r in self.residuals],
            "tol": self.tol,
            "scale": self.scale,
            "n_products": self.n_products,
            "converged": self.converged,
            "n": self.n,
        }


@dataclass
class _Krylov:
    """The final state of a Lanczos run: wanted Ritz pairs and the basis with its products."""

    top: tuple[np.ndarray, Tensor, np.ndarray]
    bottom: tuple[np.ndarray, Tensor, np.ndarray]
    basis: Tensor  # [j, n] orthonormal rows
    products: Tensor  # [j, n] H @ basis rows
    scale: float
    n_products: int
    converged: bool


def _check_tol(tol: float, dtype: torch.dtype) -> float:
    if not (isinstance(tol, int | float) and math.isfinite(tol) and 0 < tol < 1):
        raise BasinscopeError(f"tol must be a relative tolerance in (0, 1), got {tol}")
    floor = 10 * torch.finfo(dtype).eps
    if tol < floor:
        raise BasinscopeError(
            f"tol={tol:g} is below what {dtype} products can reach (about {floor:.0e}); "
            "build the Objective with dtype=torch.float64 for tighter tolerances"
        )
    return float(tol)


def _check_k(k: int, n: int, what: str = "k") -> int:
    if not isinstance(k, int | np.integer) or isinstance(k, bool) or k < 0:
        raise BasinscopeError(f"{what} must be a non-negative integer, got {k!r}")
    if k > n:
        raise BasinscopeError(
            f"{what}={k} is larger than the dimension of the parameter space (n={n}); "
            f"ask for at most {n} eigenvalues"
        )
    return int(k)


def _eigh(T: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenpairs of a small symmetric matrix, ascending. Through torch, not NumPy: NumPy's
    BLAS threads ignore ``torch.set_num_threads`` and on a busy 2-core machine were
    measured 400× slower (0.4 s vs 1 ms for 132×132)."""
    theta, S = torch.linalg.eigh(torch.from_numpy(np.ascontiguousarray(T, dtype=np.float64)))
    return theta.numpy(), S.numpy()


def _wanted(j: int, n_top: int, n_bottom: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices into ascending Ritz values: top descending, bottom ascending."""
    top = np.arange(j - 1, j - 1 - min(n_top, j), -1)
    bottom = np.arange(min(n_bottom, j))
    return top, bottom


def _keep(j: int, n_top: int, n_bottom: int) -> np.ndarray:
    """Ritz vectors kept at a thick restart: the wanted ones and about half the rest nearby."""
    want = n_top + n_bottom
    extra = (j - want) // 2
    if n_bottom == 0:
        top_extra = extra
    elif n_top == 0:
        top_extra = 0
    else:
        top_extra = extra * n_top // want
    bottom_extra = extra - top_extra if n_bottom else 0
    bottom = np.arange(n_bottom + bottom_extra)
    top = np.arange(j - n_top - top_extra, j)
    return np.union1d(bottom, top)


def _lanczos(
    op: SymmetricOperator,
    n_top: int,
    n_bottom: int,
    *,
    tol: float,
    seed: int,
    max_products: int,
    max_basis: int | None,
) -> _Krylov:
    """Thick-restart Lanczos (Wu & Simon 2000) for both ends of the spectrum at once.

    Full reorthogonalisation (classical Gram–Schmidt, twice), the Rayleigh
    quotient ``T = Vᵀ(HV)`` formed from the stored products, and a thick
    restart onto the wanted Ritz vectors plus about half the others when the
    basis is full. Stops when every wanted pair has ``‖Hy − θy‖ ≤ tol·max|θ|``,
    first by the estimate ``β_j |s_j|``, then checked on ``HY = (HV)S``.

    Written here rather than calling ``scipy.sparse.linalg.eigsh`` because one
    run gives both ends (``λ_max`` and ``λ_min`` for the price of one), the
    basis and its products are kept for deflated trace estimation, and the
    residuals are those of the returned vectors; on the benchmark MLP it also
    needs fewer products than ``eigsh`` for the same residual tolerance.
    """
    n = op.n
    want = n_top + n_bottom
    m = min(n, max_basis if max_basis is not None else max(2 * want + 16, 32))
    if m < n and m < want + 2:
        raise BasinscopeError(
            f"max_basis={max_basis} is too small for {want} eigenpairs; use at least {want + 2}"
        )
    dt, dev = op.dtype, op.device
    gen = _generator(seed, _LANCZOS, 0)
    V = torch.empty(m + 1, n, dtype=dt, device=dev)  # rows ≥ j are never read
    W = torch.empty(m, n, dtype=dt, device=dev)
    T = np.zeros((m, m))
    v = torch.randn(n, generator=gen, dtype=torch.float64).to(dev, dt)
    V[0] = v / v.norm()
    j = 0
    used = 0
    while True:
        w = op.matvec(V[j])
        used += 1
        W[j] = w
        basis = V[: j + 1]
        h = basis @ w
        T[: j + 1, j] = T[j, : j + 1] = h.double().cpu().numpy()
        f = w - h @ basis
        f -= (basis @ f) @ basis
        beta = float(f.norm())
        j += 1
        theta, S = _eigh(T[:j, :j])
        scale = max(abs(theta[0]), abs(theta[-1]), np.finfo(np.float64).tiny)
        top, bottom = _wanted(j, n_top, n_bottom)
        idx = np.concatenate([top, bottom])
        est = beta * np.abs(S[-1, idx])
        full = j == n
        if full or (j >= want and np.all(est <= tol * scale)) or used >= max_products:
            res = _residuals(V[:j], W[:j], theta[idx], S[:, idx])
            if full or np.all(res <= tol * scale) or used >= max_products:
                converged = bool(full or np.all(res <= tol * scale))
                return _finish(V[:j], W[:j], theta, S, top, bottom, scale, used, converged)
        if beta <= 100 * torch.finfo(dt).eps * float(w.norm()):
            # An invariant subspace: its Ritz pairs are exact; continue from a fresh
            # random vector orthogonal to it (coupling zero).
            f = torch.randn(n, generator=gen, dtype=torch.float64).to(dev, dt)
            for _ in range(2):
                f -= (V[:j] @ f) @ V[:j]
            beta = float(f.norm())
        V[j] = f / beta
        if j == m:
            j = _restart(V, W, T, S, theta, _keep(j, n_top, n_bottom))


def _restart(
    V: Tensor, W: Tensor, T: np.ndarray, S: np.ndarray, theta: np.ndarray, keep: np.ndarray
) -> int:
    """Thick restart in place: rows ``keep`` of the Ritz basis become the new basis
    (``V``, ``W = HV``, ``T`` diagonal), the next Lanczos vector follows them; returns
    the new basis size."""
    j = S.shape[0]
    Sk = torch.from_numpy(np.ascontiguousarray(S[:, keep].T)).to(V.device, V.dtype)
    nxt = V[j].clone()
    l = len(keep)
    V[:l] = Sk @ V[:j]
    W[:l] = Sk @ W[:j]
    V[l] = nxt
    T[:] = 0.0
    T[np.arange(l), np.arange(l)] = theta[keep]
    return l


def _residuals(V: Tensor, W: Tensor, theta: np.ndarray, S: np.ndarray) -> np.ndarray:
    """``‖HY − θY‖`` per Ritz pair, with ``Y = SᵀV`` and ``HY = SᵀW`` (no products)."""
    if S.shape[1] == 0:
        return np.zeros(0)
    St = torch.from_numpy(np.ascontiguousarray(S.T)).to(V.device, V.dtype)
    Y, HY = St @ V, St @ W
    th = torch.from_numpy(theta).to(V.device, V.dtype)[:, None]
    return (HY - th * Y).norm(dim=1).double().cpu().numpy()


def _finish(
    V: Tensor,
    W: Tensor,
    theta: np.ndarray,
    S: np.ndarray,
    top: np.ndarray,
    bottom: np.ndarray,
    scale: float,
    used: int,
    converged: bool,
) -> _Krylov:
    def pairs(idx: np.ndarray) -> tuple[np.ndarray, Tensor, np.ndarray]:
        St = torch.from_numpy(np.ascontiguousarray(S[:, idx].T)).to(V.device, V.dtype)
        Y = St @ V
        Y = Y / Y.norm(dim=1, keepdim=True)
        pivot = Y.abs().argmax(dim=1, keepdim=True)
        Y = Y * torch.sign(Y.gather(1, pivot))
        return theta[idx].copy(), Y, _residuals(V, W, theta[idx], S[:, idx])

    return _Krylov(
        top=pairs(top),
        bottom=pairs(bottom),
        basis=V,
        products=W,
        scale=float(scale),
        n_products=used,
        converged=converged,
    )


def extremes(
    obj: Curvature | SymmetricOperator,
    top: int = 1,
    bottom: int = 1,
    *,
    tol: float = 1e-4,
    seed: int = 0,
    max_products: int = 2000,
    max_basis: int | None = None,
    curvature: str = "hessian",
) -> tuple[Eigenpairs, Eigenpairs]:
    """The ``top`` largest and ``bottom`` smallest eigenpairs of ``H``, from one Lanczos run.

    Args:
        obj: an Objective (its ParamSpace is the block of ``H``), a
            HessianOperator, or any :class:`SymmetricOperator`.
        top, bottom: how many at each end (``top + bottom ≥ 1``, each ``≤ n``).
        tol: relative tolerance: each pair is accepted when ``‖Hv − λv‖ ≤
            tol·‖H‖`` (``‖H‖`` estimated by the largest ``|λ|`` found), which
            puts λ within ``tol·‖H‖`` of an eigenvalue, and usually far closer.
        seed: the start vector is ``N(0, I)`` from ``(seed, 0)``.
        max_products: stop there (``converged=False``) if not converged.
        max_basis: Lanczos vectors kept (memory ``2·max_basis·n`` numbers);
            default ``max(2(top + bottom) + 16, 32)``.
        curvature: the matrix of an Objective: ``"hessian"`` (``∇²L``) or ``"ggn"``
            (the generalised Gauss–Newton matrix ``Jᵀ H_out J``, :class:`GGNOperator`:
            positive semi-definite for a loss convex in the output). An operator
            passed as ``obj`` is used as it is.

    Returns:
        ``(top pairs, bottom pairs)``; both report the run's total products.
    """
    check_curvature(curvature)
    top, bottom = _check_k(top, obj.n, "top"), _check_k(bottom, obj.n, "bottom")
    if top + bottom == 0:
        raise BasinscopeError("ask for at least one eigenvalue (top + bottom ≥ 1)")
    max_products = check_int("max_products", max_products, minimum=1)
    if max_basis is not None:
        max_basis = check_int("max_basis", max_basis, minimum=1)
    seed = check_int("seed", seed, minimum=0)
    tol = _check_tol(tol, obj.dtype)
    op = operator(obj, curvature=curvature)
    kr = _lanczos(
        op,
        top,
        bottom,
        tol=tol,
        seed=seed,
        max_products=max_products,
        max_basis=max_basis,
    )
    return _pairs(kr, "top", tol, op.n), _pairs(kr, "bottom", tol, op.n)


def _pairs(kr: _Krylov, which: str, tol: float, n: int) -> Eigenpairs:
    values, vectors, residuals = kr.top if which == "top" else kr.bottom
    return Eigenpairs(
        values=values,
        vectors=vectors,
        residuals=residuals,
        which=which,
        tol=float(tol),
        scale=kr.scale,
        n_products=kr.n_products,
        converged=kr.converged,
        n=n,
    )


def eigenvalues(
    obj: Curvature | SymmetricOperator,
    k: int = 1,
    *,
    which: str = "top",
    tol: float = 1e-4,
    seed: int = 0,
    max_products: int = 2000,
    max_basis: int | None = None,
    curvature: str = "hessian",
) -> Eigenpairs:
    """The ``k`` largest (``which="top"``) or smallest (``"bottom"``) eigenpairs of ``H``.

    Thick-restart Lanczos; see :func:`extremes` for the arguments. The smallest
    eigenvalues are found directly (the low end of the same Krylov space), not
    by shifting ``H − λ_max I``. For an indefinite ``H`` (a saddle)
    ``eigenvalues(obj, 1, which="bottom").values[0] < 0``; with
    ``curvature="ggn"`` the same measures run on the generalised Gauss–Newton
    matrix, whose eigenvalues are ``≥ 0`` for a loss convex in the output.
    """
    check_curvature(curvature)
    if which not in ("top", "bottom"):
        raise BasinscopeError(f"which must be 'top' or 'bottom', got {which!r}")
    if _check_k(k, obj.n) < 1:
        raise BasinscopeError(f"k must be a positive integer, got {k}")
    n_top, n_bottom = (k, 0) if which == "top" else (0, k)
    t, b = extremes(
        obj,
        n_top,
        n_bottom,
        tol=tol,
        seed=seed,
        max_products=max_products,
        max_basis=max_basis,
        curvature=curvature,
    )
    return t if which == "top" else b


def top_directions(
    obj: Curvature, k: int = 2, *, tol: float = 1e-4, seed: int = 0, curvature: str = "hessian"
) -> Tensor:
    """The top-``k`` Hessian eigenvectors as ``[k, n]`` unit directions for :func:`basinscope.plane`.

    ``bs.plane(obj, *hessian.top_directions(obj), span=(-1, 1), steps=31)``
    draws the loss in the plane of the two sharpest directions (unit length,
    not filter-normalised; scale the span accordingly). ``curvature="ggn"``: those of
    the generalised Gauss–Newton matrix.
    """
    return eigenvalues(obj, k, which="top", tol=tol, seed=seed, curvature=curvature).vectors
