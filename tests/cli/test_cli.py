from __future__ import annotations

import json

import pytest
import torch

from basinscope import Surface
from basinscope.cli import main


def _run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["run", "--grid-size", "1"], "grid size must be at least 2"),
        (["run", "--span", "-1"], "--span must be positive"),
        (["run", "--dataset", "nope"], "unknown dataset 'nope'"),
        (["surface", "missing_dir"], "does not exist"),
        (["train", "--dataset", "digits", "--lr", "-1", "--out", "x"], "lr"),
        (["plot", "missing.h5"], "does not exist"),
    ],
)
def test_bad_input_is_one_sentence_and_status_2(capsys, tmp_path, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    code, _, err = _run(capsys, *argv)
    assert code == 2
    assert message in err
    assert "Traceback" not in err and err.count("\n") == 1


def test_train_surface_sharpness_plot(capsys, tmp_path):
    run = tmp_path / "run"
    code, out, _ = _run(
        capsys,
        "train",
        "--dataset",
        "digits",
        "--train-size",
        "150",
        "--epochs",
        "2",
        "--widths",
        "16",
        "--out",
        str(run),
        "--quiet",
    )
    assert code == 0 and "checkpoint" in out
    h5 = tmp_path / "plane.h5"
    code, _, _ = _run(capsys, "surface", str(run), "--steps", "3", "--out", str(h5), "--quiet")
    assert code == 0
    s = Surface.load(h5)
    assert s.train_loss.shape == (3, 3) and s.test_loss is not None and s.complete
    metrics = json.loads((run / "metrics.json").read_text())
    assert s.train_loss[1, 1] == pytest.approx(metrics["final"]["train_loss"], rel=1e-5)
    code, out, _ = _run(
        capsys,
        "sharpness",
        str(run),
        "--samples",
        "3",
        "--json",
        str(tmp_path / "s.json"),
        "--quiet",
    )
    assert code == 0
    res = json.loads((tmp_path / "s.json").read_text())
    assert res["loss"] == pytest.approx(metrics["final"]["train_loss"], rel=1e-5)
    assert res["eps_sharpness"]["value"] >= 0
    code, out, _ = _run(capsys, "plot", str(h5), "--out", str(tmp_path / "figs"))
    assert code == 0 and (tmp_path / "figs" / "plane_contour.png").exists()
    # a grid needs surfaces of the same kind; a mismatched checkpoint is refused
    other = tmp_path / "other"
    _run(
        capsys,
        "train",
        "--dataset",
        "digits",
        "--train-size",
        "150",
        "--epochs",
        "1",
        "--widths",
        "8",
        "--out",
        str(other),
        "--quiet",
    )
    (other / "model.pt").write_bytes((run / "model.pt").read_bytes())
    code, _, err = _run(capsys, "sharpness", str(other), "--quiet")
    assert code == 2 and "does not match" in err


def test_own_model_from_factory(capsys, tmp_path, monkeypatch):
    pkg = tmp_path / "mynets.py"
    pkg.write_text(
        "import torch.nn as nn\n"
        "def make(input_shape, n_classes):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(64, 12), nn.ReLU(), nn.Linear(12, n_classes))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import mynets

    torch.manual_seed(0)
    model = mynets.make((1, 8, 8), 10)
    torch.save(model.state_dict(), tmp_path / "w.pt")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    code, out, err = _run(
        capsys,
        "surface",
        str(tmp_path / "w.pt"),
        "--model",
        "mynets:make",
        "--dataset",
        "digits",
        "--dim",
        "1",
        "--steps",
        "5",
        "--out",
        str(tmp_path / "line.h5"),
        "--quiet",
    )
    assert code == 0, err
    assert Surface.load(tmp_path / "line.h5").train_loss.shape == (5,)
    for k, v in torch.load(tmp_path / "w.pt").items():
        assert torch.equal(v, before[k])


def test_hessian_and_volume_commands(capsys, tmp_path):
    run = tmp_path / "run"
    _run(
        capsys,
        "train",
        "--dataset",
        "digits",
        "--train-size",
        "150",
        "--epochs",
        "2",
        "--widths",
        "8",
        "--out",
        str(run),
        "--quiet",
    )
    code, out, err = _run(
        capsys,
        "hessian",
        str(run),
        "--k",
        "2",
        "--per-layer",
        "--json",
        str(tmp_path / "h.json"),
        "--quiet",
    )
    assert code == 0, err
    h = json.loads((tmp_path / "h.json").read_text())
    assert h["lambda_max"] == h["top_k"][0] >= h["top_k"][1]
    assert h["lambda_min"] <= h["top_k"][1]
    # per-layer traces are diagonal blocks: they add up to the whole trace
    total = sum(layer["trace"] for layer in h["per_layer"].values())
    assert total == pytest.approx(
        h["trace"],
        abs=4 * (h["trace_se"] + sum(layer["trace_se"] for layer in h["per_layer"].values())),
    )
    code, _, err = _run(capsys, "hessian", str(run), "--layers", "nope", "--quiet")
    assert code == 2 and "nope" in err
    code, out, err = _run(
        capsys,
        "volume",
        str(run),
        "--threshold",
        "5",
        "--directions",
        "3",
        "--json",
        str(tmp_path / "v.json"),
        "--quiet",
    )
    assert code == 0, err
    v = json.loads((tmp_path / "v.json").read_text())
    assert v["n_directions"] == 3 and v["radius_min"] <= v["radius_median"] <= v["radius_max"]
    code, _, err = _run(capsys, "volume", str(run), "--threshold", "0.0001", "--quiet")
    assert code == 2 and "below the loss" in err
    code, _, err = _run(
        capsys,
        "surface",
        str(run),
        "--directions",
        "hessian",
        "--steps",
        "3",
        "--out",
        str(tmp_path / "hs.h5"),
        "--quiet",
    )
    assert code == 0, err
    s = Surface.load(tmp_path / "hs.h5")
    d = s.directions
    assert abs(float((d[0] * d[1]).sum())) < 1e-4  # eigenvectors: orthonormal
    assert float((d[0] * d[0]).sum()) == pytest.approx(1.0, rel=1e-4)
