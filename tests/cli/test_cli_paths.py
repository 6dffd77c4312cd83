"""`basinscope path` and `basinscope report` from the command line."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from basinscope import Surface
from basinscope.cli import main


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    for seed in (0, 1, 2):
        code = main(
            [
                "train", "--dataset", "digits", "--train-size", "150", "--epochs", "3",
                "--widths", "16", "--seed", str(seed), "--out", str(root / f"s{seed}"), "--quiet",
            ]
        )  # fmt: skip
        assert code == 0
    return root


def test_interpolation_and_three_model_plane(capsys, runs, tmp_path):
    a, b, c = (runs / f"s{k}" for k in range(3))
    out = tmp_path / "interp.h5"
    code, text, err = _run(
        capsys, "path", a, b, "--steps", 5, "--span", 0, 1, "--out", out, "--quiet"
    )
    assert code == 0, err
    s = Surface.load(out)
    final = [json.loads((r / "metrics.json").read_text())["final"] for r in (a, b)]
    # same training data: the end points are the two runs' own final train and test losses
    assert s.train_loss[0] == pytest.approx(final[0]["train_loss"], rel=1e-5)
    assert s.train_loss[-1] == pytest.approx(final[1]["train_loss"], rel=1e-5)
    assert s.test_acc[-1] == pytest.approx(final[1]["test_acc"], abs=1e-12)
    assert (tmp_path / "interp_line.png").is_file()
    out3 = tmp_path / "plane.h5"
    code, _, err = _run(
        capsys, "path", a, b, c, "--labels", "A", "B", "C", "--steps", 4, "--out", out3, "--quiet"
    )
    assert code == 0, err
    p = Surface.load(out3)
    assert p.train_loss.shape == (4, 4) and p.complete
    assert [lab for lab, _ in p.attrs["marks"]] == ["A", "B", "C"]  # in order, from the file
    losses = [v for _, v in p.attrs["mark_losses"]]
    assert losses[0] == pytest.approx(final[0]["train_loss"], rel=1e-5)
    code, _, err = _run(capsys, "path", a, "--out", tmp_path / "x.h5")
    assert code == 2 and "two checkpoints" in err
    code, _, err = _run(capsys, "path", a, b, "--labels", "A", "--out", tmp_path / "y.h5")
    assert code == 2 and "--labels" in err


def test_report_command(capsys, tmp_path):
    rows = [
        {"run": f"r{k}", "lr": lr, "batch_size": 16, "gap_loss": g, "gap_acc": g / 3,
         "lambda_max": lm, "status": "ok"}
        for k, (lr, g, lm) in enumerate([(0.1, 0.1, 1.0), (0.2, 0.3, 5.0), (0.3, 0.2, 2.0), (0.4, 0.5, 9.0)])
    ]  # fmt: skip
    with (tmp_path / "summary.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    code, text, err = _run(capsys, "report", tmp_path)
    assert code == 0, err
    saved = json.loads((tmp_path / "correlation.json").read_text())
    lam = next(d for d in saved if d["measure"] == "lambda_max" and d["gap"] == "gap_loss")
    assert lam["tau"] == pytest.approx(1.0) and lam["n"] == 4
    assert np.isfinite(lam["p_value"])
    with (tmp_path / "summary.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows[:2])
    code, _, err = _run(capsys, "report", tmp_path)
    assert code == 2 and "at least 3 finished runs" in err and "Traceback" not in err


def test_sam_swa_snapshots_from_the_cli_and_trajectory_plane(capsys, tmp_path):
    run = tmp_path / "swa"
    code, _, err = _run(
        capsys, "train", "--dataset", "digits", "--train-size", "150", "--epochs", "4",
        "--widths", "16", "--sam-rho", "0.05", "--swa-start", "2", "--swa-lr", "0.05",
        "--snapshot-every", "1", "--out", run, "--quiet",
    )  # fmt: skip
    assert code == 0, err
    cfg = json.loads((run / "config.json").read_text())
    assert (cfg["sam_rho"], cfg["swa_start"], cfg["swa_lr"], cfg["snapshot_every"]) == (
        0.05, 2, 0.05, 1,
    )  # fmt: skip
    out = tmp_path / "traj.h5"
    # The trajectory holds the SGD iterates; the run's model is their SWA average,
    # so the plane is centred on the average and the last iterate lies off-centre.
    code, _, err = _run(capsys, "path", run, "--trajectory", "--steps", 3, "--out", out, "--quiet")
    assert code == 0, err
    s = Surface.load(out)
    assert s.complete and s.train_loss.shape == (3, 3)
    assert s.attrs["trajectory_epochs"] == [0, 1, 2, 3, 4]
    evr = s.attrs["explained_variance_ratio"]
    assert 0 < evr[1] <= evr[0] <= 1
    assert (tmp_path / "traj_contour.png").is_file()


def test_a_trajectory_of_another_model_blames_the_model(capsys, tmp_path, monkeypatch):
    """``path FILE --trajectory`` reads the trajectory of FILE's run directory; a model
    given with other parameter names is refused as the model, not as a bad file."""
    import torch

    run = tmp_path / "run"
    code, _, err = _run(
        capsys, "train", "--dataset", "digits", "--train-size", "120", "--epochs", "2",
        "--widths", "8", "--snapshot-every", "1", "--out", run, "--quiet",
    )  # fmt: skip
    assert code == 0, err
    code, _, err = _run(capsys, "path", run / "model.pt", "--trajectory", "--steps", 2,
                        "--data", "train", "--out", tmp_path / "own.h5", "--quiet")  # fmt: skip
    assert code == 0, err  # the run's own weights file: its directory's trajectory
    (tmp_path / "linear_nets.py").write_text(
        "import torch.nn as nn\n"
        "def make(input_shape, n_classes):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(64, n_classes))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    torch.save({"1.weight": torch.zeros(10, 64), "1.bias": torch.zeros(10)}, run / "w.pt")
    out = tmp_path / "other.h5"
    code, text, err = _run(capsys, "path", run / "w.pt", "--model", "linear_nets:make",
                           "--dataset", "digits", "--trajectory", "--out", out, "--quiet")  # fmt: skip
    assert code == 2 and text == ""
    assert err == (
        "basinscope: error: the model given does not match the trajectory's parameter names: "
        "the trajectory records 'net.1.weight' (and 3 more), which the model lacks; measure "
        "the model the trajectory was recorded from\n"
    )
    assert not out.exists()


def test_sharpness_suite_and_rescale_from_the_cli(capsys, runs, tmp_path):
    run = runs / "s0"
    out = tmp_path / "sharp.json"
    code, text, err = _run(
        capsys, "sharpness", run, "--worst-case", "0.1", "--keskar", "1e-3", "--pac-bayes",
        "--samples", "4", "--json", out, "--quiet",
    )  # fmt: skip
    assert code == 0, err
    saved = json.loads(out.read_text())
    assert saved["worst_case"]["radius"] == 0.1 and saved["worst_case"]["value"] > 0
    assert saved["keskar"]["epsilon"] == 1e-3 and "Keskar φ" in text
    assert saved["pac_bayes"]["sigma"] > 0 and "PAC-Bayes" in text
    code, text, err = _run(capsys, "sharpness", run, "--rescale", "net.1", "8", "--quiet")
    assert code == 0, err
    rows = {line.split()[0]: line.split()[-1] for line in text.splitlines()[2:]}
    assert rows["worst_case_adaptive"] == "yes" and rows["filter_line"] == "yes"
    assert rows["worst_case_l2"] == "no" and rows["lambda_max"] == "no"
    code, _, err = _run(capsys, "sharpness", run, "--rescale", "net.3", "2", "--quiet")
    assert code == 2 and "Traceback" not in err and err.count("\n") == 1
    code, _, err = _run(capsys, "sharpness", run, "--worst-case", "-1", "--quiet")
    assert code == 2 and "--worst-case must be a positive" in err


def test_batchnorm_model_with_sam_and_per_point_statistics(capsys, tmp_path):
    run = tmp_path / "bn"
    code, _, err = _run(
        capsys, "train", "--dataset", "digits", "--train-size", "150", "--epochs", "3",
        "--widths", "16", "--batch-norm", "--sam-rho", "0.05", "--out", run, "--quiet",
    )  # fmt: skip
    assert code == 0, err
    from basinscope.training import load_checkpoint

    model = load_checkpoint(run).model
    kinds = [type(m).__name__ for m in model.net]
    assert kinds == ["Flatten", "Linear", "BatchNorm1d", "ReLU", "Linear"]
    # BatchNorm counted each SAM step once: 3 epochs of ceil(150 / 64) = 3 steps
    assert int(model.net[2].num_batches_tracked) == 9
    planes = {}
    for flag in ((), ("--update-bn",)):
        out = tmp_path / f"plane{len(flag)}.h5"
        code, _, err = _run(capsys, "surface", run, "--steps", 3, "--out", out, *flag, "--quiet")
        assert code == 0, err
        planes[len(flag)] = Surface.load(out)
    assert planes[1].attrs["update_bn"] is True and "update_bn" not in planes[0].attrs
    # away from θ0 the recomputed statistics give other losses
    assert not np.allclose(planes[0].train_loss[0, 0], planes[1].train_loss[0, 0])


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--subspace", "5"], "--subspace only applies together with --keskar"),
        (["--m", "10"], "--m only applies together with --worst-case"),
        (["--magnitude-aware"], "only applies together with --pac-bayes"),
        (["--worst-case", "inf"], "--worst-case must be a positive finite number"),
        (["--rescale", "net.1", "2", "--keskar", "1e-3"], "--rescale compares its own"),
    ],
)
def test_sharpness_options_are_checked_before_any_work(capsys, runs, extra, message):
    code, out, err = _run(capsys, "sharpness", runs / "s0", *extra, "--quiet")
    assert code == 2 and message in err and err.count("\n") == 1
    assert out == ""  # nothing was computed first


def test_trajectory_takes_one_checkpoint(capsys, runs, tmp_path):
    code, _, err = _run(capsys, "path", runs / "s0", runs / "s1", "--trajectory")
    assert code == 2 and "give one checkpoint" in err
