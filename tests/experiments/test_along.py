"""measure_along: every measure at every snapshot of a run, checked against independent numbers.

Loss and accuracy against a direct evaluation of the snapshot's weights (and the numbers
training recorded), λ_max against a dense float64 Hessian, BatchNorm statistics against
their definition, resume after a kill against an uninterrupted run, and the jump of the
test accuracy on synthetic curves.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

import basinscope
from basinscope import hessian
from basinscope.errors import BasinscopeError
from basinscope.experiments import (
    ALONG_MEASURES,
    AlongSettings,
    LambdaMaxSettings,
    TraceSettings,
    VolumeSettings,
    _along,
    measure_along,
)
from basinscope.plots import accuracy_jump, plot_along, plot_training
from basinscope.training import (
    TrainConfig,
    load_checkpoint,
    load_config_data,
    load_trajectory,
    train,
)

# Quick settings for the tests (the defaults are sized for the demo MLP).
QUICK = AlongSettings(
    hessian_trace=TraceSettings(max_products=12),
    volume=VolumeSettings(n_directions=4, tolerance=0.05),
)


def _config(**kw) -> TrainConfig:
    base = dict(
        dataset="digits",
        train_size=300,
        model_kwargs={"widths": (8,)},
        batch_size=64,
        epochs=3,
        lr=0.2,
        snapshot_every=1,
    )
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("along") / "run"
    train(_config(), out_dir=out, progress=False)
    return out


def _snapshot_model(run_dir, i: int) -> torch.nn.Module:
    """The run's model with snapshot ``i``'s weights, built here from the files."""
    model = copy.deepcopy(load_checkpoint(run_dir).model)
    trajectory = load_trajectory(run_dir)
    model.load_state_dict(trajectory.unflatten(i), strict=False)
    return model.eval()


def _files(path) -> dict[str, str]:
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.iterdir())
        if p.is_file()
    }


# ------------------------------------------------------------ loss and accuracy
def test_loss_and_accuracy_equal_a_direct_evaluation_of_each_snapshot(run):
    before = _files(run)
    res = measure_along(run, ["loss", "accuracy"])
    assert _files(run) == before  # the run directory is only read
    data = load_config_data(_config())
    history = {r["epoch"]: r for r in json.loads((run / "metrics.json").read_text())["history"]}
    assert res.epochs == (0, 1, 2, 3)
    assert res.steps == tuple(e * math.ceil(300 / 64) for e in res.epochs) == (0, 5, 10, 15)
    assert res.steps == tuple(history[e]["step"] for e in res.epochs)
    assert res.x_unit == "step" and res.measures == ("loss", "accuracy")
    for i, epoch in enumerate(res.epochs):
        model = _snapshot_model(run, i)
        with torch.no_grad():
            for split, x, y in (
                ("train", data.x_train, data.y_train),
                ("test", data.x_test, data.y_test),
            ):
                out = model(x).double()
                loss = float(F.cross_entropy(out, y))
                acc = float((out.argmax(1) == y).double().mean())
                assert res.series[f"{split}_loss"][i] == pytest.approx(loss, rel=1e-6)
                assert res.series[f"{split}_acc"][i] == acc  # a count over N: exact
                assert res.series[f"{split}_loss"][i] == pytest.approx(
                    history[epoch][f"{split}_loss"], rel=1e-6
                )
                assert res.series[f"{split}_acc"][i] == history[epoch][f"{split}_acc"]
    assert res.series["train_loss"][-1] < res.series["train_loss"][0]


# ------------------------------------------------------------------ curvature
def test_lambda_max_equals_the_top_eigenvalue_of_a_dense_float64_hessian(tmp_path):
    cfg = _config(train_size=120, model_kwargs={"widths": (4,)}, epochs=2)
    train(cfg, out_dir=tmp_path / "tiny", progress=False)
    settings = AlongSettings(
        lambda_max=LambdaMaxSettings(tol=1e-9), hessian_trace=TraceSettings(max_products=40)
    )
    res = measure_along(
        tmp_path / "tiny", ["lambda_max", "hessian_trace"], settings=settings, dtype=torch.float64
    )
    data = load_config_data(cfg)
    x, y = data.x_train.double(), data.y_train
    for i in range(len(res.epochs)):
        model = _snapshot_model(tmp_path / "tiny", i).double()
        names = [n for n, _ in model.named_parameters()]
        shapes = [p.shape for _, p in model.named_parameters()]
        theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

        def loss(flat, model=model, names=names, shapes=shapes):
            parts, k = {}, 0
            for name, shape in zip(names, shapes, strict=True):
                parts[name] = flat[k : k + shape.numel()].view(shape)
                k += shape.numel()
            return F.cross_entropy(functional_call(model, parts, (x,)), y)

        H = torch.autograd.functional.hessian(loss, theta)  # reverse over reverse, float64
        eig = torch.linalg.eigvalsh(H)
        assert res.series["lambda_max"][i] == pytest.approx(float(eig[-1]), rel=1e-6)
        assert res.details["lambda_max"][i]["converged"]
        # Hutchinson's estimate lies within four of its standard errors of the exact trace
        est, se = res.series["hessian_trace"][i], res.series["hessian_trace_se"][i]
        assert abs(est - float(torch.trace(H))) <= 4 * se


def test_batchnorm_statistics_are_recomputed_on_the_training_set(tmp_path):
    cfg = _config(train_size=200, model_kwargs={"widths": (6,), "batch_norm": True}, epochs=2)
    train(cfg, out_dir=tmp_path / "bn", progress=False)
    res = measure_along(tmp_path / "bn", ["loss"])
    assert res.batchnorm == "recomputed"
    data = load_config_data(cfg)
    for i in range(len(res.epochs)):
        model = _snapshot_model(tmp_path / "bn", i)
        linear, bn = model.net[1], model.net[2]
        with torch.no_grad():  # BatchNorm's statistics by definition: mean and unbiased var
            z = linear(data.x_train.flatten(1))
            bn.running_mean.copy_(z.mean(0))
            bn.running_var.copy_(z.var(0, unbiased=True))
            expected = float(F.cross_entropy(model(data.x_train).double(), data.y_train))
        assert res.series["train_loss"][i] == pytest.approx(expected, rel=1e-5)


# --------------------------------------------------------------------- resume
def test_a_killed_run_resumes_to_the_uninterrupted_result_recomputing_nothing(
    run, tmp_path, monkeypatch
):
    full = measure_along(run, out=tmp_path / "full", settings=QUICK)
    assert full.measures == ALONG_MEASURES
    assert json.loads((tmp_path / "full" / "along.json").read_text()) == full.to_dict()

    real = hessian.eigenvalues
    calls = []

    def dies_on_the_third(*a, **kw):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(hessian, "eigenvalues", dies_on_the_third)
    with pytest.raises(KeyboardInterrupt):
        measure_along(run, out=tmp_path / "resumed", settings=QUICK)
    saved = {
        m: json.loads((tmp_path / "resumed" / f"{m}.partial.json").read_text())["items"]
        for m in ALONG_MEASURES
    }
    # snapshots 0 and 1 are complete; snapshot 2 got loss and accuracy, then the kill
    assert {m: len(v) for m, v in saved.items()} == {
        "loss": 3, "accuracy": 3, "lambda_max": 2, "hessian_trace": 2, "epsilon": 2, "volume": 2,
    }  # fmt: skip
    assert not (tmp_path / "resumed" / "along.json").exists()

    built = []
    real_objective = _along.train_objective
    monkeypatch.setattr(hessian, "eigenvalues", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    monkeypatch.setattr(
        _along, "train_objective", lambda *a, **kw: built.append(1) or real_objective(*a, **kw)
    )
    calls.clear()
    resumed = measure_along(run, out=tmp_path / "resumed", settings=QUICK)
    assert len(calls) == 2  # λ_max of snapshots 2 and 3 only
    assert len(built) == 2 * 2  # two Objectives (with and without biases) per missing snapshot
    assert resumed.to_dict() == full.to_dict()  # bit for bit
    calls.clear()
    again = measure_along(run, out=tmp_path / "resumed", settings=QUICK)
    assert calls == [] and again.to_dict() == full.to_dict()


def test_a_file_of_other_settings_or_another_run_is_refused(run, tmp_path):
    out = tmp_path / "along"
    measure_along(run, ["volume"], out=out, settings=QUICK)
    other = AlongSettings(volume=VolumeSettings(n_directions=4, tolerance=0.05, threshold=0.2))
    with pytest.raises(
        BasinscopeError,
        match=r"volume along training of another computation \(different threshold\)",
    ):
        measure_along(run, ["volume"], out=out, settings=other)
    # a measure not computed before is simply added
    measure_along(run, ["loss", "volume"], out=out, settings=QUICK)
    train(_config(seed=1), out_dir=tmp_path / "other", progress=False)
    with pytest.raises(BasinscopeError, match=r"different .*run.*trajectory"):
        measure_along(tmp_path / "other", ["loss"], out=out)


def test_a_model_that_trains_other_parameters_than_the_trajectory_is_blamed(
    run, tmp_path, monkeypatch
):
    """The run's model (its code now freezes the first layer) is named, not the file."""
    import basinscope.training as training

    real = training.load_checkpoint

    def frozen_first_layer(*args, **kwargs):
        ckpt = real(*args, **kwargs)
        ckpt.model.net[1].requires_grad_(False)
        return ckpt

    monkeypatch.setattr(training, "load_checkpoint", frozen_first_layer)
    out = tmp_path / "along"
    with pytest.raises(BasinscopeError) as info:
        measure_along(run, ["loss"], out=out)
    assert str(info.value) == (
        f"the model that run {str(run)!r} builds does not match the trajectory's parameter "
        "names: the trajectory records 'net.1.weight' (and 1 more), which the model does "
        "not train (requires_grad=False); train it again"
    )
    assert not out.exists()


