from __future__ import annotations

import numpy as np
import pytest
import torch

import basinscope as bs
from basinscope import sharpness


def _obj(linreg):
    return bs.Objective(linreg.model, linreg.loss_fn, (linreg.X, linreg.y))


def test_epsilon_sharpness_closed_forms(linreg):
    obj = _obj(linreg)
    d = bs.random_directions(obj, 2, norm="none", seed=0)
    eps = 0.7
    one = sharpness.epsilon(obj, d[0], eps)
    assert one.value == pytest.approx(0.5 * eps**2 * float(d[0] @ linreg.A @ d[0]), rel=1e-10)
    assert abs(one.argmax[0]) == pytest.approx(eps)
    two = sharpness.epsilon(obj, d, eps, n_angles=720)
    lam = float(torch.linalg.eigvalsh(d @ linreg.A @ d.T)[-1])
    assert two.value == pytest.approx(0.5 * eps**2 * lam, rel=1e-4)
    assert two.value <= 0.5 * eps**2 * lam * (1 + 1e-12)  # a max over a subset


def test_from_surface_matches_grid_max(linreg):
    obj = _obj(linreg)
    d = bs.random_directions(obj, 2, norm="none", seed=0)
    s = bs.plane(obj, d[0], d[1], span=(-1, 1), steps=21)
    res = sharpness.from_surface(s, 0.5)
    a, b = np.meshgrid(s.xcoordinates, s.ycoordinates, indexing="ij")
    inside = a**2 + b**2 <= 0.25 + 1e-12
    M = (d @ linreg.A @ d.T).numpy()
    quad = 0.5 * (M[0, 0] * a**2 + 2 * M[0, 1] * a * b + M[1, 1] * b**2)
    assert res.value == pytest.approx(quad[inside].max(), rel=1e-10)
    assert res.n_points == int(inside.sum())
    assert res.loss0 == pytest.approx(linreg.L_star, rel=1e-12)
    # the grid maximum approaches the direct one from below
    direct = sharpness.epsilon(obj, d, 0.5)
    assert res.value <= direct.value * (1 + 1e-9)
    assert res.value == pytest.approx(direct.value, rel=0.1)


def test_average_case_expectation_half_sigma2_trace(linreg):
    obj = _obj(linreg)
    sigma = 0.2
    res = sharpness.average_case(obj, sigma, samples=400, seed=0)
    want = 0.5 * sigma**2 * float(torch.trace(linreg.A))
    assert abs(res.value - want) < 4 * res.stderr
    assert res.stderr < 0.2 * want
    # each increase is exactly ½σ²zᵀAz for its own seeded z
    from basinscope._rng import item_generator

    z = torch.randn(obj.n, generator=item_generator(0, 5), dtype=torch.float32).double()
    assert res.increases[5] == pytest.approx(0.5 * sigma**2 * float(z @ linreg.A @ z), rel=1e-9)


def test_average_case_reproducible_and_chunk_independent(linreg):
    obj = _obj(linreg)
    a = sharpness.average_case(obj, 0.1, samples=10, seed=3, chunk=3)
    b = sharpness.average_case(obj, 0.1, samples=10, seed=3, chunk=10)
    np.testing.assert_array_equal(a.increases, b.increases)
    c = sharpness.average_case(obj, 0.1, samples=10, seed=4)
    assert not np.array_equal(a.increases, c.increases)


def test_adaptive_noise_scales_with_weights(linreg):
    obj = _obj(linreg)
    res = sharpness.average_case(obj, 0.1, samples=300, seed=0, adaptive=True)
    w = obj.theta0.abs()
    want = 0.5 * 0.1**2 * float((torch.diag(linreg.A) * w**2).sum())
    assert abs(res.value - want) < 4 * res.stderr


def test_bad_input(linreg):
    obj = _obj(linreg)
    d = bs.random_directions(obj, 1, seed=0)
    with pytest.raises(bs.BasinscopeError, match="radius"):
        sharpness.epsilon(obj, d, -1.0)
    with pytest.raises(bs.BasinscopeError, match="sigma"):
        sharpness.average_case(obj, 0.0)
    with pytest.raises(bs.BasinscopeError, match="samples"):
        sharpness.average_case(obj, 0.1, samples=1)
