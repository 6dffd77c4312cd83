"""Paths between minima: the line between two models, the plane through three, and the
plane of a training trajectory's principal directions.

Each is a grid computed by :func:`basinscope.landscape._grid._compute`, with the
models themselves as directions and an affine map from grid point to
coefficients, so the models' own points evaluate them exactly.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from ._grid import _compute, _grids
from ._surface import Surface

if TYPE_CHECKING:
    from ..objective import Objective


def _same(a: Tensor, b: Tensor) -> bool:
    return a.shape == b.shape and torch.equal(
        a.detach().cpu().to(torch.float64), b.detach().cpu().to(torch.float64)
    )


def _flat(
    obj: Objective, source: Any, what: str, *, fixed: bool = True, buffers: bool = False
) -> Tensor:
    """A model, a name->tensor dict or a flat vector as a point of ``obj.space``.

    With ``fixed``, a model (or dict) that differs from the Objective's model in
    a parameter *outside* the space cannot be reached by moving inside it:
    refused. With ``buffers``, one whose buffers (BatchNorm running statistics)
    differ is refused too: evaluated with the Objective's buffers, it would not
    give its own loss.
    """
    from torch import nn

    from ..errors import BasinscopeError

    wrap = getattr(obj.model, "wrap_other", None)
    if isinstance(source, nn.Module) and wrap is not None:
        source = wrap(source)  # a bare policy for a return objective (basinscope.policy)
    if isinstance(source, nn.Module | dict):
        params = dict(source.named_parameters()) if isinstance(source, nn.Module) else source
        own = dict(obj.model.named_parameters())
        for name, p in own.items() if fixed else ():
            if name in obj.space.names or name not in params:
                continue
            if not _same(p, params[name]):
                raise BasinscopeError(
                    f"{what} differs from the objective's model in {name!r}, which the "
                    "objective keeps fixed; build the Objective with all parameters in its space"
                )
        theirs = dict(source.named_buffers()) if isinstance(source, nn.Module) else source
        for name, b in obj.model.named_buffers() if buffers else ():
            if name in theirs and b.is_floating_point() and not _same(b, theirs[name]):
                raise BasinscopeError(
                    f"{what} has other buffers than the objective's model ({name!r}, e.g. "
                    "BatchNorm statistics); pass update_bn=data to recompute them at every "
                    "point, or it would not be evaluated as itself"
                )
        vec = obj.space.flatten(params)
    else:
        vec = torch.as_tensor(source).reshape(-1)
    if vec.shape != (obj.n,):
        raise BasinscopeError(
            f"{what} has {vec.numel()} coordinates, the objective's space has {obj.n}"
        )
    return vec.detach().to(device=obj.device, dtype=obj.dtype)


def interpolate(
    obj: Objective,
    theta_b: Any,
    *,
    theta_a: Any = None,
    span: tuple[float, float] = (-0.5, 1.5),
    steps: int = 41,
    test: Any = None,
    path: str | Path | None = None,
    chunk: int = 64,
    progress: bool = False,
    update_bn: Any = None,
    labels: tuple[str, str] = ("θ_a", "θ_b"),
    attrs: dict[str, Any] | None = None,
) -> Surface:
    """Loss and accuracy on the line ``θ(α) = (1−α)·θ_a + α·θ_b`` (Goodfellow et al. 2015;
    Keskar et al. 2017, Fig. 3, between a small-batch and a large-batch minimum).

    The two models are the path's directions and ``(1−α, α)`` its coefficients,
    so ``α = 0`` and ``α = 1`` evaluate exactly ``θ_a`` and ``θ_b`` (no rounding
    of ``θ_a + (θ_b − θ_a)``), through the plain evaluation path (no first-layer
    shortcut; a path has few points): the end points reproduce the two models'
    losses bit for bit.

    Args:
        obj: Objective on the training data; its model gives everything outside
            the space (buffers, fixed parameters).
        theta_b: the other end: a model, a state dict or a flat ``[n]`` vector.
        theta_a: the first end (default ``obj.theta0``).
        span, steps: ``α = linspace(*span, steps)``; ``(-0.5, 1.5)`` shows both
            basins and the barrier between them.
        test, path, chunk, progress: as in :func:`line`.
        update_bn: data whose batches recompute BatchNorm running statistics at
            every point (see :class:`~basinscope.objective.BatchNormEngine`); ``None`` keeps ``θ_a``'s.
        labels: names of the two models, stored for the plots.
    """
    coords = _grids([(span, steps)], "an interpolation", 2)
    check = update_bn is None
    a = obj.theta0 if theta_a is None else _flat(obj, theta_a, "theta_a", buffers=check)
    b = _flat(obj, theta_b, "theta_b", buffers=check)
    meta = {
        "kind": "interpolation",
        "marks": [[labels[0], [0.0]], [labels[1], [1.0]]],
        "xlabel": f"α, weights (1−α)·{labels[0]} + α·{labels[1]}",
    }
    return _compute(
        obj,
        torch.stack([a, b]),
        coords,
        test,
        path,
        chunk,
        progress,
        {**meta, **(attrs or {})},
        origin=torch.zeros_like(a),
        coef_map=(np.array([1.0, 0.0]), np.array([[-1.0, 1.0]])),
        update_bn=update_bn,
        shortcut=False,
    )


def three_model_plane(
    obj: Objective,
    models: tuple[Any, Any, Any],
    *,
    labels: tuple[str, str, str] = ("θ1", "θ2", "θ3"),
    margin: float = 0.25,
    steps: int = 31,
    test: Any = None,
    path: str | Path | None = None,
    chunk: int = 64,
    progress: bool = False,
    update_bn: Any = None,
    attrs: dict[str, Any] | None = None,
) -> Surface:
    """The plane through three models (Garipov et al. 2018; Fan, Sandlund & Ko,
    "Sharp Minima Can Generalize", Fig. 1: minima from 100 %, 10 % and 1 % of the data).

    With ``u = θ2 − θ1``, ``v = θ3 − θ1``, the plane's orthonormal axes are
    ``e1 = u/‖u‖`` and ``e2 = (v − (v·e1)e1)/‖…‖``, so its coordinates are
    Euclidean distances in parameter space: ``θ1`` sits at ``(0, 0)``, ``θ2`` at
    ``(‖u‖, 0)``, ``θ3`` at ``(v·e1, ‖v − (v·e1)e1‖)``. A point ``(x, y)`` is
    evaluated as ``(1−s−t)θ1 + sθ2 + tθ3`` with ``(s, t)`` its affine
    coordinates, so at the three marks the weights are ``(1,0,0)``, ``(0,1,0)``,
    ``(0,0,1)`` up to rounding. The grid covers the triangle plus ``margin``
    times its extent on every side. ``attrs["marks"]`` holds ``[label, [x, y]]``
    for the three models in order, ``attrs["mark_losses"]`` ``[label, loss]`` with
    their own train losses (lists, so the order survives the file's sorted JSON).
    """
    from .._checks import check_number
    from ..errors import BasinscopeError

    if len(models) != 3:
        raise BasinscopeError(f"three_model_plane needs exactly 3 models, got {len(models)}")
    margin = check_number("margin", margin, nonnegative=True)
    _grids([((0.0, 1.0), steps), ((0.0, 1.0), steps)], "a plane", 3)  # steps and memory, first
    thetas = [
        _flat(obj, m, f"model {i + 1}", buffers=update_bn is None) for i, m in enumerate(models)
    ]
    u64 = (thetas[1] - thetas[0]).to(torch.float64)
    v64 = (thetas[2] - thetas[0]).to(torch.float64)
    x2 = float(u64.norm())
    if x2 == 0:
        raise BasinscopeError("models 1 and 2 are identical; a plane needs three distinct models")
    x3 = float(v64 @ u64) / x2
    y3 = float((v64 - x3 / x2 * u64).norm())
    if y3 <= 1e-9 * max(x2, float(v64.norm())):
        raise BasinscopeError("the three models lie on one line; they do not span a plane")
    xs, ys = np.array([0.0, x2, x3]), np.array([0.0, 0.0, y3])
    w, h = xs.max() - xs.min(), ys.max() - ys.min()
    xspan = (xs.min() - margin * w, xs.max() + margin * w)
    yspan = (ys.min() - margin * h, ys.max() + margin * h)
    coords = _grids([(xspan, steps), (yspan, steps)], "a plane", 3)
    # (x, y) -> (s, t) -> weights (1 - s - t, s, t) on (θ1, θ2, θ3).
    ds_dx, dt_dy, ds_dy = 1.0 / x2, 1.0 / y3, -x3 / (x2 * y3)
    matrix = np.array([[-ds_dx, ds_dx, 0.0], [-(ds_dy + dt_dy), ds_dy, dt_dy]])
    loss_marks, _ = obj.evaluate(torch.stack(thetas))
    meta = {
        "kind": "three_model_plane",
        "marks": [[lab, [float(x), float(y)]] for lab, x, y in zip(labels, xs, ys, strict=True)],
        "mark_losses": [[lab, float(v)] for lab, v in zip(labels, loss_marks, strict=True)],
        "xlabel": f"distance along {labels[1]} − {labels[0]}",
        "ylabel": f"distance toward {labels[2]}",
    }
    return _compute(
        obj,
        torch.stack(thetas),
        coords,
        test,
        path,
        chunk,
        progress,
        {**meta, **(attrs or {})},
        origin=torch.zeros_like(thetas[0]),
        coef_map=(np.array([1.0, 0.0, 0.0]), matrix),
        update_bn=update_bn,
        shortcut=False,
    )


def _check_model(obj: Objective, trajectory: Any) -> None:
    """Refuse an Objective whose model is not the one ``trajectory`` recorded (a name one
    of them lacks, another shape), blaming the model: the trajectory is what it is."""
    from ..errors import BasinscopeError

    mismatch = getattr(trajectory, "mismatch", None)  # a Trajectory of basinscope.training
    differs = None if mismatch is None else mismatch(obj.model, obj.space.names)
    if differs is not None:
        raise BasinscopeError(
            f"the model given {differs}; measure the model the trajectory was recorded from"
        )


def trajectory_plane(
    obj: Objective,
    snapshots: Any,
    *,
    margin: float = 0.2,
    steps: int = 31,
    test: Any = None,
    path: str | Path | None = None,
    chunk: int = 64,
    progress: bool = False,
    update_bn: Any = None,
    attrs: dict[str, Any] | None = None,
) -> Surface:
    """The loss on the plane of the training trajectory's two principal directions
    (Li et al. 2018, §7), through ``obj.theta0`` (the final weights).

    ``snapshots``: a training ``Trajectory`` (``load_trajectory(run)``
    or ``TrainResult.trajectory``), a ``[T, n]`` tensor in ``obj.space``, or a list
    of models / state dicts; the last one should be ``obj``'s model. A ``Trajectory``
    whose parameters are not ``obj``'s model's (a name either lacks, another shape) is
    refused, naming one.
    Directions come from :func:`basinscope.landscape.pca_directions`; the grid
    covers the projected trajectory plus ``margin`` times its extent. The
    trajectory's coordinates and the explained variance are stored in
    ``attrs["trajectory"]`` and ``attrs["explained_variance_ratio"]``.
    """
    from .._checks import check_number
    from ._directions import pca_directions

    margin = check_number("margin", margin, nonnegative=True)
    _grids([((0.0, 1.0), steps), ((0.0, 1.0), steps)], "a trajectory plane")  # before the PCA
    epochs = None
    if hasattr(snapshots, "unflatten") and hasattr(snapshots, "epochs"):  # a training Trajectory
        _check_model(obj, snapshots)
        epochs = [int(e) for e in snapshots.epochs]
        snapshots = [snapshots.unflatten(i) for i in range(len(epochs))]
    rows = (
        snapshots
        if isinstance(snapshots, Tensor)
        # Snapshots only give the directions: their fixed parameters may differ.
        else [_flat(obj, s, f"snapshot {i}", fixed=False) for i, s in enumerate(snapshots)]
    )
    traj = torch.stack(list(rows)) if not isinstance(rows, Tensor) else rows
    pca = pca_directions(traj.to(obj.dtype), obj.theta0)
    xy = pca.coordinates
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    ext = np.maximum(hi - lo, 1e-12)
    coords = _grids(
        [((lo[k] - margin * ext[k], hi[k] + margin * ext[k]), steps) for k in range(2)],
        "a trajectory plane",
    )
    meta = {
        "kind": "trajectory_plane",
        "trajectory": xy.tolist(),
        "trajectory_epochs": epochs,
        "explained_variance_ratio": pca.explained_variance_ratio.tolist(),
        "xlabel": f"PC1 ({100 * pca.explained_variance_ratio[0]:.1f} %)",
        "ylabel": f"PC2 ({100 * pca.explained_variance_ratio[1]:.1f} %)",
    }
    return _compute(
        obj,
        pca.directions.to(obj.dtype),
        coords,
        test,
        path,
        chunk,
        progress,
        {**meta, **(attrs or {})},
        update_bn=update_bn,
    )
