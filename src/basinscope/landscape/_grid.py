"""Lines and planes through a minimum, computed resumably into a surface file.

:func:`line` and :func:`plane` sample ``L(θ0 + α d1 + β d2)`` on a grid of
coefficients (Li et al. 2018). Every grid computation, the paths between minima
included, goes through :func:`_compute`: the grid and its memory are checked
before any work, the file is written as the computation goes under an exclusive
lock, and an existing file is resumed only when its key (everything its numbers
depend on) matches.
"""

from __future__ import annotations

import functools
import itertools
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from .. import _dist
from ..objective import BatchNormEngine, batchnorm_layers
from ._directions import check_independent
from ._surface import Surface, _write_attrs, _write_chunk

if TYPE_CHECKING:
    from ..objective import Objective


def _grids(axes: list[tuple[Any, Any]], what: str, n_coef: int | None = None) -> list[np.ndarray]:
    """``linspace(*span, steps)`` for each ``(span, steps)`` axis, after the checks.

    Each span must be finite with max > min and each ``steps`` an integer ≥ 2;
    the whole grid must fit in memory (:func:`check_grid_memory`) before any array
    of it is allocated.
    """
    from .._checks import check_int, check_span
    from ..errors import BasinscopeError

    checked = []
    for span, steps in axes:
        steps = check_int(f"the number of steps of {what}", steps)
        if steps < 2:
            raise BasinscopeError(f"{what} needs at least 2 steps, got {steps}")
        checked.append((check_span(f"the span of {what}", span), steps))
    shape = tuple(steps for _, steps in checked)
    check_grid_memory(shape, len(shape) if n_coef is None else n_coef, what)
    return [np.linspace(lo, hi, steps) for (lo, hi), steps in checked]


def _available_memory() -> int | None:
    """Bytes of memory available to a new allocation (``MemAvailable``), if known."""
    try:
        with open("/proc/meminfo") as f:
            for row in f:
                if row.startswith("MemAvailable:"):
                    return int(row.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        import os

        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):
        return None


def _bytes(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:,.0f} {unit}" if unit == "bytes" else f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n} bytes"  # pragma: no cover


def check_grid_memory(shape: tuple[int, ...], n_coef: int, what: str) -> None:
    """Refuse a grid whose arrays would not fit in the available memory.

    A grid of ``P = Π shape`` points holds the four float64 metric arrays, the
    ``computed`` mask, the ``[P, dim]`` mesh (built from ``dim`` coordinate
    arrays, so about three copies at once) and the ``[P, n_coef]`` coefficients:
    ``P · (8 · (4 + 3·dim + n_coef) + 1)`` bytes, a lower bound on what it needs.
    """
    from ..errors import BasinscopeError

    points = math.prod(shape)
    need = points * (8 * (4 + 3 * len(shape) + n_coef) + 1)
    available = _available_memory()
    if available is not None and need > available:
        grid = f"{' × '.join(str(n) for n in shape)} = " if len(shape) > 1 else ""
        raise BasinscopeError(
            f"{what} of {grid}{points:,} points needs at least {_bytes(need)} ({need:,} bytes) "
            f"of memory, more than the {_bytes(available)} available; use fewer steps"
        )


def line(
    obj: Objective,
    direction: Tensor,
    *,
    span: tuple[float, float] = (-1.0, 1.0),
    steps: int = 51,
    test: Any = None,
    path: str | Path | None = None,
    chunk: int = 64,
    progress: bool = False,
    attrs: dict[str, Any] | None = None,
    update_bn: Any = None,
) -> Surface:
    """The 1-D slice ``t ↦ L(θ0 + t·d)`` on ``steps`` points of ``span``.

    Args:
        obj: the Objective (training data).
        direction: ``[n]`` or ``[1, n]``.
        span, steps: the coefficients ``linspace(span[0], span[1], steps)``.
        test: test data (anything :class:`~basinscope.Objective` accepts) or a
            test Objective; evaluated with the same model and loss.
        path: HDF5 file to write as the computation goes; an existing file for
            the same grid and direction is resumed, computing only missing points.
        chunk: points per write (results never depend on it).
        progress: show a progress bar.
        attrs: extra metadata stored with the surface.
        update_bn: data whose batches recompute BatchNorm running statistics at
            every point (see :class:`~basinscope.objective.BatchNormEngine` for the cost); ``None``
            keeps θ0's statistics.
    """
    d = torch.as_tensor(direction).reshape(1, -1)
    check_independent("a line", d)
    coords = _grids([(span, steps)], "a line")
    return _compute(obj, d, coords, test, path, chunk, progress, attrs, update_bn=update_bn)


