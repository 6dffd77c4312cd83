"""The shared foundations of the hostile-input promises: keys, locks, argument checks."""

from __future__ import annotations

import functools
import multiprocessing as mp
import os
import signal
import time

import numpy as np
import pytest
import torch
from torch import nn

import basinscope as bs
from basinscope._checks import (
    check_device,
    check_int,
    check_number,
    check_output_dir,
    check_output_file,
    check_seed,
    check_span,
)
from basinscope._keys import check_key, differences, tensor_digest, warn_soft
from basinscope._lock import lock_path, output_lock


def _objective(model=None, loss=None, x=None, y=None) -> bs.Objective:
    g = torch.Generator().manual_seed(0)
    if model is None:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    x = torch.randn(12, 3, generator=g) if x is None else x
    y = torch.randint(0, 2, (12,), generator=g) if y is None else y
    return bs.Objective(model, loss or nn.CrossEntropyLoss(), (x, y))


# ------------------------------------------------------------------ keys
def test_fingerprint_names_exactly_what_changed():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    base = _objective(model).fingerprint()
    assert _objective(model).fingerprint() == base  # a rebuild is the same computation

    other = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    other.load_state_dict(model.state_dict())
    with torch.no_grad():
        other[2].bias[1] += 1e-7  # one weight, one ulp-scale change
    assert differences(base, _objective(other).fingerprint()) == ["weights"]

    x = torch.randn(12, 3, generator=torch.Generator().manual_seed(0))
    x[5, 1] += 1e-6
    assert differences(base, _objective(model, x=x).fingerprint()) == ["data"]

    smooth = nn.CrossEntropyLoss(label_smoothing=0.1)
    assert differences(base, _objective(model, smooth).fingerprint()) == ["loss"]
    weighted = nn.CrossEntropyLoss(weight=torch.tensor([1.0, 2.0]))
    assert differences(base, _objective(model, weighted).fingerprint()) == ["loss"]


def test_fingerprint_of_function_losses_sees_code_and_arguments():
    f = torch.nn.functional.cross_entropy
    a = _objective(loss=functools.partial(f, label_smoothing=0.1)).fingerprint()
    b = _objective(loss=functools.partial(f, label_smoothing=0.2)).fingerprint()
    c = _objective(loss=functools.partial(f, label_smoothing=0.1)).fingerprint()
    assert a["loss"] != b["loss"] and a["loss"] == c["loss"]

    def scaled(k):
        return lambda o, t: k * f(o, t)

    assert (
        _objective(loss=scaled(1.0)).fingerprint()["loss"]
        != (_objective(loss=scaled(2.0)).fingerprint()["loss"])
    )


def test_check_key_refuses_hard_and_returns_soft_differences(tmp_path):
    saved = {"weights": "a", "data": "b", "threads": 1, "torch_version": "2.0", "grid": [1, 2]}
    assert check_key(tmp_path / "f.h5", saved, dict(saved)) == []
    # tuples read back from JSON as lists: the same key
    assert check_key(tmp_path / "f.h5", saved, {**saved, "grid": (1, 2)}) == []
    soft = check_key(tmp_path / "f.h5", saved, {**saved, "threads": 2})
    assert soft == ["threads"]
    with pytest.warns(RuntimeWarning, match="threads 1 then, 2 now"):
        warn_soft(tmp_path / "f.h5", soft, saved, {**saved, "threads": 2})
    with pytest.raises(bs.BasinscopeError, match=r"\(different data and weights\); delete it"):
        check_key(tmp_path / "f.h5", saved, {**saved, "weights": "x", "data": "y"})
    with pytest.raises(bs.BasinscopeError, match="no record of what it was computed from"):
        check_key(tmp_path / "f.h5", None, saved)


def test_tensor_digest_sees_dtype_shape_and_bits():
    t = torch.arange(6, dtype=torch.float32)
    assert tensor_digest(t) == tensor_digest(t.clone())
    assert tensor_digest(t) != tensor_digest(t.double())
    assert tensor_digest(t) != tensor_digest(t.reshape(2, 3))
    assert tensor_digest(torch.tensor([0.0])) != tensor_digest(torch.tensor([-0.0]))


# ----------------------------------------------------------------- locks
def _hold(path: str, ready, release) -> None:
    with output_lock(path, "the surface file"):
        ready.set()
        release.wait(60)


def _hold_forever(path: str, ready) -> None:
    with output_lock(path, "the run directory"):
        ready.set()
        time.sleep(120)


