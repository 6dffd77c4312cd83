"""How much a slice depends on the random directions it was cut along: :func:`direction_spread`.

A filter-normalised slice (Li et al. 2018, "Visualizing the Loss Landscape of
Neural Nets") is cut along random Gaussian directions; another seed gives another
slice. :func:`direction_spread` cuts one line or plane per direction seed and
reads two numbers off each:

* the **ε-sharpness** in the slice, ``max_{‖c‖₂≤ε} L(θ0 + Σ_j c_j d_j) − L(θ0)``
  over the grid points within ε (:func:`~basinscope.sharpness.from_surface`);
* the **slice curvature** along each direction, ``d²/dt² L(θ0 + t d)|_{t=0}``,
  estimated as ``2a`` from the least-squares fit ``a t² + b t + c`` to the grid
  points of the axis line through θ0 with ``|t| ≤ ε``;

and their mean and sample standard deviation over the seeds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._checks import check_int, check_number, check_output_file, check_seed, check_span
from ..errors import BasinscopeError
from ..landscape import NORMALIZERS, Surface, line, plane, random_directions
from ..objective import Objective
from ._slice import from_surface

DEFAULT_STEPS = {1: 51, 2: 31}
"""Grid points per axis when ``steps`` is not given: 51 for a line, 31 for a plane."""

_ON_GRID = 1e-9  # a coordinate within this fraction of the grid step of 0 is the origin


@dataclass(frozen=True)
class DirectionSpread:
    """Per-seed ε-sharpness and slice curvature, and their spread over the seeds.

    Attributes:
        seeds: the direction seeds, in the order given.
        dim: 1 (lines) or 2 (planes).
        radius: ε, in units of the (normalised) directions; also the half-width of
            the curvature fits.
        norm: the directions' normalisation (``filter``, ``layer`` or ``none``).
        surfaces: one :class:`~basinscope.Surface` per seed.
        eps: the ε-sharpness of each seed's slice.
        coarse: per seed, whether the ε-sharpness was read off too few grid points
            (see :func:`~basinscope.sharpness.from_surface`).
        curvature: per seed, the curvature along each of its ``dim`` directions.
        fit_points: grid points in each curvature fit (``|t| ≤ radius``).
        eps_mean, eps_sd: mean and sample SD (``ddof=1``) of ``eps`` over the seeds.
        curvature_mean, curvature_sd: mean and sample SD of the curvature pooled
            over every direction of every seed.
        curvature_mean_by_direction, curvature_sd_by_direction: the same for each
            direction index (the first direction of every seed, the second, ...).

    With one seed every SD is 0 (there is no spread to measure, not a measured
    spread of zero). A non-finite loss on a fit's points makes that curvature NaN,
    and NaN then carries into its mean and SD.
    """

    seeds: tuple[int, ...]
    dim: int
    radius: float
    norm: str
    surfaces: tuple[Surface, ...]
    eps: tuple[float, ...]
    coarse: tuple[bool, ...]
    curvature: tuple[tuple[float, ...], ...]
    fit_points: int
    eps_mean: float
    eps_sd: float
    curvature_mean: float
    curvature_sd: float
    curvature_mean_by_direction: tuple[float, ...]
    curvature_sd_by_direction: tuple[float, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (without the surfaces; tuples as lists)."""
        out: dict[str, Any] = {}
        for name in self.__dataclass_fields__:
            if name == "surfaces":
                continue
            value = getattr(self, name)
            if name == "curvature":
                value = [list(row) for row in value]
            elif isinstance(value, tuple):
                value = list(value)
            out[name] = value
        return out


