"""Loss and accuracy surfaces: 1-D lines and 2-D planes through a minimum.

A surface samples ``L(θ0 + α d1 + β d2)`` on a grid of coefficients (Li et al.
2018, "Visualizing the Loss Landscape of Neural Nets"), on the training data
and optionally the test data. The :class:`Surface` result is saved as HDF5
with Li et al.'s dataset names (``xcoordinates``, ``ycoordinates``,
``train_loss``, ``train_acc``, ``test_loss``, ``test_acc``; arrays indexed
``[i, j]`` at ``(x[i], y[j])``) so their plotting and VTK tools read ours.
Accuracy is stored as a fraction in [0, 1].
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

if TYPE_CHECKING:
    from .objective import Objective

METRICS = ("train_loss", "train_acc", "test_loss", "test_acc")


@dataclass
class Surface:
    """Loss/accuracy on a 1-D or 2-D grid of direction coefficients.

    Attributes:
        xcoordinates: ``[nx]`` coefficients along the first direction.
        ycoordinates: ``[ny]`` coefficients along the second, ``None`` for a line.
        train_loss, train_acc, test_loss, test_acc: float64 arrays of shape
            ``[nx]`` (line) or ``[nx, ny]`` (plane); ``None`` where not computed
            (no test data); ``NaN`` at points not yet computed.
        computed: boolean mask of the grid points already evaluated.
        directions: ``[k, n]`` float32 directions (k = 1 or 2), or ``None``.
        attrs: JSON-serialisable metadata (normalisation, seed, span, ...);
            a computed surface also holds ``key`` (hashes of everything its
            numbers depend on: weights, data, loss, directions, grid, settings,
            environment; a resume must match it) and ``environment`` (torch
            version, threads, device, dtype it was computed with).
    """

    xcoordinates: np.ndarray
    ycoordinates: np.ndarray | None = None
    train_loss: np.ndarray | None = None
    train_acc: np.ndarray | None = None
    test_loss: np.ndarray | None = None
    test_acc: np.ndarray | None = None
    computed: np.ndarray | None = None
    directions: np.ndarray | None = None
    attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def is_2d(self) -> bool:
        return self.ycoordinates is not None

    @property
    def shape(self) -> tuple[int, ...]:
        if self.ycoordinates is None:
            return (len(self.xcoordinates),)
        return (len(self.xcoordinates), len(self.ycoordinates))

    @property
    def complete(self) -> bool:
        return self.computed is not None and bool(np.all(self.computed))

    def metric(self, key: str) -> np.ndarray:
        """The array for ``key`` (one of ``METRICS``); a clear error if absent."""
        from .errors import BasinscopeError

        if key not in METRICS:
            raise BasinscopeError(
                f"unknown surface metric {key!r}; use one of {', '.join(METRICS)}"
            )
        value = getattr(self, key)
        if value is None:
            raise BasinscopeError(
                f"this surface has no {key!r} (it was computed without that data)"
            )
        return value

    def save(self, path: str | Path) -> Path:
        """Write the surface to ``path`` (HDF5) atomically."""
        from ._io import atomic_write

        return atomic_write(path, self._write_h5)

    def _write_h5(self, path: Path) -> None:
        import h5py

        with h5py.File(path, "w") as f:
            _write_into(f, self)

    @classmethod
    def load(cls, path: str | Path) -> Surface:
        """Read a surface written by :meth:`save` (or by Li et al.'s tool)."""
        import h5py

        from .errors import BasinscopeError

        path = Path(path)
        if not path.is_file():
            raise BasinscopeError(f"surface file {str(path)!r} does not exist")
        try:
            f = h5py.File(path, "r")
        except OSError as exc:
            raise BasinscopeError(
                f"{str(path)!r} is not a readable HDF5 surface file ({exc})"
            ) from None
        with f:
            if "xcoordinates" not in f:
                raise BasinscopeError(
                    f"{str(path)!r} has no 'xcoordinates' dataset; it is not a surface file"
                )
            get = lambda k: np.asarray(f[k][()]) if k in f else None  # noqa: E731
            x = get("xcoordinates")
            y = get("ycoordinates")
            data = {k: (None if get(k) is None else get(k).astype(np.float64)) for k in METRICS}
            computed = get("computed")
            if computed is None:  # a file from Li et al.'s tool: trust what is finite
                ref = next((v for v in data.values() if v is not None), None)
                computed = None if ref is None else ~np.isnan(ref)
            attrs = json.loads(f.attrs["basinscope"]) if "basinscope" in f.attrs else {}
            return cls(
                xcoordinates=x,
                ycoordinates=y,
                computed=None if computed is None else computed.astype(bool),
                directions=get("directions"),
                attrs=attrs,
                **data,
            )


def _write_into(f: Any, s: Surface) -> None:
    f.create_dataset("xcoordinates", data=np.asarray(s.xcoordinates, dtype=np.float64))
    if s.ycoordinates is not None:
        f.create_dataset("ycoordinates", data=np.asarray(s.ycoordinates, dtype=np.float64))
    for k in METRICS:
        v = getattr(s, k)
        if v is not None:
            f.create_dataset(k, data=np.asarray(v, dtype=np.float64))
    if s.computed is not None:
        f.create_dataset("computed", data=np.asarray(s.computed, dtype=bool))
    if s.directions is not None:
        f.create_dataset("directions", data=np.asarray(s.directions, dtype=np.float32))
    f.attrs["basinscope"] = json.dumps(s.attrs, sort_keys=True, default=str)


# --------------------------------------------------------------------- compute
def _grids(axes: list[tuple[Any, Any]], what: str, n_coef: int | None = None) -> list[np.ndarray]:
    """``linspace(*span, steps)`` for each ``(span, steps)`` axis, after the checks.

    Each span must be finite with max > min and each ``steps`` an integer ≥ 2;
    the whole grid must fit in memory (:func:`_check_memory`) before any array
    of it is allocated.
    """
    from ._checks import check_int, check_span
    from .errors import BasinscopeError

    checked = []
    for span, steps in axes:
        steps = check_int(f"the number of steps of {what}", steps)
        if steps < 2:
            raise BasinscopeError(f"{what} needs at least 2 steps, got {steps}")
        checked.append((check_span(f"the span of {what}", span), steps))
    shape = tuple(steps for _, steps in checked)
    _check_memory(shape, len(shape) if n_coef is None else n_coef, what)
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


def _check_memory(shape: tuple[int, ...], n_coef: int, what: str) -> None:
    """Refuse a grid whose arrays would not fit in the available memory.

    A grid of ``P = Π shape`` points holds the four float64 metric arrays, the
    ``computed`` mask, the ``[P, dim]`` mesh (built from ``dim`` coordinate
    arrays, so about three copies at once) and the ``[P, n_coef]`` coefficients:
    ``P · (8 · (4 + 3·dim + n_coef) + 1)`` bytes, a lower bound on what it needs.
    """
    from .errors import BasinscopeError

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
            every point (see :class:`_BatchNormUpdate` for the cost); ``None``
            keeps θ0's statistics.
    """
    d = torch.as_tensor(direction).reshape(1, -1)
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
    d = torch.stack([torch.as_tensor(d1).reshape(-1), torch.as_tensor(d2).reshape(-1)])
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
    from ._checks import check_int, check_output_file
    from ._keys import environment
    from ._lock import output_lock
    from .errors import BasinscopeError
    from .objective import Objective

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
    if path is not None:
        path = check_output_file(path, "the surface file")
    test_obj = None
    if test is not None:
        test_obj = test if isinstance(test, Objective) else obj.with_data(test)
    theta = obj.theta0 if origin is None else origin.to(device=obj.device, dtype=obj.dtype)
    bn = None if update_bn is None else _BatchNormUpdate(obj, update_bn)
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
    with output_lock(_lock_target(path), "the surface file"):
        return _evaluate_grid(*args, path, chunk, progress, meta)


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
    bn: _BatchNormUpdate | None,
    shortcut: bool,
) -> dict[str, Any]:
    """Everything a surface's numbers depend on, as a flat key (see :mod:`._keys`).

    The training Objective's :meth:`~basinscope.Objective.fingerprint` (weights,
    space, data, loss, batch size, environment); the test data and the rest of the
    test Objective; digests of the directions (in the dtype they are used in), the
    grid, the coefficient map and a given origin; the ``update_bn`` data and batch
    size (the batches decide the re-estimated variance); and the shortcut flag.
    """
    from ._keys import tensor_digest, value_digest

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
    bn: _BatchNormUpdate | None,
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

    surface = _resume(path, shape, test_obj is not None, meta) if path else None
    if surface is None:
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

    done = surface.computed.reshape(-1)
    # Chunks are aligned to global indices so a resumed run evaluates exactly
    # the same batches as an uninterrupted one.
    todo = [s for s in range(0, len(mesh), chunk) if not done[s : s + chunk].all()]
    bar = tqdm(total=int((~done).sum()), disable=not progress, desc="surface", unit="pt")
    directions = dirs.to(device=obj.device, dtype=obj.dtype)
    with bar:
        for start in todo:
            idx = np.arange(start, min(start + chunk, len(mesh)))
            idx = idx[~done[idx]]
            coef = torch.from_numpy(mesh[idx])
            updates = {}
            if bn is not None:
                objs = {"train": obj} | ({"test": test_obj} if test_obj is not None else {})
                for key, result in zip(
                    objs, bn.evaluate(list(objs.values()), coef, directions, theta), strict=True
                ):
                    updates[f"{key}_loss"], updates[f"{key}_acc"] = result
            else:
                updates["train_loss"], updates["train_acc"] = obj.evaluate_affine(
                    coef, directions, origin=theta, shortcut=shortcut
                )
                if test_obj is not None:
                    updates["test_loss"], updates["test_acc"] = test_obj.evaluate_affine(
                        coef, directions, origin=theta, shortcut=shortcut
                    )
            for key, value in updates.items():
                getattr(surface, key).reshape(-1)[idx] = value.numpy()
            done[idx] = True
            if path:
                _write_chunk(path, surface, idx, list(updates))
            bar.update(len(idx))
    return surface


def _resume(
    path: Path, shape: tuple[int, ...], has_test: bool, meta: dict[str, Any]
) -> Surface | None:
    """The surface already in ``path`` if it is the same computation, else a refusal.

    Its stored key must match ``meta["key"]`` in every hard component
    (:func:`basinscope._keys.check_key`); a different torch version, thread count
    or batch size only warns, and the resume is recorded in ``attrs["resumed_under"]``.
    """
    from ._keys import check_key, warn_soft
    from .errors import BasinscopeError

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


def _write_attrs(path: Path, surface: Surface) -> None:
    import h5py

    with h5py.File(path, "r+") as f:
        f.attrs["basinscope"] = json.dumps(surface.attrs, sort_keys=True, default=str)
        f.flush()


def _write_chunk(path: str | Path, surface: Surface, idx: np.ndarray, keys: list[str]) -> None:
    """Write the newly computed points into the HDF5 file and flush it."""
    import h5py

    with h5py.File(path, "r+") as f:
        for key in keys:
            flat = getattr(surface, key).reshape(-1)
            f[key][...] = flat.reshape(surface.shape)
        f["computed"][...] = surface.computed
        f.flush()


# ------------------------------------------------------------------ paths between minima
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

    from .errors import BasinscopeError

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
            every point (see :class:`_BatchNormUpdate`); ``None`` keeps ``θ_a``'s.
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
    from ._checks import check_number
    from .errors import BasinscopeError

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

    ``snapshots``: a :class:`basinscope.train.Trajectory` (``load_trajectory(run)``
    or ``TrainResult.trajectory``), a ``[T, n]`` tensor in ``obj.space``, or a list
    of models / state dicts; the last one should be ``obj``'s model.
    Directions come from :func:`basinscope.directions.pca_directions`; the grid
    covers the projected trajectory plus ``margin`` times its extent. The
    trajectory's coordinates and the explained variance are stored in
    ``attrs["trajectory"]`` and ``attrs["explained_variance_ratio"]``.
    """
    from ._checks import check_number
    from .directions import pca_directions

    margin = check_number("margin", margin, nonnegative=True)
    _grids([((0.0, 1.0), steps), ((0.0, 1.0), steps)], "a trajectory plane")  # before the PCA
    epochs = None
    if hasattr(snapshots, "unflatten") and hasattr(snapshots, "epochs"):  # a train.Trajectory
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


