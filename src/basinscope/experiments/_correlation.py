"""Which sharpness measure predicts generalisation: rank correlations over runs.

Jiang et al. (2019), "Fantastic Generalization Measures and Where to Find
Them", judge a complexity measure by how well it ranks trained models by their
generalisation gap. For runs ``i`` with measure ``μ_i`` and gap ``g_i``,
Kendall's rank correlation (SciPy's ``kendalltau``, τ-b, which handles ties) is

    τ = (concordant pairs − discordant pairs) / √((n0 − n1)(n0 − n2)),

+1 when the measure orders the runs exactly as the gap does. Their
*granulated* coefficient averages, for each hyperparameter, τ over the groups
of runs that differ only in that hyperparameter, and then over
hyperparameters, ``Ψ = (1/|H|) Σ_h mean_groups τ``: it asks whether the
measure tracks the gap when one training choice changes at a time, not only
across the whole pool.

Gaps: ``gap_loss = test loss − train loss`` and ``gap_acc = train accuracy −
test accuracy``; also ``test_error = 1 − test accuracy`` (derived from
``test_acc`` when absent). Measures where larger means *flatter* (PAC-Bayes σ, basin
volume) are expected to correlate negatively; :data:`FLAT_IS_LARGE` lists them.
"""

from __future__ import annotations

import csv
import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._io import atomic_write_json, atomic_write_text
from .._results import to_json
from ..errors import BasinscopeError

GAPS = {
    "gap_loss": "test − train loss",
    "gap_acc": "train − test accuracy",
    "test_error": "test error (1 − test accuracy)",
}
"""What the measures are ranked against: the two generalisation gaps and, since a
gap can shrink because the training fit got worse, the test error itself."""

MEASURE_COLUMNS = {
    "eps_sharpness_surface": "ε-sharpness (grid)",
    "eps_sharpness_direct": "ε-sharpness (direct)",
    "spread_eps_mean": "ε-sharpness (mean over direction seeds)",
    "spread_curvature_mean": "slice curvature (mean over direction seeds)",
    "noise_sharpness": "noise sharpness",
    "average_case_adaptive": "adaptive noise sharpness",
    "worst_case_l2": "worst-case L2",
    "worst_case_linf": "worst-case L∞",
    "worst_case_adaptive": "adaptive worst-case",
    "keskar": "Keskar φ",
    "pac_bayes_sigma": "PAC-Bayes σ",
    "pac_bayes_bound": "PAC-Bayes bound term",
    "pac_bayes_mag_sigma": "PAC-Bayes mag. σ'",
    "pac_bayes_mag_bound": "PAC-Bayes mag. bound term",
    "lambda_max": "λ_max",
    "hessian_trace": "tr H",
    "log_volume": "log volume",
    "param_norm": "‖θ‖₂",
}
"""Summary columns that are measures of a minimum, with display names."""

FLAT_IS_LARGE = frozenset({"pac_bayes_sigma", "pac_bayes_mag_sigma", "log_volume"})
"""Measures that grow as the minimum gets flatter (expected τ < 0 against the gap)."""

HYPERPARAMETERS = ("lr", "batch_size", "sam_rho", "weight_decay", "dropout")
"""Columns that describe how a run was trained (the granulated coefficient's axes).
The seed is not one: runs differing only in their seed are repeats."""


@dataclass(frozen=True)
class Correlation:
    """Kendall's τ between one measure and one gap over ``n`` runs.

    Attributes:
        measure, gap: column names.
        tau: Kendall's τ-b over all runs (NaN when undefined, e.g. a constant column).
        p_value: SciPy's two-sided p-value for τ = 0.
        n: runs with both values.
        granulated: Jiang et al.'s Ψ over the hyperparameters that vary (NaN
            when no hyperparameter has a group of ≥ 2 runs differing only in it).
        per_hyperparameter: the mean τ within groups for each such hyperparameter.
    """

    measure: str
    gap: str
    tau: float
    p_value: float
    n: int
    granulated: float
    per_hyperparameter: dict[str, float]


