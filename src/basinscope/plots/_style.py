"""The look every figure shares, and the pyplot-free plumbing under it.

Every figure is a :class:`matplotlib.figure.Figure` with its own Agg canvas
(:func:`_figure`), never a pyplot figure, and is written atomically
(:func:`_save`). Colour scale, contour levels and the log-or-linear choice are
decided here so that surfaces and charts agree.

Surfaces and contours are drawn on a linear loss scale by default, on one
clipped z-range shared by the runs of a study (:func:`common_zrange`, values
above the clip level drawn as a flat plateau, as Li et al. 2018 clip at a
maximum loss); a log scale is an option (``log=True``) and is then labelled
``log10`` (:func:`_label`, :func:`_scale_label`). :func:`drawn_z` is exactly the
array a 3-D figure draws, so what a figure shows can be checked.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .._io import atomic_write
from ..errors import BasinscopeError

DPI = 150  # resolution of every PNG written here
CMAP = "viridis"
_LOG_DECADES = 2.0  # log scale when max/min > 10**_LOG_DECADES
CLIP_FACTOR = 10.0  # default clip level: this many times the largest loss at the runs' centres
_LABELS = {
    "train_loss": "train loss",
    "test_loss": "test loss",
    "train_acc": "train accuracy",
    "test_acc": "test accuracy",
}


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


def _label(key: str, log: bool = False) -> str:
    """The axis label of ``key``: ``"train loss"``, or ``"log10 train loss"`` for
    values drawn as their base-10 logarithm (the z axis of a log 3-D surface)."""
    name = _LABELS.get(key, key)
    return f"log10 {name}" if log else name


def _scale_label(key: str, log: bool = False) -> str:
    """The colour-bar label of a contour map: the values themselves, on a log
    (``LogNorm``) scale said as ``"train loss (log10 scale)"``."""
    name = _LABELS.get(key, key)
    return f"{name} (log10 scale)" if log else name


def _centre_value(surface, key: str) -> float:
    """The loss at the grid point nearest the trained point ``(0, 0)`` (NaN if none)."""
    z = np.asarray(surface.metric(key), dtype=np.float64)
    i = int(np.argmin(np.abs(np.asarray(surface.xcoordinates, dtype=np.float64))))
    if z.ndim == 1:
        return float(z[i])
    j = int(np.argmin(np.abs(np.asarray(surface.ycoordinates, dtype=np.float64))))
    return float(z[i, j])


def common_zrange(
    surfaces: Iterable,
    key: str = "train_loss",
    zmax: float | None = None,
    log: bool = False,
    clip: float = CLIP_FACTOR,
) -> tuple[float, float]:
    """One clipped ``(zmin, zclip)`` range for drawing the runs of a study.

    With ``lo`` and ``hi`` the smallest and largest finite value of ``key``
    over all ``surfaces`` (on a log scale: the smallest positive value),
    ``c`` the largest loss at the runs' centres (the grid point nearest
    ``(0, 0)``, the trained model) and ``m`` the median of all finite values::

        zmin  = lo
        zclip = min(hi, zmax)                  if zmax is given
        zclip = min(hi, max(clip * c, m))      otherwise

    ``clip * c`` is Li et al.'s clip at a maximum loss, relative to how well the
    runs fit (when ``c ≥ 0``; otherwise — a negative return, say — ``zclip = hi``); the median keeps a plane whose runs all sit near zero loss from
    turning into one plateau. Values above ``zclip`` are drawn as a flat
    plateau at ``zclip`` (:func:`drawn_z`). A degenerate range (a constant
    surface, or ``zclip <= zmin``) is widened so it can be drawn.
    """
    surfaces = list(surfaces)
    arrays = [np.asarray(s.metric(key), dtype=np.float64) for s in surfaces]
    lo, hi = _positive_limits(arrays) if log else common_limits(arrays)
    if zmax is not None:
        if log and zmax <= 0:
            raise BasinscopeError(f"zmax={zmax:g} must be positive on a log scale")
        top = min(hi, float(zmax))
    else:
        centres = _finite([_centre_value(s, key) for s in surfaces])
        med = float(np.median(np.concatenate([_finite(a) for a in arrays])))
        top_centre = float(centres.max()) if centres.size else math.nan
        # a clip relative to the centres needs a loss ≥ 0 there (a negative return at
        # the centre gives no scale): then the whole range is drawn
        level = max(clip * top_centre, med) if top_centre >= 0 else hi
        top = min(hi, level)
    if top <= lo:
        return _widen(lo, lo, log)
    return float(lo), float(top)


def drawn_z(z: np.ndarray, zrange: tuple[float, float], log: bool = False) -> np.ndarray:
    """The values a 3-D surface draws for ``z`` on the range ``zrange``.

    Values above ``zrange[1]`` become a plateau at ``zrange[1]``; NaN/inf stay
    NaN (holes). With ``log`` the result is ``log10`` of the clipped values
    (values ≤ 0 become NaN), as the z axis of a log figure shows. Contour maps
    draw the clipped values themselves (``log=False`` here) on a ``LogNorm``.
    """
    z = np.asarray(z, dtype=np.float64)
    z = np.minimum(np.where(np.isfinite(z), z, np.nan), zrange[1])  # NaN stays NaN
    if log:
        z = np.log10(np.where(z > 0, z, np.nan))
    return z
