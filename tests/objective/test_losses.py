"""Losses as sums over counted units: token-level language-model losses, weights, masks,
a user's own (sum, count) objective, dict batches and outputs, attention curvature."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _lm import LM as _LM
from _lm import T, V
from _lm import padded as _padded
from torch import nn

import basinscope as bs
from basinscope import Objective


def _token_mean(model, x, y):
    with torch.no_grad():
        out = model(x).double()
    valid = y != -100
    return float(F.cross_entropy(out[valid], y[valid], reduction="sum") / valid.sum())


@pytest.mark.parametrize("batch_size", [1, 7, 13])
def test_token_level_loss_is_the_datasets_token_mean_for_every_batch_size(batch_size):
    model = _LM().double()
    x, y = _padded()
    want = _token_mean(model, x, y)
    ours = Objective(model, bs.CrossEntropy(), (x, y), batch_size=batch_size)
    assert ours.loss() == pytest.approx(want, rel=1e-12, abs=0)
    assert ours.count == int((y != -100).sum())

    # torch's own token-level loss in its [N, C, T] layout counts valid tokens too
    class Transposed(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x).transpose(1, 2)

    torch_loss = Objective(Transposed(model), nn.CrossEntropyLoss(), (x, y), batch_size=batch_size)
    assert torch_loss.loss() == pytest.approx(want, rel=1e-12, abs=0)

    def summed(out, t):  # a user's own objective: (sum, count)
        valid = t != -100
        return F.cross_entropy(out[valid], t[valid], reduction="sum"), valid.sum()

    user = Objective(model, summed, (x, y), batch_size=batch_size)
    assert isinstance(user.criterion, bs.SumLoss)
    assert user.loss() == pytest.approx(want, rel=1e-12, abs=0)


def test_token_accuracy_counts_only_the_tokens_that_count():
    model = _LM().double()
    x, y = _padded()
    with torch.no_grad():
        pred = model(x).argmax(-1)
    valid = y != -100
    want = int(((pred == y) & valid).sum()) / int(valid.sum())
    for b in (1, 5, 13):
        _, acc = Objective(model, bs.CrossEntropy(), (x, y), batch_size=b).evaluate(
            Objective(model, bs.CrossEntropy(), (x, y)).theta0
        )
        assert float(acc[0]) == pytest.approx(want, rel=1e-15)


def test_a_mean_of_token_means_is_refused_not_silently_wrong():
    model = _LM().double()
    x, y = _padded()

    def mean_of_tokens(out, t):
        return F.cross_entropy(out.reshape(-1, V), t.reshape(-1), ignore_index=-100)

    with pytest.raises(bs.BasinscopeError, match=r"not a mean over examples.*bs.CrossEntropy"):
        Objective(model, mean_of_tokens, (x, y), batch_size=7)


def test_cross_entropy_with_weights_smoothing_and_ignore_is_torchs_mean_of_the_dataset():
    torch.manual_seed(3)
    model = nn.Linear(5, 4).double()
    x = torch.randn(40, 5, dtype=torch.float64)
    y = torch.randint(0, 4, (40,))
    y[::7] = 2  # an ignored class index
    w = torch.tensor([0.5, 2.0, 1.0, 3.0], dtype=torch.float64)
    loss = bs.CrossEntropy(weight=w, ignore_index=2, label_smoothing=0.1)
    with torch.no_grad():
        want = float(F.cross_entropy(model(x), y, weight=w, ignore_index=2, label_smoothing=0.1))
    for b in (1, 3, 40):
        assert Objective(model, loss, (x, y), batch_size=b).loss() == pytest.approx(want, rel=1e-12)


def test_a_mask_field_weighs_the_tokens_and_a_dict_target_is_read_by_name():
    model = _LM().double()
    x, y = _padded()
    mask = (torch.arange(T) < 4).double().expand(len(x), T).clone()
    with torch.no_grad():
        out = model(x)
    valid = (y != -100).double() * mask
    per = F.cross_entropy(out.reshape(-1, V), y.clamp(min=0).reshape(-1), reduction="none")
    want = float((per * valid.reshape(-1)).sum() / valid.sum())
    data = (x, {"labels": y, "attention_mask": mask})
    for b in (2, 13):
        got = Objective(model, bs.CrossEntropy(mask="attention_mask"), data, batch_size=b)
        assert got.loss() == pytest.approx(want, rel=1e-12)
    with pytest.raises(bs.BasinscopeError, match="without 'target'.*fields 'labels'"):
        Objective(model, bs.CrossEntropy(target="target"), data)


def test_mse_is_torchs_mean_and_a_mask_gives_the_masked_mean():
    torch.manual_seed(4)
    model = nn.Linear(3, 2).double()
    x = torch.randn(30, 3, dtype=torch.float64)
    y = torch.randn(30, 2, dtype=torch.float64)
    with torch.no_grad():
        want = float(F.mse_loss(model(x), y))
        sq = (model(x) - y) ** 2
    m = (torch.rand(30, 2, generator=torch.Generator().manual_seed(0)) > 0.3).double()
    for b in (1, 4, 30):
        obj = Objective(model, bs.MSE(), (x, y), batch_size=b)
        assert obj.loss() == pytest.approx(want, rel=1e-12)
        assert torch.isnan(obj.evaluate(obj.theta0)[1]).all()  # no accuracy
        masked = Objective(model, bs.MSE(mask="m"), (x, {"labels": y, "m": m}), batch_size=b)
        assert masked.loss() == pytest.approx(float((sq * m).sum() / m.sum()), rel=1e-12)


class _DictLM(nn.Module):
    """A HuggingFace-style model: a dict batch in, a mapping with 'logits' out."""

    def __init__(self):
        super().__init__()
        self.lm = _LM(d=8, layers=1)

    def forward(self, input_ids, attention_mask):
        logits = self.lm(input_ids)
        return {"logits": logits, "hidden": logits.mean(-1) * attention_mask}


def _dict_data():
    x, y = _padded()
    return {"input_ids": x, "attention_mask": (y != -100).double(), "labels": y}


def test_a_dict_batch_and_a_dict_output_give_the_tensor_models_numbers():
    model = _DictLM().double()
    data = _dict_data()
    plain = Objective(model.lm, bs.CrossEntropy(), (data["input_ids"], data["labels"]))
    obj = Objective(model, bs.CrossEntropy(), data, batch_size=5)
    assert obj.loss() == pytest.approx(plain.loss(), rel=1e-12)
    v = torch.randn(obj.n, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(obj.hvp(v), plain.hvp(v), rtol=1e-9, atol=1e-12)
    assert torch.allclose(obj.grad(), plain.grad(), rtol=1e-10, atol=1e-13)
    explicit = Objective(
        model, bs.CrossEntropy(), data, output="logits", inputs=("input_ids", "attention_mask")
    )
    assert explicit.loss() == pytest.approx(plain.loss(), rel=1e-12)
    assert obj.fingerprint()["data"] != plain.fingerprint()["data"]


_FAST = bs.sharpness.SuiteConfig(samples=2, steps=2, pac_samples=2, line_steps=3)


def test_a_dict_model_runs_through_plane_hessian_volume_and_the_suite(monkeypatch):
    # the suite's trace with 50 products at most (its 1,000 by default took most of the time)
    trace = bs.hessian.trace
    monkeypatch.setattr(bs.hessian, "trace", lambda *a, **k: trace(*a, max_products=50, **k))
    model = _DictLM().double()
    data = _dict_data()
    obj = Objective(model, bs.CrossEntropy(), data, batch_size=5)
    plain = Objective(model.lm, bs.CrossEntropy(), (data["input_ids"], data["labels"]))
    d = bs.random_directions(obj, 2, seed=0)
    surf = bs.plane(obj, d[0], d[1], span=(-0.5, 0.5), steps=3)
    ref = bs.plane(plain, d[0], d[1], span=(-0.5, 0.5), steps=3)
    assert surf.train_loss == pytest.approx(ref.train_loss, rel=1e-10)
    top = bs.hessian.eigenvalues(obj, k=2, tol=1e-8)
    assert top.values == pytest.approx(
        bs.hessian.eigenvalues(plain, k=2, tol=1e-8).values, rel=1e-6
    )
    vol = bs.basin_volume(obj, threshold=obj.loss() + 0.5, n_directions=4, seed=0)
    vol_ref = bs.basin_volume(plain, threshold=plain.loss() + 0.5, n_directions=4, seed=0)
    assert vol.radii == pytest.approx(vol_ref.radii, rel=1e-8)
    values = bs.sharpness.suite_values(bs.sharpness.suite(obj, _FAST))
    values_ref = bs.sharpness.suite_values(bs.sharpness.suite(plain, _FAST))
    for k, v in values.items():
        assert v == pytest.approx(values_ref[k], rel=1e-6, abs=1e-12), k


def test_attention_hessian_matches_dense_float64_and_the_backend_setting_is_restored():
    model = _LM(d=4, layers=1).double()
    x, y = _padded(n=6)
    obj = Objective(model, bs.CrossEntropy(), (x, y), batch_size=4).restrict("head")
    full = Objective(model, bs.CrossEntropy(), (x, y), batch_size=4)
    before = [
        torch.backends.cuda.flash_sdp_enabled(),
        torch.backends.cuda.mem_efficient_sdp_enabled(),
        torch.backends.cuda.math_sdp_enabled(),
    ]
    torch.backends.cuda.enable_mem_efficient_sdp(False)  # a user's own setting
    try:
        top = bs.hessian.eigenvalues(full, k=3, tol=1e-10)
        params = dict(full.model.named_parameters())
        names = full.space.names

        def loss_of(theta):
            pieces = full.space.unflatten(theta)
            from torch.func import functional_call

            with torch.nn.attention.sdpa_kernel([torch.nn.attention.SDPBackend.MATH]):
                out = functional_call(full.model, {**params, **pieces}, (x,))
            valid = y != -100
            return F.cross_entropy(out[valid], y[valid])

        dense = torch.autograd.functional.hessian(loss_of, full.theta0)
        want = torch.linalg.eigvalsh(dense).flip(0)[:3].numpy()
        assert top.values == pytest.approx(want, rel=1e-6, abs=1e-9)
        # the restricted Objective's Hessian is the dense Hessian's block of the head
        pieces = full.space.unflatten(torch.arange(full.n, dtype=torch.float64))
        head = torch.cat([pieces[n].reshape(-1) for n in names if n.startswith("head")]).long()
        ones = torch.ones(obj.n, dtype=torch.float64)
        want_block = dense[head][:, head] @ ones
        assert torch.allclose(obj.hvp(ones), want_block, rtol=1e-8, atol=1e-11)
        assert torch.backends.cuda.mem_efficient_sdp_enabled() is False
        assert torch.backends.cuda.flash_sdp_enabled() is before[0]
        assert torch.backends.cuda.math_sdp_enabled() is before[2]
    finally:
        torch.backends.cuda.enable_mem_efficient_sdp(before[1])


def test_an_operation_without_a_second_derivative_is_named():
    class Distances(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(3, 2, dtype=torch.float64))

        def forward(self, x):
            return torch.cdist(x, self.w)

    x = torch.randn(8, 2, dtype=torch.float64)
    y = torch.randint(0, 3, (8,))
    obj = Objective(Distances(), bs.CrossEntropy(), (x, y))
    with pytest.raises(
        bs.BasinscopeError, match="no second derivative for the operation _cdist_backward"
    ):
        obj.hvp(torch.ones(obj.n, dtype=torch.float64))
    with pytest.raises(bs.BasinscopeError, match="_cdist_backward"):
        bs.hessian.eigenvalues(obj, k=1)


def test_a_user_objective_without_count_is_counted_once_and_bad_pairs_are_refused():
    torch.manual_seed(5)
    model = nn.Linear(3, 1).double()
    x = torch.randn(20, 3, dtype=torch.float64)
    y = torch.randn(20, 1, dtype=torch.float64)
    w = torch.rand(20, dtype=torch.float64) + 0.5  # per-example weights the user gives

    def weighted(out, t):
        return ((out - t["y"]) ** 2).squeeze(1).mul(t["w"]).sum(), t["w"].sum()

    with torch.no_grad():
        want = float((((model(x) - y) ** 2).squeeze(1) * w).sum() / w.sum())
    for b in (1, 6, 20):
        obj = Objective(model, weighted, (x, {"y": y, "w": w}), batch_size=b)
        assert obj.loss() == pytest.approx(want, rel=1e-12)
        assert obj.count == pytest.approx(float(w.sum()), rel=1e-14)
    with pytest.raises(bs.BasinscopeError, match=r"must return a pair \(sum, count\)"):
        Objective(model, bs.SumLoss(lambda o, t: o.sum()), (x, y))
    with pytest.raises(bs.BasinscopeError, match="count on the first examples is -20"):
        Objective(model, lambda o, t: (o.sum(), -len(o)), (x, y))


def test_describe_states_the_unit_and_its_count():
    model = _LM(d=4, layers=1).double()
    x, y = _padded()
    text = Objective(model, bs.CrossEntropy(), (x, y), batch_size=5).describe()
    tokens = int((y != -100).sum())
    assert f"count {tokens} over 13 examples" in text
    assert "target tokens" in text and f"hits over {tokens} counted targets" in text
    reg = Objective(nn.Linear(3, 1).double(), bs.MSE(), (torch.randn(7, 3), torch.randn(7, 1)))
    assert "accuracy: none" in reg.describe() and "count 7 over 7 examples" in reg.describe()


class _Once(torch.autograd.Function):
    """tanh with a once-differentiable backward: autograd's second derivative is wrong."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.tanh()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * (1 - x.tanh() ** 2)


