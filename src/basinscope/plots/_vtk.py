"""A surface as a VTK file for ParaView, written by meshio (no hand-written XML).

A plane becomes a mesh of quads with a point ``(x[i], y[j], z)`` per grid point,
``z`` the loss there, as Li et al.'s ``h5_to_vtp`` does; a line becomes VTK line
cells through ``(x[i], 0, z)`` (the slice ``β = 0`` of a plane). Every metric the
surface holds (``train_loss``, ``train_acc``, ``test_loss``, ``test_acc``) is a point
data array of raw values, so ParaView can colour the mesh by any of them.

Points whose ``z`` is not a finite number (not yet computed, or diverged) are left
out, and so is every cell that touches one: a partial surface is written as the part
computed so far, with no NaN coordinate to spoil ParaView's bounds. A kept point's
other metrics may still be NaN (a test loss that diverged), which ParaView shows in
its NaN colour.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import BasinscopeError
from ..landscape import METRICS, Surface

# path suffix -> meshio's format; ParaView opens both (.vtu: XML unstructured grid,
# zlib-compressed; .vtk: legacy format 4.2, which every ParaView version reads).
FORMATS = {".vtu": "vtu", ".vtk": "vtk42"}


def export_vtk(
    surface: Surface, path: str | Path, *, key: str = "train_loss", log: bool = False
) -> Path:
    """Write ``surface`` to ``path`` as a VTK mesh that ParaView opens; returns the path.

    Args:
        surface: a 1-D line or a 2-D plane (partially computed is fine).
        path: a ``.vtu`` (VTK XML unstructured grid) or ``.vtk`` (legacy VTK) file;
            written atomically. Any other suffix is refused.
        key: the metric that gives the height ``z`` (default ``train_loss``).
        log: put ``log10`` of the metric in ``z`` (Li et al.'s ``--log``); the point
            data arrays stay raw. Refused when a kept value is not positive.

    A plane's points are ``(x[i], y[j], z[i, j])`` in ``[i, j]`` order (row-major)
    with quads ``(i, j), (i+1, j), (i+1, j+1), (i, j+1)``; a line's are
    ``(x[i], 0, z[i])`` with a line cell between neighbours. Points whose ``z`` is
    NaN or infinite are left out, with the cells that touch them. A surface with no
    finite point is refused; one whose finite points make no whole cell is written
    as vertex cells, one per point.
    """
    import meshio

    path = Path(path)
    file_format = vtk_format(path)
    points, cells, data = _mesh(surface, key, log)
    mesh = meshio.Mesh(points, cells, point_data=data)

    from .._io import atomic_write

    try:
        return atomic_write(path, lambda tmp: meshio.write(tmp, mesh, file_format=file_format))
    except OSError as exc:  # name the file, not atomic_write's temporary
        raise BasinscopeError(f"cannot write {str(path)!r}: {exc.strerror or exc}") from None


def vtk_format(path: str | Path) -> str:
    """meshio's name of the VTK format that ``path``'s suffix asks for; others refused."""
    suffix = Path(path).suffix
    file_format = FORMATS.get(suffix.lower())
    if file_format is None:
        raise BasinscopeError(
            f"cannot write {str(path)!r} as VTK: give a file ending in .vtu (XML) or .vtk "
            f"(legacy), not {suffix or 'no suffix'!r}"
        )
    return file_format


def _mesh(
    surface: Surface, key: str, log: bool
) -> tuple[np.ndarray, list[tuple[str, np.ndarray]], dict[str, np.ndarray]]:
    """(points[k, 3], cells, point data) of the finite points of ``surface``."""
    z = np.asarray(surface.metric(key), dtype=np.float64)
    keep = np.isfinite(z)
    if surface.computed is not None:
        keep &= np.asarray(surface.computed, dtype=bool)
    if not keep.any():
        raise BasinscopeError(
            f"the surface has no computed point with a finite {key}; there is nothing to export"
        )
    if log:
        low = float(z[keep].min())
        if low <= 0:
            raise BasinscopeError(
                f"log=True needs positive values of {key}, but the smallest is {low:g}; "
                "export it without the log"
            )
        z = np.where(keep, np.log10(np.where(keep, z, 1.0)), np.nan)
    x = np.asarray(surface.xcoordinates, dtype=np.float64)
    if surface.is_2d:
        y = np.asarray(surface.ycoordinates, dtype=np.float64)
        gx, gy = np.meshgrid(x, y, indexing="ij")
        ids = np.arange(z.size).reshape(z.shape)
        corners = np.stack(
            [ids[:-1, :-1], ids[1:, :-1], ids[1:, 1:], ids[:-1, 1:]], axis=-1
        ).reshape(-1, 4)
        cell_type = "quad"
    else:
        gx, gy = x, np.zeros_like(x)
        ids = np.arange(z.size)
        corners = np.stack([ids[:-1], ids[1:]], axis=-1)
        cell_type = "line"
    flat_keep = keep.reshape(-1)
    new_id = np.cumsum(flat_keep) - 1  # old point index -> index among the kept points
    corners = corners[flat_keep[corners].all(axis=1)]
    points = np.stack([gx.reshape(-1), gy.reshape(-1), z.reshape(-1)], axis=1)[flat_keep]
    data = {
        k: np.asarray(getattr(surface, k), dtype=np.float64).reshape(-1)[flat_keep]
        for k in METRICS
        if getattr(surface, k) is not None
    }
    if len(corners) == 0:  # no whole cell: the kept points alone, as vertices
        return points, [("vertex", np.arange(len(points)).reshape(-1, 1))], data
    return points, [(cell_type, new_id[corners].astype(np.int64))], data