def plane(
    obj: Objective,
    d1: Tensor,
    d2: Tensor,
    *,
    span: tuple[float, float] = (-1.0, 1.0),
    steps: int = 31,
    yspan: tuple[float, float] | None = None,
    ysteps: int | None = None,
    test: Any = None,
    path: str | Path | None = None,
    chunk: int = 64,
    progress: bool = False,
    attrs: dict[str, Any] | None = None,
    update_bn: Any = None,
) -> Surface:
    """The 2-D slice ``(α, β) ↦ L(θ0 + α d1 + β d2)`` (Li et al. 2018).

    The grid is ``linspace(*span, steps) × linspace(*yspan, ysteps)`` (y defaults
    to x); arrays are indexed ``[i, j]`` at ``(x[i], y[j])``. Other arguments as
    in :func:`line`.
    """
    a, b = (torch.as_tensor(v).reshape(-1) for v in (d1, d2))
    if a.shape != b.shape:
        from ..errors import BasinscopeError

        raise BasinscopeError(
            f"the plane's directions have {a.numel()} and {b.numel()} coordinates; give two "
            f"directions of the Objective's {obj.n}"
        )
    d = torch.stack([a, b])
    check_independent("a plane", d)
    coords = _grids(
        [(span, steps), (span if yspan is None else yspan, steps if ysteps is None else ysteps)],
        "a plane",
    )
    return _compute(obj, d, coords, test, path, chunk, progress, attrs, update_bn=update_bn)


def _compute(
    obj: Objective,
    dirs: Tensor,
    coords: list[np.ndarray],
    test: Any,
    path: str | Path | None,
    chunk: int,
    progress: bool,
    attrs: dict[str, Any] | None,
    *,
    origin: Tensor | None = None,
    coef_map: tuple[np.ndarray, np.ndarray] | None = None,
    update_bn: Any = None,
    shortcut: bool = True,
) -> Surface:
    """Evaluate ``origin + Σ_j c_j dirs[j]`` at every grid point, resumably.

    ``c = grid point`` by default; with ``coef_map = (offset, matrix)`` the
    coefficients are the affine image ``offset + point @ matrix`` (how a path
    through several models is written with the models themselves as directions).

    With ``path``, the file is written as the computation goes, under an
    exclusive lock (a second process writing the same file is refused), and an
    existing file is resumed only when its key (:func:`_surface_key`: weights,
    data, loss, directions, grid, every setting, the environment) matches.
    """
    from .._checks import check_int, check_output_file
    from .._keys import environment
    from .._lock import output_lock
    from ..errors import BasinscopeError
    from ..objective import Objective

    chunk = check_int("chunk", chunk, minimum=1)
    dirs = torch.as_tensor(dirs)
    if dirs.ndim != 2 or dirs.shape[1] != obj.n:
        raise BasinscopeError(
            f"directions have {dirs.shape[-1]} coordinates, the space has {obj.n}"
        )
    if not torch.isfinite(dirs).all():
        raise BasinscopeError(
            "the directions contain NaN or infinite values; give finite directions"
        )
    if origin is not None and not torch.isfinite(origin).all():
        raise BasinscopeError("the origin contains NaN or infinite values")
    if coef_map is not None:
        offset, matrix = (np.asarray(a, dtype=np.float64) for a in coef_map)
        if not (np.isfinite(offset).all() and np.isfinite(matrix).all()):
            raise BasinscopeError("the coefficient map contains NaN or infinite values")
    _check_reach(obj, dirs, coords, None if coef_map is None else (offset, matrix), origin)
    if path is not None:
        path = check_output_file(path, "the surface file")
    test_obj = None
    if test is not None:
        test_obj = test if isinstance(test, Objective) else obj.with_data(test)
    theta = obj.theta0 if origin is None else origin.to(device=obj.device, dtype=obj.dtype)
    bn = None if update_bn is None else _batchnorm_engine(obj, update_bn)
    meta = {"dim": len(coords), "n_params": obj.n, **(attrs or {})}
    if coef_map is not None:
        meta["coefficient_map"] = {"offset": offset.tolist(), "matrix": matrix.tolist()}
    if update_bn is not None:
        meta["update_bn"] = True
    if origin is not None:
        meta["origin"] = "given"
    key = _surface_key(obj, test_obj, dirs, coords, origin, coef_map, bn, shortcut)
    meta |= {"key": key, "environment": environment(obj.device, obj.dtype)}
    args = (obj, test_obj, dirs, coords, theta, origin, coef_map, bn, shortcut)
    if path is None:
        return _evaluate_grid(*args, None, chunk, progress, meta)
    # In a process group rank 0 alone locks, reads and writes the file (_dist).
    with _dist.on_writer(obj.dist, lambda: output_lock(_lock_target(path), "the surface file")):
        return _evaluate_grid(*args, path, chunk, progress, meta)


