"""The command line after the re-audit of issue 10: every surface drawn, study.json only
after the checks, printed zeros, checks against the loaded data before the first
measure, outputs that are inputs, non-finite measures, σ' bounds, flags in messages."""

from __future__ import annotations

import json
import shutil
import types

import pytest

from basinscope.cli import _measure, _paths, _sharpness, main
from basinscope.cli._study import surface_labels


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def _one_sentence(err: str) -> None:
    assert "Traceback" not in err
    assert err.count("\n") == 1 and err.startswith("basinscope: error: "), err


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "a"
    code = main(
        ["train", "--dataset", "digits", "--train-size", "120", "--epochs", "1",
         "--widths", "8", "--out", str(out), "--quiet"]
    )  # fmt: skip
    assert code == 0
    return out


@pytest.fixture
def no_work(monkeypatch):
    def forbidden(*args, **kwargs):
        pytest.fail("the command started its work before refusing its input")

    for command_module in (_measure, _sharpness, _paths):
        monkeypatch.setattr(command_module, "_load", forbidden)
    monkeypatch.setattr("basinscope.training.train", forbidden)
    monkeypatch.setattr("basinscope.experiments.run_study", forbidden)


# -------------------------------------------------------------- plot (failure 1)
def test_surface_labels_are_the_shortest_distinguishing_suffix():
    assert surface_labels(["r/x/surface.h5", "r/y/surface.h5"]) == ["x/surface", "y/surface"]
    assert surface_labels(["a/p.h5", "b/q.h5"]) == ["p", "q"]
    assert surface_labels(["a/x/s.h5", "b/x/s.h5"]) == ["a/x/s", "b/x/s"]
    with pytest.raises(Exception, match="given twice"):
        surface_labels(["a/s.h5", "./a/s.h5"])


def test_plot_draws_every_file_of_one_stem(capsys, run, tmp_path, monkeypatch):
    line = tmp_path / "line.h5"
    argv = ["surface", run, "--dim", 1, "--steps", 3, "--eval-subset", 20, "--quiet"]
    assert _run(capsys, *argv, "--out", line)[0] == 0
    for d in ("d1", "d2", "d3"):
        (tmp_path / d).mkdir()
        shutil.copy(line, tmp_path / d / "s.h5")
    from basinscope import plots

    panels, real = [], plots.plot_grid
    monkeypatch.setattr(
        plots, "plot_grid", lambda s, *a, **k: panels.append(list(s)) or real(s, *a, **k)
    )
    files = [tmp_path / d / "s.h5" for d in ("d1", "d2", "d3")]
    code, out, err = _run(capsys, "plot", *files, "--out", tmp_path / "figs")
    assert code == 0, err
    drawn = sorted(p.name for p in (tmp_path / "figs").iterdir())
    assert drawn == ["d1_s_line.png", "d2_s_line.png", "d3_s_line.png", "grid.png"]
    assert panels == [["d1/s", "d2/s", "d3/s"]]


# ----------------------------------------------------- study.json (failure 2)
def test_a_refused_run_leaves_study_json_as_it_was(capsys, tmp_path, monkeypatch):
    from basinscope.experiments import STUDIES

    full = STUDIES["lr-batch"]

    def small(**options):  # the built-in study on 150 examples and a narrow MLP, surface only
        study = full(**options)
        study.measures = ("surface",)
        for name, cfg in study.runs.items():
            small = {**cfg.to_dict(), "train_size": 150, "model_kwargs": {"widths": [8]}}
            study.runs[name] = cfg.__class__(**small)
        return study

    monkeypatch.setitem(STUDIES, "lr-batch", small)
    argv = ["run", "--grid-size", 3, "--samples", 2, "--out", tmp_path, "--quiet"]
    assert _run(capsys, *argv, "--epochs", 1)[0] == 0
    study = tmp_path / "lr-batch" / "study.json"
    before = study.read_bytes()
    code, _, err = _run(capsys, *argv, "--epochs", 2)
    assert code == 2 and "another configuration" in err
    code, _, err = _run(capsys, *argv, "--epochs", 1, "--dataset", "nosuch2")
    assert code == 2 and "unknown dataset" in err
    assert study.read_bytes() == before


# ----------------------------------------------------- printed zeros (failure 3)
@pytest.mark.parametrize(
    "final, shown",
    [
        ({"train_loss": 0.0, "train_acc": 1.0, "test_loss": 0.0, "test_acc": 0.0},
         "train loss 0.0000 acc 1.000; test loss 0.0000 acc 0.000"),
        ({"train_loss": 0.5, "train_acc": 0.5, "test_loss": None, "test_acc": None},
         "train loss 0.5000 acc 0.500; test loss n/a acc n/a"),
    ],
)  # fmt: skip
def test_train_prints_zero_as_zero_and_missing_as_na(capsys, tmp_path, monkeypatch, final, shown):
    result = types.SimpleNamespace(final=final, diverged=False, message="")
    monkeypatch.setattr("basinscope.training.train", lambda *a, **k: result)
    code, out, err = _run(capsys, "train", "--dataset", "digits", "--out", tmp_path / "r")
    assert code == 0, err
    assert out.splitlines()[0] == shown


