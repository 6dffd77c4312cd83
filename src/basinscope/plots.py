"""Figures of loss surfaces and sharpness rankings, written as PNG files.

Every function draws on its own :class:`matplotlib.figure.Figure` with an Agg
canvas and never touches ``matplotlib.pyplot``: importing or calling this
module does not change the user's backend, create pyplot figures, or leak
memory through pyplot's figure manager. Files are written atomically (temp
file + rename) so a reader never sees a half-written PNG.

The pictures follow Li et al. 2018, "Visualizing the Loss Landscape of Neural
Nets": 1-D slices with accuracy on a twin axis, 2-D contour maps and 3-D
surfaces of ``L(θ0 + α d1 + β d2)``. Arrays are indexed ``[i, j]`` at
``(x[i], y[j])``. Points not yet computed (or diverged) are ``NaN`` and are
masked, so a partially computed grid can be drawn while it is still running;
such a figure says so in its title ("partial: k of n points") and a contour map
then marks no minimum (the lowest computed point is not the surface's minimum).
Losses that span more than two decades are drawn on a log scale by default.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import LogLocator, MaxNLocator

from ._io import atomic_write
from .errors import BasinscopeError
from .surface import METRICS, Surface

__all__ = [
    "choose_log_scale",
    "common_limits",
    "plot_bars",
    "plot_contour",
    "plot_grid",
    "plot_line",
    "plot_matrix",
    "plot_surface_3d",
    "plot_xy",
]

DPI = 150  # resolution of every PNG written here
CMAP = "viridis"
_LOG_DECADES = 2.0  # log scale when max/min > 10**_LOG_DECADES
_LABELS = {
    "train_loss": "train loss",
    "test_loss": "test loss",
    "train_acc": "train accuracy",
    "test_acc": "test accuracy",
}


# ----------------------------------------------------------------------------- helpers


def _finite(values: np.ndarray | Iterable[float]) -> np.ndarray:
    """The finite entries of ``values`` as a flat float64 array."""
    a = np.asarray(values, dtype=np.float64).ravel()
    return a[np.isfinite(a)]


def choose_log_scale(values: np.ndarray | Iterable[float]) -> bool:
    """Whether ``values`` should be drawn on a log scale.

    True when every finite value is positive and ``max / min > 100`` (the
    values span more than two decades, as a loss does from a minimum out to
    the edge of a wide plane). NaN and ±inf are ignored; no finite values
    gives False.
    """
    v = _finite(values)
    if v.size == 0 or v.min() <= 0:
        return False
    return bool(v.max() / v.min() > 10**_LOG_DECADES)


def common_limits(arrays: Iterable[np.ndarray | Iterable[float]]) -> tuple[float, float]:
    """``(vmin, vmax)`` over the finite values of all ``arrays`` together.

    NaN and ±inf are ignored. Raises :class:`BasinscopeError` when there is no
    finite value at all (nothing computed yet, or everything diverged).
    """
    parts = [_finite(a) for a in arrays]
    v = np.concatenate(parts) if parts else np.empty(0)
    if v.size == 0:
        raise BasinscopeError("there is no finite value to plot (all points are NaN or infinite)")
    return float(v.min()), float(v.max())


def _positive_limits(arrays: Sequence[np.ndarray]) -> tuple[float, float]:
    """Limits over the finite, strictly positive values (for a log scale)."""
    pos = [np.where(np.asarray(a, dtype=np.float64) > 0, a, np.nan) for a in arrays]
    try:
        return common_limits(pos)
    except BasinscopeError:
        raise BasinscopeError(
            "a log scale was asked for but there is no positive finite value; pass log=False"
        ) from None


def _widen(vmin: float, vmax: float, log: bool) -> tuple[float, float]:
    """Make a degenerate range (a constant surface) into a drawable one."""
    if vmax > vmin:
        return vmin, vmax
    if log:
        return vmin / 2.0, vmax * 2.0
    pad = 0.5 * abs(vmin) if vmin != 0 else 0.5
    return vmin - pad, vmax + pad


def _levels(vmin: float, vmax: float, n: int, log: bool) -> np.ndarray:
    """``n`` contour level boundaries from ``vmin`` to ``vmax``.

    Geometric (``np.geomspace``) on a log scale so every decade gets the same
    number of levels, arithmetic (``np.linspace``) otherwise.
    """
    if n < 2:
        raise BasinscopeError(f"levels={n} is too few; use at least 2 contour levels")
    if log and vmin <= 0:
        raise BasinscopeError(f"log-spaced levels need vmin > 0, got vmin={vmin:g}")
    vmin, vmax = _widen(vmin, vmax, log)
    return np.geomspace(vmin, vmax, n) if log else np.linspace(vmin, vmax, n)


def _masked(z: np.ndarray, log: bool) -> np.ma.MaskedArray:
    """``z`` with NaN/inf (and, on a log scale, values ≤ 0) masked out."""
    z = np.asarray(z, dtype=np.float64)
    bad = ~np.isfinite(z)
    if log:
        bad |= ~(z > 0)
    return np.ma.masked_array(z, mask=bad)


def _extend(data: np.ndarray, vmin: float, vmax: float) -> str:
    """Matplotlib's ``extend=`` for data that reaches beyond ``[vmin, vmax]``."""
    v = _finite(data)
    below = bool(v.size and v.min() < vmin)
    above = bool(v.size and v.max() > vmax)
    return {(False, False): "neither", (True, False): "min", (False, True): "max"}.get(
        (below, above), "both"
    )