def _number(v: Any) -> float:
    if v is None or v == "" or isinstance(v, bool):
        return math.nan
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _given(v: Any) -> bool:
    """``v`` is a number (NaN and infinity included), not a missing value."""
    if v is None or v == "" or isinstance(v, bool):
        return False
    try:
        float(v)
    except (TypeError, ValueError):
        return False
    return True


def _nonfinite(v: Any) -> bool:
    """A number that is NaN or infinite (a diverged measurement); missing is not."""
    return _given(v) and not math.isfinite(float(v))


def _coarse(row: Mapping[str, Any]) -> set[str]:
    """The columns of ``row`` flagged as coarse estimates (``coarse_measures``: names
    separated by spaces, as a study's summary writes them, or a list)."""
    flagged = row.get("coarse_measures")
    if not flagged:
        return set()
    return set(flagged.split() if isinstance(flagged, str) else flagged)


def excluded_measures(
    rows: Sequence[Mapping[str, Any]], measures: Sequence[str] | None = None
) -> dict[str, str]:
    """Measures that must not be ranked, with the reason: those flagged as a coarse
    estimate for any run (ε-sharpness read off a grid with too few points within ε is
    rounding noise), and those that are NaN or infinite for any run (a diverged
    measurement). Runs whose ``status`` is not ``"ok"`` are not considered.

    Returns:
        ``{measure: reason}`` for ``measures`` (default: every :data:`MEASURE_COLUMNS`).
    """
    ok = [r for r in rows if r.get("status", "ok") == "ok"]
    out: dict[str, str] = {}
    for m in MEASURE_COLUMNS if measures is None else measures:
        coarse = [str(r.get("run", i)) for i, r in enumerate(ok) if m in _coarse(r)]
        broken = [str(r.get("run", i)) for i, r in enumerate(ok) if _nonfinite(r.get(m))]
        reasons = []
        if coarse:
            reasons.append(f"a coarse estimate or only a bound for {_runs(coarse)}")
        if broken:
            reasons.append(f"not finite (NaN or infinite) for {_runs(broken)}")
        if reasons:
            out[m] = " and ".join(reasons)
    return out


def _runs(names: Sequence[str]) -> str:
    return ("run " if len(names) == 1 else "runs ") + ", ".join(names)


