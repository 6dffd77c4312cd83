"""The command line's promises under hostile input (issue 10).

Every refusal is one sentence on stderr with exit status 2 and no traceback,
and up-front refusals happen before any work: the functions that would do the
work are replaced by ones that fail the test when called.
"""

from __future__ import annotations

import errno
import json
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from basinscope.cli import _measure, _paths, _sharpness, main


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def _one_sentence(err: str) -> None:
    assert "Traceback" not in err
    assert err.count("\n") == 1 and err.startswith("basinscope: error: "), err


def _train(root, name, *extra):
    out = root / name
    code = main(
        ["train", "--dataset", "digits", "--train-size", "120", "--epochs", "1",
         "--widths", "8", "--out", str(out), "--quiet", *extra]
    )  # fmt: skip
    assert code == 0
    return out


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return _train(tmp_path_factory.mktemp("runs"), "a")


@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if a command gets as far as loading a checkpoint or training."""

    def forbidden(*args, **kwargs):
        pytest.fail("the command started its work before refusing its input")

    for command_module in (_measure, _sharpness, _paths):  # every command that loads one
        monkeypatch.setattr(command_module, "_load", forbidden)
    monkeypatch.setattr("basinscope.training.train", forbidden)
    monkeypatch.setattr("basinscope.experiments.run_study", forbidden)
    monkeypatch.setattr("basinscope.experiments.correlation_report", forbidden)


# ------------------------------------------------------------ numbers (class 4)
@pytest.mark.parametrize(
    "argv, message",
    [
        (["surface", "R", "--steps", "3.5"], "--steps must be an integer, got '3.5'"),
        (["surface", "R", "--steps", "1"], "--steps must be an integer ≥ 2, got 1"),
        (["surface", "R", "--span", "inf"], "--span must be a finite number, got inf"),
        (["surface", "R", "--span", "nan"], "--span must be a finite number, got nan"),
        (["volume", "R", "--threshold", "nan"], "--threshold must be a finite number"),
        (["volume", "R", "--threshold", "inf"], "--threshold must be a finite number"),
        (["volume", "R", "--threshold", "1", "--directions", "1"], "--directions must be"),
        (["volume", "R", "--threshold", "1", "--r-max", "inf"], "--r-max must be a positive"),
        (["volume", "R", "--threshold", "0", "--rule", "relative"], "relative --threshold"),
        (["sharpness", "R", "--sigma", "nan"], "--sigma must be a positive finite number"),
        (["sharpness", "R", "--radius=-inf"], "--radius must be a positive finite number"),
        (["sharpness", "R", "--samples", "2.5"], "--samples must be an integer, got '2.5'"),
        (["sharpness", "R", "--pac-bayes", "--target", "1.5"], "--target must be"),
        (["sharpness", "R", "--rescale", "net.1", "nan"], "positive finite number ALPHA"),
        (["hessian", "R", "--k", "nan"], "--k must be an integer, got 'nan'"),
        (["hessian", "R", "--tol", "inf"], "--tol must be a positive finite number"),
        (["hessian", "R", "--seed", "-1"], "--seed must be an integer ≥ 0"),
        (["path", "R", "R", "--span", "0", "inf"], "--span must be a finite number"),
        (["path", "R", "R", "--margin", "nan"], "--margin must be a finite number ≥ 0"),
        (["run", "--threshold", "nan"], "--threshold must be a finite number"),
        (["run", "--span", "inf"], "--span must be a finite number"),
        (["run", "--epochs", "1.5"], "--epochs must be an integer"),
        (["run", "--study", "dataset-size", "--sizes", "0.5", "nan"], "--sizes must be"),
        (["train", "--lr", "inf", "--out", "x"], "--lr must be a finite number, got inf"),
        (["train", "--batch-size", "3.5", "--out", "x"], "--batch-size must be an integer"),
        (["train", "--train-size", "nan", "--out", "x"], "--train-size must be a count"),
    ],
)
def test_numbers_are_refused_before_any_work(capsys, tmp_path, monkeypatch, no_work, argv, message):
    monkeypatch.chdir(tmp_path)
    code, out, err = _run(capsys, *argv)
    assert code == 2
    _one_sentence(err)
    assert message in err, err
    assert out == "" and list(tmp_path.iterdir()) == []  # nothing computed, nothing written


# ------------------------------------------------------------ outputs (class 4)
@pytest.mark.parametrize(
    "argv, message",
    [
        (["surface", "R", "--out", "F/s.h5"], "the surface file 'F/s.h5' cannot be written"),
        (["surface", "R", "--out", "s.h5"], "the figure 's_contour.png' is a directory"),
        (["surface", "R", "--dim", "1", "--out", "s.h5"], "the figure 's_line.png'"),
        (["sharpness", "R", "--json", "F/s.json"], "the --json file 'F/s.json' cannot be"),
        (["hessian", "R", "--json", "F/h.json"], "the --json file 'F/h.json'"),
        (["hessian", "R", "--density", "F/d.png"], "the --density figure 'F/d.png'"),
        (["volume", "R", "--threshold", "5", "--json", "F/v.json"], "the --json file"),
        (["volume", "R", "--threshold", "5", "--out", "F/v.json"], "'F/v.json' cannot be"),
        (["path", "R", "R", "--out", "F/p.h5"], "the path file 'F/p.h5' cannot be written"),
        (["path", "R", "R", "R", "--out", "s.h5"], "the figure 's_contour.png'"),
        (["train", "--dataset", "digits", "--out", "F/run"], "the run directory 'F/run'"),
        (["train", "--dataset", "digits", "--out", "F"], "'F' is a file, not a directory"),
        (["run", "--out", "F/results"], "the results directory 'F/results'"),
        (["plot", "x.h5", "--out", "F/figs"], "the figure directory 'F/figs'"),
        (["report", "study"], "the report's figure directory 'study/figures'"),
    ],
)
def test_outputs_are_checked_before_any_work(capsys, tmp_path, monkeypatch, no_work, argv, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "F").write_text("a file, not a directory")
    (tmp_path / "s_contour.png").mkdir()
    (tmp_path / "s_line.png").mkdir()
    (tmp_path / "study").mkdir()
    (tmp_path / "study" / "summary.csv").write_text("run,gap_loss\n")
    (tmp_path / "study" / "figures").write_text("a file where the figures go")
    before = sorted(p.name for p in tmp_path.rglob("*"))
    code, out, err = _run(capsys, *argv)
    assert code == 2
    _one_sentence(err)
    assert message in err, err
    assert out == "" and sorted(p.name for p in tmp_path.rglob("*")) == before


# ------------------------------------------------- output errors, locks (class 3, 6)
def test_disk_full_while_writing_is_one_sentence(capsys, run, tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / ".s.h5.k2x9.tmp"))

    monkeypatch.setattr("basinscope.landscape.plane", full)
    code, out, err = _run(capsys, "surface", run, "--steps", 3, "--out", tmp_path / "s.h5")
    assert code == 2
    _one_sentence(err)
    assert f"cannot write {str(tmp_path / 's.h5')!r}: No space left on device" in err


def test_json_that_fails_to_write_names_the_file(capsys, run, tmp_path, monkeypatch):
    def denied(path, payload):
        raise PermissionError(errno.EACCES, "Permission denied", f".{path}.tmp")

    monkeypatch.setattr("basinscope._io.atomic_write_json", denied)
    target = tmp_path / "h.json"
    code, _, err = _run(capsys, "hessian", run, "--k", 1, "--json", target, "--quiet")
    assert code == 2
    _one_sentence(err)
    assert f"cannot write {str(target)!r}: Permission denied" in err


def test_output_locked_by_another_process_is_one_sentence(capsys, run, tmp_path):
    out = tmp_path / "s.h5"
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys
            from basinscope._lock import output_lock
            with output_lock({str(out)!r}, "the surface file"):
                print("held", flush=True)
                sys.stdin.read()
        """)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline() == "held\n"
        code, _, err = _run(capsys, "surface", run, "--steps", 3, "--out", out, "--quiet")
    finally:
        holder.communicate("")
    assert code == 2
    _one_sentence(err)
    assert "is being written by process" in err and str(out) in err