def _check_reach(
    obj: Objective,
    dirs: Tensor,
    coords: list[np.ndarray],
    coef_map: tuple[np.ndarray, np.ndarray] | None,
    origin: Tensor | None,
) -> None:
    """Refuse a grid whose points ``origin + Σ_j c_j d_j`` would not be finite in the
    Objective's dtype: a coefficient, or the bound ``max|θ| + Σ_j max|c_j| · max|d_j|``
    at the grid's extreme coefficients (the corners of the box of spans, through the
    coefficient map if any), beyond the dtype's largest number."""
    from ..errors import BasinscopeError

    spans = " × ".join(f"[{c[0]:g}, {c[-1]:g}]" for c in coords)
    corners = np.array(list(itertools.product(*[(c[0], c[-1]) for c in coords])))
    with np.errstate(over="ignore", invalid="ignore"):
        if coef_map is not None:
            corners = coef_map[0] + corners @ coef_map[1]
        cmax = np.abs(corners).max(axis=0)
        dmax = dirs.detach().abs().amax(dim=1).to("cpu", torch.float64).numpy()
        theta = obj.theta0 if origin is None else origin
        reach = float(theta.detach().abs().max()) + float((cmax * dmax).sum())
    big = float(torch.finfo(obj.dtype).max)
    finite = all(bool(np.isfinite(c).all()) for c in coords)
    if not (finite and float(cmax.max()) <= big and reach <= big):
        raise BasinscopeError(
            f"the span {spans} takes the grid's points θ0 + c·d to {reach:.3g} in size, "
            f"beyond {str(obj.dtype)[6:]}'s range ({big:.3g}), where the losses would not "
            "be finite; use a smaller span"
        )


def _lock_target(path: Path) -> Path:
    """What :func:`output_lock` is given for a surface file: the file itself (its lock
    is ``<file>.lock``); a name without a suffix would be taken for a directory, so
    it is locked as ``<name>.h5``."""
    return path if path.suffix else path.with_name(path.name + ".h5")


