"""The run directory object and the seams of training/: the resume state's format, the shims."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from basinscope import training
from basinscope.errors import BasinscopeError
from basinscope.training import DataBundle, RunDir, TrainConfig, _config, _loop, train

STATE_KEYS = {
    "identity",
    "model",
    "optimizer",
    "scheduler",
    "swa_model",
    "swa_scheduler",
    "epoch",
    "step",
    "history",
    "wall_time_s",
    "environments",
}


def _data(n: int = 40) -> DataBundle:
    g = torch.Generator().manual_seed(0)
    centers = 3.0 * torch.randn(3, 6, generator=g)
    y, yt = torch.arange(n) % 3, torch.arange(12) % 3
    x = centers[y] + 0.3 * torch.randn(n, 6, generator=g)
    xt = centers[yt] + 0.3 * torch.randn(12, 6, generator=g)
    return DataBundle("clusters", x, y, xt, yt, 3)


def _cfg(**kw) -> TrainConfig:
    base = dict(model="mlp", model_kwargs={"widths": [8]}, epochs=3, batch_size=16, lr=0.1)
    return TrainConfig(**{**base, **kw})


def test_the_resume_state_holds_its_ten_keys_and_the_identity(tmp_path):
    seen = []

    def look(rec):
        seen.append(torch.load(tmp_path / "state.pt", weights_only=True))

    train(
        _cfg(swa_start=2, swa_lr=0.05), _data(), out_dir=tmp_path, progress=False, on_epoch_end=look
    )
    assert [s["epoch"] for s in seen] == [1, 2, 3]
    assert all(set(s) == STATE_KEYS for s in seen)
    assert seen[0]["swa_model"] is None and seen[1]["swa_model"] is not None
    assert seen[1]["swa_scheduler"] is not None and seen[2]["step"] == 9
    assert not (tmp_path / "state.pt").exists()  # dropped once metrics.json seals the run


def test_a_run_directory_resumes_a_run_object_bit_for_bit(tmp_path):
    """RunDir.resume puts state.pt back into a fresh Run: the rest trains as if never stopped."""
    data, config = _data(), _cfg(momentum=0.9, warmup_steps=2, schedule="cosine", sam_rho=0.05)
    whole = train(config, data, progress=False)

    def stop(rec):
        if rec["epoch"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(config, data, out_dir=tmp_path, progress=False, on_epoch_end=stop)
    identity = training._rundir._identity(config, training.data_fingerprint(data))
    with RunDir.open(tmp_path, identity) as run_dir, torch.random.fork_rng(devices=[]):
        run = _loop._start(
            config, data, torch.device("cpu"), training.data_fingerprint(data), run_dir
        )
        assert (run.epoch, run.step, len(run.history)) == (1, 3, 2)
        _loop._epochs(run, False, None)
        result = _loop._finish(run)
    sa, sb = result.model.state_dict(), whole.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sb)
    assert result.history == whole.history


def test_a_run_directory_of_another_run_is_refused_before_work(tmp_path):
    data = _data()
    train(_cfg(), data, out_dir=tmp_path, progress=False)
    identity = training._rundir._identity(_cfg(lr=0.2), training.data_fingerprint(data))
    with RunDir.open(tmp_path, identity) as run_dir:
        with pytest.raises(
            BasinscopeError, match=r"finished run of another configuration \(different lr\)"
        ):
            run_dir.finished(_cfg(lr=0.2), data, replace=False)
        assert run_dir.finished(_cfg(lr=0.2), data, replace=True) is None
    left = {p.name for p in tmp_path.iterdir()}
    assert "config.json" in left and not left & {"model.pt", "metrics.json", "state.pt"}


@pytest.mark.parametrize(
    "value, ok",
    [(1, True), (0.5, True), (np.float32(2.0), True), (np.int64(3), True), (True, False),
     (math.nan, False), (math.inf, False), (-math.inf, False), (10**400, False), ("1", False),
     (None, False)],
)  # fmt: skip
def test_the_number_predicate_is_what_check_number_accepts(value, ok):
    assert _config._is_number(value) is ok


def test_a_patch_on_the_loop_reaches_train(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("reached the loop")

    monkeypatch.setattr("basinscope.training._loop._train", boom)
    with pytest.raises(AssertionError, match="reached the loop"):
        train(_cfg(epochs=1), _data(), progress=False)
