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
        attrs: JSON-serialisable metadata (normalisation, seed, span, ...).
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
def _grid(span: tuple[float, float], steps: int, what: str) -> np.ndarray:
    from .errors import BasinscopeError

    lo, hi = (float(v) for v in span)
    if steps < 2:
        raise BasinscopeError(f"{what} needs at least 2 steps, got {steps}")
    if not hi > lo:
        raise BasinscopeError(f"{what} span must have max > min, got ({lo}, {hi})")
    return np.linspace(lo, hi, int(steps))


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
    """
    d = torch.as_tensor(direction).reshape(1, -1)
    coords = [_grid(span, steps, "a line")]
    return _compute(obj, d, coords, test, path, chunk, progress, attrs)


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
) -> Surface:
    """The 2-D slice ``(α, β) ↦ L(θ0 + α d1 + β d2)`` (Li et al. 2018).

    The grid is ``linspace(*span, steps) × linspace(*yspan, ysteps)`` (y defaults
    to x); arrays are indexed ``[i, j]`` at ``(x[i], y[j])``. Other arguments as
    in :func:`line`.
    """
    d = torch.stack([torch.as_tensor(d1).reshape(-1), torch.as_tensor(d2).reshape(-1)])
    coords = [
        _grid(span, steps, "a plane"),
        _grid(yspan or span, ysteps or steps, "a plane"),
    ]
    return _compute(obj, d, coords, test, path, chunk, progress, attrs)


def _compute(
    obj: Objective,
    dirs: Tensor,
    coords: list[np.ndarray],
    test: Any,
    path: str | Path | None,
    chunk: int,
    progress: bool,
    attrs: dict[str, Any] | None,
) -> Surface:
    from tqdm.auto import tqdm

    from .errors import BasinscopeError
    from .objective import Objective

    if chunk < 1:
        raise BasinscopeError(f"chunk must be a positive integer, got {chunk}")
    if dirs.shape[1] != obj.n:
        raise BasinscopeError(f"directions have {dirs.shape[1]} coordinates, the space has {obj.n}")
    test_obj = None
    if test is not None:
        test_obj = test if isinstance(test, Objective) else obj.with_data(test)
    shape = tuple(len(c) for c in coords)
    mesh = np.stack(np.meshgrid(*coords, indexing="ij"), axis=-1).reshape(-1, len(coords))
    dirs_np = dirs.detach().to("cpu", torch.float32).numpy()
    meta = {"dim": len(coords), "n_params": obj.n, **(attrs or {})}

    surface = _resume(path, coords, dirs_np, test_obj is not None) if path else None
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
        if "origin_train_loss" not in surface.attrs:
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
            updates["train_loss"], updates["train_acc"] = obj.evaluate_affine(coef, directions)
            if test_obj is not None:
                updates["test_loss"], updates["test_acc"] = test_obj.evaluate_affine(
                    coef, directions, origin=obj.theta0
                )
            for key, value in updates.items():
                getattr(surface, key).reshape(-1)[idx] = value.numpy()
            done[idx] = True
            if path:
                _write_chunk(path, surface, idx, list(updates))
            bar.update(len(idx))
    return surface


def _resume(
    path: str | Path, coords: list[np.ndarray], dirs: np.ndarray, has_test: bool
) -> Surface | None:
    from .errors import BasinscopeError

    path = Path(path)
    if not path.exists():
        return None
    old = Surface.load(path)
    same = (
        old.directions is not None
        and old.computed is not None
        and np.array_equal(old.directions, dirs)
        and np.array_equal(old.xcoordinates, coords[0])
        and (len(coords) == 1) == (old.ycoordinates is None)
        and (len(coords) == 1 or np.array_equal(old.ycoordinates, coords[1]))
        and (old.test_loss is not None) == has_test
    )
    if not same:
        raise BasinscopeError(
            f"{str(path)!r} holds a surface with other directions, grid or data; "
            "delete it or write to another path"
        )
    return old


def _write_chunk(path: str | Path, surface: Surface, idx: np.ndarray, keys: list[str]) -> None:
    """Write the newly computed points into the HDF5 file and flush it."""
    import h5py

    with h5py.File(path, "r+") as f:
        for key in keys:
            flat = getattr(surface, key).reshape(-1)
            f[key][...] = flat.reshape(surface.shape)
        f["computed"][...] = surface.computed
        f.flush()
