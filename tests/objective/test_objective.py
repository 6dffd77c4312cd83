from __future__ import annotations

import math

import numpy as np
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
    assert obj.plan.name != "plain"
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
        assert obj.plan.name != "plain"
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
    assert obj.plan.name == "plain"
    assert set(obj.plan.refused) == {"chain", "first_layer"}
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
    calls = {"n": 0, "armed": False}

    def exploding(out, target):
        calls["n"] += 1
        if calls["armed"] and calls["n"] > 7:
            raise KeyboardInterrupt
        return F.cross_entropy(out, target)

    obj2 = Objective(model, exploding, (X, y), check_determinism=False)
    calls.update(n=0, armed=True)  # the probes call the loss too: interrupt mid-plane
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
    for loss in (nn.CrossEntropyLoss(reduction="sum"), nn.KLDivLoss(reduction="sum")):
        with pytest.raises(bs.BasinscopeError) as info:
            Objective(model, loss, (X, y))
        assert str(info.value) == (
            "loss_fn has reduction='sum'; basinscope needs a batch-mean loss "
            "(reduction='mean', or reduction='batchmean' of nn.KLDivLoss) to form exact "
            "dataset means"
        )


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


# ---------------------------------------------------------------- batched tail
def _relu_mlp(dtype=torch.float64, seed=0, n=70):
    g = torch.Generator().manual_seed(seed)
    torch_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Flatten(), nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 9), nn.ReLU(), nn.Linear(9, 4)
    ).to(dtype)
    torch.random.set_rng_state(torch_state)
    X = torch.randn(n, 3, 4, generator=g, dtype=dtype)
    y = torch.randint(0, 4, (n,), generator=g)
    return model, X, y


def _batched(obj):
    return obj.plan.name == "chain"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("make", [_relu_mlp, small_mlp])
