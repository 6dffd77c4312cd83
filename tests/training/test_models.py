"""Tests for basinscope.training's models: shapes, parameter counts, the registry and factory strings."""

from __future__ import annotations

import math
import sys
import textwrap

import pytest
import torch
from torch import nn

from basinscope.errors import BasinscopeError
from basinscope.training import MLP, MODELS, SmallCNN, build_model

SHAPES = [(1, 8, 8), (1, 28, 28), (3, 32, 32), (1, 40), (40,)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_output_shape(name, shape):
    model = build_model(name, shape, 10)
    assert model(torch.randn(5, *shape)).shape == (5, 10)


@pytest.mark.parametrize(
    ("shape", "conv"), [((1, 8, 8), nn.Conv2d), ((3, 32, 32), nn.Conv2d), ((1, 40), nn.Conv1d)]
)
def test_cnn_uses_the_convolution_for_the_input_rank(shape, conv):
    model = SmallCNN(shape, 10, channels=(4, 6, 8))
    convs = [m for m in model.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d))]
    assert [type(m) for m in convs] == [conv] * 3
    assert [m.out_channels for m in convs] == [4, 6, 8]
    assert model(torch.randn(2, *shape)).shape == (2, 10)


def test_cnn_flatten_head_size_and_avg_head():
    # 28 -> 14 -> 7 after two poolings: the flatten head sees 32 * 7 * 7 features.
    head = SmallCNN((1, 28, 28), 10).net[-1]
    assert head.in_features == 32 * 7 * 7
    avg = SmallCNN((1, 28, 28), 10, head="avg")
    assert avg.net[-1].in_features == 32
    assert avg(torch.randn(3, 1, 28, 28)).shape == (3, 10)


def test_mlp_parameter_count_closed_form():
    # d -> 64 -> 64 -> k: (d*64 + 64) + (64*64 + 64) + (64*k + k)
    d, k = 64, 10
    model = MLP((1, 8, 8), k)
    n = sum(p.numel() for p in model.parameters())
    assert n == (d * 64 + 64) + (64 * 64 + 64) + (64 * k + k)


def test_mlp_without_hidden_layers_is_linear():
    model = MLP((3, 5), 4, widths=())
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == 1 and linears[0].in_features == 15
    x = torch.randn(7, 3, 5)
    assert torch.allclose(model(x), x.flatten(1) @ linears[0].weight.T + linears[0].bias)


def test_mlp_dropout_and_activation_layers():
    model = MLP((4,), 2, widths=(8, 8, 8), dropout=0.5, activation="tanh")
    assert sum(isinstance(m, nn.Dropout) for m in model.modules()) == 3
    assert sum(isinstance(m, nn.Tanh) for m in model.modules()) == 3
    assert not any(isinstance(m, nn.Dropout) for m in MLP((4,), 2).modules())
    cnn = SmallCNN((1, 8, 8), 2, dropout=0.25)
    assert [m.p for m in cnn.modules() if isinstance(m, nn.Dropout)] == [0.25]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"activation": "swishy"}, "activation 'swishy'.*relu"),
        ({"widths": (8, -1)}, "widths"),
        ({"dropout": 1.0}, r"dropout 1.0 .*\[0, 1\)"),
        ({"dropout": True}, r"dropout True .*\[0, 1\)"),
        ({"activation": ["relu"]}, r"activation \['relu'\] is not known; accepted: relu"),
        ({"batch_norm": "yes"}, "batch_norm 'yes' is not valid; give true or false"),
        ({"batch_norm": 1}, "batch_norm 1 is not valid"),
    ],
)
def test_mlp_bad_options(kwargs, match):
    with pytest.raises(BasinscopeError, match=match):
        MLP((4,), 2, **kwargs)


@pytest.mark.parametrize("shape", [(1, 2, 3, 4), (0, 4), "abc"])
def test_cnn_bad_input_shape(shape):
    with pytest.raises(BasinscopeError, match="input_shape"):
        SmallCNN(shape, 10)


def test_registry_and_unknown_name():
    assert set(MODELS) >= {"mlp", "cnn"}
    with pytest.raises(BasinscopeError, match="model 'resnet999' is not known; accepted: cnn, mlp"):
        build_model("resnet999", (4,), 2)


def test_unknown_option_names_the_accepted_ones():
    with pytest.raises(
        BasinscopeError,
        match="model 'mlp' does not accept option.* channels; accepted: widths, dropout, activation",
    ):
        build_model("mlp", (4,), 2, channels=(8,))


USER_MODULE = "basinscope_test_user_models"


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    code = """
        import math
        from torch import nn

        def make(input_shape, n_classes, hidden=8):
            return nn.Sequential(
                nn.Flatten(), nn.Linear(math.prod(input_shape), hidden), nn.ReLU(),
                nn.Linear(hidden, n_classes),
            )

        def bare(hidden=4):
            return nn.Linear(hidden, 3)

        def anything(**kwargs):
            return nn.Linear(kwargs["input_shape"][0], kwargs["n_classes"])

        def not_a_module(**kwargs):
            return 3

        class Net(nn.Module):
            def __init__(self, input_shape, n_classes):
                super().__init__()
                self.fc = nn.Linear(input_shape[-1], n_classes)

            def forward(self, x):
                return self.fc(x)

        VALUE = 42
    """
    (tmp_path / f"{USER_MODULE}.py").write_text(textwrap.dedent(code))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, USER_MODULE, raising=False)
    yield USER_MODULE
    sys.modules.pop(USER_MODULE, None)


def test_factory_string(user_module):
    model = build_model(f"{user_module}:make", (2, 3), 5, hidden=7)
    assert model(torch.randn(4, 2, 3)).shape == (4, 5)
    assert model[1].in_features == math.prod((2, 3)) and model[1].out_features == 7
    # A factory without input_shape / n_classes parameters gets only the options.
    bare = build_model(f"{user_module}:bare", (9,), 5, hidden=6)
    assert isinstance(bare, nn.Linear) and bare.in_features == 6
    # **kwargs factories get input_shape and n_classes too.
    assert build_model(f"{user_module}:anything", (6,), 2).weight.shape == (2, 6)
    net = build_model(f"{user_module}:Net", (1, 6), 4)
    assert net(torch.randn(3, 6)).shape == (3, 4)


@pytest.mark.parametrize(
    ("name", "kwargs", "match"),
    [
        ("no_such_pkg_for_basinscope:f", {}, "could not be imported: ModuleNotFoundError"),
        (f"{USER_MODULE}:missing", {}, "has no 'missing'"),
        (f"{USER_MODULE}:VALUE", {}, "is not callable"),
        (f"{USER_MODULE}:not_a_module", {}, "returned a int, not a torch.nn.Module"),
        (f"{USER_MODULE}:make", {"width": 3}, "does not accept option.* width; accepted: hidden"),
        ("just.a.module", {}, "is not known"),
    ],
)
def test_factory_string_errors(user_module, name, kwargs, match):
    with pytest.raises(BasinscopeError, match=match):
        build_model(name, (4,), 2, **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"head": ["avg"]}, r"head \['avg'\] is not known; accepted: flatten, avg"),
        ({"batch_norm": "no"}, "batch_norm 'no' is not valid; give true or false"),
    ],
)
def test_cnn_bad_options(kwargs, match):
    with pytest.raises(BasinscopeError, match=match):
        SmallCNN((1, 8, 8), 2, **kwargs)
