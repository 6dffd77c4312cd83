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

from .._checks import check_int
from ..errors import BasinscopeError
from ..objective import Objective, ParamSpace


def check_directions(
    what: str, directions: Tensor, n: int | None = None, *, single: bool = False
) -> Tensor:
    """``directions`` as a tensor of finite numbers, ``[n]`` or ``[k, n]`` (only ``[n]``
    when ``single``).

    Raises one sentence naming the first NaN/inf coordinate (a NaN direction
    would turn every point of a surface into NaN) or the wrong shape.
    """
    try:
        t = torch.as_tensor(directions)
    except (TypeError, ValueError, RuntimeError) as err:
        raise BasinscopeError(
            f"{what} of type {type(directions).__name__} is not a tensor of numbers ({err})"
        ) from err
    if t.ndim not in ((1,) if single else (1, 2)) or (n is not None and t.shape[-1] != n):
        size = "n" if n is None else str(n)
        want = f"[{size}]" if single else f"[{size}] (or [k, {size}])"
        raise BasinscopeError(f"{what} must have shape {want}, got {list(t.shape)}")
    if not (t.is_floating_point() or t.is_complex()):
        return t
    bad = ~torch.isfinite(t)
    if bool(bad.any()):
        flat = int(bad.reshape(-1).nonzero()[0, 0])
        value = t.reshape(-1)[flat].item()
        row = f"row {flat // t.shape[-1]}, " if t.ndim == 2 else ""
        raise BasinscopeError(
            f"{what} holds {value} at {row}coordinate {flat % t.shape[-1]}; directions "
            "must be finite"
        )
    return t


def check_independent(what: str, directions: Tensor) -> None:
    """Refuse a zero direction among ``directions[k, n]``, or two parallel ones.

    A zero direction gives a flat "landscape" (every point is the origin); two
    parallel directions span a line, not a plane. Non-finite directions pass (the
    caller's finite check names them).
    """
    d = directions.detach().to("cpu", torch.float64).reshape(len(directions), -1)
    if not bool(torch.isfinite(d).all()):
        return  # the finite check names those
    norms = d.norm(dim=1)
    for j, norm in enumerate(norms.tolist()):
        if not norm > 0:
            which = f"direction {j + 1} of {what}" if len(d) > 1 else f"the direction of {what}"
            raise BasinscopeError(
                f"{which} is zero, so every point would be the origin; give a nonzero direction"
            )
    for i in range(len(d)):
        for j in range(i + 1, len(d)):
            cos = float(d[i] @ d[j]) / float(norms[i] * norms[j])
            if 1 - abs(cos) <= 1e-12:
                raise BasinscopeError(
                    f"directions {i + 1} and {j + 1} of {what} are parallel (cosine {cos:.12g}), "
                    "so they span a line, not a plane; give two independent directions "
                    "(e.g. random_directions(obj, 2))"
                )


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
    if not isinstance(norm, str) or norm not in NORMALIZERS:
        raise BasinscopeError(
            f"unknown normalisation {norm!r}; use one of {', '.join(NORMALIZERS)}"
        )
    direction = check_directions("the direction", direction, space.n, single=True)
    theta = check_directions("the weights theta", theta, space.n, single=True)
    fn = NORMALIZERS[norm]
    dt, wt = space.unflatten(direction), space.unflatten(theta)
    if norm in ("filter", "layer"):
        for name in space.names:
            _check_scalable(name, dt[name], wt[name], norm)
    return torch.cat([fn(dt[name], wt[name]).reshape(-1) for name in space.names])


