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
from dataclasses import dataclass

import numpy as np
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


@dataclass(frozen=True)
class PCADirections:
    """Principal directions of a training trajectory (Li et al. 2018, §7).

    Attributes:
        directions: ``[k, n]`` orthonormal rows ``e_1 … e_k``.
        explained_variance_ratio: ``[k]`` share of the trajectory's variance
            along each, ``s_i² / Σ_j s_j²`` (singular values of the centred matrix).
        coordinates: ``[T, k]`` the snapshots' projections ``(θ_t − θ_final)·e_i``.
    """

    directions: Tensor
    explained_variance_ratio: np.ndarray
    coordinates: np.ndarray


def pca_directions(snapshots: Tensor, final: Tensor | None = None, k: int = 2) -> PCADirections:
    """The top-``k`` principal directions of ``M = [θ_t − θ_final]_t`` (Li et al. 2018).

    As Li et al.'s code (which fits scikit-learn's PCA to ``M``), the rows of
    ``M`` are centred before the SVD ``M − mean = U S Vᵀ``; the directions are the
    first ``k`` rows of ``Vᵀ``, each signed so that the snapshot farthest along
    it projects positively (reproducible plots). Computed in
    float64. The trajectory is drawn on the plane through ``θ_final`` spanned
    by them, each snapshot at ``((θ_t − θ_final)·e_1, (θ_t − θ_final)·e_2)``.

    Args:
        snapshots: ``[T, n]`` flat parameter vectors along training.
        final: ``[n]``, default the last snapshot.
        k: number of directions (``1 ≤ k < T``).
    """
    snapshots = torch.as_tensor(snapshots)
    if snapshots.ndim != 2 or len(snapshots) < 3:
        raise BasinscopeError(
            f"PCA of a trajectory needs at least 3 snapshots as a [T, n] array, "
            f"got shape {tuple(snapshots.shape)}"
        )
    if not 1 <= k < len(snapshots):
        raise BasinscopeError(f"k must be in [1, {len(snapshots) - 1}], got {k}")
    m64 = snapshots.detach().to("cpu", torch.float64)
    fin = m64[-1] if final is None else torch.as_tensor(final).detach().to("cpu", torch.float64)
    if fin.shape != m64.shape[1:]:
        raise BasinscopeError(
            f"final has shape {tuple(fin.shape)}, the snapshots have {m64.shape[1]} coordinates"
        )
    diff = m64 - fin
    centred = diff - diff.mean(dim=0)
    _, s, vt = torch.linalg.svd(centred, full_matrices=False)
    total = float((s**2).sum())
    if total == 0:
        raise BasinscopeError("the snapshots are all the same point; there is no trajectory")
    dirs = vt[:k].clone()
    coords = diff @ dirs.T
    # Sign convention: the largest-|coordinate| snapshot is on the positive side.
    for i in range(k):
        j = int(coords[:, i].abs().argmax())
        if coords[j, i] < 0:
            dirs[i], coords[:, i] = -dirs[i], -coords[:, i]
    return PCADirections(
        directions=dirs.to(snapshots.dtype if snapshots.is_floating_point() else torch.float32),
        explained_variance_ratio=(s[:k] ** 2 / total).numpy(),
        coordinates=coords.numpy(),
    )