# ----------------------------------------------------------------- bad input
def test_bad_input_is_one_sentence(run, tmp_path):
    with pytest.raises(BasinscopeError, match="does not exist"):
        measure_along(tmp_path / "missing")
    train(_config(snapshot_every=0, epochs=1), out_dir=tmp_path / "plain", progress=False)
    with pytest.raises(BasinscopeError, match="kept no weight snapshots.*snapshot_every > 0"):
        measure_along(tmp_path / "plain")
    with pytest.raises(BasinscopeError, match="unknown measure 'sharpness'.*choose from loss"):
        measure_along(run, ["loss", "sharpness"])
    with pytest.raises(BasinscopeError, match="named twice"):
        measure_along(run, ["loss", "loss"])
    with pytest.raises(BasinscopeError, match="is the run directory"):
        measure_along(run, ["loss"], out=run)
    with pytest.raises(BasinscopeError, match="settings must be an AlongSettings"):
        measure_along(run, settings={"volume": 1})
    with pytest.raises(BasinscopeError, match="volume rule must be one of"):
        VolumeSettings(rule="median")
    with pytest.raises(BasinscopeError, match="volume tolerance must lie in"):
        VolumeSettings(tolerance=2.0)
    with pytest.raises(BasinscopeError, match="trace max_products must be an integer >= 10"):
        TraceSettings(max_products=5)
    with pytest.raises(BasinscopeError, match="λ_max tol must be a positive"):
        LambdaMaxSettings(tol=float("nan"))


