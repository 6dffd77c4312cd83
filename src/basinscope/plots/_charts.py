"""Charts of numbers across runs: ranked bars, heat maps, lines and scatter plots."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ..errors import BasinscopeError
from ._style import CMAP, _figure, _finite, _save

# ----------------------------------------------------------------------------- bars


def _bar_order(values: Mapping[str, float], sort: bool) -> list[str]:
    """Run names in plotted order: descending by value (NaN last) or as given."""
    names = list(values)
    if not sort:
        return names

    def key(name: str) -> tuple[bool, float]:
        v = float(values[name])
        return (math.isnan(v), -v if not math.isnan(v) else 0.0)

    return sorted(names, key=key)  # stable: ties keep the given order


def plot_bars(
    values: Mapping[str, float],
    path: str | Path,
    errors: Mapping[str, float] | None = None,
    ylabel: str = "sharpness",
    title: str | None = None,
    sort: bool = True,
) -> Path:
    """Draw a bar chart ranking runs by a scalar (sharpness, trace, volume ...).

    Bars are sorted descending when ``sort`` (:func:`_bar_order`), each
    labelled with its value; ``errors`` (e.g. a standard deviation over
    seeds) adds error bars for the names it contains. A NaN value (not
    computed, diverged) gets an "n/a" label and no bar.

    Returns:
        The path written.
    """
    if not values:
        raise BasinscopeError("plot_bars got no values; pass a mapping of run name to number")
    if errors is not None:
        extra = [k for k in errors if k not in values]
        if extra:
            raise BasinscopeError(f"errors has names {extra} that are not in values")
    names = _bar_order(values, sort)
    v = np.array([float(values[k]) for k in names], dtype=np.float64)
    heights = np.where(np.isfinite(v), v, 0.0)
    err = None
    if errors is not None:
        e = np.array([float(errors.get(k, np.nan)) for k in names], dtype=np.float64)
        err = np.where(np.isfinite(e) & np.isfinite(v), np.abs(e), np.nan)  # NaN: no bar

    fig = _figure((max(4.8, 0.8 * len(names) + 2.0), 4.2))
    ax = fig.add_subplot()
    x = np.arange(len(names))
    colors = ["C0" if np.isfinite(t) else "none" for t in v]
    bars = ax.bar(x, heights, yerr=err, color=colors, capsize=4 if err is not None else 0)
    labels = [f"{t:.3g}" if np.isfinite(t) else "n/a" for t in v]
    ax.bar_label(bars, labels=labels, padding=2, fontsize="small")
    e0 = np.nan_to_num(err) if err is not None else 0.0
    finite = _finite(v + e0)
    if finite.size:
        top = max(float(finite.max()), 0.0)
        bottom = min(float(_finite(v - e0).min()), 0.0)
        span = (top - bottom) or 1.0
        ax.set_ylim(bottom - (0.12 * span if bottom < 0 else 0.0), top + 0.12 * span)
    # Rotate when the names would collide: roughly 0.09 inch per character.
    crowded = len(names) > 4 or max(len(n) for n in names) * 0.09 > 0.8 * fig.get_figwidth() / len(
        names
    )
    ax.set_xticks(x, names, rotation=25 if crowded else 0, ha="right" if crowded else "center")
    ax.set_ylabel(ylabel)
    ax.axhline(0.0, color="black", lw=0.6)
    ax.set_title(title if title is not None else f"{ylabel} by run")
    return _save(fig, path)


def plot_matrix(
    matrix: np.ndarray,
    rows: Sequence[str],
    cols: Sequence[str],
    path: str | Path,
    *,
    title: str | None = None,
    label: str = "",
    xlabel: str = "",
    ylabel: str = "",
) -> Path:
    """A heat map of ``matrix[i, j]`` with the value written in each cell (NaN: "n/a")."""
    m = np.asarray(matrix, dtype=np.float64)
    if m.shape != (len(rows), len(cols)):
        raise BasinscopeError(
            f"a {m.shape} matrix needs {m.shape[0]} row and {m.shape[1]} column labels"
        )
    fig = _figure((1.2 * len(cols) + 2.5, 0.8 * len(rows) + 1.8))
    ax = fig.add_subplot()
    finite = _finite(m)
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    image = ax.imshow(np.ma.masked_invalid(m), cmap=CMAP, vmin=vmin, vmax=vmax, aspect="auto")
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            text = f"{m[i, j]:.4g}" if np.isfinite(m[i, j]) else "n/a"
            ax.text(j, i, text, ha="center", va="center", fontsize="small", color="white")
    ax.set_xticks(range(len(cols)), cols)
    ax.set_yticks(range(len(rows)), rows)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    fig.colorbar(image, ax=ax, label=label)
    if title:
        ax.set_title(title)
    return _save(fig, path)


def plot_xy(
    x: Sequence[float],
    series: Mapping[str, Sequence[float]],
    path: str | Path,
    *,
    xlabel: str = "",
    ylabel: str = "",
    logx: bool = False,
    fit: tuple[float, float] | None = None,
    title: str | None = None,
) -> Path:
    """Lines with markers of each series against ``x``; ``fit=(slope, intercept)`` adds
    the line ``intercept + slope·log(x)`` (or ``·x`` without ``logx``)."""
    if not series:
        raise BasinscopeError("plot_xy needs at least one series")
    fig = _figure((5.6, 4.2))
    ax = fig.add_subplot()
    xs = np.asarray(x, dtype=np.float64)
    for name, ys in series.items():
        ax.plot(xs, np.asarray(ys, dtype=np.float64), "o-", label=name)
    if fit is not None:
        grid = np.geomspace(xs.min(), xs.max(), 50) if logx else np.linspace(xs.min(), xs.max(), 50)
        t = np.log(grid) if logx else grid
        ax.plot(grid, fit[1] + fit[0] * t, "k--", lw=1, label=f"fit: slope {fit[0]:.3g}")
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize="small")
    if title:
        ax.set_title(title)
    return _save(fig, path)


def plot_scatter(
    x: Sequence[float],
    y: Sequence[float],
    path: str | Path,
    *,
    labels: Sequence[str] | None = None,
    groups: Sequence[str] | None = None,
    xlabel: str = "",
    ylabel: str = "",
    logx: bool = False,
    title: str | None = None,
) -> Path:
    """One point per run, coloured by ``groups`` (e.g. the learning rate) and
    annotated with ``labels`` when there are few; NaN points are left out."""
    xs, ys = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if xs.shape != ys.shape or xs.ndim != 1:
        raise BasinscopeError(f"x and y must be 1-D of equal length, got {xs.shape} and {ys.shape}")
    keep = np.isfinite(xs) & np.isfinite(ys) & ((xs > 0) if logx else True)
    fig = _figure((5.6, 4.4))
    ax = fig.add_subplot()
    group = np.asarray(groups if groups is not None else [""] * len(xs), dtype=object)
    for i, g in enumerate(dict.fromkeys(group[keep])):
        sel = keep & (group == g)
        ax.scatter(xs[sel], ys[sel], s=36, color=f"C{i}", edgecolor="black", label=str(g) or None)
    if labels is not None and keep.sum() <= 12:
        for xi, yi, lab, k in zip(xs, ys, labels, keep, strict=True):
            if k:
                ax.annotate(
                    str(lab), (xi, yi), xytext=(4, 3), textcoords="offset points", fontsize=7
                )
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if groups is not None:
        ax.legend(fontsize="small")
    if title:
        ax.set_title(title)
    return _save(fig, path)
