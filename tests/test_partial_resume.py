"""Partial results of computations over independent items resume bit for bit.

Each test interrupts a computation after k items (an exception raised from
inside, as a Ctrl-C would), resumes it from its partial-results file and
compares every number with one uninterrupted run.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import small_mlp

import basinscope as bs
from basinscope import _partial, hessian, sharpness
from basinscope.hessian import _density, _random, _trace
from basinscope.landscape import _volume as volume
from basinscope.sharpness import _noise


class Interrupted(Exception):
    """Stands for a Ctrl-C or a kill in the middle of a computation."""


def _interrupt_after(monkeypatch, module, name: str, k: int) -> dict:
    """Make ``module.name`` raise on its (k+1)-th call; returns the call counter."""
    real = getattr(module, name)
    calls = {"n": 0}

    def wrapper(*args, **kwargs):
        if calls["n"] >= k:
            raise Interrupted
        calls["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapper)
    return calls


def _count_calls(monkeypatch, module, name: str) -> dict:
    return _interrupt_after(monkeypatch, module, name, 10**9)


@pytest.fixture
def mlp_obj():
    model, X, y = small_mlp(n=40)
    return bs.Objective(model, torch.nn.CrossEntropyLoss(), (X, y))


def _volume(obj, **kw):
    opts = dict(n_directions=10, batch=3, rule="relative", tolerance=1e-3, bootstrap=50, seed=1)
    return bs.basin_volume(obj, 0.5, **(opts | kw))


def test_volume_interrupted_and_resumed_equals_uninterrupted(mlp_obj, tmp_path, monkeypatch):
    want = _volume(mlp_obj)
    path = tmp_path / "volume.partial.json"
    with monkeypatch.context() as m:
        _interrupt_after(m, volume, "_search", 2)  # two batches of 3 rays, then "Ctrl-C"
        with pytest.raises(Interrupted):
            _volume(mlp_obj, path=path)
    saved = json.loads(path.read_text())
    assert sorted(saved["items"], key=int) == [str(i) for i in range(6)]
    with monkeypatch.context() as m:
        calls = _count_calls(m, volume, "_search")
        got = _volume(mlp_obj, path=path)
    assert calls["n"] == 2  # only the 4 missing rays: batches of 3 and 1
    np.testing.assert_array_equal(got.radii, want.radii)
    np.testing.assert_array_equal(got.crossed, want.crossed)
    assert got.evaluations == want.evaluations
    assert got.log_volume == want.log_volume and got.ci == want.ci and got.ess == want.ess
    # a finished file is a cache: nothing is recomputed
    with monkeypatch.context() as m:
        calls = _count_calls(m, volume, "_search")
        again = _volume(mlp_obj, path=path)
    assert calls["n"] == 0 and again.to_dict() == want.to_dict()
    # more rays reuse the stored ones and equal a fresh run with that many
    more = _volume(mlp_obj, n_directions=13, path=path)
    np.testing.assert_array_equal(more.radii, _volume(mlp_obj, n_directions=13).radii)


def test_volume_partial_file_of_another_computation_is_refused(mlp_obj, tmp_path):
    path = tmp_path / "v.json"
    _volume(mlp_obj, n_directions=3, path=path)
    before = path.read_bytes()
    with pytest.raises(bs.BasinscopeError, match="different threshold"):
        bs.basin_volume(mlp_obj, 0.6, n_directions=3, rule="relative", seed=1, path=path)
    with pytest.raises(bs.BasinscopeError, match="different seed"):
        _volume(mlp_obj, n_directions=3, seed=2, path=path)
    model, X, y = small_mlp(seed=1, n=40)  # other weights, same data
    other = bs.Objective(model, torch.nn.CrossEntropyLoss(), (X, y))
    with pytest.raises(bs.BasinscopeError, match=r"different .*weights.*delete it"):
        _volume(other, n_directions=3, path=path)
    assert path.read_bytes() == before  # never merged, never overwritten


def test_unreadable_partial_file_is_refused_not_overwritten(mlp_obj, tmp_path):
    path = tmp_path / "v.json"
    _volume(mlp_obj, n_directions=3, path=path)
    path.write_text(path.read_text()[:40])  # truncated by a full disk, say
    with pytest.raises(bs.BasinscopeError, match="truncated or not JSON.*delete it"):
        _volume(mlp_obj, n_directions=3, path=path)
    foreign = tmp_path / "notes.json"
    foreign.write_text('{"mine": 1}')
    with pytest.raises(bs.BasinscopeError, match="not a basinscope partial-results file"):
        _volume(mlp_obj, n_directions=3, path=foreign)
    assert foreign.read_text() == '{"mine": 1}'
    # another computation's partial file is not this one's
    noise = tmp_path / "noise.json"
    sharpness.average_case(mlp_obj, 0.05, samples=2, path=noise)
    with pytest.raises(bs.BasinscopeError, match="holds partial average-case"):
        _volume(mlp_obj, n_directions=3, path=noise)


def test_resume_under_another_thread_count_warns(mlp_obj, tmp_path):
    path = tmp_path / "v.json"
    want = _volume(mlp_obj, n_directions=3, path=path)
    data = json.loads(path.read_text())
    data["key"]["threads"] += 7
    path.write_text(json.dumps(data))
    with pytest.warns(RuntimeWarning, match="threads"):
        got = _volume(mlp_obj, n_directions=3, path=path)
    np.testing.assert_array_equal(got.radii, want.radii)


def test_partial_store_round_trips_floats_exactly(tmp_path):
    path = tmp_path / "p.json"
    values = {0: 0.1 + 0.2, 1: -math.inf, 2: 1e-310, 3: [math.pi, True, 7]}
    with _partial.open_partial(path, {"a": 1}, what="things") as done:
        assert done.missing(range(4)) == [0, 1, 2, 3]
        done.update(values)
    with _partial.open_partial(path, {"a": 1}, what="things") as done:
        assert done.missing(range(5)) == [4]
        assert [done.get(i) for i in range(4)] == list(values.values())


def test_average_case_interrupted_and_resumed_equals_uninterrupted(mlp_obj, tmp_path, monkeypatch):
    want = sharpness.average_case(mlp_obj, 0.05, samples=7, chunk=2, seed=3)
    path = tmp_path / "noise.json"
    with monkeypatch.context() as m:
        _interrupt_after(m, _noise, "_gaussian_rows", 2)
        with pytest.raises(Interrupted):
            sharpness.average_case(mlp_obj, 0.05, samples=7, chunk=2, seed=3, path=path)
    with monkeypatch.context() as m:
        calls = _count_calls(m, _noise, "_gaussian_rows")
        got = sharpness.average_case(mlp_obj, 0.05, samples=7, chunk=2, seed=3, path=path)
    assert calls["n"] == 2  # samples 4, 5 and 6
    np.testing.assert_array_equal(got.increases, want.increases)
    assert (got.value, got.stderr) == (want.value, want.stderr)
    with pytest.raises(bs.BasinscopeError, match="different sigma"):
        sharpness.average_case(mlp_obj, 0.1, samples=7, seed=3, path=path)
    with pytest.raises(bs.BasinscopeError, match="different adaptive"):
        sharpness.average_case(mlp_obj, 0.05, samples=7, seed=3, adaptive=True, path=path)


def test_pac_bayes_resumes_its_bisection(tmp_path, monkeypatch):
    g = torch.Generator().manual_seed(0)
    X = torch.randn(40, 4, generator=g, dtype=torch.float64)
    model = torch.nn.Linear(4, 3).double()
    with torch.no_grad():
        model.weight.copy_(torch.randn(3, 4, generator=g, dtype=torch.float64))
        model.bias.zero_()
    y = model(X).argmax(1)  # a classifier that fits its data: error 0
    obj = bs.Objective(model, torch.nn.CrossEntropyLoss(), (X, y))
    opts = dict(samples=3, seed=1, tol=0.2, target=0.1)
    want = sharpness.pac_bayes(obj, **opts)
    assert want.bracketed and len(want.sigmas) == 9
    path = tmp_path / "pac.json"
    with monkeypatch.context() as m:
        _interrupt_after(m, _noise, "_error_increase", 4)
        with pytest.raises(Interrupted):
            sharpness.pac_bayes(obj, path=path, **opts)
    with monkeypatch.context() as m:
        calls = _count_calls(m, _noise, "_error_increase")
        got = sharpness.pac_bayes(obj, path=path, **opts)
    assert calls["n"] == 9 - 4
    assert got == want
    # another target replays the σ it shares with this search
    with monkeypatch.context() as m:
        calls = _count_calls(m, _noise, "_error_increase")
        other = sharpness.pac_bayes(obj, path=path, **(opts | {"target": 0.2}))
    assert other == sharpness.pac_bayes(obj, **(opts | {"target": 0.2}))
    assert calls["n"] < len(other.sigmas)


def test_trace_probes_resume(mlp_obj, tmp_path, monkeypatch):
    for method in ("hutchinson", "hutch++"):
        opts = dict(method=method, rtol=1e-9, min_probes=2, max_products=12, sketch=2, seed=4)
        want = hessian.trace(mlp_obj, **opts)
        path = tmp_path / f"{method}.json"
        probes = {"n": 0}
        real = _trace._rademacher

        def flaky(n, seed, stream, index, real=real, probes=probes):
            if stream == _random._PROBE:
                if probes["n"] >= 3:
                    raise Interrupted
                probes["n"] += 1
            return real(n, seed, stream, index)

        with monkeypatch.context() as m:
            m.setattr(_trace, "_rademacher", flaky)
            with pytest.raises(Interrupted):
                hessian.trace(mlp_obj, path=path, **opts)
        assert len(json.loads(path.read_text())["items"]) == 3
        got = hessian.trace(mlp_obj, path=path, **opts)
        np.testing.assert_array_equal(got.samples, want.samples)
        assert (got.value, got.stderr, got.n_products) == (want.value, want.stderr, 12)


def test_density_runs_resume(mlp_obj, tmp_path, monkeypatch):
    want = hessian.density(mlp_obj, runs=3, steps=6, points=50, seed=2)
    path = tmp_path / "slq.json"
    with monkeypatch.context() as m:
        _interrupt_after(m, _density, "_slq_run", 2)
        with pytest.raises(Interrupted):
            hessian.density(mlp_obj, runs=3, steps=6, points=50, seed=2, path=path)
    with monkeypatch.context() as m:
        calls = _count_calls(m, _density, "_slq_run")
        got = hessian.density(mlp_obj, runs=3, steps=6, points=50, seed=2, path=path)
    assert calls["n"] == 1
    np.testing.assert_array_equal(got.nodes, want.nodes)
    np.testing.assert_array_equal(got.weights, want.weights)
    np.testing.assert_array_equal(got.density, want.density)
    assert got.n_products == want.n_products == 18
