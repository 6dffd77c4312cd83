"""The built-in studies: the classic experiments as ready-made grids of runs.

Each builder returns a :class:`~basinscope.study.Study` (runs, measures and an
optional ``finish`` that adds its own analysis to the report); :data:`STUDIES`
names them for ``basinscope run --study``:

* ``lr-batch`` — the classic 4-run grid (Keskar et al. 2017): high/low learning
  rate × large/small batch, with the interpolation between their minima.
* ``lr-batch-grid`` — 3 learning rates × 3 batch sizes × 2 seeds, for the rank
  correlation of every measure with the generalisation gap (Jiang et al. 2019).
* ``remedies`` and ``sam-vs-sgd`` — a sharp large-batch minimum against SAM, ASAM,
  SWA, weight decay, dropout, warm-up + cosine and a small batch (Foret et al.
  2021; Izmailov et al. 2018), and the seed's "does SAM help?" diagnostic.
* ``dataset-size`` and ``poison`` — basin volume against the amount of data and
  against mislabelled data (Fan, Sandlund & Ko; Huang et al. 2020).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from . import plots
from ._io import atomic_write_json
from ._keys import tensor_digest
from .errors import BasinscopeError
from .study import (
    MeasureConfig,
    RunReport,
    Study,
    _fmt,
    _read_json,
    cached_volume,
    model_fingerprint,
    objective_key,
    own_file,
    study_key,
    train_objective,
)
from .surface import interpolate
from .train import TrainConfig


def _mlp_run(**fields: Any) -> TrainConfig:
    """A run of the built-in grids: the MLP 64-128-128-10 unless ``fields`` say otherwise."""
    return TrainConfig(**{"model": "mlp", "model_kwargs": {"widths": (128, 128)}, **fields})


def lr_batch_grid(
    *,
    dataset: str = "digits",
    epochs: int = 100,
    seed: int = 0,
    device: str = "cpu",
    lrs: tuple[float, float] = (0.5, 0.1),
    batch_sizes: tuple[int, int] = (512, 16),
    **overrides: Any,
) -> Study:
    """The classic 4-run grid: {high, low} learning rate × {large, small} batch.

    Same model (an MLP), data, epochs and seed for all four; plain SGD, so the
    only differences are the step size and the gradient noise.
    """
    hi, lo = lrs
    large, small = batch_sizes
    runs = {}
    for lr_name, lr in (("high-lr", hi), ("low-lr", lo)):
        for bs_name, bs in (("large-batch", large), ("small-batch", small)):
            runs[f"{lr_name}_{bs_name}"] = _mlp_run(
                dataset=dataset,
                lr=lr,
                batch_size=bs,
                epochs=epochs,
                seed=seed,
                device=device,
                **overrides,
            )
    return Study(
        name="lr-batch",
        runs=runs,
        description="high/low learning rate × large/small batch (Keskar et al. 2017)",
        measures=("surface", "hessian"),
        finish=_lr_batch_finish,
    )


def _interpolation_pairs(reports: list[RunReport]) -> list[tuple[str, RunReport, RunReport]]:
    """(label, small-batch run, large-batch run) for each learning rate of the grid."""
    by_name = {r.name: r for r in reports if not r.diverged}
    pairs = []
    for name, r in by_name.items():
        if name.endswith("_small-batch"):
            prefix = name[: -len("_small-batch")]
            other = by_name.get(prefix + "_large-batch")
            if other is not None:
                pairs.append((prefix, r, other))
    return pairs


def _lr_batch_finish(study: Study, reports: list[RunReport], root: Path) -> str:
    """Keskar et al.'s Fig. 3: the line from the small-batch to the large-batch
    minimum, ``(1−α)θ_small + αθ_large`` for α ∈ [−0.5, 1.5], at each learning rate."""
    text = ""
    for label, small, large in _interpolation_pairs(reports):
        obj = train_objective(small.model, small.data, small.config.device)
        surf = interpolate(
            obj,
            large.model,
            span=(-0.5, 1.5),
            steps=41,
            test=(small.data.x_test, small.data.y_test),
            path=root / f"interpolation_{label}.h5",
            attrs=own_file(
                root / f"interpolation_{label}.h5",
                study_key(
                    model_fingerprint(small.model, large.model),
                    objective_key(obj),
                    tensor_digest(small.data.x_test, small.data.y_test),
                ),
            ),
            labels=("small batch", "large batch"),
        )
        plots.plot_line(
            surf,
            root / "figures" / f"interpolation_{label}.png",
            title=f"{label}: small-batch (α=0) to large-batch (α=1) minimum",
        )
        inside = (surf.xcoordinates >= 0) & (surf.xcoordinates <= 1)
        ends = max(
            surf.train_loss[surf.xcoordinates == 0][0], surf.train_loss[surf.xcoordinates == 1][0]
        )
        barrier = float(surf.train_loss[inside].max() - ends)
        left = float(surf.train_loss[surf.xcoordinates == -0.5][0])
        right = float(surf.train_loss[surf.xcoordinates == 1.5][0])
        text += (
            f"\n**{label}**, interpolation small → large batch: train-loss barrier between them "
            f"{barrier:.4f}; at α = −0.5 (beyond the small-batch minimum) the train loss is "
            f"{left:.4f}, at α = 1.5 (beyond the large-batch one) {right:.4f}. "
            f"Figure: figures/interpolation_{label}.png.\n"
        )
    return (
        ("\n## Interpolation between minima (Keskar et al. 2017, Fig. 3)\n" + text) if text else ""
    )


def dataset_size_study(
    *,
    dataset: str = "digits",
    sizes: tuple[float, ...] = (0.05, 0.1, 0.3, 1.0),
    steps: int = 3000,
    lr: float = 0.1,
    batch_size: int = 32,
    seed: int = 0,
    device: str = "cpu",
    epochs: int | None = None,
    **overrides: Any,
) -> Study:
    """The same model trained on nested subsets of the data (Fan, Sandlund & Ko).

    Every run takes the same number of optimizer steps (so smaller sets are not
    under-trained), on nested seeded subsets (``data_seed`` is shared), without
    standardisation so that every landscape sees the same inputs. Each minimum's
    basin volume is measured on its own training data and on every other size's
    (the cross-landscape matrix), and ``log V`` is fitted against ``log(size)``.
    ``epochs`` is accepted for CLI symmetry and, if given, replaces ``steps``.
    """
    for f in sizes:
        count = isinstance(f, int | float) and f > 1 and float(f).is_integer()
        if not (count or (isinstance(f, int | float) and 0 < f <= 1)):
            raise BasinscopeError(
                f"dataset sizes must be fractions in (0, 1] or whole counts above 1, got {f}"
            )
    runs = _step_runs(
        {f"size-{f:g}": {"train_size": _train_size(f)} for f in sorted(sizes)},
        dataset=dataset,
        lr=lr,
        batch_size=batch_size,
        seed=seed,
        device=device,
        steps=steps,
        epochs=epochs,
        standardize=False,
        **overrides,
    )
    return Study(
        name="dataset-size",
        runs=runs,
        description="basin volume against training-set size (Fan, Sandlund & Ko)",
        measures=("volume",),
        finish=_dataset_size_finish,
    )


def poison_study(
    *,
    dataset: str = "digits",
    fractions: tuple[float, ...] = (0.0, 0.1, 0.2, 0.4),
    steps: int = 3000,
    lr: float = 0.1,
    batch_size: int = 32,
    seed: int = 0,
    device: str = "cpu",
    epochs: int | None = None,
    **overrides: Any,
) -> Study:
    """Clean data against growing fractions of deliberately mislabelled examples.

    Poisoning as in Huang et al. (2020): each poisoned label is a wrong class.
    Reports per fraction the basin volume on the (poisoned) training data, the
    sharpness measures and test accuracy on clean test data.
    """
    for f in fractions:
        if not (isinstance(f, int | float) and 0 <= f < 1):
            raise BasinscopeError(f"poison fractions must lie in [0, 1), got {f}")
    runs = _step_runs(
        {f"poison-{f:g}": {"label_noise": float(f)} for f in sorted(fractions)},
        dataset=dataset,
        lr=lr,
        batch_size=batch_size,
        seed=seed,
        device=device,
        steps=steps,
        epochs=epochs,
        **overrides,
    )
    return Study(
        name="poison",
        runs=runs,
        description="basin volume, sharpness and test accuracy against label poisoning",
        # Poisoned runs do not reach a near-zero loss in the same budget, so the
        # basin is measured relative to each run's own minimum.
        measure=MeasureConfig(volume_rule="relative"),
        measures=("volume", "surface"),
        finish=_poison_finish,
    )


def _train_size(f: float) -> int | float | None:
    """A study size as a TrainConfig ``train_size``: all, a fraction, or a count."""
    return None if f == 1 else (int(f) if f > 1 else float(f))


def _step_runs(
    variants: dict[str, dict[str, Any]], *, steps: int, epochs: int | None, **common: Any
) -> dict[str, TrainConfig]:
    """One MLP run per variant, all with the same budget: ``steps`` (or ``epochs``)."""
    budget = {"epochs": epochs, "steps": None} if epochs else {"epochs": 1, "steps": steps}
    return {
        name: TrainConfig(model="mlp", model_kwargs={"widths": (64, 64)}, **budget, **common, **v)
        for name, v in variants.items()
    }


def _ok(reports: list[RunReport]) -> list[RunReport]:
    return [r for r in reports if not r.diverged and r.values.get("log_volume") is not None]


def _dataset_size_finish(study: Study, reports: list[RunReport], root: Path) -> str:
    """Cross-landscape volume matrix, the power-law fit and their figures."""
    from scipy import stats

    fig = root / "figures"
    done = [r for r in reports if not r.diverged]
    for r in done:
        r.values["n_train"] = len(r.data.y_train)
    matrix = np.full((len(done), len(done)), np.nan)
    for i, r in enumerate(done):
        for j, other in enumerate(done):
            own = other is r  # the diagonal is the run's own volume.json
            path = root / r.name / ("volume.json" if own else f"volume_on_{other.name}.json")
            res = cached_volume(r.model, other.data, study.measure, path, r.config.device)
            matrix[i, j] = np.nan if res.get("log_volume") is None else res["log_volume"]
    names = [r.name for r in done]
    atomic_write_json(
        root / "cross_landscape.json", {"rows": names, "cols": names, "log_volume": matrix.tolist()}
    )
    text = (
        VOLUME_NOTE
        + "\n## Cross-landscape log volume\n\nrow: model trained on; column: landscape.\n\n"
    )
    text += "| model \\ landscape | " + " | ".join(names) + " |\n|---|" + "---|" * len(names) + "\n"
    for name, row in zip(names, matrix, strict=True):
        text += f"| {name} | " + " | ".join(_fmt(float(v), "{:.1f}") for v in row) + " |\n"
    if done:
        plots.plot_matrix(
            matrix,
            names,
            names,
            fig / "cross_landscape.png",
            title="log basin volume",
            label="log V",
            xlabel="landscape (training data)",
            ylabel="model trained on",
        )
    text += _fan_plane(done, study.measure, root)
    ok = _ok(done)
    if len(ok) >= 2:
        sizes = np.array([r.values["n_train"] for r in ok], dtype=np.float64)
        logv = np.array([r.values["log_volume"] for r in ok])
        fit = stats.linregress(np.log(sizes), logv)
        atomic_write_json(
            root / "fit.json",
            {
                "slope": fit.slope,
                "intercept": fit.intercept,
                "r2": fit.rvalue**2,
                "sizes": sizes.tolist(),
                "log_volume": logv.tolist(),
            },
        )
        plots.plot_xy(
            sizes,
            {"log V (own landscape)": logv},
            fig / "volume_vs_size.png",
            xlabel="training examples",
            ylabel="log basin volume",
            logx=True,
            fit=(fit.slope, fit.intercept),
        )
        plots.plot_xy(
            sizes,
            {"test accuracy": [r.final.get("test_acc") for r in ok]},
            fig / "test_acc_vs_size.png",
            xlabel="training examples",
            ylabel="test accuracy",
            logx=True,
        )
        text += (
            f"\nPower-law fit on the own landscapes: log V = {fit.intercept:.2f} + "
            f"{fit.slope:.2f}·log(size), R² = {fit.rvalue**2:.3f}.\n"
        )
    return text


def _fan_plane(done: list[RunReport], m: MeasureConfig, root: Path) -> str:
    """Fan, Sandlund & Ko's Fig. 1: the plane through the minima trained on the most,
    a middle and the least data, on the landscape of the most data."""
    from .surface import three_model_plane

    distinct = {r.values["n_train"]: r for r in done}  # one run per training-set size
    if len(distinct) < 3:
        return ""
    chosen = [distinct[k] for k in sorted(distinct, reverse=True)]
    big, mid, small = chosen[0], chosen[len(chosen) // 2], chosen[-1]
    obj = train_objective(big.model, big.data, big.config.device)
    labels = tuple(f"{r.values['n_train']} ex." for r in (big, mid, small))
    try:
        surf = three_model_plane(
            obj,
            (big.model, mid.model, small.model),
            labels=labels,
            steps=m.grid_size,
            path=root / "plane_three_sizes.h5",
            attrs=own_file(
                root / "plane_three_sizes.h5",
                study_key(
                    model_fingerprint(big.model, mid.model, small.model),
                    objective_key(obj),
                    m.grid_size,
                ),
            ),
        )
    except BasinscopeError as exc:  # e.g. two sizes gave the same minimum
        return f"\nNo plane through three minima: {exc}.\n"
    plots.plot_contour(
        surf,
        root / "figures" / "plane_three_sizes.png",
        title=f"landscape of {labels[0]}: minima from {', '.join(labels)}",
    )
    own = dict(surf.attrs["mark_losses"])
    return (
        "\n## The plane through three minima (Fan et al., Fig. 1)\n\n"
        "On the landscape of the largest training set, the train loss at the minima "
        + ", ".join(f"trained on {k}: {v:.4f}" for k, v in own.items())
        + ". Figure: figures/plane_three_sizes.png.\n"
    )


VOLUME_NOTE = (
    "\nlog volume: natural log of the star-convex Monte-Carlo estimate "
    "V_n(1)·mean(r_iⁿ) over random rays (Fan, Sandlund & Ko). In this many dimensions "
    "the mean is dominated by the largest radius (ESS ≈ 1), so the estimate is in "
    "effect a lower bound on the volume; compare runs, not absolute values.\n"
)


def _poison_finish(study: Study, reports: list[RunReport], root: Path) -> str:
    """Volume and test accuracy against the poisoned fraction."""
    ok = _ok(reports)
    for r in reports:
        r.values["label_noise"] = r.config.label_noise
    if len(ok) >= 2:
        x = [r.config.label_noise for r in ok]
        plots.plot_xy(
            x,
            {"log V": [r.values["log_volume"] for r in ok]},
            root / "figures" / "volume_vs_poison.png",
            xlabel="fraction of mislabelled training examples",
            ylabel="log basin volume",
        )
        plots.plot_xy(
            x,
            {"test accuracy": [r.final.get("test_acc") for r in ok]},
            root / "figures" / "test_acc_vs_poison.png",
            xlabel="fraction of mislabelled training examples",
            ylabel="test accuracy",
        )
    return VOLUME_NOTE


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


def lr_batch_grid_study(
    *,
    dataset: str = "digits",
    epochs: int = 60,
    lrs: tuple[float, ...] = (0.5, 0.2, 0.1),
    batch_sizes: tuple[int, ...] = (16, 64, 512),
    seeds: tuple[int, ...] = (0, 1),
    seed: int = 0,
    device: str = "cpu",
    **overrides: Any,
) -> Study:
    """Learning rate × batch size × seed (default 3 × 3 × 2 = 18 runs): the pool over
    which every measure's rank correlation with the generalisation gap is computed
    (Jiang et al. 2019). ``seed`` offsets the seeds."""
    runs = {}
    for lr in lrs:
        for bs in batch_sizes:
            for s in seeds:
                runs[f"lr{lr:g}_b{bs}_s{seed + s}"] = _mlp_run(
                    dataset=dataset,
                    lr=lr,
                    batch_size=bs,
                    epochs=epochs,
                    seed=seed + s,
                    device=device,
                    **overrides,
                )
    return Study(
        name="lr-batch-grid",
        runs=runs,
        description="which sharpness measure predicts the generalisation gap",
        measure=MeasureConfig(grid_size=11),
        measures=("surface", "hessian", "suite"),
    )


# Measures where a larger value means a flatter minimum.
_FLATTER_IF_LARGER = {"pac_bayes_sigma", "pac_bayes_mag_sigma", "log_volume"}
_REMEDY_MEASURES = (
    "eps_sharpness_direct",
    "noise_sharpness",
    "lambda_max",
    "hessian_trace",
    "worst_case_l2",
    "adaptive_worst_case",
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


STUDIES: dict[str, Callable[..., Study]] = {
    "lr-batch": lr_batch_grid,
    "dataset-size": dataset_size_study,
    "poison": poison_study,
    "remedies": remedies_study,
    "sam-vs-sgd": sam_vs_sgd_study,
    "lr-batch-grid": lr_batch_grid_study,
}
