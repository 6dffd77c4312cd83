from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import LinearRegression

import basinscope as bs
from basinscope.volume import basin_volume, log_unit_ball, ray_directions, volume_from_radii


def _ellipsoid_log_volume(A: torch.Tensor, tau: float) -> float:
    """log of vol{δ : ½ δᵀAδ ≤ τ} = V_n(1)·(2τ)^{n/2}/√det A."""
    n = A.shape[0]
    return log_unit_ball(n) + 0.5 * n * math.log(2 * tau) - 0.5 * float(torch.logdet(A))


def test_unit_ball_volumes():
    assert math.exp(log_unit_ball(1)) == pytest.approx(2.0)
    assert math.exp(log_unit_ball(2)) == pytest.approx(math.pi)
    assert math.exp(log_unit_ball(3)) == pytest.approx(4 / 3 * math.pi)


def test_logsumexp_aggregate_equals_direct_and_dominance():
    rng = np.random.default_rng(0)
    r = rng.uniform(0.5, 1.5, 50)
    out = volume_from_radii(r, 7, bootstrap=0)
    assert out["log_mean_rn"] == pytest.approx(math.log(np.mean(r**7)), rel=1e-12)
    w = r**7
    assert out["ess"] == pytest.approx(w.sum() ** 2 / (w**2).sum(), rel=1e-12)
    assert out["top_share"] == pytest.approx(w.max() / w.sum(), rel=1e-12)
    # huge n: one radius dominates, log⟨rⁿ⟩ = n·log r_max − log N (no overflow)
    n = 10**6
    r2 = np.array([1.0, 1.01, 1.02, 1.03])
    out2 = volume_from_radii(r2, n, bootstrap=0)
    assert out2["log_mean_rn"] == pytest.approx(n * math.log(1.03) - math.log(4), rel=1e-12)
    assert out2["ess"] == pytest.approx(1.0, abs=1e-9)


class Bowl(LinearRegression):
    """Linear regression whose Hessian A = 2XᵀX/N is set exactly (X = √(N/2)·A^{1/2})."""

    def __init__(self, eigs: np.ndarray, seed: int = 0):
        n = len(eigs)
        g = torch.Generator().manual_seed(seed)
        q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
        self.A = q @ torch.diag(torch.as_tensor(eigs, dtype=torch.float64)) @ q.T
        N = n
        root = q @ torch.diag(torch.sqrt(torch.as_tensor(eigs, dtype=torch.float64))) @ q.T
        self.X = math.sqrt(N / 2) * root
        w_true = torch.randn(n, 1, generator=g, dtype=torch.float64)
        self.y = self.X @ w_true  # exact fit: L* = 0
        self.w_star = w_true
        self.model = torch.nn.Linear(n, 1, bias=False).double()
        with torch.no_grad():
            self.model.weight.copy_(w_true.T)
        self.loss_fn = torch.nn.MSELoss()
        self.L_star = 0.0


def test_isotropic_basin_is_exact_for_any_number_of_rays():
    n, lam, tau = 5, 3.0, 0.2
    bowl = Bowl(np.full(n, lam))
    obj = bs.Objective(bowl.model, bowl.loss_fn, (bowl.X, bowl.y))
    res = basin_volume(obj, tau, n_directions=3, rule="relative", tolerance=1e-9)
    r_true = math.sqrt(2 * tau / lam)
    np.testing.assert_allclose(res.radii, r_true, rtol=1e-9)
    assert res.log_volume == pytest.approx(_ellipsoid_log_volume(bowl.A, tau), abs=1e-8)
    assert res.crossed.all() and res.evaluations > 0


def test_bisection_radii_match_exact_ray_crossing():
    bowl = Bowl(np.array([0.5, 1.0, 4.0, 9.0]))
    obj = bs.Objective(bowl.model, bowl.loss_fn, (bowl.X, bowl.y))
    tau, tol = 0.3, 1e-4
    res = basin_volume(obj, tau, n_directions=20, rule="absolute", tolerance=tol, seed=2)
    u = ray_directions(obj, 20, seed=2)
    exact = torch.sqrt(2 * tau / torch.einsum("ki,ij,kj->k", u, bowl.A, u)).numpy()
    np.testing.assert_allclose(res.radii, exact, rtol=tol)
    # results do not depend on how the rays are batched
    res2 = basin_volume(obj, tau, n_directions=20, tolerance=tol, seed=2, batch=7)
    np.testing.assert_array_equal(res.radii, res2.radii)


@pytest.mark.parametrize("n", [2, 5, 10, 20])
def test_anisotropic_ellipsoid_volume(n):
    eigs = np.linspace(1.0, 2.0, n)
    bowl = Bowl(eigs, seed=n)
    tau = 0.5
    want = _ellipsoid_log_volume(bowl.A, tau)
    # the estimator on exact radii: many directions, within a few percent
    u = torch.randn(20000, n, generator=torch.Generator().manual_seed(n), dtype=torch.float64)
    u = u / u.norm(dim=1, keepdim=True)
    r = torch.sqrt(2 * tau / torch.einsum("ki,ij,kj->k", u, bowl.A, u)).numpy()
    est = volume_from_radii(r, n, bootstrap=200)
    assert abs(math.exp(est["log_volume"] - want) - 1) < 0.03
    # the full search with fewer rays: truth inside the bootstrap interval
    obj = bs.Objective(bowl.model, bowl.loss_fn, (bowl.X, bowl.y))
    res = basin_volume(obj, tau, n_directions=200, rule="relative", tolerance=1e-6, seed=1)
    lo, hi = res.ci
    assert lo - 0.05 <= want <= hi + 0.05  # the interval, plus the bisection's slack
    assert abs(res.log_volume - want) < 0.25


def test_uncrossed_rays_reported_and_errors():
    bowl = Bowl(np.array([1.0, 1e-8]))  # nearly flat along one axis
    obj = bs.Objective(bowl.model, bowl.loss_fn, (bowl.X, bowl.y))
    res = basin_volume(obj, 0.1, n_directions=64, rule="relative", r_max=10.0, seed=0)
    assert 0 < res.n_uncrossed < 64
    assert (res.radii[~res.crossed] == 10.0).all()
    with pytest.raises(bs.BasinscopeError, match="below the loss"):
        basin_volume(obj, -1.0, n_directions=4)
    with pytest.raises(bs.BasinscopeError, match="at least 2"):
        basin_volume(obj, 1.0, n_directions=1)
    flat = Bowl(np.array([1e-12, 1e-12]))
    obj2 = bs.Objective(flat.model, flat.loss_fn, (flat.X, flat.y))
    with pytest.raises(bs.BasinscopeError, match="largest loss seen"):
        basin_volume(obj2, 1.0, n_directions=4, r_max=5.0)
