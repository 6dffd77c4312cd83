from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import small_mlp
from torch import nn

import basinscope as bs
from basinscope.objective import Objective, ParamSpace


def test_loss_is_exact_dataset_mean(linreg):
    obj = Objective(linreg.model, linreg.loss_fn, (linreg.X, linreg.y), batch_size=7)
    g = torch.Generator().manual_seed(1)
    pts = linreg.w_star.T + 0.5 * torch.randn(5, obj.n, generator=g, dtype=torch.float64)
    loss, acc = obj.evaluate(pts)
    want = torch.tensor([linreg.loss(p) for p in pts], dtype=torch.float64)
    torch.testing.assert_close(loss, want, rtol=1e-13, atol=0)
    assert torch.isnan(acc).all()  # regression: no accuracy


def test_accuracy_and_chunk_independence(mlp):
    model, X, y = mlp
    big = Objective(model, nn.CrossEntropyLoss(), (X, y))
    small = Objective(model, nn.CrossEntropyLoss(), (X, y), batch_size=6)
    with torch.no_grad():
        out = model(X)
    loss, acc = big.evaluate(big.theta0)
    assert float(loss[0]) == pytest.approx(float(F.cross_entropy(out, y)), rel=1e-13)
    assert float(acc[0]) == (out.argmax(1) == y).double().mean().item()
    torch.testing.assert_close(small.evaluate(small.theta0)[0], loss, rtol=1e-13, atol=0)


def test_shortcut_equals_plain_path(mlp):
    model, X, y = mlp
    obj = Objective(model, nn.CrossEntropyLoss(), (X, y), batch_size=16)
    assert obj._first_layer() is not None
    d = bs.random_directions(obj, 2, seed=3)
    coef = torch.randn(20, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    fast = obj.evaluate_affine(coef, d)
    plain = obj.evaluate_affine(coef, d, shortcut=False)
    torch.testing.assert_close(fast[0], plain[0], rtol=1e-12, atol=0)
    torch.testing.assert_close(fast[1], plain[1], rtol=0, atol=0)


def test_shortcut_with_fixed_bias_conv_and_embedding():
    torch.manual_seed(0)
    conv = nn.Sequential(nn.Conv1d(2, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6, 3)).double()
    X = torch.randn(30, 2, 8, dtype=torch.float64)
    y = torch.randint(0, 3, (30,))
    emb = nn.Sequential(nn.Embedding(11, 5), nn.Flatten(), nn.Linear(15, 3)).double()
    Xe = torch.randint(0, 11, (30, 3))
    for model, data in ((conv, (X, y)), (emb, (Xe, y))):
        obj = Objective(model, nn.CrossEntropyLoss(), data, skip_bias_norm=True)
        assert obj._first_layer() is not None
        d = bs.random_directions(obj, 2, seed=1)
        coef = torch.tensor([[0.5, -1.0], [2.0, 0.25]], dtype=torch.float64)
        torch.testing.assert_close(
            obj.evaluate_affine(coef, d)[0],
            obj.evaluate_affine(coef, d, shortcut=False)[0],
            rtol=1e-12,
            atol=0,
        )


class ScaledInput(nn.Module):
    """A parameter acts on the input before the first layer: no shortcut."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1, dtype=torch.float64))
        self.fc = nn.Linear(3, 2).double()

    def forward(self, x):
        return self.fc(x * self.scale)


class Shared(nn.Module):
    """The first layer runs twice: no shortcut."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 3).double()
        self.out = nn.Linear(3, 2).double()

    def forward(self, x):
        return self.out(self.fc(torch.tanh(self.fc(x))))


@pytest.mark.parametrize("cls", [ScaledInput, Shared])
def test_shortcut_refused_where_invalid_and_results_still_exact(cls):
    torch.manual_seed(0)
    model = cls()
    X, y = torch.randn(20, 3, dtype=torch.float64), torch.randint(0, 2, (20,))
    obj = Objective(model, nn.CrossEntropyLoss(), (X, y))
    assert obj._first_layer() is None
    d = bs.random_directions(obj, 1, seed=0, norm="none")
    coef = torch.tensor([[0.3]], dtype=torch.float64)
    want = obj.evaluate(obj.theta0 + 0.3 * d[0])[0]
    torch.testing.assert_close(obj.evaluate_affine(coef, d)[0], want, rtol=0, atol=0)


def test_model_never_modified(mlp):
    model, X, y = mlp
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    obj = Objective(model, nn.CrossEntropyLoss(), (X, y))
    d = bs.random_directions(obj, 2, seed=0)
    bs.plane(obj, d[0], d[1], steps=5)
    calls = {"n": 0}

    def exploding(out, target):
        calls["n"] += 1
        if calls["n"] > 7:
            raise KeyboardInterrupt
        return F.cross_entropy(out, target)

    obj2 = Objective(model, exploding, (X, y), check_determinism=False)
    with pytest.raises(KeyboardInterrupt):
        bs.plane(obj2, d[0], d[1], steps=5)
    assert model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


class NoisyEval(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        return F.dropout(self.fc(x), 0.5, training=True)


def test_determinism_probe_refuses_random_model():
    X, y = torch.randn(10, 3), torch.randint(0, 2, (10,))
    with pytest.raises(bs.BasinscopeError, match="not deterministic"):
        Objective(NoisyEval(), nn.CrossEntropyLoss(), (X, y))


def test_dropout_in_user_train_mode_is_evaluated_in_eval_mode():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.5), nn.Linear(4, 2)).train()
    X, y = torch.randn(10, 3), torch.randint(0, 2, (10,))
    obj = Objective(model, nn.CrossEntropyLoss(), (X, y))
    with torch.no_grad():
        want = F.cross_entropy(model.eval()(X), y)
    assert obj.loss() == pytest.approx(float(want), rel=1e-6)


