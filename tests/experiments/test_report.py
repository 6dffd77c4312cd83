"""Rank correlations between measures and the generalisation gap."""

from __future__ import annotations

import csv
import itertools
import json
import math

import pytest

from basinscope.errors import BasinscopeError
from basinscope.experiments import correlation_report, rank_correlations, read_summary


def _tau_by_hand(x, y):
    """Kendall's τ-a by counting pairs (no ties in the data used here)."""
    s = 0
    for i, j in itertools.combinations(range(len(x)), 2):
        s += int(math.copysign(1, (x[i] - x[j]) * (y[i] - y[j])))
    return s / (len(x) * (len(x) - 1) / 2)


def _rows():
    rows = []
    for k, (lr, bs, seed) in enumerate(itertools.product((0.5, 0.1), (16, 512), (0, 1))):
        gap = 0.1 + 0.05 * (bs == 512) + 0.02 * (lr == 0.1) + 0.003 * seed
        rows.append(
            {
                "run": f"r{k}",
                "lr": lr,
                "batch_size": bs,
                "seed": seed,
                "gap_loss": gap,
                "gap_acc": gap / 10 + 0.0001 * k,
                # monotone in the gap, except runs 2 and 3 (seeds 0, 1) are swapped
                "lambda_max": gap * 100 + (0.5 if k == 2 else 0.0),
                "pac_bayes_sigma": 1.0 / gap,  # flatter = larger σ: perfectly anti-ordered
                "status": "ok",
            }
        )
    return rows


def test_kendall_tau_matches_pair_counting():
    rows = _rows()
    res = {(c.measure, c.gap): c for c in rank_correlations(rows)}
    x = [r["lambda_max"] for r in rows]
    for gap in ("gap_loss", "gap_acc"):
        y = [r[gap] for r in rows]
        assert res[("lambda_max", gap)].tau == pytest.approx(_tau_by_hand(x, y), abs=1e-12)
        assert res[("lambda_max", gap)].n == 8
    assert res[("pac_bayes_sigma", "gap_loss")].tau == pytest.approx(-1.0)
    assert 0 < res[("pac_bayes_sigma", "gap_loss")].p_value < 0.01


def test_granulated_coefficient_by_hand():
    rows = _rows()
    c = next(
        c
        for c in rank_correlations(rows, hyperparameters=("lr", "batch_size", "seed"))
        if c.measure == "lambda_max" and c.gap == "gap_loss"
    )
    # Groups varying one hyperparameter are pairs; τ of a pair is ±1.
    per = {}
    for h in ("lr", "batch_size", "seed"):
        others = [k for k in ("lr", "batch_size", "seed") if k != h]
        taus = []
        for _, grp in itertools.groupby(
            sorted(rows, key=lambda r: [r[k] for k in others]), key=lambda r: [r[k] for k in others]
        ):
            g = list(grp)
            taus.append(_tau_by_hand([r["lambda_max"] for r in g], [r["gap_loss"] for r in g]))
        per[h] = sum(taus) / len(taus)
    assert c.per_hyperparameter == pytest.approx(per)
    assert c.granulated == pytest.approx(sum(per.values()) / 3)
    assert per["seed"] < 1  # the swapped runs show up in the seed axis only


def test_fewer_than_three_runs_is_refused():
    with pytest.raises(BasinscopeError, match="at least 3 finished runs"):
        rank_correlations(_rows()[:2])
    rows = _rows()[:3]
    rows[0]["status"] = "diverged"
    with pytest.raises(BasinscopeError, match="got 2"):
        rank_correlations(rows)
    with pytest.raises(BasinscopeError, match="no sharpness measure"):
        rank_correlations([{"gap_loss": 1.0, "status": "ok"}] * 3)