def _tau(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    from scipy import stats

    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan, math.nan
    res = stats.kendalltau(x, y)
    return float(res.statistic), float(res.pvalue)


def _granulated(
    rows: Sequence[Mapping[str, Any]], measure: str, gap: str, hyper: Sequence[str]
) -> tuple[float, dict[str, float]]:
    """Jiang et al.'s Ψ: for each hyperparameter h, mean τ over groups of runs equal in
    every other hyperparameter; then the mean over the h that have such groups."""
    per: dict[str, float] = {}
    for h in hyper:
        others = [k for k in hyper if k != h]
        groups: dict[tuple, list[Mapping[str, Any]]] = {}
        for r in rows:
            groups.setdefault(tuple(str(r.get(k)) for k in others), []).append(r)
        taus = []
        for members in groups.values():
            x = np.array([_number(r.get(measure)) for r in members])
            y = np.array([_number(r.get(gap)) for r in members])
            ok = np.isfinite(x) & np.isfinite(y)
            if ok.sum() >= 2:
                t, _ = _tau(x[ok], y[ok])
                if math.isfinite(t):
                    taus.append(t)
        if taus:
            per[h] = float(np.mean(taus))
    return (float(np.mean(list(per.values()))) if per else math.nan), per


def rank_correlations(
    rows: Sequence[Mapping[str, Any]],
    *,
    measures: Sequence[str] | None = None,
    gaps: Sequence[str] = tuple(GAPS),
    hyperparameters: Sequence[str] = HYPERPARAMETERS,
) -> list[Correlation]:
    """Kendall's τ (and the granulated Ψ) of every measure against every gap.

    Args:
        rows: one mapping per run (a study's summary rows); runs whose
            ``status`` is not ``"ok"`` are left out.
        measures: columns to rank (default: every :data:`MEASURE_COLUMNS` present);
            those :func:`excluded_measures` names (coarse or non-finite for some run)
            are never ranked.
        gaps: gap columns (default both of :data:`GAPS`).
        hyperparameters: columns defining the granulated coefficient's axes;
            only those that take more than one value are used.

    Raises:
        BasinscopeError: fewer than 3 usable runs.
    """
    ok = [_with_test_error(r) for r in rows if r.get("status", "ok") == "ok"]
    if len(ok) < 3:
        raise BasinscopeError(
            f"a rank correlation needs at least 3 finished runs, got {len(ok)}; "
            "run a study with more runs (e.g. STUDIES['lr-batch-grid']; CLI: --study "
            "lr-batch-grid)"
        )
    if measures is None:
        measures = [m for m in MEASURE_COLUMNS if any(math.isfinite(_number(r.get(m))) for r in ok)]
    excluded = excluded_measures(ok, measures)
    measures = [m for m in measures if m not in excluded]
    if not measures:
        raise BasinscopeError(
            "the runs have no sharpness measure to correlate"
            + (
                f" (excluded: {'; '.join(f'{m}, {why}' for m, why in excluded.items())})"
                if excluded
                else "; expected columns such as " + ", ".join(list(MEASURE_COLUMNS)[:4])
            )
        )
    hyper = [h for h in hyperparameters if len({str(r.get(h)) for r in ok}) > 1]
    out = []
    for m, g in itertools.product(measures, gaps):
        x = np.array([_number(r.get(m)) for r in ok])
        y = np.array([_number(r.get(g)) for r in ok])
        keep = np.isfinite(x) & np.isfinite(y)
        tau, p = _tau(x[keep], y[keep]) if keep.sum() >= 3 else (math.nan, math.nan)
        psi, per = _granulated([r for r, k in zip(ok, keep, strict=True) if k], m, g, hyper)
        out.append(Correlation(m, g, tau, p, int(keep.sum()), psi, per))
    return out


def _with_test_error(row: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(row)
    if "test_error" not in out and math.isfinite(_number(out.get("test_acc"))):
        out["test_error"] = 1.0 - _number(out["test_acc"])
    return out


_NOT_HYPERPARAMETERS = frozenset({"seed", "device", "data_dir", "eval_every_epoch"})


def _with_config(
    rows: Sequence[Mapping[str, Any]], study_json: Path
) -> tuple[list[dict[str, Any]], Sequence[str]]:
    """Rows with every varying training setting of ``study.json`` as a ``config:<k>``
    column, and those columns as the hyperparameters (or the rows as they are)."""
    import json

    rows = [dict(r) for r in rows]
    try:
        runs = json.loads(study_json.read_text())["runs"]
    except (OSError, ValueError, KeyError, TypeError):
        return rows, HYPERPARAMETERS
    configs = [runs.get(str(r.get("run"))) for r in rows]
    if not rows or any(c is None for c in configs):
        return rows, HYPERPARAMETERS
    keys = [k for k in configs[0] if k not in _NOT_HYPERPARAMETERS]
    enc = lambda v: json.dumps(v, sort_keys=True, default=str)  # noqa: E731
    varying = [k for k in keys if len({enc(c.get(k)) for c in configs}) > 1]
    for r, c in zip(rows, configs, strict=True):
        r.update({f"config:{k}": enc(c.get(k)) for k in varying})
    return rows, [f"config:{k}" for k in varying]


def read_summary(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a study's ``summary.csv`` (a study directory or the file itself)."""
    path = Path(path)
    if path.is_dir():
        path = path / "summary.csv"
    if not path.is_file():
        raise BasinscopeError(
            f"{str(path)!r} does not exist; give a study directory written by 'basinscope run'"
        )
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def correlation_markdown(
    results: Sequence[Correlation], excluded: Mapping[str, str] | None = None
) -> str:
    """The correlations as a Markdown table, one row per measure, and the measures
    ``excluded`` from it (``{measure: reason}``, see :func:`excluded_measures`)."""
    gaps = list(dict.fromkeys(c.gap for c in results))
    by = {(c.measure, c.gap): c for c in results}
    head = ["measure"] + [f"τ vs {g}" for g in gaps] + [f"Ψ vs {g}" for g in gaps] + ["runs"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    fmt = lambda v: "n/a" if not math.isfinite(v) else f"{v:+.2f}"  # noqa: E731
    for m in dict.fromkeys(c.measure for c in results):
        cs = [by[(m, g)] for g in gaps]
        name = MEASURE_COLUMNS.get(m, m) + (" (↑ flatter)" if m in FLAT_IS_LARGE else "")
        cells = [
            fmt(c.tau) + (f" (p={c.p_value:.2g})" if math.isfinite(c.p_value) else "") for c in cs
        ]
        cells += [fmt(c.granulated) for c in cs]
        lines.append("| " + " | ".join([name, *cells, str(max(c.n for c in cs))]) + " |")
    return (
        "\n".join(lines)
        + "\n\nτ: Kendall's rank correlation over all runs (+1: the measure orders the runs "
        "exactly as the gap). Ψ: Jiang et al.'s granulated τ, averaged over groups of runs "
        "that differ in one hyperparameter only. A sharpness measure that predicts "
        "generalisation has τ > 0; measures marked ↑ flatter should have τ < 0. The test "
        "error is shown beside the gaps because a gap also shrinks when the training fit "
        "gets worse.\n" + _excluded_markdown(excluded or {})
    )


def _excluded_markdown(excluded: Mapping[str, str]) -> str:
    if not excluded:
        return ""
    lines = [f"- {MEASURE_COLUMNS.get(m, m)}: {why}." for m, why in excluded.items()]
    return (
        "\nExcluded from the rankings (a coarse estimate is rounding noise on too few grid "
        "points within ε; a non-finite value comes from a diverged measurement):\n\n"
        + "\n".join(lines)
        + "\n"
    )


def correlation_report(
    rows: Sequence[Mapping[str, Any]], out: str | Path, *, title: str = ""
) -> str:
    """Write ``correlation.md``/``correlation.json`` and one scatter plot per measure
    (``figures/scatter_<measure>.png``, measure against the loss gap) under ``out``;
    return the Markdown.

    When ``out`` holds the study's ``study.json`` (``basinscope run`` writes it),
    the granulated Ψ groups runs by *every* training setting that varies across
    the study (except the seed), read from there, so that two runs count as
    differing in one hyperparameter only when nothing else differs; otherwise
    by the columns of :data:`HYPERPARAMETERS`.
    """
    from .. import plots  # matplotlib only when figures are drawn

    out = Path(out)
    rows, hyper = _with_config(rows, out / "study.json")
    results = rank_correlations(rows, hyperparameters=hyper)
    present = [m for m in MEASURE_COLUMNS if any(_given(r.get(m)) for r in rows)]
    excluded = excluded_measures(rows, present)
    text = (f"## {title}\n\n" if title else "") + correlation_markdown(results, excluded)
    atomic_write_text(out / "correlation.md", text)
    atomic_write_json(out / "correlation.json", [to_json(c) for c in results])
    ok = [r for r in rows if r.get("status", "ok") == "ok"]
    lrs = [f"lr {r.get('lr')}" if r.get("lr") not in (None, "") else "" for r in ok]
    for m in dict.fromkeys(c.measure for c in results):
        x = [_number(r.get(m)) for r in ok]
        tau = next(c.tau for c in results if c.measure == m and c.gap == "gap_loss")
        plots.plot_scatter(
            x,
            [_number(r.get("gap_loss")) for r in ok],
            out / "figures" / f"scatter_{m}.png",
            labels=[str(r.get("run", "")) for r in ok],
            groups=lrs if any(lrs) else None,
            xlabel=MEASURE_COLUMNS.get(m, m),
            ylabel="generalisation gap (test − train loss)",
            title=f"Kendall τ = {tau:+.2f}" if math.isfinite(tau) else None,
        )
    return text
