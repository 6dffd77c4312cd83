"""A σ, radius or ε so large that θ0 + the perturbation overflows the dtype is refused,
naming the value, before any evaluation (issue 10 re-audit, failure 7)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import basinscope as bs
from basinscope import sharpness


@pytest.fixture
def obj():
    with torch.random.fork_rng(devices=[]):  # leave the global generator as it was
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
        x, y = torch.randn(8, 3), torch.randint(0, 2, (8,))
    return bs.Objective(model, nn.CrossEntropyLoss(), (x, y))


@pytest.mark.parametrize(
    "measure, name",
    [
        (lambda o: sharpness.average_case(o, 1e300, samples=2), "sigma = 1e+300"),
        (lambda o: sharpness.average_case(o, 1e39, samples=2, adaptive=True), "sigma = 1e+39"),
        (lambda o: sharpness.noise_error_increase(o, 1e300, samples=2), "sigma = 1e+300"),
        (lambda o: sharpness.pac_bayes(o, sigma_max=1e300, samples=2), "sigma_max = 1e+300"),
        (lambda o: sharpness.worst_case(o, 1e300, steps=1), "radius = 1e+300"),
        (lambda o: sharpness.keskar(o, 1e300), "epsilon = 1e+300"),
        (lambda o: sharpness.keskar(o, 1e300, subspace_dim=2), "epsilon = 1e+300"),
        (
            lambda o: sharpness.epsilon(o, bs.random_directions(o, 2, seed=0), 1e300),
            "radius = 1e+300",
        ),
    ],
)
def test_an_overflowing_perturbation_is_refused_before_evaluating(obj, monkeypatch, measure, name):
    def evaluate(*args, **kwargs):
        pytest.fail("evaluated before refusing the perturbation size")

    monkeypatch.setattr(obj, "evaluate_affine", evaluate)
    calls = []
    real = obj.evaluate
    monkeypatch.setattr(
        obj,
        "evaluate",
        lambda p, **kw: calls.append(p.reshape(-1, obj.n).shape[0]) or real(p, **kw),
    )
    with pytest.raises(bs.BasinscopeError, match="is too large") as info:
        measure(obj)
    assert name in str(info.value) and "float32" in str(info.value)
    assert all(n == 1 for n in calls)  # at most L(θ0), never a perturbed point


def test_a_large_but_representable_sigma_is_still_measured(obj):
    res = sharpness.average_case(obj, 1.0, samples=2)
    assert res.value == res.value and res.sigma == 1.0  # finite, not refused


@pytest.mark.parametrize(
    "measure, keyword",
    [
        (lambda o: sharpness.average_case(o, 1e300, samples=2), "sigma"),
        (lambda o: sharpness.worst_case(o, 1e300, steps=1), "radius"),
    ],
)
def test_the_refusal_names_the_keyword_not_a_cli_flag(obj, measure, keyword):
    """The library names its own setting (``sigma``, ``radius``), never ``--sigma``."""
    with pytest.raises(bs.BasinscopeError) as info:
        measure(obj)
    message = str(info.value)
    assert message.startswith(f"{keyword} = 1e+300 is too large: the perturbed weights")
    assert message.endswith(f"; choose a smaller {keyword}")
    assert "--" not in message