def test_wrong_second_derivatives_of_a_once_differentiable_function_are_refused():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 3), nn.Linear(3, 4)

        def forward(self, x):
            return self.b(_Once.apply(self.a(x)))

    torch.manual_seed(0)
    x, y = torch.randn(10, 3, dtype=torch.float64), torch.randint(0, 4, (10,))
    obj = Objective(Net().double(), bs.CrossEntropy(), (x, y))
    match = "second derivatives from autograd are not symmetric"
    with pytest.raises(bs.BasinscopeError, match=match):
        obj.hvp(torch.ones(obj.n, dtype=torch.float64))
    with pytest.raises(bs.BasinscopeError, match=match):
        bs.hessian.eigenvalues(obj, k=1)
    with pytest.raises(bs.BasinscopeError, match=match):
        bs.hessian.eigenvalues(obj, k=1, curvature="ggn")


def test_keys_follow_every_setting_of_a_loss_object():
    torch.manual_seed(1)
    model = nn.Linear(4, 60).double()
    x, y = torch.randn(30, 4, dtype=torch.float64), torch.randint(0, 60, (30,))
    w = torch.ones(60, dtype=torch.float64)
    w2 = w.clone()
    w2[-1] = 2.0  # beyond any shortened repr of the tensor

    def key(loss):
        return Objective(model, loss, (x, y)).fingerprint()["loss"]

    assert key(bs.CrossEntropy(weight=w)) != key(bs.CrossEntropy(weight=w2))
    assert key(bs.CrossEntropy()) != key(bs.CrossEntropy(label_smoothing=0.1))

    def summed(o, t):
        return F.cross_entropy(o, t, reduction="sum"), len(t)

    def doubled(o, t):
        return 2 * F.cross_entropy(o, t, reduction="sum"), len(t)

    assert key(bs.SumLoss(summed)) != key(bs.SumLoss(doubled))
    assert key(bs.SumLoss(summed)) != key(bs.SumLoss(summed, count=lambda t: 2 * len(t)))
    assert key(bs.MeanLoss(F.cross_entropy)) == key(bs.MeanLoss(F.cross_entropy))
    assert "0x" not in str(Objective(model, bs.MeanLoss(F.cross_entropy), (x, y)).fingerprint())


