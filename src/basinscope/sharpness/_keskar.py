"""Keskar et al.'s (2017) ε-sharpness over a box, by L-BFGS-B.

**Keskar ε-sharpness** (:func:`keskar`) — Keskar et al. (2017)'s
``φ = 100·(max_{y∈C_ε} L(θ0 + Ay) − L(θ0)) / (1 + L(θ0))`` over a box, in the
full space or a random subspace, by L-BFGS-B.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.optimize import Bounds, minimize
from torch import Tensor

from .._checks import check_int, check_positive
from .._rng import item_generator
from ..landscape import finite_loss0
from ..objective import Objective
from ._common import _check_reach, _count, _no_vectors


@dataclass(frozen=True)
class KeskarSharpness:
    """Keskar et al. (2017) ε-sharpness ``φ = 100·(max_{y∈C_ε} L(θ0+Ay) − L(θ0)) / (1 + L(θ0))``.

    Attributes:
        value: φ (a lower bound on the true box maximum: L-BFGS-B is local).
        loss0: ``L(θ0)``.
        max_loss: the largest loss found, ``L(θ0 + A y)``.
        y: ``[p]`` the maximiser in the box's coordinates (float64).
        half_width: ``[p]`` the box ``|y_i| ≤ ε(|(A⁺θ0)_i| + 1)``.
        delta_l2: ``‖A y‖₂``, the perturbation's length in parameter space.
        at_bound: fraction of the coordinates of ``y`` on the box's faces.
        epsilon: ε.
        subspace_dim: p for a random subspace, ``None`` for the full space.
        seed: the subspace's seed.
        maxiter: the L-BFGS-B iteration budget.
        iterations, evaluations: used by L-BFGS-B (each evaluation is a loss
            and a gradient over the whole data).
        message: L-BFGS-B's stopping message.
    """

    value: float
    loss0: float
    max_loss: float
    y: np.ndarray
    half_width: np.ndarray
    delta_l2: float
    at_bound: float
    epsilon: float
    subspace_dim: int | None
    seed: int
    maxiter: int
    iterations: int
    evaluations: int
    message: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (without ``y`` and ``half_width``)."""
        return _no_vectors(self)


def _subspace(obj: Objective, p: int, seed: int) -> Tensor:
    """``A``, ``[n, p]`` float64, column ``j`` ~ N(0, I) drawn from ``(seed, j)``."""
    cols = [
        torch.randn(obj.n, generator=item_generator(seed, j), dtype=torch.float32) for j in range(p)
    ]
    return torch.stack(cols, dim=1).to(device=obj.device, dtype=torch.float64)


def _box(
    obj: Objective, epsilon: float, subspace_dim: int | None, seed: int
) -> tuple[Tensor | None, np.ndarray]:
    """``(A, half-widths)``: the subspace (``None`` for the full space) and the box
    ``|y_i| ≤ ε(|(A⁺θ0)_i| + 1)``, ``A⁺θ0`` by least squares from the QR of ``A``; an ε
    whose box reaches beyond the Objective's dtype is refused."""
    theta64 = obj.theta0.to(torch.float64)
    if subspace_dim is None:
        A = None
        center = theta64
    else:
        A = _subspace(obj, subspace_dim, seed)
        Q, R = torch.linalg.qr(A)
        center = torch.linalg.solve_triangular(R, (Q.T @ theta64)[:, None], upper=True)[:, 0]
        del Q, R
    half = epsilon * (center.abs() + 1)
    # the box's corners must stay representable: |Ay|_i ≤ Σ_j |A_ij| half_j
    _check_reach(
        obj, "epsilon", epsilon, float(half.max() if A is None else (A.abs() @ half).max())
    )
    return A, half.cpu().numpy()


def _delta(obj: Objective, y: np.ndarray, A: Tensor | None) -> Tensor:
    """The perturbation ``A y`` (``y`` itself in the full space), float64 on the Objective's
    device."""
    yt = torch.from_numpy(y).to(device=obj.device, dtype=torch.float64)
    return yt if A is None else A @ yt


