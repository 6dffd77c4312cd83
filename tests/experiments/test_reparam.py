"""Function-preserving rescaling: outputs unchanged, and which measures notice it."""

from __future__ import annotations

import pytest
import torch
from conftest import small_mlp
from torch import nn

import basinscope as bs
from basinscope import sharpness
from basinscope.experiments import _reparam as reparam
from basinscope.training import MLP, SmallCNN

f64 = torch.float64


def _inputs(shape: tuple[int, ...], n: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(seed), dtype=f64)


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_rescale_mlp_keeps_outputs_and_the_original():
    torch.manual_seed(0)
    model = MLP((2, 3), 4, widths=(8, 7)).double().eval()
    x = _inputs((2, 3))
    before, out = _state(model), model(x)
    new = reparam.rescale(model, "net.1", 7.0)
    new = reparam.rescale(new, "net.3", 0.2)
    torch.testing.assert_close(new(x), out, rtol=1e-12, atol=1e-12)
    for k, v in model.state_dict().items():  # the user's model is untouched
        assert torch.equal(v, before[k])
    w = dict(new.named_parameters())
    torch.testing.assert_close(w["net.1.weight"], 7.0 * before["net.1.weight"])
    torch.testing.assert_close(w["net.1.bias"], 7.0 * before["net.1.bias"])
    torch.testing.assert_close(w["net.3.weight"], 0.2 * before["net.3.weight"] / 7.0)
    torch.testing.assert_close(w["net.3.bias"], 0.2 * before["net.3.bias"])
    torch.testing.assert_close(w["net.5.weight"], before["net.5.weight"] / 0.2)
    assert torch.equal(w["net.5.bias"], before["net.5.bias"])


@pytest.mark.parametrize(
    ("model", "layers", "shape"),
    [
        (lambda: SmallCNN((1, 6, 6), 3, channels=(3, 4)), ["net.0", "net.3"], (1, 6, 6)),
        (
            lambda: SmallCNN((2, 8), 3, channels=(3,), head="avg", dropout=0.3),
            ["net.0"],
            (2, 8),
        ),
        (
            lambda: nn.Sequential(
                nn.Linear(5, 6), nn.LeakyReLU(0.1), nn.Dropout(0.2), nn.Linear(6, 2)
            ),
            ["0"],
            (5,),
        ),
    ],
)
def test_rescale_cnn_and_sequential(model, layers, shape):
    torch.manual_seed(1)
    net = model().double().eval()
    x = _inputs(shape)
    out = net(x)
    for layer in layers:
        rescaled = reparam.rescale(net, layer, 3.5)
        torch.testing.assert_close(rescaled(x), out, rtol=1e-12, atol=1e-12)
        assert not torch.equal(
            rescaled.get_submodule(layer).weight, net.get_submodule(layer).weight
        )


@pytest.mark.parametrize(
    ("model", "layer", "alpha", "match"),
    [
        (lambda: MLP(4, 2, widths=(3,)), "net.3", 2.0, "last affine layer"),
        (lambda: MLP(4, 2, widths=(3,), activation="tanh"), "net.1", 2.0, "Tanh"),
        (lambda: MLP(4, 2, widths=(3,), activation="gelu"), "net.1", 2.0, "GELU"),
        (
            lambda: nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2)),
            "0",
            2.0,
            "BatchNorm1d",
        ),
        (lambda: MLP(4, 2, widths=(3,)), "net.2", 2.0, "not a Linear or Conv"),
        (lambda: MLP(4, 2, widths=(3,)), "fc9", 2.0, "net.1, net.3"),
        (lambda: MLP(4, 2, widths=(3,)), "net.1", 0.0, "alpha"),
        (lambda: MLP(4, 2, widths=(3,)), "net.1", -2.0, "alpha"),
        (lambda: MLP(4, 2, widths=(3,)), "net.1", float("inf"), "alpha"),
        (lambda: MLP(4, 2, widths=(3,)), "net.1", float("nan"), "alpha"),
    ],
)
def test_rescale_refuses(model, layer, alpha, match):
    with pytest.raises(bs.BasinscopeError, match=match):
        reparam.rescale(model(), layer, alpha)


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(3, 3), nn.Linear(3, 2)

    def forward(self, x):
        h = torch.relu(self.a(x))
        return self.b(h + x)


def test_rescale_refuses_branches():
    with pytest.raises(bs.BasinscopeError, match="homogeneous"):
        reparam.rescale(Residual(), "a", 2.0)


