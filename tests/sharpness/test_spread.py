"""sharpness.direction_spread on linear regression, where the loss is exactly quadratic.

``L(w) = mean((Xw − y)²)`` (``nn.MSELoss`` on ``nn.Linear(d, 1, bias=False)``) has
Hessian ``A = 2XᵀX/N`` everywhere, so along any direction ``d`` the slice
``t ↦ L(w* + t d)`` is the parabola ``L* + ½ t² dᵀAd`` and its curvature at 0 is
``dᵀAd = 2·dᵀ(XᵀX/N)d`` exactly: the least-squares fit must return it to rounding.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

import basinscope as bs
from basinscope import sharpness
from basinscope.errors import BasinscopeError
from basinscope.sharpness import _spread


@pytest.fixture
def obj(linreg):
    return bs.Objective(linreg.model, linreg.loss_fn, (linreg.X, linreg.y))


def _closed_form(obj, linreg, seed, dim):
    d = bs.random_directions(obj, dim, norm="filter", seed=seed)
    xtx = linreg.X.T @ linreg.X / len(linreg.X)
    return [float(2 * d[j] @ xtx @ d[j]) for j in range(dim)]


def test_plane_curvature_is_the_closed_form_and_the_spread_numpy_s(obj, linreg):
    seeds = (0, 1, 2)
    res = sharpness.direction_spread(obj, seeds, dim=2, steps=11, radius=0.45)
    assert res.seeds == seeds and res.dim == 2 and len(res.surfaces) == 3
    assert res.fit_points == 5  # −0.4, −0.2, 0, 0.2, 0.4
    for k, seed in enumerate(seeds):
        exact = _closed_form(obj, linreg, seed, 2)
        assert res.curvature[k] == pytest.approx(exact, rel=1e-8, abs=0)
        surf = res.surfaces[k]
        assert surf.attrs["direction_seed"] == seed and surf.attrs["norm"] == "filter"
        assert res.eps[k] == sharpness.from_surface(surf, 0.45).value
        assert res.coarse[k] is False
    # the directions of different seeds differ, so the spread is real
    assert len({c for row in res.curvature for c in row}) == 6
    eps = np.array(res.eps)
    assert res.eps_mean == pytest.approx(np.mean(eps), rel=1e-15)
    assert res.eps_sd == pytest.approx(np.std(eps, ddof=1), rel=1e-12)
    curv = np.array(res.curvature)
    assert res.curvature_mean == pytest.approx(curv.mean(), rel=1e-15)
    assert res.curvature_sd == pytest.approx(curv.std(ddof=1), rel=1e-12)
    assert res.curvature_mean_by_direction == pytest.approx(curv.mean(axis=0), rel=1e-15)
    assert res.curvature_sd_by_direction == pytest.approx(curv.std(axis=0, ddof=1), rel=1e-12)


def test_lines_written_per_seed_and_resumed(obj, linreg, tmp_path):
    path = tmp_path / "s.h5"
    res = sharpness.direction_spread(obj, [4, 7], dim=1, steps=21, radius=0.45, path=path)
    assert sorted(p.name for p in tmp_path.glob("*.h5")) == ["s_seed4.h5", "s_seed7.h5"]
    for k, seed in enumerate((4, 7)):
        assert res.curvature[k] == pytest.approx(_closed_form(obj, linreg, seed, 1), rel=1e-8)
        saved = bs.Surface.load(tmp_path / f"s_seed{seed}.h5")
        assert saved.attrs["direction_seed"] == seed and saved.attrs["norm"] == "filter"
        np.testing.assert_array_equal(saved.train_loss, res.surfaces[k].train_loss)
    again = sharpness.direction_spread(obj, [4, 7], dim=1, steps=21, radius=0.45, path=path)
    assert again.to_dict() == res.to_dict()


def test_one_seed_has_zero_sd_and_to_dict_is_json(obj):
    res = sharpness.direction_spread(obj, [3], dim=1, steps=21, radius=0.45, norm="layer")
    assert res.eps_sd == 0.0 and res.curvature_sd == 0.0
    assert res.curvature_sd_by_direction == (0.0,)
    d = res.to_dict()
    assert "surfaces" not in d
    assert d["curvature"] == [[res.curvature[0][0]]] and d["seeds"] == [3]
    assert json.loads(json.dumps(d)) == d


def test_a_coarse_grid_keeps_from_surface_s_warning(obj):
    with pytest.warns(RuntimeWarning, match="rounding noise"):
        res = sharpness.direction_spread(obj, [0], dim=1, steps=11, radius=0.45)
    assert res.coarse == (True,)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"seeds": (0, 1, 0)}, "seeds must be distinct, but 0 is given more than once"),
        ({"seeds": ()}, "seeds must be a non-empty sequence"),
        ({"seeds": 3}, "seeds must be a non-empty sequence"),
        ({"seeds": (0, 1.5)}, "seeds[1] must be an integer"),
        ({"seeds": (-1,)}, "seeds[0] must be an integer >= 0"),
        ({"dim": 3}, "dim must be 1 (lines) or 2 (planes), got 3"),
        ({"radius": 0.0}, "the radius must be positive"),
        ({"radius": -1}, "the radius must be positive"),
        ({"norm": "l7"}, "unknown normalisation 'l7'"),
        ({"steps": 5, "radius": 0.25}, "only 1 grid point(s) lie within radius 0.25"),
        ({"dim": 1, "steps": 9, "radius": 0.2}, "a quadratic fit needs 3"),
        ({"steps": 4}, "has no point at 0"),
        ({"span": (-1.0, 2.0), "steps": 5, "radius": 2.0}, "has no point at 0"),
    ],
)
def test_refusals_come_before_any_work(obj, monkeypatch, kwargs, message):
    def forbidden(*args, **kw):
        pytest.fail("direction_spread started its work before refusing its input")

    monkeypatch.setattr(_spread, "random_directions", forbidden)
    with pytest.raises(BasinscopeError) as info:
        sharpness.direction_spread(obj, **kwargs)
    assert message in str(info.value)
    assert str(info.value).count(". ") == 0  # one sentence


def test_a_line_off_zero_is_fitted_without_the_origin(obj, linreg):
    # dim=1 needs no grid point at 0: the fit reads the points within ε
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # few points within ε
        res = sharpness.direction_spread(obj, [0], dim=1, steps=20, radius=0.5)
    assert res.curvature[0] == pytest.approx(_closed_form(obj, linreg, 0, 1), rel=1e-8)
