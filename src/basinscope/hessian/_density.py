"""The eigenvalue density of ``H`` by stochastic Lanczos quadrature, and its figure.

:func:`density` — the eigenvalue density by stochastic Lanczos quadrature
(Lin, Saad & Yang 2016; Ghorbani, Krishnan & Xiao 2019): for a random unit
``v``, ``vᵀ g(H) v ≈ Σ_j w_j g(τ_j)`` with ``τ_j`` the eigenvalues of the
Lanczos matrix and ``w_j`` the squared first components of its
eigenvectors; averaged over runs and broadened by Gaussians.

The quadrature reads only a :class:`~basinscope.hessian.SymmetricOperator`
(``n``, ``dtype``, ``device``, ``matvec``). In a process group, given an
Objective, the runs are point-parallel (``_split``): each rank runs its share of
each round of runs (one run per rank) on the whole data's operator alone and the
nodes and weights are gathered in run order, stored by rank 0 as each round ends:
bit-identical to one process's (the partial-results file too). Given an operator
(data-parallel), every rank makes every run together.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .. import _dist
from .._checks import check_int, check_number, check_positive
from .._io import atomic_write
from .._partial import open_partial
from ._lanczos import _eigh
from ._operator import Curvature, SymmetricOperator, _key, check_curvature
from ._random import _SLQ, _rademacher
from ._split import operator_alone, point_group, split_map, writer_group


@dataclass(frozen=True)
class Density:
    """Eigenvalue density of ``H`` by stochastic Lanczos quadrature.

    Attributes:
        nodes: ``[runs, steps]`` Ritz values ``τ_j`` of each run (NaN-padded
            where a run ended early on an invariant subspace).
        weights: ``[runs, steps]`` quadrature weights ``w_j`` (sum 1 per run).
        grid: ``[points]`` eigenvalue axis.
        density: ``[points]`` ``φ(t) = (1/R) Σ_r Σ_j w_rj 𝒩(t; τ_rj, σ²)``;
            integrates to 1.
        sigma: the Gaussian broadening σ.
        negative_mass: estimated fraction of negative eigenvalues,
            ``(1/R) Σ_r Σ_{τ_rj<−zero_tol·max|τ|} w_rj``; ``negative_mass_se``
            its SE over runs.
        n: the dimension; ``n_products``: products used; ``seed``.
    """

    nodes: np.ndarray
    weights: np.ndarray
    grid: np.ndarray
    density: np.ndarray
    sigma: float
    negative_mass: float
    negative_mass_se: float
    n: int
    n_products: int
    seed: int

    def moment(self, p: int) -> float:
        """``(1/R) Σ_r Σ_j w_rj τ_rj^p``, an unbiased estimate of ``tr(Hᵖ)/n`` (before broadening)."""
        return float(np.mean(self._run_moments(p)))

    def moment_se(self, p: int) -> float:
        """Standard error over runs of :meth:`moment` (``inf`` for one run)."""
        m = self._run_moments(p)
        return float(m.std(ddof=1) / math.sqrt(len(m))) if len(m) > 1 else math.inf

    def _run_moments(self, p: int) -> np.ndarray:
        return np.nansum(self.weights * self.nodes.astype(np.float64) ** p, axis=1)

    def to_dict(self) -> dict[str, Any]:
        return {
            "nodes": [[float(t) for t in row if not np.isnan(t)] for row in self.nodes],
            "weights": [
                [float(w) for w, t in zip(wr, tr, strict=True) if not np.isnan(t)]
                for wr, tr in zip(self.weights, self.nodes, strict=True)
            ],
            "grid": self.grid.tolist(),
            "density": self.density.tolist(),
            "sigma": self.sigma,
            "negative_mass": self.negative_mass,
            "negative_mass_se": self.negative_mass_se,
            "trace_estimate": self.n * self.moment(1),
            "n": self.n,
            "n_products": self.n_products,
            "seed": self.seed,
        }


def _slq_run(op: SymmetricOperator, steps: int, v: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """One Lanczos quadrature: nodes and weights from ``steps`` products starting at unit ``v``."""
    n = op.n
    m = min(steps, n)
    V = torch.zeros(m, n, dtype=op.dtype, device=op.device)
    V[0] = v / v.norm()
    alpha, beta = np.zeros(m), np.zeros(m)
    j = 0
    while True:
        w = op.matvec(V[j])
        w_norm = float(w.norm())
        alpha[j] = float(V[j] @ w)
        w = w - alpha[j] * V[j] - (beta[j - 1] * V[j - 1] if j else 0)
        for _ in range(2):  # full reorthogonalisation, as Ghorbani et al.
            w -= (V[: j + 1] @ w) @ V[: j + 1]
        j += 1
        if j == m:
            break
        b = float(w.norm())
        if b <= 100 * torch.finfo(op.dtype).eps * w_norm:
            break  # invariant subspace: the quadrature is exact
        beta[j - 1] = b
        V[j] = w / b
    Tm = np.diag(alpha[:j]) + np.diag(beta[: j - 1], 1) + np.diag(beta[: j - 1], -1)
    tau, U = _eigh(Tm)
    return tau, U[0] ** 2


def _slq_start(op: SymmetricOperator, steps: int, seed: int, r: int) -> list[list[float]]:
    """Run ``r``'s ``[nodes, weights]``, from the Rademacher start ``(seed, r)``."""
    v = _rademacher(op.n, seed, _SLQ, r).to(op.device, op.dtype)
    tau, w = _slq_run(op, steps, v)
    return [tau.tolist(), w.tolist()]


