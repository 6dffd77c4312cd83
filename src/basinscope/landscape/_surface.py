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
from typing import Any

import numpy as np

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
        from ..errors import BasinscopeError

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
        from .._io import atomic_write

        return atomic_write(path, self._write_h5)

    def _write_h5(self, path: Path) -> None:
        import h5py

        with h5py.File(path, "w") as f:
            _write_into(f, self)

    @classmethod
    def load(cls, path: str | Path) -> Surface:
        """Read a surface written by :meth:`save` (or by Li et al.'s tool).

        The file is checked as it is read, each problem refused in one sentence
        naming the file: a missing or non-numeric dataset, coordinates that are not
        one finite 1-D array each, a metric or ``computed`` mask whose shape is not
        the grid's, ``directions`` that are not a ``[k, n]`` array of numbers, an
        attribute ``basinscope`` that is not a JSON object.
        """
        import h5py

        from ..errors import BasinscopeError

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
            return _read_surface(cls, f, path)


def _read_surface(cls: type[Surface], f: Any, path: Path) -> Surface:
    """The body of :meth:`Surface.load`: every dataset and the attributes, checked."""
    from ..errors import BasinscopeError

    where = f"surface file {str(path)!r}"
    x = _coordinates(f, "xcoordinates", where)
    y = _coordinates(f, "ycoordinates", where) if "ycoordinates" in f else None
    shape = (len(x),) if y is None else (len(x), len(y))
    data = {k: _grid_array(f, k, shape, where) for k in METRICS}
    if all(v is None for v in data.values()):
        raise BasinscopeError(
            f"{where} holds none of the datasets {', '.join(METRICS)}; it is not a surface file"
        )
    computed = _grid_array(f, "computed", shape, where, mask=True)
    if computed is None:  # a file from Li et al.'s tool: trust what is finite
        ref = next(v for v in data.values() if v is not None)
        computed = ~np.isnan(ref)
    directions = _numbers(f, "directions", where) if "directions" in f else None
    if directions is not None and directions.ndim != 2:
        raise BasinscopeError(
            f"{where} has 'directions' of shape {list(directions.shape)}; a surface's "
            "directions are a [k, n] array"
        )
    return cls(
        xcoordinates=x,
        ycoordinates=y,
        computed=computed.astype(bool),
        directions=directions,
        attrs=_attributes(f, where),
        **data,
    )


def _numbers(f: Any, key: str, where: str) -> np.ndarray:
    """Dataset ``key`` of ``f`` as an array of real numbers (booleans count), else a refusal."""
    import h5py

    from ..errors import BasinscopeError

    item = f[key]
    if not isinstance(item, h5py.Dataset):
        raise BasinscopeError(f"{where} has {key!r} as a {type(item).__name__}, not a dataset")
    kind = item.dtype.kind
    if kind not in "biuf":
        what = {"S": "strings", "U": "strings", "O": "objects", "c": "complex numbers"}
        raise BasinscopeError(
            f"{where} has a dataset {key!r} of {what.get(kind, str(item.dtype))}; "
            "a surface's datasets hold real numbers"
        )
    return np.asarray(item[()])


def _coordinates(f: Any, key: str, where: str) -> np.ndarray:
    """``xcoordinates``/``ycoordinates``: one 1-D array of finite numbers, float64."""
    from ..errors import BasinscopeError

    c = _numbers(f, key, where)
    if c.ndim != 1 or len(c) == 0:
        raise BasinscopeError(
            f"{where} has {key!r} of shape {list(c.shape)}; coordinates are one non-empty 1-D array"
        )
    c = c.astype(np.float64)
    if not np.isfinite(c).all():
        raise BasinscopeError(f"{where} has {key!r} holding NaN or inf; coordinates are finite")
    return c


def _grid_array(
    f: Any, key: str, shape: tuple[int, ...], where: str, mask: bool = False
) -> np.ndarray | None:
    """A metric (float64) or the ``computed`` mask of the grid's ``shape``; None if absent."""
    from ..errors import BasinscopeError

    if key not in f:
        return None
    a = _numbers(f, key, where)
    if a.shape != shape:
        grid = " × ".join(str(n) for n in shape)
        raise BasinscopeError(
            f"{where} has {key!r} of shape {list(a.shape)} but its coordinates make a grid "
            f"of {grid}; the file is altered or not a surface file"
        )
    if mask and not np.isin(a, (0, 1)).all():
        raise BasinscopeError(f"{where} has a 'computed' mask holding values other than 0 and 1")
    return a if mask else a.astype(np.float64)


def _attributes(f: Any, where: str) -> dict[str, Any]:
    """The JSON object in the attribute ``basinscope`` ({} when there is none)."""
    from ..errors import BasinscopeError

    if "basinscope" not in f.attrs:
        return {}
    raw = f.attrs["basinscope"]
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", "replace")
    if not isinstance(raw, str):
        raise BasinscopeError(
            f"{where} has an attribute 'basinscope' of type {type(raw).__name__}; "
            "it must be a JSON object as text"
        )
    try:
        attrs = json.loads(raw)
    except json.JSONDecodeError as err:
        raise BasinscopeError(
            f"{where} has an attribute 'basinscope' that is not valid JSON ({err.msg} at "
            f"character {err.pos})"
        ) from None
    if not isinstance(attrs, dict):
        raise BasinscopeError(
            f"{where} has an attribute 'basinscope' holding a JSON {type(attrs).__name__}, "
            "not an object"
        )
    return attrs


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
