"""Tests for basinscope.plots.export_vtk and ``basinscope export --vtk``.

A surface is built by hand from a known quadratic (with one uncomputed NaN point),
written as VTK and read back with meshio: the points must be the grid with z the loss,
the point data the surface's arrays, and the cells exactly the quads (or line
segments) that do not touch the NaN point.
"""

from __future__ import annotations

import meshio
import numpy as np
import pytest

from basinscope.cli import main
from basinscope.errors import BasinscopeError
from basinscope.landscape import Surface
from basinscope.plots import export_vtk

NX, NY = 5, 4  # nx != ny: a transposed grid would be caught
HOLE = (2, 1)  # the uncomputed point, inside the grid: it touches 4 quads


def plane(hole: bool = True) -> Surface:
    x = np.linspace(-1.0, 1.0, NX)
    y = np.linspace(-0.5, 1.0, NY)
    X, Y = np.meshgrid(x, y, indexing="ij")
    loss = 0.5 + X**2 + 3.0 * Y**2 + 0.25 * X * Y
    acc = 1.0 - loss / 10.0
    computed = np.ones((NX, NY), dtype=bool)
    if hole:
        loss[HOLE] = acc[HOLE] = np.nan
        computed[HOLE] = False
    return Surface(
        x,
        y,
        train_loss=loss,
        train_acc=acc,
        test_loss=1.5 * loss,
        test_acc=acc - 0.1,
        computed=computed,
    )


def line() -> Surface:
    x = np.linspace(-2.0, 2.0, 7)
    loss = 1.0 + x**2
    loss[3] = np.nan
    return Surface(x, train_loss=loss, train_acc=1.0 - loss / 10.0, computed=~np.isnan(loss))


def cells(mesh: meshio.Mesh) -> dict[str, np.ndarray]:
    return {block.type: block.data for block in mesh.cells}


def expected_quads(keep: np.ndarray) -> set[tuple[int, ...]]:
    """The quads of the kept points, as tuples of grid (i, j) corners."""
    quads = set()
    for i in range(NX - 1):
        for j in range(NY - 1):
            corners = ((i, j), (i + 1, j), (i + 1, j + 1), (i, j + 1))
            if all(keep[c] for c in corners):
                quads.add(corners)
    return quads


@pytest.mark.parametrize("suffix", [".vtu", ".vtk"])
def test_a_plane_reads_back_as_the_grid_with_the_loss_as_height(tmp_path, suffix):
    s = plane()
    path = export_vtk(s, tmp_path / f"plane{suffix}")
    assert path == tmp_path / f"plane{suffix}"
    mesh = meshio.read(path)
    keep = np.ones((NX, NY), dtype=bool)
    keep[HOLE] = False
    ij = np.argwhere(keep)  # row-major [i, j] order of the kept points
    assert mesh.points.shape == (NX * NY - 1, 3)
    np.testing.assert_array_equal(mesh.points[:, 0], s.xcoordinates[ij[:, 0]])
    np.testing.assert_array_equal(mesh.points[:, 1], s.ycoordinates[ij[:, 1]])
    np.testing.assert_array_equal(mesh.points[:, 2], s.train_loss[keep])
    assert sorted(mesh.point_data) == ["test_acc", "test_loss", "train_acc", "train_loss"]
    for key in mesh.point_data:
        np.testing.assert_array_equal(mesh.point_data[key], getattr(s, key)[keep])
    quads = cells(mesh)["quad"]
    assert len(cells(mesh)) == 1
    # (NX-1)(NY-1) = 12 quads, of which the 4 around the inner NaN point are left out
    assert len(quads) == (NX - 1) * (NY - 1) - 4 == 8
    got = {tuple(tuple(int(v) for v in ij[k]) for k in q) for q in quads}
    assert got == expected_quads(keep)
    assert np.isfinite(mesh.points).all()


