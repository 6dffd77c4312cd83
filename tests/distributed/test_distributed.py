"""Two gloo ranks on 127.0.0.1 give one process's numbers (issue 13).

Each test starts the ranks itself (``_ranks.run_ranks``: bounded in time, killed on
a hang) and compares with the same scenario run here in one process with one thread.
Bit-identical: everything point-parallel (surfaces, paths, rays, probes, restarts,
draws) and the files written. To rounding (float64, 1e-12 relative): data-parallel
results (an evaluation with fewer points than ranks, gradients, Hessian products and
what Lanczos builds from them).
"""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import scenarios
import torch
from _ranks import run_ranks

import basinscope as bs


def _same(a, b) -> None:
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]), (a, b)


def _close(a, b, rtol=1e-12) -> None:
    a, b = torch.as_tensor(a), torch.as_tensor(b)
    assert torch.allclose(a, b, rtol=rtol, atol=rtol * float(a.abs().max())), (a, b)


def test_evaluations_split_points_exactly_and_data_to_rounding(tmp_path, one_thread):
    ranks = run_ranks("evaluations", tmp_path)
    ref = scenarios.evaluations(tmp_path)
    for got in ranks:
        _same(got["points"], ref["points"])  # 5 points on 2 ranks: 3 + 2
        _same(got["affine"], ref["affine"])
        _same(got["affine_one_points"], ref["affine_one_points"])  # one rank idles
        _same(got["vmap"], ref["vmap"])  # whole blocks of 4 per rank: 8 + 3 points
        for key in ("one", "affine_one"):  # one point on 2 ranks: the data is split
            _close(got[key][0], ref[key][0], 1e-14)
            assert torch.equal(got[key][1], ref[key][1])  # accuracy: exact counts
        _close(got["grad"], ref["grad"])
        _close(got["hvp"], ref["hvp"])
        assert got["plan"] == ref["plan"] == "chain"
    assert torch.equal(ranks[0]["grad"], ranks[1]["grad"])  # the ranks agree exactly
    assert ranks[0]["store"] and ranks[1]["store"]


def test_surfaces_volumes_and_their_files_are_one_process_s(tmp_path, one_thread):
    ranks = run_ranks("landscape", tmp_path)
    here = tmp_path / "one"
    here.mkdir()
    ref = scenarios.landscape(here)
    for got in ranks:
        for key in ("train_loss", "train_acc", "test_loss", "test_acc"):
            assert np.array_equal(getattr(got["plane"], key), getattr(ref["plane"], key))
        assert np.array_equal(got["line"].train_loss, ref["line"].train_loss)
        assert np.array_equal(got["volume"].radii, ref["volume"].radii)
        assert got["volume"].log_volume == ref["volume"].log_volume
        assert got["volume"].evaluations == ref["volume"].evaluations
    # rank 0 wrote the files: the same arrays and attributes as one process's
    with h5py.File(tmp_path / "plane.h5") as a, h5py.File(here / "plane.h5") as b:
        for key in ("train_loss", "train_acc", "test_loss", "test_acc", "xcoordinates"):
            assert np.array_equal(a[key][()], b[key][()]), key
    a, b = bs.Surface.load(tmp_path / "plane.h5"), bs.Surface.load(here / "plane.h5")
    assert a.attrs["origin_train_loss"] == b.attrs["origin_train_loss"]
    assert a.attrs["origin_test_acc"] == b.attrs["origin_test_acc"]
    assert a.attrs["key"] == b.attrs["key"]
    assert (tmp_path / "rays.json").read_text() == (here / "rays.json").read_text()
    # the run killed on 2 ranks resumes in one process and gives the uninterrupted file
    partial = bs.Surface.load(tmp_path / "killed.h5")
    assert 0 < partial.computed.sum() < partial.computed.size
    obj = scenarios.objective()
    d = bs.random_directions(obj, 2, norm="filter", seed=1)
    done = bs.plane(
        obj, d[0], d[1], steps=9, test=scenarios._test_data(), path=tmp_path / "killed.h5", chunk=16
    )
    for key in ("train_loss", "test_loss", "test_acc"):
        assert np.array_equal(getattr(done, key), getattr(ref["plane"], key))


def test_sharpness_measures_on_two_ranks(tmp_path, one_thread):
    ranks = run_ranks("sharpness", tmp_path)
    here = tmp_path / "one"
    here.mkdir()
    ref = scenarios.sharpness(here)
    for got in ranks:  # point-parallel: the same bits as one process
        assert np.array_equal(got["noise"].increases, ref["noise"].increases)
        assert got["pac"].sigmas == ref["pac"].sigmas
        assert got["pac"].increases == ref["pac"].increases
        for key in ("worst", "worst_m"):
            assert got[key].value == ref[key].value
            assert got[key].restart_values == ref[key].restart_values
            assert got[key].evaluations == ref[key].evaluations
        assert got["eps"].value == ref["eps"].value
        # sequential L-BFGS-B on data-parallel gradients: the same to rounding
        assert got["keskar"].value == pytest.approx(ref["keskar"].value, rel=1e-9, abs=1e-12)
    assert (tmp_path / "noise.json").read_text() == (here / "noise.json").read_text()


def test_an_error_on_one_rank_stops_both_with_its_sentence(tmp_path):
    ranks = run_ranks("failures", tmp_path, codes=[0, 3])
    assert ranks[0]["loss"] == ranks[1]["loss"]
    for got in ranks:  # both ranks raise rank 1's sentence
        kind, message = got["error"]
        assert kind == "RankError"
        assert message == ("rank 1 failed: ValueError: this rank's device cannot hold such weights")
    assert ranks[0]["died"].startswith("another process of the group stopped")