def _check_scalable(name: str, d: Tensor, w: Tensor, norm: str) -> None:
    """Refuse a zero filter (or tensor) of ``d`` whose weights are not zero: scaling it to
    the weights' norm would divide by zero (a zero filter of the weights stays zero)."""
    if norm == "filter" and d.ndim <= 1:
        return  # d = θ there
    if norm == "filter":
        dn, wn = d.reshape(d.shape[0], -1).norm(dim=1), w.reshape(w.shape[0], -1).norm(dim=1)
    else:
        dn, wn = d.norm().reshape(1), w.norm().reshape(1)
    bad = (dn == 0) & (wn > 0)
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        part = f"filter {i} of {name!r}" if norm == "filter" else f"{name!r}"
        raise BasinscopeError(
            f"the direction is zero on {part}, whose weights have norm {float(wn[i]):.4g}, so "
            f"{norm} normalisation would divide by zero; give a direction that is nonzero "
            "there (or norm='none')"
        )


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
    k = check_int("the number of directions k", k, minimum=1)
    if not isinstance(norm, str) or norm not in NORMALIZERS:
        raise BasinscopeError(
            f"unknown normalisation {norm!r}; use one of {', '.join(NORMALIZERS)}"
        )
    if generator is None:
        if seed is None:
            raise BasinscopeError(
                "pass a torch.Generator or a seed: basinscope never seeds globally"
            )
        generator = torch.Generator().manual_seed(check_int("seed", seed))
    elif not isinstance(generator, torch.Generator):
        raise BasinscopeError(
            f"generator must be a torch.Generator, got {type(generator).__name__}"
        )
    theta = obj.theta0
    dirs = []
    for _ in range(k):
        raw = torch.randn(obj.n, generator=generator, dtype=torch.float32)
        dirs.append(normalize(raw.to(theta), theta, obj.space, norm))
    out = torch.stack(dirs)
    return gram_schmidt(out) if orthogonalize else out


def gram_schmidt(directions: Tensor) -> Tensor:
    """Orthogonalise rows in order, keeping each row's original norm (see above).

    Args:
        directions: ``[k, n]`` finite, linearly independent rows.

    Raises:
        BasinscopeError: a NaN/inf entry, a zero row, or a row (numerically) in the
        span of the rows before it, which orthogonalising would reduce to
        rounding noise.
    """
    directions = check_directions("the directions", directions)
    if directions.ndim != 2 or not directions.is_floating_point():
        raise BasinscopeError(
            f"gram_schmidt takes [k, n] floating-point directions, got {list(directions.shape)} "
            f"of {directions.dtype}"
        )
    out = directions.clone()
    # Below this share of its norm, what is left of a row is rounding noise.
    tol = 10 * torch.finfo(out.dtype).eps ** 0.5
    for j in range(len(out)):
        norm0 = out[j].norm()
        for i in range(j):
            out[j] -= (out[j] @ out[i]) / (out[i] @ out[i]) * out[i]
        if not out[j].norm() > tol * norm0:
            raise BasinscopeError(
                f"direction {j} is zero or lies in the span of the directions before it, so "
                "it cannot be orthogonalised; give linearly independent directions"
            )
        out[j] *= _ratio(norm0, out[j].norm())
    return out


def interpolation_direction(theta_a: Tensor, theta_b: Tensor) -> Tensor:
    """``θ_b − θ_a``: with origin ``θ_a``, coefficient α gives ``(1−α)θ_a + αθ_b``."""
    theta_a = check_directions("theta_a", theta_a, single=True)
    theta_b = check_directions("theta_b", theta_b, single=True)
    if theta_a.shape != theta_b.shape:
        raise BasinscopeError(
            f"theta_a has shape {list(theta_a.shape)} but theta_b {list(theta_b.shape)}; "
            "give two points of one parameter space"
        )
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
    if snapshots.ndim == 2 and snapshots.is_floating_point():
        check_directions("the snapshots", snapshots)
    k = check_int("k", k)
    if snapshots.ndim != 2 or len(snapshots) < 3:
        raise BasinscopeError(
            f"PCA of a trajectory needs at least 3 snapshots as a [T, n] array, "
            f"got shape {tuple(snapshots.shape)}"
        )
    if not 1 <= k < len(snapshots):
        raise BasinscopeError(f"k must be in [1, {len(snapshots) - 1}], got {k}")
    m64 = snapshots.detach().to("cpu", torch.float64)
    if final is not None:
        final = check_directions("final", final, single=True)
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
