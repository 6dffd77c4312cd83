"""Remedies for a sharp minimum (Foret et al. 2021; Izmailov et al. 2018).

* ``remedies`` — a sharp large-batch minimum against SAM, ASAM, SWA, weight decay,
  dropout, warm-up + cosine and a small batch, each in turn; which flattened it.
* ``sam-vs-sgd`` — the seed's "does SAM help?" diagnostic: Welch's t-test of SAM's
  test accuracy against SGD's over seeds, and Fan, Sandlund & Ko's SAM experiment: is
  SAM's minimum a larger basin, on its own training landscape and on that of more data?

Both studies measure every run's star-convex basin volume (``log V`` with its bootstrap
interval, :func:`basinscope.basin_volume` through the keyed, resumable
:func:`~basinscope.experiments._measures.cached_volume`) at the absolute level
``L ≤ τ`` (:data:`VOLUME_THRESHOLD`).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import BasinscopeError
from ..training import DataBundle, TrainConfig, load_dataset, train_subset_indices
from ._caches import _read_json
from ._common import VOLUME_NOTE, _mlp_run
from ._measures import MeasureConfig, cached_volume
from ._runner import Study
from ._summary import RunReport, _fmt

VOLUME_THRESHOLD = 0.5
"""τ of both studies' basins ``{θ : L(θ) ≤ τ}`` (Fan et al.'s absolute rule): above every
run's training loss at its minimum (≈ 0.1 on digits) and its loss on the whole training
set (≈ 0.14 for a run trained on half of it), so that no basin is empty."""

VOLUME_TOLERANCE = 1e-3
"""Relative bisection tolerance of the rays' radii. In n ≈ 26,000 dimensions ``log V``
moves by about ``n · δr/r``: the default 10⁻² rounds it to steps of ≈ 130 nats, as large
as SAM's difference from SGD; 10⁻³ makes the steps ≈ 13 for ≈ 25 % more evaluations."""

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
        measure=_volume_measure(),
        measures=("surface", "hessian", "suite", "trajectory", "volume"),
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
    train_size: float | int | None = 0.5,
    device: str = "cpu",
    **overrides: Any,
) -> Study:
    """The seed's diagnostic: the same configuration with and without SAM, over
    ``seeds`` seeds. "If SAM helps significantly, the original optimiser was likely
    converging to sharp minima"; significance by Welch's t-test on test accuracy.

    Fan, Sandlund & Ko's SAM experiment beside it: every run trains on a seeded subset
    of ``train_size`` of the training set (shared by all runs, default half), and its
    minimum's basin volume is measured on that landscape and on the landscape of the
    whole training set (:func:`more_data`); Welch's t-test compares SAM's ``log V`` with
    SGD's on each. ``train_size=None`` trains on all of it and measures only the first.
    """
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
                train_size=train_size,
                **{**overrides, **extra},
            )
    return Study(
        name="sam-vs-sgd",
        runs=runs,
        description="does SAM help? is its minimum a larger basin? (Fan, Sandlund & Ko)",
        measure=_volume_measure(),
        measures=("surface", "hessian", "volume"),
        finish=_sam_finish,
    )


def _volume_measure() -> MeasureConfig:
    """Both studies' settings: the 21×21 surface, volumes at :data:`VOLUME_THRESHOLD`."""
    return MeasureConfig(
        grid_size=21, volume_threshold=VOLUME_THRESHOLD, volume_tolerance=VOLUME_TOLERANCE
    )


def more_data(config: TrainConfig, data: DataBundle) -> DataBundle | None:
    """The landscape of more data than a run trained on: the whole training set of its
    dataset, through the run's own input pipeline; ``None`` when it trained on all of it.

    A run of ``train_size`` trains on the examples ``train_subset_indices(N, train_size,
    data_seed)``, standardised with their own per-channel mean μ and population SD σ
    (:func:`~basinscope.training.load_dataset`). The larger landscape holds all N
    examples mapped by that same ``x ↦ (x − μ)/σ`` (σ = 0 counts as 1), so its kept part is
    bit for bit the run's training set, and the test split is the run's. Label noise,
    if any, is drawn on the whole set with the same fraction and seed.
    """
    full = load_dataset(
        config.dataset,
        data_dir=config.data_dir,
        standardize=False,
        seed=config.data_seed,
        label_noise=config.label_noise,
    )
    n = len(full.y_train)
    keep = train_subset_indices(n, config.train_size, config.data_seed)
    if len(keep) == n:
        return None
    x = full.x_train
    if config.standardize and x.is_floating_point():  # load_dataset's formula, float64
        kept = x[keep].double()
        dims = [d for d in range(x.ndim) if d != 1]
        shape = [1, -1] + [1] * (x.ndim - 2)
        mean = kept.mean(dim=dims).reshape(shape)
        std = kept.std(dim=dims, correction=0).reshape(shape)
        std = torch.where(std > 0, std, torch.ones_like(std))
        x = ((x.double() - mean) / std).float()
    return dataclasses.replace(data, x_train=x, y_train=full.y_train)


