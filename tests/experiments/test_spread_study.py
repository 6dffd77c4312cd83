"""The lr-batch study's direction spread: numbers per seed, mean ± SD, the ranking verdict."""

from __future__ import annotations

import csv
import dataclasses
import json

import numpy as np
import pytest

import basinscope as bs
from basinscope import sharpness
from basinscope.cli import main as cli_main
from basinscope.errors import BasinscopeError
from basinscope.experiments import MeasureConfig, train_objective
from basinscope.experiments._spread import check_spread_settings


def test_each_seed_is_the_plane_of_its_directions(small_lr_batch):
    root, reports = small_lr_batch
    rep = reports[1]
    saved = json.loads((root / rep.name / "spread.json").read_text())
    assert saved["seeds"] == [0, 1, 2]  # the direction seed and the next two
    obj = train_objective(rep.model, rep.data, skip_bias_norm=True)
    for k, seed in enumerate(saved["seeds"]):  # each seed's plane, recomputed independently
        d = bs.random_directions(obj, 2, norm="filter", seed=seed)
        surf = bs.plane(obj, d[0], d[1], span=(-1, 1), steps=11)
        np.testing.assert_allclose(saved["surfaces"][k]["train_loss"], surf.train_loss, rtol=1e-12)
        assert saved["eps"][k] == pytest.approx(sharpness.from_surface(surf, 0.5).value, rel=1e-12)
        x = surf.xcoordinates  # the curvature along d1: a quadratic fit on |t| ≤ ε of the axis
        a = np.polyfit(x[np.abs(x) <= 0.5], surf.train_loss[np.abs(x) <= 0.5, 5], 2)[0]
        assert saved["curvature"][k][0] == pytest.approx(2 * a, rel=1e-6)
    assert saved["eps_mean"] == pytest.approx(np.mean(saved["eps"]), rel=1e-12)
    assert saved["eps_sd"] == pytest.approx(np.std(saved["eps"], ddof=1), rel=1e-12)
    with (root / "summary.csv").open() as fh:
        row = next(r for r in csv.DictReader(fh) if r["run"] == rep.name)
    assert float(row["spread_curvature_mean"]) == pytest.approx(saved["curvature_mean"], rel=1e-12)
    assert (root / "figures" / f"spread_{rep.name}.png").is_file()


def test_the_ranking_verdict_follows_the_numbers(small_lr_batch):
    root, reports = small_lr_batch
    spreads = {r.name: json.loads((root / r.name / "spread.json").read_text()) for r in reports}
    verdict = json.loads((root / "spread_ranking.json").read_text())
    text = (root / "summary.md").read_text()
    for label, value in (
        ("ε-sharpness", lambda s, i: s["eps"][i]),
        ("slice curvature", lambda s, i: np.mean(s["curvature"][i])),
    ):
        orders = [sorted(spreads, key=lambda n, i=i: -value(spreads[n], i)) for i in range(3)]
        assert list(verdict[label]["orders"].values()) == orders
        holds = orders[0] == orders[1] == orders[2]
        assert verdict[label]["holds_for_every_seed"] == holds
        said = "the same for every seed" if holds else "the order changes with the seed"
        assert f"Ranked by {label} (sharpest first)" in text and said in text
    assert "Direction spread" in (root / "report.html").read_text()


def test_spread_settings_are_refused_before_training(tmp_path):
    ok = MeasureConfig()
    check_spread_settings(ok)  # 21 points on [-1, 1]: 0 on the grid, spacing 0.1 ≤ 0.25
    for bad, says in (
        ({"direction_seeds": (3, 3)}, "at least two distinct"),
        ({"direction_seeds": (1,)}, "at least two distinct"),
        ({"spread_grid": 20}, "0 on their grid"),
        ({"span": (-1.0, 2.0), "spread_grid": 21}, "0 on their grid"),
        ({"spread_grid": 5}, "each curvature fit needs 3 points"),
    ):
        with pytest.raises(BasinscopeError, match=says):
            check_spread_settings(dataclasses.replace(ok, **bad))
    out = tmp_path / "out"
    assert cli_main(["run", "--direction-seeds", "0", "0", "--out", str(out)]) == 2
    assert cli_main(["run", "--study", "dataset-size", "--direction-seeds", "0", "1",
                     "--out", str(out)]) == 2  # fmt: skip
    assert not out.exists() or not any(out.rglob("model.pt"))  # nothing was trained