def _surface_key(
    obj: Objective,
    test_obj: Objective | None,
    dirs: Tensor,
    coords: list[np.ndarray],
    origin: Tensor | None,
    coef_map: tuple[np.ndarray, np.ndarray] | None,
    bn: BatchNormEngine | None,
    shortcut: bool,
) -> dict[str, Any]:
    """Everything a surface's numbers depend on, as a flat key (see :mod:`basinscope._keys`).

    The training Objective's :meth:`~basinscope.Objective.fingerprint` (weights,
    space, data, loss, batch size, environment); the test data and the rest of the
    test Objective; digests of the directions (in the dtype they are used in), the
    grid, the coefficient map and a given origin; the ``update_bn`` data and batch
    size (the batches decide the re-estimated variance); and the shortcut flag.
    """
    from .._keys import tensor_digest, value_digest

    key: dict[str, Any] = dict(obj.fingerprint())
    test_fp = None if test_obj is None else test_obj.fingerprint()
    key["test_data"] = None if test_fp is None else test_fp["data"]
    key["test_objective"] = (
        None
        if test_fp is None
        else value_digest([test_fp[k] for k in ("weights", "space", "loss", "device", "dtype")])
    )
    key["directions"] = tensor_digest(dirs.detach().to("cpu", obj.dtype))
    key["grid"] = tensor_digest(
        *(torch.from_numpy(np.ascontiguousarray(c, dtype=np.float64)) for c in coords)
    )
    key["coefficient_map"] = (
        None
        if coef_map is None
        else value_digest([np.asarray(a, dtype=np.float64).tolist() for a in coef_map])
    )
    key["origin"] = None if origin is None else tensor_digest(origin.detach().to("cpu", obj.dtype))
    key["update_bn"] = None if bn is None else tensor_digest(bn.data.x, bn.data.y)
    key["update_bn_batch_size"] = None if bn is None else bn.data.batch_size
    key["shortcut"] = bool(shortcut)
    return key


def _evaluate_grid(
    obj: Objective,
    test_obj: Objective | None,
    dirs: Tensor,
    coords: list[np.ndarray],
    theta: Tensor,
    origin: Tensor | None,
    coef_map: tuple[np.ndarray, np.ndarray] | None,
    bn: BatchNormEngine | None,
    shortcut: bool,
    path: Path | None,
    chunk: int,
    progress: bool,
    meta: dict[str, Any],
) -> Surface:
    """The body of :func:`_compute`: resume or start the surface, evaluate what is missing."""
    from tqdm.auto import tqdm

    shape = tuple(len(c) for c in coords)
    mesh = np.stack(np.meshgrid(*coords, indexing="ij"), axis=-1).reshape(-1, len(coords))
    if coef_map is not None:
        offset, matrix = (np.asarray(a, dtype=np.float64) for a in coef_map)
        mesh = offset + mesh @ matrix
    dirs_np = dirs.detach().to("cpu", torch.float32).numpy()

    def begin() -> Surface:  # on rank 0 alone in a process group, shared with the others
        surface = _resume(path, shape, test_obj is not None, meta) if path else None
        if surface is not None:
            return surface

        empty = lambda: np.full(shape, np.nan)  # noqa: E731
        surface = Surface(
            xcoordinates=coords[0],
            ycoordinates=coords[1] if len(coords) > 1 else None,
            train_loss=empty(),
            train_acc=empty(),
            test_loss=empty() if test_obj else None,
            test_acc=empty() if test_obj else None,
            computed=np.zeros(shape, dtype=bool),
            directions=dirs_np,
            attrs=meta,
        )
        if "origin_train_loss" not in surface.attrs and origin is None and bn is None:
            loss0, acc0 = obj.evaluate(obj.theta0)
            surface.attrs.update(origin_train_loss=float(loss0[0]), origin_train_acc=float(acc0[0]))
            if test_obj is not None:
                tl, ta = test_obj.evaluate(obj.theta0)
                surface.attrs.update(origin_test_loss=float(tl[0]), origin_test_acc=float(ta[0]))
        if path:
            surface.save(path)
        return surface

    surface = _dist.agree(obj.dist, begin)
    d = _dist.active(obj.dist)
    done = surface.computed.reshape(-1)
    # Chunks are aligned to global indices so a resumed run evaluates exactly
    # the same batches as an uninterrupted one.
    todo = [s for s in range(0, len(mesh), chunk) if not done[s : s + chunk].all()]
    shown = progress and _dist.is_writer(d)
    bar = tqdm(total=int((~done).sum()), disable=not shown, desc="surface", unit="pt")
    directions = dirs.to(device=obj.device, dtype=obj.dtype)
    with bar:
        for start in todo:
            idx = np.arange(start, min(start + chunk, len(mesh)))
            idx = idx[~done[idx]]
            coef = torch.from_numpy(mesh[idx])
            updates = _evaluate_chunk(obj, test_obj, bn, coef, directions, theta, shortcut)
            for key, value in updates.items():
                getattr(surface, key).reshape(-1)[idx] = value.numpy()
            done[idx] = True
            if path:  # rank 0 writes; a failure there stops every rank
                write = functools.partial(_write_chunk, path, surface, idx, list(updates))
                _dist.agree(d, write)
            bar.update(len(idx))
    return surface


