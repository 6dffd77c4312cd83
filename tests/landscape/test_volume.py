from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import LinearRegression

import basinscope as bs
from basinscope.landscape import (
    _volume,
    basin_volume,
    log_unit_ball,
    ray_directions,
    volume_from_radii,
)


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
    with pytest.raises(bs.BasinscopeError, match="n_directions must be an integer >= 2"):
        basin_volume(obj, 1.0, n_directions=1)
    flat = Bowl(np.array([1e-12, 1e-12]))
    obj2 = bs.Objective(flat.model, flat.loss_fn, (flat.X, flat.y))
    with pytest.raises(bs.BasinscopeError, match="largest loss seen"):
        basin_volume(obj2, 1.0, n_directions=4, r_max=5.0)


def _no_search(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("the search ran before the input was checked")

    monkeypatch.setattr(_volume, "_search", fail)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"threshold": math.nan}, "threshold must be a finite number"),
        ({"threshold": math.inf}, "threshold must be a finite number"),
        ({"n_directions": 3.5}, "n_directions must be an integer"),
        ({"batch": 2.5}, "batch must be an integer"),
        ({"bootstrap": 1.5}, "bootstrap must be an integer"),
        ({"seed": 0.5}, "seed must be an integer"),
        ({"tolerance": math.nan}, "tolerance must be a finite number"),
        ({"tolerance": 1.0}, "tolerance must be a relative tolerance"),
        ({"r0": math.nan}, "r0 must be a finite number"),
        ({"r_max": math.inf}, "r_max must be a finite number"),
        ({"norm": "fliter"}, "unknown normalisation"),
        ({"precondition": torch.tensor([1.0, 0.0])}, "entry 1 is 0.0"),
        ({"precondition": torch.tensor([-1.0, 2.0])}, "entry 0 is -1.0"),
        ({"precondition": torch.tensor([1.0, math.nan])}, "entry 1 is nan"),
        ({"precondition": torch.ones(3)}, r"shape \(2,\)"),
    ],
)
def test_volume_refuses_bad_input_before_any_search(kwargs, match, monkeypatch):
    bowl = Bowl(np.array([1.0, 2.0]))
    obj = bs.Objective(bowl.model, bowl.loss_fn, (bowl.X, bowl.y))
    _no_search(monkeypatch)
    args = {"threshold": 0.1, "n_directions": 4, "rule": "relative"} | kwargs
    with pytest.raises(bs.BasinscopeError, match=match):
        basin_volume(obj, args.pop("threshold"), **args)


def test_an_empty_basin_is_refused_naming_the_keyword_not_a_cli_flag(monkeypatch):
    bowl = Bowl(np.array([1.0, 2.0]))
    obj = bs.Objective(bowl.model, bowl.loss_fn, (bowl.X, bowl.y))
    _no_search(monkeypatch)
    loss0 = obj.loss()
    with pytest.raises(bs.BasinscopeError) as info:
        basin_volume(obj, -0.5, n_directions=4)
    assert str(info.value) == (
        f"the threshold -0.5 is below the loss at the minimum ({loss0:.6g}); the basin "
        "would be empty: raise it or use rule='relative'"
    )
    assert "--" not in str(info.value)


def test_volume_accepts_numpy_integers_and_a_positive_precondition():
    bowl = Bowl(np.array([1.0, 2.0]))
    obj = bs.Objective(bowl.model, bowl.loss_fn, (bowl.X, bowl.y))
    plain = basin_volume(obj, 0.1, n_directions=4, rule="relative", bootstrap=10)
    same = basin_volume(
        obj,
        np.float64(0.1),
        n_directions=np.int64(4),
        batch=np.int32(3),
        bootstrap=np.int64(10),
        rule="relative",
        precondition=np.ones(2),  # D = I: the same rays, bit for bit
    )
    np.testing.assert_array_equal(plain.radii, same.radii)
    # a real diagonal changes the rays as u = Dz/‖Dz‖
    D = torch.tensor([1.0, 3.0], dtype=torch.float64)
    pre = ray_directions(obj, 3, seed=0, precondition=D)
    z = ray_directions(obj, 3, seed=0)
    want = z * D / (z * D).norm(dim=1, keepdim=True)
    torch.testing.assert_close(pre, want, rtol=1e-12, atol=0)


def test_measures_of_a_non_finite_loss_are_refused():
    model = torch.nn.Linear(3, 1)  # finite weights whose loss overflows float32
    with torch.no_grad():
        model.weight.fill_(1e25)
        model.bias.zero_()
    obj = bs.Objective(model, torch.nn.MSELoss(), (torch.ones(8, 3), torch.zeros(8, 1)))
    assert obj.loss() == math.inf
    for rule in ("absolute", "relative"):
        with pytest.raises(bs.BasinscopeError, match="loss at the weights is inf"):
            basin_volume(obj, 1.0, n_directions=4, rule=rule)
