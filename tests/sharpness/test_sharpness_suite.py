"""Worst-case (SAM/ASAM/m-sharpness), Keskar ε-sharpness and PAC-Bayes σ against closed forms."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from conftest import Quadratic, mean_loss
from scipy.stats import norm as gaussian
from torch import nn

import basinscope as bs
from basinscope import sharpness
from basinscope.sharpness._keskar import _subspace

f64 = torch.float64


def quadratic(eigs, theta=None, seed: int = 0) -> tuple[bs.Objective, torch.Tensor]:
    eigs = torch.as_tensor(eigs, dtype=f64)
    g = torch.Generator().manual_seed(seed)
    n = len(eigs)
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=f64))
    A = Q @ torch.diag(eigs) @ Q.T
    A = (A + A.T) / 2
    theta = torch.zeros(n, dtype=f64) if theta is None else torch.as_tensor(theta, dtype=f64)
    data = (torch.zeros(4, 1, dtype=f64), torch.zeros(4, dtype=f64))
    return bs.Objective(Quadratic(A, theta), mean_loss, data), A


def linreg_obj(linreg) -> bs.Objective:
    return bs.Objective(linreg.model, linreg.loss_fn, (linreg.X, linreg.y))


# ------------------------------------------------------------- worst case
def test_l2_worst_case_is_half_rho2_lambda_max():
    obj, A = quadratic([0.3, 0.5, 1.0, 1.5, 2.0, 4.0])
    rho = 0.3
    res = sharpness.worst_case(obj, rho, steps=60, restarts=2, seed=0)
    want = 0.5 * rho**2 * 4.0
    assert res.value == pytest.approx(want, rel=1e-6)
    assert res.value <= want * (1 + 1e-12)  # never above the true maximum
    assert res.delta_norm == pytest.approx(rho, rel=1e-12)
    assert res.max_loss == pytest.approx(0.5 * float(res.delta @ A @ res.delta), rel=1e-12)
    # ∇L(0) = 0: SAM's start cannot move, the random restart finds the maximum
    assert math.isnan(res.restart_values[0])
    assert res.restart_values[1] == res.value
    assert res.gradients <= 2 * 60 and res.evaluations <= 2 * 61 + 1


def test_linf_worst_case_is_the_best_vertex():
    n, rho = 5, 0.3
    obj, A = quadratic(torch.linspace(0.3, 4.0, n))
    res = sharpness.worst_case(obj, rho, norm="linf", steps=20, restarts=16, seed=0)
    vertices = torch.tensor(list(itertools.product([-rho, rho], repeat=n)), dtype=f64)
    brute = float((0.5 * torch.einsum("ki,ij,kj->k", vertices, A, vertices)).max())
    np.testing.assert_allclose(res.delta.abs().numpy(), rho, rtol=1e-12)
    assert res.value == pytest.approx(brute, rel=1e-12)
    assert res.delta_norm == pytest.approx(rho)


def test_one_step_is_sam_and_asam():
    theta = torch.tensor([0.7, -1.2, 0.4, 2.0, -0.3], dtype=f64)
    obj, A = quadratic([0.5, 1.0, 2.0, 3.0, 5.0], theta=theta)
    g, rho = A @ theta, 0.2
    L = lambda t: 0.5 * float(t @ A @ t)  # noqa: E731
    sam = sharpness.worst_case(obj, rho, steps=1, restarts=1)
    want = rho * g / g.norm()
    torch.testing.assert_close(sam.delta, want, rtol=1e-13, atol=1e-15)
    assert sam.value == pytest.approx(L(theta + want) - L(theta), rel=1e-12)
    assert (sam.steps, sam.restarts, sam.gradients) == (1, 1, 1)
    box = sharpness.worst_case(obj, rho, norm="linf", steps=1, restarts=1)
    torch.testing.assert_close(box.delta, rho * torch.sign(g), rtol=0, atol=0)
    # ASAM (Kwon et al. 2021): δ = ρ T²g / ‖Tg‖ with T = |θ| + η
    T = theta.abs() + 0.1
    asam = sharpness.worst_case(obj, rho, adaptive=True, eta=0.1, steps=1, restarts=1)
    torch.testing.assert_close(asam.delta, rho * T**2 * g / (T * g).norm(), rtol=1e-13, atol=0)
    assert asam.delta_norm == pytest.approx(rho, rel=1e-12)
    assert asam.delta_l2 == pytest.approx(float((rho * T**2 * g / (T * g).norm()).norm()))


def _trust_region_max(A: torch.Tensor, g: torch.Tensor, rho: float) -> float:
    """``max_{‖δ‖≤ρ} gᵀδ + ½δᵀAδ`` for PSD A: ``δ = (λI − A)⁻¹g`` with ``‖δ‖ = ρ``, λ > λ_max."""
    lam, V = torch.linalg.eigh(A)
    c = V.T @ g
    lo, hi = float(lam[-1]), float(lam[-1]) + float(c.norm()) / rho + 1.0
    for _ in range(200):  # ‖δ(λ)‖ decreases in λ on (λ_max, ∞)
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if float((c / (mid - lam)).norm()) > rho else (lo, mid)
    d = c / (hi - lam)
    return float(c @ d + 0.5 * (d * lam) @ d)


def test_m_sharpness_is_the_weighted_mean_of_per_batch_maxima(linreg):
    obj = linreg_obj(linreg)
    rho, m = 0.2, 12  # batches of 12, 12, 12, 12 and 2 examples
    res = sharpness.worst_case(obj, rho, m=m, steps=80, restarts=1)
    X, y, w = linreg.X, linreg.y, linreg.w_star
    want, sizes = [], []
    for s in range(0, len(X), m):
        Xb, yb = X[s : s + m], y[s : s + m]
        Ab = 2 * Xb.T @ Xb / len(Xb)
        gb = (2 * Xb.T @ (Xb @ w - yb) / len(Xb))[:, 0]
        want.append(_trust_region_max(Ab, gb, rho))
        sizes.append(len(Xb))
    assert res.n_batches == len(want) == 5 and sizes[-1] == 2
    np.testing.assert_allclose(res.batch_values, want, rtol=1e-6)
    assert res.value == pytest.approx(np.average(want, weights=sizes), rel=1e-6)
    assert res.loss0 == pytest.approx(linreg.L_star, rel=1e-12)
    assert res.delta is None and res.delta_norm == pytest.approx(rho)
    # m = N is the ordinary worst case, draw for draw
    full = sharpness.worst_case(obj, rho, m=len(X), steps=5, restarts=2, seed=3)
    plain = sharpness.worst_case(obj, rho, steps=5, restarts=2, seed=3)
    assert full.value == plain.value and full.batch_values == plain.batch_values


def test_worst_case_seeded_and_leaves_the_objective_alone(mlp):
    model, X, y = mlp
    obj = bs.Objective(model, nn.CrossEntropyLoss(), (X, y))
    before = obj.theta0.clone()
    a = sharpness.worst_case(obj, 0.5, steps=4, restarts=3, seed=7)
    b = sharpness.worst_case(obj, 0.5, steps=4, restarts=3, seed=7)
    c = sharpness.worst_case(obj, 0.5, steps=4, restarts=3, seed=8)
    assert a.restart_values == b.restart_values and torch.equal(a.delta, b.delta)
    assert a.restart_values[0] == c.restart_values[0]  # the SAM start is not random
    assert a.restart_values[1:] != c.restart_values[1:]
    assert a.value == max(a.restart_values) > 0
    assert a.max_loss == pytest.approx(obj.loss(obj.theta0 + a.delta), rel=1e-12)
    assert torch.equal(obj.theta0, before)
    assert torch.equal(bs.ParamSpace(model).flatten(model), before)
    d = a.to_dict()
    assert "delta" not in d and d["value"] == a.value


# ------------------------------------------------------------------ Keskar
def test_keskar_full_space_vertex_closed_form():
    theta = torch.tensor([0.7, -1.2, 0.4, 2.0, -0.3, 0.05], dtype=f64)
    obj, _ = quadratic(torch.ones(6), theta=theta)  # A = I: L = ½‖θ‖²
    eps = 0.1
    res = sharpness.keskar(obj, eps)
    y = torch.sign(theta) * eps * (theta.abs() + 1)
    L0, L1 = 0.5 * float(theta @ theta), 0.5 * float((theta + y) @ (theta + y))
    np.testing.assert_allclose(res.y, y.numpy(), rtol=1e-12)
    assert res.at_bound == 1.0
    assert res.value == pytest.approx(100 * (L1 - L0) / (1 + L0), rel=1e-12)
    assert res.loss0 == pytest.approx(L0) and res.max_loss == pytest.approx(L1)


def test_keskar_random_subspace():
    theta = torch.tensor([0.7, -1.2, 0.4, 2.0, -0.3, 0.05], dtype=f64)
    obj, _ = quadratic(torch.ones(6), theta=theta)
    eps = 0.05
    # p = 1: max of ½‖θ + t a‖² over |t| ≤ h is at t = sign(aᵀθ)·h, h = ε(|a⁺θ| + 1)
    res = sharpness.keskar(obj, eps, subspace_dim=1, seed=4)
    a = _subspace(obj, 1, 4)[:, 0]
    h = eps * (abs(float(a @ theta / (a @ a))) + 1)
    t = math.copysign(h, float(a @ theta))
    L0 = 0.5 * float(theta @ theta)
    L1 = 0.5 * float((theta + t * a) @ (theta + t * a))
    assert res.y[0] == pytest.approx(t, rel=1e-12)
    assert res.value == pytest.approx(100 * (L1 - L0) / (1 + L0), rel=1e-12)
    assert res.delta_l2 == pytest.approx(h * float(a.norm()), rel=1e-12)
    # p = 3: the box is built on the least-squares A⁺θ; reproducible from the seed
    res3 = sharpness.keskar(obj, eps, subspace_dim=3, seed=4)
    A3 = _subspace(obj, 3, 4)
    assert torch.equal(A3[:, 0], a)  # column j depends on (seed, j) alone
    center = torch.linalg.lstsq(A3, theta[:, None]).solution[:, 0]
    np.testing.assert_allclose(res3.half_width, (eps * (center.abs() + 1)).numpy(), rtol=1e-10)
    assert np.all(np.abs(res3.y) <= res3.half_width)
    assert res3.value >= 0  # the best point found, and y = 0 is in the box
    again = sharpness.keskar(obj, eps, subspace_dim=3, seed=4)
    np.testing.assert_array_equal(res3.y, again.y)


# --------------------------------------------------------------- PAC-Bayes
def margin_classifier(n: int = 400, c: float = 0.5) -> bs.Objective:
    """Two classes, example i = e_i, weights ±c: margin 2c from weights used by no other
    example, so noise flips examples independently: with plain noise
    P(error) = Φ(−2c / (√2 σ)); magnitude-aware, Φ(−2c / √(2(σ²c² + ε²)))."""
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 2, (n,), generator=g)
    model = nn.Linear(n, 2, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(torch.where(torch.arange(2)[:, None] == y, c, -c).to(f64))
    return bs.Objective(model, nn.CrossEntropyLoss(), (torch.eye(n, dtype=f64), y))


def test_pac_bayes_sigma_matches_gaussian_cdf():
    obj = margin_classifier()
    target, samples, tol, c, eps = 0.1, 25, 1e-3, 0.5, 0.05
    z = gaussian.ppf(target)
    # Monte-Carlo: the estimated error rate has sd √(p(1−p)/(S·N)) at p = target, and
    # d p / d log σ = φ(z)|z|, so log σ' is off by that ratio; allow 4 sd plus the bracket.
    sd = math.sqrt(target * (1 - target) / (samples * obj.n_examples))
    slack = 4 * sd / (gaussian.pdf(z) * abs(z)) + tol
    res = sharpness.pac_bayes(obj, target=target, samples=samples, tol=tol)
    want = math.sqrt(2) * c / abs(z)
    assert res.bracketed and res.error0 == 0.0
    assert abs(math.log(res.sigma / want)) < slack
    assert res.increase <= target
    mag = sharpness.pac_bayes(
        obj, target=target, samples=samples, tol=tol, magnitude_aware=True, eps=eps
    )
    want_mag = math.sqrt(2 * c**2 / z**2 - eps**2) / c
    assert abs(math.log(mag.sigma / want_mag)) < slack
    assert mag.sigma / res.sigma == pytest.approx(want_mag / want, rel=2 * slack)
    # the bound terms, as documented
    w2, m, n = obj.n * c**2, obj.n_examples, obj.n
    assert res.weight_norm2 == pytest.approx(w2)
    assert res.bound == pytest.approx(w2 / (4 * res.sigma**2) + math.log(m / res.sigma) + 10)
    s = mag.sigma
    per = math.log((eps**2 + (s**2 + 1) * w2 / n) / (eps**2 + s**2 * c**2))
    assert mag.bound == pytest.approx(0.25 * n * per + math.log(m / s) + 10)
    assert res.flatness == pytest.approx(1 / res.sigma**2)


def test_pac_bayes_common_random_numbers_monotone_and_chunk_free():
    obj = margin_classifier(n=200)
    res = sharpness.pac_bayes(obj, samples=6, tol=1e-2, seed=2, chunk=4)
    order = np.argsort(res.sigmas)
    inc = np.asarray(res.increases)[order]
    assert np.all(np.diff(inc) >= 0)  # the search saw a monotone curve
    assert res.evaluations == 6 * len(res.sigmas)
    grid = [sharpness.noise_error_increase(obj, s, samples=6, seed=2) for s in (0.2, 0.4, 0.8, 1.6)]
    assert grid == sorted(grid) and grid[0] < grid[-1]
    other = sharpness.pac_bayes(obj, samples=6, tol=1e-2, seed=2, chunk=6)
    assert other.sigmas == res.sigmas and other.increases == res.increases
    assert sharpness.pac_bayes(obj, samples=6, tol=1e-2, seed=3).increases != res.increases
    # σ_max too small to reach the target: reported, not bracketed
    low = sharpness.pac_bayes(obj, samples=6, sigma_max=1e-3, sigma_min=1e-4)
    assert not low.bracketed and low.sigma == 1e-3 and low.increase == 0.0


# --------------------------------------------------------------- bad input
def test_bad_input(linreg):
    obj = linreg_obj(linreg)
    Err = bs.BasinscopeError
    for radius in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(Err, match="radius"):
            sharpness.worst_case(obj, radius)
    with pytest.raises(Err, match="norm"):
        sharpness.worst_case(obj, 0.1, norm="l1")
    with pytest.raises(Err, match="steps"):
        sharpness.worst_case(obj, 0.1, steps=0)
    with pytest.raises(Err, match="restarts"):
        sharpness.worst_case(obj, 0.1, restarts=0)
    for eta in (-0.1, float("nan"), float("inf")):
        with pytest.raises(Err, match="eta"):
            sharpness.worst_case(obj, 0.1, adaptive=True, eta=eta)
    ok = sharpness.worst_case(obj, np.float32(0.1), steps=np.int64(1), restarts=1)
    assert ok.radius == pytest.approx(0.1) and ok.steps == 1  # numpy scalars are fine
    for m in (0, obj.n_examples + 1):
        with pytest.raises(Err, match="m must"):
            sharpness.worst_case(obj, 0.1, m=m)
    with pytest.raises(Err, match="epsilon"):
        sharpness.keskar(obj, 0.0)
    for p in (0, obj.n + 1):
        with pytest.raises(Err, match="subspace_dim"):
            sharpness.keskar(obj, subspace_dim=p)
    with pytest.raises(Err, match="maxiter"):
        sharpness.keskar(obj, maxiter=0)
    cls = margin_classifier(n=20)
    for target in (0.0, 1.0, 1.5, float("nan")):
        with pytest.raises(Err, match="target"):
            sharpness.pac_bayes(cls, target=target)
    with pytest.raises(Err, match="sigma_min"):
        sharpness.pac_bayes(cls, sigma_min=1.0, sigma_max=0.5)
    with pytest.raises(Err, match="samples"):
        sharpness.pac_bayes(cls, samples=0)
    with pytest.raises(Err, match="classifier"):
        sharpness.pac_bayes(obj)  # regression: no training error
    with pytest.raises(Err, match="sigma"):
        sharpness.noise_error_increase(cls, 0.0)
