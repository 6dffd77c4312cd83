"""Figures of loss surfaces: 1-D lines, contour maps, 3-D surfaces and grids of runs.

The pictures follow Li et al. 2018, "Visualizing the Loss Landscape of Neural
Nets": 1-D slices with accuracy on a twin axis, 2-D contour maps and 3-D
surfaces of ``L(θ0 + α d1 + β d2)``. Arrays are indexed ``[i, j]`` at
``(x[i], y[j])``. Points not yet computed (or diverged) are ``NaN`` and are
masked, so a partially computed grid can be drawn while it is still running;
such a figure says so in its title ("partial: k of n points") and a contour map
then marks no minimum (the lowest computed point is not the surface's minimum).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.colors import LogNorm, Normalize
from matplotlib.ticker import LogLocator, MaxNLocator

from ..errors import BasinscopeError
from ..landscape import METRICS, Surface
from ._style import (
    CMAP,
    _extend,
    _figure,
    _label,
    _levels,
    _masked,
    _positive_limits,
    _save,
    _scale_label,
    _widen,
    choose_log_scale,
    common_zrange,
    drawn_z,
)


def _metric_2d(surface: Surface, key: str, who: str) -> np.ndarray:
    """The ``[nx, ny]`` array for ``key``; a clear error for a line."""
    if not surface.is_2d:
        raise BasinscopeError(
            f"{who} needs a 2-D surface (a plane) but got a 1-D line of {surface.shape[0]} "
            "points; use plot_line for lines"
        )
    return np.asarray(surface.metric(key), dtype=np.float64)


def _draw_paths(ax, surface: Surface) -> None:
    """Draw what a path surface stores: the models it passes through
    (``attrs["marks"]``) and a training trajectory (``attrs["trajectory"]``)."""
    traj = surface.attrs.get("trajectory")
    if traj:
        t = np.asarray(traj, dtype=np.float64)
        ax.plot(t[:, 0], t[:, 1], "-o", color="black", ms=3, lw=1.2, label="trajectory")
        ax.plot(t[:1, 0], t[:1, 1], "s", color="white", mec="black", ms=6, label="start")
    for i, (lab, pos) in enumerate(surface.attrs.get("marks") or []):
        if len(pos) == 2:
            ax.plot([pos[0]], [pos[1]], marker="o", ms=8, color=f"C{i}", mec="black", ls="")
            ax.annotate(lab, (pos[0], pos[1]), xytext=(5, 5), textcoords="offset points")


def _partial(surface: Surface) -> str | None:
    """``"partial: k of n points"`` for a surface whose grid is not all computed."""
    if surface.computed is None:
        return None
    done, total = int(np.count_nonzero(surface.computed)), int(np.size(surface.computed))
    return None if done == total else f"partial: {done} of {total} points"


def _title(title: str | None, default: str, surface: Surface) -> str:
    """``title`` (or ``default``) with the partial-surface note when it applies."""
    text = title if title is not None else default
    note = _partial(surface)
    return f"{text} ({note})" if note else text


def _mark_points(
    ax,
    x: np.ndarray,
    y: np.ndarray,
    z: np.ndarray,
    origin: bool = True,
    minimum: bool = True,
) -> None:
    """Mark the trained point (α, β) = (0, 0) and, with ``minimum``, the grid's lowest
    value (not on a partial surface: the lowest computed point would sit on the edge
    of the computed part, pretending to be the minimum)."""
    if origin and x.min() <= 0 <= x.max() and y.min() <= 0 <= y.max():
        ax.plot([0.0], [0.0], marker="o", ms=6, mfc="white", mec="black", ls="", label="θ0")
    zf = np.where(np.isfinite(z), z, np.inf)
    if minimum and np.isfinite(zf).any():
        i, j = np.unravel_index(int(np.argmin(zf)), zf.shape)
        ax.plot([x[i]], [y[j]], marker="*", ms=11, color="red", mec="black", ls="", label="min")
    ax.legend(loc="upper right", fontsize="small", framealpha=0.8)


def _mark_line(ax, marks: Sequence) -> None:
    """On a line: a dotted rule at each model a path passes through, or at α = 0."""
    if marks:  # a path between models: mark each model where it lies ([label, [α]] pairs)
        for i, (lab, pos) in enumerate(marks):
            ax.axvline(float(pos[0]), color=f"C{i + 2}", lw=1.0, ls=":")
            ax.annotate(
                lab,
                (float(pos[0]), 1.0),
                xycoords=("data", "axes fraction"),
                xytext=(3, -12),
                textcoords="offset points",
                fontsize="small",
                color=f"C{i + 2}",
            )
    else:
        ax.axvline(0.0, color="0.6", lw=0.8, ls=":")


# ----------------------------------------------------------------------------- 1-D


def plot_line(
    surface: Surface,
    path: str | Path,
    keys: Sequence[str] = ("train_loss", "test_loss"),
    acc: bool = True,
    title: str | None = None,
) -> Path:
    """Draw a 1-D slice ``L(θ0 + α d)`` against ``α`` and write it to ``path``.

    Loss keys go on the left axis, on a log scale when the plotted losses are
    positive and span more than two decades (:func:`choose_log_scale`).
    Accuracy keys, and with ``acc=True`` the accuracy matching each loss key
    (``train_loss`` → ``train_acc``), go on a twin right axis in percent.
    Keys whose array the surface lacks (e.g. no test data) are skipped; at
    least one must be present. NaN points leave gaps.

    Returns:
        The path written.
    """
    if surface.is_2d:
        raise BasinscopeError(
            f"plot_line needs a 1-D surface (a line) but got a {surface.shape} plane; "
            "use plot_contour or plot_surface_3d"
        )
    if isinstance(keys, str):
        keys = (keys,)
    for k in keys:
        if k not in METRICS:
            raise BasinscopeError(f"unknown surface metric {k!r}; use one of {', '.join(METRICS)}")
    loss_keys = [k for k in keys if k.endswith("_loss") and getattr(surface, k) is not None]
    acc_keys = [k for k in keys if k.endswith("_acc") and getattr(surface, k) is not None]
    if acc:
        for k in loss_keys:
            a = k.replace("_loss", "_acc")
            if getattr(surface, a) is not None and a not in acc_keys:
                acc_keys.append(a)
    if not loss_keys and not acc_keys:
        raise BasinscopeError(f"this surface has none of the metrics {', '.join(keys)} to plot")

    x = np.asarray(surface.xcoordinates, dtype=np.float64)
    fig = _figure((6.4, 4.2))
    ax = fig.add_subplot()
    colors = {"train": "C0", "test": "C1"}
    handles = []
    if loss_keys:
        losses = [np.asarray(surface.metric(k), dtype=np.float64) for k in loss_keys]
        for k, v in zip(loss_keys, losses, strict=True):
            (h,) = ax.plot(x, v, color=colors[k.split("_")[0]], lw=1.8, label=_label(k))
            handles.append(h)
        if choose_log_scale(np.concatenate(losses)):
            ax.set_yscale("log")
        ax.set_ylabel("loss")
    else:
        ax.set_yticks([])
    if acc_keys:
        ax2 = ax.twinx()
        for k in acc_keys:
            v = 100.0 * np.asarray(surface.metric(k), dtype=np.float64)
            (h,) = ax2.plot(x, v, color=colors[k.split("_")[0]], lw=1.4, ls="--", label=_label(k))
            handles.append(h)
        ax2.set_ylim(-2.0, 102.0)
        ax2.set_ylabel("accuracy (%)")
    marks = surface.attrs.get("marks") or []
    _mark_line(ax, marks)
    ax.set_xlabel(surface.attrs.get("xlabel", "α (direction 1)"))
    default = "interpolation between two models" if marks else "1-D slice through θ0"
    ax.set_title(_title(title, default, surface))
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 4))
    return _save(fig, path)


# ----------------------------------------------------------------------------- 2-D


def plot_surface_3d(
    surface: Surface,
    path: str | Path,
    key: str = "train_loss",
    title: str | None = None,
    zmax: float | None = None,
    log: bool = False,
    zrange: tuple[float, float] | None = None,
) -> Path:
    """Draw a 2-D surface as a 3-D plot (``mpl_toolkits.mplot3d``).

    The z axis is the loss itself (a linear scale) on the range ``zrange``
    (``(zmin, zclip)`` in the loss's units; default: :func:`common_zrange` of
    this one surface, with ``zmax`` as the clip level when given). Pass the
    same ``zrange`` to every run of a study so they share one z axis. Values
    above ``zclip`` are drawn as a flat plateau, as in Li et al.'s figures, so
    the far rim does not dwarf the basin (:func:`drawn_z` is the drawn array).
    With ``log=True`` the z axis shows ``log10`` of the clipped values (3-D axes
    have no true log scale) and is labelled ``"log10 …"``. NaN points are left
    as holes.

    Returns:
        The path written.
    """
    z = _metric_2d(surface, key, "plot_surface_3d")
    log = bool(log)
    if zrange is None:
        zrange = common_zrange([surface], key, zmax=zmax, log=log)
    elif log and zrange[0] <= 0:
        raise BasinscopeError(f"zrange starts at {zrange[0]:g}; a log scale needs it positive")
    if log:
        _positive_limits([z])  # a clear error if nothing is positive
    z = drawn_z(z, zrange, log)
    lo, hi = (np.log10(zrange[0]), np.log10(zrange[1])) if log else zrange
    vmin, vmax = _widen(float(lo), float(hi), log=False)
    x = np.asarray(surface.xcoordinates, dtype=np.float64)
    y = np.asarray(surface.ycoordinates, dtype=np.float64)
    X, Y = np.meshgrid(x, y, indexing="ij")

    # No layout engine: tight/constrained layout do not handle 3-D axes well.
    fig = _figure((7.0, 5.6), layout=None)
    ax = fig.add_subplot(projection="3d")
    norm = Normalize(vmin, vmax)
    surf = ax.plot_surface(
        X,
        Y,
        z,
        cmap=CMAP,
        norm=norm,
        rcount=min(len(x), 200),
        ccount=min(len(y), 200),
        linewidth=0,
        antialiased=True,
    )
    ax.set_zlim(vmin, vmax)
    ax.xaxis.set_major_locator(MaxNLocator(5))
    ax.yaxis.set_major_locator(MaxNLocator(5))
    ax.set_xlabel("α (direction 1)")
    ax.set_ylabel("β (direction 2)")
    ax.set_zlabel(_label(key, log))
    ax.set_title(_title(title, _label(key), surface))
    fig.colorbar(surf, ax=ax, shrink=0.6, pad=0.1, label=_label(key, log))
    return _save(fig, path)


def plot_contour(
    surface: Surface,
    path: str | Path,
    key: str = "train_loss",
    levels: int = 30,
    log: bool = False,
    title: str | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
    mark_origin: bool = True,
    zrange: tuple[float, float] | None = None,
) -> Path:
    """Draw a filled contour map of a 2-D surface with contour lines on top.

    The scale is linear unless ``log=True`` (then the colour bar is a
    ``LogNorm`` labelled ``"… (log10 scale)"``). ``levels`` boundaries run from
    ``vmin`` to ``vmax``, by default the clipped range ``zrange`` (default:
    :func:`common_zrange` of this one surface; pass a study's common range so
    its runs share one scale); they are geometric on a log scale
    (:func:`_levels`). Values above the top level are drawn clipped to it (the
    plateau of the colour bar's extension), values below ``vmin`` in the lower
    extension. With
    ``mark_origin`` the trained point ``(0, 0)`` and the grid minimum are
    marked. NaN points (and values ≤ 0 on a log scale) are masked.

    Returns:
        The path written.
    """
    z = _metric_2d(surface, key, "plot_contour")
    log = bool(log)
    if log:
        _positive_limits([z])  # a clear error if nothing is positive
    if zrange is None:
        zrange = common_zrange([surface], key, log=log)
    lo, hi = zrange
    lo = lo if vmin is None else float(vmin)
    hi = hi if vmax is None else float(vmax)
    if hi < lo:
        raise BasinscopeError(f"vmin={lo:g} is above vmax={hi:g}; swap them")
    lv = _levels(lo, hi, levels, log)
    lo, hi = float(lv[0]), float(lv[-1])
    norm = LogNorm(lo, hi) if log else Normalize(lo, hi)
    x = np.asarray(surface.xcoordinates, dtype=np.float64)
    y = np.asarray(surface.ycoordinates, dtype=np.float64)
    X, Y = np.meshgrid(x, y, indexing="ij")
    extend = _extend(_masked(z, log), lo, hi)
    zm = _masked(drawn_z(z, (lo, hi)), log)  # clipped to the top level: a plateau

    fig = _figure((6.4, 5.2))
    ax = fig.add_subplot()
    cs = ax.contourf(X, Y, zm, levels=lv, norm=norm, cmap=CMAP, extend=extend)
    ax.contour(X, Y, zm, levels=lv, colors="black", linewidths=0.3, alpha=0.5)
    _draw_paths(ax, surface)
    if mark_origin:
        _mark_points(
            ax,
            x,
            y,
            np.where(zm.mask, np.nan, z),
            origin="marks" not in surface.attrs,
            minimum=_partial(surface) is None,
        )
    if log:  # ticks at decades, not at each of the geometric levels
        fig.colorbar(cs, ax=ax, label=_scale_label(key, log), ticks=LogLocator())
    else:
        fig.colorbar(cs, ax=ax, label=_label(key), format="%.3g")
    ax.set_xlabel(surface.attrs.get("xlabel", "α (direction 1)"))
    ax.set_ylabel(surface.attrs.get("ylabel", "β (direction 2)"))
    ax.set_aspect("auto")
    ax.set_title(_title(title, _label(key), surface))
    return _save(fig, path)