class _BatchNormUpdate:
    """Recompute BatchNorm running statistics at each point, as SWA's ``update_bn`` does.

    At a point θ the running mean and variance of every BatchNorm layer are
    reset and re-estimated from the batches of ``data`` in train mode (batches
    of ``obj.batch_size``, averaged with weights proportional to their sizes, so
    the mean is the dataset's; SWA's ``update_bn`` weights batches equally),
    with every other module left in eval mode (dropout off); the point is then
    evaluated in eval mode with those statistics. Without it a point far from
    θ0 is evaluated with θ0's statistics, which can make a basin look sharper
    than it is (Izmailov et al. 2018; Garipov et al. 2018).

    **Cost:** one extra forward pass over ``data`` per point, and every point
    runs the whole network (the first-layer shortcut does not apply): roughly
    ``1 + |data|/|eval data|`` times the plain evaluation of the point.
    """

    def __init__(self, obj: Objective, data: Any):
        from torch import nn

        from .errors import BasinscopeError

        self.bn = {
            name: m
            for name, m in obj.model.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
        }
        if not self.bn:
            raise BasinscopeError(
                "update_bn needs a model with BatchNorm layers that track running statistics"
            )
        self.data = obj.with_data(data)
        if self.data.n_examples < 2:
            raise BasinscopeError("update_bn needs at least 2 examples to estimate statistics")

    def _batches(self) -> list[Tensor]:
        """The data in batches of ``batch_size``; a last batch of one example (which
        BatchNorm cannot normalise in train mode) joins the one before it."""
        x, size = self.data.x, self.data.batch_size
        starts = list(range(0, len(x), size))
        if len(starts) > 1 and len(x) - starts[-1] == 1:
            starts.pop()
        ends = starts[1:] + [len(x)]
        return [x[a:b] for a, b in zip(starts, ends, strict=True)]

    def _buffers(self, obj: Objective, params: dict[str, Tensor]) -> dict[str, Tensor]:
        buffers: dict[str, Tensor] = {}
        for name, m in self.bn.items():
            prefix = f"{name}." if name else ""
            buffers[prefix + "running_mean"] = torch.zeros_like(m.running_mean)
            buffers[prefix + "running_var"] = torch.ones_like(m.running_var)
            buffers[prefix + "num_batches_tracked"] = torch.zeros_like(m.num_batches_tracked)
        saved = {name: (m.training, m.momentum) for name, m in self.bn.items()}
        try:
            for m in self.bn.values():
                m.train()
            seen = 0
            for x in self._batches():
                # momentum b/seen (seen counts this batch): the running mean is the size-weighted mean of
                # the batch means, i.e. the dataset mean; the variance is the
                # size-weighted mean of the batch variances.
                seen += len(x)
                for m in self.bn.values():
                    m.momentum = len(x) / seen
                obj._forward({**params, **buffers}, x)
        finally:
            for name, m in self.bn.items():
                m.train(saved[name][0])
                m.momentum = saved[name][1]
        return buffers

    @torch.no_grad()
    def evaluate(
        self, objs: list[Objective], coef: Tensor, dirs: Tensor, origin: Tensor
    ) -> list[tuple[Tensor, Tensor]]:
        """``(loss[K], acc[K])`` on each Objective's data at ``origin + coef @ dirs``."""
        first = objs[0]
        sums = [torch.zeros(2, len(coef), dtype=torch.float64) for _ in objs]
        for k, c in enumerate(coef.tolist()):
            theta = origin.clone()
            for j, cj in enumerate(c):
                if cj != 0:
                    theta.add_(dirs[j], alpha=cj)
            params = first.space.unflatten(theta)
            full = {**params, **self._buffers(first, params)}
            for o, acc in zip(objs, sums, strict=True):
                for x, y in o._chunks():
                    dl, dc = o._stats(o._forward(full, x), y)
                    acc[0, k] += float(dl)
                    acc[1, k] += float(dc)
        return [(a[0] / o.n_examples, a[1] / o.n_examples) for o, a in zip(objs, sums, strict=True)]