def _welch(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """Welch's t-test of ``mean(a) − mean(b)``, ``t = (ā − b̄) / √(s_a²/n_a + s_b²/n_b)``
    (``scipy.stats.ttest_ind(a, b, equal_var=False)``): ``(t, two-sided p)``, both NaN
    when a sample has fewer than 2 values or neither varies (the test is undefined)."""
    from scipy import stats

    if min(len(a), len(b)) < 2 or (np.ptp(a) == 0 and np.ptp(b) == 0):
        return math.nan, math.nan
    with warnings.catch_warnings():  # one sample of equal values: its variance is exactly 0
        warnings.filterwarnings("ignore", "Precision loss occurred", RuntimeWarning)
        t = stats.ttest_ind(a, b, equal_var=False)
    return float(t.statistic), float(t.pvalue)


def _volumes(study: Study | None, reports: list[RunReport], root: Path) -> dict[str, Any]:
    """Each finished run's volume on its own landscape (``volume.json``, the ``volume``
    measure's file, read back for its interval) and, for sam-vs-sgd, on more data's
    (``volume_more_data.json``; its runs share their data): stored on the reports as
    ``log_volume_ci_low/high``, ``log_volume_more_data`` and its interval. Returns the
    landscapes' sizes (``own``, ``more``) and the dimension ``n``."""
    info: dict[str, Any] = {}
    if study is None or "volume" not in study.measures:
        return info
    done = [r for r in reports if not r.diverged and r.model is not None]
    more = more_data(done[0].config, done[0].data) if done and study.name == "sam-vs-sgd" else None
    for r in done:
        info["own"] = len(r.data.y_train)
        places = [("log_volume", r.data, "volume.json")]
        if more is not None:
            info["more"] = len(more.y_train)
            places.append(("log_volume_more_data", more, "volume_more_data.json"))
        for column, data, name in places:
            saved = cached_volume(
                r.model, data, study.measure, root / r.name / name, r.config.device
            )
            r.values[column] = saved.get("log_volume")
            low, high = saved.get("ci") or (None, None)
            r.values[f"{column}_ci_low"], r.values[f"{column}_ci_high"] = low, high
            info["n"] = saved.get("n") or info.get("n")
    return info


# Measures where a larger value means a flatter minimum.
_FLATTER_IF_LARGER = {"pac_bayes_sigma", "pac_bayes_mag_sigma", "log_volume"}
# The measures a remedy's verdict counts (λ_max, tr H, the suite, the noise and volume).
_REMEDY_MEASURES = (
    "eps_sharpness_direct", "noise_sharpness", "lambda_max", "hessian_trace", "worst_case_l2",
    "worst_case_adaptive", "keskar", "pac_bayes_sigma", "pac_bayes_mag_sigma", "log_volume",
)  # fmt: skip


def _remedies_finish(study: Study, reports: list[RunReport], root: Path) -> str:
    """Which remedies flattened the base minimum, by how many measures, whether test
    accuracy followed, and which enlarged its basin."""
    _volumes(study, reports, root)
    rows = {r.name: r.row() for r in reports if not r.diverged}
    base = rows.get("base")
    if base is None:
        return "\nThe base run diverged; nothing to compare the remedies with.\n"
    lines = [
        "\n## Did the remedy flatten the minimum?\n",
        "Each measure is compared with the base run (large batch, plain SGD); "
        "'flatter' counts the measures that moved toward a flatter minimum.\n",
        "| remedy | flatter by | λ_max ratio | test acc change | gap (loss) change | log V change |",
        "|---|---|---|---|---|---|",
    ]
    verdicts = []
    for name, row in rows.items():
        if name != "base":
            n_test = len(next(r for r in reports if r.name == name).data.y_test)
            line, verdict = _remedy_verdict(name, row, base, n_test)
            lines.append(line)
            verdicts.append(verdict)
    for r in reports:
        if r.diverged and r.name != "base":
            lines.append(f"| {r.name} | diverged | n/a | n/a | n/a | n/a |")
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
    volume = _remedy_volumes(rows, study.measure) if "volume" in study.measures else ""
    return "\n".join(lines) + "\n\n" + "".join(verdicts) + note + volume


def _remedy_verdict(
    name: str, row: dict[str, Any], base: dict[str, Any], n_test: int
) -> tuple[str, str]:
    """One remedy's table line and verdict: the measures that moved toward a flatter
    minimum, and whether test accuracy changed beyond two binomial standard errors."""
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
    dvol = _difference(row.get("log_volume"), base.get("log_volume"))
    line = (
        f"| {name} | {flat}/{len(votes)} | {_fmt(ratio, '{:.3g}')} | "
        f"{100 * dacc:+.1f} % | {dgap:+.4f} | {_fmt(dvol, '{:+.1f}')} |"
    )
    flattened = len(votes) > 0 and flat > len(votes) / 2
    # Two binomial standard errors of the difference of two test accuracies.
    noise = 2 * math.sqrt(sum(a * (1 - a) for a in (row["test_acc"], base["test_acc"])) / n_test)
    if abs(dacc) <= noise:
        acc_text = (
            f"test accuracy did not change beyond noise ({100 * dacc:+.1f} %, ±{100 * noise:.1f} %)"
        )
    else:
        up = dacc > 0
        acc_text = (
            f"test accuracy {'rose' if up else 'fell'} by {100 * abs(dacc):.1f} % "
            f"(beyond ±{100 * noise:.1f} %), "
            + ("as flatness would predict" if up == flattened else "against what flatness predicts")
        )
    verdict = (
        f"- **{name}** "
        + ("flattened" if flattened else "did not flatten")
        + f" the minimum ({flat} of {len(votes)} measures); {acc_text}.\n"
    )
    return line, verdict


def _difference(a: Any, b: Any) -> float:
    """``a − b``, NaN when either is missing (an empty basin) or not finite."""
    if a is None or b is None or not (math.isfinite(a) and math.isfinite(b)):
        return math.nan
    return float(a - b)


def _basin(m: MeasureConfig) -> str:
    """The basin's definition in words: ``L ≤ τ`` or ``L − L(θ0) ≤ τ``."""
    level = "L − L(θ0)" if m.volume_rule == "relative" else "L"
    return f"{{θ : {level}(θ) ≤ {m.volume_threshold:g}}}"


def _remedy_volumes(rows: dict[str, dict[str, Any]], m: MeasureConfig) -> str:
    """Which remedies enlarged the base minimum's basin (a larger ``log V`` on the run's
    own landscape), and whether the two runs' bootstrap intervals are apart."""
    base = rows["base"]
    if base.get("log_volume") is None:
        return (
            f"\nBasin volume: the base minimum's basin {_basin(m)} is empty (its training "
            "loss is above the level); nothing to compare. Raise volume_threshold "
            "(CLI: --threshold).\n"
        )
    moved: dict[str, list[str]] = {"larger": [], "smaller": [], "empty": []}
    for name, row in rows.items():
        if name == "base":
            continue
        d = _difference(row.get("log_volume"), base["log_volume"])
        if math.isnan(d):
            moved["empty"].append(name)
            continue
        lo, hi = (row, base) if d > 0 else (base, row)  # apart: lo's interval above hi's
        apart = lo["log_volume_ci_low"] > hi["log_volume_ci_high"]
        moved["larger" if d > 0 else "smaller"].append(
            f"{name} ({d:+.1f}{'' if apart else ', intervals overlap'})"
        )
    out = (
        VOLUME_NOTE
        + f"\n**Basin volume** of {_basin(m)} on each run's own landscape, log V change "
        "from the base run (95 % bootstrap intervals in the table above). "
        + f"Enlarged the base minimum's basin: {', '.join(moved['larger']) or 'none'}. "
        + f"Did not: {', '.join(moved['smaller']) or 'none'}."
    )
    if moved["empty"]:
        out += f" Empty basin (loss above the level): {', '.join(moved['empty'])}."
    return out + "\n"


def _per_optimiser(reports: list[RunReport], column: str) -> dict[str, list[float]]:
    """``column`` (of ``final`` or ``values``) of every finished ``sgd_*`` / ``sam_*`` run
    that has it, by optimiser, in report order."""
    out: dict[str, list[float]] = {"sgd": [], "sam": []}
    for r in reports:
        kind = r.name.split("_", 1)[0]
        value = r.final.get(column, r.values.get(column))
        if kind in out and not r.diverged and value is not None:
            out[kind].append(float(value))
    return out


def _sam_finish(study: Study | None, reports: list[RunReport], root: Path) -> str:
    """Welch's t-test of SAM's test accuracy against SGD's over the seeds, and of SAM's
    basin volume against SGD's on each landscape (:func:`_sam_volume_text`)."""
    info = _volumes(study, reports, root)
    acc = _per_optimiser(reports, "test_acc")
    lam = _per_optimiser(reports, "lambda_max")
    if min(len(v) for v in acc.values()) < 2:
        return "\nFewer than two finished runs per optimiser: no test.\n"
    diff = float(np.mean(acc["sam"]) - np.mean(acc["sgd"]))
    statistic, pvalue = _welch(acc["sam"], acc["sgd"])
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
    return text + (_sam_volume_text(reports, info, study.measure) if "own" in info else "")


def _sam_volume_text(reports: list[RunReport], info: dict[str, Any], m: MeasureConfig) -> str:
    """Fan, Sandlund & Ko's question in words: SAM's mean ``log V`` against SGD's over the
    seeds on each landscape, Welch's t-test, and whether the answer holds on both."""
    n = info.get("n")
    landscapes = {"its own": ("log_volume", f"own ({info['own']} examples, trained on)")}
    if "more" in info:
        landscapes["more data's"] = ("log_volume_more_data", f"more data (all {info['more']})")
    lines = [
        VOLUME_NOTE,
        "## Is SAM's minimum a larger basin?\n",
        f"log V of the basin {_basin(m)} around each minimum (Fan, Sandlund & Ko), "
        f"{m.volume_directions} rays, on the landscape it trained on and on that of the "
        "whole training set; mean ± SD over the seeds (each run's 95 % bootstrap interval "
        "is in the table above). Radius ratio: exp(Δ/n), the factor on every ray's radius "
        f"that changes log V by Δ in n = {n} dimensions.\n",
        "| landscape | SGD log V | SAM log V | SAM − SGD | radius ratio | Welch's t | p |",
        "|---|---|---|---|---|---|---|",
    ]
    found = {}  # landscape -> (Δ, p) of a defined test, None where it is undefined
    for words, (column, label) in landscapes.items():
        v = _per_optimiser(reports, column)
        t, p = _welch(v["sam"], v["sgd"])
        if not math.isfinite(p):
            lines.append(f"| {label} | {len(v['sgd'])} basins | {len(v['sam'])} basins | n/a | n/a | n/a | n/a |")  # fmt: skip
            found[words] = None
            continue
        d = float(np.mean(v["sam"]) - np.mean(v["sgd"]))
        lines.append(
            f"| {label} | {np.mean(v['sgd']):.1f} ± {np.std(v['sgd'], ddof=1):.1f} | "
            f"{np.mean(v['sam']):.1f} ± {np.std(v['sam'], ddof=1):.1f} | {d:+.1f} | "
            f"{_fmt(math.exp(d / n) if n else None, '{:.4f}')} | {t:.2f} | {p:.3g} |"
        )
        found[words] = (d, p)
    return "\n".join(lines) + "\n\n**Answer:** " + _sam_volume_answer(found) + "\n"


def _sam_volume_answer(found: dict[str, tuple[float, float] | None]) -> str:
    """The sentence that answers "is SAM's minimum a larger basin?" from each landscape's
    ``(Δ log V, Welch's p)`` (``None``: too few non-empty basins, or none varies)."""
    parts, ways, sig = [], [], []
    for words, test in found.items():
        if test is None:
            parts.append(f"on {words} landscape the test is undefined (too few non-empty "
                         "basins, or no spread)")  # fmt: skip
            ways.append(None)
            continue
        d, p = test
        ways.append("larger" if d > 0 else "smaller" if d < 0 else "as large")
        sig.append(p < 0.05)
        parts.append(
            f"on {words} landscape SAM's basin is {ways[-1]} {'as' if d == 0 else 'than'} "
            f"SGD's (Δ log V = {d:+.1f}, p = {p:.3g}, "
            + ("significant)" if sig[-1] else "not significant)")
        )
    text = "; ".join(parts) + "."
    if len(found) == 1:
        return text + " No larger landscape: the runs trained on the whole training set."
    if None in ways:
        return text + " Whether it holds on both landscapes is undetermined."
    if ways[0] != ways[1]:
        return text + f" It does not hold on both landscapes ({ways[0]}, then {ways[1]})."
    how = (
        "significantly on both" if all(sig)
        else "significantly on its own landscape only" if sig[0]
        else "significantly on more data's only" if sig[1]
        else "significantly on neither"
    )  # fmt: skip
    return text + f" It holds on both landscapes: SAM's basin is {ways[0]} on each ({how})."
