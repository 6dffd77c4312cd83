"""Warm-up and the edge of stability (Goyal et al. 2017; Cohen et al. 2021; Gilmer et al. 2022).

``warmup`` trains the causal transformer (one block) on the Markov language (next-token
prediction with a known optimum, the chain's entropy rate) with plain SGD at one peak
learning rate ``η`` three ways: constant, linear warm-up only, and warm-up + cosine
(:func:`basinscope.training.lr_factor`). The peak is one where the constant schedule is
unstable early (its loss spikes; slightly above it, it diverges). Along each run
``λ_max(∇²L)`` (:func:`~basinscope.experiments.measure_along`) is drawn against the
stability line ``2/η(t)``: gradient descent on a quadratic with curvature ``λ`` diverges
for ``λ > 2/η``. With SGD that line is the threshold for the plain Hessian; for Adam it
would be the preconditioned sharpness ``λ_max(P⁻¹H)`` that meets ``2/η`` (Cohen et al.
2022), which needs the optimizer state — hence SGD here. Each run's final sharpness,
surface (a filter-normalised plane, Li et al. 2018) and test loss are reported.

``η(t)`` at the snapshot after ``t`` steps is the learning rate of the step that follows
(of the last step taken, at the end): ``lr · lr_factor(min(t, T − 1), T, W, schedule)``.
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path
from typing import Any

from .._io import atomic_write_json
from ..training import TrainConfig, lr_factor
from ._along import AlongSettings, LambdaMaxSettings, measure_along
from ._measures import MeasureConfig
from ._runner import Study
from ._summary import RunReport

SCHEDULE_RUNS = {
    "constant": {"warmup_steps": 0, "schedule": "constant"},
    "warmup": {"schedule": "constant"},
    "warmup-cosine": {"schedule": "cosine"},
}
"""The three runs: their schedule options (``warmup_steps`` W for the last two)."""
ALONG_SETTINGS = AlongSettings(lambda_max=LambdaMaxSettings(tol=1e-3, max_products=200))


def warmup_study(
    *,
    lr: float = 1.0,
    warmup_steps: int = 100,
    steps: int = 320,
    batch_size: int = 32,
    train_size: int = 256,
    snapshot_every: int = 2,
    d_model: int = 32,
    n_heads: int = 2,
    seed: int = 0,
    device: str = "cpu",
    dataset: str = "markov-lm",
    data_dir: str | None = None,
    epochs: int | None = None,
    grid_size: int = 15,
    settings: AlongSettings = ALONG_SETTINGS,
    **overrides: Any,
) -> Study:
    """Constant, warm-up and warm-up + cosine at the peak ``lr`` (SGD, no momentum).

    Every run takes ``steps`` (or ``epochs``) minibatch steps on ``train_size``
    sequences and keeps a snapshot every ``snapshot_every`` epochs (an epoch is
    ``train_size / batch_size`` steps). ``warmup_steps`` is W of the warm-up runs.
    """
    budget = {"epochs": epochs, "steps": None} if epochs else {"epochs": 1, "steps": steps}
    runs = {}
    for name, schedule in SCHEDULE_RUNS.items():
        runs[name] = TrainConfig(
            **{
                "dataset": dataset,
                "data_dir": data_dir,
                "train_size": train_size,
                "model": "transformer",
                "model_kwargs": {"d_model": d_model, "n_heads": n_heads, "n_layers": 1},
                "optimizer": "sgd",
                "lr": lr,
                "batch_size": batch_size,
                "warmup_steps": warmup_steps,
                "snapshot_every": snapshot_every,
                "seed": seed,
                "device": device,
                **budget,
                **schedule,
                **overrides,
            }
        )
    return Study(
        name="warmup",
        runs=runs,
        description="warm-up, λ_max along training and the 2/η stability line",
        measure=MeasureConfig(grid_size=grid_size),
        measures=("surface",),
        finish=functools.partial(_warmup_finish, settings=settings),
    )


def eta_at(config: TrainConfig, n_train: int, steps: list[int] | tuple[int, ...]) -> list[float]:
    """``η(t)`` at each snapshot step ``t``: ``lr · lr_factor(min(t, T − 1), T, W, schedule)``,
    the learning rate of the step after ``t`` (the last step's at ``t = T``)."""
    total = config.total_steps(n_train)
    return [
        config.lr * lr_factor(min(t, total - 1), total, config.warmup_steps, config.schedule)
        for t in steps
    ]


def _history(run_dir: Path) -> list[dict[str, Any]]:
    """The run's per-epoch records (``metrics.json``)."""
    return json.loads((run_dir / "metrics.json").read_text())["history"]


def early_spike(history: list[dict[str, Any]], until: int) -> float:
    """The largest rise of the train loss from one evaluation to the next within the first
    ``until`` steps (``0`` when it only fell): how far the loss spiked early."""
    early = [h["train_loss"] for h in history if h["step"] <= until and "train_loss" in h]
    rises = [b - a for a, b in zip(early, early[1:], strict=False)]
    return max([0.0, *(r for r in rises if math.isfinite(r))]) if rises else 0.0


def _run_record(report: RunReport, root: Path, settings: AlongSettings) -> dict[str, Any]:
    """λ_max along one run against 2/η, its early spike and its final numbers."""
    run_dir = root / report.name
    along = measure_along(
        run_dir,
        ["lambda_max"],
        out=run_dir / "along",
        data=report.data,
        settings=settings,
        device=report.config.device,
    )
    n_train = len(report.data.y_train)
    steps = list(along.steps)
    eta = eta_at(report.config, n_train, steps)
    lam = along.series["lambda_max"]
    ratio = [None if v is None else v * e / 2 for v, e in zip(lam, eta, strict=True)]
    w = max(report.config.warmup_steps, 1)
    early = [i for i, s in enumerate(steps) if s <= w]
    finite = [r for i, r in enumerate(ratio) if i in early and r is not None]
    rec = {
        "steps": steps,
        "eta": eta,
        "two_over_eta": [2 / e if e > 0 else None for e in eta],
        "lambda_max": lam,
        "ratio": ratio,  # λ_max · η / 2: above 1 beyond the stability edge
        "early_until": w,
        "early_max_lambda": max((lam[i] for i in early if lam[i] is not None), default=None),
        "early_max_ratio": max(finite, default=None),
        "above_edge": sum(r is not None and r > 1 for r in ratio),
        "early_spike": early_spike(_history(run_dir), w),
        "final_lambda": lam[-1],
        "diverged": report.diverged,
    }
    return rec


def _warmup_finish(
    study: Study, reports: list[RunReport], root: Path, *, settings: AlongSettings
) -> str:
    """λ_max against 2/η per run (``warmup.json``, ``figures/edge_of_stability.png``)."""
    from .. import plots

    records = {r.name: _run_record(r, root, settings) for r in reports}
    # the early window is the warm-up's W for every run (the constant run has none)
    w = max(r.config.warmup_steps for r in reports)
    for name, r in zip(records, reports, strict=True):
        rec = records[name]
        idx = [i for i, s in enumerate(rec["steps"]) if s <= w]
        ratios = [rec["ratio"][i] for i in idx if rec["ratio"][i] is not None]
        lams = [rec["lambda_max"][i] for i in idx if rec["lambda_max"][i] is not None]
        rec.update(early_until=w, early_max_ratio=max(ratios, default=None))
        rec.update(early_max_lambda=max(lams, default=None))
        rec["early_spike"] = early_spike(_history(root / r.name), w)
        r.values.update(
            lambda_max=rec["final_lambda"],
            early_max_lambda=rec["early_max_lambda"],
            early_max_lambda_eta_over_2=rec["early_max_ratio"],
            early_loss_spike=rec["early_spike"],
        )
    atomic_write_json(root / "warmup.json", records)
    first = next(iter(records.values()))
    series: dict[str, list[Any]] = {}
    for name, rec in records.items():
        series[f"{name}: λ_max"] = _pad(rec["lambda_max"], len(first["steps"]))
        series[f"{name}: 2/η(t)"] = _pad(rec["two_over_eta"], len(first["steps"]))
    plots.plot_xy(
        first["steps"],
        {k: [math.nan if v is None else v for v in vs] for k, vs in series.items()},
        root / "figures" / "edge_of_stability.png",
        xlabel="step",
        ylabel="λ_max(∇²L) and 2/η(t)",
        title=f"SGD, peak η = {reports[0].config.lr:g}: sharpness against the stability line",
    )
    return warmup_markdown(records, reports)


def _pad(values: list[Any], n: int) -> list[Any]:
    return list(values[:n]) + [None] * (n - len(values))


def warmup_markdown(records: dict[str, dict[str, Any]], reports: list[RunReport]) -> str:
    """The summary's warm-up section and its answer sentence."""
    lines = [
        "\n## Does warm-up avoid the sharp early region?\n",
        "λ_max of the training-loss Hessian (Lanczos) at every snapshot against the "
        "stability line 2/η(t) of the scheduled learning rate (SGD: GD on a quadratic "
        "diverges for λ > 2/η). Early: the first W steps (the warm-up's length).\n",
        "| run | early max λ_max | early max λ_max·η/2 | snapshots above 2/η | "
        "early loss spike | final λ_max | test loss |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in reports:
        rec = records[r.name]
        cells = [
            _num(rec["early_max_lambda"]),
            _num(rec["early_max_ratio"]),
            str(rec["above_edge"]),
            _num(rec["early_spike"]),
            _num(rec["final_lambda"]),
            _num(r.final.get("test_loss")),
        ]
        lines.append(f"| {r.name} | " + " | ".join(cells) + " |")
    lines.append("\n" + answer_sentence(records) + "\n")
    lines.append("Figure: figures/edge_of_stability.png (λ_max and 2/η(t) per run).\n")
    return "\n".join(lines)


def answer_sentence(records: dict[str, dict[str, Any]]) -> str:
    """ "Does warm-up avoid the sharp early region?" answered with the measured numbers."""
    const = records.get("constant")
    warm = [(n, rec) for n, rec in records.items() if n != "constant"]
    if const is None or not warm or const["early_max_ratio"] is None:
        return "Does warm-up avoid the sharp early region? Not measured (a run is missing)."
    ok = all(
        rec["early_max_ratio"] is not None and rec["early_max_ratio"] < const["early_max_ratio"]
        for _, rec in warm
    )
    parts = ", ".join(
        f"{n} {_num(rec['early_max_ratio'])} (spike {_num(rec['early_spike'])})" for n, rec in warm
    )
    verdict = "Yes" if ok else "No"
    return (
        f"Does warm-up avoid the sharp early region? {verdict}: in the first "
        f"{const['early_until']} steps the largest λ_max·η/2 (1 = the stability edge) is "
        f"{_num(const['early_max_ratio'])} with a constant learning rate (loss spike "
        f"{_num(const['early_spike'])}) against {parts} with warm-up."
    )


def _num(v: Any) -> str:
    return "n/a" if v is None else f"{v:.4g}"