def _runs(
    op: SymmetricOperator,
    runs: int,
    m: int,
    seed: int,
    path: str | Path | None,
    split: _dist.Dist | None,
) -> tuple[np.ndarray, np.ndarray, int]:
    """``(nodes, weights, products)`` of runs ``0 … runs−1`` (``m`` steps each): those
    the partial results lack computed in rounds (one run per rank of ``split``),
    stored as each round ends; stored runs count with the products they took."""
    key = _key(op, steps=m, seed=seed) if path is not None else {}
    what = "spectral-density Lanczos runs"
    with open_partial(path, key, what=what, dist=writer_group(op)) as done:
        todo = done.missing(range(runs))
        width = 1 if split is None else split.size
        for s in range(0, len(todo), width):
            rows = split_map(split, todo[s : s + width], lambda r: _slq_start(op, m, seed, r))
            done.update({r: row for r, row in zip(todo[s : s + width], rows, strict=True)})
    nodes = np.full((runs, m), np.nan)
    weights = np.zeros((runs, m))
    products = 0  # one per Lanczos step
    for r in range(runs):
        tau, w = (np.asarray(a, dtype=np.float64) for a in done.get(r))
        products += len(tau)
        nodes[r, : len(tau)], weights[r, : len(w)] = tau, w
    return nodes, weights, products


def _broaden(
    nodes: np.ndarray, weights: np.ndarray, sigma: float | None, points: int
) -> tuple[np.ndarray, np.ndarray, float]:
    """``(grid, φ on it, σ)``: the quadrature's nodes as Gaussians of width σ (default
    ``(τ_max − τ_min)/400``) on ``points`` values spanning the nodes ± 6σ."""
    runs = len(nodes)
    lo, hi = float(np.nanmin(nodes)), float(np.nanmax(nodes))
    if sigma is None:
        sigma = (hi - lo) / 400 if hi > lo else max(abs(hi), 1.0) * 1e-3
    grid = np.linspace(lo - 6 * sigma, hi + 6 * sigma, points)
    dens = np.zeros(points)
    for tau_r, w_r in zip(nodes, weights, strict=True):
        ok = ~np.isnan(tau_r)
        z = (grid[:, None] - tau_r[None, ok]) / sigma
        dens += (np.exp(-0.5 * z**2) * w_r[None, ok]).sum(axis=1)
    dens /= runs * sigma * math.sqrt(2 * math.pi)
    return grid, dens, sigma


