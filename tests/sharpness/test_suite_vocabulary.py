"""The one sharpness suite: one key vocabulary, one config, the numbers of the measures."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from conftest import small_mlp
from torch import nn

import basinscope as bs
from basinscope import hessian, sharpness
from basinscope.sharpness import SUITE_MEASURES, SuiteConfig

VOCABULARY = (
    "worst_case_l2",
    "worst_case_linf",
    "worst_case_adaptive",
    "average_case",
    "average_case_adaptive",
    "keskar",
    "pac_bayes",
    "pac_bayes_mag",
    "lambda_max",
    "hessian_trace",
    "filter_line",
)
SMALL = SuiteConfig(samples=4, pac_samples=4, steps=3, restarts=2, line_steps=7, seed=3)


@pytest.fixture(scope="module")
def obj():
    model, X, y = small_mlp()
    return bs.Objective(model, nn.CrossEntropyLoss(), (X, y))


@pytest.fixture(scope="module")
def results(obj):
    return sharpness.suite(obj, SMALL)


def test_the_vocabulary_and_the_defaults():
    assert SUITE_MEASURES == VOCABULARY
    # the defaults are those of the reparameterisation suite it replaces
    assert dataclasses.asdict(SuiteConfig()) == {
        "radius": 0.05,
        "linf_radius": 0.05 / 100,
        "adaptive_radius": 0.05,
        "sigma": 0.01,
        "adaptive_sigma": 0.01,
        "samples": 16,
        "steps": 10,
        "restarts": 1,
        "keskar_epsilon": 1e-3,
        "pac_target": 0.1,
        "pac_samples": 16,
        "line_steps": 21,
        "seed": 0,
    }
    with pytest.raises(dataclasses.FrozenInstanceError):
        SuiteConfig().radius = 1.0  # type: ignore[misc]


def test_suite_returns_the_measures_results_bit_for_bit(obj, results):
    c = SMALL
    wc = dict(steps=c.steps, restarts=c.restarts, seed=c.seed)
    want = {
        "worst_case_l2": sharpness.worst_case(obj, c.radius, **wc),
        "worst_case_linf": sharpness.worst_case(obj, c.linf_radius, norm="linf", **wc),
        "worst_case_adaptive": sharpness.worst_case(obj, c.adaptive_radius, adaptive=True, **wc),
        "average_case": sharpness.average_case(obj, c.sigma, samples=c.samples, seed=c.seed),
        "average_case_adaptive": sharpness.average_case(
            obj, c.adaptive_sigma, samples=c.samples, seed=c.seed, adaptive=True
        ),
        "keskar": sharpness.keskar(obj, c.keskar_epsilon, seed=c.seed),
        "pac_bayes": sharpness.pac_bayes(obj, target=c.pac_target, samples=4, seed=c.seed),
        "pac_bayes_mag": sharpness.pac_bayes(
            obj, target=c.pac_target, samples=4, seed=c.seed, magnitude_aware=True
        ),
        "lambda_max": hessian.eigenvalues(obj, 1, seed=c.seed),
        "hessian_trace": hessian.trace(obj, seed=c.seed),
    }
    assert list(results) == list(VOCABULARY)
    for name, w in want.items():
        got = results[name]
        assert type(got) is type(w), name
        for f in dataclasses.fields(w):
            a, b = getattr(got, f.name), getattr(w, f.name)
            if isinstance(a, torch.Tensor | np.ndarray):
                np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=name)
            else:
                assert a == b or (a != a and b != b), (name, f.name)
    # the filter-normalised line: max over t ∈ [−1, 1] of L(θ0 + t d) − L(θ0)
    d = bs.random_directions(obj, 1, norm="filter", seed=c.seed)[0]
    surf = bs.line(obj, d, span=(-1.0, 1.0), steps=c.line_steps)
    line = results["filter_line"]
    assert line.value == float(surf.metric("train_loss").max()) - obj.loss()
    assert (line.radius, line.n_points, line.loss0) == (1.0, 7, obj.loss())
    assert line.max_loss == line.loss0 + line.value


def test_suite_values_are_the_headline_numbers(results):
    values = sharpness.suite_values(results)
    assert list(values) == list(VOCABULARY)
    assert values["lambda_max"] == float(results["lambda_max"].values[0])
    assert values["pac_bayes"] == results["pac_bayes"].sigma
    assert values["pac_bayes_mag"] == results["pac_bayes_mag"].sigma
    for name in set(VOCABULARY) - {"lambda_max", "pac_bayes", "pac_bayes_mag"}:
        assert values[name] == results[name].value
    assert all(isinstance(v, float) for v in values.values())
    with pytest.raises(bs.BasinscopeError, match="'x' holds a str"):
        sharpness.suite_values({"x": "not a result"})


def test_measures_choose_and_order(obj, results):
    some = sharpness.suite(obj, SMALL, ["keskar", "worst_case_linf"])
    assert list(some) == ["keskar", "worst_case_linf"]
    assert some["keskar"].to_dict() == results["keskar"].to_dict()
    assert some["worst_case_linf"].to_dict() == results["worst_case_linf"].to_dict()
    one = sharpness.suite(obj, SMALL, "keskar")
    assert list(one) == ["keskar"] and one["keskar"].to_dict() == results["keskar"].to_dict()


def test_bad_names_and_settings_are_refused_before_any_work(obj, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("a measure ran")

    monkeypatch.setattr(sharpness, "worst_case", fail)
    cases = [
        (lambda: sharpness.suite(obj, measures=["sharpest"]), "unknown sharpness measure"),
        (lambda: sharpness.suite(obj, measures=[]), "measures is empty"),
        (lambda: sharpness.suite(obj, measures=["keskar", "keskar"]), "'keskar' twice"),
        (lambda: sharpness.suite(obj, {"radius": 1.0}), "config must be a SuiteConfig"),
        (lambda: SuiteConfig(radius=0.0), "radius must be a positive finite number"),
        (lambda: SuiteConfig(linf_radius=float("nan")), "linf_radius must be"),
        (lambda: SuiteConfig(samples=1), "samples must be an integer >= 2"),
        (lambda: SuiteConfig(steps=2.5), "steps must be an integer"),
        (lambda: SuiteConfig(line_steps=1), "line_steps must be an integer >= 2"),
        (lambda: SuiteConfig(pac_target=1.5), r"pac_target must be an error increase in \(0, 1\)"),
        (lambda: SuiteConfig(seed=-1), "seed must be an integer >= 0"),
    ]
    for call, match in cases:
        with pytest.raises(bs.BasinscopeError, match=match):
            call()


def test_a_non_finite_loss_is_refused_before_any_measure(monkeypatch):
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))
    with torch.no_grad():
        model[0].weight.fill_(1e20)  # finite weights, an MSE that overflows float32
        model[2].weight.fill_(1.0)  # whatever the random initialisation drew
    obj = bs.Objective(model, nn.MSELoss(), (torch.ones(8, 3), torch.zeros(8, 1)))

    def fail(*args, **kwargs):
        raise AssertionError("a measure ran on a non-finite loss")

    monkeypatch.setattr("basinscope.sharpness._suite.line", fail)
    monkeypatch.setattr(sharpness, "worst_case", fail)
    with pytest.raises(bs.BasinscopeError, match="loss at the weights is inf"):
        sharpness.suite(obj, measures=["filter_line", "worst_case_l2"])


def test_a_monkeypatch_of_a_public_measure_reaches_the_suite(obj, monkeypatch):
    calls = []
    monkeypatch.setattr(sharpness, "average_case", lambda *a, **k: calls.append(k) or "patched")
    monkeypatch.setattr(hessian, "trace", lambda *a, **k: calls.append(k) or "patched")
    out = sharpness.suite(obj, SMALL, ["average_case_adaptive", "hessian_trace"], progress=True)
    assert out == {"average_case_adaptive": "patched", "hessian_trace": "patched"}
    assert calls[0] == dict(samples=4, seed=3, adaptive=True, progress=True)
    assert calls[1] == dict(seed=3)


def test_the_objective_is_left_alone(obj, results):
    theta = obj.theta0.clone()
    sharpness.suite(obj, SMALL, ["worst_case_adaptive", "filter_line"])
    assert torch.equal(obj.theta0, theta)
    assert torch.equal(obj.space.flatten(obj.model), theta)
