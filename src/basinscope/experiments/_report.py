"""``report.html``: a study directory as one interactive, offline page.

:func:`html_report` reads what a study wrote (``study.json``, ``summary.md``,
``summary.csv`` and each run's files) and writes ``report.html`` beside
``summary.md``: the summary table and notes, training curves, rotatable 3-D
surfaces (train and test on one scale), contour maps with the minimum marked,
sharpness bar charts with their error bars, paths between minima, Hessian
spectra, basin volumes and the dataset-size figures, every measure against the
generalisation gap, and the study's settings. What a study did not compute is
left out; a file that cannot be read is named in the page instead of stopping it.
The page is self-contained (plotly.js embedded once, :func:`basinscope.plots.write_html`).
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BasinscopeError
from ..landscape import Surface
from ._correlation import GAPS, MEASURE_COLUMNS, read_summary

Block = str | dict[str, Any]
_SHARPNESS = {  # summary column -> (chart title, y label, SE column)
    "eps_sharpness_direct": ("ε-sharpness: max loss rise within ε", "ε-sharpness", None),
    "noise_sharpness": ("Gaussian weight-noise sharpness ± SE", "mean loss rise", "noise_sharpness_se"),
    "lambda_max": ("largest Hessian eigenvalue λ_max", "λ_max", None),
    "hessian_trace": ("Hessian trace tr H ± SE", "tr H", "hessian_trace_se"),
    "worst_case_l2": ("worst case in an L2 ball", "loss rise", None),
    "worst_case_adaptive": ("adaptive worst case (ASAM ball)", "loss rise", None),
    "keskar": ("Keskar et al.'s φ", "φ", None),
}  # fmt: skip


class _Page:
    """The blocks of the page and the notes about files that could not be read."""

    def __init__(self, root: Path) -> None:
        self.root, self.blocks, self.problems = root, [], []

    def read(self, what: str, load: Callable[[], Any]) -> Any:
        """``load()``, or ``None`` with a note naming ``what`` when it fails."""
        try:
            return load()
        except (BasinscopeError, OSError, ValueError, KeyError, TypeError) as exc:
            self.problems.append(f"{what}: {exc}")
            return None

    def json(self, path: Path) -> Any:
        if not path.is_file():
            return None
        return self.read(str(path.relative_to(self.root)), lambda: json.loads(path.read_text()))

    def surface(self, path: Path) -> Surface | None:
        if not path.is_file():
            return None
        return self.read(str(path.relative_to(self.root)), lambda: Surface.load(path))

    def section(self, title: str, *blocks: Block, note: str = "") -> None:
        blocks = [b for b in blocks if b]
        if blocks:
            self.blocks.append(f"<h2>{html.escape(title)}</h2>")
            if note:
                self.blocks.append(f'<p class="note">{note}</p>')
            self.blocks.extend(blocks)


def _number(v: Any) -> float | None:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def html_report(root: str | Path, out: str | Path | None = None) -> Path:
    """Write the interactive report of the study in ``root`` (default
    ``root/report.html``) and return its path."""
    import markdown

    from .. import plots

    root = Path(root)
    study = root / "study.json"
    if not study.is_file():
        raise BasinscopeError(
            f"{str(root)!r} is not a study directory (it has no study.json); "
            "give a directory written by 'basinscope run'"
        )
    page = _Page(root)
    config = page.json(study) or {}
    runs = [r for r in config.get("runs", {}) if (root / r).is_dir()]
    name = config.get("name", root.name)
    page.blocks.append(f"<h1>basinscope study: {html.escape(str(name))}</h1>")
    if config.get("description"):
        page.blocks.append(f"<p>{html.escape(config['description'])}</p>")
    summary = root / "summary.md"
    if summary.is_file():
        text = markdown.markdown(summary.read_text(), extensions=["tables"])
        for level in (4, 3, 2, 1):  # its sections sit under the page's "Summary"
            text = text.replace(f"<h{level}>", f"<h{level + 1}>").replace(
                f"</h{level}>", f"</h{level + 1}>"
            )
        page.section("Summary", text)
    rows = {r.get("run"): r for r in page.read("summary.csv", lambda: read_summary(root)) or []}
    _training(page, runs)
    _surfaces(page, runs, plots)
    _sharpness(page, runs, rows)
    _spread(page, runs)
    _spectra(page, runs)
    _paths(page, runs)
    _volumes(page, runs, rows)
    _correlations(page, rows)
    _settings(page, config)
    _figures_list(page, Path(out or root / "report.html"))
    if page.problems:
        items = "".join(f"<li>{html.escape(p)}</li>" for p in page.problems)
        page.section("Files that could not be read", f"<ul>{items}</ul>")
    return plots.write_html(out or root / "report.html", f"basinscope: {name}", page.blocks)


def _training(page: _Page, runs: list[str]) -> None:
    from ..plots import curves

    series, returns = {}, {}
    for run in runs:
        history = (page.json(page.root / run / "metrics.json") or {}).get("history") or []
        steps = [h.get("step") for h in history]
        for key in ("train_loss", "test_loss"):
            ys = [h.get(key) for h in history]
            if any(y is not None for y in ys):
                series[f"{run}: {key.replace('_', ' ')}"] = (steps, ys)
        if any("mean_return" in h for h in history):  # a policy's training (policy wing)
            returns[run] = ([h.get("iteration") for h in history],
                            [h.get("mean_return") for h in history])  # fmt: skip
    blocks = []
    if series:
        blocks.append(curves(series, "loss during training", "optimizer step", "loss", logy=True))
    if returns:
        blocks.append(curves(returns, "mean return of the training episodes", "iteration",
                             "return"))  # fmt: skip
    page.section("Training", *blocks)


def _surfaces(page: _Page, runs: list[str], plots: Any) -> None:
    surfaces = {r: page.surface(page.root / r / "surface.h5") for r in runs}
    surfaces = {k: s for k, s in surfaces.items() if s is not None and s.is_2d}
    if not surfaces:
        return
    quantity = next(iter(surfaces.values())).attrs.get("quantity", "loss")  # policy: a return
    tests = {k: s for k, s in surfaces.items() if s.test_loss is not None}
    zr = plots.common_zrange(list(surfaces.values()))
    if len(tests) == len(surfaces):  # train and test on one scale
        zt = plots.common_zrange(list(tests.values()), key="test_loss")
        zr = (min(zr[0], zt[0]), max(zr[1], zt[1]))
    blocks: list[Block] = [
        plots.surfaces_3d(surfaces, zr, quantity=quantity),
        plots.contours(surfaces, zr, quantity=quantity,
                       title=f"train {quantity}: contours (○ θ0, ★ lowest grid point)"),
    ]  # fmt: skip
    if len(tests) == len(surfaces):
        title = f"test {quantity}: contours"
        blocks.append(plots.contours(surfaces, zr, key="test_loss", title=title, quantity=quantity))
    page.section(
        f"{quantity[:1].upper()}{quantity[1:]} surfaces",
        *blocks,
        note=f"The plane of two filter-normalised random directions through each trained model "
        f"(Li et al. 2018). Linear {quantity} scale, one range for every run, train and test: "
        f"values above {zr[1]:.4g} are drawn as a flat plateau; hover for the value itself.",
    )


def _sharpness(page: _Page, runs: list[str], rows: dict[str, Any]) -> None:
    from ..plots import bars

    if not rows:
        return
    for run in runs:  # the trace's standard error is in hessian.json, not in the summary
        se = (page.json(page.root / run / "hessian.json") or {}).get("trace_se")
        if run in rows:
            rows[run]["hessian_trace_se"] = se
    blocks = []
    for col, (title, label, se_col) in _SHARPNESS.items():
        values = {r: _number(rows[r].get(col)) for r in rows}
        if any(v is not None for v in values.values()):
            errors = {r: _number(rows[r].get(se_col)) for r in rows} if se_col else None
            blocks.append(bars(values, title + " (higher = sharper)", label, errors=errors))
    page.section("Sharpness", *blocks)


def _spread(page: _Page, runs: list[str]) -> None:
    """Each run's ε-sharpness and slice curvature over direction seeds (mean ± SD, the
    seeds as dots) and its plane of every seed on one colour scale."""
    from .. import plots
    from ._spread import spread_from_json

    found = {r: page.json(page.root / r / "spread.json") for r in runs}
    found = {r: d for r, d in found.items() if d and d.get("eps")}
    if not found:
        return
    eps = plots.bars(
        {r: d["eps_mean"] for r, d in found.items()}, "ε-sharpness over direction seeds, mean ± SD",
        "ε-sharpness", errors={r: d["eps_sd"] for r, d in found.items()},
        points={r: d["eps"] for r, d in found.items()},
    )  # fmt: skip
    curv = plots.bars(
        {r: d["curvature_mean"] for r, d in found.items()},
        "slice curvature d²L/dt² at θ0 over direction seeds, mean ± SD", "curvature",
        errors={r: d["curvature_sd"] for r, d in found.items()},
        points={r: [float(np.mean(c)) for c in d["curvature"]] for r, d in found.items()},
    )  # fmt: skip
    panels = {}
    for r, d in found.items():
        for k, s in zip(d["seeds"], spread_from_json(d).surfaces, strict=True):
            panels[f"{r} · seed {k}"] = s
    zr = plots.common_zrange(list(panels.values()))
    seeds = len(next(iter(found.values()))["seeds"])
    planes = plots.contours(panels, zr, title="the plane of each direction seed (rows: runs)",
                            ncols=seeds)  # fmt: skip
    page.section(
        "Direction spread",
        eps, curv, planes,
        note="One filter-normalised plane per direction seed; whether the ranking of the "
        "runs holds for every seed is stated in the summary.",
    )  # fmt: skip


def _spectra(page: _Page, runs: list[str]) -> None:
    """φ(t) = (1/R) Σ_r Σ_j w_rj 𝒩(t; τ_rj, s²) from each run's stored quadrature, with
    s = max(σ, range/300): the stored σ broadened to what 600 points resolve."""
    from ..plots import curves

    found = {r: page.json(page.root / r / "spectrum.json") for r in runs}
    found = {r: d for r, d in found.items() if d and d.get("nodes")}
    if not found:
        return
    nodes = np.concatenate(
        [np.concatenate([np.asarray(n) for n in d["nodes"]]) for d in found.values()]
    )
    width = max(float(nodes.max() - nodes.min()), 1e-12)
    s = max(max(d["sigma"] for d in found.values()), width / 300)
    grid = np.linspace(nodes.min() - 4 * s, nodes.max() + 4 * s, 600)
    out = {}
    for run, d in found.items():
        phi = np.zeros_like(grid)
        for tau, w in zip(d["nodes"], d["weights"], strict=True):
            t, w = np.asarray(tau)[:, None], np.asarray(w)[:, None]
            phi += (w * np.exp(-0.5 * ((grid - t) / s) ** 2)).sum(0)
        phi /= len(d["nodes"]) * s * math.sqrt(2 * math.pi)
        out[run] = (grid, np.maximum(phi, phi.max() * 1e-8))
    page.section(
        "Hessian spectra",
        curves(out, "eigenvalue density of the training-loss Hessian", "eigenvalue λ",
               "density", logy=True),
        note=f"Stochastic Lanczos quadrature (Ghorbani et al. 2019), Gaussian broadening "
        f"σ = {s:.3g}; a long right tail is a sharp minimum, mass below zero a saddle.",
    )  # fmt: skip


def _paths(page: _Page, runs: list[str]) -> None:
    from .. import plots

    blocks: list[Block] = []
    for path in sorted(page.root.glob("interpolation_*.h5")):
        s = page.surface(path)
        if s is not None and not s.is_2d:
            label = path.stem.removeprefix("interpolation_")
            blocks.append(plots.lines({label: s}, f"{label}: interpolation between minima"))
    planes = {}
    for tag, title in (("_smallest", "smallest training set"), ("", "largest training set")):
        s = page.surface(page.root / f"plane_three_sizes{tag}.h5")
        if s is not None:
            planes[f"landscape of the {title}"] = s
    if planes:
        zr = plots.common_zrange(list(planes.values()))
        title = "the plane through the minima of three training-set sizes (Fan et al., Fig. 1)"
        blocks.append(plots.contours(planes, zr, title=title))
    trajectories = {r: page.surface(page.root / r / "trajectory.h5") for r in runs}
    trajectories = {k: s for k, s in trajectories.items() if s is not None}
    if trajectories:
        zr = plots.common_zrange(list(trajectories.values()))
        blocks.append(plots.contours(trajectories, zr, title="training trajectories (PCA plane)"))
    page.section("Paths between minima", *blocks)


def _volumes(page: _Page, runs: list[str], rows: dict[str, Any]) -> None:
    from .. import plots

    blocks: list[Block] = []
    values, ci = {}, {}
    for run in runs:
        v = page.json(page.root / run / "volume.json") or {}
        if _number(v.get("log_volume")) is not None:
            values[run] = v["log_volume"]
            ci[run] = tuple(v["ci"]) if v.get("ci") else None
    if values:
        blocks.append(plots.bars(values, "log basin volume with its 95 % bootstrap interval",
                                 "log V", interval=ci))  # fmt: skip
    cross = page.json(page.root / "cross_landscape.json")
    if cross:
        blocks.append(plots.heatmap(cross["log_volume"], cross["rows"], cross["cols"],
                                    "log basin volume: model (row) on each landscape (column)",
                                    "log V", "landscape (training data)", "model trained on"))  # fmt: skip
    fit = page.json(page.root / "fit.json")
    if fit:
        blocks.append(plots.xy(fit["sizes"], {"log V (own landscape)": fit["log_volume"]},
                               f"log volume against training-set size (slope {fit['slope']:.2f}, "
                               f"R² {fit['r2']:.3f})", "training examples", "log V", logx=True,
                               fit=(fit["slope"], fit["intercept"])))  # fmt: skip
    page.section("Basin volume", *blocks)


def _correlations(page: _Page, rows: dict[str, Any]) -> None:
    from ..plots import scatters

    if len(rows) < 3:
        return
    gap = "gap_loss"
    panels = {}
    for col, label in MEASURE_COLUMNS.items():
        pairs = [(r, _number(row.get(col)), _number(row.get(gap))) for r, row in rows.items()]
        pairs = [p for p in pairs if p[1] is not None and p[2] is not None]
        if len(pairs) >= 3:
            panels[label] = ([p[1] for p in pairs], [p[2] for p in pairs], [p[0] for p in pairs])
    if panels:
        page.section(
            "Measures against the generalisation gap",
            scatters(panels, GAPS[gap], "every measure against the gap (one point per run)"),
            note="Kendall's τ of each measure with the gaps is in the summary above.",
        )


def _settings(page: _Page, config: dict[str, Any]) -> None:
    runs = config.get("runs") or {}
    keys = sorted({k for c in runs.values() for k in c})
    varying = [k for k in keys if len({json.dumps(c.get(k)) for c in runs.values()}) > 1]
    same = [k for k in keys if k not in varying]
    cell = lambda v: html.escape(json.dumps(v) if not isinstance(v, str) else v)  # noqa: E731
    table = lambda head, body: (  # noqa: E731
        "<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"
        + "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in body)
        + "</table>"
    )  # fmt: skip
    blocks = []
    if varying:
        body = [[html.escape(r)] + [cell(c.get(k)) for k in varying] for r, c in runs.items()]
        blocks.append("<h3>What differs between the runs</h3>" + table(["run", *varying], body))
    first = next(iter(runs.values()), {})
    if same:
        blocks.append("<h3>Shared by every run</h3>"
                      + table(["setting", "value"], [[html.escape(k), cell(first.get(k))]
                                                      for k in same]))  # fmt: skip
    measure = config.get("measure") or {}
    if measure:
        body = [[html.escape(k), cell(v)] for k, v in sorted(measure.items())]
        measures = ", ".join(config.get("measures") or [])
        blocks.append(f"<h3>How the runs were measured ({html.escape(measures)})</h3>"
                      + table(["setting", "value"], body))  # fmt: skip
    page.section("Settings", *blocks)


def _figures_list(page: _Page, out: Path) -> None:
    import os

    pngs = sorted((page.root / "figures").glob("*.png"))
    if pngs:
        rel = lambda p: Path(os.path.relpath(p, out.resolve().parent)).as_posix()  # noqa: E731
        items = "".join(
            f'<li><a href="{html.escape(rel(p.resolve()))}">{html.escape(p.name)}</a></li>'
            for p in pngs
        )
        page.section("The PNG figures beside this report", f"<ul>{items}</ul>")