def test_an_absolute_basin_that_is_empty_is_recorded_not_raised(run):
    absolute = AlongSettings(volume=VolumeSettings(rule="absolute", threshold=0.5, n_directions=4))
    res = measure_along(run, ["loss", "volume"], settings=absolute)
    assert res.series["train_loss"][0] > 0.5  # at initialisation: above τ, the basin is empty
    assert res.series["log_volume"][0] is None
    assert "below the loss at the minimum" in res.details["volume"][0]["reason"]


# -------------------------------------------------------------- accuracy jump
def test_accuracy_jump_on_synthetic_curves():
    steps = list(range(0, 1001, 50))
    step = [0.1 if s < 400 else 0.9 for s in steps]
    assert accuracy_jump(steps, step) == 400
    spiked = list(step)
    spiked[2] = 0.8  # a transient spike above halfway is not the jump
    assert accuracy_jump(steps, spiked) == 400
    noisy = [
        a + (0.03 if i % 2 else -0.03) * (s >= 400)
        for i, (s, a) in enumerate(zip(steps, step, strict=True))
    ]
    assert accuracy_jump(steps, noisy) == 400  # noise after the jump does not move it
    ramp = np.linspace(0.0, 1.0, 11)
    assert accuracy_jump(np.arange(0, 110, 10), ramp) == 50  # halfway: 0.5, reached at 50
    assert accuracy_jump(steps, [0.5] * len(steps)) is None  # flat
    assert accuracy_jump(steps, step[::-1]) is None  # falling
    small = [0.10 + 0.05 * (s >= 400) for s in steps]
    assert accuracy_jump(steps, small) is None  # a rise under min_rise
    assert accuracy_jump(steps, small, min_rise=0.01) == 400
    gaps = [None if i % 3 == 1 else a for i, a in enumerate(step)]
    assert accuracy_jump(steps, gaps) == 400  # unmeasured points are skipped
    with pytest.raises(BasinscopeError, match="increase"):
        accuracy_jump([0, 2, 1], [0.1, 0.5, 0.9])
    with pytest.raises(BasinscopeError, match="3 steps but 2 values"):
        accuracy_jump([0, 1, 2], [0.1, 0.9])


def test_the_jump_of_a_real_run_and_its_figure(run, tmp_path):
    res = measure_along(run, ["loss", "accuracy", "lambda_max"])
    assert res.jump == accuracy_jump(res.steps, res.series["test_acc"])
    assert res.jump in res.steps[1:]  # digits: test accuracy rises from chance within epochs
    png = plot_along(res.to_dict(), tmp_path / "along.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    wide = [1e-3, 1e-1, 10.0]  # spans decades: drawn on a log scale
    plot_training(
        [0, 1, 2],
        tmp_path / "t.png",
        accuracy={"test": [0.1, 0.5, 0.9]},
        measures={"m": wide},
        jump=1,
    )
    with pytest.raises(BasinscopeError, match="3 steps but 2 values of m"):
        plot_training([0, 1, 2], tmp_path / "u.png", accuracy={}, measures={"m": [1.0, 2.0]})


def test_the_face_exports_it():
    assert basinscope.experiments.measure_along is measure_along
    assert basinscope.plots.accuracy_jump is accuracy_jump