# ------------------------------------------------------- code from files (class 2)
@pytest.fixture(scope="module")
def factory_run(tmp_path_factory):
    """A run trained with a factory model that leaves a mark whenever it is built."""
    root = tmp_path_factory.mktemp("factory")
    mark = root / "factory-ran"
    (root / "marknets.py").write_text(
        "import pathlib\n"
        "from basinscope.training import build_model\n"
        "def make(input_shape, n_classes, **kw):\n"
        f"    pathlib.Path({str(mark)!r}).touch()\n"
        "    return build_model('mlp', input_shape, n_classes, **kw)\n"
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(root))
        run = _train(root, "downloaded", "--model", "marknets:make")
        assert json.loads((run / "config.json").read_text())["model"] == "marknets:make"
        yield run, mark
    sys.modules.pop("marknets", None)


@pytest.fixture
def unmarked(factory_run, capsys):
    run, mark = factory_run
    mark.unlink(missing_ok=True)
    capsys.readouterr()
    return run, mark


@pytest.mark.parametrize(
    "argv",
    [
        ["surface", "D", "--steps", "3", "--out", "s.h5"],
        ["sharpness", "D", "--samples", "2"],
        ["hessian", "D", "--k", "1"],
        ["volume", "D", "--threshold", "5", "--directions", "2"],
        ["path", "D", "D"],
    ],
)
def test_a_run_directory_runs_no_code_without_trust_code(
    capsys, tmp_path, monkeypatch, unmarked, argv
):
    copy, mark = unmarked
    monkeypatch.chdir(tmp_path)
    code, out, err = _run(capsys, *[str(copy) if a == "D" else a for a in argv], "--quiet")
    assert code == 2
    _one_sentence(err)
    assert "'marknets:make'" in err and "--trust-code" in err
    assert not mark.exists() and out == ""


