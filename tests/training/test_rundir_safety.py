"""Run directories under hostile input: no code from files, one writer, no lost or mixed runs.

Issue 10, classes 2, 3, 4, 6 and 7 for :mod:`basinscope.training` (run directory, models).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from basinscope.errors import BasinscopeError
from basinscope.training import DataBundle, TrainConfig, _rundir, load_checkpoint, train

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent


def _clusters(n: int = 60, seed: int = 0) -> DataBundle:
    """Three separated Gaussian clusters in 6 features (40 train / 15 test per 60)."""
    g = torch.Generator().manual_seed(seed)
    centers = 3.0 * torch.randn(3, 6, generator=g)
    y, yt = torch.arange(n) % 3, torch.arange(15) % 3
    x = centers[y] + 0.3 * torch.randn(n, 6, generator=g)
    xt = centers[yt] + 0.3 * torch.randn(15, 6, generator=g)
    return DataBundle("clusters", x, y, xt, yt, 3)


@pytest.fixture
def data() -> DataBundle:
    return _clusters()


def _cfg(**kw) -> TrainConfig:
    base = {"model_kwargs": {"widths": (8,)}, "batch_size": 16, "epochs": 3, "lr": 0.1}
    return TrainConfig(**{**base, **kw})


def _equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _files(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def _python(code: str, **kw) -> subprocess.Popen:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(str(p) for p in (ROOT / "src", HERE, ROOT / "tests")),
    }
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], env=env, text=True, **kw)


# --------------------------------------------------------------- class 2: no code from files
@pytest.fixture
def evil(tmp_path, monkeypatch):
    """A module ``evilnets`` whose factory leaves a marker file each time it runs."""
    marker = tmp_path / "marker"
    (tmp_path / "evilnets.py").write_text(
        textwrap.dedent(
            f"""
            import pathlib, torch
            def make(input_shape, n_classes):
                pathlib.Path({str(marker)!r}).write_text("ran")
                return torch.nn.Sequential(torch.nn.Linear(input_shape[0], n_classes))
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield marker
    sys.modules.pop("evilnets", None)


def test_opening_a_run_directory_does_not_run_its_factory(data, tmp_path, evil):
    run = tmp_path / "run"
    config = _cfg(model="evilnets:make", model_kwargs={})
    trained = train(config, data, out_dir=run, progress=False)  # the user's own choice: allowed
    assert evil.read_text() == "ran"
    evil.unlink()
    sys.modules.pop("evilnets", None)
    with pytest.raises(
        BasinscopeError,
        match=r"names the factory 'evilnets:make', which would import and run code; "
        r"pass trust_code=True \(CLI: --trust-code\)",
    ):
        load_checkpoint(run)
    assert not evil.exists() and "evilnets" not in sys.modules
    ckpt = load_checkpoint(run, trust_code=True)  # the explicit opt-in runs it
    assert evil.exists() and _equal(ckpt.model, trained.model)


def test_a_shell_command_in_config_json_is_never_run(data, tmp_path):
    run = tmp_path / "run"
    train(_cfg(), data, out_dir=run, progress=False)
    marker = tmp_path / "pwned"
    saved = json.loads((run / "config.json").read_text())
    saved.update(model="os:system", model_kwargs={"command": f"touch {marker}"})
    (run / "config.json").write_text(json.dumps(saved))
    with pytest.raises(BasinscopeError, match="names the factory 'os:system'"):
        load_checkpoint(run)
    # train() into that directory compares it with the caller's config and refuses.
    with pytest.raises(BasinscopeError, match="another configuration .*model and model_kwargs"):
        train(_cfg(), data, out_dir=run, progress=False)
    assert not marker.exists()


def test_a_toml_config_names_a_factory_only_with_trust_code(tmp_path, evil):
    path = tmp_path / "run.toml"
    path.write_text('model = "evilnets:make"\nmodel_kwargs = {}\nlr = 0.05\n')
    with pytest.raises(BasinscopeError, match=r"'.*run.toml' names the factory 'evilnets:make'"):
        TrainConfig.from_toml(path)
    assert TrainConfig.from_toml(path, trust_code=True).model == "evilnets:make"
    assert not evil.exists()  # reading a config never imports the factory