def keskar(
    obj: Objective,
    epsilon: float = 1e-3,
    *,
    subspace_dim: int | None = None,
    seed: int = 0,
    maxiter: int = 10,
) -> KeskarSharpness:
    """ε-sharpness of Keskar et al. (2017, "On large-batch training for deep
    learning: generalization gap and sharp minima", Metric 2.1).

    ``φ = 100 · (max_{y ∈ C_ε} L(θ0 + A y) − L(θ0)) / (1 + L(θ0))`` over the box
    ``C_ε = {y ∈ R^p : |y_i| ≤ ε(|(A⁺θ0)_i| + 1)}``, in the full space (``A = I``,
    ``p = n``, the box ``|δ_i| ≤ ε(|θ0_i| + 1)``) or a random p-dimensional
    subspace: ``A`` is ``n × p`` with i.i.d. N(0, 1) entries (column ``j`` drawn
    from ``(seed, j)``) and ``A⁺θ0`` is the least-squares solution
    ``argmin_y ‖Ay − θ0‖₂`` from the QR factorisation of ``A`` (never forming
    ``A⁺``; memory ``n·p`` float64 numbers).

    The maximum is sought as Keskar et al. do, by ``scipy.optimize.minimize(
    method="L-BFGS-B")`` on ``−L(θ0 + Ay)`` from ``y = 0`` with the box as
    bounds and the exact gradient ``−Aᵀ∇L`` (float64 for scipy). On a convex
    loss the maximiser is a vertex of the box: for ``L = ½‖θ‖²`` it is
    ``y_i = sign(θ0_i)·ε(|θ0_i| + 1)``.

    Args:
        obj: the Objective.
        epsilon: ε > 0 (Keskar et al. report 1e-3 and 5e-4).
        subspace_dim: p in ``[1, n]``, or ``None`` for the full space.
        seed: the subspace's seed.
        maxiter: L-BFGS-B iterations (≥ 1).
    """
    epsilon = check_positive("epsilon", epsilon)
    maxiter = _count("maxiter", maxiter)
    seed = check_int("seed", seed, minimum=0)
    if subspace_dim is not None:
        subspace_dim = _count("subspace_dim", subspace_dim, 1, obj.n)
    loss0 = finite_loss0(obj, "its Keskar sharpness")
    theta0 = obj.theta0
    theta64 = theta0.to(torch.float64)
    A, half = _box(obj, epsilon, subspace_dim, seed)
    best = {"loss": -math.inf, "y": np.zeros_like(half)}
    count = {"evaluations": 0}

    def negative(y: np.ndarray) -> tuple[float, np.ndarray]:
        point = (theta64 + _delta(obj, y, A)).to(theta0.dtype)
        loss = float(obj.evaluate(point)[0][0])
        g = obj.grad(point).to(torch.float64)
        gy = g if A is None else A.T @ g
        count["evaluations"] += 1
        if loss > best["loss"]:
            best["loss"], best["y"] = loss, y.copy()
        return -loss, -gy.cpu().numpy()

    res = minimize(
        negative,
        np.zeros_like(half),
        jac=True,
        method="L-BFGS-B",
        bounds=Bounds(-half, half),
        options={"maxiter": maxiter},
    )
    y, max_loss = best["y"], best["loss"]
    delta = _delta(obj, y, A)
    return KeskarSharpness(
        value=100.0 * (max_loss - loss0) / (1.0 + loss0),
        loss0=loss0,
        max_loss=max_loss,
        y=y,
        half_width=half,
        delta_l2=float(delta.norm()),
        at_bound=float(np.mean(np.isclose(np.abs(y), half, rtol=1e-9, atol=0.0))),
        epsilon=epsilon,
        subspace_dim=subspace_dim,
        seed=int(seed),
        maxiter=maxiter,
        iterations=int(res.nit),
        evaluations=count["evaluations"],
        message=str(res.message),
    )
