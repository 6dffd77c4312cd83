"""Tests for basinscope.training: config, lr schedule, determinism, divergence, checkpoints, resume."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

from basinscope.errors import BasinscopeError
from basinscope.training import (
    Checkpoint,
    DataBundle,
    TrainConfig,
    _data,
    load_checkpoint,
    load_trajectory,
    make_model,
    make_scheduler,
    train,
)


def _clusters(n: int = 100, n_classes: int = 3, shape=(1, 4, 4), seed: int = 0) -> DataBundle:
    """Well-separated Gaussian clusters: linearly separable with a wide margin."""
    g = torch.Generator().manual_seed(seed)
    d = math.prod(shape)
    centers = 4.0 * torch.randn(n_classes, d, generator=g)
    y = torch.arange(n) % n_classes
    x = centers[y] + 0.3 * torch.randn(n, d, generator=g)
    yt = torch.arange(30) % n_classes
    xt = centers[yt] + 0.3 * torch.randn(30, d, generator=g)
    return DataBundle("clusters", x.reshape(n, *shape), y, xt.reshape(30, *shape), yt, n_classes)


@pytest.fixture
def data() -> DataBundle:
    return _clusters()


def _small(**kw) -> TrainConfig:
    base = {"model_kwargs": {"widths": (16,)}, "batch_size": 32, "epochs": 3, "lr": 0.05}
    return TrainConfig(**{**base, **kw})


def _params_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# ----------------------------------------------------------------------------- config


def test_config_round_trip_json(tmp_path):
    config = TrainConfig(
        model="cnn",
        model_kwargs={"channels": [4, 8], "head": "avg"},
        dropout=0.1,
        optimizer="sgd",
        momentum=0.9,
        nesterov=True,
        steps=17,
        warmup_steps=3,
        schedule="cosine",
        data_dir=tmp_path,
    )
    d = config.to_dict()
    assert d["model_kwargs"]["channels"] == [4, 8]  # tuples -> lists
    assert d["data_dir"] == str(tmp_path)
    assert TrainConfig(train_size=0.25).to_dict()["train_size"] == 0.25
    again = TrainConfig.from_dict(json.loads(json.dumps(d)))
    assert again == config
    assert again.model_kwargs["channels"] == (4, 8)


def test_from_dict_names_unknown_keys():
    with pytest.raises(BasinscopeError, match="unknown training option.*'bogus', 'lrate'"):
        TrainConfig.from_dict({"lr": 0.1, "lrate": 0.1, "bogus": 1})


def test_from_toml(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text(
        'dataset = "mnist1d"\nmodel = "cnn"\nlr = 0.02\nepochs = 4\n'
        "model_kwargs = { channels = [8, 8] }\n"
    )
    config = TrainConfig.from_toml(path)
    assert (config.dataset, config.model, config.lr, config.epochs) == ("mnist1d", "cnn", 0.02, 4)
    assert config.model_kwargs == {"channels": (8, 8)}
    path.write_text('[train]\noptimizer = "adam"\nlr = 0.001\n')
    assert TrainConfig.from_toml(path).optimizer == "adam"
    path.write_text("lr = = 3\n")
    with pytest.raises(BasinscopeError, match="is not valid TOML"):
        TrainConfig.from_toml(path)
    with pytest.raises(BasinscopeError, match="does not exist"):
        TrainConfig.from_toml(tmp_path / "missing.toml")


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"lr": 0.0}, "lr 0.0 is not valid; give a positive"),
        ({"lr": -1}, "lr -1 is not valid"),
        ({"lr": float("nan")}, "lr nan is not valid"),
        ({"batch_size": 0}, "batch_size 0 is not valid"),
        ({"epochs": 0}, "epochs 0 is not valid"),
        ({"steps": 0}, "steps 0 is not valid"),
        ({"optimizer": "rmsprop"}, "optimizer 'rmsprop' is not valid; accepted: sgd, adam, adamw"),
        ({"schedule": "step"}, "schedule 'step' is not valid; accepted: constant, cosine"),
        ({"dropout": 1.0}, r"dropout 1.0 is not valid; give a number in \[0, 1\)"),
        ({"dropout": -0.1}, "dropout -0.1 is not valid"),
        ({"warmup_steps": -1}, "warmup_steps -1 is not valid"),
        ({"momentum": 0.9, "optimizer": "adam"}, "momentum applies to sgd only"),
        ({"nesterov": True}, "Nesterov momentum needs"),
        ({"model": "resnet"}, "model 'resnet' is not valid; accepted: cnn, mlp"),
        ({"model_kwargs": {"channels": [4]}}, "does not accept option.* channels; accepted: wid"),
        ({"model_kwargs": {"dropout": 0.5}}, "must not contain 'dropout'"),
        ({"device": "gpu7"}, "device 'gpu7' is not valid"),
        ({"seed": -1}, "seed -1 is not valid"),
        (
            {"train_size": 0},
            r"train_size 0 is not valid; give a count >= 1, a fraction in \(0, 1\]",
        ),
        ({"train_size": 1.5}, "train_size 1.5 is not valid"),
        ({"sam_rho": -0.05}, r"sam_rho -0.05 is not valid; give 0 \(no SAM\) or a positive"),
        ({"sam_rho": float("inf")}, "sam_rho inf is not valid"),
        ({"sam_adaptive": True}, "sam_adaptive True is not valid; ASAM needs a positive sam_rho"),
        ({"sam_adaptive": 1, "sam_rho": 0.5}, "sam_adaptive 1 is not valid; give true or false"),
        ({"swa_start": 0}, r"swa_start 0 is not valid; give the epoch \(>= 1\)"),
        ({"swa_start": 2.0}, "swa_start 2.0 is not valid"),
        (
            {"swa_start": 21},
            "swa_start 21 is not valid; give an epoch no later than the last one, 20",
        ),
        ({"swa_lr": 0.01}, "swa_lr 0.01 is not valid; swa_lr needs swa_start"),
        ({"swa_lr": 0.0, "swa_start": 5}, "swa_lr 0.0 is not valid; give a positive"),
        ({"snapshot_every": -1}, r"snapshot_every -1 is not valid; give 0 \(off\)"),
        ({"snapshot_every": True}, "snapshot_every True is not valid"),
    ],
)
def test_validate_errors(kw, match):
    with pytest.raises(BasinscopeError, match=match):
        TrainConfig(**kw).validate()
    with pytest.raises(BasinscopeError, match=match):  # from_dict validates too
        TrainConfig.from_dict(kw)


# ----------------------------------------------------------------------------- lr schedule


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
@pytest.mark.parametrize("warmup", [0, 5])
def test_lr_schedule_matches_closed_form(schedule, warmup):
    lr, total = 0.3, 20
    config = TrainConfig(lr=lr, warmup_steps=warmup, schedule=schedule)
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=lr)
    sched = make_scheduler(opt, config, total)
    seen = []
    for _ in range(total):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    seen.append(opt.param_groups[0]["lr"])

    def closed_form(t: int) -> float:
        if t < warmup:
            return lr * (t + 1) / (warmup + 1)
        if schedule == "constant":
            return lr
        return lr * 0.5 * (1 + math.cos(math.pi * (t - warmup) / (total - warmup)))

    assert seen == pytest.approx([closed_form(t) for t in range(total + 1)], rel=1e-12, abs=1e-15)
    if warmup:
        assert seen[0] == pytest.approx(lr / (warmup + 1)) and seen[warmup] == pytest.approx(lr)
    if schedule == "cosine":
        assert seen[-1] == pytest.approx(0.0, abs=1e-15)


def test_training_follows_the_schedule(data):
    # 100 examples, batch 32 -> 4 steps per epoch (last partial batch kept).
    config = _small(epochs=3, warmup_steps=2, schedule="cosine", lr=0.1)
    result = train(config, data, progress=False)
    assert [r["step"] for r in result.history] == [0, 4, 8, 12]
    total, w = 12, 2
    for rec in result.history[1:]:
        t = rec["step"]
        assert rec["lr"] == pytest.approx(
            0.1 * 0.5 * (1 + math.cos(math.pi * (t - w) / (total - w)))
        )
    assert result.final["lr"] == pytest.approx(0.0, abs=1e-15)


def test_steps_override_epochs(data):
    result = train(_small(epochs=50, steps=7), data, progress=False)
    assert [(r["epoch"], r["step"]) for r in result.history] == [(0, 0), (1, 4), (2, 7)]


def test_eval_every_epoch_false(data):
    result = train(_small(epochs=3, eval_every_epoch=False), data, progress=False)
    assert [r["epoch"] for r in result.history] == [0, 3]


# ----------------------------------------------------------------------------- training


def test_deterministic_and_leaves_global_rng_alone(data):
    config = _small(dropout=0.3, momentum=0.9)
    torch.manual_seed(1234)
    before = torch.get_rng_state()
    a = train(config, data, progress=False)
    assert torch.equal(torch.get_rng_state(), before)
    b = train(config, data, progress=False)
    assert _params_equal(a.model, b.model)
    assert a.history == b.history
    c = train(_small(dropout=0.3, momentum=0.9, seed=1), data, progress=False)
    assert not _params_equal(a.model, c.model)
    assert not a.model.training


def test_separable_problem_reaches_full_train_accuracy(data):
    result = train(_small(epochs=15, lr=0.1), data, progress=False)
    assert result.history[0]["train_acc"] < 0.9
    assert result.final["train_acc"] == 1.0
    assert result.final["test_acc"] == 1.0
    assert result.final["train_loss"] < result.history[0]["train_loss"]
    assert not result.diverged and result.message == ""


def test_history_losses_are_exact_dataset_means(data):
    result = train(_small(epochs=1), data, progress=False)
    with torch.no_grad():
        logits = result.model(data.x_train)
        loss = torch.nn.functional.cross_entropy(logits.double(), data.y_train).item()
        acc = (logits.argmax(1) == data.y_train).double().mean().item()
    assert result.final["train_loss"] == pytest.approx(loss, rel=1e-6)
    assert result.final["train_acc"] == acc


def test_divergence_is_recorded_not_raised(data, tmp_path):
    # Two hidden layers: the logits overflow (on these separable clusters one layer just
    # reaches zero loss with huge margins).
    config = _small(lr=1e6, epochs=5, model_kwargs={"widths": (64, 64)})
    result = train(config, data, out_dir=tmp_path, progress=False)
    assert result.diverged
    assert result.message.startswith("diverged at epoch 1 step ")
    assert "loss became nan" in result.message or "loss became inf" in result.message
    assert "lower the learning rate" in result.message
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["diverged"] is True and metrics["message"] == result.message
    assert not (tmp_path / "state.pt").exists()


def test_progress_bar_shows_loss(data, capsys):
    train(_small(epochs=1), data, progress=True)
    err = capsys.readouterr().err
    assert "loss=" in err and "4/4" in err


def test_cnn_trains_on_sequences():
    data = _clusters(shape=(1, 12))
    result = train(TrainConfig(model="cnn", epochs=2, batch_size=25), data, progress=False)
    assert result.final["step"] == 8 and math.isfinite(result.final["train_loss"])


def test_loads_the_dataset_from_the_config(monkeypatch, data):
    calls = []

    def fake_load_dataset(name, **kwargs):
        calls.append((name, kwargs))
        return data

    monkeypatch.setattr(_data, "load_dataset", fake_load_dataset)
    config = _small(dataset="mnist1d", train_size=100, data_seed=5, epochs=1, label_noise=0.1)
    train(config, progress=False)
    assert calls == [
        (
            "mnist1d",
            {
                "data_dir": None,
                "train_size": 100,
                "standardize": True,
                "seed": 5,
                "label_noise": 0.1,
            },
        )
    ]


def test_bad_labels(data):
    bad = DataBundle("bad", data.x_train, data.y_train + 5, data.x_test, data.y_test, 3)
    with pytest.raises(BasinscopeError, match=r"labels outside \[0, 3\)"):
        train(_small(), bad, progress=False)


# ----------------------------------------------------------------------------- checkpoints


def test_checkpoint_round_trip(data, tmp_path):
    config = _small(model="cnn", model_kwargs={"channels": (4,)}, dropout=0.2)
    result = train(config, data, out_dir=tmp_path / "run", progress=False)
    run = tmp_path / "run"
    assert sorted(p.name for p in run.iterdir()) == ["config.json", "metrics.json", "model.pt"]
    saved = json.loads((run / "config.json").read_text())
    assert saved["input_shape"] == [1, 4, 4] and saved["n_classes"] == 3
    assert saved["dataset_name"] == "clusters" and saved["n_train"] == 100
    assert saved["n_params"] == sum(p.numel() for p in result.model.parameters())
    for path in (run, run / "model.pt", str(run)):
        ckpt = load_checkpoint(path)
        assert isinstance(ckpt, Checkpoint) and ckpt.path == run
        assert ckpt.config == config
        assert not ckpt.model.training
        assert torch.equal(ckpt.model(data.x_test), result.model(data.x_test))
        assert ckpt.metrics["final"] == result.final


def test_mismatched_checkpoint(data, tmp_path):
    train(_small(), data, out_dir=tmp_path, progress=False)
    saved = json.loads((tmp_path / "config.json").read_text())
    saved["model_kwargs"]["widths"] = [8]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    with pytest.raises(
        BasinscopeError,
        match=r"does not match model 'mlp' with input_shape \(1, 4, 4\), n_classes 3 .*"
        r"shape mismatch for net.1.bias \(checkpoint \[16\], model \[8\]\)",
    ):
        load_checkpoint(tmp_path)
    saved["model_kwargs"]["widths"] = [16, 16]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    with pytest.raises(
        BasinscopeError,
        match=r"missing keys net.5.bias, net.5.weight; shape mismatch for net.3.bias",
    ):
        load_checkpoint(tmp_path)


def test_missing_checkpoint_files(tmp_path):
    with pytest.raises(BasinscopeError, match="has no model.pt"):
        load_checkpoint(tmp_path)
    torch.save({}, tmp_path / "model.pt")
    with pytest.raises(BasinscopeError, match="has no config.json"):
        load_checkpoint(tmp_path / "model.pt")


def test_resume_is_bit_identical(data, tmp_path):
    config = _small(epochs=3, dropout=0.2, momentum=0.9, warmup_steps=3, schedule="cosine")
    whole = train(config, data, out_dir=tmp_path / "whole", progress=False)

    class Crash(Exception):
        pass

    def crash_after_first(rec):
        if rec["epoch"] == 1:
            raise Crash

    run = tmp_path / "crashed"
    with pytest.raises(Crash):
        train(config, data, out_dir=run, progress=False, on_epoch_end=crash_after_first)
    assert (run / "state.pt").exists() and not (run / "model.pt").exists()

    seen = []
    resumed = train(config, data, out_dir=run, progress=False, on_epoch_end=seen.append)
    assert [r["epoch"] for r in seen] == [2, 3]  # epoch 1 was not trained again
    assert _params_equal(resumed.model, whole.model)
    assert resumed.history == whole.history
    assert not (run / "state.pt").exists()


def test_state_of_another_config_is_not_resumed(data, tmp_path):
    # Neither resumed nor overwritten (it used to be silently replaced): refused.
    def crash(rec):
        raise RuntimeError("crash")

    with pytest.raises(RuntimeError):
        train(_small(lr=0.2), data, out_dir=tmp_path, progress=False, on_epoch_end=crash)
    state = (tmp_path / "state.pt").read_bytes()
    with pytest.raises(BasinscopeError, match=r"interrupted run of another configuration \(diff"):
        train(_small(lr=0.05), data, out_dir=tmp_path, progress=False)
    assert (tmp_path / "state.pt").read_bytes() == state
    resumed = train(_small(lr=0.2), data, out_dir=tmp_path, progress=False)
    fresh = train(_small(lr=0.2), data, progress=False)
    assert _params_equal(resumed.model, fresh.model)


def test_finished_run_is_not_trained_again(data, tmp_path, monkeypatch):
    config = _small(optimizer="sgd")
    first = train(config, data, out_dir=tmp_path, progress=False)

    def no_step(*args, **kwargs):
        raise AssertionError("optimizer.step called for a finished run")

    monkeypatch.setattr(torch.optim.SGD, "step", no_step)
    again = train(config, data, out_dir=tmp_path, progress=False)
    assert again.reused and not first.reused
    assert again.history == first.history and again.final == first.final
    assert _params_equal(again.model, first.model)
    assert again.out_dir == Path(tmp_path)
    # Different data in the same directory is refused (it used to be trained over it).
    with pytest.raises(BasinscopeError, match=r"another configuration \(different data\)"):
        train(config, _clusters(seed=1), out_dir=tmp_path, progress=False)


# ----------------------------------------------------------------------------- SAM, SWA, trajectory


def bn_mlp(input_shape, n_classes):
    """A model with BatchNorm for the SWA test (built by name: 'test_train:bn_mlp')."""
    d = math.prod(input_shape)
    return torch.nn.Sequential(
        torch.nn.Flatten(),
        torch.nn.Linear(d, 8),
        torch.nn.BatchNorm1d(8),
        torch.nn.ReLU(),
        torch.nn.Linear(8, n_classes),
    )


def _flat(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def _crash_at(epoch: int):
    class Crash(Exception):
        pass

    def hook(rec):
        if rec["epoch"] == epoch:
            raise Crash

    return Crash, hook


def test_config_json_records_every_training_choice(data, tmp_path):
    config = _small(
        optimizer="adamw",
        weight_decay=5e-3,
        dropout=0.1,
        warmup_steps=2,
        schedule="cosine",
        sam_rho=0.5,
        sam_adaptive=True,
        swa_start=2,
        swa_lr=0.01,
        snapshot_every=1,
        epochs=2,
    )
    train(config, data, out_dir=tmp_path, progress=False)
    saved = json.loads((tmp_path / "config.json").read_text())
    expected = {
        "optimizer": "adamw",
        "weight_decay": 5e-3,
        "dropout": 0.1,
        "warmup_steps": 2,
        "schedule": "cosine",
        "sam_rho": 0.5,
        "sam_adaptive": True,
        "swa_start": 2,
        "swa_lr": 0.01,
        "snapshot_every": 1,
    }
    assert {k: saved[k] for k in expected} == expected
    assert load_checkpoint(tmp_path).config == config


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
def test_sam_wraps_each_optimizer_and_follows_the_schedule(data, optimizer):
    lr = 0.1 if optimizer == "sgd" else 0.01
    config = _small(optimizer=optimizer, lr=lr, weight_decay=0.01, warmup_steps=2)
    config.schedule = "cosine"
    plain = train(config, data, progress=False)
    sam = train(dataclasses.replace(config, sam_rho=0.05), data, progress=False)
    total, w = 12, 2
    for rec in sam.history[1:]:  # the base optimizer's lr follows warm-up + cosine
        t = rec["step"]
        assert rec["lr"] == pytest.approx(
            lr * 0.5 * (1 + math.cos(math.pi * (t - w) / (total - w))), abs=1e-15
        )
    assert [r["lr"] for r in sam.history] == [r["lr"] for r in plain.history]
    assert not _params_equal(sam.model, plain.model)
    assert sam.final["train_loss"] < sam.history[0]["train_loss"]


def test_swa_model_is_the_mean_of_the_iterates(data, tmp_path):
    config = _small(epochs=4, swa_start=2, snapshot_every=1, momentum=0.9)
    result = train(config, data, out_dir=tmp_path, progress=False)
    traj = result.trajectory
    assert traj.epochs == (0, 1, 2, 3, 4)
    mean = traj.params[2:].double().mean(0)  # the iterates after epochs 2, 3, 4
    torch.testing.assert_close(_flat(result.model).double(), mean, rtol=1e-6, atol=1e-7)
    assert not torch.allclose(_flat(result.model), traj.params[-1])

    # The last record describes the saved SWA model; final_iterate the last iterate.
    assert result.final["weights"] == "swa" and result.final["swa_n_averaged"] == 3
    assert result.final_iterate == result.history[-2] and "weights" not in result.final_iterate
    assert [r["epoch"] for r in result.history] == [0, 1, 2, 3, 4, 4]
    with torch.no_grad():
        loss = torch.nn.functional.cross_entropy(result.model(data.x_train).double(), data.y_train)
        last = make_model(config, (1, 4, 4), 3)
        torch.nn.utils.vector_to_parameters(traj.params[-1], last.parameters())
        last_loss = torch.nn.functional.cross_entropy(last(data.x_train).double(), data.y_train)
    assert result.final["train_loss"] == pytest.approx(loss.item(), rel=1e-6)
    assert result.final_iterate["train_loss"] == pytest.approx(last_loss.item(), rel=1e-6)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["final"] == result.final and metrics["final_iterate"] == result.final_iterate
    ckpt = load_checkpoint(tmp_path)
    assert torch.equal(_flat(ckpt.model), _flat(result.model))


def test_swa_lr_anneals_to_the_target_from_swa_start(data):
    # 4 steps per epoch: SWALR starts after epoch 2 and reaches swa_lr one epoch later.
    config = _small(epochs=5, swa_start=2, swa_lr=0.01, lr=0.05)
    result = train(config, data, progress=False)
    lrs = [r["lr"] for r in result.history[:-1]]
    assert lrs[:3] == pytest.approx([0.05, 0.05, 0.05], rel=1e-12)
    assert lrs[3:] == pytest.approx([0.01, 0.01, 0.01], rel=1e-12)
    no_swalr = train(dataclasses.replace(config, swa_lr=None), data, progress=False)
    assert [r["lr"] for r in no_swalr.history] == pytest.approx([0.05] * 7)
    assert not _params_equal(result.model, no_swalr.model)


def test_swa_recomputes_batchnorm_statistics(data):
    config = _small(model="test_train:bn_mlp", model_kwargs={}, epochs=3, swa_start=2)
    result = train(config, data, progress=False)
    bn = result.model[2]
    # update_bn: cumulative average over the training set in batches of 32 (32, 32, 32, 4).
    with torch.no_grad():
        h = result.model[1](result.model[0](data.x_train))
        chunks = list(h.split(32))
        mean = torch.stack([c.mean(0) for c in chunks]).mean(0)
        var = torch.stack([c.var(0, unbiased=True) for c in chunks]).mean(0)
    assert bn.num_batches_tracked.item() == 4
    torch.testing.assert_close(bn.running_mean, mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(bn.running_var, var, rtol=1e-5, atol=1e-6)
    assert result.final["weights"] == "swa"


@pytest.mark.parametrize(
    ("extra", "crash"),
    [
        ({"sam_rho": 0.05}, 1),
        ({"sam_rho": 0.5, "sam_adaptive": True, "swa_start": 2}, 1),
        ({"swa_start": 2, "swa_lr": 0.02, "snapshot_every": 1}, 3),
        ({"sam_rho": 0.05, "swa_start": 1, "swa_lr": 0.02, "snapshot_every": 2}, 2),
        ({"sam_rho": 0.05, "swa_start": 3, "snapshot_every": 1}, 4),  # after the last epoch
    ],
)
def test_resume_is_bit_identical_with_sam_and_swa(data, tmp_path, extra, crash):
    config = _small(epochs=4, dropout=0.2, momentum=0.9, warmup_steps=3, schedule="cosine", **extra)
    whole = train(config, data, out_dir=tmp_path / "whole", progress=False)
    Crash, hook = _crash_at(crash)
    run = tmp_path / "crashed"
    with pytest.raises(Crash):
        train(config, data, out_dir=run, progress=False, on_epoch_end=hook)
    assert (run / "state.pt").exists() and not (run / "model.pt").exists()
    seen = []
    resumed = train(config, data, out_dir=run, progress=False, on_epoch_end=seen.append)
    assert [r["epoch"] for r in seen] == list(range(crash + 1, 5))
    assert _params_equal(resumed.model, whole.model)
    assert resumed.history == whole.history
    assert resumed.final_iterate == whole.final_iterate
    if config.snapshot_every:
        assert resumed.trajectory.epochs == whole.trajectory.epochs
        assert torch.equal(resumed.trajectory.params, whole.trajectory.params)
        assert torch.equal(load_trajectory(run).params, whole.trajectory.params)


def test_trajectory_snapshots(data, tmp_path):
    config = _small(epochs=5, snapshot_every=2)
    result = train(config, data, out_dir=tmp_path, progress=False)
    traj = result.trajectory
    n = sum(p.numel() for p in result.model.parameters())
    assert traj.epochs == (0, 2, 4, 5)
    assert traj.params.shape == (4, n) and traj.params.dtype == torch.float32
    assert traj.names == tuple(name for name, _ in result.model.named_parameters())
    assert torch.equal(traj.params[-1], _flat(result.model))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        init = make_model(config, (1, 4, 4), 3)
    assert torch.equal(traj.params[0], _flat(init))
    assert all(not torch.equal(traj.params[i], traj.params[i + 1]) for i in range(3))
    last = traj.unflatten(3)
    assert all(torch.equal(last[k], v) for k, v in result.model.named_parameters())

    loaded = load_trajectory(tmp_path)
    assert loaded.epochs == traj.epochs and torch.equal(loaded.params, traj.params)
    assert loaded.names == traj.names and loaded.shapes == traj.shapes
    again = train(config, data, out_dir=tmp_path, progress=False)
    assert again.reused and torch.equal(again.trajectory.params, traj.params)
    # A finished run whose trajectory went missing is trained again, and writes it.
    (tmp_path / "trajectory.pt").unlink()
    redone = train(config, data, out_dir=tmp_path, progress=False)
    assert not redone.reused and torch.equal(load_trajectory(tmp_path).params, traj.params)
    # Another config (snapshots off) is refused; it used to delete the finished run.
    with pytest.raises(BasinscopeError, match=r"another configuration \(different snapshot_e"):
        train(dataclasses.replace(config, snapshot_every=0), data, out_dir=tmp_path, progress=False)
    assert (tmp_path / "trajectory.pt").exists() and (tmp_path / "model.pt").exists()
    assert train(_small(epochs=1), data, progress=False).trajectory is None


def test_resume_without_its_trajectory_starts_afresh(data, tmp_path):
    config = _small(epochs=3, snapshot_every=1)
    whole = train(config, data, progress=False)
    Crash, hook = _crash_at(2)
    with pytest.raises(Crash):
        train(config, data, out_dir=tmp_path, progress=False, on_epoch_end=hook)
    (tmp_path / "trajectory.pt").unlink()
    seen = []
    resumed = train(config, data, out_dir=tmp_path, progress=False, on_epoch_end=seen.append)
    assert [r["epoch"] for r in seen] == [1, 2, 3]
    assert torch.equal(resumed.trajectory.params, whole.trajectory.params)


def test_load_trajectory_errors(tmp_path):
    with pytest.raises(BasinscopeError, match="does not exist; train with snapshot_every > 0"):
        load_trajectory(tmp_path)
    (tmp_path / "trajectory.pt").write_text("junk")
    with pytest.raises(BasinscopeError, match="could not be read as a weight trajectory"):
        load_trajectory(tmp_path / "trajectory.pt")


def test_swa_start_beyond_a_steps_budget(data):
    # 100 examples in batches of 32: 5 steps make 2 epochs.
    with pytest.raises(BasinscopeError, match="swa_start 3 is not valid; these 5 steps make 2 ep"):
        train(_small(steps=5, swa_start=3), data, progress=False)


def test_runs_saved_before_the_new_options_are_reused(data, tmp_path):
    first = train(_small(), data, out_dir=tmp_path, progress=False)
    saved = json.loads((tmp_path / "config.json").read_text())
    for key in ("sam_rho", "sam_adaptive", "swa_start", "swa_lr", "snapshot_every"):
        del saved[key]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    again = train(_small(), data, out_dir=tmp_path, progress=False)
    assert again.reused and _params_equal(again.model, first.model)


def test_sam_updates_batchnorm_statistics_once_per_step(data):
    config = _small(model="test_train:bn_mlp", model_kwargs={}, epochs=1, sam_rho=0.05)
    result = train(config, data, progress=False)
    assert result.model[2].num_batches_tracked.item() == 4  # 4 steps, not 8 passes