# --------------------------------------------------------------- class 3: one writer, one set
def test_a_second_writer_gets_one_sentence(data, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    holder = _python(
        f"""
        import sys
        from basinscope._lock import output_lock
        with output_lock({str(run)!r}, "the run directory"):
            print("held", flush=True)
            sys.stdin.read()
        """,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(
            BasinscopeError,
            match=rf"the run directory '.*run' is being written by process {holder.pid} ",
        ):
            train(_cfg(), data, out_dir=run, progress=False)
        assert sorted(p.name for p in run.iterdir()) == [".basinscope.lock"]
    finally:
        holder.communicate("", timeout=120)
    assert train(_cfg(), data, out_dir=run, progress=False).final["train_acc"] > 0.9


def test_a_set_mixed_from_two_runs_is_never_reused(data, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    train(_cfg(), data, out_dir=a, progress=False)
    train(_cfg(lr=0.2), data, out_dir=b, progress=False)
    original = (a / "model.pt").read_bytes()
    (a / "model.pt").write_bytes((b / "model.pt").read_bytes())  # same shapes, other run
    with pytest.raises(BasinscopeError, match=r"do not belong together \(model.pt does not"):
        train(_cfg(), data, out_dir=a, progress=False)
    with pytest.raises(BasinscopeError, match="model.pt does not match the model metrics.json"):
        load_checkpoint(a)
    (a / "model.pt").write_bytes(original)
    (a / "config.json").write_bytes((b / "config.json").read_bytes())
    with pytest.raises(BasinscopeError, match="config.json describes another run than metrics"):
        train(_cfg(lr=0.2), data, out_dir=a, progress=False)
    with pytest.raises(BasinscopeError, match="config.json describes another run"):
        load_checkpoint(a)


def test_a_run_without_digests_is_reused_only_if_its_loss_is_its_models(data, tmp_path):
    # Runs written before the digests: the recorded final loss is checked instead.
    a, b = tmp_path / "a", tmp_path / "b"
    first = train(_cfg(), data, out_dir=a, progress=False)
    train(_cfg(lr=0.2), data, out_dir=b, progress=False)
    metrics = json.loads((a / "metrics.json").read_text())
    for key in ("identity_digest", "model_digest", "environment", "environments"):
        del metrics[key]
    (a / "metrics.json").write_text(json.dumps(metrics))
    again = train(_cfg(), data, out_dir=a, progress=False)
    assert again.reused and _equal(again.model, first.model)
    (a / "model.pt").write_bytes((b / "model.pt").read_bytes())
    with pytest.raises(BasinscopeError, match="the loss of model.pt is not the one metrics.json"):
        train(_cfg(), data, out_dir=a, progress=False)


def test_a_crash_between_the_final_writes_leaves_no_set_that_verifies(data, tmp_path, monkeypatch):
    config = _cfg()
    whole = train(config, data, progress=False)
    real = _rundir.atomic_write_json

    class Crash(Exception):
        pass

    def crash_on_metrics(path, obj):
        if Path(path).name == "metrics.json":
            raise Crash
        return real(path, obj)

    monkeypatch.setattr(_rundir, "atomic_write_json", crash_on_metrics)
    with pytest.raises(Crash):
        train(config, data, out_dir=tmp_path, progress=False)
    assert (tmp_path / "model.pt").exists() and (tmp_path / "state.pt").exists()
    monkeypatch.setattr(_rundir, "atomic_write_json", real)
    seen = []
    again = train(config, data, out_dir=tmp_path, progress=False, on_epoch_end=seen.append)
    assert not again.reused and seen == []  # resumed after the last epoch, not reused
    assert _equal(again.model, whole.model) and again.history == whole.history
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "metrics.json", "model.pt"]


# --------------------------------------------------------------- class 6: nothing lost
def test_another_config_never_replaces_a_finished_run(data, tmp_path):
    train(_cfg(snapshot_every=1), data, out_dir=tmp_path, progress=False)
    before = _files(tmp_path)
    with pytest.raises(
        BasinscopeError,
        match=r"holds a finished run of another configuration \(different batch_size, lr and "
        r"snapshot_every\); choose another out_dir \(CLI: --out\) or delete the directory",
    ):
        train(_cfg(lr=0.3, batch_size=8), data, out_dir=tmp_path, progress=False)
    assert _files(tmp_path) == before
    with pytest.raises(BasinscopeError, match="different data"):
        train(_cfg(snapshot_every=1), _clusters(seed=1), out_dir=tmp_path, progress=False)
    assert _files(tmp_path) == before


def test_replace_trains_over_another_run_only_when_asked(data, tmp_path):
    train(_cfg(lr=0.3, snapshot_every=1), data, out_dir=tmp_path, progress=False)
    result = train(_cfg(), data, out_dir=tmp_path, progress=False, replace=True)
    assert not result.reused and _equal(result.model, train(_cfg(), data, progress=False).model)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "metrics.json", "model.pt"]
    assert load_checkpoint(tmp_path).config == _cfg()


def test_a_lone_config_json_of_another_run_is_replaced(data, tmp_path):
    # Killed before its first epoch ended: no work to keep, so the directory is reused.
    train(_cfg(lr=0.3), data, out_dir=tmp_path, progress=False)
    for name in ("model.pt", "metrics.json"):
        (tmp_path / name).unlink()
    result = train(_cfg(), data, out_dir=tmp_path, progress=False)
    assert _equal(result.model, train(_cfg(), data, progress=False).model)
    assert json.loads((tmp_path / "config.json").read_text())["lr"] == 0.1


# --------------------------------------------------------------- class 4: one sentence first
def _with(data: DataBundle, **kw) -> DataBundle:
    return dataclasses.replace(data, **kw)


def _nan_at(x: torch.Tensor, i: int, value: float) -> torch.Tensor:
    x = x.clone()
    x[i, 2] = value
    return x


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda d: {"x_train": _nan_at(d.x_train, 7, math.nan)}, r"x_train holds 1 NaN or infin"),
        (lambda d: {"x_test": _nan_at(d.x_test, 3, math.inf)}, r"x_test holds 1 .*example 3\)"),
        (lambda d: {"y_train": d.y_train[:, None, None]}, r"labels of shape \(60, 1, 1\) is not"),
        # one target per token in training but one label per example in the test split
        (lambda d: {"y_train": d.y_train[:, None]}, r"y_test \[M, 1\]"),
        # int64 inputs are token ids, accepted in both splits or neither
        (
            lambda d: {"x_train": d.x_train.abs().long()},
            "x_test has dtype torch.float32 but x_train",
        ),
        (lambda d: {"x_test": d.x_test.long()}, "x_test has dtype torch.int64 but x_train "),
        (
            lambda d: {"x_train": d.x_train.int(), "x_test": d.x_test.int()},
            "x_train has dtype torch.int32; give floating-point inputs or int64 token ids",
        ),
        (
            lambda d: {"x_train": d.x_train.abs().long(), "x_test": d.x_test.abs().long()},
            "model 'mlp' cannot take inputs of shape",
        ),
        (lambda d: {"x_test": d.x_test[:, :5]}, r"test data of shape \(15, 5\) .* \[M, 6\]"),
        (lambda d: {"y_test": d.y_test[:4]}, r"labels of shape \(4,\) does not match"),
        (lambda d: {"x_test": d.x_test.double()}, "x_test has dtype torch.float64 but x_train"),
        (lambda d: {"x_train": d.x_train.double(), "x_test": d.x_test.double()}, "computes in"),
        (lambda d: {"y_test": d.y_test + 3}, r"y_test holds labels outside \[0, 3\)"),
        (lambda d: {"n_classes": 2.0}, "n_classes 2.0 is not valid"),
    ],
)
def test_bad_data_is_refused_before_training(data, tmp_path, change, match):
    bad = _with(data, **change(data))
    with pytest.raises(BasinscopeError, match=match):
        train(_cfg(), bad, out_dir=tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_a_run_directory_under_a_file_is_refused_before_training(data, tmp_path, monkeypatch):
    (tmp_path / "file").write_text("not a directory")

    def no_step(*args, **kwargs):
        raise AssertionError("trained before refusing the output")

    monkeypatch.setattr(torch.optim.SGD, "step", no_step)
    with pytest.raises(BasinscopeError, match=r"the run directory '.*file/run' cannot be written"):
        train(_cfg(), data, out_dir=tmp_path / "file" / "run", progress=False)


def test_an_empty_test_split_is_accepted(data):
    empty = _with(data, x_test=torch.empty(0), y_test=torch.empty(0, dtype=torch.int64))
    result = train(_cfg(epochs=1), empty, progress=False)
    assert result.final["test_loss"] is None and result.final["train_loss"] > 0


def tuple_model(input_shape, n_classes):
    """A model returning ``(logits, features)``: training needs logits alone."""

    class Pair(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(input_shape[0], n_classes)

        def forward(self, x):
            return self.fc(x), x

    return Pair()


def wide_model(input_shape, n_classes):
    return torch.nn.Linear(input_shape[0], n_classes + 2)


@pytest.mark.parametrize(
    ("model", "match"),
    [
        ("test_rundir_safety:tuple_model", r"returned a tuple for 2 examples; give a model that"),
        ("test_rundir_safety:wide_model", r"returned shape \(2, 5\) for 2 examples"),
    ],
)
def test_a_model_that_does_not_return_logits_is_refused(data, model, match):
    with pytest.raises(BasinscopeError, match=match):
        train(_cfg(model=model, model_kwargs={}), data, progress=False)


def five_features(n_classes):
    return torch.nn.Linear(5, n_classes)


def test_a_model_that_cannot_take_the_inputs_is_refused(data):
    config = _cfg(model="test_rundir_safety:five_features", model_kwargs={})
    with pytest.raises(
        BasinscopeError,
        match=r"'test_rundir_safety:five_features' cannot take inputs of shape \(6,\): Runtime",
    ):
        train(config, data, progress=False)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"batch_size": 3.5}, "batch_size 3.5 is not valid; give a positive integer"),
        ({"batch_size": True}, "batch_size True is not valid"),
        ({"epochs": "3"}, "epochs '3' is not valid"),
        ({"seed": 1.0}, "seed 1.0 is not valid"),
        ({"snapshot_every": 2.5}, "snapshot_every 2.5 is not valid"),
        ({"steps": np.float64(4)}, r"steps np.float64\(4.0\) is not valid"),
        ({"lr": 10**400}, "lr 1000.* is not valid"),
        ({"momentum": math.inf}, "momentum inf is not valid"),
        ({"weight_decay": math.nan}, "weight_decay nan is not valid"),
        ({"label_noise": math.nan}, "label_noise nan is not valid"),
        ({"dropout": math.nan}, "dropout nan is not valid"),
        ({"sam_rho": math.nan}, "sam_rho nan is not valid"),
        ({"swa_start": 2, "swa_lr": math.inf}, "swa_lr inf is not valid"),
        ({"train_size": math.nan}, "train_size nan is not valid"),
        ({"device": 0}, "device 0 is not valid"),
    ],
)
def test_non_integers_and_non_finite_numbers_are_refused(kw, match):
    with pytest.raises(BasinscopeError, match=match):
        TrainConfig(**kw).validate()


