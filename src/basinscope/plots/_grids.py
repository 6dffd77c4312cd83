"""Several runs side by side on one colour scale: :func:`plot_grid`.

The same colour means the same loss in every panel (one norm over all of them,
:func:`_grid_norm`, on the clipped range :func:`common_zrange` and a linear scale
unless ``log=True``), so the runs of a study compare at a glance. A path surface's
models (``attrs["marks"]``, e.g. :func:`~basinscope.landscape.three_model_plane`) are
marked and labelled on its contour panel, with their train losses on that panel's
landscape (``attrs["mark_losses"]``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.cm import ScalarMappable
from matplotlib.colors import LogNorm, Normalize
from matplotlib.ticker import MaxNLocator

from ..errors import BasinscopeError
from ..landscape import Surface
from ._style import (
    CMAP,
    _figure,
    _label,
    _levels,
    _masked,
    _positive_limits,
    _save,
    _scale_label,
    _widen,
    common_limits,
    common_zrange,
    drawn_z,
)
from ._surfaces import _draw_paths, _title


def _grid_norm(
    arrays: Sequence[np.ndarray], log: bool, zrange: tuple[float, float] | None = None
) -> Normalize:
    """One colour norm for all panels: ``zrange``, or else the global finite
    (positive, on log) range.

    ``LogNorm`` on a log scale, ``Normalize`` otherwise, so the same colour
    means the same loss in every panel.
    """
    if zrange is not None:
        lo, hi = float(zrange[0]), float(zrange[1])
        if log and lo <= 0:
            raise BasinscopeError(f"zrange starts at {lo:g}; a log scale needs it positive")
    else:
        lo, hi = _positive_limits(arrays) if log else common_limits(arrays)
    lo, hi = _widen(lo, hi, log)
    return LogNorm(lo, hi) if log else Normalize(lo, hi)


def plot_grid(
    surfaces: Mapping[str, Surface],
    path: str | Path,
    key: str = "train_loss",
    kind: str = "contour",
    log: bool = False,
    ncols: int | None = None,
    suptitle: str | None = None,
    levels: int = 30,
    zmax: float | None = None,
    zrange: tuple[float, float] | None = None,
) -> Path:
    """Draw several runs side by side on one common colour scale.

    2-D surfaces become contour maps (``kind="contour"``) or 3-D surfaces
    (``kind="surface"``) sharing one norm and z range (:func:`_grid_norm` on
    ``zrange``, default :func:`common_zrange` over every panel with ``zmax`` as
    its clip level when given: from the lowest loss of any run to the clip
    level, values above it drawn as a flat plateau) and one colour bar, so
    panels compare directly. Pass the ``zrange`` the per-run figures of a
    study use and the grid shows the same scale. The scale is linear unless
    ``log=True`` (``LogNorm`` contours labelled ``"… (log10 scale)"``, 3-D z
    axes of ``log10`` values labelled ``"log10 …"``). 1-D surfaces become line
    plots on a shared y-axis. Panels are titled with the mapping's keys.
    On contour maps, the models a path surface passes through (``attrs["marks"]``,
    as :func:`~basinscope.plots.plot_contour` draws them) are marked and labelled,
    with their losses on that panel's landscape (``attrs["mark_losses"]``) when
    ``key="train_loss"``; a surface without marks gets the trained point
    ``(0, 0)``. So the same plane evaluated on several landscapes (e.g. the plane
    through three minima on each training set's loss) compares panel by panel.

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
    log = bool(log)
    if zrange is None:
        zrange = common_zrange([surfaces[n] for n in names], key, zmax=zmax, log=log)
    norm = _grid_norm(arrays, log, zrange)
    n = len(names)
    ncols = min(n, 3) if ncols is None else int(ncols)
    if ncols < 1:
        raise BasinscopeError(f"ncols={ncols} must be at least 1")
    nrows = math.ceil(n / ncols)
    is_2d = dims == {True}
    three_d = is_2d and kind == "surface"
    size = (4.2 * ncols + (1.2 if is_2d else 0.0), 3.8 * nrows)
    fig = _figure(size, layout=None if three_d else "constrained")

    panels = (fig, surfaces, arrays, norm, log, key, nrows, ncols)
    if not is_2d:
        _line_panels(*panels)
    elif three_d:
        _surface_panels(*panels)
    else:
        _contour_panels(*panels, levels)
    fig.suptitle(suptitle if suptitle is not None else _label(key))
    return _save(fig, path)


def _line_panels(fig, surfaces, arrays, norm, log, key, nrows, ncols) -> None:
    """:func:`plot_grid` of 1-D lines: one line plot per run on a shared y-axis."""
    names, n = list(surfaces), len(surfaces)
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


def _surface_panels(fig, surfaces, arrays, norm, log, key, nrows, ncols) -> None:
    """:func:`plot_grid` of 3-D surfaces sharing one z range and one colour bar."""
    names = list(surfaces)
    znorm = Normalize(np.log10(norm.vmin), np.log10(norm.vmax)) if log else norm
    for idx, (name, a) in enumerate(zip(names, arrays, strict=True)):
        ax = fig.add_subplot(nrows, ncols, idx + 1, projection="3d")
        s = surfaces[name]
        X, Y = np.meshgrid(s.xcoordinates, s.ycoordinates, indexing="ij")
        z = drawn_z(a, (norm.vmin, norm.vmax), log)
        ax.plot_surface(
            X, Y, z, cmap=CMAP, norm=znorm, linewidth=0, rcount=min(len(s.xcoordinates), 200),
            ccount=min(len(s.ycoordinates), 200),
        )  # fmt: skip
        ax.set_zlim(znorm.vmin, znorm.vmax)
        ax.set_title(_title(name, name, surfaces[name]))
        ax.set_xlabel("α")
        ax.set_ylabel("β")
        ax.set_zlabel(_label(key, log))
    fig.subplots_adjust(left=0.02, right=0.86, wspace=0.05)
    cax = fig.add_axes((0.9, 0.15, 0.02, 0.7))
    fig.colorbar(ScalarMappable(znorm, CMAP), cax=cax, label=_label(key, log))


def _contour_panels(fig, surfaces, arrays, norm, log, key, nrows, ncols, levels) -> None:
    """:func:`plot_grid` of contour maps on one set of levels and one colour bar."""
    names, n = list(surfaces), len(surfaces)
    lv = _levels(norm.vmin, norm.vmax, levels, log)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, name, a in zip(axes[:n], names, arrays, strict=True):
        s = surfaces[name]
        X, Y = np.meshgrid(s.xcoordinates, s.ycoordinates, indexing="ij")
        zm = _masked(drawn_z(a, (norm.vmin, norm.vmax)), log)  # clipped: a plateau
        ax.contourf(X, Y, zm, levels=lv, norm=norm, cmap=CMAP)
        ax.contour(X, Y, zm, levels=lv, colors="black", linewidths=0.3, alpha=0.5)
        if s.attrs.get("marks"):
            _draw_marks(ax, s, key)
        else:
            ax.plot([0.0], [0.0], marker="o", ms=5, mfc="white", mec="black", ls="")
        ax.set_title(_title(name, name, surfaces[name]))
        ax.set_xlabel(s.attrs.get("xlabel", "α"))
        ax.set_ylabel(s.attrs.get("ylabel", "β"))
    for ax in axes[n:]:
        ax.remove()
    fig.colorbar(
        ScalarMappable(norm, CMAP), ax=list(axes[:n]), label=_scale_label(key, log), format="%.3g"
    )


def _draw_marks(ax, surface: Surface, key: str) -> None:
    """The models a path surface passes through, marked and labelled as
    :func:`~basinscope.plots.plot_contour` draws them, each with its loss on this
    panel's landscape beneath its label (train losses only: that is what
    ``attrs["mark_losses"]`` holds)."""
    _draw_paths(ax, surface)
    losses = dict(surface.attrs.get("mark_losses") or []) if key == "train_loss" else {}
    for lab, pos in surface.attrs["marks"]:
        if len(pos) == 2 and lab in losses:
            ax.annotate(
                f"L = {float(losses[lab]):.3g}",
                (pos[0], pos[1]),
                xytext=(5, -10),
                textcoords="offset points",
                fontsize="small",
            )