def test_explicit_mean_and_sum_losses_and_their_accuracy():
    torch.manual_seed(2)
    model = nn.Linear(4, 3).double()
    x, y = torch.randn(25, 4, dtype=torch.float64), torch.randint(0, 3, (25,))
    with torch.no_grad():
        want = float(F.cross_entropy(model(x), y))
        acc = float((model(x).argmax(1) == y).double().mean())
    for loss in (bs.MeanLoss(nn.CrossEntropyLoss()), bs.MeanLoss(F.cross_entropy)):
        obj = Objective(model, loss, (x, y), batch_size=4)
        assert obj.loss() == pytest.approx(want, rel=1e-12)

    def hits(o, t):
        return (o.argmax(1) == t).sum(), len(t)

    def summed(o, t):
        return F.cross_entropy(o, t, reduction="sum"), len(t)

    for count in (None, lambda t: len(t)):
        obj = Objective(model, bs.SumLoss(summed, accuracy=hits, count=count), (x, y), batch_size=6)
        got = obj.evaluate(obj.theta0)
        assert float(got[0][0]) == pytest.approx(want, rel=1e-12)
        assert float(got[1][0]) == pytest.approx(acc, rel=1e-15)
    with pytest.raises(bs.BasinscopeError, match="count\\(...\\) must return a number, got a str"):
        Objective(model, bs.SumLoss(summed, count=lambda t: "many"), (x, y))