def test_a_complete_plane_has_every_quad_and_log_height_with_raw_data(tmp_path):
    s = plane(hole=False)
    mesh = meshio.read(export_vtk(s, tmp_path / "p.vtu", log=True))
    assert len(cells(mesh)["quad"]) == (NX - 1) * (NY - 1)
    np.testing.assert_allclose(mesh.points[:, 2], np.log10(s.train_loss.reshape(-1)), rtol=1e-15)
    np.testing.assert_array_equal(mesh.point_data["train_loss"], s.train_loss.reshape(-1))
    # z from another metric
    mesh = meshio.read(export_vtk(s, tmp_path / "t.vtu", key="test_loss"))
    np.testing.assert_array_equal(mesh.points[:, 2], 1.5 * s.train_loss.reshape(-1))


@pytest.mark.parametrize("suffix", [".vtu", ".vtk"])
def test_a_line_is_line_cells_without_the_nan_segments(tmp_path, suffix):
    s = line()
    mesh = meshio.read(export_vtk(s, tmp_path / f"line{suffix}"))
    keep = ~np.isnan(s.train_loss)
    np.testing.assert_array_equal(mesh.points[:, 0], s.xcoordinates[keep])
    np.testing.assert_array_equal(mesh.points[:, 1], 0.0)
    np.testing.assert_array_equal(mesh.points[:, 2], s.train_loss[keep])
    np.testing.assert_array_equal(mesh.point_data["train_acc"], s.train_acc[keep])
    assert sorted(mesh.point_data) == ["train_acc", "train_loss"]
    # 7 points, 6 segments; the 2 touching point 3 are left out. Kept ids: 0 1 2 | 3 4 5
    np.testing.assert_array_equal(cells(mesh)["line"], [[0, 1], [1, 2], [3, 4], [4, 5]])


def test_refusals_are_one_sentence(tmp_path):
    with pytest.raises(BasinscopeError, match=r"\.vtu \(XML\) or \.vtk \(legacy\), not '\.vtp'"):
        export_vtk(plane(), tmp_path / "p.vtp")
    empty = plane()
    empty.train_loss[...] = np.nan
    with pytest.raises(BasinscopeError, match="no computed point with a finite train_loss"):
        export_vtk(empty, tmp_path / "p.vtu")
    zero = plane(hole=False)
    zero.train_loss[0, 0] = 0.0
    with pytest.raises(BasinscopeError, match="needs positive values of train_loss"):
        export_vtk(zero, tmp_path / "p.vtu", log=True)
    assert list(tmp_path.iterdir()) == []  # nothing written, no temporary left


def test_the_cli_writes_the_vtu_next_to_the_surface(tmp_path, capsys):
    s = plane()
    s.save(tmp_path / "plane.h5")
    assert main(["export", str(tmp_path / "plane.h5"), "--vtk"]) == 0
    mesh = meshio.read(tmp_path / "plane.vtu")
    assert len(cells(mesh)["quad"]) == 8
    np.testing.assert_array_equal(mesh.point_data["test_loss"], s.test_loss[s.computed])
    assert "plane.vtu" in capsys.readouterr().out
    out = tmp_path / "sub" / "plane_log.vtk"
    assert main(["export", str(tmp_path / "plane.h5"), "--vtk", "--log", "--out", str(out)]) == 0
    mesh = meshio.read(out)
    np.testing.assert_allclose(mesh.points[:, 2], np.log10(s.train_loss[s.computed]), rtol=1e-15)


def test_the_cli_refuses_a_bad_suffix_before_reading(tmp_path, capsys):
    missing = tmp_path / "no_such.h5"  # the output is refused before the surface is read
    assert main(["export", str(missing), "--vtk", "--out", str(tmp_path / "p.obj")]) == 2
    err = capsys.readouterr()
    assert err.out == ""
    assert err.err.count("\n") == 1 and err.err.startswith("basinscope: error: ")
    assert "give a file ending in .vtu (XML) or .vtk (legacy), not '.obj'" in err.err
    (tmp_path / "F").write_text("a file, not a directory")
    assert main(["export", str(missing), "--vtk", "--out", str(tmp_path / "F" / "p.vtu")]) == 2
    assert "the VTK file" in capsys.readouterr().err  # unwritable: refused before reading
    (tmp_path / "F").unlink()
    assert main(["export", str(missing), "--vtk"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["export", str(missing)]) == 2  # the format is required
    assert "--vtk" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
