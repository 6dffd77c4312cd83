"""Sharpness of a minimum: how much the loss rises when the weights move.

Two measures (more in later modules):

* **ε-sharpness in a slice** — the seed tool's ``max_{‖c‖≤ε} L(θ0 + Σ c_j d_j) − L(θ0)``
  over the coefficients ``c`` of the surface directions (Keskar et al. 2017
  define the same quantity over a box in the full space). It is read off a
  computed :class:`~basinscope.Surface` (:func:`from_surface`, grid points with
  ``‖c‖₂ ≤ ε``) or computed directly (:func:`epsilon`, a dense polar grid of
  the disk, or of the segment for one direction).
* **Average-case sharpness** (:func:`average_case`) — the expected loss
  increase under Gaussian weight noise,
  ``E_z[L(θ0 + σ z)] − L(θ0)``, ``z ~ N(0, I)``, estimated from S samples with
  its standard error ``std(ΔL)/√S``. For ``L = ½θᵀAθ`` at ``θ0 = 0`` the
  expectation is ``½σ²·tr(A)``. Sample ``i`` is drawn from ``(seed, i)`` alone.
  With ``adaptive=True`` the noise is ``σ·|θ0| ⊙ z`` (scale-invariant; Kwon et
  al. 2021).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from ._rng import item_generator
from .errors import BasinscopeError
from .objective import Objective
from .surface import Surface


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
    """

    value: float
    loss0: float
    max_loss: float
    argmax: tuple[float, ...]
    radius: float
    n_points: int


@dataclass(frozen=True)
class NoiseSharpness:
    """Average loss increase under Gaussian weight noise.

    Attributes:
        value: mean of ``L(θ0 + σ z_i) − L(θ0)`` over samples.
        stderr: its standard error, ``std/√S`` (ddof = 1).
        sigma: noise scale σ.
        samples: S.
        loss0: ``L(θ0)``.
        increases: ``[S]`` the individual increases.
        adaptive: whether the noise was scaled by ``|θ0|``.
        seed: the seed of the noise.
    """

    value: float
    stderr: float
    sigma: float
    samples: int
    loss0: float
    increases: np.ndarray
    adaptive: bool
    seed: int


def _check_radius(radius: float) -> float:
    if not np.isfinite(radius) or radius <= 0:
        raise BasinscopeError(f"the radius must be a positive number, got {radius}")
    return float(radius)


def from_surface(surface: Surface, radius: float, key: str = "train_loss") -> EpsilonSharpness:
    """ε-sharpness read off a computed surface: max over grid points with ``‖c‖₂ ≤ ε``.

    ``L(θ0)`` is the loss stored with the surface at the origin (or the grid
    point at the origin). Points not yet computed are ignored; NaN losses
    (diverged points) count as +∞.
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
    d = torch.as_tensor(directions)
    d = d.reshape(1, -1) if d.ndim == 1 else d
    if len(d) == 1:
        coef = torch.linspace(-radius, radius, 2 * n_radii + 1, dtype=torch.float64)[:, None]
    elif len(d) == 2:
        r = torch.linspace(0, radius, n_radii + 1, dtype=torch.float64)[1:]
        a = torch.arange(n_angles, dtype=torch.float64) * (2 * torch.pi / n_angles)
        rr, aa = torch.meshgrid(r, a, indexing="ij")
        coef = torch.stack([rr * torch.cos(aa), rr * torch.sin(aa)], -1).reshape(-1, 2)
    else:
        raise BasinscopeError(f"ε-sharpness takes 1 or 2 directions, got {len(d)}")
    loss0 = obj.loss()
    losses, _ = obj.evaluate_affine(coef, d)
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


def average_case(
    obj: Objective,
    sigma: float,
    *,
    samples: int = 32,
    seed: int = 0,
    adaptive: bool = False,
    chunk: int = 16,
    progress: bool = False,
) -> NoiseSharpness:
    """Mean loss increase under Gaussian weight noise of scale σ (see module docstring).

    Args:
        obj: the Objective.
        sigma: noise standard deviation σ > 0 (relative to ``|θ0|`` if adaptive).
        samples: S ≥ 2.
        seed: noise sample ``i`` comes from ``(seed, i)`` alone.
        adaptive: scale the noise elementwise by ``|θ0|``.
        chunk: samples evaluated together (results do not depend on it).
        progress: show a progress bar.
    """
    if not np.isfinite(sigma) or sigma <= 0:
        raise BasinscopeError(f"sigma must be a positive number, got {sigma}")
    if samples < 2:
        raise BasinscopeError(
            f"samples must be at least 2 to estimate a standard error, got {samples}"
        )
    loss0 = obj.loss()
    scale = obj.theta0.abs() if adaptive else torch.ones_like(obj.theta0)
    increases = np.empty(samples)
    with tqdm(total=samples, disable=not progress, desc="noise", unit="sample") as bar:
        for start in range(0, samples, chunk):
            idx = range(start, min(start + chunk, samples))
            z = torch.stack(
                [
                    torch.randn(obj.n, generator=item_generator(seed, i), dtype=torch.float32)
                    for i in idx
                ]
            ).to(obj.theta0)
            losses, _ = obj.evaluate(obj.theta0 + sigma * scale * z)
            increases[start : start + len(idx)] = losses.numpy() - loss0
            bar.update(len(idx))
    return NoiseSharpness(
        value=float(increases.mean()),
        stderr=float(increases.std(ddof=1) / np.sqrt(samples)),
        sigma=float(sigma),
        samples=int(samples),
        loss0=loss0,
        increases=increases,
        adaptive=adaptive,
        seed=int(seed),
    )
