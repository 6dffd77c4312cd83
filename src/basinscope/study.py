"""Studies: grids of training runs, each measured the same way, with a report.

A study is a list of named runs (each a :class:`~basinscope.train.TrainConfig`)
plus the measurement settings shared by all of them. :func:`run_study` trains
every run, computes its filter-normalised 2-D surface on the training and test
data (Li et al. 2018), its sharpness, and writes figures and a summary table:

    results/<study>/
        study.json                    the resolved study config
        <run>/config.json, model.pt, metrics.json      (train.py)
        <run>/surface.h5              the plane, resumable
        <run>/sharpness.json          both sharpness measures + their settings
        figures/*.png                 3-D surfaces, contours, grid, bar charts
        summary.csv, summary.md       one row per run

Everything is skipped when already done with the same settings, and every
partial result is resumable, so re-running a killed study loses nothing.

Built-in studies live in :data:`STUDIES`; ``lr-batch`` is the classic 4-run grid
(Keskar et al. 2017): high/low learning rate × large/small batch, same model,
data and epochs.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from . import plots, sharpness
from ._io import atomic_write_json, atomic_write_text
from .data import DataBundle
from .directions import random_directions
from .errors import BasinscopeError
from .objective import Objective
from .surface import Surface, interpolate, plane
from .train import TrainConfig, load_config_data, train
from .train import _fingerprint as data_fingerprint


@dataclass
class MeasureConfig:
    """How every run of a study is measured.

    Attributes:
        grid_size: points per axis of the 2-D surface (``grid_size²`` in all).
        span: the coefficient range of both axes, in filter-normalised units.
        direction_seed: seed of the two random directions (the same for every run;
            each is filter-normalised against that run's own weights).
        skip_bias_norm: keep biases and normalisation parameters fixed (Li et al.).
        radius: ε of the ε-sharpness (max loss increase within ``‖c‖ ≤ ε``).
        sigma: σ of the Gaussian weight-noise sharpness.
        noise_samples: S, samples of weight noise.
        noise_seed: seed of the weight noise.
        eval_subset: evaluate surfaces on at most this many training examples
            (a fixed seeded subset); ``None`` for all.
    """

    grid_size: int = 31
    span: tuple[float, float] = (-1.0, 1.0)
    direction_seed: int = 0
    skip_bias_norm: bool = True
    radius: float = 0.25
    sigma: float = 0.05
    noise_samples: int = 32
    noise_seed: int = 0
    eval_subset: int | None = None
    volume_threshold: float = 0.1
    volume_rule: str = "absolute"
    volume_directions: int = 50
    volume_tolerance: float = 1e-2
    worst_radius: float = 0.1
    worst_linf_radius: float = 0.002
    adaptive_radius: float = 0.5
    adaptive_sigma: float = 0.05
    keskar_epsilon: float = 1e-3
    pac_target: float = 0.1
    pac_samples: int = 16

    def validate(self) -> None:
        if self.grid_size < 2:
            raise BasinscopeError(f"the grid size must be at least 2, got {self.grid_size}")
        lo, hi = self.span
        if not hi > lo:
            raise BasinscopeError(f"the span must have max > min, got ({lo}, {hi})")
        if self.radius <= 0:
            raise BasinscopeError(f"the sharpness radius must be positive, got {self.radius}")
        if self.sigma <= 0:
            raise BasinscopeError(f"the noise sigma must be positive, got {self.sigma}")
        if self.noise_samples < 2:
            raise BasinscopeError(f"noise samples must be at least 2, got {self.noise_samples}")
        for name in (
            "worst_radius",
            "worst_linf_radius",
            "adaptive_radius",
            "adaptive_sigma",
            "keskar_epsilon",
        ):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise BasinscopeError(f"{name.replace('_', ' ')} must be positive, got {value}")
        if not 0 < self.pac_target < 1:
            raise BasinscopeError(f"the PAC-Bayes target must lie in (0, 1), got {self.pac_target}")
        if self.volume_directions < 2:
            raise BasinscopeError(
                f"the volume needs at least 2 directions, got {self.volume_directions}"
            )


@dataclass
class Study:
    """A named list of runs and how to measure them."""

    name: str
    runs: dict[str, TrainConfig]
    measure: MeasureConfig = field(default_factory=MeasureConfig)
    description: str = ""
    measures: tuple[str, ...] = ("surface",)
    finish: Callable[[Study, list[RunReport], Path], str] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "measures": list(self.measures),
            "runs": {k: v.to_dict() for k, v in self.runs.items()},
            "measure": dataclasses.asdict(self.measure),
        }


@dataclass
class RunReport:
    """One row of a study's summary."""

    name: str
    config: TrainConfig
    final: dict[str, Any]
    diverged: bool
    message: str
    surface: Surface | None = None
    sharpness: dict[str, Any] = field(default_factory=dict)
    values: dict[str, Any] = field(default_factory=dict)
    model: nn.Module | None = None
    data: DataBundle | None = None

    def row(self) -> dict[str, Any]:
        f = self.final
        tl, tel = f.get("train_loss"), f.get("test_loss")
        ta, tea = f.get("train_acc"), f.get("test_acc")
        gap = lambda a, b: (a - b) if a is not None and b is not None else None  # noqa: E731
        return {
            "run": self.name,
            "seed": self.config.seed,
            "lr": self.config.lr,
            "batch_size": self.config.batch_size,
            # training choices beyond lr and batch (None when off: empty columns are dropped)
            "sam_rho": self.config.sam_rho or None,
            "weight_decay": self.config.weight_decay or None,
            "dropout": self.config.dropout or None,
            "epochs": self.config.epochs if self.config.steps is None else None,
            "steps": self.config.steps,
            "train_loss": tl,
            "test_loss": tel,
            "train_acc": ta,
            "test_acc": tea,
            "gap_loss": gap(tel, tl),
            "gap_acc": gap(ta, tea),
            "eps_sharpness_surface": self.sharpness.get("surface", {}).get("value"),
            "eps_sharpness_direct": self.sharpness.get("direct", {}).get("value"),
            "noise_sharpness": self.sharpness.get("noise", {}).get("value"),
            "noise_sharpness_se": self.sharpness.get("noise", {}).get("stderr"),
            **self.values,
            "status": "diverged" if self.diverged else "ok",
        }


# ----------------------------------------------------------------- built-ins
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
        obj = Objective(
            small.model,
            nn.CrossEntropyLoss(),
            (small.data.x_train, small.data.y_train),
            device=small.config.device,
        )
        surf = interpolate(
            obj,
            large.model,
            span=(-0.5, 1.5),
            steps=41,
            test=(small.data.x_test, small.data.y_test),
            path=root / f"interpolation_{label}.h5",
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

    if len(done) < 3:
        return ""
    chosen = sorted(done, key=lambda r: -r.values["n_train"])
    big, mid, small = chosen[0], chosen[len(chosen) // 2], chosen[-1]
    obj = Objective(
        big.model,
        nn.CrossEntropyLoss(),
        (big.data.x_train, big.data.y_train),
        device=big.config.device,
    )
    labels = tuple(f"{r.values['n_train']} ex." for r in (big, mid, small))
    surf = three_model_plane(
        obj,
        (big.model, mid.model, small.model),
        labels=labels,
        steps=m.grid_size,
        path=root / "plane_three_sizes.h5",
    )
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
    swa = next((r for r in reports if r.name == "swa" and not r.diverged), None)
    note = ""
    if swa is not None:
        metrics = json.loads((root / "swa" / "metrics.json").read_text())
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
    t = stats.ttest_ind(acc["sam"], acc["sgd"], equal_var=False)
    diff = float(np.mean(acc["sam"]) - np.mean(acc["sgd"]))
    significant = t.pvalue < 0.05 and diff > 0
    text = (
        "\n## Does SAM help?\n\n"
        f"Test accuracy over {len(acc['sgd'])} seeds: SGD {np.mean(acc['sgd']):.4f} ± "
        f"{np.std(acc['sgd'], ddof=1):.4f}, SAM {np.mean(acc['sam']):.4f} ± "
        f"{np.std(acc['sam'], ddof=1):.4f} (mean ± SD); difference {100 * diff:+.2f} %, "
        f"Welch's t = {t.statistic:.2f}, p = {t.pvalue:.3g}.\n"
    )
    if lam["sgd"] and lam["sam"]:
        text += (
            f"λ_max: SGD {np.mean(lam['sgd']):.4g}, SAM {np.mean(lam['sam']):.4g} "
            f"(ratio {np.mean(lam['sam']) / np.mean(lam['sgd']):.3g}).\n"
        )
    text += "\n**Diagnosis:** " + (
        "SAM helps significantly (p < 0.05): the original optimiser was likely "
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


# ------------------------------------------------------------------ running
def measure_run(
    model: nn.Module,
    data: DataBundle,
    measure: MeasureConfig,
    out_dir: Path,
    *,
    device: str = "cpu",
    progress: bool = True,
) -> tuple[Surface, dict[str, Any]]:
    """Surface and sharpness of one trained model; resumable and skipped when done."""
    obj = Objective(
        model,
        nn.CrossEntropyLoss(),
        (data.x_train, data.y_train),
        skip_bias_norm=measure.skip_bias_norm,
        device=device,
        subset=measure.eval_subset if measure.eval_subset else None,
    )
    d = random_directions(obj, 2, norm="filter", seed=measure.direction_seed)
    surf = plane(
        obj,
        d[0],
        d[1],
        span=measure.span,
        steps=measure.grid_size,
        test=(data.x_test, data.y_test),
        path=out_dir / "surface.h5",
        progress=progress,
        attrs={"norm": "filter", "direction_seed": measure.direction_seed},
    )

    def compute() -> dict[str, Any]:
        noise = sharpness.average_case(
            obj, measure.sigma, samples=measure.noise_samples, seed=measure.noise_seed
        )
        return {
            "surface": _asdict(sharpness.from_surface(surf, measure.radius)),
            "direct": _asdict(sharpness.epsilon(obj, d, measure.radius)),
            "noise": {k: v for k, v in _asdict(noise).items() if k != "increases"},
        }

    return surf, _cached_json(out_dir / "sharpness.json", dataclasses.asdict(measure), compute)


def _cached_json(
    path: Path, settings: dict[str, Any], compute: Callable[[], dict[str, Any]]
) -> dict[str, Any]:
    """``compute()`` stored in ``path`` with its ``settings``; reused while they match."""
    settings = json.loads(json.dumps(settings))
    if path.exists():
        saved = json.loads(path.read_text())
        if saved.get("settings") == settings:
            return saved
    result = {**compute(), "settings": settings}
    atomic_write_json(path, result)
    return json.loads(json.dumps(result))


def _asdict(obj: Any) -> dict[str, Any]:
    out = dataclasses.asdict(obj)
    return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in out.items()}


def run_study(
    study: Study, out: str | Path = "results", *, progress: bool = True
) -> list[RunReport]:
    """Train, measure and report every run of ``study`` under ``out/<study.name>``."""
    study.measure.validate()
    for cfg in study.runs.values():
        cfg.validate()
    root = Path(out) / study.name
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_json(root / "study.json", study.to_dict())
    reports = []
    cache: dict[str, DataBundle] = {}
    for name, cfg in study.runs.items():
        key = json.dumps(
            [
                cfg.dataset,
                cfg.data_dir,
                cfg.train_size,
                cfg.standardize,
                cfg.data_seed,
                cfg.label_noise,
            ]
        )
        data = cache.get(key) or cache.setdefault(key, load_config_data(cfg))
        if progress:
            print(f"[{study.name}] {name}: training", flush=True)
        result = train(cfg, data, out_dir=root / name, progress=progress)
        report = RunReport(name, cfg, result.final, result.diverged, result.message)
        report.model, report.data = result.model, data
        # ‖θ‖₂, the baseline every sharpness measure is compared with (Jiang et al. 2019).
        report.values["param_norm"] = float(
            sum(p.detach().double().pow(2).sum() for p in result.model.parameters()) ** 0.5
        )
        if result.diverged:
            print(f"[{study.name}] {name}: {result.message}", flush=True)
        else:
            for measure in study.measures:
                if progress:
                    print(f"[{study.name}] {name}: {measure}", flush=True)
                MEASURES[measure](report, study.measure, root / name, progress)
        reports.append(report)
    extra = study.finish(study, reports, root) if study.finish else ""
    extra += _correlations(reports, root)
    write_report(reports, root, extra)
    return reports


def _correlations(reports: list[RunReport], root: Path) -> str:
    """The measures' rank correlation with the gap, for studies with ≥ 3 finished runs."""
    from .report import correlation_report

    if sum(not r.diverged for r in reports) < 3:
        return ""
    try:
        text = correlation_report(
            [r.row() for r in reports], root, title="Which measure tracks the generalisation gap"
        )
    except BasinscopeError:  # no measure columns (e.g. a volume-only study without gaps)
        return ""
    return "\n" + text


def _measure_surface(report: RunReport, m: MeasureConfig, out: Path, progress: bool) -> None:
    """The 2-D surface, ε-sharpness and noise sharpness (:func:`measure_run`)."""
    report.surface, report.sharpness = measure_run(
        report.model, report.data, m, out, device=report.config.device, progress=progress
    )


def _measure_volume(report: RunReport, m: MeasureConfig, out: Path, progress: bool) -> None:
    """The star-convex basin volume on the run's own training data (``volume.json``)."""
    result = cached_volume(report.model, report.data, m, out / "volume.json", report.config.device)
    report.values["log_volume"] = result.get("log_volume")
    report.values["volume_ess"] = result.get("ess")


def cached_volume(
    model: nn.Module, data: DataBundle, m: MeasureConfig, path: Path, device: str = "cpu"
) -> dict[str, Any]:
    """Volume of ``model``'s basin on ``data``'s training set, cached in ``path``.

    An empty basin (the model's loss there is above the absolute threshold) is
    recorded with ``log_volume = None`` and the reason, not raised.
    """
    from .volume import basin_volume

    settings = {
        "threshold": m.volume_threshold,
        "rule": m.volume_rule,
        "n_directions": m.volume_directions,
        "tolerance": m.volume_tolerance,
        "seed": m.direction_seed,
        "fingerprint": data_fingerprint(data),
    }

    def compute() -> dict[str, Any]:
        obj = Objective(model, nn.CrossEntropyLoss(), (data.x_train, data.y_train), device=device)
        try:
            return basin_volume(
                obj,
                m.volume_threshold,
                n_directions=m.volume_directions,
                rule=m.volume_rule,
                tolerance=m.volume_tolerance,
                seed=m.direction_seed,
            ).to_dict()
        except BasinscopeError as exc:
            return {"log_volume": None, "reason": str(exc)}

    return _cached_json(path, settings, compute)


def _measure_hessian(report: RunReport, m: MeasureConfig, out: Path, progress: bool) -> None:
    """λ_max and trace of the training-loss Hessian (``hessian.json``, cached)."""
    from .hessian import summary

    path = out / "hessian.json"
    settings = {
        "k": 1,
        "tol": 1e-4,
        "trace_rtol": 1e-2,
        "lambda_min": False,
        "seed": m.direction_seed,
        "fingerprint": data_fingerprint(report.data),
    }

    def compute() -> dict[str, Any]:
        obj = Objective(
            report.model,
            nn.CrossEntropyLoss(),
            (report.data.x_train, report.data.y_train),
            device=report.config.device,
        )
        return summary(
            obj, 1, tol=1e-4, trace_rtol=1e-2, lambda_min=False, seed=m.direction_seed
        ).to_dict()

    saved = _cached_json(path, settings, compute)
    report.values["lambda_max"] = saved["lambda_max"]
    report.values["hessian_trace"] = saved["trace"]


def _measure_suite(report: RunReport, m: MeasureConfig, out: Path, progress: bool) -> None:
    """The rest of the sharpness suite (``suite.json``, cached): worst case in an L2 and
    an L∞ ball and its adaptive version, adaptive noise sharpness, Keskar et al.'s
    φ, and Jiang et al.'s PAC-Bayes σ (plain and magnitude-aware)."""
    keys = (
        "worst_radius",
        "worst_linf_radius",
        "adaptive_radius",
        "adaptive_sigma",
        "keskar_epsilon",
        "pac_target",
        "pac_samples",
        "direction_seed",
        "skip_bias_norm",
        "eval_subset",
    )
    settings = {k: getattr(m, k) for k in keys} | {"fingerprint": data_fingerprint(report.data)}

    def compute() -> dict[str, Any]:
        obj = Objective(
            report.model,
            nn.CrossEntropyLoss(),
            (report.data.x_train, report.data.y_train),
            skip_bias_norm=m.skip_bias_norm,
            device=report.config.device,
            subset=m.eval_subset if m.eval_subset else None,
        )
        seed = m.direction_seed
        parts = {
            "worst_case_l2": sharpness.worst_case(obj, m.worst_radius, seed=seed),
            "worst_case_linf": sharpness.worst_case(
                obj, m.worst_linf_radius, norm="linf", seed=seed
            ),
            "adaptive_worst_case": sharpness.worst_case(
                obj, m.adaptive_radius, adaptive=True, seed=seed
            ),
            "adaptive_noise_sharpness": sharpness.average_case(
                obj, m.adaptive_sigma, samples=m.noise_samples, seed=seed, adaptive=True
            ),
            "keskar": sharpness.keskar(obj, m.keskar_epsilon, seed=seed),
            "pac_bayes": sharpness.pac_bayes(
                obj, target=m.pac_target, samples=m.pac_samples, seed=seed
            ),
            "pac_bayes_mag": sharpness.pac_bayes(
                obj, target=m.pac_target, samples=m.pac_samples, seed=seed, magnitude_aware=True
            ),
        }
        return {
            k: (v.to_dict() if hasattr(v, "to_dict") else _asdict(v))
            | ({"increases": None} if k == "adaptive_noise_sharpness" else {})
            for k, v in parts.items()
        }

    saved = _cached_json(out / "suite.json", settings, compute)
    for key in ("worst_case_l2", "worst_case_linf", "adaptive_worst_case", "keskar"):
        report.values[key] = saved[key]["value"]
    report.values["adaptive_noise_sharpness"] = saved["adaptive_noise_sharpness"]["value"]
    for key in ("pac_bayes", "pac_bayes_mag"):
        report.values[f"{key}_sigma"] = saved[key]["sigma"]
        report.values[f"{key}_bound"] = saved[key]["bound"]


def _measure_trajectory(report: RunReport, m: MeasureConfig, out: Path, progress: bool) -> None:
    """The loss on the plane of the run's two principal trajectory directions (Li et al.
    2018, needs ``snapshot_every``): ``trajectory.h5`` and ``figures/trajectory_<run>.png``."""
    from .surface import trajectory_plane
    from .train import load_trajectory

    if not report.config.snapshot_every:
        raise BasinscopeError(
            f"run {report.name!r} kept no snapshots; the trajectory measure needs snapshot_every > 0"
        )
    obj = Objective(
        report.model,
        nn.CrossEntropyLoss(),
        (report.data.x_train, report.data.y_train),
        device=report.config.device,
        subset=m.eval_subset if m.eval_subset else None,
    )
    surf = trajectory_plane(
        obj, load_trajectory(out), steps=m.grid_size, path=out / "trajectory.h5", progress=progress
    )
    report.values["pca_explained"] = float(sum(surf.attrs["explained_variance_ratio"]))
    plots.plot_contour(
        surf,
        out.parent / "figures" / f"trajectory_{report.name}.png",
        title=f"{report.name}: training trajectory on its PCA plane",
    )


MEASURES: dict[str, Callable[[RunReport, MeasureConfig, Path, bool], None]] = {
    "trajectory": _measure_trajectory,
    "surface": _measure_surface,
    "volume": _measure_volume,
    "hessian": _measure_hessian,
    "suite": _measure_suite,
}


# ------------------------------------------------------------------ report
_COLUMNS = [
    ("run", "run", "{}"),
    ("seed", "seed", "{}"),
    ("lr", "lr", "{:g}"),
    ("batch_size", "batch", "{}"),
    ("sam_rho", "SAM ρ", "{:g}"),
    ("weight_decay", "wd", "{:g}"),
    ("dropout", "dropout", "{:g}"),
    ("epochs", "epochs", "{}"),
    ("steps", "steps", "{}"),
    ("train_loss", "train loss", "{:.4f}"),
    ("test_loss", "test loss", "{:.4f}"),
    ("train_acc", "train acc", "{:.3f}"),
    ("test_acc", "test acc", "{:.3f}"),
    ("gap_loss", "gap (loss)", "{:.4f}"),
    ("gap_acc", "gap (acc)", "{:.3f}"),
    ("eps_sharpness_surface", "ε-sharpness (grid)", "{:.4f}"),
    ("eps_sharpness_direct", "ε-sharpness (direct)", "{:.4f}"),
    ("noise_sharpness", "noise sharpness", "{:.4f}"),
    ("noise_sharpness_se", "± SE", "{:.4f}"),
    ("label_noise", "label noise", "{:g}"),
    ("n_train", "train examples", "{}"),
    ("lambda_max", "λ_max", "{:.4g}"),
    ("hessian_trace", "tr H", "{:.4g}"),
    ("param_norm", "‖θ‖", "{:.2f}"),
    ("worst_case_l2", "worst-case L2", "{:.4f}"),
    ("worst_case_linf", "worst-case L∞", "{:.4f}"),
    ("adaptive_worst_case", "adaptive worst-case", "{:.4f}"),
    ("adaptive_noise_sharpness", "adaptive noise", "{:.4f}"),
    ("keskar", "Keskar φ", "{:.3f}"),
    ("pac_bayes_sigma", "PAC-Bayes σ", "{:.4g}"),
    ("pac_bayes_bound", "PAC-Bayes term", "{:.4g}"),
    ("pac_bayes_mag_sigma", "PAC-Bayes mag. σ", "{:.4g}"),
    ("pac_bayes_mag_bound", "PAC-Bayes mag. term", "{:.4g}"),
    ("pca_explained", "PCA var. (2 dirs)", "{:.3f}"),
    ("log_volume", "log volume", "{:.1f}"),
    ("volume_ess", "volume ESS", "{:.2f}"),
    ("status", "status", "{}"),
]


def _fmt(value: Any, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return spec.format(value)


def _columns(rows: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """Known columns in their order, then any others; columns empty in every row dropped."""
    keys = list(dict.fromkeys(k for row in rows for k in row))
    known = {k: (k, title, spec) for k, title, spec in _COLUMNS}
    cols = [known[k] for k, _, _ in _COLUMNS if k in keys]
    cols += [(k, k.replace("_", " "), "{:.4g}") for k in keys if k not in known]
    return [c for c in cols if any(row.get(c[0]) not in (None, "") for row in rows)]


def summary_markdown(reports: list[RunReport], measure: dict[str, Any] | None = None) -> str:
    """The summary table as Markdown."""
    rows = [r.row() for r in reports]
    cols = _columns(rows)
    lines = ["| " + " | ".join(title for _, title, _ in cols) + " |"]
    lines.append("|" + "|".join("---" for _ in cols) + "|")
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row.get(k), spec) for k, _, spec in cols) + " |")
    text = "\n".join(lines) + "\n"
    if measure and any(r.surface is not None for r in reports):
        text += (
            f"\nε-sharpness: max train-loss increase within radius ε = {measure['radius']} "
            "of the minimum in the plane of two filter-normalised directions (grid: read off "
            "the surface; direct: a dense polar grid). Noise sharpness: mean train-loss "
            f"increase under Gaussian weight noise σ = {measure['sigma']} over "
            f"{measure['noise_samples']} samples, with its standard error.\n"
        )
    return text


def write_report(reports: list[RunReport], root: Path, extra: str = "") -> None:
    """summary.csv, summary.md (plus ``extra`` Markdown) and the figures of a study."""
    rows = [r.row() for r in reports]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(root / "summary.csv", buf.getvalue())
    measured = [r for r in reports if r.surface is not None]
    settings = measured[0].sharpness.get("settings") if measured else None
    atomic_write_text(root / "summary.md", summary_markdown(reports, settings) + extra)
    if not measured:
        return
    fig = root / "figures"
    surfaces = {r.name: r.surface for r in measured}
    for name, s in surfaces.items():
        plots.plot_surface_3d(s, fig / f"surface3d_{name}.png", title=f"{name}: train loss")
        plots.plot_contour(s, fig / f"contour_{name}.png", title=f"{name}: train loss")
    grid = {"ncols": math.ceil(math.sqrt(len(surfaces)))}
    plots.plot_grid(surfaces, fig / "grid_contour.png", suptitle="train loss", **grid)
    plots.plot_grid(
        surfaces, fig / "grid_surface.png", kind="surface", suptitle="train loss", **grid
    )
    if all(s.test_loss is not None for s in surfaces.values()):
        plots.plot_grid(
            surfaces, fig / "grid_contour_test.png", key="test_loss", suptitle="test loss", **grid
        )
    radius = settings["radius"] if settings else None
    plots.plot_bars(
        {r.name: r.sharpness["direct"]["value"] for r in measured},
        fig / "sharpness_eps.png",
        ylabel=f"ε-sharpness (ε = {radius})",
        title="max loss increase within ε (higher = sharper)",
    )
    plots.plot_bars(
        {r.name: r.sharpness["noise"]["value"] for r in measured},
        fig / "sharpness_noise.png",
        errors={r.name: r.sharpness["noise"]["stderr"] for r in measured},
        ylabel=f"mean loss increase (σ = {settings['sigma'] if settings else ''})",
        title="Gaussian weight-noise sharpness (higher = sharper)",
    )