def test_second_process_gets_one_sentence_naming_the_holder(tmp_path):
    ctx = mp.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    target = tmp_path / "m.h5"
    holder = ctx.Process(target=_hold, args=(str(target), ready, release))
    holder.start()
    try:
        assert ready.wait(60)
        with (
            pytest.raises(bs.BasinscopeError, match=rf"being written by process {holder.pid} on"),
            output_lock(target, "the surface file"),
        ):
            pass
    finally:
        release.set()
        holder.join(60)
    assert holder.exitcode == 0
    assert not lock_path(target).exists()  # released and removed
    with output_lock(target):  # free again
        pass


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    holder = ctx.Process(target=_hold_forever, args=(str(tmp_path / "run"), ready))
    holder.start()
    assert ready.wait(60)
    with (
        pytest.raises(bs.BasinscopeError, match="is being written by process"),
        output_lock(tmp_path / "run"),
    ):
        pass
    os.kill(holder.pid, signal.SIGKILL)
    holder.join(60)
    with output_lock(tmp_path / "run") as path:  # the kernel released the flock
        assert path == tmp_path / "run" / ".basinscope.lock"
        assert str(os.getpid()) in path.read_text()


def test_wait_blocks_until_the_holder_finishes(tmp_path):
    ctx = mp.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    target = tmp_path / "s.h5"
    holder = ctx.Process(target=_hold, args=(str(target), ready, release))
    holder.start()
    assert ready.wait(60)
    import threading

    threading.Timer(0.5, release.set).start()
    with output_lock(target, wait=True, poll=0.05):
        assert holder.join(60) is None and holder.exitcode == 0


def test_lock_is_reentrant_in_one_process(tmp_path):
    with output_lock(tmp_path / "a.h5"), output_lock(tmp_path / "a.h5"):
        assert lock_path(tmp_path / "a.h5").exists()
    assert not lock_path(tmp_path / "a.h5").exists()


# ---------------------------------------------------------------- checks
def test_integer_checks():
    assert check_int("steps", np.int64(7)) == 7 and check_int("steps", 3.0) == 3
    for bad in (3.5, "3", True, float("nan"), None):
        with pytest.raises(bs.BasinscopeError, match="steps must be an integer"):
            check_int("steps", bad)
    with pytest.raises(bs.BasinscopeError, match="steps must be an integer >= 2, got 1"):
        check_int("steps", 1, minimum=2)


def test_number_and_span_checks():
    assert check_number("sigma", np.float32(0.5), positive=True) == 0.5
    assert check_number("r_max", float("inf"), finite=False) == float("inf")
    with pytest.raises(bs.BasinscopeError, match="threshold must be a finite number, got nan"):
        check_number("threshold", float("nan"), finite=False)
    with pytest.raises(bs.BasinscopeError, match="sigma must be positive, got 0.0"):
        check_number("sigma", 0.0, positive=True)
    assert check_span("span", (-1, 2)) == (-1.0, 2.0)
    with pytest.raises(bs.BasinscopeError, match=r"span\[0\] must be a finite number, got -inf"):
        check_span("span", (float("-inf"), 1))
    with pytest.raises(bs.BasinscopeError, match="max > min"):
        check_span("span", (1, 1))


def test_output_location_checks(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert check_output_file(tmp_path / "new" / "deep" / "m.h5") == tmp_path / "new/deep/m.h5"
    with pytest.raises(bs.BasinscopeError, match="is a file, not a directory"):
        check_output_file(blocker / "m.h5")
    with pytest.raises(bs.BasinscopeError, match="is a file, not a directory"):
        check_output_dir(blocker)
    with pytest.raises(bs.BasinscopeError, match="is a directory; give a file name"):
        check_output_file(tmp_path)
    assert not (tmp_path / "new").exists()  # checks create nothing


def test_seed_and_device_checks():
    assert check_seed("seed", 2**63 - 1) == 2**63 - 1
    for bad in (-1, 2**63, 10**20):
        with pytest.raises(bs.BasinscopeError, match="seed must be an integer"):
            check_seed("seed", bad)
    assert check_device("cpu") == torch.device("cpu")
    for bad, why in (("bogus", "not a device torch knows"), ("meta", "holds no data")):
        with pytest.raises(bs.BasinscopeError, match=why):
            check_device(bad)
    if not torch.cuda.is_available():
        with pytest.raises(bs.BasinscopeError, match="CUDA is not available"):
            check_device("cuda:0")
    with pytest.raises(bs.BasinscopeError, match="not available in this torch build"):
        check_device("mps" if not torch.backends.mps.is_available() else "xla")
