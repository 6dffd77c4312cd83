"""Hostile input to the Objective: one sentence before any work, or the right number."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    RandomSampler,
    SubsetRandomSampler,
    TensorDataset,
)

import basinscope as bs
from basinscope.objective import Objective

f64 = torch.float64


def _mlp(d_in: int = 4, classes: int = 3, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d_in, 8), nn.Tanh(), nn.Linear(8, classes)).double()


def _data(n: int = 20, d_in: int = 4, classes: int = 3, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d_in, generator=g, dtype=f64), torch.randint(
        0, classes, (n,), generator=g
    )


def _full_ce(model: nn.Module, X, y, **kw) -> float:
    with torch.no_grad():
        return float(F.cross_entropy(model(X), y, **kw))


# ------------------------------------------------------------------ data values
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("where", ["inputs", "targets"])
def test_non_finite_data_is_named(bad, where):
    model, (X, _) = _mlp(d_in=4, classes=1), _data()
    yr = torch.randn(20, 1, dtype=f64)
    if where == "inputs":
        X = X.clone()
        X[5, 2] = bad
    else:
        yr[5, 0] = bad
    kind = "NaN" if bad != bad else "inf"
    # also with the determinism probe off: NaN data was accepted and gave NaN losses
    for check in (True, False):
        with pytest.raises(bs.BasinscopeError, match=rf"the {where} hold {kind} \(example 5 of 20"):
            Objective(model, nn.MSELoss(), (X, yr), check_determinism=check)


@pytest.mark.parametrize(
    "loss_fn",
    [nn.CrossEntropyLoss(), F.cross_entropy, functools.partial(F.cross_entropy)],
)
@pytest.mark.parametrize("label", [3, -1, 7])
def test_label_out_of_range_for_cross_entropy(loss_fn, label):
    model, (X, y) = _mlp(), _data(n=40)
    y = y.clone()
    y[33] = label  # beyond the probe's 8 examples: every label is checked
    msg = rf"label {label} \(example 33\) but the model has 3 outputs.*\[0, 2\]"
    with pytest.raises(bs.BasinscopeError, match=msg):
        Objective(model, loss_fn, (X, y), batch_size=8)


def test_label_out_of_range_for_nll_and_a_plain_function():
    model, (X, y) = _mlp(), _data(n=40)
    y = y.clone()
    y[21] = 5
    logsm = nn.Sequential(model, nn.LogSoftmax(dim=1))
    with pytest.raises(bs.BasinscopeError, match=r"label 5 \(example 21\).*NLLLoss"):
        Objective(logsm, nn.NLLLoss(), (X, y), batch_size=8)
    with pytest.raises(bs.BasinscopeError, match=r"label 5 \(example 21\).*loss_fn fails on it"):
        Objective(model, lambda o, t: F.cross_entropy(o, t), (X, y), batch_size=8)


def test_ignore_index_labels_stay_accepted():
    model, (X, y) = _mlp(), _data()
    y = y.clone()
    y[:4] = -100
    Objective(model, nn.CrossEntropyLoss(), (X, y))
    y[:4] = 9
    Objective(model, nn.CrossEntropyLoss(ignore_index=9), (X, y))
    with pytest.raises(bs.BasinscopeError, match="label 9"):
        Objective(model, nn.CrossEntropyLoss(), (X, y))


def test_wrong_number_of_features_is_one_sentence():
    model, (X, y) = _mlp(d_in=4), _data(d_in=5)
    with pytest.raises(bs.BasinscopeError) as err:
        Objective(model, nn.CrossEntropyLoss(), (X, y))
    msg = str(err.value)
    assert "inputs of shape [20, 5] (examples of shape [5], float64)" in msg
    assert "mat1 and mat2 shapes cannot be multiplied" in msg and "\n" not in msg


def test_integer_inputs_to_a_linear_layer_say_convert_to_float():
    model, (X, y) = _mlp(), _data()
    with pytest.raises(bs.BasinscopeError, match=r"integers \(int64\).*'0' is a Linear.*X\.float"):
        Objective(model, nn.CrossEntropyLoss(), ((X * 3).long(), y))
    emb = nn.Sequential(nn.Embedding(11, 5), nn.Flatten(), nn.Linear(20, 3)).double()
    obj = Objective(emb, nn.CrossEntropyLoss(), (torch.randint(0, 11, (20, 4)), y))
    assert obj.x.dtype == torch.int64


@pytest.mark.parametrize(
    "loss_fn, hint",
    [
        (nn.CrossEntropyLoss(), "CrossEntropyLoss takes"),
        (lambda o, t: F.cross_entropy(o, t), "fails"),
    ],
)
def test_column_targets_for_cross_entropy_suggest_squeeze(loss_fn, hint):
    model, (X, y) = _mlp(), _data()
    with pytest.raises(bs.BasinscopeError, match=rf"{hint}.*y\.squeeze\(1\)"):
        Objective(model, loss_fn, (X, y[:, None]))


def test_float_class_indices_suggest_long():
    model, (X, y) = _mlp(), _data()
    with pytest.raises(bs.BasinscopeError, match=r"class indices stored as floats: pass y\.long"):
        Objective(model, nn.CrossEntropyLoss(), (X, y.double()))


def test_elementwise_loss_refuses_broadcasting_targets():
    model, (X, _) = _mlp(classes=1), _data()
    y = torch.randn(20, dtype=f64)
    with pytest.raises(
        bs.BasinscopeError, match=r"outputs have shape \[N, 1\] but the targets \[N\]"
    ):
        Objective(model, nn.MSELoss(), (X, y))
    obj = Objective(model, nn.MSELoss(), (X, y[:, None]), batch_size=7)
    with torch.no_grad():
        want = float(((model(X) - y[:, None]) ** 2).mean())
    assert obj.loss() == pytest.approx(want, rel=1e-13)


class _Returns(nn.Module):
    def __init__(self, kind: str):
        super().__init__()
        self.fc = nn.Linear(4, 3).double()
        self.kind = kind

    def forward(self, x):
        out = self.fc(x)
        return {
            "tuple": (out, x),
            "list": [out],
            "dict": {"logits": out},
            "fields": {"scores": out, "hidden": x},
        }[self.kind]


@pytest.mark.parametrize(
    "kind, what",
    [
        ("tuple", r"a 2-item tuple; say which item.*output=0"),
        ("list", r"a 1-item list; say which item.*output=0"),
        ("fields", r"a mapping \(fields 'scores', 'hidden'\) without 'logits'.*output="),
    ],
)
def test_model_that_returns_no_tensor_names_what_to_select(kind, what):
    X, y = _data()
    with pytest.raises(bs.BasinscopeError, match=rf"the model returns {what}"):
        Objective(_Returns(kind), nn.CrossEntropyLoss(), (X, y))


@pytest.mark.parametrize(
    "kind, output", [("tuple", 0), ("list", 0), ("dict", None), ("fields", "scores")]
)
def test_selected_output_gives_the_plain_models_loss(kind, output):
    X, y = _data()
    model = _Returns(kind)
    want = Objective(model.fc, nn.CrossEntropyLoss(), (X, y)).loss()
    obj = Objective(model, nn.CrossEntropyLoss(), (X, y), output=output)
    assert obj.loss() == pytest.approx(want, rel=1e-14)
    picked = Objective(
        model,
        nn.CrossEntropyLoss(),
        (X, y),
        output=lambda o: o[0] if kind in ("tuple", "list") else next(iter(o.values())),
    )
    assert picked.loss() == pytest.approx(want, rel=1e-14)
    bad = "'nope'" if kind in ("dict", "fields") else "7"
    with pytest.raises(bs.BasinscopeError, match=f"has no field {bad}"):
        Objective(model, nn.CrossEntropyLoss(), (X, y), output=eval(bad))


class _Dicts(Dataset):
    def __init__(self, X, y):
        self.X, self.y = X, y

    def __len__(self):
        return len(self.X)

    def __getitem__(self, i):
        return {"image": self.X[i], "label": self.y[i]}


def test_dataset_or_loader_of_dicts_without_labels_asks_for_them():
    X, y = _data()
    match = r"the data is a dict without 'labels' \(keys 'image', 'label'\)"
    with pytest.raises(bs.BasinscopeError, match=match):
        Objective(_mlp(), nn.CrossEntropyLoss(), _Dicts(X, y))
    with pytest.raises(bs.BasinscopeError, match=match):
        Objective(_mlp(), nn.CrossEntropyLoss(), DataLoader(_Dicts(X, y), batch_size=4))
    with pytest.raises(bs.BasinscopeError, match="inputs names 'pixels', not a key"):
        Objective(_mlp(), nn.CrossEntropyLoss(), _Dicts(X, y), inputs=("pixels",))


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"batch_size": 2.5}, "batch_size must be an integer, got 2.5"),
        ({"batch_size": "8"}, "batch_size must be an integer, got '8'"),
        ({"batch_size": 0}, "batch_size must be an integer >= 1"),
        ({"subset": 3.5}, "subset must be an integer, got 3.5"),
        ({"subset": 21}, r"subset must be in \[1, 20\]"),
        ({"seed": 0.5}, "seed must be an integer"),
    ],
)
def test_non_integer_counts(kw, match):
    X, y = _data()
    with pytest.raises(bs.BasinscopeError, match=match):
        Objective(_mlp(), nn.CrossEntropyLoss(), (X, y), **kw)
    assert Objective(_mlp(), nn.CrossEntropyLoss(), (X, y), batch_size=8.0).batch_size == 8


# ------------------------------------------------------------------ the model
def test_diverged_model_is_refused_naming_the_tensor():
    X, y = _data()
    model = _mlp()
    with torch.no_grad():
        model[2].bias[1] = float("nan")
    with pytest.raises(
        bs.BasinscopeError, match=r"parameter '2.bias' holds NaN \(a diverged run\?\)"
    ):
        Objective(model, nn.CrossEntropyLoss(), (X, y), check_determinism=False)
    bn = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.Linear(5, 3)).double()
    bn[1].running_var[2] = float("inf")
    with pytest.raises(bs.BasinscopeError, match=r"buffer '1.running_var' holds inf"):
        Objective(bn, nn.CrossEntropyLoss(), (X, y))
    # a float64 weight beyond float32's range overflows when evaluated in float32
    big = _mlp()
    with torch.no_grad():
        big[0].weight[0, 0] = 1e300
    with pytest.raises(bs.BasinscopeError, match=r"'0.weight' holds inf"):
        Objective(big, nn.CrossEntropyLoss(), (X, y), dtype=torch.float32)


# ------------------------------------------------------------------ the loss
def test_a_summing_function_is_refused():
    model, (X, y) = _mlp(), _data()
    for fn in (
        lambda o, t: F.cross_entropy(o, t, reduction="sum"),
        lambda o, t: ((o - 1) ** 2).sum(),
    ):
        with pytest.raises(bs.BasinscopeError, match="sums over the batch.*batch_size"):
            Objective(model, fn, (X, y))
    with pytest.raises(bs.BasinscopeError, match=r"scalar tensor.*shape \[20\]"):
        Objective(model, lambda o, t: F.cross_entropy(o, t, reduction="none"), (X, y))


@pytest.mark.parametrize(
    "loss_fn",
    [
        nn.CrossEntropyLoss(label_smoothing=0.1),
        lambda o, t: F.cross_entropy(o, t),
        lambda o, t: F.cross_entropy(o, t) + 0.5,  # a mean plus a constant is still a mean
        nn.MultiMarginLoss(),
        lambda o, t: (o**2).mean(),
    ],
)
def test_mean_losses_stay_accepted_and_do_not_depend_on_batch_size(loss_fn):
    model, (X, y) = _mlp(), _data()
    whole = Objective(model, loss_fn, (X, y)).loss()
    assert Objective(model, loss_fn, (X, y), batch_size=3).loss() == pytest.approx(whole, rel=1e-13)
    with torch.no_grad():
        assert whole == pytest.approx(float(loss_fn(model(X), y)), rel=1e-13)


def test_class_weighted_cross_entropy_is_the_dataset_value_for_every_batch_size():
    model, (X, y) = _mlp(), _data()
    w = torch.tensor([1.0, 5.0, 0.2], dtype=f64)
    want = _full_ce(model, X, y, weight=w)  # Σ w_y ℓ / Σ w_y over all 20 examples
    for b in (20, 7, 3):
        obj = Objective(model, nn.CrossEntropyLoss(weight=w), (X, y), batch_size=b)
        assert obj.loss() == pytest.approx(want, rel=1e-13), b
        g = Objective(model, nn.CrossEntropyLoss(weight=w), (X, y)).grad()
        torch.testing.assert_close(obj.grad(), g, rtol=1e-12, atol=1e-15)
    part = Objective(model, functools.partial(F.cross_entropy, weight=w), (X, y), batch_size=7)
    assert part.loss() == pytest.approx(want, rel=1e-13)


def test_ignored_targets_leave_loss_and_accuracy_for_every_batch_size():
    model, (X, y) = _mlp(), _data()
    y = y.clone()
    y[:6] = -100  # batch_size 3: two chunks are all ignored (their mean is 0/0)
    want = _full_ce(model, X, y)
    with torch.no_grad():
        keep = y != -100
        acc = float((model(X).argmax(1)[keep] == y[keep]).double().mean())
    for b in (20, 7, 3):
        loss, accuracy = Objective(model, nn.CrossEntropyLoss(), (X, y), batch_size=b).evaluate(
            bs.ParamSpace(model).flatten(model)
        )
        assert float(loss[0]) == pytest.approx(want, rel=1e-13), b
        assert float(accuracy[0]) == pytest.approx(acc, rel=1e-15), b
    y[:] = -100
    with pytest.raises(bs.BasinscopeError, match="every target is ignore_index -100"):
        Objective(model, nn.CrossEntropyLoss(), (X, y))


_NOT_A_MEAN = "not a mean over examples.*depend on batch_size.*nn.CrossEntropyLoss"


@pytest.mark.parametrize(
    "make",
    [
        lambda w: lambda o, t: F.cross_entropy(o, t, weight=w),  # weights it cannot count
        lambda w: lambda o, t: F.nll_loss(F.log_softmax(o, 1), t, weight=w),
        lambda w: lambda o, t: F.cross_entropy(o[t > 0], t[t > 0]),  # a mask
    ],
)
def test_a_loss_normalised_by_its_own_count_is_refused(make):
    # Each gave a dataset value that depended on batch_size (1.1492 vs 1.1516).
    model, (X, y) = _mlp(), _data(n=40)
    with pytest.raises(bs.BasinscopeError, match=_NOT_A_MEAN):
        Objective(model, make(torch.tensor([1.0, 2.0, 3.0], dtype=f64)), (X, y), batch_size=8)


def test_ignored_targets_in_a_plain_function_are_refused_wherever_they_are():
    model, (X, y) = _mlp(), _data(n=40)
    y = y.clone()
    y[30] = -100  # beyond the probe's first 8 examples
    with pytest.raises(bs.BasinscopeError, match=r"on example \d alone nan.*ignored targets"):
        Objective(model, lambda o, t: F.cross_entropy(o, t), (X, y), batch_size=8)
    # the losses whose count basinscope knows stay accepted, and exact
    want = _full_ce(model, X, y)
    for fn in (F.cross_entropy, nn.CrossEntropyLoss(), functools.partial(F.cross_entropy)):
        assert Objective(model, fn, (X, y), batch_size=7).loss() == pytest.approx(want, rel=1e-13)


def test_known_weighted_smoothed_and_elementwise_means_stay_accepted():
    model, (X, y) = _mlp(), _data(n=40)
    y = y.clone()
    y[::9] = 2
    y[5] = -100
    w = torch.tensor([1.0, 5.0, 0.2], dtype=f64)
    for kw in ({"weight": w, "label_smoothing": 0.2}, {"weight": w, "ignore_index": 2}):
        if "ignore_index" in kw:
            y[5] = 0
        want = _full_ce(model, X, y, **kw)
        for fn in (functools.partial(F.cross_entropy, **kw), nn.CrossEntropyLoss(**kw)):
            got = Objective(model, fn, (X, y), batch_size=7).loss()
            assert got == pytest.approx(want, rel=1e-12), kw
    yf = torch.rand(40, 3, dtype=f64)
    for fn in (nn.MSELoss(), nn.BCEWithLogitsLoss(), nn.SmoothL1Loss()):
        with torch.no_grad():
            want = float(fn(model(X), yf))
        assert Objective(model, fn, (X, yf), batch_size=7).loss() == pytest.approx(want, rel=1e-12)


def test_equal_outputs_do_not_hide_a_weighting():
    model = nn.Sequential(nn.Linear(4, 3)).double()
    with torch.no_grad():
        model[0].weight.zero_()
        model[0].bias.copy_(torch.tensor([0.5, -1.0, 2.0]))  # every example: the same outputs
    X, y = _data()
    w = torch.tensor([1.0, 2.0, 3.0], dtype=f64)
    with pytest.raises(bs.BasinscopeError, match=_NOT_A_MEAN):
        Objective(model, lambda o, t: F.cross_entropy(o, t, weight=w), (X, y))


@pytest.mark.parametrize(
    "device, match",
    [
        ("meta", "device 'meta' holds no data"),
        ("bogus", "device 'bogus' is not a device torch knows"),
        (3, "device 3"),
        ("xla", "device 'xla'"),
    ],
)
def test_unknown_or_unusable_devices_are_one_sentence(device, match):
    model, (X, y) = _mlp(), _data()
    with pytest.raises(bs.BasinscopeError, match=match):
        Objective(model, nn.CrossEntropyLoss(), (X, y), device=device)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is there")
def test_cuda_without_cuda_is_one_sentence():
    model, (X, y) = _mlp(), _data()
    with pytest.raises(bs.BasinscopeError, match="CUDA is not available"):
        Objective(model, nn.CrossEntropyLoss(), (X, y), device="cuda:0")


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool, "float32", np.float32])
def test_a_dtype_that_is_no_floating_torch_dtype_is_one_sentence(dtype):
    model, (X, y) = _mlp(), _data()
    with pytest.raises(bs.BasinscopeError, match="dtype must be a floating-point torch dtype"):
        Objective(model, nn.CrossEntropyLoss(), (X, y), dtype=dtype)


# ------------------------------------------------------------------ loaders and datasets
def test_shuffling_dropping_loader_reads_every_example_in_order():
    model, (X, y) = _mlp(), _data(n=23)
    ref = Objective(model, nn.CrossEntropyLoss(), (X, y))
    torch.manual_seed(0)
    loader = DataLoader(TensorDataset(X, y), batch_size=5, shuffle=True, drop_last=True)
    objs = [Objective(model, nn.CrossEntropyLoss(), loader) for _ in range(3)]
    for obj in objs:
        assert obj.n_examples == 23
        assert torch.equal(obj.x, X) and torch.equal(obj.y, y)
        assert obj.loss() == ref.loss()  # bit for bit, every build


def test_loader_samplers_fixed_parts_kept_random_draws_refused():
    model, (X, y) = _mlp(), _data()
    idx = [17, 3, 9, 4]
    loader = DataLoader(TensorDataset(X, y), batch_size=3, sampler=SubsetRandomSampler(idx))
    obj = Objective(model, nn.CrossEntropyLoss(), loader)
    assert torch.equal(obj.x, X[sorted(idx)])
    weighted = torch.utils.data.WeightedRandomSampler(torch.ones(20), 20)
    with pytest.raises(bs.BasinscopeError, match="WeightedRandomSampler draws different examples"):
        Objective(model, nn.CrossEntropyLoss(), DataLoader(TensorDataset(X, y), sampler=weighted))


class _Augmented(Dataset):
    def __init__(self, X, y, noise: float):
        self.X, self.y, self.noise = X, y, noise

    def __len__(self):
        return len(self.X)

    def __getitem__(self, i):
        return self.X[i] + self.noise * torch.randn(self.X.shape[1], dtype=f64), self.y[i]


def test_randomly_augmented_dataset_is_refused():
    model, (X, y) = _mlp(), _data()
    for data in (_Augmented(X, y, 0.1), DataLoader(_Augmented(X, y, 0.1), batch_size=4)):
        with pytest.raises(bs.BasinscopeError, match=r"item 0 differs between two reads"):
            Objective(model, nn.CrossEntropyLoss(), data)
    still = Objective(model, nn.CrossEntropyLoss(), _Augmented(X, y, 0.0))
    assert still.loss() == Objective(model, nn.CrossEntropyLoss(), (X, y)).loss()


def test_objective_holds_its_own_copy_of_the_data():
    model, (X, y) = _mlp(), _data()
    for make in (lambda t: t.clone(), lambda t: t.numpy().copy()):
        Xu, yu = make(X), make(y)
        obj = Objective(model, nn.CrossEntropyLoss(), (Xu, yu))
        before = obj.loss()
        d = bs.random_directions(obj, 2, seed=0)
        plane = bs.plane(obj, d[0], d[1], steps=3)
        Xu *= 3.0  # the user changes their data in place
        yu[:] = 0
        assert obj.loss() == before == _full_ce(model, X, y)
        again = bs.plane(obj, d[0], d[1], steps=3)
        assert np.array_equal(again.train_loss, plane.train_loss)
        other = obj.with_data((Xu, yu))
        Xu += 1.0
        assert other.loss() == _full_ce(model, torch.as_tensor(Xu) - 1.0, torch.zeros_like(y))
    # and nothing is written into the user's tensors
    X0 = X.clone()
    Objective(model, nn.CrossEntropyLoss(), (X, y)).loss()
    assert torch.equal(X, X0)


def test_with_data_checks_the_new_data():
    model, (X, y) = _mlp(), _data()
    obj = Objective(model, nn.CrossEntropyLoss(), (X, y))
    Xn = X.clone()
    Xn[2, 0] = float("nan")
    with pytest.raises(bs.BasinscopeError, match=r"inputs hold NaN \(example 2"):
        obj.with_data((Xn, y))
    with pytest.raises(bs.BasinscopeError, match="label 4"):
        obj.with_data((X, torch.full_like(y, 4)))
    with pytest.raises(bs.BasinscopeError, match=r"inputs of shape \[20, 6\]"):
        obj.with_data((torch.randn(20, 6, dtype=f64), y))


class _Stream(torch.utils.data.IterableDataset):
    def __init__(self, X, y):
        self.X, self.y = X, y

    def __iter__(self):
        return iter(list(zip(self.X, self.y, strict=True)))


def test_iterable_dataset_loader_keeps_its_last_partial_batch():
    model, (X, y) = _mlp(), _data(n=23)
    ref = Objective(model, nn.CrossEntropyLoss(), (X, y)).loss()
    for loader in (
        DataLoader(_Stream(X, y), batch_size=5, drop_last=True),
        DataLoader(_Stream(X, y), batch_size=None),
    ):
        obj = Objective(model, nn.CrossEntropyLoss(), loader)
        assert obj.n_examples == 23 and obj.loss() == ref


@pytest.mark.parametrize(
    "make, match",
    [
        (
            lambda ds: DataLoader(ds, sampler=RandomSampler(ds, replacement=True, num_samples=100)),
            "RandomSampler draws 100 of the 20 examples with replacement",
        ),
        (
            lambda ds: DataLoader(ds, batch_size=3, sampler=RandomSampler(ds, num_samples=10)),
            "RandomSampler draws 10 of the 20 examples without replacement",
        ),
        (  # batch_size=None: the sampler was ignored too
            lambda ds: DataLoader(
                ds, batch_size=None, sampler=RandomSampler(ds, replacement=True, num_samples=20)
            ),
            "RandomSampler draws 20 of the 20 examples with replacement",
        ),
        (  # a BatchSampler's own sampler
            lambda ds: DataLoader(
                ds,
                batch_sampler=BatchSampler(
                    RandomSampler(ds, replacement=True, num_samples=20), 4, False
                ),
            ),
            "RandomSampler draws 20 of the 20 examples with replacement",
        ),
        (
            lambda ds: DataLoader(ds, batch_size=4, sampler=SubsetRandomSampler([1, 5, 1])),
            "SubsetRandomSampler gives example 1 more than once",
        ),
        (
            lambda ds: DataLoader(ds, batch_size=4, sampler=[0, 2, 2, 3]),
            "list gives example 2 more than once",
        ),
    ],
)
def test_samplers_that_draw_by_chance_or_twice_are_refused(make, match):
    model, (X, y) = _mlp(), _data()
    with pytest.raises(bs.BasinscopeError, match=match + ".*each example once"):
        Objective(model, nn.CrossEntropyLoss(), make(TensorDataset(X, y)))


def test_fixed_samplers_keep_their_examples_and_shuffling_reads_all():
    model, (X, y) = _mlp(), _data()
    ds = TensorDataset(X, y)
    for loader, rows in (
        (DataLoader(ds, batch_size=3, sampler=[4, 0, 7]), [4, 0, 7]),
        (DataLoader(ds, batch_size=None, sampler=SubsetRandomSampler([9, 2])), [2, 9]),
        (DataLoader(ds, batch_size=3, sampler=RandomSampler(ds)), list(range(20))),
        (DataLoader(ds, batch_size=None, shuffle=True), list(range(20))),
    ):
        obj = Objective(model, nn.CrossEntropyLoss(), loader)
        assert torch.equal(obj.x, X[rows]) and torch.equal(obj.y, y[rows])


class _RandomStream(torch.utils.data.IterableDataset):
    def __init__(self, X, y):
        self.X, self.y = X, y

    def __iter__(self):
        for i in torch.randperm(len(self.X))[:15]:
            yield self.X[i], self.y[i]


def test_iterable_dataset_with_another_subset_each_pass_is_refused():
    model, (X, y) = _mlp(), _data()
    torch.manual_seed(0)
    for loader in (
        DataLoader(_RandomStream(X, y), batch_size=4),
        DataLoader(_RandomStream(X, y), batch_size=None),
    ):
        with pytest.raises(bs.BasinscopeError, match="yields other examples on a second pass"):
            Objective(model, nn.CrossEntropyLoss(), loader)