def density(
    obj: Curvature | SymmetricOperator,
    *,
    runs: int = 4,
    steps: int = 64,
    sigma: float | None = None,
    points: int = 4001,
    zero_tol: float = 1e-5,
    seed: int = 0,
    path: str | Path | None = None,
    curvature: str = "hessian",
) -> Density:
    """Eigenvalue spectral density by stochastic Lanczos quadrature (Ghorbani et al. 2019).

    Run ``r`` starts from the Rademacher vector ``(seed, r)`` normalised to unit
    length and takes ``steps`` Lanczos steps with full reorthogonalisation; the
    eigenvalues ``τ_j`` and squared first eigenvector components ``w_j`` of the
    tridiagonal ``T`` satisfy ``Σ_j w_j τ_j^p = vᵀHᵖv`` for ``p < 2·steps``, so
    ``n·Σ_j w_j τ_j^p`` is a Hutchinson estimate of ``tr(Hᵖ)``. The density is
    ``φ(t) = (1/R) Σ_r Σ_j w_rj 𝒩(t; τ_rj, σ²)`` on ``points`` values spanning
    the nodes ± 6σ (default ``σ = (τ_max − τ_min)/400``).

    The negative spectral mass counts the weight of nodes below
    ``−zero_tol·max|τ|``, so that zero eigenvalues (dead units, symmetries),
    which rounding puts on either side of 0, do not count as negative. It is a
    quadrature estimate: with fewer steps than distinct eigenvalues a node may
    merge eigenvalues on both sides of 0.

    With ``path`` (a JSON file of partial results, :mod:`basinscope._partial`)
    each run's nodes and weights are stored as it finishes and a rerun computes
    only the missing runs, giving the same density bit for bit. Keyed by the
    Objective's fingerprint, θ, ``steps``, ``seed`` and the operator's
    ``batched`` (not ``runs``: a rerun with more runs reuses the stored ones).
    In a process group, an Objective's runs are shared over the ranks, each on the
    whole data (bit-identical to one process; rank 0 writes the file); an
    operator's products are data-parallel, every rank making every run.

    ``curvature="ggn"``: the density of the generalised Gauss–Newton matrix
    (:class:`GGNOperator`); no negative mass for a loss convex in the output.

    Returns:
        A :class:`Density` (``runs·steps`` products at most; stored runs count
        with the products they took).
    """
    check_curvature(curvature)
    runs = check_int("runs", runs, minimum=1)
    steps = check_int("steps", steps, minimum=1)
    points = check_int("points", points, minimum=1)
    seed = check_int("seed", seed, minimum=0)
    if sigma is not None:
        sigma = check_number("sigma", sigma, positive=True)
    zero_tol = check_positive("zero_tol", zero_tol, zero=True)
    split = point_group(obj)
    op = operator_alone(obj, split, curvature)
    nodes, weights, products = _runs(op, runs, min(steps, op.n), seed, path, split)
    grid, dens, sigma = _broaden(nodes, weights, sigma, points)
    cut = -zero_tol * float(np.nanmax(np.abs(nodes)))
    neg = np.where(nodes < cut, weights, 0.0).sum(axis=1)
    return Density(
        nodes=nodes,
        weights=weights,
        grid=grid,
        density=dens,
        sigma=float(sigma),
        negative_mass=float(neg.mean()),
        negative_mass_se=float(neg.std(ddof=1) / math.sqrt(runs)) if runs > 1 else math.inf,
        n=op.n,
        n_products=products,
        seed=seed,
    )


def plot_density(result: Density, path: str | Path, *, title: str | None = None) -> Path:
    """Draw the density on a log scale, as PyHessian does, and write a PNG atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.semilogy(result.grid, result.density + 1e-7, lw=1.2)  # floor as PyHessian: log of 0
    ax.set_xlabel("Eigenvalue")
    ax.set_ylabel("Density (log scale)")
    ax.set_title(
        title
        or f"Hessian spectrum (SLQ, {len(result.nodes)} runs); "
        f"negative mass {result.negative_mass:.3g}"
    )
    return atomic_write(path, lambda p: fig.savefig(p, format="png"))
