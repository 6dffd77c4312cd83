"""Remedies for a sharp minimum (Foret et al. 2021; Izmailov et al. 2018).

* ``remedies`` — a sharp large-batch minimum against SAM, ASAM, SWA, weight decay,
  dropout, warm-up + cosine and a small batch, each in turn; which flattened it.
* ``sam-vs-sgd`` — the seed's "does SAM help?" diagnostic: Welch's t-test of SAM's
  test accuracy against SGD's over seeds.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BasinscopeError
from ._caches import _read_json
from ._common import _mlp_run
from ._measures import MeasureConfig
from ._runner import Study
from ._summary import RunReport, _fmt

REMEDIES: dict[str, dict[str, Any]] = {
    "base": {},
    "small-batch": {"batch_size": 16},
    "sam": {"sam_rho": 0.05},
    "asam": {"sam_rho": 0.5, "sam_adaptive": True},
    "swa": {"swa_start": 75, "swa_lr": 0.2},
    "weight-decay": {"weight_decay": 5e-3},
    "dropout": {"dropout": 0.1},
    "warmup-cosine": {"lr": 0.5, "warmup_steps": 30, "schedule": "cosine"},
}
"""The remedies study's runs: each changes the sharp base configuration in one way.

``warmup-cosine`` raises the peak learning rate to 0.5 (what a warm-up makes
safe) with a 30-step linear warm-up (10 epochs at batch 512) and cosine decay;
``swa`` averages the last quarter of the epochs (from epoch 75 of 100) with
SWALR annealing to 0.05.
"""


def remedies_study(
    *,
    dataset: str = "digits",
    epochs: int = 100,
    lr: float = 0.1,
    batch_size: int = 512,
    seed: int = 0,
    device: str = "cpu",
    remedies: tuple[str, ...] | None = None,
    **overrides: Any,
) -> Study:
    """One sharp base configuration (large batch, plain SGD, no regularisation)
    against the same with each remedy in turn (:data:`REMEDIES`)."""
    chosen = remedies or tuple(REMEDIES)
    unknown = [r for r in chosen if r not in REMEDIES]
    if unknown:
        raise BasinscopeError(f"unknown remedy {unknown[0]!r}; choose from {', '.join(REMEDIES)}")
    runs = {}
    for name in ("base", *[r for r in chosen if r != "base"]):
        change = dict(REMEDIES[name])
        if "swa_start" in change:  # the last quarter of the epochs
            change["swa_start"] = max(1, epochs - epochs // 4)
        cfg = {
            "dataset": dataset,
            "lr": lr,
            "batch_size": batch_size,
            "epochs": epochs,
            "seed": seed,
            "device": device,
            "snapshot_every": max(1, epochs // 20),
            **overrides,
            **change,
        }
        runs[name] = _mlp_run(**cfg)
    return Study(
        name="remedies",
        runs=runs,
        description="a sharp large-batch minimum against each remedy in turn",
        measure=MeasureConfig(grid_size=21),
        measures=("surface", "hessian", "suite", "trajectory"),
        finish=_remedies_finish,
    )


def sam_vs_sgd_study(
    *,
    dataset: str = "digits",
    epochs: int = 100,
    lr: float = 0.1,
    batch_size: int = 512,
    seed: int = 0,
    seeds: int = 3,
    rho: float = 0.05,
    device: str = "cpu",
    **overrides: Any,
) -> Study:
    """The seed's diagnostic: the same configuration with and without SAM, over
    ``seeds`` seeds. "If SAM helps significantly, the original optimiser was likely
    converging to sharp minima"; significance by Welch's t-test on test accuracy."""
    if seeds < 2:
        raise BasinscopeError(f"sam-vs-sgd needs at least 2 seeds for a test, got {seeds}")
    runs = {}
    for k in range(seeds):
        for name, extra in (("sgd", {}), ("sam", {"sam_rho": rho})):
            runs[f"{name}_seed{seed + k}"] = _mlp_run(
                dataset=dataset,
                lr=lr,
                batch_size=batch_size,
                epochs=epochs,
                seed=seed + k,
                device=device,
                **{**overrides, **extra},
            )
    return Study(
        name="sam-vs-sgd",
        runs=runs,
        description="does SAM help? (if so, SGD was converging to sharp minima)",
        measure=MeasureConfig(grid_size=21),
        measures=("surface", "hessian"),
        finish=_sam_finish,
    )


# Measures where a larger value means a flatter minimum.
_FLATTER_IF_LARGER = {"pac_bayes_sigma", "pac_bayes_mag_sigma", "log_volume"}
_REMEDY_MEASURES = (
    "eps_sharpness_direct",
    "noise_sharpness",
    "lambda_max",
    "hessian_trace",
    "worst_case_l2",
    "worst_case_adaptive",
    "keskar",
    "pac_bayes_sigma",
    "pac_bayes_mag_sigma",
)


