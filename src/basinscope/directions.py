"""Directions in parameter space: random, normalised, orthogonalised.

A direction is a flat vector ``d ∈ R^n`` in an Objective's ParamSpace. Random
directions are Gaussian, ``d ~ N(0, I)``, then normalised per parameter tensor
by a function from :data:`NORMALIZERS`:

* ``filter`` (Li et al. 2018, "Visualizing the Loss Landscape of Neural
  Nets"): each filter ``d_{i,j}`` (a slice along dim 0 of a weight tensor: a
  row of a Linear weight, an output channel of a Conv kernel) is rescaled to
  the norm of the corresponding weight filter, ``d_{i,j} ← d_{i,j}·‖θ_{i,j}‖/‖d_{i,j}‖``.
  One-dimensional tensors (biases, normalisation parameters), if they are in the
  space at all, get ``d = θ`` as in Li et al.'s code; use
  ``ParamSpace(skip_bias_norm=True)`` to keep them fixed instead.
* ``layer``: each parameter tensor rescaled to the norm of its weights,
  ``d_i ← d_i·‖θ_i‖/‖d_i‖``.
* ``none``: the raw Gaussian direction.

Filter normalisation removes the scale ambiguity of ReLU networks so that
surfaces of different networks can be compared side by side.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .errors import BasinscopeError
from .objective import Objective, ParamSpace


def _ratio(target: Tensor, current: Tensor) -> Tensor:
    """``target / current``, and 0 where ``current`` is 0 (an all-zero filter stays zero).

    Li et al. add 1e-10 to the denominator instead, which leaves the norms off by
    ~1e-11 relative; dividing exactly makes each norm equal to the weights' norm.
    """
    safe = torch.where(current > 0, current, torch.ones_like(current))
    return torch.where(current > 0, target / safe, torch.zeros_like(current))


def _filter_normalize(d: Tensor, w: Tensor) -> Tensor:
    if d.ndim <= 1:
        return w.clone()
    d2, w2 = d.reshape(d.shape[0], -1), w.reshape(w.shape[0], -1)
    scale = _ratio(w2.norm(dim=1, keepdim=True), d2.norm(dim=1, keepdim=True))
    return (d2 * scale).reshape(d.shape)


def _layer_normalize(d: Tensor, w: Tensor) -> Tensor:
    return d * _ratio(w.norm(), d.norm())


def _no_normalize(d: Tensor, w: Tensor) -> Tensor:
    return d


NORMALIZERS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "filter": _filter_normalize,
    "layer": _layer_normalize,
    "none": _no_normalize,
}


def normalize(direction: Tensor, theta: Tensor, space: ParamSpace, norm: str = "filter") -> Tensor:
    """Normalise a flat direction against the weights ``theta``, tensor by tensor.

    Args:
        direction: ``[n]`` raw direction.
        theta: ``[n]`` the weights it is scaled against.
        space: the ParamSpace that lays both out.
        norm: a key of :data:`NORMALIZERS` (``filter``, ``layer``, ``none``).

    Returns:
        A new ``[n]`` tensor; ``direction`` is not modified.
    """
    if norm not in NORMALIZERS:
        raise BasinscopeError(
            f"unknown normalisation {norm!r}; use one of {', '.join(NORMALIZERS)}"
        )
    fn = NORMALIZERS[norm]
    dt, wt = space.unflatten(direction), space.unflatten(theta)
    return torch.cat([fn(dt[name], wt[name]).reshape(-1) for name in space.names])


def random_directions(
    obj: Objective,
    k: int = 2,
    *,
    norm: str = "filter",
    generator: torch.Generator | None = None,
    seed: int | None = None,
    orthogonalize: bool = False,
) -> Tensor:
    """``k`` normalised Gaussian directions around the Objective's weights ``θ0``.

    Gaussian entries are drawn in float32 on the CPU from ``generator`` (or a
    generator seeded with ``seed``; one of the two is required), so the same
    seed gives the same directions on every device and in every precision.

    Args:
        obj: the Objective (gives the ParamSpace and ``θ0``).
        k: number of directions.
        norm: ``filter`` (Li et al.), ``layer`` or ``none``.
        generator, seed: the source of randomness.
        orthogonalize: Gram–Schmidt each direction against the previous ones,
            ``d_j ← d_j − Σ_{i<j} (d_j·d_i / d_i·d_i) d_i``, then rescale it back to
            its norm before projection (per-filter norms are then no longer
            exact; random high-dimensional directions are nearly orthogonal
            anyway, which is why Li et al. skip this step).

    Returns:
        ``[k, n]`` in the Objective's dtype and device.
    """
    if k < 1:
        raise BasinscopeError(f"the number of directions must be at least 1, got {k}")
    if generator is None:
        if seed is None:
            raise BasinscopeError(
                "pass a torch.Generator or a seed: basinscope never seeds globally"
            )
        generator = torch.Generator().manual_seed(int(seed))
    theta = obj.theta0
    dirs = []
    for _ in range(k):
        raw = torch.randn(obj.n, generator=generator, dtype=torch.float32)
        dirs.append(normalize(raw.to(theta), theta, obj.space, norm))
    out = torch.stack(dirs)
    return gram_schmidt(out) if orthogonalize else out


def gram_schmidt(directions: Tensor) -> Tensor:
    """Orthogonalise rows in order, keeping each row's original norm (see above)."""
    out = directions.clone()
    for j in range(1, len(out)):
        norm0 = out[j].norm()
        for i in range(j):
            out[j] -= (out[j] @ out[i]) / (out[i] @ out[i]) * out[i]
        out[j] *= _ratio(norm0, out[j].norm())
    return out


def interpolation_direction(theta_a: Tensor, theta_b: Tensor) -> Tensor:
    """``θ_b − θ_a``: with origin ``θ_a``, coefficient α gives ``(1−α)θ_a + αθ_b``."""
    return theta_b - theta_a
