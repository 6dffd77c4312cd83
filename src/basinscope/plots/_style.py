"""The look every figure shares, and the pyplot-free plumbing under it.

Every figure is a :class:`matplotlib.figure.Figure` with its own Agg canvas
(:func:`_figure`), never a pyplot figure, and is written atomically
(:func:`_save`). Colour scale, contour levels and the log-or-linear choice are
decided here so that surfaces and charts agree.
"""

from __future__ import annotations

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


def _resolve_log(values: np.ndarray, log: bool | None) -> bool:
    """``log`` if given, else :func:`choose_log_scale` on the values."""
    return choose_log_scale(values) if log is None else bool(log)


def _label(key: str, log: bool = False) -> str:
    name = _LABELS.get(key, key)
    return f"log10 {name}" if log else name
