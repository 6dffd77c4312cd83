"""A study's report: one row per run (:class:`RunReport`), the summary table and the figures.

:func:`write_report` writes ``summary.csv`` and ``summary.md`` (the known columns
in a fixed order, then any others; columns empty in every run are dropped) and,
when the runs have surfaces, the study's figures under ``figures/``: each run's
3-D surface and contour map, grids of all runs on one colour scale, and the
ε-sharpness and noise-sharpness bar charts; then ``report.html``
(:func:`~basinscope.experiments.html_report`).
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from .._io import atomic_write_text
from ..landscape import Surface
from ..training import DataBundle, TrainConfig


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

    def coarse(self) -> list[str]:
        """The summary columns whose value is flagged as a coarse estimate or a bound:
        ε-sharpness read off a coarse grid, a PAC-Bayes σ' whose search did not bracket
        its target (left out of the rankings, see ``excluded_measures``)."""
        out = ["eps_sharpness_surface"] if self.sharpness.get("surface", {}).get("coarse") else []
        bounds = str(self.values.get("pac_bayes_unbracketed") or "")
        for key in ("pac_bayes", "pac_bayes_mag"):
            if f"{key}_sigma " in bounds:
                out += [f"{key}_sigma", f"{key}_bound"]
        return out

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
            # measures whose value is a coarse estimate (too few grid points within ε):
            # shown in the summary, left out of the rankings (_correlation.py)
            "coarse_measures": " ".join(self.coarse()) or None,
            "status": "diverged" if self.diverged else "ok",
        }


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
    ("spread_eps_mean", "ε-sharpness over seeds", "{:.4f}"),
    ("spread_eps_sd", "± SD", "{:.4f}"),
    ("spread_curvature_mean", "slice curvature", "{:.4g}"),
    ("spread_curvature_sd", "± SD", "{:.2g}"),
    ("label_noise", "label noise", "{:g}"),
    ("n_train", "train examples", "{}"),
    ("lambda_max", "λ_max", "{:.4g}"),
    ("hessian_trace", "tr H", "{:.4g}"),
    ("param_norm", "‖θ‖", "{:.2f}"),
    ("worst_case_l2", "worst-case L2", "{:.4f}"),
    ("worst_case_linf", "worst-case L∞", "{:.4f}"),
    ("worst_case_adaptive", "adaptive worst-case", "{:.4f}"),
    ("average_case_adaptive", "adaptive noise", "{:.4f}"),
    ("keskar", "Keskar φ", "{:.3f}"),
    ("pac_bayes_sigma", "PAC-Bayes σ", "{:.4g}"),
    ("pac_bayes_bound", "PAC-Bayes term", "{:.4g}"),
    ("pac_bayes_mag_sigma", "PAC-Bayes mag. σ", "{:.4g}"),
    ("pac_bayes_mag_bound", "PAC-Bayes mag. term", "{:.4g}"),
    ("pac_bayes_unbracketed", "PAC-Bayes σ not bracketed (a bound only)", "{}"),
    ("pca_explained", "PCA var. (2 dirs)", "{:.3f}"),
    ("log_volume", "log volume", "{:.1f}"),
    # its 95 % bootstrap interval, and the same minimum on more data's landscape (sam-vs-sgd)
    ("log_volume_ci_low", "log V CI low", "{:.1f}"),
    ("log_volume_ci_high", "log V CI high", "{:.1f}"),
    ("log_volume_more_data", "log V (more data)", "{:.1f}"),
    ("log_volume_more_data_ci_low", "CI low (more data)", "{:.1f}"),
    ("log_volume_more_data_ci_high", "CI high (more data)", "{:.1f}"),
    ("volume_ess", "volume ESS", "{:.2f}"),
    ("coarse_measures", "coarse estimates", "{}"),
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
    """summary.csv, summary.md (plus ``extra`` Markdown), the figures of a study and, in
    a study directory (``study.json``), the interactive ``report.html``."""
    rows = [r.row() for r in reports]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(root / "summary.csv", buf.getvalue())
    measured = [r for r in reports if r.surface is not None]
    settings = measured[0].sharpness.get("settings") if measured else None
    atomic_write_text(root / "summary.md", summary_markdown(reports, settings) + extra)
    if measured:
        _figures(measured, root, settings)
    if (root / "study.json").is_file():  # the interactive page of every study (run_study)
        from ._report import html_report

        html_report(root)


def _figures(measured: list[RunReport], root: Path, settings: dict[str, Any] | None) -> None:
    """The PNG figures of the runs' surfaces and sharpness."""
    from .. import plots

    fig = root / "figures"
    surfaces = {r.name: r.surface for r in measured}
    # One linear, clipped z-range for every figure of the study (plots.common_zrange),
    # so the per-run surfaces, contours and the grids draw the runs on the same scale.
    zr = plots.common_zrange(surfaces.values())
    for name, s in surfaces.items():
        title = f"{name}: train loss"
        plots.plot_surface_3d(s, fig / f"surface3d_{name}.png", title=title, zrange=zr)
        plots.plot_contour(s, fig / f"contour_{name}.png", title=title, zrange=zr)
    grid = {"ncols": math.ceil(math.sqrt(len(surfaces)))}
    plots.plot_grid(surfaces, fig / "grid_contour.png", suptitle="train loss", zrange=zr, **grid)
    plots.plot_grid(
        surfaces, fig / "grid_surface.png", kind="surface", suptitle="train loss", zrange=zr, **grid
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
