"""Interactive surfaces: plotly figure specifications (plain ``{"data", "layout"}`` dicts).

Each function returns a figure that :func:`basinscope.plots.write_html` draws
with plotly.js in the browser; nothing here imports plotly (the figures are
JSON). They follow the PNG figures of this wing: surfaces on a linear loss
scale with one clipped range (:func:`~basinscope.plots.common_zrange`, values
above it a plateau, :func:`~basinscope.plots.drawn_z`) while hovering shows the
value itself; contour maps mark the trained point θ0 (○) and the grid's lowest
point (★); arrays indexed ``[i, j]`` at ``(x[i], y[j])`` are transposed to
plotly's ``z[row = y][column = x]``.

Every 3-D figure holds all runs in one WebGL scene per metric and a menu picks
the run shown: a browser gives a page only a few WebGL contexts (about 16), so
one scene per run would leave the surfaces of a large study undrawn.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..landscape import Surface
from ._style import drawn_z
from ._web_charts import (
    COLORSCALE,
    Figure,
    _axes,
    _heading,
    _panel_title,
    _panels,
    numbers,
    panel_height,
)


def _label(key: str, quantity: str) -> str:
    """``train_loss`` as the axis says it: "train loss", or "train negative return"."""
    return key.replace("loss", quantity).replace("_", " ")


def surfaces_3d(
    surfaces: Mapping[str, Surface],
    zrange: tuple[float, float],
    keys: Sequence[str] = ("train_loss", "test_loss"),
    quantity: str = "loss",
) -> Figure:
    """Rotatable 3-D surfaces of every run, one scene per metric in ``keys`` (the
    metrics the surfaces have), all on ``zrange``; a menu shows one run at a time."""
    keys = [k for k in keys if all(getattr(s, k) is not None for s in surfaces.values())]
    names = list(surfaces)
    title = _heading(f"{quantity} surfaces (drag to rotate)")
    data, layout = [], {"title": title, "height": 520}
    width = 1.0 / len(keys)
    for k, key in enumerate(keys):
        scene = "scene" if k == 0 else f"scene{k + 1}"
        layout[scene] = {
            "domain": {"x": [k * width, (k + 1) * width - 0.02], "y": [0, 0.9]},
            "xaxis": {"title": {"text": "α"}},
            "yaxis": {"title": {"text": "β"}},
            "zaxis": {"title": {"text": _label(key, quantity)}, "range": list(zrange)},
            "aspectmode": "cube",
        }
        layout.setdefault("annotations", []).append(
            {
                "text": _label(key, quantity),
                "x": (k + 0.5) * width,
                "y": 0.97,
                "xref": "paper",
                "yref": "paper",
                "showarrow": False,
            }
        )
        for i, (name, s) in enumerate(surfaces.items()):
            z = np.asarray(s.metric(key), dtype=np.float64)
            data.append(
                {
                    "type": "surface",
                    "name": name,
                    "scene": scene,
                    "x": numbers(s.xcoordinates),
                    "y": numbers(s.ycoordinates),
                    "z": numbers(drawn_z(z, zrange).T),
                    "customdata": numbers(z.T),
                    "hovertemplate": "α %{x:.3f}<br>β %{y:.3f}<br>"
                    + _label(key, quantity)
                    + " %{customdata:.5g}<extra>%{fullData.name}</extra>",
                    "cmin": zrange[0],
                    "cmax": zrange[1],
                    "colorscale": COLORSCALE,
                    "showscale": k == len(keys) - 1,
                    "colorbar": {"title": {"text": quantity}, "len": 0.8},
                    "visible": i == 0,
                }
            )
    buttons = []
    for i, name in enumerate(names):
        visible = [j % len(names) == i for j in range(len(data))]
        buttons.append({"label": name, "method": "restyle", "args": [{"visible": visible}]})
    layout["updatemenus"] = [
        {
            "buttons": buttons,
            "x": 0.0,
            "y": 1.0,
            "xanchor": "left",
            "yanchor": "top",
            "direction": "down",
            "showactive": True,
        }
    ]
    return {"data": data, "layout": layout}


def contours(
    surfaces: Mapping[str, Surface],
    zrange: tuple[float, float],
    key: str = "train_loss",
    title: str = "contours",
    ncols: int | None = None,
    quantity: str = "loss",
) -> Figure:
    """Filled contour maps of ``key``, one panel per surface on one colour scale, with
    θ0 (○, unless the surface marks models), the lowest grid point (★, complete
    surfaces only), the marked models and a stored trajectory drawn on top."""
    n = len(surfaces)
    ncols = ncols or min(n, 3 if n > 4 else 2 if n > 1 else 1)
    nrows = math.ceil(n / ncols)
    layout: dict[str, Any] = {
        "title": _heading(title),
        "height": panel_height(nrows),
        "showlegend": False,
        "coloraxis": {
            "colorscale": COLORSCALE,
            "cmin": zrange[0],
            "cmax": zrange[1],
            "colorbar": {"title": {"text": _label(key, quantity)}},
        },
    }
    data = []
    for k, ((name, s), dom) in enumerate(zip(surfaces.items(), _panels(n, ncols), strict=True)):
        xa, ya = _axes(layout, k, dom)
        _panel_title(layout, name, dom)
        z = np.asarray(s.metric(key), dtype=np.float64)
        data.append(
            {
                "type": "contour",
                "x": numbers(s.xcoordinates),
                "y": numbers(s.ycoordinates),
                "z": numbers(drawn_z(z, zrange).T),
                "customdata": numbers(z.T),
                "coloraxis": "coloraxis",
                "xaxis": xa,
                "yaxis": ya,
                "ncontours": 20,
                "name": name,
                "hovertemplate": "α %{x:.3f}, β %{y:.3f}: %{customdata:.5g}<extra></extra>",
            }
        )
        data += _marks(s, z, xa, ya)
    return {"data": data, "layout": layout}


def _point(x: float, y: float, xa: str, ya: str, **style: Any) -> dict[str, Any]:
    return {
        "type": "scatter",
        "mode": "markers",
        "x": [x],
        "y": [y],
        "xaxis": xa,
        "yaxis": ya,
        "hoverinfo": "name",
        **style,
    }


def _marks(s: Surface, z: np.ndarray, xa: str, ya: str) -> list[dict[str, Any]]:
    """θ0, the minimum, the models and the trajectory a 2-D surface holds, as traces."""
    out = []
    traj = s.attrs.get("trajectory")
    if traj:
        t = np.asarray(traj, dtype=np.float64)
        out.append(
            {
                "type": "scatter",
                "mode": "lines+markers",
                "x": numbers(t[:, 0]),
                "y": numbers(t[:, 1]),
                "xaxis": xa,
                "yaxis": ya,
                "name": "trajectory",
                "line": {"color": "black", "width": 1.5},
                "marker": {"size": 4},
            }
        )
    marks = s.attrs.get("marks") or []
    for lab, pos in marks:
        if len(pos) == 2:
            out.append(
                _point(
                    pos[0],
                    pos[1],
                    xa,
                    ya,
                    name=lab,
                    mode="markers+text",
                    text=[lab],
                    textposition="top right",
                    marker={"size": 10, "color": "white", "line": {"color": "black", "width": 1.5}},
                )
            )
    x, y = s.xcoordinates, s.ycoordinates
    if not marks and x.min() <= 0 <= x.max() and y.min() <= 0 <= y.max():
        out.append(
            _point(
                0.0,
                0.0,
                xa,
                ya,
                name="θ0 (trained)",
                marker={"size": 9, "color": "white", "line": {"color": "black", "width": 1.5}},
            )
        )
    zf = np.where(np.isfinite(z), z, np.inf)
    if s.complete and np.isfinite(zf).any():
        i, j = np.unravel_index(int(np.argmin(zf)), zf.shape)
        out.append(
            _point(
                float(x[i]),
                float(y[j]),
                xa,
                ya,
                name=f"minimum {z[i, j]:.4g}",
                marker={
                    "size": 13,
                    "symbol": "star",
                    "color": "red",
                    "line": {"color": "black", "width": 1},
                },
            )
        )
    return out


def lines(
    surfaces: Mapping[str, Surface], title: str, xlabel: str = "α", log: bool = False
) -> Figure:
    """1-D slices (lines, interpolations): the loss of each (train solid, test dashed) and
    its accuracy on a second axis, the models a path passes through as dotted rules."""
    data, shapes = [], []
    for i, (name, s) in enumerate(surfaces.items()):
        colour = f"hsl({(i * 67) % 360}, 65%, 42%)"
        for key, dash, axis in (
            ("train_loss", "solid", "y"),
            ("test_loss", "dash", "y"),
            ("train_acc", "dot", "y2"),
            ("test_acc", "dashdot", "y2"),
        ):
            if getattr(s, key) is not None:
                data.append(
                    {
                        "type": "scatter",
                        "mode": "lines",
                        "x": numbers(s.xcoordinates),
                        "y": numbers(getattr(s, key)),
                        "yaxis": axis,
                        "name": f"{name}: {key.replace('_', ' ')}",
                        "line": {"color": colour, "dash": dash},
                    }
                )
        for _lab, pos in s.attrs.get("marks") or []:
            shapes.append(
                {
                    "type": "line",
                    "x0": pos[0],
                    "x1": pos[0],
                    "yref": "paper",
                    "y0": 0,
                    "y1": 1,
                    "line": {"dash": "dot", "color": "grey"},
                }
            )
    layout = {
        "title": _heading(title),
        "height": 420,
        "shapes": shapes,
        "xaxis": {"title": {"text": xlabel}},
        "yaxis": {"title": {"text": "loss"}, "type": "log" if log else "linear"},
        "yaxis2": {
            "title": {"text": "accuracy"},
            "overlaying": "y",
            "side": "right",
            "range": [0, 1.02],
            "tickmode": "auto",
            "showgrid": False,
        },
        "legend": {"orientation": "h", "y": -0.2},
    }
    return {"data": data, "layout": layout}
