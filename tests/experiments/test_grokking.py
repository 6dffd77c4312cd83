"""The grokking study: its recorded numbers against direct recomputation, end to end."""

from __future__ import annotations

import json
import math

import torch

from basinscope import hessian
from basinscope.cli import main
from basinscope.experiments import run_study, train_objective
from basinscope.experiments._grokking import (
    MEMORISED,
    grokking_events,
    grokking_markdown,
    grokking_study,
)
from basinscope.plots import accuracy_jump
from basinscope.training import load_checkpoint, load_config_data, load_trajectory

TINY = dict(p=7, train_fraction=0.6, steps=6, snapshot_every=3, d_model=8, n_heads=2)


def _study(tmp_path):
    return grokking_study(data_dir=str(tmp_path / "data"), **TINY)


def test_recorded_numbers_equal_recomputation(tmp_path):
    study = _study(tmp_path)
    run_study(study, tmp_path / "out", progress=False)
    root = tmp_path / "out" / "grokking"
    run = root / "grokking"
    events = json.loads((root / "grokking.json").read_text())
    along = json.loads((run / "along" / "along.json").read_text())
    assert along["steps"] == [0, 3, 6]
    ckpt = load_checkpoint(run, trust_code=True)
    data = load_config_data(ckpt.config)
    traj = load_trajectory(run)
    # the last snapshot is the final model: its test accuracy and λ_max, recomputed
    model = ckpt.model.eval()
    with torch.no_grad():
        acc = (model(data.x_test).argmax(-1) == data.y_test).double().mean().item()
    assert math.isclose(along["series"]["test_acc"][-1], acc, rel_tol=1e-12)
    assert torch.equal(
        traj.params[-1], torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    )
    lam = hessian.eigenvalues(train_objective(model, data), 1, tol=1e-3, max_products=200, seed=0)
    assert math.isclose(along["series"]["lambda_max"][-1], float(lam.values[0]), rel_tol=1e-9)
    # the jump and the memorisation step are those of the series, reported consistently
    assert events["steps"]["jump"] == accuracy_jump(along["steps"], along["series"]["test_acc"])
    first = next(
        (
            s
            for s, a in zip(along["steps"], along["series"]["train_acc"], strict=True)
            if a >= MEMORISED
        ),
        None,
    )
    assert events["steps"]["memorised"] == first
    assert events["values"]["lambda_max"]["end"] == along["series"]["lambda_max"][-1]
    summary = (root / "summary.md").read_text()
    assert "what moves before, at and after the jump" in summary
    assert (root / "figures" / "grokking.png").is_file()
    # a rerun recomputes nothing: the partial files are unchanged
    before = {f.name: f.read_bytes() for f in (run / "along").glob("*.partial.json")}
    run_study(_study(tmp_path), tmp_path / "out", progress=False)
    assert before == {f.name: f.read_bytes() for f in (run / "along").glob("*.partial.json")}


def test_events_and_markdown_on_a_known_series(tmp_path):
    class Along:  # the fields grokking_events reads
        steps = (0, 10, 20, 30)
        jump = accuracy_jump(steps, [0.0, 0.1, 0.9, 1.0])
        series = {
            "train_acc": [0.1, 1.0, 1.0, 1.0],
            "test_acc": [0.0, 0.1, 0.9, 1.0],
            "lambda_max": [1.0, 8.0, 4.0, 4.1],
        }

    ev = grokking_events(Along())
    assert ev["steps"] == {"memorised": 10, "jump": 20, "end": 30}
    assert ev["delay"] == 10
    assert ev["values"]["lambda_max"] == {
        "memorised": 8.0,
        "jump": 4.0,
        "end": 4.1,
        "direction": ["down", "flat"],
    }
    text = grokking_markdown(ev)
    assert "test accuracy jumped at step 20 (10 steps later)" in text
    assert "| λ_max | 8 | 4 | 4.1 | down | flat |" in text


def test_cli_runs_the_tiny_study(tmp_path, monkeypatch, capsys):
    import basinscope.experiments._studies as studies

    monkeypatch.setitem(
        studies.STUDIES,
        "grokking",
        lambda **kw: grokking_study(
            **{**TINY, "data_dir": str(tmp_path / "data")},
            **{k: v for k, v in kw.items() if k != "epochs"},
        ),
    )
    assert main(["run", "--study", "grokking", "--out", str(tmp_path / "o"), "--quiet"]) in (
        0,
        None,
    )
    root = tmp_path / "o" / "grokking"
    for name in ("summary.md", "grokking.json", "figures/grokking.png", "study.json"):
        assert (root / name).is_file()