def _mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (``ddof=1``; 0 for a single value)."""
    a = np.asarray(values, dtype=np.float64)
    sd = float(np.std(a, ddof=1)) if a.size > 1 else 0.0
    return float(np.mean(a)), sd


def _check_seeds(seeds: Any) -> tuple[int, ...]:
    if isinstance(seeds, str | bytes) or not isinstance(seeds, Sequence | np.ndarray):
        raise BasinscopeError(
            f"seeds must be a non-empty sequence of distinct integers, got {seeds!r}"
        )
    checked = tuple(check_seed(f"seeds[{i}]", s) for i, s in enumerate(seeds))
    if not checked:
        raise BasinscopeError("seeds must be a non-empty sequence of distinct integers, got none")
    twice = sorted({s for s in checked if checked.count(s) > 1})
    if twice:
        raise BasinscopeError(
            f"seeds must be distinct, but {twice[0]} is given more than once; each seed "
            "gives one set of directions"
        )
    return checked


def _origin_index(coords: np.ndarray) -> int | None:
    """The index of the coordinate 0 (to a tiny fraction of the grid step), if any."""
    step = float(np.min(np.diff(coords)))
    i = int(np.argmin(np.abs(coords)))
    return i if abs(float(coords[i])) <= _ON_GRID * step else None


def _fit_mask(coords: np.ndarray, radius: float) -> np.ndarray:
    return np.abs(coords) <= radius * (1 + 1e-12)


def _check_grid(coords: np.ndarray, radius: float, need_origin: bool, what: str) -> int:
    """Refuse a grid without 0 (when ``need_origin``) or with < 3 points within ε;
    returns how many points each curvature fit uses."""
    if need_origin and _origin_index(coords) is None:
        raise BasinscopeError(
            f"{what}'s grid {coords[0]:g} … {coords[-1]:g} on {len(coords)} points has no point "
            "at 0, so no axis line passes through θ0; use a span symmetric about 0 with an odd "
            "number of steps"
        )
    n = int(_fit_mask(coords, radius).sum())
    if n < 3:
        raise BasinscopeError(
            f"only {n} grid point(s) lie within radius {radius:g} of 0 on {what}'s grid "
            f"({coords[0]:g} … {coords[-1]:g}, {len(coords)} points), and a quadratic fit "
            "needs 3; use a larger radius, more steps or a smaller span"
        )
    return n


def _curvature(t: np.ndarray, loss: np.ndarray, radius: float) -> float:
    """``2a`` of the least-squares fit ``a t² + b t + c`` over the points ``|t| ≤ radius``
    (NaN when one of them is not finite)."""
    keep = _fit_mask(t, radius)
    t, y = t[keep], np.asarray(loss, dtype=np.float64)[keep]
    if not np.isfinite(y).all():
        return math.nan
    s = t / radius  # scaled to [-1, 1] for a well-conditioned fit
    design = np.stack([s * s, s, np.ones_like(s)], axis=1)
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    return float(2.0 * coef[0] / radius**2)


def _slice_curvatures(surface: Surface, radius: float) -> tuple[float, ...]:
    """The curvature along each direction of ``surface`` at θ0 (train loss)."""
    x = np.asarray(surface.xcoordinates, dtype=np.float64)
    loss = np.asarray(surface.train_loss, dtype=np.float64)
    if not surface.is_2d:
        return (_curvature(x, loss, radius),)
    y = np.asarray(surface.ycoordinates, dtype=np.float64)
    i0, j0 = _origin_index(x), _origin_index(y)
    if i0 is None or j0 is None:  # checked before the work; a guard for the surface itself
        raise BasinscopeError("the plane's grid has no point at the origin to fit through")
    return (_curvature(x, loss[:, j0], radius), _curvature(y, loss[i0, :], radius))


def _seed_path(path: str | Path, seed: int) -> Path:
    """``<stem>_seed<k><suffix>`` beside ``path``."""
    p = Path(path)
    return p.with_name(f"{p.stem}_seed{seed}{p.suffix}")


def _check_inputs(
    seeds: Any, dim: Any, span: Any, steps: Any, radius: Any, norm: Any, update_bn: bool
) -> tuple[tuple[int, ...], int, float, tuple[float, float], int, int]:
    """The checked ``(seeds, dim, radius, span, steps, fit_points)`` of
    :func:`direction_spread`, each refusal one sentence."""
    seeds = _check_seeds(seeds)
    dim = check_int("dim", dim)
    if dim not in (1, 2):
        raise BasinscopeError(f"dim must be 1 (lines) or 2 (planes), got {dim}")
    radius = check_number("the radius", radius, positive=True)
    if not isinstance(norm, str) or norm not in NORMALIZERS:
        raise BasinscopeError(
            f"unknown normalisation {norm!r}; use one of {', '.join(NORMALIZERS)}"
        )
    span = check_span("the span", span)
    steps = DEFAULT_STEPS[dim] if steps is None else check_int("steps", steps, minimum=2)
    what = "the line" if dim == 1 else "the plane"
    coords = np.linspace(span[0], span[1], steps)  # the slices' own grid (landscape._grid)
    fit_points = _check_grid(coords, radius, dim == 2 or update_bn, what)
    return seeds, dim, radius, span, steps, fit_points


def direction_spread(
    obj: Objective,
    seeds: Sequence[int] = (0, 1, 2),
    *,
    dim: int = 2,
    span: tuple[float, float] = (-1.0, 1.0),
    steps: int | None = None,
    radius: float = 0.25,
    norm: str = "filter",
    test: Any = None,
    path: str | Path | None = None,
    progress: bool = False,
    update_bn: Any = None,
) -> DirectionSpread:
    """One slice per direction seed, and how much its sharpness and curvature vary.

    For each seed ``k``: ``d = random_directions(obj, dim, norm=norm, seed=k)``
    (filter normalisation by default, Li et al. 2018), then the slice
    :func:`~basinscope.line` (``dim=1``) or :func:`~basinscope.plane` (``dim=2``)
    on ``linspace(*span, steps)`` per axis. Read off each slice:

    * ε-sharpness ``max_{‖c‖₂≤ε} L(θ0 + Σ_j c_j d_j) − L(θ0)`` over the grid points
      within ``ε = radius`` (:func:`~basinscope.sharpness.from_surface`, which warns
      when too few grid points lie within ε);
    * the curvature ``d²/dt² L(θ0 + t d_j)|_{t=0}`` along each direction ``d_j``,
      estimated as ``2a`` from the least-squares fit ``a t² + b t + c`` to the train
      loss on the axis line through θ0 (on a plane: the row or column at
      coefficient 0) over its grid points with ``|t| ≤ radius``; exact where the
      loss is quadratic along the line (a linear model with a squared error).

    Args:
        obj: the Objective (training data).
        seeds: distinct direction seeds (integers ≥ 0).
        dim: 1 (lines) or 2 (planes).
        span, steps: each axis is ``linspace(span[0], span[1], steps)``; ``steps``
            defaults to 51 for lines and 31 for planes. A plane's grid must have a
            point at 0 (a span symmetric about 0 and an odd ``steps`` have one).
        radius: ε, and the half-width of the curvature fits (at least 3 grid
            points must lie within it).
        norm: ``filter``, ``layer`` or ``none``.
        test: test data or a test Objective, passed to the slices.
        path: when given, seed ``k``'s slice is written (and resumed) at
            ``<stem>_seed<k><suffix>``; its attrs record ``direction_seed`` and
            ``norm``.
        progress: progress bars.
        update_bn: data to recompute BatchNorm statistics at every point (as in
            :func:`~basinscope.line`); the grid must then have a point at 0.

    Returns:
        A :class:`DirectionSpread`; its SDs are sample SDs (``ddof=1``) and 0 with
        a single seed.

    Every argument is checked before any slice is computed, each refusal one
    sentence.
    """
    seeds, dim, radius, span, steps, fit_points = _check_inputs(
        seeds, dim, span, steps, radius, norm, update_bn is not None
    )
    paths = [None if path is None else _seed_path(path, s) for s in seeds]
    for p in paths:
        if p is not None:
            check_output_file(p, "the surface file")

    per_seed = []
    for seed, p in zip(seeds, paths, strict=True):
        d = random_directions(obj, dim, norm=norm, seed=seed)
        kw = {
            "span": span,
            "steps": steps,
            "test": test,
            "path": p,
            "progress": progress,
            "attrs": {"direction_seed": seed, "norm": norm, "directions": "random"},
            "update_bn": update_bn,
        }
        surf = line(obj, d[0], **kw) if dim == 1 else plane(obj, d[0], d[1], **kw)
        per_seed.append((surf, from_surface(surf, radius), _slice_curvatures(surf, radius)))
    return _summary(seeds, dim, radius, norm, fit_points, per_seed)


def _summary(
    seeds: tuple[int, ...],
    dim: int,
    radius: float,
    norm: str,
    fit_points: int,
    per_seed: list[tuple[Surface, Any, tuple[float, ...]]],
) -> DirectionSpread:
    """The :class:`DirectionSpread` of each seed's ``(surface, ε-sharpness, curvatures)``."""
    eps = tuple(sharp.value for _, sharp, _ in per_seed)
    curvature = tuple(curv for _, _, curv in per_seed)
    eps_mean, eps_sd = _mean_sd(eps)
    c_mean, c_sd = _mean_sd([c for row in curvature for c in row])
    by_dir = [_mean_sd([row[j] for row in curvature]) for j in range(dim)]
    return DirectionSpread(
        seeds=seeds,
        dim=dim,
        radius=radius,
        norm=norm,
        surfaces=tuple(surf for surf, _, _ in per_seed),
        eps=eps,
        coarse=tuple(bool(sharp.coarse) for _, sharp, _ in per_seed),
        curvature=curvature,
        fit_points=fit_points,
        eps_mean=eps_mean,
        eps_sd=eps_sd,
        curvature_mean=c_mean,
        curvature_sd=c_sd,
        curvature_mean_by_direction=tuple(m for m, _ in by_dir),
        curvature_sd_by_direction=tuple(sd for _, sd in by_dir),
    )