@pytest.mark.parametrize("batch_size", [1, 7, 23])
def test_kl_divergence_batchmean_is_the_datasets_mean_for_every_batch_size(batch_size):
    """``batchmean`` is Σ over every element / batch size: a mean over examples of each
    example's sum over its non-batch dimensions, so the dataset's loss is Σ / N."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(5, 12), nn.Unflatten(1, (3, 4)), nn.LogSoftmax(-1))
    model = model.double()
    x = torch.randn(23, 5, dtype=torch.float64)
    y = torch.softmax(torch.randn(23, 3, 4, dtype=torch.float64), -1)
    with torch.no_grad():
        want = float(F.kl_div(model(x), y, reduction="sum")) / 23
    obj = Objective(model, nn.KLDivLoss(reduction="batchmean"), (x, y), batch_size=batch_size)
    assert isinstance(obj.criterion, bs.MeanLoss) and obj.count == 23
    assert obj.loss() == pytest.approx(want, rel=1e-12, abs=0)


def test_an_ambiguous_class_layout_is_refused_and_class_dim_decides():
    torch.manual_seed(3)
    out = torch.randn(16, 5, 5, dtype=torch.float64)
    y = torch.randint(0, 5, (16, 5))

    class Fixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.s = nn.Parameter(torch.ones((), dtype=torch.float64))

        def forward(self, i):
            return self.s * out[i]

    idx = torch.arange(16)
    with pytest.raises(bs.BasinscopeError, match="say which: CrossEntropy\\(class_dim=1\\)"):
        Objective(Fixed(), bs.CrossEntropy(), (idx, y))
    first = Objective(Fixed(), bs.CrossEntropy(class_dim=1), (idx, y), check_determinism=False)
    last = Objective(Fixed(), bs.CrossEntropy(class_dim=-1), (idx, y), check_determinism=False)
    assert first.loss() == pytest.approx(float(F.cross_entropy(out, y)), rel=1e-12)
    assert last.loss() == pytest.approx(
        float(F.cross_entropy(out.reshape(-1, 5), y.reshape(-1))), rel=1e-12
    )


def test_a_mean_of_means_over_dict_targets_is_refused():
    class Keyed(nn.Module):
        def __init__(self):
            super().__init__()
            self.lm = _LM(d=4, layers=1)

        def forward(self, input_ids):
            return self.lm(input_ids)

    model = Keyed().double()
    x, y = _padded()
    data = {"input_ids": x, "labels": y}

    def token_mean(out, t):
        return F.cross_entropy(out.reshape(-1, V), t["labels"].reshape(-1))

    with pytest.raises(bs.BasinscopeError, match="not a mean over examples"):
        Objective(model, token_mean, data, batch_size=4)
    with pytest.raises(bs.BasinscopeError, match="inputs= names the keys of dict data"):
        Objective(model.lm, bs.CrossEntropy(), (x, y), inputs=["input_ids"])
    one = Objective(model, bs.CrossEntropy(), data, inputs="input_ids")
    assert one.loss() == pytest.approx(_token_mean(model.lm, x, y), rel=1e-12)
