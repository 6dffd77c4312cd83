"""``basinscope surface --seeds``: one surface per direction seed, their ε-sharpness and
curvature with mean ± SD, a figure and a JSON file; its refusals come first."""

from __future__ import annotations

import json

import numpy as np
import pytest

from basinscope import Surface, sharpness
from basinscope.cli import _measure, _spread, main

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "a"
    code = main(
        ["train", "--dataset", "digits", "--train-size", "120", "--epochs", "1",
         "--widths", "8", "--out", str(out), "--quiet"]
    )  # fmt: skip
    assert code == 0
    return out


def test_seeds_write_each_surface_the_figure_and_the_numbers(capsys, run, tmp_path):
    out = tmp_path / "s.h5"
    code, printed, err = _run(
        capsys, "surface", run, "--seeds", 3, 5, "--dim", 1, "--steps", 21, "--radius", 0.45,
        "--eval-subset", 20, "--out", out, "--quiet",
    )  # fmt: skip
    assert code == 0, err
    assert not out.exists()  # each seed has its own file
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["s_seed3.h5", "s_seed5.h5", "s_spread.json", "s_spread.png"]
    assert (tmp_path / "s_spread.png").read_bytes()[:8] == PNG_SIGNATURE
    numbers = json.loads((tmp_path / "s_spread.json").read_text())
    assert numbers["seeds"] == [3, 5] and numbers["dim"] == 1 and numbers["radius"] == 0.45
    assert "environment" in numbers and "surfaces" in numbers
    for k, seed in enumerate((3, 5)):
        surf = Surface.load(tmp_path / f"s_seed{seed}.h5")
        assert surf.attrs["direction_seed"] == seed and surf.attrs["norm"] == "filter"
        assert surf.test_loss is not None  # --data both by default
        assert numbers["eps"][k] == sharpness.from_surface(surf, 0.45).value
    assert numbers["eps_mean"] == pytest.approx(np.mean(numbers["eps"]), rel=1e-15)
    assert numbers["eps_sd"] == pytest.approx(np.std(numbers["eps"], ddof=1), rel=1e-12)
    curv = np.array(numbers["curvature"])
    assert curv.shape == (2, 1)
    assert numbers["curvature_sd"] == pytest.approx(curv.std(ddof=1), rel=1e-12)
    lines = printed.splitlines()
    assert lines[0].startswith("seed 3: ε-sharpness ") and lines[1].startswith("seed 5: ")
    assert lines[2].startswith("ε-sharpness mean ± SD ") and "curvature mean ± SD" in lines[2]
    assert "note:" not in printed


def test_a_coarse_plane_is_said_in_one_note(capsys, run, tmp_path):
    out = tmp_path / "p.h5"
    code, printed, err = _run(
        capsys, "surface", run, "--seeds", 0, "--steps", 5, "--radius", 0.6,
        "--eval-subset", 20, "--data", "train", "--out", out, "--quiet",
    )  # fmt: skip
    assert code == 0, err
    assert "note: the ε-sharpness of seed(s) 0 is read off fewer than 8" in printed
    assert Surface.load(tmp_path / "p_seed0.h5").train_loss.shape == (5, 5)
    numbers = json.loads((tmp_path / "p_spread.json").read_text())
    assert numbers["eps_sd"] == 0.0 and numbers["curvature_sd_by_direction"] == [0.0, 0.0]
    assert len(numbers["curvature"][0]) == 2  # pooled over the two directions of one seed


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--seeds", "0", "1", "--directions", "hessian"], "cannot be combined with --directions hessian"),
        (["--seeds", "0", "1", "--seed", "4"], "--seed and --seeds both give the direction seeds"),
        (["--seeds", "0", "1", "--seed", "0"], "--seed and --seeds both give the direction seeds"),
        (["--radius", "0.3"], "--radius only applies together with --seeds"),
        (["--seeds", "2", "2"], "--seeds must be distinct, but 2 is given more than once"),
        (["--seeds", "-1"], "--seeds must be an integer ≥ 0"),
        (["--seeds", "0", "--radius", "0"], "--radius must be a positive finite number"),
    ],
)  # fmt: skip
def test_refusals_before_any_work(capsys, run, tmp_path, monkeypatch, extra, message):
    def forbidden(*args, **kwargs):
        pytest.fail("the command started its work before refusing its input")

    monkeypatch.setattr(_measure, "_load", forbidden)
    monkeypatch.setattr(_spread, "_load", forbidden)
    code, _, err = _run(capsys, "surface", run, "--out", tmp_path / "s.h5", *extra)
    assert code == 2
    assert message in err
    assert "Traceback" not in err and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_a_grid_without_zero_is_refused_before_the_slices(capsys, run, tmp_path):
    argv = ["surface", run, "--seeds", 0, 1, "--steps", 4, "--out", tmp_path / "s.h5", "--quiet"]
    code, _, err = _run(capsys, *argv)
    assert code == 2 and "has no point at 0" in err and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []
