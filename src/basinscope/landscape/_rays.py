"""Rays for the basin volume: their unit directions, and the radius where the loss along
each ray ``θ0 + r u`` first crosses a level.

Ray ``i``'s direction comes from ``(seed, i)`` alone (:func:`basinscope._rng.item_generator`).
All rays of a batch are searched together: bracket from ``r0`` (halving while
already outside, doubling while inside, up to ``r_max``), then bisect to a
relative tolerance. Each ray's numbers depend on that ray alone, so batches
split and resume freely (see :func:`basinscope.landscape.basin_volume`).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from .._checks import check_int
from .._rng import item_generator
from ..errors import BasinscopeError
from ._directions import normalize

if TYPE_CHECKING:
    from ..objective import Objective


def _ray(obj: Objective, seed: int, index: int, norm: str, precondition: Tensor | None) -> Tensor:
    """Unit ray direction ``index`` (see :func:`ray_directions`), from ``(seed, index)`` alone."""
    z = torch.randn(obj.n, generator=item_generator(seed, index), dtype=torch.float32)
    z = z.to(obj.theta0)
    if norm != "none":
        z = normalize(z, obj.theta0, obj.space, norm)
    if precondition is not None:
        z = z * precondition.to(z)
    return z / z.norm()


def ray_directions(
    obj: Objective,
    count: int,
    *,
    seed: int = 0,
    start: int = 0,
    norm: str = "none",
    precondition: Tensor | None = None,
) -> Tensor:
    """``[count, n]`` unit ray directions; direction ``i`` comes from ``(seed, i)``.

    ``norm="none"``: ``u = z/‖z‖``, uniform on the sphere. ``norm="filter"``:
    ``z`` is filter-normalised against θ0 first (as Fan et al. do), then scaled to
    unit length. ``precondition``: a positive ``[n]`` diagonal ``D``; ``u = Dz/‖Dz‖``
    (Scherlis & Belrose), which measures volume in the metric ``D⁻¹``.
    """
    count = check_int("count", count, minimum=1)
    start = check_int("start", start, minimum=0)
    seed = check_int("seed", seed, minimum=0)
    precondition = _check_precondition(obj, precondition)
    return torch.stack(
        [_ray(obj, seed, i, norm, precondition) for i in range(start, start + count)]
    )


def _check_precondition(obj: Objective, precondition: Any) -> Tensor | None:
    """``precondition`` as an ``[n]`` tensor of positive finite numbers (or ``None``).

    A zero entry leaves that coordinate out of every ray (the "volume" is then
    of a lower-dimensional slice, not of the basin), a negative one only flips
    it (``D`` is a metric, so its entries are positive): both are refused.
    """
    if precondition is None:
        return None
    try:
        d = torch.as_tensor(precondition)
    except (TypeError, ValueError, RuntimeError):
        raise BasinscopeError(
            f"precondition must be a tensor of {obj.n} positive numbers, "
            f"got {type(precondition).__name__}"
        ) from None
    if d.shape != (obj.n,):
        raise BasinscopeError(
            f"precondition must have shape ({obj.n},), one entry per coordinate, "
            f"got {tuple(d.shape)}"
        )
    if d.dtype == torch.bool or d.is_complex():
        raise BasinscopeError(f"precondition must hold real numbers, got {d.dtype}")
    d = d.to(torch.float64)
    bad = ~torch.isfinite(d) | (d <= 0)
    if bool(bad.any()):
        i = int(torch.nonzero(bad)[0])
        raise BasinscopeError(
            f"precondition must be positive and finite in every coordinate; entry {i} is "
            f"{float(d[i])!r} ({int(bad.sum())} of {obj.n} are not)"
        )
    return d


def _losses(obj: Objective, dirs: Tensor, radii: np.ndarray, which: np.ndarray) -> np.ndarray:
    """Loss at ``θ0 + r_k u_k`` for the rays ``which`` (one point each).

    In a process group the rays still searching are dealt out afresh at every step
    (an even share of these points to each rank), so rays that need more steps
    leave no rank idle, and each radius is the one a single process finds.
    """
    sel = torch.as_tensor(np.flatnonzero(which))
    coef = torch.zeros(len(sel), len(sel), dtype=torch.float64)
    coef[torch.arange(len(sel)), torch.arange(len(sel))] = torch.as_tensor(radii[which])
    loss, _ = obj.evaluate_affine(coef, dirs[sel], split="points")
    return np.nan_to_num(loss.numpy(), nan=np.inf)


def _search(
    obj: Objective, dirs: Tensor, level: float, r0: float, r_max: float, tol: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Doubling then bisection for a batch of rays.

    Returns ``[k]`` arrays, one entry per ray: radii, crossed, evaluations and
    the largest finite loss seen while bracketing (``-inf`` if none); each ray's
    entries depend on that ray alone.
    """
    k = len(dirs)
    lo = np.zeros(k)  # largest radius known inside the basin
    hi = np.full(k, np.inf)  # smallest radius known outside
    r = np.full(k, float(r0))
    evals, largest = np.zeros(k, dtype=np.int64), np.full(k, -math.inf)
    # 1. bracket: from r0, halve while outside (rarely needed) or double while inside
    active = np.ones(k, dtype=bool)
    while active.any():
        loss = _losses(obj, dirs, r, active)
        evals += active
        largest[active] = np.maximum(largest[active], np.where(np.isfinite(loss), loss, -np.inf))
        out = np.zeros(k, dtype=bool)
        out[active] = loss > level
        inside = active & ~out
        hi[out] = np.minimum(hi[out], r[out])
        lo[inside] = np.maximum(lo[inside], r[inside])
        bracketed = np.isfinite(hi) & (lo > 0)
        too_small = active & out & (lo == 0) & (r <= r0 * 2.0**-40)
        at_max = inside & (r >= r_max)
        active = active & ~bracketed & ~too_small & ~at_max
        r = np.where(active & out, r / 2, np.where(active, np.minimum(r * 2, r_max), r))
    crossed = np.isfinite(hi)
    # 2. bisect between lo (inside) and hi (outside)
    active = crossed & (hi - lo > tol * hi)
    while active.any():
        mid = 0.5 * (lo + hi)
        loss = _losses(obj, dirs, mid, active)
        evals += active
        out = np.zeros(k, dtype=bool)
        out[active] = loss > level
        hi = np.where(active & out, mid, hi)
        lo = np.where(active & ~out, mid, lo)
        active = active & (hi - lo > tol * hi)
    radii = np.where(crossed, 0.5 * (lo + hi), r_max)
    return radii, crossed, evals, largest
