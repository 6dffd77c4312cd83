"""``basinscope trajectory``: files, numbers equal to the library's, exit statuses, resume."""

from __future__ import annotations

import json

import pytest

from basinscope import hessian
from basinscope.cli import _trajectory, main
from basinscope.experiments import (
    ALONG_MEASURES,
    AlongSettings,
    EpsilonSettings,
    LambdaMaxSettings,
    TraceSettings,
    VolumeSettings,
    measure_along,
)
from basinscope.training import TrainConfig, train

PNG = b"\x89PNG\r\n\x1a\n"


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def _config(**kw) -> TrainConfig:
    base = dict(dataset="digits", train_size=200, model_kwargs={"widths": (8,)}, epochs=2)
    return TrainConfig(**{**base, "batch_size": 50, "lr": 0.2, "snapshot_every": 1, **kw})


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli_along") / "run"
    train(_config(), out_dir=out, progress=False)
    return out


def test_it_writes_along_json_and_png_with_the_library_numbers(capsys, run):
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    code, out, err = _run(
        capsys, "trajectory", run, "--measures", "loss", "accuracy", "lambda_max", "--quiet"
    )
    assert code == 0, err
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
    saved = json.loads((run / "along" / "along.json").read_text())
    assert (run / "along" / "along.png").read_bytes()[:8] == PNG
    lib = measure_along(run, ["loss", "accuracy", "lambda_max"])
    assert saved["series"] == lib.to_dict()["series"]
    assert saved["steps"] == [0, 4, 8] and saved["x_unit"] == "step"
    assert "lambda_max" in out and "numbers written to" in out
    for line, step in zip(out.splitlines()[1:4], saved["steps"], strict=True):
        assert line.split()[1] == str(step)


def test_its_options_reach_the_settings(capsys, run, tmp_path):
    out = tmp_path / "along"
    code, _, err = _run(
        capsys, "trajectory", run, "--measures", "volume", "epsilon", "--out", out,
        "--seed", 3, "--radius", 0.1, "--rule", "absolute", "--threshold", 5, "--directions", 3,
        "--quiet",
    )  # fmt: skip
    assert code == 0, err
    saved = json.loads((out / "along.json").read_text())
    settings = AlongSettings(
        lambda_max=LambdaMaxSettings(seed=3),
        hessian_trace=TraceSettings(seed=3),
        epsilon=EpsilonSettings(seed=3, radius=0.1),
        volume=VolumeSettings(seed=3, rule="absolute", threshold=5.0, n_directions=3),
    )
    assert saved["settings"] == {"epsilon": settings.of("epsilon"), "volume": settings.of("volume")}
    assert saved["series"] == measure_along(run, ["epsilon", "volume"], settings=settings).series


def test_ctrl_c_says_what_is_saved_and_a_rerun_resumes(capsys, run, tmp_path, monkeypatch):
    out = tmp_path / "along"
    real, calls = hessian.eigenvalues, []

    def dies_on_the_second(*a, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(hessian, "eigenvalues", dies_on_the_second)
    argv = ("trajectory", run, "--measures", "loss", "lambda_max", "--out", out, "--quiet")
    code, _, err = _run(capsys, *argv)
    assert code == 130
    assert f"the measures finished so far are saved in {out}" in err
    items = json.loads((out / "lambda_max.partial.json").read_text())["items"]
    assert len(items) == 1
    code, _, err = _run(capsys, *argv)
    assert code == 0, err
    assert len(calls) == 2 + 2  # the rerun computed snapshots 1 and 2 only
    saved = json.loads((out / "along.json").read_text())
    assert saved["series"] == measure_along(run, ["loss", "lambda_max"]).series


@pytest.mark.parametrize(
    "argv, message",
    [
        (["trajectory", "{tmp}/missing"], "run directory '{tmp}/missing' does not exist"),
        (["trajectory", "{plain}"], "kept no weight snapshots"),
        (["trajectory", "{run}", "--measures", "sharp"], "--measures: invalid choice: 'sharp'"),
        (["trajectory", "{run}", "--out", "{run}"], "is the run directory"),
        (["trajectory", "{run}", "--out", "{run}/config.json"], "is a file, not a directory"),
        (["trajectory", "{run}", "--threshold", "-1"], "--threshold must be a positive"),
        (["trajectory", "{run}", "--directions", "1"], "--directions must be an integer ≥ 2"),
    ],
)
def test_bad_input_is_one_sentence_and_status_2(capsys, run, tmp_path, argv, message):
    plain = tmp_path / "plain"
    if "{plain}" in argv:
        train(_config(snapshot_every=0, epochs=1), out_dir=plain, progress=False)
    fill = {"tmp": tmp_path, "run": run, "plain": plain}
    code, _, err = _run(capsys, *[a.format(**fill) for a in argv])
    assert code == 2
    assert message.format(**fill) in err
    assert "Traceback" not in err and err.count("\n") == 1


def test_it_is_listed_and_knows_the_library_measures(capsys):
    assert _trajectory._MEASURES == ALONG_MEASURES
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "trajectory" in capsys.readouterr().out


def test_its_group_adds_only_its_own_sub_parser():
    import argparse

    sub = argparse.ArgumentParser().add_subparsers()
    _trajectory.register(sub)
    assert list(sub.choices) == ["trajectory"]
    assert callable(sub.choices["trajectory"].get_default("func"))