def test_trust_code_runs_the_factory_and_help_says_so(capsys, unmarked):
    copy, mark = unmarked
    code, out, err = _run(capsys, "hessian", copy, "--k", 1, "--trust-code", "--quiet")
    assert code == 0, err
    assert mark.exists() and "λ_max" in out
    for command in ("surface", "sharpness", "hessian", "volume", "path", "train"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert "--trust-code" in text and "runs its code" in text
        if command != "train":
            assert "use only for run directories you trust" in text
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "imports that module" in " ".join(capsys.readouterr().out.split())


# ------------------------------------------------ data of another shape (class 4)
def _npz(path, shape, n_classes):
    g = np.random.default_rng(0)
    x = g.standard_normal((12, *shape)).astype(np.float32)
    y = np.arange(12) % n_classes
    np.savez(path, x_train=x, y_train=y, x_test=x, y_test=y)
    return path


@pytest.mark.parametrize(
    "shape, n_classes, described",
    [((5,), 10, "inputs of shape [5] with 10 classes"), ((1, 8, 8), 3, "[1, 8, 8] with 3")],
)
def test_dataset_of_another_shape_is_refused(
    capsys, run, tmp_path, monkeypatch, shape, n_classes, described
):
    data = _npz(tmp_path / "other.npz", shape, n_classes)
    monkeypatch.setattr("basinscope.hessian.summary", lambda *a, **k: pytest.fail("computed"))
    code, out, err = _run(capsys, "hessian", run, "--dataset", data, "--quiet")
    assert code == 2
    _one_sentence(err)
    assert "was trained on inputs of shape [1, 8, 8] with 10 classes" in err
    assert described in err and out == ""


def test_path_refuses_a_second_model_trained_on_other_shapes(capsys, run, tmp_path):
    data = _npz(tmp_path / "wide.npz", (5,), 10)
    other = tmp_path / "wide"
    code = main(
        ["train", "--dataset", str(data), "--epochs", "1", "--widths", "4", "--out", str(other),
         "--quiet"]
    )  # fmt: skip
    assert code == 0
    capsys.readouterr()
    code, out, err = _run(capsys, "path", run, other, "--out", tmp_path / "p.h5", "--quiet")
    assert code == 2
    _one_sentence(err)
    assert "inputs of shape [5] with 10 classes" in err and "[1, 8, 8]" in err
    assert not (tmp_path / "p.h5").exists()


# -------------------------------------------------- diverged models (class 5)
@pytest.fixture(scope="module")
def diverged(tmp_path_factory):
    out = _train(tmp_path_factory.mktemp("diverged"), "d", "--lr", "1e30")
    assert json.loads((out / "metrics.json").read_text())["diverged"]
    return out


@pytest.mark.parametrize(
    "argv",
    [
        ["sharpness", "--samples", "2"],
        ["hessian", "--k", "1"],
        ["volume", "--threshold", "5", "--directions", "2"],
        ["surface", "--steps", "3"],
    ],
)
def test_a_diverged_run_is_refused_not_measured_as_nan(capsys, diverged, tmp_path, argv):
    command, *rest = argv
    extra = ["--out", tmp_path / "o.h5"] if command == "surface" else []
    code, out, err = _run(capsys, command, diverged, *rest, *extra, "--quiet")
    assert code == 2
    _one_sentence(err)
    assert "ended with train loss nan" in err and "diverged at epoch" in err
    assert "nan" not in out


def test_weights_with_nan_are_refused(capsys, tmp_path, monkeypatch):
    (tmp_path / "nets.py").write_text(
        "import torch.nn as nn\n"
        "def make(input_shape, n_classes):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(64, n_classes))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    state = {"1.weight": torch.zeros(10, 64), "1.bias": torch.zeros(10)}
    state["1.weight"][3, 5] = float("nan")
    torch.save(state, tmp_path / "w.pt")
    code, out, err = _run(
        capsys, "sharpness", tmp_path / "w.pt", "--model", "nets:make", "--dataset", "digits",
        "--samples", "2", "--quiet",
    )  # fmt: skip
    assert code == 2
    _one_sentence(err)
    assert "non-finite weights (1.weight)" in err and out == ""


# --------------------------------------------------------- Ctrl-C (class 6)
def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt


@pytest.mark.parametrize(
    "argv, target, said",
    [
        (["surface", "R", "--steps", "3", "--out", "s.h5"], "basinscope.landscape.plane",
         "the points computed so far are saved in s.h5; rerun the same command to resume"),
        (["path", "R", "R", "--out", "p.h5"], "basinscope.landscape.interpolate",
         "saved in p.h5"),
        (["sharpness", "R", "--samples", "2"], "basinscope.sharpness.epsilon",
         "nothing is saved: the sharpness command writes its results only when it finishes"),
        (["hessian", "R", "--k", "1"], "basinscope.hessian.summary",
         "nothing is saved: the hessian command writes its results only when it finishes"),
        (["train", "--dataset", "digits", "--out", "t"], "basinscope.training.train",
         "finished epochs are saved in t; rerun the same command to resume from the last one"),
        (["run", "--out", "res"], "basinscope.experiments.run_study",
         "finished runs and measures are saved under res/lr-batch"),
        (["report", "study"], "basinscope.experiments.correlation_report", "rerun the command"),
    ],
)  # fmt: skip
def test_ctrl_c_says_what_is_saved(capsys, run, tmp_path, monkeypatch, argv, target, said):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "study").mkdir()
    (tmp_path / "study" / "summary.csv").write_text("run,gap_loss\n")
    monkeypatch.setattr(target, _interrupt)
    quiet = [] if argv[0] == "report" else ["--quiet"]
    code, _, err = _run(capsys, *[str(run) if a == "R" else a for a in argv], *quiet)
    assert code == 130, err
    assert err.startswith("basinscope: interrupted; ") and err.count("\n") == 1
    assert said in err
    assert "finished work is saved and a rerun resumes" not in err


@pytest.mark.parametrize(
    "argv, target",
    [
        (["sharpness", "--samples", "2"], "basinscope.sharpness.average_case"),
        (["sharpness", "--rescale", "net.1", "2"], "basinscope.experiments.compare_measures"),
        (["hessian", "--k", "1"], "basinscope.hessian.summary"),
        (["hessian", "--k", "1", "--density", "d.png"], "basinscope.hessian.density"),
    ],
)
def test_ctrl_c_of_a_command_that_writes_at_its_end_says_nothing_is_saved(
    capsys, run, tmp_path, monkeypatch, argv, target
):
    """``sharpness`` and ``hessian`` write --json (and --density) only when they finish:
    interrupted in any of their measures, nothing is on disk, and Ctrl-C says so."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(target, _interrupt)
    code, _, err = _run(capsys, argv[0], run, *argv[1:], "--json", "r.json", "--quiet")
    assert code == 130, err
    assert err == (
        f"basinscope: interrupted; nothing is saved: the {argv[0]} command writes its "
        "results only when it finishes; rerun it\n"
    )
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------ environment (class 7)
def test_every_json_records_the_environment(capsys, run, tmp_path):
    torch_env = {"torch_version": torch.__version__, "threads": torch.get_num_threads()}
    commands = {
        "sharpness": ["--samples", 2],
        "hessian": ["--k", 1],
        "volume": ["--threshold", 5, "--directions", 2, "--out", tmp_path / "rays.json"],
    }
    for command, extra in commands.items():
        target = tmp_path / f"{command}.json"
        code, _, err = _run(capsys, command, run, *extra, "--json", target, "--quiet")
        assert code == 0, err
        env = json.loads(target.read_text())["environment"]
        assert env == {**torch_env, "device": "cpu", "dtype": "float32"}, command


# ------------------------------------------------ resumable volume (class 6)
def test_volume_killed_between_ray_batches_resumes_to_the_same_result(
    capsys, run, tmp_path, monkeypatch
):
    """``basin_volume(path=)`` stores each batch of rays as it finishes."""
    from basinscope.landscape import _volume as volume

    monkeypatch.setitem(volume.basin_volume.__kwdefaults__, "batch", 2)
    argv = ["volume", run, "--threshold", 5, "--directions", 5, "--quiet"]
    code, _, err = _run(capsys, *argv, "--out", tmp_path / "full.json", "--json", tmp_path / "a")
    assert code == 0, err
    search, calls, kill = volume._search, [], [2]

    def killed_on_the_second_batch(*args):
        calls.append(1)
        if len(calls) in kill:
            raise KeyboardInterrupt
        return search(*args)

    monkeypatch.setattr(volume, "_search", killed_on_the_second_batch)
    part = tmp_path / "part.json"
    code, _, err = _run(capsys, *argv, "--out", part)
    assert code == 130
    assert err == (
        f"basinscope: interrupted; the rays finished so far are saved in {part}; "
        "rerun the same command to resume\n"
    )
    calls.clear()
    kill.clear()
    code, out, err = _run(capsys, *argv, "--out", part, "--json", tmp_path / "b")
    assert code == 0, err
    assert len(calls) == 2  # rays 2-3 and 4: the first batch came from the file
    whole, resumed = (json.loads((tmp_path / n).read_text()) for n in ("a", "b"))
    assert resumed == whole  # bit for bit: every radius, the volume and its interval
    assert f"rays recorded in {part}" in out


def test_volume_names_its_flags_when_the_basin_would_be_empty(capsys, run, tmp_path, monkeypatch):
    """The library's refusal names ``rule='relative'``; the command names its flags."""
    from basinscope.landscape import _volume as volume

    monkeypatch.setattr(volume, "_search", _interrupt)  # no ray is searched
    rays = tmp_path / "rays.json"
    code, out, err = _run(
        capsys, "volume", run, "--threshold", "0.001", "--directions", 2, "--out", rays, "--quiet"
    )
    assert code == 2 and out == ""
    _one_sentence(err)
    m = re.fullmatch(
        r"basinscope: error: --threshold 0\.001 is below the loss at the minimum \((\S+)\); "
        r"the basin would be empty: raise --threshold or use --rule relative\n",
        err,
    )
    assert m and float(m.group(1)) > 0.001, err
    assert not rays.exists()


def test_volume_default_record_lives_in_the_run_directory(capsys, run, monkeypatch):
    files = set(run.glob("volume-*.json"))
    argv = ["volume", run, "--directions", 2, "--quiet"]
    assert _run(capsys, *argv, "--threshold", 5)[0] == 0
    assert _run(capsys, *argv, "--threshold", 6)[0] == 0  # another computation, its own file
    new = set(run.glob("volume-*.json")) - files
    assert len(new) == 2
    for f in new:
        f.unlink()
