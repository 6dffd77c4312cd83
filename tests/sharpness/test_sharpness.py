from __future__ import annotations

import dataclasses
import math

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


def test_from_surface_on_a_coarse_grid_warns_and_is_marked(linreg):
    obj = _obj(linreg)
    d = bs.random_directions(obj, 2, norm="none", seed=0)
    s = bs.plane(obj, d[0], d[1], span=(-1, 1), steps=5)  # spacing 0.5
    with pytest.warns(RuntimeWarning, match="only 0 grid point.*finer grid"):
        origin_only = sharpness.from_surface(s, 0.25)
    assert origin_only.coarse and origin_only.n_points == 1
    with pytest.warns(RuntimeWarning, match="only 4 grid point"):
        axes = sharpness.from_surface(s, 0.7)  # (±0.5, 0), (0, ±0.5)
    assert axes.coarse and axes.n_points == 5
    ok = sharpness.from_surface(s, 0.71)  # and the 4 diagonal points at 0.707: 8, no warning
    assert not ok.coarse and ok.n_points == 9
    M = (d @ linreg.A @ d.T).numpy()
    quad = [0.5 * 0.25 * (M[0, 0] * a * a + 2 * M[0, 1] * a * b + M[1, 1] * b * b)
            for a in (-1, 0, 1) for b in (-1, 0, 1)]  # fmt: skip
    assert ok.value == pytest.approx(max(quad), rel=1e-9)
    quiet = sharpness.from_surface(s, 0.25, warn=False)  # a caller recording `coarse` itself
    assert quiet.coarse and quiet.value == origin_only.value
    assert dataclasses.asdict(quiet)["coarse"] is True


def test_sharpness_inputs_are_checked_before_any_evaluation(linreg, monkeypatch):
    obj = _obj(linreg)
    d = bs.random_directions(obj, 2, norm="none", seed=0)
    bad = d.clone()
    bad[1, 0] = float("nan")
    with pytest.raises(bs.BasinscopeError, match="finite floating-point.*1 entries NaN"):
        sharpness.epsilon(obj, bad, 0.25)
    with pytest.raises(bs.BasinscopeError, match=r"shape \(k, 4\)"):
        sharpness.epsilon(obj, torch.ones(2, 3, dtype=torch.float64), 0.25)
    with pytest.raises(bs.BasinscopeError, match="n_angles must be an integer"):
        sharpness.epsilon(obj, d, 0.25, n_angles=2.5)
    for radius in (float("nan"), float("inf"), 0.0, -1.0):
        with pytest.raises(bs.BasinscopeError, match="radius must be"):
            sharpness.epsilon(obj, d, radius)

    def fail(*args, **kwargs):
        raise AssertionError("evaluated before the input was checked")

    monkeypatch.setattr(obj, "evaluate", fail)
    for sigma in (float("nan"), float("inf"), 0.0):
        with pytest.raises(bs.BasinscopeError, match="sigma must be"):
            sharpness.average_case(obj, sigma)
    with pytest.raises(bs.BasinscopeError, match="samples must be an integer"):
        sharpness.average_case(obj, 0.1, samples=3.5)
    with pytest.raises(bs.BasinscopeError, match="chunk must be an integer"):
        sharpness.average_case(obj, 0.1, chunk=0.5)
    with pytest.raises(bs.BasinscopeError, match="seed must be an integer"):
        sharpness.average_case(obj, 0.1, seed=1.5)
    monkeypatch.undo()
    a = sharpness.average_case(obj, 0.1, samples=np.int64(4), chunk=np.int32(3))
    b = sharpness.average_case(obj, 0.1, samples=4)
    np.testing.assert_array_equal(a.increases, b.increases)


def _overflowing() -> bs.Objective:
    model = torch.nn.Linear(3, 3)  # finite weights whose loss is inf in float32
    with torch.no_grad():
        model.weight.fill_(1e25)
        model.bias.zero_()
    return bs.Objective(model, torch.nn.MSELoss(), (torch.ones(8, 3), torch.zeros(8, 3)))


def test_sharpness_of_a_non_finite_loss_is_refused():
    obj = _overflowing()
    d = bs.random_directions(obj, 2, norm="none", seed=0)
    calls = [
        lambda: sharpness.average_case(obj, 0.1, samples=2),
        lambda: sharpness.epsilon(obj, d, 0.1),
        lambda: sharpness.worst_case(obj, 0.1),
        lambda: sharpness.keskar(obj, 1e-3),
    ]
    for call in calls:
        with pytest.raises(bs.BasinscopeError, match="loss at the weights is inf"):
            call()
    cls = torch.nn.Linear(3, 3)  # a classifier whose cross-entropy overflows
    with torch.no_grad():
        cls.weight.fill_(1e38)
        cls.weight[0].fill_(-1e38)
    y = torch.zeros(8, dtype=torch.long)  # the class at −3e38 while the others are at 3e38
    obj2 = bs.Objective(cls, torch.nn.CrossEntropyLoss(), (torch.ones(8, 3), y))
    assert obj2.loss() == math.inf
    with pytest.raises(bs.BasinscopeError, match="not finite"):
        sharpness.pac_bayes(obj2)