def test_numpy_scalars_are_accepted_as_plain_numbers(data, tmp_path):
    config = _cfg(
        batch_size=np.int64(16), epochs=np.int32(2), lr=np.float32(0.25), seed=np.int64(3)
    )
    train(config, data, out_dir=tmp_path, progress=False)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert (saved["batch_size"], saved["epochs"], saved["seed"]) == (16, 2, 3)
    assert saved["lr"] == float(np.float32(0.25)) and type(config.batch_size) is int
    plain = _cfg(batch_size=16, epochs=2, lr=0.25, seed=3)
    assert train(plain, data, out_dir=tmp_path, progress=False).reused  # one identity


# --------------------------------------------------------------- class 7: reproducibility
def _env() -> dict:
    return {
        "torch_version": str(torch.__version__),
        "threads": torch.get_num_threads(),
        "device": "cpu",
        "dtype": "float32",
    }


def test_every_run_records_its_environment(data, tmp_path):
    train(_cfg(), data, out_dir=tmp_path, progress=False)
    assert json.loads((tmp_path / "config.json").read_text())["environment"] == _env()
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["environment"] == _env() and metrics["environments"] == [_env()]
    assert load_checkpoint(tmp_path).info["environment"] == _env()


def test_a_resume_under_another_thread_count_warns(data, tmp_path):
    config = _cfg(epochs=3)

    class Crash(Exception):
        pass

    def crash(rec):
        if rec["epoch"] == 1:
            raise Crash

    with pytest.raises(Crash):
        train(config, data, out_dir=tmp_path, progress=False, on_epoch_end=crash)
    assert torch.load(tmp_path / "state.pt", weights_only=True)["environments"] == [_env()]
    threads = torch.get_num_threads()
    other = 1 if threads != 1 else 2
    torch.set_num_threads(other)
    try:
        with pytest.warns(
            RuntimeWarning,
            match=rf"threads {threads} then, {other} now\): the weights will not be bit-identical",
        ):
            result = train(config, data, out_dir=tmp_path, progress=False)
        again = train(config, data, out_dir=tmp_path, progress=False)  # reuse: no warning
    finally:
        torch.set_num_threads(threads)
    assert again.reused and _equal(again.model, result.model)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert [e["threads"] for e in metrics["environments"]] == [threads, other]