def _remedies_finish(study: Study, reports: list[RunReport], root: Path) -> str:
    """Which remedies flattened the base minimum, by how many measures, and whether
    test accuracy followed."""
    rows = {r.name: r.row() for r in reports if not r.diverged}
    base = rows.get("base")
    if base is None:
        return "\nThe base run diverged; nothing to compare the remedies with.\n"
    lines = [
        "\n## Did the remedy flatten the minimum?\n",
        "Each measure is compared with the base run (large batch, plain SGD); "
        "'flatter' counts the measures that moved toward a flatter minimum.\n",
        "| remedy | flatter by | λ_max ratio | test acc change | gap (loss) change |",
        "|---|---|---|---|---|",
    ]
    verdicts = []
    for name, row in rows.items():
        if name == "base":
            continue
        votes = []
        for m in _REMEDY_MEASURES:
            a, b = base.get(m), row.get(m)
            if a is None or b is None or not (math.isfinite(a) and math.isfinite(b)) or a == b:
                continue
            votes.append((b > a) if m in _FLATTER_IF_LARGER else (b < a))
        flat = sum(votes)
        ratio = (
            row["lambda_max"] / base["lambda_max"]
            if row.get("lambda_max") and base.get("lambda_max")
            else math.nan
        )
        dacc = row["test_acc"] - base["test_acc"]
        dgap = row["gap_loss"] - base["gap_loss"]
        lines.append(
            f"| {name} | {flat}/{len(votes)} | {_fmt(ratio, '{:.3g}')} | "
            f"{100 * dacc:+.1f} % | {dgap:+.4f} |"
        )
        flattened = len(votes) > 0 and flat > len(votes) / 2
        # Two binomial standard errors of the difference of two test accuracies.
        n_test = len(next(r for r in reports if r.name == name).data.y_test)
        noise = 2 * math.sqrt(
            sum(a * (1 - a) for a in (row["test_acc"], base["test_acc"])) / n_test
        )
        if abs(dacc) <= noise:
            acc_text = f"test accuracy did not change beyond noise ({100 * dacc:+.1f} %, ±{100 * noise:.1f} %)"
        else:
            up = dacc > 0
            agrees = up == flattened
            acc_text = (
                f"test accuracy {'rose' if up else 'fell'} by {100 * abs(dacc):.1f} % "
                f"(beyond ±{100 * noise:.1f} %), "
                + ("as flatness would predict" if agrees else "against what flatness predicts")
            )
        verdicts.append(
            f"- **{name}** "
            + ("flattened" if flattened else "did not flatten")
            + f" the minimum ({flat} of {len(votes)} measures); {acc_text}.\n"
        )
    for r in reports:
        if r.diverged and r.name != "base":
            lines.append(f"| {r.name} | diverged | n/a | n/a | n/a |")
            verdicts.append(f"- **{r.name}** diverged: {r.message}\n")
    swa = next((r for r in reports if r.name == "swa" and not r.diverged), None)
    note = ""
    if swa is not None:
        metrics = _read_json(root / "swa" / "metrics.json") or {}
        it = metrics.get("final_iterate") or {}
        if it.get("test_acc") is not None:
            note = (
                f"\nSWA: the averaged weights (measured above) reach test accuracy "
                f"{swa.final['test_acc']:.3f}; the last SGD iterate {it['test_acc']:.3f}.\n"
            )
    return "\n".join(lines) + "\n\n" + "".join(verdicts) + note


def _sam_finish(study: Study, reports: list[RunReport], root: Path) -> str:
    """Welch's t-test of SAM's test accuracy against SGD's over the seeds."""
    from scipy import stats

    acc = {
        k: [r.final["test_acc"] for r in reports if r.name.startswith(k + "_") and not r.diverged]
        for k in ("sgd", "sam")
    }
    lam = {
        k: [
            r.values["lambda_max"]
            for r in reports
            if r.name.startswith(k + "_") and not r.diverged and "lambda_max" in r.values
        ]
        for k in ("sgd", "sam")
    }
    if min(len(v) for v in acc.values()) < 2:
        return "\nFewer than two finished runs per optimiser: no test.\n"
    diff = float(np.mean(acc["sam"]) - np.mean(acc["sgd"]))
    if np.ptp(acc["sam"]) == 0 and np.ptp(acc["sgd"]) == 0:
        statistic, pvalue = math.nan, math.nan  # no spread: Welch's test is undefined
    else:
        t = stats.ttest_ind(acc["sam"], acc["sgd"], equal_var=False)
        statistic, pvalue = float(t.statistic), float(t.pvalue)
    significant = math.isfinite(pvalue) and pvalue < 0.05 and diff > 0
    text = (
        "\n## Does SAM help?\n\n"
        f"Test accuracy over {len(acc['sgd'])} SGD and {len(acc['sam'])} SAM seeds: "
        f"SGD {np.mean(acc['sgd']):.4f} ± "
        f"{np.std(acc['sgd'], ddof=1):.4f}, SAM {np.mean(acc['sam']):.4f} ± "
        f"{np.std(acc['sam'], ddof=1):.4f} (mean ± SD); difference {100 * diff:+.2f} %, "
        f"Welch's t = {statistic:.2f}, p = {pvalue:.3g}.\n"
    )
    if lam["sgd"] and lam["sam"]:
        text += (
            f"λ_max: SGD {np.mean(lam['sgd']):.4g}, SAM {np.mean(lam['sam']):.4g} "
            f"(ratio {np.mean(lam['sam']) / np.mean(lam['sgd']):.3g}).\n"
        )
    text += "\n**Diagnosis:** " + (
        "the accuracies do not vary across seeds, so the test is undefined; run more "
        "seeds or a larger test set.\n"
        if not math.isfinite(pvalue)
        else "SAM helps significantly (p < 0.05): the original optimiser was likely "
        "converging to sharp minima.\n"
        if significant
        else "SAM does not help significantly here (p ≥ 0.05 or no gain): no evidence "
        "that the original optimiser was converging to sharp minima that hurt it.\n"
    )
    return text
