"""``torchrun -m basinscope ...`` and a study on two ranks give one process's results."""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest
import scenarios
import torch
from _ranks import free_port, rank_env, run_ranks

import basinscope as bs
from basinscope.cli import main


def _torchrun(*argv: str, timeout: float = 240) -> subprocess.CompletedProcess:
    """``torchrun --nproc-per-node 2 -m basinscope ARGV`` on 127.0.0.1, bounded in time."""
    env = rank_env(0, 1, free_port())
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        env.pop(k)
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
        "--master-addr", "127.0.0.1", "--master-port", env.pop("MASTER_PORT"),
        "-m", "basinscope", *argv,
    ]  # fmt: skip
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def test_surface_and_volume_commands_under_torchrun(tmp_path, one_thread, capsys):
    run = tmp_path / "run"
    args = ["--dataset", "digits", "--train-size", "120", "--epochs", "1", "--widths", "8"]
    assert main(["train", *args, "--out", str(run), "--quiet"]) == 0
    common = ["--steps", "5", "--quiet"]
    vol = ["volume", str(run), "--threshold", "0.5", "--rule", "relative", "--directions", "6"]
    done = _torchrun("surface", str(run), *common, "--out", str(tmp_path / "two.h5"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("surface written to") == 1  # rank 0 alone prints
    done = _torchrun(*vol, "--out", str(tmp_path / "two.json"), "--json", str(tmp_path / "v2.json"))
    assert done.returncode == 0, done.stderr[-3000:]
    # the same commands in one process (one thread, as each rank)
    assert main(["surface", str(run), *common, "--out", str(tmp_path / "one.h5")]) == 0
    assert (
        main([*vol, "--out", str(tmp_path / "one.json"), "--json", str(tmp_path / "v1.json")]) == 0
    )
    two, one = bs.Surface.load(tmp_path / "two.h5"), bs.Surface.load(tmp_path / "one.h5")
    for key in ("train_loss", "train_acc", "test_loss", "test_acc"):
        assert np.array_equal(getattr(two, key), getattr(one, key)), key
    assert (tmp_path / "two.json").read_text() == (tmp_path / "one.json").read_text()
    assert (tmp_path / "two_contour.png").exists() or any(tmp_path.glob("two*.png"))


def test_an_error_on_the_ranks_is_one_sentence_and_no_hang(tmp_path):
    done = _torchrun("volume", str(tmp_path / "missing"), "--threshold", "0.5")
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.startswith("basinscope: error:")]
    assert len(lines) == 1 and "missing" in lines[0], done.stderr[-2000:]


def test_commands_that_run_alone_are_refused_under_torchrun(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")  # what torchrun sets; refused before joining
    monkeypatch.setenv("RANK", "0")
    assert main(["train", "--dataset", "digits", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("basinscope: error: basinscope train runs in one process")
    assert err.count("\n") == 1 and not (tmp_path / "r").exists()


def test_a_study_on_two_ranks_is_the_study_of_one_process(tmp_path, one_thread):
    from basinscope.experiments import run_study

    ranks = run_ranks("study", tmp_path)
    here = tmp_path / "one"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reports = run_study(scenarios.tiny_study(), here, progress=False)
    assert ranks[0]["rows"] == ranks[1]["rows"] == [r.row() for r in reports]
    two, one = tmp_path / "tiny", here / "tiny"
    assert (two / "summary.csv").read_text() == (one / "summary.csv").read_text()
    for name in "abc":  # each run was trained where it landed, with the same weights
        a = torch.load(two / name / "model.pt", weights_only=False)
        b = torch.load(one / name / "model.pt", weights_only=False)
        sa = a["state_dict"] if isinstance(a, dict) and "state_dict" in a else a
        sb = b["state_dict"] if isinstance(b, dict) and "state_dict" in b else b
        assert all(torch.equal(sa[k], sb[k]) for k in sb)


def test_sharpness_hessian_path_and_trajectory_commands_on_two_ranks(tmp_path, one_thread):
    import json

    run = tmp_path / "run"
    args = ["--dataset", "digits", "--train-size", "120", "--epochs", "2", "--widths", "8"]
    assert main(["train", *args, "--snapshot-every", "1", "--out", str(run), "--quiet"]) == 0
    (tmp_path / "two").mkdir()
    ranks = run_ranks("cli_commands", tmp_path)
    for name, (code, text) in ranks[0].items():  # rank 0 says it, the other rank is silent
        assert code == 0 and text, name
        assert ranks[1][name] == (0, ""), name
    one = tmp_path / "one"
    one.mkdir()
    for name, line in {  # the same commands, here in one process
        "sharpness": ["sharpness", str(run), "--samples", "4", "--worst-case", "0.05",
                      "--restarts", "3", "--steps", "2", "--json", str(one / "s.json"), "--quiet"],
        "hessian": ["hessian", str(run), "--k", "2", "--json", str(one / "h.json"), "--quiet"],
        "path": ["path", str(run), "--trajectory", "--steps", "3", "--out", str(one / "p.h5"),
                 "--quiet"],
    }.items():  # fmt: skip
        assert main(line) == 0, name
    two = tmp_path / "two"
    s1, s2 = (json.loads((d / "s.json").read_text()) for d in (one, two))
    for key in ("noise_sharpness", "eps_sharpness", "worst_case"):  # point-parallel: exact
        assert s1[key] == s2[key], key
    h1, h2 = (json.loads((d / "h.json").read_text()) for d in (one, two))
    assert h2["top_k"] == pytest.approx(h1["top_k"], rel=1e-4)  # data-parallel, float32
    assert (two / "d.png").stat().st_size > 1000
    p1, p2 = bs.Surface.load(one / "p.h5"), bs.Surface.load(two / "p.h5")
    assert np.array_equal(p1.train_loss, p2.train_loss)
    along = json.loads((two / "along" / "along.json").read_text())
    assert len(along["series"]["train_loss"]) >= 2 and (two / "along" / "along.png").exists()