def test_sum_reduction_refused(mlp):
    model, X, y = mlp
    with pytest.raises(bs.BasinscopeError, match="reduction"):
        Objective(model, nn.CrossEntropyLoss(reduction="sum"), (X, y))


def test_paramspace_selection_and_views(mlp):
    model = mlp[0]
    full = ParamSpace(model)
    assert full.n == sum(p.numel() for p in model.parameters())
    weights = ParamSpace(model, skip_bias_norm=True)
    assert weights.names == ["1.weight", "3.weight", "5.weight"]
    assert ParamSpace(model, include=["3"]).names == ["3.weight", "3.bias"]
    assert ParamSpace(model, include=["*.bias"]).n == 8 + 7 + 3
    with pytest.raises(bs.BasinscopeError, match="no parameter matches"):
        ParamSpace(model, include=["fc9"])
    vec = full.flatten(model)
    views = full.unflatten(vec)
    assert views["3.bias"].data_ptr() == vec[full.offsets[3] :].data_ptr()
    for name, p in model.named_parameters():
        assert torch.equal(views[name], p.detach())


def test_grad_and_hvp_match_closed_form(linreg):
    obj = Objective(linreg.model, linreg.loss_fn, (linreg.X, linreg.y), batch_size=9)
    w = linreg.w_star.reshape(-1) + torch.tensor([0.3, -0.2, 0.1, 0.5], dtype=torch.float64)
    g_true = 2 * linreg.X.T @ (linreg.X @ w.reshape(-1, 1) - linreg.y) / len(linreg.X)
    torch.testing.assert_close(obj.grad(w), g_true.reshape(-1), rtol=1e-12, atol=1e-14)
    v = torch.randn(3, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(obj.hvp(v, w), v @ linreg.A, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(obj.hvp(v[0], w), linreg.A @ v[0], rtol=1e-12, atol=1e-14)


def test_dataset_and_dataloader_inputs(mlp):
    model, X, y = mlp
    ds = torch.utils.data.TensorDataset(X, y)
    dl = torch.utils.data.DataLoader(ds, batch_size=7)
    ref = Objective(model, nn.CrossEntropyLoss(), (X, y)).loss()
    assert Objective(model, nn.CrossEntropyLoss(), ds).loss() == ref
    assert Objective(model, nn.CrossEntropyLoss(), dl).loss() == ref
    sub = Objective(model, nn.CrossEntropyLoss(), (X, y), subset=10, seed=4)
    assert sub.n_examples == 10
    with pytest.raises(bs.BasinscopeError, match="subset"):
        Objective(model, nn.CrossEntropyLoss(), (X, y), subset=0)


def test_float32_objective_is_close_to_float64(mlp):
    model, X, y = small_mlp(seed=2)
    o64 = Objective(model, nn.CrossEntropyLoss(), (X, y))
    o32 = Objective(model.float(), nn.CrossEntropyLoss(), (X.float(), y))
    assert o32.dtype == torch.float32
    assert o32.loss() == pytest.approx(o64.loss(), rel=1e-6)
