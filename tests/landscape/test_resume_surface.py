"""A resumed surface is the surface that was started: keyed, locked, validated up front.

Issue 10, classes 1 (a resume must be the computation that was started), 3 (two
writers of one file), 4 (bad grids refused before any work) and 7 (the environment
is recorded, and a resume under another one warns).
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch
from conftest import small_mlp
from torch import nn

import basinscope as bs
from basinscope._keys import environment
from basinscope.landscape import _grid, interpolate


def _other(model: nn.Module, seed: int = 1, scale: float = 0.3) -> nn.Module:
    other = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return other


def _killed(monkeypatch, after: int, call) -> None:
    """Run ``call()`` with evaluation killed after ``after`` points (a SIGKILL mid-way)."""
    original = bs.Objective.evaluate_affine
    seen = {"n": 0}

    def flaky(self, coefficients, *args, **kwargs):
        if seen["n"] + len(coefficients) > after:
            raise KeyboardInterrupt
        seen["n"] += len(coefficients)
        return original(self, coefficients, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(bs.Objective, "evaluate_affine", flaky)
        with pytest.raises(KeyboardInterrupt):
            call()


def test_another_model_never_resumes_a_killed_surface(tmp_path, monkeypatch):
    # The audit's case: --norm none, same seed, so runs/a and runs/b have identical
    # directions and grid; only the weights differ.
    model_a, X, y = small_mlp(seed=3)
    model_b = _other(model_a)
    obj_a = bs.Objective(model_a, nn.CrossEntropyLoss(), (X, y))
    obj_b = bs.Objective(model_b, nn.CrossEntropyLoss(), (X, y))
    d = bs.random_directions(obj_a, 2, norm="none", seed=0)
    assert torch.equal(d, bs.random_directions(obj_b, 2, norm="none", seed=0))
    path = tmp_path / "m.h5"
    _killed(monkeypatch, 10, lambda: bs.plane(obj_a, d[0], d[1], steps=5, path=path, chunk=5))
    before = path.read_bytes()
    assert 0 < int(bs.Surface.load(path).computed.sum()) < 25
    with pytest.raises(bs.BasinscopeError, match=r"another computation \(different weights\)"):
        bs.plane(obj_b, d[0], d[1], steps=5, path=path, chunk=5)
    assert path.read_bytes() == before  # nothing merged, nothing lost
    # runs/a itself resumes, bit-identical to an uninterrupted run
    resumed = bs.plane(obj_a, d[0], d[1], steps=5, path=path, chunk=5)
    full = bs.plane(obj_a, d[0], d[1], steps=5, chunk=5)
    np.testing.assert_array_equal(resumed.train_loss, full.train_loss)
    assert resumed.attrs["origin_train_loss"] == obj_a.loss()


@pytest.mark.parametrize(
    "change, named",
    [
        ("train data", "data"),
        ("subset", "data"),
        ("loss", "loss"),
        ("test data", "test data"),
        ("no test data", "test data"),
        ("grid", "grid"),
        ("skip bias", "space"),
    ],
)
def test_every_input_of_a_line_is_part_of_its_key(tmp_path, change, named):
    model, X, y = small_mlp(seed=4)
    obj = bs.Objective(model, nn.CrossEntropyLoss(), (X, y))
    d = bs.random_directions(obj, 1, norm="none", seed=0)[0]
    path = tmp_path / "line.h5"
    bs.line(obj, d, steps=5, path=path, test=(X[:20], y[:20]))
    kwargs = {"steps": 5, "test": (X[:20], y[:20])}
    other = obj
    if change == "train data":
        X2 = X.clone()
        X2[0, 0, 0] += 1.0
        other = bs.Objective(model, nn.CrossEntropyLoss(), (X2, y))
    elif change == "subset":
        other = bs.Objective(model, nn.CrossEntropyLoss(), (X, y), subset=40)
    elif change == "loss":
        other = bs.Objective(model, nn.CrossEntropyLoss(label_smoothing=0.1), (X, y))
    elif change == "test data":
        kwargs["test"] = (X[20:40], y[20:40])
    elif change == "no test data":
        kwargs["test"] = None
    elif change == "grid":
        kwargs["span"] = (-1.0, 2.0)
    elif change == "skip bias":
        other = bs.Objective(model, nn.CrossEntropyLoss(), (X, y), skip_bias_norm=True)
        d = torch.zeros(other.n)
        d[0] = 1.0
    with pytest.raises(bs.BasinscopeError, match=rf"different [a-z ,]*\b{named}\b"):
        bs.line(other, d, path=path, **kwargs)


def test_update_bn_data_and_path_ends_are_part_of_the_key(tmp_path):
    from test_paths import _BNNet

    torch.manual_seed(0)
    net = _BNNet().double().eval()
    X, y = torch.randn(40, 4, dtype=torch.float64), torch.randint(0, 3, (40,))
    obj = bs.Objective(net, nn.CrossEntropyLoss(), (X, y), batch_size=20)
    other = _other(net, 7, scale=0.5)
    path = tmp_path / "path.h5"
    interpolate(obj, other, span=(0.0, 1.0), steps=3, update_bn=(X, y), path=path)
    with pytest.raises(bs.BasinscopeError, match="different update bn"):
        interpolate(obj, other, span=(0.0, 1.0), steps=3, update_bn=(X[:30], y[:30]), path=path)
    # the same data in other batches re-estimates other variances: a different computation
    obj10 = bs.Objective(net, nn.CrossEntropyLoss(), (X, y), batch_size=10)
    with pytest.raises(bs.BasinscopeError, match="update bn batch size"):
        interpolate(obj10, other, span=(0.0, 1.0), steps=3, update_bn=(X, y), path=path)
    with pytest.raises(bs.BasinscopeError, match="different directions"):
        interpolate(obj, _other(net, 8), span=(0.0, 1.0), steps=3, update_bn=(X, y), path=path)
    again = interpolate(obj, other, span=(0.0, 1.0), steps=3, update_bn=(X, y), path=path)
    assert again.complete


def test_a_file_without_a_key_is_refused(tmp_path, mlp):
    model, X, y = mlp
    obj = bs.Objective(model, nn.CrossEntropyLoss(), (X, y))
    d = bs.random_directions(obj, 2, seed=0)
    path = tmp_path / "old.h5"
    bs.plane(obj, d[0], d[1], steps=3, path=path)
    with h5py.File(path, "r+") as f:  # as written before surfaces carried a key
        attrs = json.loads(f.attrs["basinscope"])
        del attrs["key"]
        f.attrs["basinscope"] = json.dumps(attrs)
    with pytest.raises(bs.BasinscopeError, match="no record of what it was computed from"):
        bs.plane(obj, d[0], d[1], steps=3, path=path)


def test_surface_records_its_key_and_environment(tmp_path, mlp):
    model, X, y = mlp
    obj = bs.Objective(model, nn.CrossEntropyLoss(), (X, y))
    d = bs.random_directions(obj, 1, seed=0)
    bs.line(obj, d[0], steps=3, path=tmp_path / "l.h5")
    attrs = bs.Surface.load(tmp_path / "l.h5").attrs
    assert attrs["environment"] == environment(obj.device, obj.dtype)
    assert attrs["environment"]["threads"] == torch.get_num_threads()
    fp = obj.fingerprint()
    assert {k: attrs["key"][k] for k in fp} == json.loads(json.dumps(fp))


def test_resume_under_another_thread_count_warns_and_records_it(tmp_path, monkeypatch):
    model, X, y = small_mlp(seed=5)
    obj = bs.Objective(model, nn.CrossEntropyLoss(), (X, y))
    d = bs.random_directions(obj, 2, seed=0)
    path = tmp_path / "p.h5"
    _killed(monkeypatch, 8, lambda: bs.plane(obj, d[0], d[1], steps=4, path=path, chunk=4))
    part = bs.Surface.load(path)
    with h5py.File(path, "r+") as f:  # as if computed with another thread count
        attrs = json.loads(f.attrs["basinscope"])
        attrs["key"]["threads"] = torch.get_num_threads() + 1
        f.attrs["basinscope"] = json.dumps(attrs)
    with pytest.warns(RuntimeWarning, match="threads"):
        done = bs.plane(obj, d[0], d[1], steps=4, path=path, chunk=4)
    assert done.complete
    kept = part.computed
    np.testing.assert_array_equal(done.train_loss[kept], part.train_loss[kept])
    saved = bs.Surface.load(path).attrs
    assert saved["resumed_under"] == [environment(obj.device, obj.dtype)]


def test_a_second_process_on_the_same_file_gets_one_sentence(tmp_path, mlp):
    model, X, y = mlp
    obj = bs.Objective(model, nn.CrossEntropyLoss(), (X, y))
    d = bs.random_directions(obj, 2, seed=0)
    path = tmp_path / "busy.h5"
    holder = (
        "import sys\n"
        "from basinscope._lock import output_lock\n"
        "with output_lock(sys.argv[1], 'the surface file'):\n"
        "    print('held', flush=True)\n"
        "    sys.stdin.read()\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", holder, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "held"  # EOF if the holder died
        with pytest.raises(bs.BasinscopeError, match="is being written by process"):
            bs.plane(obj, d[0], d[1], steps=3, path=path)
        assert not path.exists()  # refused before writing anything
    finally:
        proc.stdin.close()
        proc.wait(timeout=120)
        proc.stdout.close()
    assert bs.plane(obj, d[0], d[1], steps=3, path=path).complete  # free again


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"span": (-float("inf"), 1.0)}, r"span of a line\[0\] must be a finite number"),
        ({"span": (0.0, float("nan"))}, "must be a finite number"),
        ({"steps": 3.5}, "steps of a line must be an integer, got 3.5"),
        ({"steps": "5"}, "must be an integer"),
        ({"chunk": 0}, "chunk must be an integer >= 1"),
    ],
)
def test_bad_line_arguments_are_refused_before_any_work(tmp_path, mlp, kwargs, message):
    model, X, y = mlp
    obj = bs.Objective(model, nn.CrossEntropyLoss(), (X, y))
    d = bs.random_directions(obj, 1, seed=0)[0]
    with pytest.raises(bs.BasinscopeError, match=message):
        bs.line(obj, d, path=tmp_path / "l.h5", **kwargs)
    assert not (tmp_path / "l.h5").exists()


def test_numpy_integer_steps_are_accepted(mlp):
    model, X, y = mlp
    obj = bs.Objective(model, nn.CrossEntropyLoss(), (X, y))
    d = bs.random_directions(obj, 2, seed=0)
    a = bs.plane(obj, d[0], d[1], steps=np.int64(3), ysteps=np.int32(4))
    b = bs.plane(obj, d[0], d[1], steps=3, ysteps=4)
    assert a.shape == (3, 4)
    np.testing.assert_array_equal(a.train_loss, b.train_loss)


def test_nan_direction_is_refused(mlp):
    model, X, y = mlp
    obj = bs.Objective(model, nn.CrossEntropyLoss(), (X, y))
    d = bs.random_directions(obj, 2, seed=0)
    d[1, 3] = float("nan")
    with pytest.raises(bs.BasinscopeError, match="directions contain NaN"):
        bs.plane(obj, d[0], d[1], steps=3)
    with pytest.raises(bs.BasinscopeError, match="margin must be a finite number"):
        bs.three_model_plane(obj, (model, _other(model, 1), _other(model, 2)), margin=np.inf)


def test_a_grid_larger_than_memory_is_refused_with_its_size(monkeypatch, mlp):
    model, X, y = mlp
    obj = bs.Objective(model, nn.CrossEntropyLoss(), (X, y))
    d = bs.random_directions(obj, 2, seed=0)
    with pytest.raises(bs.BasinscopeError, match=r"100000 × 100000 = 10,000,000,000 points"):
        bs.plane(obj, d[0], d[1], steps=100000)
    # the estimate: P · (8 · (4 metrics + 3 · dim + coefficients) + 1) bytes
    monkeypatch.setattr(_grid, "_available_memory", lambda: 100 * 65 - 1)
    with pytest.raises(
        bs.BasinscopeError, match=r"100 points needs at least 6.3 KiB \(6,500 bytes\) of memory"
    ):
        bs.line(obj, d[0], steps=100)
    monkeypatch.setattr(_grid, "_available_memory", lambda: 100 * 65)
    assert bs.line(obj, d[0], steps=100).complete
