"""Interactive charts: plotly figure specifications (plain ``{"data", "layout"}`` dicts).

The building blocks of the report's figures (:mod:`._web_surfaces` draws the
surfaces with them) and its charts of numbers: bars with error bars, lines, heat
maps, scatter plots and spectral densities. Nothing here imports plotly: the
figures are JSON that :func:`basinscope.plots.write_html` draws with plotly.js.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

COLORSCALE = "Viridis"
Figure = dict[str, Any]


def numbers(a: Any, digits: int = 6) -> Any:
    """``a`` as nested lists of floats rounded to ``digits`` significant digits,
    NaN and ±inf as ``None`` (JSON ``null``: a hole in a plotly trace)."""
    arr = np.asarray(a, dtype=np.float64)
    if arr.ndim == 0:
        v = float(arr)
        return float(f"{v:.{digits}g}") if math.isfinite(v) else None
    return [numbers(v, digits) for v in arr]


def _heading(text: str) -> dict[str, Any]:
    return {"text": text, "x": 0.01, "xanchor": "left", "font": {"size": 15}}


PANEL_HEIGHT, PANEL_GAP = 330, 95
"""Pixels per row of small multiples and between rows (an axis title and a panel title)."""


def panel_height(nrows: int) -> int:
    """The figure height for ``nrows`` rows of panels (plotly's margins included)."""
    return 180 + PANEL_HEIGHT * nrows


def _panels(n: int, ncols: int, gap: float = 0.07) -> list[tuple[list[float], list[float]]]:
    """The ``(x domain, y domain)`` of ``n`` panels in rows of ``ncols``, top row first,
    :data:`PANEL_GAP` pixels apart vertically in a figure of :func:`panel_height`."""
    nrows = math.ceil(n / ncols)
    vgap = PANEL_GAP / (panel_height(nrows) - 180)
    w = (1 - gap * (ncols - 1)) / ncols
    h = (1 - vgap * (nrows - 1)) / nrows
    out = []
    for k in range(n):
        r, c = divmod(k, ncols)
        x0, y1 = c * (w + gap), 1 - r * (h + vgap)
        out.append(([x0, x0 + w], [max(y1 - h, 0.0), y1]))
    return out


def _axes(layout: dict[str, Any], k: int, dom: tuple, x: str = "α", y: str = "β") -> tuple:
    """Add the ``k``-th panel's axes to ``layout``; return its (xaxis, yaxis) names."""
    xa, ya = ("x", "y") if k == 0 else (f"x{k + 1}", f"y{k + 1}")
    layout["xaxis" if k == 0 else f"xaxis{k + 1}"] = {
        "domain": dom[0],
        "anchor": ya,
        "title": {"text": x},
    }
    layout["yaxis" if k == 0 else f"yaxis{k + 1}"] = {
        "domain": dom[1],
        "anchor": xa,
        "title": {"text": y},
    }
    return xa, ya


def _panel_title(layout: dict[str, Any], text: str, dom: tuple) -> None:
    layout.setdefault("annotations", []).append(
        {
            "text": text,
            "x": sum(dom[0]) / 2,
            "y": dom[1][1],
            "xref": "paper",
            "yref": "paper",
            "yanchor": "bottom",
            "showarrow": False,
        }
    )


def bars(
    values: Mapping[str, float | None],
    title: str,
    ylabel: str,
    errors: Mapping[str, float | None] | None = None,
    interval: Mapping[str, tuple[float, float] | None] | None = None,
    log: bool = False,
    points: Mapping[str, Sequence[float]] | None = None,
) -> Figure:
    """One bar per run; ``errors`` symmetric error bars (±1 SE or SD) or ``interval`` an
    asymmetric interval (low, high) around each value; ``points`` the values behind
    each bar as dots. Missing values are left out."""
    names = [k for k, v in values.items() if v is not None and math.isfinite(float(v))]
    bar: dict[str, Any] = {
        "type": "bar",
        "x": names,
        "y": [numbers(values[k]) for k in names],
        "marker": {"color": "#4a7ab5"},
        "name": ylabel,
        "showlegend": bool(points),
    }
    if errors:
        bar["error_y"] = {"type": "data", "array": [numbers(errors.get(k) or 0) for k in names]}
    elif interval:
        lo = [values[k] - (interval.get(k) or (values[k],) * 2)[0] for k in names]
        hi = [(interval.get(k) or (values[k],) * 2)[1] - values[k] for k in names]
        bar["error_y"] = {
            "type": "data",
            "symmetric": False,
            "array": numbers(hi),
            "arrayminus": numbers(lo),
        }
    layout = {
        "title": _heading(title),
        "height": 360,
        "yaxis": {"title": {"text": ylabel}, "type": "log" if log else "linear"},
    }
    data = [bar]
    if points:  # the values a bar summarises (each seed), as dots over it
        xs = [k for k in names for _ in points.get(k, ())]
        ys = [v for k in names for v in points.get(k, ())]
        data.append({"type": "scatter", "mode": "markers", "x": xs, "y": numbers(ys),
                     "name": "each seed", "marker": {"color": "black", "size": 7}})  # fmt: skip
    return {"data": data, "layout": layout}


def xy(
    x: Sequence[float],
    series: Mapping[str, Sequence[float | None]],
    title: str,
    xlabel: str,
    ylabel: str,
    logx: bool = False,
    logy: bool = False,
    fit: tuple[float, float] | None = None,
) -> Figure:
    """Lines of numbers against ``x``; ``fit=(slope, intercept)`` adds
    ``intercept + slope·ln x`` (a power law on a log x axis) as a dashed line."""
    data = [
        {"type": "scatter", "mode": "lines+markers", "x": numbers(x), "y": numbers(v), "name": k}
        for k, v in series.items()
    ]
    if fit is not None:
        xs = np.asarray(x, dtype=np.float64)
        data.append(
            {
                "type": "scatter",
                "mode": "lines",
                "x": numbers(xs),
                "y": numbers(fit[1] + fit[0] * np.log(xs)),
                "name": "fit",
                "line": {"dash": "dash", "color": "grey"},
            }
        )
    layout = {
        "title": _heading(title),
        "height": 380,
        "xaxis": {"title": {"text": xlabel}, "type": "log" if logx else "linear"},
        "yaxis": {"title": {"text": ylabel}, "type": "log" if logy else "linear"},
    }
    return {"data": data, "layout": layout}


def heatmap(
    matrix: Any,
    rows: Sequence[str],
    cols: Sequence[str],
    title: str,
    label: str,
    xlabel: str = "",
    ylabel: str = "",
) -> Figure:
    """A matrix as a heat map with its values written in the cells."""
    m = np.asarray(matrix, dtype=np.float64)
    text = [[("n/a" if not math.isfinite(v) else f"{v:.1f}") for v in row] for row in m]
    trace = {
        "type": "heatmap",
        "z": numbers(m),
        "x": list(cols),
        "y": list(rows),
        "text": text,
        "texttemplate": "%{text}",
        "colorscale": COLORSCALE,
        "colorbar": {"title": {"text": label}},
    }
    layout = {
        "title": _heading(title),
        "height": 200 + 45 * len(rows),
        "xaxis": {"title": {"text": xlabel}},
        "yaxis": {"title": {"text": ylabel}, "autorange": "reversed"},
    }
    return {"data": [trace], "layout": layout}


def scatters(
    panels: Mapping[str, tuple[Sequence[float], Sequence[float], Sequence[str]]],
    ylabel: str,
    title: str,
    ncols: int = 3,
) -> Figure:
    """Small multiples: for each panel title, ``(x values, y values, run names)``."""
    n = len(panels)
    ncols = min(ncols, max(n, 1))
    layout: dict[str, Any] = {
        "title": _heading(title),
        "showlegend": False,
        "height": panel_height(math.ceil(n / ncols)),
    }
    data = []
    for k, ((name, (xs, ys, labels)), dom) in enumerate(
        zip(panels.items(), _panels(n, ncols, gap=0.09), strict=True)
    ):
        xa, ya = _axes(layout, k, dom, x=name, y=ylabel)
        data.append(
            {
                "type": "scatter",
                "mode": "markers",
                "x": numbers(xs),
                "y": numbers(ys),
                "text": list(labels),
                "xaxis": xa,
                "yaxis": ya,
                "marker": {"size": 9},
                "hovertemplate": "%{text}<br>%{x:.4g}, %{y:.4g}<extra></extra>",
            }
        )
    return {"data": data, "layout": layout}


def curves(
    series: Mapping[str, tuple[Sequence[float], Sequence[float | None]]],
    title: str,
    xlabel: str,
    ylabel: str,
    logy: bool = False,
) -> Figure:
    """Lines with their own x values: for each name, ``(x, y)`` (training curves,
    spectral densities)."""
    data = [
        {"type": "scatter", "mode": "lines", "x": numbers(x), "y": numbers(y, 5), "name": name}
        for name, (x, y) in series.items()
    ]
    layout = {
        "title": _heading(title),
        "height": 420,
        "xaxis": {"title": {"text": xlabel}},
        "yaxis": {"title": {"text": ylabel}, "type": "log" if logy else "linear"},
    }
    return {"data": data, "layout": layout}