def _evaluate_chunk(
    obj: Objective,
    test_obj: Objective | None,
    bn: BatchNormEngine | None,
    coef: Tensor,
    directions: Tensor,
    theta: Tensor,
    shortcut: bool,
) -> dict[str, Tensor]:
    """``{"train_loss": [K], "train_acc": [K], ...}`` at ``theta + coef @ directions``
    (the test metrics too when there is a test Objective); where a loss is NaN or
    infinite (outputs that overflowed at finite weights) the loss is stored as it is
    and the accuracy as NaN."""
    updates = {}
    if bn is not None:
        objs = {"train": obj} | ({"test": test_obj} if test_obj is not None else {})
        each = [o.batches for o in objs.values()]
        d = _dist.active(obj.dist)
        rows = slice(None) if d is None else _dist.share(len(coef), d.rank, d.size)
        parts = _dist.gather(
            d,
            lambda: (
                bn.evaluate_each(each, coef[rows], directions, theta) if len(coef[rows]) else None
            ),
        )  # each rank re-estimates the statistics of its share of the points
        for i, key in enumerate(objs):
            done = [p[i] for p in parts if p is not None]
            updates[f"{key}_loss"] = torch.cat([r[0] for r in done])
            updates[f"{key}_acc"] = torch.cat([r[1] for r in done])
    else:
        updates["train_loss"], updates["train_acc"] = obj.evaluate_affine(
            coef, directions, origin=theta, shortcut=shortcut, split="points"
        )
        if test_obj is not None:
            updates["test_loss"], updates["test_acc"] = test_obj.evaluate_affine(
                coef, directions, origin=theta, shortcut=shortcut, split="points"
            )
    for key in [k for k in updates if k.endswith("_loss")]:  # overflowed outputs: their
        acc = key[: -len("loss")] + "acc"  # argmax is no accuracy, stored as NaN
        updates[acc] = torch.where(
            torch.isfinite(updates[key]), updates[acc], torch.full_like(updates[acc], math.nan)
        )
    return updates


def _resume(
    path: Path, shape: tuple[int, ...], has_test: bool, meta: dict[str, Any]
) -> Surface | None:
    """The surface already in ``path`` if it is the same computation, else a refusal.

    Its stored key must match ``meta["key"]`` in every hard component
    (:func:`basinscope._keys.check_key`); a different torch version, thread count
    or batch size only warns, and the resume is recorded in ``attrs["resumed_under"]``.
    """
    from .._keys import check_key, warn_soft
    from ..errors import BasinscopeError

    if not path.exists():
        return None
    old = Surface.load(path)
    fresh = "delete it or write to another path to start afresh"
    saved = old.attrs.get("key")
    soft = check_key(path, saved, meta["key"], what="a surface", fresh=fresh)
    if (
        old.computed is None
        or old.directions is None
        or old.shape != shape
        or old.computed.shape != shape
        or (old.test_loss is not None) != has_test
    ):
        raise BasinscopeError(f"{str(path)!r} holds an incomplete or altered surface file; {fresh}")
    if soft:
        warn_soft(path, soft, saved, meta["key"])
        old.attrs.setdefault("resumed_under", []).append(meta["environment"])
        _write_attrs(path, old)
    return old


def _batchnorm_engine(obj: Objective, data: Any) -> BatchNormEngine:
    """The engine that re-estimates BatchNorm statistics on ``data`` at every point;
    a model without BatchNorm is refused before the data is read."""
    batchnorm_layers(obj.model)
    return BatchNormEngine(obj.with_data(data).batches)
