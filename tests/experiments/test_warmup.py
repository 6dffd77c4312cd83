"""The warm-up study: the 2/η line in closed form, λ_max against recomputation, end to end."""

from __future__ import annotations

import json
import math

from basinscope import hessian
from basinscope.cli import main
from basinscope.experiments import train_objective
from basinscope.experiments._warmup import answer_sentence, eta_at, warmup_study
from basinscope.training import TrainConfig, load_checkpoint, load_config_data

TINY = dict(
    lr=0.5,
    warmup_steps=4,
    steps=8,
    batch_size=8,
    train_size=16,
    snapshot_every=2,
    d_model=8,
    n_heads=2,
    grid_size=3,
)


def test_two_over_eta_is_the_closed_form_schedule():
    cfg = TrainConfig(lr=0.8, steps=20, warmup_steps=5, schedule="cosine", batch_size=4)
    steps = [0, 3, 5, 12, 20]
    eta = eta_at(cfg, 40, steps)
    T, W = 20, 5
    for t, e in zip(steps, eta, strict=True):
        u = min(t, T - 1)
        want = (u + 1) / (W + 1) if u < W else 0.5 * (1 + math.cos(math.pi * (u - W) / (T - W)))
        assert math.isclose(e, 0.8 * want, rel_tol=1e-15)
    const = TrainConfig(lr=0.8, steps=20, batch_size=4)
    assert eta_at(const, 40, steps) == [0.8] * 5


def test_recorded_lambda_and_eta_equal_recomputation(tmp_path, monkeypatch):
    """The tiny study run through the CLI (exit 0), its numbers recomputed."""
    import basinscope.experiments._studies as studies
    from basinscope.sharpness import _slice

    monkeypatch.setitem(studies.STUDIES, "warmup", lambda **kw: warmup_study(**{**TINY, **kw}))
    # the direct ε-sharpness's polar grid (4,096 points a run) is not what this test checks
    monkeypatch.setattr(_slice.epsilon, "__kwdefaults__", {"n_radii": 2, "n_angles": 8})
    assert main(["run", "--study", "warmup", "--out", str(tmp_path), "--quiet"]) == 0
    root = tmp_path / "warmup"
    rec = json.loads((root / "warmup.json").read_text())
    assert set(rec) == {"constant", "warmup", "warmup-cosine"}
    for name, r in rec.items():
        ckpt = load_checkpoint(root / name)
        data = load_config_data(ckpt.config)
        # the last snapshot is the final model
        lam = hessian.eigenvalues(train_objective(ckpt.model, data), 1, tol=1e-3, max_products=200)
        assert math.isclose(r["final_lambda"], float(lam.values[0]), rel_tol=1e-9)
        assert r["eta"] == eta_at(ckpt.config, len(data.y_train), r["steps"])
        assert r["two_over_eta"] == [2 / e for e in r["eta"]]
        assert r["ratio"][-1] == r["lambda_max"][-1] * r["eta"][-1] / 2
    assert rec["constant"]["eta"] == [0.5] * len(rec["constant"]["steps"])
    summary = (root / "summary.md").read_text()
    assert answer_sentence(rec) in summary
    assert "Does warm-up avoid the sharp early region? " in summary
    assert (root / "figures" / "edge_of_stability.png").is_file()
    for name in rec:
        assert (root / name / "surface.h5").is_file()


def test_answer_sentence_reads_the_numbers():
    rec = lambda ratio, spike: {"early_max_ratio": ratio, "early_spike": spike, "early_until": 100}  # noqa: E731
    yes = answer_sentence({"constant": rec(1.5, 0.3), "warmup": rec(0.4, 0.0)})
    assert yes.startswith("Does warm-up avoid the sharp early region? Yes: in the first 100 steps")
    assert "1.5 with a constant learning rate (loss spike 0.3) against warmup 0.4" in yes
    no = answer_sentence({"constant": rec(0.5, 0.0), "warmup": rec(0.9, 0.0)})
    assert "? No:" in no