def test_adaptive_measures_invariant_plain_ones_not():
    model, X, y = small_mlp(seed=3)  # Linear, Tanh, Linear("3"), ReLU, Linear("5")
    rescaled = reparam.rescale(model, "3", 5.0)
    torch.testing.assert_close(rescaled(X), model(X), rtol=1e-12, atol=1e-12)
    a = bs.Objective(model, nn.CrossEntropyLoss(), (X, y))
    b = bs.Objective(rescaled, nn.CrossEntropyLoss(), (X, y))
    table = reparam.compare_measures(a, b, rtol=1e-9, radius=0.2, adaptive_radius=0.2, steps=6)
    assert list(table) == list(reparam.MEASURES)
    for name in ("worst_case_adaptive", "average_case_adaptive", "filter_line"):
        assert table[name].invariant, (name, table[name])
        assert table[name].before != 0  # not trivially invariant
    for name in ("worst_case_l2", "average_case", "lambda_max"):
        assert not table[name].invariant
        assert table[name].rel_change > 0.1, (name, table[name])
    # every point of the filter-normalised line, not only its maximum
    da = bs.random_directions(a, 1, norm="filter", seed=0)[0]
    db = bs.random_directions(b, 1, norm="filter", seed=0)[0]
    la, lb = bs.line(a, da, steps=11), bs.line(b, db, steps=11)
    torch.testing.assert_close(
        torch.as_tensor(lb.metric("train_loss")), torch.as_tensor(la.metric("train_loss"))
    )
    # and the adaptive worst case finds the same perturbation, mapped by the rescaling
    wa = sharpness.worst_case(a, 0.2, adaptive=True, steps=6, restarts=2)
    wb = sharpness.worst_case(b, 0.2, adaptive=True, steps=6, restarts=2)
    ratio = b.theta0.abs() / a.theta0.abs()  # α, 1/α or 1 per coordinate
    torch.testing.assert_close(wb.delta, wa.delta * ratio, rtol=1e-9, atol=1e-15)
    assert wb.value == pytest.approx(wa.value, rel=1e-9)


def test_measure_suite_refuses_a_non_finite_loss_before_any_measure(monkeypatch):
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))
    with torch.no_grad():
        model[0].weight.fill_(1e20)  # finite weights, an MSE that overflows float32
    obj = bs.Objective(model, nn.MSELoss(), (torch.ones(8, 3), torch.zeros(8, 1)))

    def fail(*args, **kwargs):
        raise AssertionError("a measure ran on a non-finite loss")

    # the suite calls every measure through its package's public name
    for name in ("worst_case", "average_case", "keskar", "pac_bayes"):
        monkeypatch.setattr(sharpness, name, fail)
    for name in ("eigenvalues", "trace"):
        monkeypatch.setattr(bs.hessian, name, fail)
    with pytest.raises(bs.BasinscopeError, match="loss at the weights is inf"):
        reparam.measure_suite(obj)
    with pytest.raises(bs.BasinscopeError, match="loss at the weights is inf"):
        reparam.compare_measures(obj, obj)


def test_measure_suite_is_the_sharpness_suite_with_the_old_keyword_settings():
    """``radius`` also sets the L∞ ball (``radius / 100``) and ``samples`` the PAC-Bayes
    draws, as before; a SuiteConfig gives the same numbers; bad settings are refused."""
    model, X, y = small_mlp(seed=3)
    obj = bs.Objective(model, nn.CrossEntropyLoss(), (X, y))
    config = reparam.suite_config(radius=0.2, samples=4, steps=3)
    assert config == sharpness.SuiteConfig(radius=0.2, linf_radius=0.002, samples=4,
                                           pac_samples=4, steps=3)  # fmt: skip
    values = reparam.measure_suite(obj, radius=0.2, samples=4, steps=3)
    assert list(values) == list(sharpness.SUITE_MEASURES) == list(reparam.MEASURES)
    assert values == sharpness.suite_values(sharpness.suite(obj, config))
    assert (
        values["worst_case_linf"]
        == sharpness.worst_case(obj, 0.002, norm="linf", steps=3, restarts=1, seed=0).value
    )
    assert values["pac_bayes"] == sharpness.pac_bayes(obj, samples=4, seed=0).sigma
    with pytest.raises(bs.BasinscopeError, match="unknown suite setting 'radious'"):
        reparam.measure_suite(obj, radious=0.2)
    with pytest.raises(bs.BasinscopeError, match="not both"):
        reparam.measure_suite(obj, config, radius=0.2)
    with pytest.raises(bs.BasinscopeError, match="rtol must be a positive finite number"):
        reparam.compare_measures(obj, obj, rtol=0.0)
