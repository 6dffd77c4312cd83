"""Hostile input to the direction functions."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import basinscope as bs
from basinscope.landscape import gram_schmidt, interpolation_direction, normalize, pca_directions

f64 = torch.float64


@pytest.fixture
def obj():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).double()
    X = torch.randn(10, 3, dtype=f64)
    return bs.Objective(model, nn.CrossEntropyLoss(), (X, torch.arange(10) % 2))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_direction_is_refused(obj, bad):
    d = torch.randn(obj.n, dtype=f64)
    d[7] = bad
    with pytest.raises(bs.BasinscopeError, match=rf"the direction holds {bad} at coordinate 7"):
        normalize(d, obj.theta0, obj.space, "filter")
    two = torch.randn(2, obj.n, dtype=f64)
    two[1, 4] = bad
    with pytest.raises(bs.BasinscopeError, match=rf"holds {bad} at row 1, coordinate 4"):
        gram_schmidt(two)
    with pytest.raises(bs.BasinscopeError, match="theta_b holds"):
        interpolation_direction(obj.theta0, two[1])
    traj = torch.randn(4, obj.n, dtype=f64)
    traj[2, 0] = bad
    with pytest.raises(bs.BasinscopeError, match="the snapshots holds"):
        pca_directions(traj)
    with pytest.raises(
        bs.BasinscopeError, match=r"the direction must have shape \[26\], got \[5\]"
    ):
        normalize(d[:5], obj.theta0, obj.space)


@pytest.mark.parametrize("norm", ["filter", "layer"])
def test_zero_direction_where_weights_are_not_zero_is_refused(obj, norm):
    d = torch.randn(obj.n, dtype=f64)
    if norm == "filter":  # '0.weight' is [4, 3]: filter 1 is coordinates 3-5
        d[3:6], part = 0.0, "filter 1 of '0.weight'"
    else:
        d[:12], part = 0.0, "'0.weight'"
    with pytest.raises(
        bs.BasinscopeError, match=rf"the direction is zero on {part}.*divide by zero"
    ):
        normalize(d, obj.theta0, obj.space, norm)
    # where the weights are zero too, zero is the right answer and stays
    theta = obj.theta0.clone()
    theta[:12] = 0.0
    out = obj.space.unflatten(normalize(d, theta, obj.space, norm))["0.weight"]
    if norm == "filter":
        assert out[1].tolist() == [0.0, 0.0, 0.0]
    else:
        assert float(out.norm()) == 0.0


def test_gram_schmidt_refuses_dependent_directions(obj):
    d = bs.random_directions(obj, 2, seed=1)
    with pytest.raises(bs.BasinscopeError, match="direction 2 is zero or lies in the span"):
        gram_schmidt(torch.stack([d[0], d[1], 2 * d[0] - 0.5 * d[1]]))
    with pytest.raises(bs.BasinscopeError, match="direction 0 is zero"):
        gram_schmidt(torch.zeros(2, obj.n, dtype=f64))
    o = gram_schmidt(d)
    assert abs(float(o[0] @ o[1])) < 1e-12 * float(o[0].norm() * o[1].norm())


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"k": 2.5, "seed": 0}, "the number of directions k must be an integer, got 2.5"),
        ({"k": 0, "seed": 0}, "the number of directions k must be an integer >= 1"),
        ({"k": 2, "seed": 1.5}, "seed must be an integer, got 1.5"),
        ({"k": 2, "generator": 3}, "generator must be a torch.Generator"),
    ],
)
def test_random_directions_counts(obj, kw, match):
    with pytest.raises(bs.BasinscopeError, match=match):
        bs.random_directions(obj, **kw)
    assert torch.equal(bs.random_directions(obj, 2.0, seed=3), bs.random_directions(obj, 2, seed=3))


def test_pca_k_must_be_an_integer():
    traj = torch.randn(5, 6, generator=torch.Generator().manual_seed(0), dtype=f64)
    with pytest.raises(bs.BasinscopeError, match="k must be an integer, got 1.5"):
        pca_directions(traj, k=1.5)  # type: ignore[arg-type]