def _figure(figsize: tuple[float, float], layout: str | None = "constrained") -> Figure:
    """A pyplot-free figure with an Agg canvas attached."""
    fig = Figure(figsize=figsize, dpi=DPI, layout=layout)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` to ``path`` as PNG, atomically (the temp name ends in .tmp)."""
    return atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=DPI))


def _metric_2d(surface: Surface, key: str, who: str) -> np.ndarray:
    """The ``[nx, ny]`` array for ``key``; a clear error for a line."""
    if not surface.is_2d:
        raise BasinscopeError(
            f"{who} needs a 2-D surface (a plane) but got a 1-D line of {surface.shape[0]} "
            "points; use plot_line for lines"
        )
    return np.asarray(surface.metric(key), dtype=np.float64)


def _resolve_log(values: np.ndarray, log: bool | None) -> bool:
    """``log`` if given, else :func:`choose_log_scale` on the values."""
    return choose_log_scale(values) if log is None else bool(log)


def _label(key: str, log: bool = False) -> str:
    name = _LABELS.get(key, key)
    return f"log10 {name}" if log else name


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
    log: bool | None = None,
) -> Path:
    """Draw a 2-D surface as a 3-D plot (``mpl_toolkits.mplot3d``).

    Values above ``zmax`` are clipped to ``zmax`` (a flat plateau, as in Li et
    al.'s figures, so the far rim does not dwarf the basin). With ``log``
    (``None``: :func:`choose_log_scale` decides) the z axis shows ``log10`` of
    the values, since 3-D axes have no true log scale; ``zmax`` is then in
    the original units. NaN points are left as holes.

    Returns:
        The path written.
    """
    z = _metric_2d(surface, key, "plot_surface_3d")
    log = _resolve_log(z, log)
    z = np.where(np.isfinite(z), z, np.nan)
    if zmax is not None:
        if log and zmax <= 0:
            raise BasinscopeError(f"zmax={zmax:g} must be positive on a log scale")
        z = np.minimum(z, zmax)  # NaN stays NaN
    if log:
        _positive_limits([z])  # a clear error if nothing is positive
        z = np.log10(np.where(z > 0, z, np.nan))
    vmin, vmax = _widen(*common_limits([z]), log=False)
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
    log: bool | None = None,
    title: str | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
    mark_origin: bool = True,
) -> Path:
    """Draw a filled contour map of a 2-D surface with contour lines on top.

    ``levels`` boundaries run from ``vmin`` to ``vmax`` (default: the finite
    data range); they are geometric on a log scale (:func:`_levels`). With
    ``log=None`` the scale is log when all values are positive and
    ``max/min > 100`` (:func:`choose_log_scale`). Values outside
    ``[vmin, vmax]`` are drawn in the colour bar's extensions. With
    ``mark_origin`` the trained point ``(0, 0)`` and the grid minimum are
    marked. NaN points (and values ≤ 0 on a log scale) are masked.

    Returns:
        The path written.
    """
    z = _metric_2d(surface, key, "plot_contour")
    log = _resolve_log(z, log)
    lo, hi = _positive_limits([z]) if log else common_limits([z])
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
    zm = _masked(z, log)

    fig = _figure((6.4, 5.2))
    ax = fig.add_subplot()
    cs = ax.contourf(X, Y, zm, levels=lv, norm=norm, cmap=CMAP, extend=_extend(zm, lo, hi))
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
        fig.colorbar(cs, ax=ax, label=_label(key), ticks=LogLocator())
    else:
        fig.colorbar(cs, ax=ax, label=_label(key), format="%.3g")
    ax.set_xlabel(surface.attrs.get("xlabel", "α (direction 1)"))
    ax.set_ylabel(surface.attrs.get("ylabel", "β (direction 2)"))
    ax.set_aspect("auto")
    ax.set_title(_title(title, _label(key), surface))
    return _save(fig, path)


# ----------------------------------------------------------------------------- grids


def _grid_norm(arrays: Sequence[np.ndarray], log: bool) -> Normalize:
    """One colour norm for all panels: the global finite (positive, on log) range.

    ``LogNorm`` on a log scale, ``Normalize`` otherwise, so the same colour
    means the same loss in every panel.
    """
    lo, hi = _positive_limits(arrays) if log else common_limits(arrays)
    lo, hi = _widen(lo, hi, log)
    return LogNorm(lo, hi) if log else Normalize(lo, hi)


def plot_grid(
    surfaces: Mapping[str, Surface],
    path: str | Path,
    key: str = "train_loss",
    kind: str = "contour",
    log: bool | None = None,
    ncols: int | None = None,
    suptitle: str | None = None,
    levels: int = 30,
) -> Path:
    """Draw several runs side by side on one common colour scale.

    2-D surfaces become contour maps (``kind="contour"``) or 3-D surfaces
    (``kind="surface"``) sharing one norm (:func:`_grid_norm`: global vmin /
    vmax over every panel, ``LogNorm`` on a log scale) and one colour bar, so
    panels compare directly. 1-D surfaces become line plots on a shared
    y-axis. ``log=None`` lets :func:`choose_log_scale` decide on all values.
    Panels are titled with the mapping's keys.

    Returns:
        The path written.
    """
    if not surfaces:
        raise BasinscopeError("plot_grid got no surfaces; pass a mapping of run name to Surface")
    if kind not in ("contour", "surface"):
        raise BasinscopeError(f"unknown plot kind {kind!r}; use 'contour' or 'surface'")
    dims = {s.is_2d for s in surfaces.values()}
    if len(dims) > 1:
        raise BasinscopeError("plot_grid got a mix of 1-D lines and 2-D planes; plot them apart")
    names = list(surfaces)
    arrays = [np.asarray(surfaces[n].metric(key), dtype=np.float64) for n in names]
    log = _resolve_log(np.concatenate([a.ravel() for a in arrays]), log)
    norm = _grid_norm(arrays, log)
    n = len(names)
    ncols = min(n, 3) if ncols is None else int(ncols)
    if ncols < 1:
        raise BasinscopeError(f"ncols={ncols} must be at least 1")
    nrows = math.ceil(n / ncols)
    is_2d = dims == {True}
    three_d = is_2d and kind == "surface"
    size = (4.2 * ncols + (1.2 if is_2d else 0.0), 3.8 * nrows)
    fig = _figure(size, layout=None if three_d else "constrained")

    if not is_2d:
        axes = fig.subplots(nrows, ncols, sharey=True, squeeze=False).ravel()
        for ax, name, a in zip(axes[:n], names, arrays, strict=True):
            ax.plot(np.asarray(surfaces[name].xcoordinates), a, color="C0", lw=1.8)
            ax.axvline(0.0, color="0.6", lw=0.8, ls=":")
            ax.set_title(_title(name, name, surfaces[name]))
            ax.set_xlabel("α")
            ax.xaxis.set_major_locator(MaxNLocator(5))
        if log:
            axes[0].set_yscale("log")
        pad = 0.05 * (norm.vmax - norm.vmin) if not log else 0.0
        axes[0].set_ylim(
            (norm.vmin / 1.2, norm.vmax * 1.2) if log else (norm.vmin - pad, norm.vmax + pad)
        )
        for ax in axes[::ncols]:
            ax.set_ylabel(_label(key))
        for ax in axes[n:]:
            ax.remove()
    elif three_d:
        znorm = Normalize(np.log10(norm.vmin), np.log10(norm.vmax)) if log else norm
        axes = []
        for idx, (name, a) in enumerate(zip(names, arrays, strict=True)):
            ax = fig.add_subplot(nrows, ncols, idx + 1, projection="3d")
            s = surfaces[name]
            X, Y = np.meshgrid(s.xcoordinates, s.ycoordinates, indexing="ij")
            z = np.where(np.isfinite(a), a, np.nan)
            z = np.log10(np.where(z > 0, z, np.nan)) if log else z
            ax.plot_surface(
                X, Y, z, cmap=CMAP, norm=znorm, linewidth=0, rcount=min(len(s.xcoordinates), 200),
                ccount=min(len(s.ycoordinates), 200),
            )  # fmt: skip
            ax.set_zlim(znorm.vmin, znorm.vmax)
            ax.set_title(_title(name, name, surfaces[name]))
            ax.set_xlabel("α")
            ax.set_ylabel("β")
            axes.append(ax)
        fig.subplots_adjust(left=0.02, right=0.86, wspace=0.05)
        cax = fig.add_axes((0.9, 0.15, 0.02, 0.7))
        fig.colorbar(ScalarMappable(znorm, CMAP), cax=cax, label=_label(key, log))
    else:
        lv = _levels(norm.vmin, norm.vmax, levels, log)
        axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
        for ax, name, a in zip(axes[:n], names, arrays, strict=True):
            s = surfaces[name]
            X, Y = np.meshgrid(s.xcoordinates, s.ycoordinates, indexing="ij")
            zm = _masked(a, log)
            ax.contourf(X, Y, zm, levels=lv, norm=norm, cmap=CMAP)
            ax.contour(X, Y, zm, levels=lv, colors="black", linewidths=0.3, alpha=0.5)
            ax.plot([0.0], [0.0], marker="o", ms=5, mfc="white", mec="black", ls="")
            ax.set_title(_title(name, name, surfaces[name]))
            ax.set_xlabel("α")
            ax.set_ylabel("β")
        for ax in axes[n:]:
            ax.remove()
        fig.colorbar(
            ScalarMappable(norm, CMAP), ax=list(axes[:n]), label=_label(key), format="%.3g"
        )
    fig.suptitle(suptitle if suptitle is not None else _label(key))
    return _save(fig, path)


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