def test_a_resume_after_sigkill_is_bit_identical(data, tmp_path):
    config = _cfg(epochs=4, dropout=0.2, momentum=0.9, warmup_steps=2, schedule="cosine")
    torch.save(dataclasses.asdict(data), tmp_path / "data.pt")
    run = tmp_path / "run"
    child = _python(
        f"""
        import json, os, signal, torch
        from basinscope.training import DataBundle, TrainConfig, train
        torch.set_num_threads({torch.get_num_threads()})
        data = DataBundle(**torch.load({str(tmp_path / "data.pt")!r}))
        config = TrainConfig.from_dict(json.loads({json.dumps(config.to_dict())!r}))
        def kill(rec):
            if rec["epoch"] == 2:
                os.kill(os.getpid(), signal.SIGKILL)
        train(config, data, out_dir={str(run)!r}, progress=False, on_epoch_end=kill)
        """
    )
    assert child.wait(timeout=300) == -signal.SIGKILL
    assert (run / "state.pt").exists() and not (run / "model.pt").exists()
    seen = []
    resumed = train(config, data, out_dir=run, progress=False, on_epoch_end=seen.append)
    whole = train(config, data, progress=False)
    assert [r["epoch"] for r in seen] == [3, 4]
    assert _equal(resumed.model, whole.model) and resumed.history == whole.history