def test_batched_tail_equals_plain_path(dtype, make):
    model, X, y = make(seed=1)
    model, X = model.to(dtype), X.to(dtype)
    # batch_size 32 over 50-70 examples: two data chunks, padded rows in each block
    obj = Objective(model, nn.CrossEntropyLoss(), (X, y), batch_size=32)
    assert _batched(obj)
    d = bs.random_directions(obj, 2, seed=3)
    coef = torch.randn(19, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    coef[3] = 0.0  # the origin itself
    coef[4, 0] = 0.0  # one coefficient zero
    fast = obj.evaluate_affine(coef, d)
    plain = obj.evaluate_affine(coef, d, shortcut=False)
    rtol = 1e-12 if dtype == torch.float64 else 1e-6
    torch.testing.assert_close(fast[0], plain[0], rtol=rtol, atol=0)
    torch.testing.assert_close(fast[1], plain[1], rtol=0, atol=1.5 / len(y))


def test_batched_tail_bounds_memory_by_rows(monkeypatch):
    model, X, y = _relu_mlp(torch.float64)
    obj = Objective(model, nn.CrossEntropyLoss(), (X, y))
    d = bs.random_directions(obj, 2, seed=0)
    coef = torch.randn(10, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    whole = obj.evaluate_affine(coef, d)
    # a block of 8 points × 16 rows × width 16: the 70 examples run in 5 pieces
    monkeypatch.setattr("basinscope.objective._chain._BLOCK_ELEMENTS", 8 * 16 * 16)
    pieces = obj.evaluate_affine(coef, d)
    torch.testing.assert_close(pieces[0], whole[0], rtol=1e-13, atol=0)
    torch.testing.assert_close(pieces[1], whole[1], rtol=0, atol=0)


@pytest.mark.parametrize("make", [_relu_mlp, small_mlp])
def test_batched_value_independent_of_block_and_position(make):
    model, X, y = make(seed=2)
    model, X = model.float(), X.float()
    obj = Objective(model, nn.CrossEntropyLoss(), (X, y), batch_size=32)
    assert _batched(obj)
    d = bs.random_directions(obj, 2, seed=4)
    grid = torch.linspace(-1, 1, 5, dtype=torch.float64)
    coef = torch.cartesian_prod(grid, grid)  # 25 points: blocks of 8, the last padded
    full = obj.evaluate_affine(coef, d)
    for i in (0, 7, 12, 24):
        alone = obj.evaluate_affine(coef[i : i + 1], d)
        three = obj.evaluate_affine(coef[max(0, i - 1) : max(0, i - 1) + 3], d)
        j = i - max(0, i - 1)
        assert alone[0][0].item() == full[0][i].item() == three[0][j].item()
        assert alone[1][0].item() == full[1][i].item() == three[1][j].item()
    surf = bs.plane(obj, d[0], d[1], steps=5, chunk=3)
    assert np.array_equal(surf.train_loss.reshape(-1), full[0].numpy())


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(6, 6).double()
        self.fc2 = nn.Linear(6, 6).double()
        self.out = nn.Linear(6, 3).double()

    def forward(self, x):
        h = torch.relu(self.fc1(x.flatten(1)))
        return self.out(h + self.fc2(h))


class FunctionalRelu(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(6, 8).double()
        self.fc2 = nn.Linear(8, 3).double()

    def forward(self, x):
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


class ModuleChain(nn.Module):
    """Not a Sequential, but a chain of modules: the batched tail applies."""

    def __init__(self):
        super().__init__()
        self.flat = nn.Flatten()
        self.fc1 = nn.Linear(6, 8).double()
        self.act = nn.Tanh()
        self.fc2 = nn.Linear(8, 3).double()

    def forward(self, x):
        return self.fc2(self.act(self.fc1(self.flat(x))))


def _hooked():
    model = small_mlp()[0]
    model[3].register_forward_hook(lambda mod, args, out: out * 2)
    return model


@pytest.mark.parametrize(
    "make_model, loss_fn, batched",
    [
        (lambda: small_mlp()[0], nn.CrossEntropyLoss(), True),
        (lambda: small_mlp()[0], F.cross_entropy, True),
        (ModuleChain, nn.CrossEntropyLoss(), True),
        (Residual, nn.CrossEntropyLoss(), False),
        (FunctionalRelu, nn.CrossEntropyLoss(), False),
        (_hooked, nn.CrossEntropyLoss(), False),
        (lambda: small_mlp()[0], nn.CrossEntropyLoss(label_smoothing=0.1), False),
        (lambda: small_mlp()[0], nn.CrossEntropyLoss(weight=torch.rand(3).double()), False),
        (lambda: small_mlp()[0], lambda out, t: F.cross_entropy(out, t), False),
        (lambda: small_mlp()[0], nn.MultiMarginLoss(), False),
    ],
)
def test_batched_tail_only_where_it_applies_and_results_exact(make_model, loss_fn, batched):
    torch.manual_seed(0)
    model = make_model()
    _, X, y = small_mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    hooks = [len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()]
    obj = Objective(model, loss_fn, (X, y), batch_size=16)
    d = bs.random_directions(obj, 2, seed=0)
    coef = torch.tensor([[0.5, -1.0], [2.0, 0.25], [0.0, 0.0]], dtype=torch.float64)
    fast = obj.evaluate_affine(coef, d)
    assert _batched(obj) == batched
    plain = obj.evaluate_affine(coef, d, shortcut=False)
    torch.testing.assert_close(fast[0], plain[0], rtol=1e-12, atol=0)
    torch.testing.assert_close(fast[1], plain[1], rtol=0, atol=0)
    # the user's model is untouched: same values, no hooks left behind
    assert [len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()] == hooks
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_batched_tail_not_used_for_ignored_targets():
    model, X, y = small_mlp()
    y = y.clone()
    y[:5] = -100  # ignore_index: those examples leave the mean
    obj = Objective(model, nn.CrossEntropyLoss(), (X, y))
    assert not _batched(obj)
    d = bs.random_directions(obj, 2, seed=0)
    coef = torch.tensor([[0.5, -1.0]], dtype=torch.float64)
    want = obj.evaluate(obj.theta0 + 0.5 * d[0] - d[1])[0]
    torch.testing.assert_close(obj.evaluate_affine(coef, d)[0], want, rtol=1e-12, atol=0)


def test_batched_accuracy_counts_ties_and_non_finite_scores_as_argmax():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)).double()
    X = torch.randn(40, 6, dtype=torch.float64)
    y = torch.arange(40) % 3
    obj = Objective(model, nn.CrossEntropyLoss(), (X, y))
    assert _batched(obj)
    # far along d the last bias is (+inf, b, -inf): scores +inf for class 0, NaN losses
    d = torch.zeros(1, obj.n, dtype=torch.float64)
    d[0, -3:] = torch.tensor([1e300, 0.0, -1e300], dtype=torch.float64)
    coef = torch.tensor([[0.0], [1e10]], dtype=torch.float64)
    fast = obj.evaluate_affine(coef, d)
    plain = obj.evaluate_affine(coef, d, shortcut=False)
    torch.testing.assert_close(fast[0], plain[0], rtol=1e-12, atol=0, equal_nan=True)
    assert torch.isnan(fast[0][1])
    torch.testing.assert_close(fast[1], plain[1], rtol=0, atol=0)
    assert fast[1][1].item() == pytest.approx(14 / 40)  # argmax is class 0 everywhere

    with torch.no_grad():  # scores that tie exactly: classes 0 and 1 everywhere
        model[2].weight.zero_()
        model[2].bias.copy_(torch.tensor([1.0, 1.0, 0.0]))
    space = ParamSpace(model, include=["0"])
    obj = Objective(model, nn.CrossEntropyLoss(), (X, y), space=space)
    assert _batched(obj)
    d = bs.random_directions(obj, 2, seed=0)
    coef = torch.tensor([[0.0, 0.0], [0.7, -0.2]], dtype=torch.float64)
    fast = obj.evaluate_affine(coef, d)
    plain = obj.evaluate_affine(coef, d, shortcut=False)
    torch.testing.assert_close(fast[0], plain[0], rtol=1e-12, atol=0)
    torch.testing.assert_close(fast[1], plain[1], rtol=0, atol=0)
    assert fast[1].tolist() == [14 / 40, 14 / 40]  # argmax takes the first maximum: class 0


def test_batched_point_independent_of_others_with_non_finite_direction():
    model, X, y = _relu_mlp()
    obj = Objective(model, nn.CrossEntropyLoss(), (X, y))
    d = bs.random_directions(obj, 2, seed=0)
    d[1, -1] = math.inf  # 0 · inf is NaN: a zero coefficient must not touch it
    coef = torch.tensor([[0.3, 0.0], [0.3, 0.5]], dtype=torch.float64)
    both = obj.evaluate_affine(coef, d)
    alone = obj.evaluate_affine(coef[:1], d)
    assert torch.isfinite(alone[0]).all()
    assert both[0][0].item() == alone[0][0].item() and both[1][0].item() == alone[1][0].item()


def test_batched_rays_each_point_as_if_alone():
    model, X, y = _relu_mlp(torch.float32)
    obj = Objective(model, nn.CrossEntropyLoss(), (X, y))
    d = bs.random_directions(obj, 5, seed=1)
    radii = torch.tensor([0.5, 1.0, 2.0, 0.0, 3.0], dtype=torch.float64)
    together = obj.evaluate_affine(torch.diag(radii), d)  # rays: one coefficient per point
    plain = obj.evaluate_affine(torch.diag(radii), d, shortcut=False)
    torch.testing.assert_close(together[0], plain[0], rtol=1e-6, atol=0)
    for k in range(5):
        alone = obj.evaluate_affine(radii[k] * torch.eye(5, dtype=torch.float64)[k : k + 1], d)
        assert alone[0][0].item() == together[0][k].item()
        assert alone[1][0].item() == together[1][k].item()


def test_paramspace_select_is_a_block_of_theta(mlp):
    model, _, _ = mlp
    space = bs.ParamSpace(model)
    sub = space.select(["5.weight", "1.weight"])  # order follows the space, not the call
    assert sub.names == ["1.weight", "5.weight"]
    full = space.unflatten(space.flatten(model))
    want = torch.cat([full["1.weight"].reshape(-1), full["5.weight"].reshape(-1)])
    assert torch.equal(sub.flatten(model), want) and sub.n == len(want)
    assert sub.unflatten(want)["5.weight"].shape == model[5].weight.shape
    assert space.names[0] == "1.weight" and space.n > sub.n  # the original is untouched
    with pytest.raises(bs.BasinscopeError, match="not in this space"):
        space.select(["nope"])


def _far_line(obj, scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    d = torch.randn(1, obj.n, generator=g, dtype=obj.dtype)
    return d * (scale * obj.theta0.norm() / d.norm())


def test_tied_weights_take_the_plain_path():
    torch.manual_seed(0)
    m = nn.Sequential(
        nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(),
        nn.Linear(32, 5),
    )  # fmt: skip
    m[4].weight = m[2].weight  # one tensor under two names
    g = torch.Generator().manual_seed(1)
    data = (torch.randn(100, 20, generator=g), torch.randint(0, 5, (100,), generator=g))
    obj = bs.Objective(m, nn.CrossEntropyLoss(), data)
    c = torch.tensor([[0.0], [0.5], [1.0]])
    d = _far_line(obj)
    fast = obj.evaluate_affine(c, d)
    plain = obj.evaluate_affine(c, d, shortcut=False)
    torch.testing.assert_close(fast[0], plain[0], rtol=1e-6, atol=0)
    assert torch.equal(fast[1], plain[1])
    assert obj.plan.name == "plain" and obj.plan.refused["first_layer"] == "tied weights"


def test_in_place_change_between_modules_is_not_a_chain():
    class Clamped(nn.Module):
        def __init__(self):
            super().__init__()
            self.seq = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 5))

        def forward(self, x):
            out = self.seq(x)
            out.clamp_(-3, 3)
            return out

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(2)
    data = (torch.randn(100, 20, generator=g), torch.randint(0, 5, (100,), generator=g))
    obj = bs.Objective(Clamped(), nn.CrossEntropyLoss(), data)
    c = torch.tensor([[0.5], [1.0]])
    d = _far_line(obj, scale=3.0)
    fast = obj.evaluate_affine(c, d)
    plain = obj.evaluate_affine(c, d, shortcut=False)
    torch.testing.assert_close(fast[0], plain[0], rtol=1e-6, atol=0)
    # the shortcut stays, the chain does not
    assert obj.plan.name == "first_layer"
    assert (
        obj.plan.refused["chain"]
        == "the model's output is not the last module's (changed after it)"
    )
