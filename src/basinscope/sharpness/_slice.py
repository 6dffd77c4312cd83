"""ε-sharpness in a slice: the largest loss rise within ε in the span of the directions.

The seed tool's ``max_{‖c‖≤ε} L(θ0 + Σ c_j d_j) − L(θ0)`` over the coefficients
``c`` of the surface directions (Keskar et al. 2017 define the same quantity over
a box in the full space). It is read off a computed :class:`~basinscope.Surface`
(:func:`from_surface`, grid points with ``‖c‖₂ ≤ ε``) or computed directly
(:func:`epsilon`, a dense polar grid of the disk, or of the segment for one
direction).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .._checks import check_int, check_number
from ..errors import BasinscopeError
from ..landscape import Surface, finite_loss0
from ..objective import Objective
from ._common import _check_reach

COARSE_POINTS = 8
"""Fewer grid points than this (besides the origin) within ε make a grid ε-sharpness coarse."""


@dataclass(frozen=True)
class EpsilonSharpness:
    """``value = max_loss − loss0`` over coefficients ``‖c‖₂ ≤ radius``.

    Attributes:
        value: the sharpness.
        loss0: ``L(θ0)``.
        max_loss: the largest loss found in the ball.
        argmax: the coefficients where it was found.
        radius: ε, in units of the (normalised) directions.
        n_points: how many points were examined.
        coarse: read off a grid with fewer than :data:`COARSE_POINTS` points
            besides the origin within ε (:func:`from_surface`): the value is
            then mostly rounding noise and should not be ranked.
    """

    value: float
    loss0: float
    max_loss: float
    argmax: tuple[float, ...]
    radius: float
    n_points: int
    coarse: bool = False


def _check_radius(radius: float) -> float:
    return check_number("the radius", radius, positive=True)


def from_surface(
    surface: Surface, radius: float, key: str = "train_loss", *, warn: bool = True
) -> EpsilonSharpness:
    """ε-sharpness read off a computed surface: max over grid points with ``‖c‖₂ ≤ ε``.

    ``L(θ0)`` is the loss stored with the surface at the origin (or the grid
    point at the origin). Points not yet computed are ignored; NaN losses
    (diverged points) count as +∞.

    When fewer than :data:`COARSE_POINTS` computed grid points other than the
    origin lie within ε (a 5×5 grid on ``[−1, 1]²`` with ε = 0.25 has none),
    the "maximum" is the origin's own loss minus itself, i.e. rounding noise
    (``±1e-8``, of either sign): the result is marked ``coarse=True`` and,
    unless ``warn=False`` (for callers that record ``coarse`` themselves), a
    ``RuntimeWarning`` says to use a finer grid or :func:`epsilon`.
    """
    radius = _check_radius(radius)
    values = surface.metric(key)
    coords = [surface.xcoordinates] + ([surface.ycoordinates] if surface.is_2d else [])
    mesh = np.stack(np.meshgrid(*coords, indexing="ij"), axis=-1)
    inside = np.linalg.norm(mesh, axis=-1) <= radius * (1 + 1e-12)
    if surface.computed is not None:
        inside &= surface.computed
    if not inside.any():
        raise BasinscopeError(f"no computed grid point lies within radius {radius} of the origin")
    loss0 = surface.attrs.get(f"origin_{key}")
    if loss0 is None:
        at_origin = np.linalg.norm(mesh, axis=-1) == 0
        if not at_origin.any():
            raise BasinscopeError("the surface has no point at the origin to compare against")
        loss0 = float(values[at_origin][0])
    if not math.isfinite(loss0):
        raise BasinscopeError(
            f"the surface's loss at the origin is {loss0} (not finite), so its ε-sharpness "
            "is undefined; check the model (did training diverge?) and the data"
        )
    off_origin = int((inside & (np.linalg.norm(mesh, axis=-1) > 0)).sum())
    coarse = off_origin < COARSE_POINTS
    if coarse and warn:
        import warnings

        warnings.warn(
            f"only {off_origin} grid point(s) besides the origin lie within ε = {radius:g}, "
            "so the ε-sharpness read off this surface is rounding noise; use a finer grid "
            "(more steps or a smaller span) or sharpness.epsilon",
            RuntimeWarning,
            stacklevel=2,
        )
    vals = np.where(np.isnan(values), np.inf, values)
    vals = np.where(inside, vals, -np.inf)
    flat = int(np.argmax(vals))
    pos = np.unravel_index(flat, vals.shape)
    return EpsilonSharpness(
        value=float(vals[pos] - loss0),
        loss0=float(loss0),
        max_loss=float(vals[pos]),
        argmax=tuple(float(v) for v in mesh[pos]),
        radius=radius,
        n_points=int(inside.sum()),
        coarse=coarse,
    )


def epsilon(
    obj: Objective,
    directions: Tensor,
    radius: float,
    *,
    n_radii: int = 16,
    n_angles: int = 256,
) -> EpsilonSharpness:
    """ε-sharpness computed directly in the span of one or two directions.

    One direction: the segment ``c ∈ [−ε, ε]`` on ``2·n_radii + 1`` points.
    Two: the disk ``‖c‖₂ ≤ ε`` on a polar grid of ``n_radii`` circles (the last
    the boundary) × ``n_angles`` angles. On a quadratic ``½θᵀAθ`` the maximum is
    on the boundary and equals ``½ε²·λ_max(DᵀAD)`` (D the directions as columns),
    reached to ``O((π/n_angles)²)`` relative accuracy.
    """
    radius = _check_radius(radius)
    n_radii = check_int("n_radii", n_radii, minimum=1)
    n_angles = check_int("n_angles", n_angles, minimum=1)
    d = _check_directions(obj, directions)
    _check_reach(obj, "radius", radius, radius * float(d.double().abs().sum(0).max()))
    if len(d) == 1:
        coef = torch.linspace(-radius, radius, 2 * n_radii + 1, dtype=torch.float64)[:, None]
    elif len(d) == 2:
        r = torch.linspace(0, radius, n_radii + 1, dtype=torch.float64)[1:]
        a = torch.arange(n_angles, dtype=torch.float64) * (2 * torch.pi / n_angles)
        rr, aa = torch.meshgrid(r, a, indexing="ij")
        coef = torch.stack([rr * torch.cos(aa), rr * torch.sin(aa)], -1).reshape(-1, 2)
    else:
        raise BasinscopeError(f"ε-sharpness takes 1 or 2 directions, got {len(d)}")
    loss0 = finite_loss0(obj, "its ε-sharpness")
    losses, _ = obj.evaluate_affine(coef, d, split="points")
    losses = torch.where(torch.isnan(losses), torch.inf, losses)
    k = int(torch.argmax(losses))
    return EpsilonSharpness(
        value=float(losses[k]) - loss0,
        loss0=loss0,
        max_loss=float(losses[k]),
        argmax=tuple(float(v) for v in coef[k]),
        radius=radius,
        n_points=len(coef),
    )


def _check_directions(obj: Objective, directions: Any) -> Tensor:
    """``directions`` as a ``[k, n]`` tensor of finite numbers (one direction may be ``[n]``)."""
    try:
        d = torch.as_tensor(directions)
    except (TypeError, ValueError, RuntimeError):
        raise BasinscopeError(
            f"directions must be a tensor of shape (k, {obj.n}), got {type(directions).__name__}"
        ) from None
    d = d.reshape(1, -1) if d.ndim == 1 else d
    if d.ndim != 2 or d.shape[1] != obj.n:
        raise BasinscopeError(
            f"directions must have shape (k, {obj.n}) or ({obj.n},), got {tuple(d.shape)}"
        )
    if not d.is_floating_point() or not bool(torch.isfinite(d).all()):
        raise BasinscopeError(
            "every direction must hold finite floating-point numbers "
            f"(got {d.dtype}, {int((~torch.isfinite(d.double())).sum())} entries NaN or inf)"
        )
    return d