# ------------------------------------------- checks before the work (failure 4, 8)
@pytest.mark.parametrize(
    "argv, message",
    [
        (["run", "--threshold", "0.2"], "--threshold applies to --study dataset-size, poison, remedies, sam-vs-sgd or policy only"),
        (["run", "--rule", "relative"], "--rule applies to --study dataset-size, poison, remedies or sam-vs-sgd only"),
        (["run", "--directions", "5"], "--directions applies to --study dataset-size, poison, remedies, sam-vs-sgd or policy"),
        (["run", "--study", "dataset-size", "--radius", "0.1"], "--radius applies to --study lr-batch,"),
        (["run", "--study", "dataset-size", "--span", "1"], "--span applies"),
        (["run", "--study", "dataset-size", "--sizes", "0.1", "--rule", "relative",
          "--threshold", "-1", "--epochs", "1"], "the volume threshold must be positive"),
        (["surface", "R", "--device", "meta"], "--device 'meta' holds no data"),
        (["sharpness", "R", "--device", "bogus"], "--device 'bogus' is not a device"),
        (["hessian", "R", "--device", "xla"], "--device 'xla'"),
        (["volume", "R", "--threshold", "1", "--device", "mps"], "--device 'mps'"),
        (["path", "R", "R", "--device", "meta"], "--device 'meta'"),
        (["volume", "R", "--threshold", "1", "--out", "v.json", "--json", "v.json"],
         "the --json file 'v.json' is also the --out file"),
    ],
)  # fmt: skip
def test_refused_before_any_work(capsys, tmp_path, monkeypatch, no_work, argv, message):
    monkeypatch.chdir(tmp_path)
    code, out, err = _run(capsys, *argv)
    assert code == 2
    _one_sentence(err)
    assert message in err, err
    assert out == "" and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "argv, message",
    [
        (["sharpness", "--worst-case", "0.1", "--m", "100000000"], "--m must be an integer in [1, 120]"),
        (["sharpness", "--keskar", "0.1", "--subspace", "100000000"], "--subspace must be an integer in [1, "),
        (["surface", "--eval-subset", "100000000"], "--eval-subset must be at most the 120"),
        (["sharpness", "--rescale", "net.1", "1e300"], "alpha = 1e+300 is too large"),
    ],
)  # fmt: skip
def test_options_beyond_the_loaded_data_are_refused_before_measuring(
    capsys, run, tmp_path, monkeypatch, argv, message
):
    from basinscope import sharpness

    def forbidden(*args, **kwargs):
        pytest.fail("measured before refusing the option")

    for name in ("epsilon", "average_case", "worst_case", "keskar"):
        monkeypatch.setattr(sharpness, name, forbidden)
    monkeypatch.setattr("basinscope.experiments.compare_measures", forbidden)
    monkeypatch.chdir(tmp_path)
    code, out, err = _run(capsys, argv[0], run, *argv[1:], "--quiet")
    assert code == 2
    _one_sentence(err)
    assert message in err, err
    assert out == ""


# ---------------------------------------------- outputs that are inputs (failure 6)
@pytest.mark.parametrize(
    "argv, message",
    [
        (["sharpness", "RUN", "--json", "RUN/model.pt"], "is the run directory's model.pt"),
        (["hessian", "RUN", "--json", "RUN/config.json"], "is the run directory's config.json"),
        (["volume", "RUN", "--threshold", "5", "--json", "RUN/metrics.json"], "metrics.json"),
        (["surface", "RUN", "--out", "RUN/model.pt"], "the surface file"),
        (["path", "RUN", "RUN", "--out", "RUN/config.json"], "the path file"),
        (["train", "--config", "RUN/config.json", "--out", "RUN"], "the --config file"),
    ],
)
def test_an_output_that_is_an_input_is_refused(capsys, run, tmp_path, argv, message):
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    code, out, err = _run(capsys, *[str(a).replace("RUN", str(run)) for a in argv])
    assert code == 2
    _one_sentence(err)
    assert message in err and "give another path" in err, err
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before


def test_plot_refuses_a_figure_that_is_the_surface_it_draws(capsys, tmp_path):
    surface = tmp_path / "s_line.png"  # a surface file named like the figure of "s_line"
    surface.write_bytes(b"not drawn over")
    code, _, err = _run(capsys, "plot", surface, "--out", tmp_path)
    assert code == 2
    assert surface.read_bytes() == b"not drawn over"


# ------------------------------------------------ non-finite measures (failure 7)
def test_a_non_finite_measure_is_never_printed_as_a_number(capsys, run, tmp_path):
    js = tmp_path / "s.json"
    code, out, err = _run(capsys, "sharpness", run, "--samples", 2, "--sigma", 1e30,
                          "--json", js, "--quiet")  # fmt: skip
    assert code == 2
    _one_sentence(err)
    assert "nan" not in out and "inf" not in out
    assert "noise sharpness (σ = 1e+30)  not finite (the loss overflowed" in out
    assert "not finite: noise sharpness" in err and not js.exists()
    code, out, err = _run(capsys, "sharpness", run, "--samples", 2, "--sigma", 1e300, "--quiet")
    assert code == 2 and out == ""
    assert "sigma = 1e+300 is too large" in err


def test_an_unbracketed_pac_bayes_sigma_is_printed_as_a_bound(capsys, run, tmp_path):
    js = tmp_path / "p.json"
    code, out, err = _run(capsys, "sharpness", run, "--samples", 2, "--pac-bayes",
                          "--target", 0.99, "--json", js, "--quiet")  # fmt: skip
    assert code == 0, err
    line = next(x for x in out.splitlines() if x.startswith("PAC-Bayes"))
    assert "≥ 10 (a lower bound: the search did not bracket the target" in line
    assert json.loads(js.read_text())["pac_bayes"]["bracketed"] is False
