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
from .data import DataBundle, load_dataset
from .directions import random_directions
from .errors import BasinscopeError
from .objective import Objective
from .surface import Surface, plane
from .train import TrainConfig, train


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


@dataclass
class Study:
    """A named list of runs and how to measure them."""

    name: str
    runs: dict[str, TrainConfig]
    measure: MeasureConfig = field(default_factory=MeasureConfig)
    description: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
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

    def row(self) -> dict[str, Any]:
        f = self.final
        tl, tel = f.get("train_loss"), f.get("test_loss")
        ta, tea = f.get("train_acc"), f.get("test_acc")
        gap = lambda a, b: (a - b) if a is not None and b is not None else None  # noqa: E731
        return {
            "run": self.name,
            "lr": self.config.lr,
            "batch_size": self.config.batch_size,
            "epochs": self.config.epochs,
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
            "status": "diverged" if self.diverged else "ok",
        }


# ----------------------------------------------------------------- built-ins
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
            runs[f"{lr_name}_{bs_name}"] = TrainConfig(
                dataset=dataset,
                model="mlp",
                model_kwargs={"widths": (128, 128)},
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
    )


STUDIES: dict[str, Callable[..., Study]] = {"lr-batch": lr_batch_grid}


# ------------------------------------------------------------------ running
def _load_data(cfg: TrainConfig) -> DataBundle:
    return load_dataset(
        cfg.dataset,
        data_dir=cfg.data_dir,
        train_size=cfg.train_size,
        standardize=cfg.standardize,
        seed=cfg.data_seed,
    )


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
    settings = dataclasses.asdict(measure)
    path = out_dir / "sharpness.json"
    if path.exists():
        saved = json.loads(path.read_text())
        if saved.get("settings") == json.loads(json.dumps(settings)):
            return surf, saved
    eps_s = sharpness.from_surface(surf, measure.radius)
    eps_d = sharpness.epsilon(obj, d, measure.radius)
    noise = sharpness.average_case(
        obj, measure.sigma, samples=measure.noise_samples, seed=measure.noise_seed
    )
    result = {
        "settings": settings,
        "surface": _asdict(eps_s),
        "direct": _asdict(eps_d),
        "noise": {k: v for k, v in _asdict(noise).items() if k != "increases"},
    }
    atomic_write_json(path, result)
    return surf, json.loads(json.dumps(result))


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
            [cfg.dataset, cfg.data_dir, cfg.train_size, cfg.standardize, cfg.data_seed]
        )
        data = cache.get(key) or cache.setdefault(key, _load_data(cfg))
        if progress:
            print(f"[{study.name}] {name}: training", flush=True)
        result = train(cfg, data, out_dir=root / name, progress=progress)
        report = RunReport(name, cfg, result.final, result.diverged, result.message)
        if result.diverged:
            print(f"[{study.name}] {name}: {result.message}", flush=True)
        else:
            if progress:
                print(f"[{study.name}] {name}: surface and sharpness", flush=True)
            report.surface, report.sharpness = measure_run(
                result.model, data, study.measure, root / name, device=cfg.device, progress=progress
            )
        reports.append(report)
    write_report(reports, root)
    return reports


# ------------------------------------------------------------------ report
_COLUMNS = [
    ("run", "run", "{}"),
    ("lr", "lr", "{:g}"),
    ("batch_size", "batch", "{}"),
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
    ("status", "status", "{}"),
]


def _fmt(value: Any, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return spec.format(value)


def summary_markdown(reports: list[RunReport], measure: dict[str, Any] | None = None) -> str:
    """The summary table as Markdown."""
    head = "| " + " | ".join(title for _, title, _ in _COLUMNS) + " |"
    sep = "|" + "|".join("---" for _ in _COLUMNS) + "|"
    lines = [head, sep]
    for r in reports:
        row = r.row()
        lines.append("| " + " | ".join(_fmt(row[k], spec) for k, _, spec in _COLUMNS) + " |")
    text = "\n".join(lines) + "\n"
    if measure:
        text += (
            f"\nε-sharpness: max train-loss increase within radius ε = {measure['radius']} "
            "of the minimum in the plane of two filter-normalised directions (grid: read off "
            "the surface; direct: a dense polar grid). Noise sharpness: mean train-loss "
            f"increase under Gaussian weight noise σ = {measure['sigma']} over "
            f"{measure['noise_samples']} samples, with its standard error.\n"
        )
    return text


def write_report(reports: list[RunReport], root: Path) -> None:
    """summary.csv, summary.md and the figures of a study."""
    rows = [r.row() for r in reports]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(root / "summary.csv", buf.getvalue())
    measured = [r for r in reports if r.surface is not None]
    settings = measured[0].sharpness.get("settings") if measured else None
    atomic_write_text(root / "summary.md", summary_markdown(reports, settings))
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