def test_report_from_summary_csv(tmp_path):
    rows = _rows()
    with (tmp_path / "summary.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    back = read_summary(tmp_path)
    text = correlation_report(back, tmp_path, title="test")
    assert "λ_max" in text and "PAC-Bayes σ (↑ flatter)" in text
    saved = json.loads((tmp_path / "correlation.json").read_text())
    assert {d["measure"] for d in saved} == {"lambda_max", "pac_bayes_sigma"}
    assert (tmp_path / "figures" / "scatter_lambda_max.png").stat().st_size > 0
    with pytest.raises(BasinscopeError, match="does not exist"):
        read_summary(tmp_path / "nowhere")


def test_granulated_groups_by_every_setting_in_study_json(tmp_path):
    # base / swa differ in swa_start only; small differs from base in batch size only.
    runs = {
        "base": {"lr": 0.1, "batch_size": 512, "swa_start": None, "seed": 0},
        "swa": {"lr": 0.1, "batch_size": 512, "swa_start": 75, "seed": 0},
        "small": {"lr": 0.1, "batch_size": 16, "swa_start": None, "seed": 0},
    }
    (tmp_path / "study.json").write_text(json.dumps({"runs": runs}))
    vals = {"base": (3.0, 0.1), "swa": (1.0, 0.3), "small": (2.0, 0.05)}
    rows = [
        {"run": k, "lr": 0.1, "batch_size": v["batch_size"], "lambda_max": vals[k][0],
         "gap_loss": vals[k][1], "gap_acc": vals[k][1], "status": "ok"}
        for k, v in runs.items()
    ]  # fmt: skip
    correlation_report(rows, tmp_path)
    saved = json.loads((tmp_path / "correlation.json").read_text())
    lam = next(d for d in saved if d["measure"] == "lambda_max" and d["gap"] == "gap_loss")
    # batch size: only the pair (base, small): λ 3 > 2 while gap 0.1 > 0.05 → τ = +1;
    # swa_start: only (base, swa): λ 3 > 1 while gap 0.1 < 0.3 → τ = −1.
    assert lam["per_hyperparameter"] == {"config:batch_size": 1.0, "config:swa_start": -1.0}
    assert lam["granulated"] == 0.0


def test_coarse_and_non_finite_measures_are_excluded_and_listed(tmp_path):
    rows = _rows()
    for k, r in enumerate(rows):
        # rounding noise off a coarse grid (its order would give a spurious τ), flagged
        r["eps_sharpness_surface"] = (-1) ** k * 1e-8 * (k + 1)
        r["coarse_measures"] = "eps_sharpness_surface" if k == 3 else ""
        r["keskar"] = float("nan") if k == 5 else 0.1 * k  # one diverged measurement
        r["noise_sharpness"] = r["gap_loss"] * 2  # fine: ranked
    with (tmp_path / "summary.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    back = read_summary(tmp_path)  # the flags survive the CSV ("nan", a string of names)
    measured = {c.measure for c in rank_correlations(back)}
    assert measured == {"noise_sharpness", "lambda_max", "pac_bayes_sigma"}
    text = correlation_report(back, tmp_path)
    saved = json.loads((tmp_path / "correlation.json").read_text())
    assert {d["measure"] for d in saved} == measured
    noise = next(d for d in saved if d["measure"] == "noise_sharpness" and d["gap"] == "gap_loss")
    assert noise["tau"] == pytest.approx(1.0)
    md = (tmp_path / "correlation.md").read_text()
    assert md == text and "Excluded from the rankings" in md
    assert "- ε-sharpness (grid): a coarse estimate or only a bound for run r3." in md
    assert "- Keskar φ: not finite (NaN or infinite) for run r5." in md
    assert not (tmp_path / "figures" / "scatter_keskar.png").exists()


def test_a_missing_value_is_not_an_exclusion():
    rows = _rows()
    rows[0]["lambda_max"] = None  # not measured for one run: ranked over the others
    (lam,) = [c for c in rank_correlations(rows, gaps=("gap_loss",)) if c.measure == "lambda_max"]
    assert lam.n == len(rows) - 1


def test_a_study_row_flags_a_coarse_grid_sharpness():
    from basinscope.experiments import RunReport
    from basinscope.training import TrainConfig

    rep = RunReport("a", TrainConfig(), {}, False, "")
    rep.sharpness = {"surface": {"value": 1e-8, "coarse": True}, "direct": {"value": 0.2}}
    assert rep.row()["coarse_measures"] == "eps_sharpness_surface"
    rep.sharpness["surface"]["coarse"] = False
    assert rep.row()["coarse_measures"] is None
    rep.sharpness["surface"] = {"value": 0.1}  # written before the flag existed
    assert rep.row()["coarse_measures"] is None


def test_an_unbracketed_pac_bayes_sigma_is_left_out_of_the_rankings():
    from basinscope.experiments import RunReport
    from basinscope.experiments._correlation import excluded_measures
    from basinscope.training import TrainConfig

    rep = RunReport("a", TrainConfig(), {}, False, "")
    rep.values["pac_bayes_unbracketed"] = "pac_bayes_mag_sigma ≥ 10"
    assert rep.coarse() == ["pac_bayes_mag_sigma", "pac_bayes_mag_bound"]
    rep.values["pac_bayes_unbracketed"] = "pac_bayes_sigma ≤ 1e-06; pac_bayes_mag_sigma ≥ 10"
    assert rep.coarse() == [
        "pac_bayes_sigma", "pac_bayes_bound", "pac_bayes_mag_sigma", "pac_bayes_mag_bound",
    ]  # fmt: skip
    rows = [
        {"run": f"r{i}", "pac_bayes_sigma": 0.1 * i, "lambda_max": float(i),
         "coarse_measures": "pac_bayes_sigma" if i == 1 else None}
        for i in range(4)
    ]  # fmt: skip
    out = excluded_measures(rows, ["pac_bayes_sigma", "lambda_max"])
    assert set(out) == {"pac_bayes_sigma"}
