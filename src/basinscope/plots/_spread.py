"""The slices of several direction seeds in one figure: :func:`plot_spread`.

Draws a :class:`~basinscope.sharpness.DirectionSpread` (read through its
attributes ``seeds``, ``dim``, ``surfaces`` and ``eps``, since this wing reads
landscape results only): lines as their mean over the seeds with a mean ± SD band
and each seed as a thin line, planes as one contour panel per seed on one colour
scale (:func:`~basinscope.plots.plot_grid` on :func:`~basinscope.plots.common_zrange`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.ticker import MaxNLocator

from ..errors import BasinscopeError
from ..landscape import METRICS, Surface
from ._grids import plot_grid
from ._style import _figure, _label, _save, choose_log_scale, common_zrange


def _checked(spread: Any, key: str) -> tuple[list[int], list[Surface]]:
    """The seeds and surfaces of ``spread``, refused in one sentence when unusable."""
    try:
        seeds, surfaces, dim = list(spread.seeds), list(spread.surfaces), int(spread.dim)
    except (AttributeError, TypeError, ValueError):
        raise BasinscopeError(
            f"plot_spread needs a DirectionSpread (sharpness.direction_spread), got "
            f"{type(spread).__name__}"
        ) from None
    if key not in METRICS:
        raise BasinscopeError(f"unknown surface metric {key!r}; use one of {', '.join(METRICS)}")
    if not surfaces or len(surfaces) != len(seeds):
        raise BasinscopeError(
            f"the spread holds {len(surfaces)} surface(s) for {len(seeds)} seed(s); "
            "it needs one surface per seed"
        )
    if any(not isinstance(s, Surface) or s.is_2d != (dim == 2) for s in surfaces):
        raise BasinscopeError(f"every surface of a spread with dim={dim} must be a {dim}-D Surface")
    return seeds, surfaces


def plot_spread(
    spread: Any, path: str | Path, *, key: str = "train_loss", title: str | None = None
) -> Path:
    """Draw the slices of every direction seed of a spread and write a PNG to ``path``.

    ``dim=1``: the mean of ``key`` over the seeds as a line, a shaded band of mean ±
    sample SD (``ddof=1``; no band with one seed) and each seed as a thin line, with
    a legend; the loss axis is logarithmic when the values span more than two
    decades (:func:`~basinscope.plots.choose_log_scale`). ``dim=2``: one contour
    panel per seed on one common colour scale (:func:`~basinscope.plots.plot_grid`
    with :func:`~basinscope.plots.common_zrange` over the seeds), each titled with
    its seed (and its ε-sharpness, for the train loss). Written atomically.

    Returns:
        The path written.
    """
    seeds, surfaces = _checked(spread, key)
    if surfaces[0].is_2d:
        eps = list(getattr(spread, "eps", ()) or ())
        names = [f"seed {s}" for s in seeds]
        if key == "train_loss" and len(eps) == len(seeds):
            names = [f"{n} (ε-sharpness {e:.3g})" for n, e in zip(names, eps, strict=True)]
        default = f"{_label(key)} along the directions of {len(seeds)} seeds"
        return plot_grid(
            dict(zip(names, surfaces, strict=True)),
            path,
            key=key,
            zrange=common_zrange(surfaces, key),
            suptitle=title if title is not None else default,
        )
    return _spread_lines(seeds, surfaces, path, key, title)


def _spread_lines(
    seeds: list[int], surfaces: list[Surface], path: str | Path, key: str, title: str | None
) -> Path:
    """:func:`plot_spread` of 1-D slices: mean, mean ± SD band, one thin line per seed."""
    x = np.asarray(surfaces[0].xcoordinates, dtype=np.float64)
    if any(not np.array_equal(np.asarray(s.xcoordinates, dtype=np.float64), x) for s in surfaces):
        raise BasinscopeError("the seeds' lines lie on different grids; a spread shares one grid")
    values = np.stack([np.asarray(s.metric(key), dtype=np.float64) for s in surfaces])
    mean = values.mean(axis=0)
    sd = values.std(axis=0, ddof=1) if len(values) > 1 else np.zeros_like(mean)
    log = choose_log_scale(values)
    fig = _figure((6.4, 4.2))
    ax = fig.add_subplot()
    for k, (seed, v) in enumerate(zip(seeds, values, strict=True)):
        ax.plot(x, v, color=f"C{(k + 1) % 10}", lw=0.8, alpha=0.8, label=f"seed {seed}")
    if len(values) > 1:
        low = mean - sd
        low = np.where(low > 0, low, np.nan) if log else low
        ax.fill_between(x, low, mean + sd, color="C0", alpha=0.25, lw=0, label="mean ± SD")
    ax.plot(x, mean, color="C0", lw=2.0, label=f"mean of {len(values)} seeds")
    if log:
        ax.set_yscale("log")
    ax.axvline(0.0, color="0.6", lw=0.8, ls=":")
    ax.xaxis.set_major_locator(MaxNLocator(7))
    ax.set_xlabel("α (each seed's direction)")
    ax.set_ylabel(_label(key))
    default = f"{_label(key)}: {len(values)} direction seeds"
    ax.set_title(title if title is not None else default)
    ax.legend(loc="best", fontsize="small", framealpha=0.8)
    return _save(fig, path)
