"""Tests for basinscope.plots: real PNGs, and the numbers behind them.

Surfaces are built by hand from a quadratic bowl ``L = ½(a(x-x0)² + b(y-y0)²) + c``
whose minimum, range and orientation are known, so the tests can assert where
the minimum marker lands, which scale and levels were chosen and that grid
panels share one colour norm.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import matplotlib
import matplotlib.image as mpimg
import numpy as np
import pytest
from matplotlib.colors import LogNorm, Normalize
from matplotlib.contour import ContourSet

from basinscope import plots
from basinscope.errors import BasinscopeError
from basinscope.landscape import Surface
from basinscope.plots import _charts, _grids, _style, _surfaces

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def bowl(a=1.0, b=4.0, c=1e-3, x0=0.0, y0=0.0, nx=21, ny=17) -> Surface:
    """A 2-D quadratic bowl; nx != ny so a transposed array would be caught."""
    x = np.linspace(-1.0, 1.0, nx)
    y = np.linspace(-1.0, 1.0, ny)
    X, Y = np.meshgrid(x, y, indexing="ij")
    loss = 0.5 * (a * (X - x0) ** 2 + b * (Y - y0) ** 2) + c
    acc = np.clip(1.0 - loss, 0.0, 1.0)
    return Surface(x, y, train_loss=loss, train_acc=acc, test_loss=1.1 * loss, test_acc=acc)


def line(a=1.0, c=1e-3, n=41, test=True) -> Surface:
    x = np.linspace(-1.0, 1.0, n)
    loss = 0.5 * a * x**2 + c
    acc = np.clip(1.0 - loss, 0.0, 1.0)
    return Surface(
        x,
        train_loss=loss,
        train_acc=acc,
        test_loss=1.2 * loss if test else None,
        test_acc=acc if test else None,
    )


def assert_png(path, shape=None):
    """A real PNG: the signature, and matplotlib reads back a non-trivial image."""
    assert path.is_file()
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[2] in (3, 4)
    assert img.shape[0] > 200 and img.shape[1] > 200
    if shape is not None:
        assert img.shape[:2] == shape
    assert float(img[..., :3].std()) > 0.01  # not a blank canvas
    assert not list(path.parent.glob("*.tmp"))  # atomic write left nothing behind
    return img


@pytest.fixture
def captured(monkeypatch):
    """Record each Figure that a plot function saves, to inspect its artists."""
    figs = []
    original = _style._save

    def save(fig, path):
        figs.append(fig)
        return original(fig, path)

    for module in (_surfaces, _grids, _charts):  # each draws and saves through _style._save
        monkeypatch.setattr(module, "_save", save)
    return figs


# ----------------------------------------------------------------------------- helpers


def test_choose_log_scale():
    assert plots.choose_log_scale(np.geomspace(1e-3, 10.0, 50)) is True
    assert plots.choose_log_scale(np.linspace(1.0, 5.0, 50)) is False
    # NaN / inf ignored; the span is still 1e-3 .. 10.
    assert plots.choose_log_scale([1e-3, np.nan, 10.0, np.inf, -np.inf]) is True
    assert plots.choose_log_scale([0.0, 1e-3, 10.0]) is False  # nonpositive: no log
    assert plots.choose_log_scale([-1.0, 1000.0]) is False
    assert plots.choose_log_scale([1.0, 100.0]) is False  # exactly two decades: not more
    assert plots.choose_log_scale([1.0, 100.1]) is True
    assert plots.choose_log_scale([np.nan, np.nan]) is False


def test_common_limits_ignores_nan_and_inf():
    arrays = [
        np.array([1.0, np.nan, 3.0]),
        np.array([[-2.0, np.inf], [5.0, -np.inf]]),
        np.array([np.nan]),
        [0.5, 4.5],
    ]
    assert plots.common_limits(arrays) == (-2.0, 5.0)
    assert plots.common_limits([np.array([7.0])]) == (7.0, 7.0)
    with pytest.raises(BasinscopeError, match="no finite value"):
        plots.common_limits([np.array([np.nan, np.inf])])


def test_levels_geometric_on_log_and_linear_otherwise():
    lv = _style._levels(1e-3, 10.0, 30, log=True)
    np.testing.assert_allclose(lv, np.geomspace(1e-3, 10.0, 30))
    ratios = lv[1:] / lv[:-1]
    np.testing.assert_allclose(ratios, ratios[0])  # equal steps in log space
    np.testing.assert_allclose(_style._levels(-1.0, 2.0, 7, log=False), np.linspace(-1, 2, 7))
    # A constant surface still gets increasing levels around its value.
    flat = _style._levels(2.0, 2.0, 5, log=False)
    assert np.all(np.diff(flat) > 0) and flat[0] < 2.0 < flat[-1]
    with pytest.raises(BasinscopeError):
        _style._levels(0.0, 1.0, 10, log=True)
    with pytest.raises(BasinscopeError):
        _style._levels(0.0, 1.0, 1, log=False)


def test_bar_order():
    values = {"a": 1.0, "b": 3.0, "c": float("nan"), "d": 2.0, "e": 2.0}
    assert _charts._bar_order(values, sort=True) == ["b", "d", "e", "a", "c"]
    assert _charts._bar_order(values, sort=False) == ["a", "b", "c", "d", "e"]


def test_grid_norm_is_global_range():
    s1, s2, s3 = bowl(a=1, b=1, c=0.01), bowl(a=50, b=80, c=0.2), bowl(a=3, b=2, c=0.05)
    s3.train_loss[:4] = np.nan
    s3.train_loss[5, 5] = np.inf
    arrays = [s.train_loss for s in (s1, s2, s3)]
    finite = np.concatenate([a[np.isfinite(a)] for a in arrays])
    norm = _grids._grid_norm(arrays, log=True)
    assert isinstance(norm, LogNorm)
    assert (norm.vmin, norm.vmax) == (finite.min(), finite.max())
    assert norm.vmin == pytest.approx(0.01) and norm.vmax == pytest.approx(0.5 * 130 + 0.2)
    lin = _grids._grid_norm(arrays, log=False)
    assert type(lin) is Normalize and (lin.vmin, lin.vmax) == (finite.min(), finite.max())


# ----------------------------------------------------------------------------- plots


def test_plot_line(tmp_path, captured):
    out = plots.plot_line(line(a=200.0), tmp_path / "line.png", title="bowl")
    assert out == tmp_path / "line.png"
    assert_png(out, shape=(int(4.2 * plots.DPI), int(6.4 * plots.DPI)))
    ax, ax2 = captured[-1].axes
    assert ax.get_yscale() == "log"  # 1e-3 .. 100 spans five decades
    assert [h.get_label() for h in ax.get_lines() if not h.get_label().startswith("_")] == [
        "train loss",
        "test loss",
    ]
    acc = [h for h in ax2.get_lines()]
    assert len(acc) == 2 and max(acc[0].get_ydata()) == pytest.approx(100 * (1 - 1e-3))
    assert ax.get_title() == "bowl"

    # A narrow range stays linear; a surface without test data just skips it.
    s = line(a=1.0, c=1.0, test=False)
    s.train_loss[::7] = np.nan  # not computed yet: gaps, no crash
    plots.plot_line(s, tmp_path / "lin.png", acc=False)
    assert_png(tmp_path / "lin.png")
    (ax,) = captured[-1].axes
    assert ax.get_yscale() == "linear" and len(ax.get_lines()) == 2  # train + origin marker


def test_plot_contour_marks_minimum_in_right_orientation(tmp_path, captured):
    s = bowl(a=2.0, b=30.0, x0=0.5, y0=-0.25)  # grid points 0.5 and -0.25 both exist
    lo, hi = np.nanmin(s.train_loss), np.nanmax(s.train_loss)
    plots.plot_contour(s, tmp_path / "lin.png", levels=12)  # the default: linear, clipped
    (cs,) = [c for c in captured[-1].axes[0].collections if isinstance(c, ContourSet) and c.filled]
    assert type(cs.norm) is Normalize
    np.testing.assert_allclose(cs.levels, np.linspace(*plots.common_zrange([s]), 12))
    assert captured[-1].axes[1].get_ylabel() == "train loss"  # no log10 on a linear scale
    out = plots.plot_contour(s, tmp_path / "c.png", levels=12, log=True, vmax=hi)
    assert_png(out, shape=(int(5.2 * plots.DPI), int(6.4 * plots.DPI)))
    ax = captured[-1].axes[0]
    marks = {h.get_label(): (h.get_xdata()[0], h.get_ydata()[0]) for h in ax.get_lines()}
    assert marks["min"] == (0.5, -0.25)
    assert marks["θ0"] == (0.0, 0.0)
    (cs,) = [c for c in ax.collections if isinstance(c, ContourSet) and c.filled]
    # Loss spans 1e-3 .. ~21; log=True asked for: geometric levels, labelled as log.
    np.testing.assert_allclose(cs.levels, np.geomspace(lo, hi, 12))
    assert isinstance(cs.norm, LogNorm)
    assert captured[-1].axes[1].get_ylabel() == "train loss (log10 scale)"


def test_plot_contour_linear_with_nan_and_limits(tmp_path, captured):
    s = bowl(c=1.0)  # 1 .. 3.5: linear scale
    s.train_loss[10:, :] = np.nan  # half the plane not computed yet
    plots.plot_contour(s, tmp_path / "c.png", levels=9, vmax=2.0, mark_origin=False)
    assert_png(tmp_path / "c.png")
    ax = captured[-1].axes[0]
    (cs,) = [c for c in ax.collections if isinstance(c, ContourSet) and c.filled]
    lo = np.nanmin(s.train_loss)  # 1.005: the row through x = 0 is NaN
    np.testing.assert_allclose(cs.levels, np.linspace(lo, 2.0, 9))
    assert type(cs.norm) is Normalize and cs.extend == "max"
    assert not ax.get_lines()  # no markers asked for


def test_plot_surface_3d(tmp_path, captured):
    out = plots.plot_surface_3d(bowl(c=1.0), tmp_path / "s.png", zmax=2.0, title="bowl")
    assert_png(out)
    ax = captured[-1].axes[0]
    assert ax.name == "3d" and ax.get_zlim()[1] == pytest.approx(2.0)
    assert ax.get_zlabel() == "train loss" and ax.get_title() == "bowl"
    assert len(captured[-1].axes) == 2  # the surface and its colour bar

    s = bowl(a=100.0, b=100.0)  # 1e-3 .. 100: linear by default, log10 only when asked
    s.train_loss[0, :] = np.nan
    plots.plot_surface_3d(s, tmp_path / "lin.png", key="train_loss")
    ax = captured[-1].axes[0]
    assert ax.get_zlabel() == "train loss" and "log" not in captured[-1].axes[1].get_ylabel()
    assert ax.get_zlim() == pytest.approx(plots.common_zrange([s]))
    plots.plot_surface_3d(s, tmp_path / "log.png", key="train_loss", log=True, zmax=1e3)
    assert_png(tmp_path / "log.png")
    ax = captured[-1].axes[0]
    assert ax.get_zlabel() == "log10 train loss"
    assert captured[-1].axes[1].get_ylabel() == "log10 train loss"
    assert ax.get_zlim() == pytest.approx((-3.0, np.log10(100.001)))


def test_plot_grid_contour_shares_one_norm(tmp_path, captured):
    runs = {"small batch": bowl(a=1, b=1), "large batch": bowl(a=40, b=90), "sam": bowl(a=3)}
    runs["sam"].train_loss[:3] = np.nan
    out = plots.plot_grid(runs, tmp_path / "g.png", suptitle="sharpness by run")
    img = assert_png(out)
    assert img.shape[1] > img.shape[0]  # three panels side by side
    fig = captured[-1]
    sets = [c for ax in fig.axes for c in ax.collections if isinstance(c, ContourSet)]
    assert len(sets) == 6  # filled + lines per panel
    sets = [cs for cs in sets if cs.filled]
    np.testing.assert_allclose(sets[0].levels, sets[2].levels)  # same levels everywhere
    finite = np.concatenate([s.train_loss[np.isfinite(s.train_loss)] for s in runs.values()])
    assert all(cs.norm is sets[0].norm for cs in sets)
    assert type(sets[0].norm) is Normalize  # linear unless log=True is asked for
    zr = plots.common_zrange(runs.values())
    assert (sets[0].norm.vmin, sets[0].norm.vmax) == zr and zr[0] == finite.min()
    assert [ax.get_title() for ax in fig.axes[:3]] == list(runs)
    assert len(fig.axes) == 4  # three panels + one colour bar
    assert fig.get_suptitle() == "sharpness by run"
    plots.plot_grid(runs, tmp_path / "log.png", log=True, zmax=1e3)
    sets = [c for ax in captured[-1].axes for c in ax.collections if isinstance(c, ContourSet)]
    assert isinstance(sets[0].norm, LogNorm)
    assert (sets[0].norm.vmin, sets[0].norm.vmax) == (finite.min(), finite.max())
    assert captured[-1].axes[-1].get_ylabel() == "train loss (log10 scale)"


def test_plot_grid_surface_and_lines(tmp_path, captured):
    runs = {"a": bowl(c=1.0), "b": bowl(a=2, c=1.0), "c": bowl(b=1, c=1.0)}
    plots.plot_grid(runs, tmp_path / "g3.png", kind="surface", ncols=2)
    assert_png(tmp_path / "g3.png")
    fig = captured[-1]
    three = [ax for ax in fig.axes if ax.name == "3d"]
    assert len(three) == 3 and len({ax.get_zlim() for ax in three}) == 1
    assert three[0].get_zlim() == pytest.approx((1.0, 0.5 * 6 + 1.0))

    lines = {"x": line(a=1.0, c=1.0), "y": line(a=6.0, c=1.0)}
    plots.plot_grid(lines, tmp_path / "g1.png")
    assert_png(tmp_path / "g1.png")
    ax1, ax2 = captured[-1].axes
    assert ax1.get_ylim() == ax2.get_ylim()
    lo, hi = ax1.get_ylim()
    assert lo < 1.0 and hi > 4.0  # covers both lines: 1 .. 0.5*6 + 1


def test_plot_bars(tmp_path, captured):
    values = {"sgd": 2.0, "sam": 0.5, "diverged": float("nan"), "swa": 1.25}
    errors = {"sgd": 0.2, "swa": 0.1}
    out = plots.plot_bars(values, tmp_path / "b.png", errors=errors, title="sharpness")
    assert_png(out)
    ax = captured[-1].axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["sgd", "swa", "sam", "diverged"]
    texts = [t.get_text() for t in ax.texts]
    assert texts == ["2", "1.25", "0.5", "n/a"]
    heights = [p.get_height() for p in ax.patches]
    assert heights == [2.0, 1.25, 0.5, 0.0]

    plots.plot_bars(values, tmp_path / "u.png", sort=False)
    labels = [t.get_text() for t in captured[-1].axes[0].get_xticklabels()]
    assert labels == list(values)


def test_degenerate_but_valid_inputs_still_draw(tmp_path, captured):
    x = np.linspace(-1.0, 1.0, 5)
    flat = Surface(x, x, train_loss=np.full((5, 5), 2.0))  # a constant surface
    plots.plot_contour(flat, tmp_path / "flat.png")
    assert_png(tmp_path / "flat.png")
    (cs,) = [c for c in captured[-1].axes[0].collections if isinstance(c, ContourSet) and c.filled]
    assert cs.levels[0] < 2.0 < cs.levels[-1]
    one_row = np.add.outer(x**2, x**2)
    one_row[1:] = np.nan  # only the first row computed so far
    plots.plot_grid({"a": flat, "b": Surface(x, x, train_loss=one_row)}, tmp_path / "g.png")
    assert_png(tmp_path / "g.png")
    plots.plot_bars({"a": float("nan"), "b": -1.0}, tmp_path / "b.png", errors={"b": 0.5})
    ax = captured[-1].axes[0]
    assert [t.get_text() for t in ax.texts] == ["-1", "n/a"]
    assert ax.get_ylim()[0] < -1.5  # the error bar below a negative value is in view


# ----------------------------------------------------------------------------- bad input


def test_bad_input_raises_one_sentence(tmp_path):
    two, one = bowl(), line()
    cases = [
        lambda: plots.plot_contour(two, tmp_path / "x.png", key="val_loss"),
        lambda: plots.plot_contour(one, tmp_path / "x.png"),
        lambda: plots.plot_surface_3d(one, tmp_path / "x.png"),
        lambda: plots.plot_line(two, tmp_path / "x.png"),
        lambda: plots.plot_line(one, tmp_path / "x.png", keys=("loss",)),
        lambda: plots.plot_grid({}, tmp_path / "x.png"),
        lambda: plots.plot_grid({"a": two, "b": one}, tmp_path / "x.png"),
        lambda: plots.plot_grid({"a": two}, tmp_path / "x.png", kind="heatmap"),
        lambda: plots.plot_bars({}, tmp_path / "x.png"),
        lambda: plots.plot_bars({"a": 1.0}, tmp_path / "x.png", errors={"b": 1.0}),
        lambda: plots.plot_contour(two, tmp_path / "x.png", vmin=3.0, vmax=1.0),
        lambda: plots.plot_contour(bowl(c=-10.0), tmp_path / "x.png", log=True),
        lambda: plots.plot_contour(
            Surface(two.xcoordinates, two.ycoordinates, train_loss=np.full((21, 17), np.nan)),
            tmp_path / "x.png",
        ),
    ]
    for case in cases:
        with pytest.raises(BasinscopeError) as info:
            case()
        msg = str(info.value)
        assert msg and "\n" not in msg
    no_test = Surface(two.xcoordinates, two.ycoordinates, train_loss=two.train_loss)
    with pytest.raises(BasinscopeError, match="test_loss"):
        plots.plot_contour(no_test, tmp_path / "x.png", key="test_loss")
    assert not (tmp_path / "x.png").exists()


# ----------------------------------------------------------------------------- side effects


def test_import_and_plotting_leave_pyplot_alone(tmp_path):
    """In a fresh interpreter: no pyplot import, backend unchanged."""
    code = textwrap.dedent(
        f"""
        import sys, matplotlib
        before = dict.__getitem__(matplotlib.rcParams, "backend")
        import numpy as np
        from basinscope import plots
        from basinscope.landscape import Surface
        x = np.linspace(-1, 1, 5)
        s = Surface(x, x, train_loss=np.add.outer(x**2, x**2) + 1e-3)
        plots.plot_contour(s, {str(tmp_path / "p.png")!r})
        plots.plot_surface_3d(s, {str(tmp_path / "q.png")!r})
        assert "matplotlib.pyplot" not in sys.modules, "pyplot was imported"
        assert dict.__getitem__(matplotlib.rcParams, "backend") == before
        print("ok")
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_plots_create_no_pyplot_figures(tmp_path):
    import importlib

    import matplotlib.pyplot as plt

    backend, figs = matplotlib.get_backend(), plt.get_fignums()
    importlib.reload(plots)
    plots.plot_contour(bowl(), tmp_path / "c.png")
    plots.plot_bars({"a": 1.0}, tmp_path / "b.png")
    assert matplotlib.get_backend() == backend
    assert plt.get_fignums() == figs


def _half_computed(s: Surface) -> Surface:
    """The bowl as a killed computation leaves it: rows from x = 0 on not computed."""
    s.computed = np.ones(s.shape, dtype=bool)
    s.computed[10:, :] = False
    for key in ("train_loss", "train_acc", "test_loss", "test_acc"):
        getattr(s, key)[~s.computed] = np.nan
    return s


def test_a_partial_surface_says_so_and_marks_no_false_minimum(tmp_path, captured):
    s = _half_computed(bowl(a=2.0, b=30.0, x0=0.5, y0=-0.25))  # the minimum is not computed
    plots.plot_contour(s, tmp_path / "c.png", title="run a")
    ax = captured[-1].axes[0]
    assert ax.get_title() == f"run a (partial: {10 * 17} of {21 * 17} points)"
    # the trained point is marked; the lowest computed point (on the strip's edge) is not
    assert [h.get_label() for h in ax.get_lines()] == ["θ0"]
    plots.plot_surface_3d(s, tmp_path / "s.png")
    assert captured[-1].axes[0].get_title() == "train loss (partial: 170 of 357 points)"
    plots.plot_grid({"a": s, "b": bowl()}, tmp_path / "g.png")
    titles = [a.get_title() for a in captured[-1].axes if a.get_title()]
    assert titles == ["a (partial: 170 of 357 points)", "b"]
    ln = line()
    ln.computed = np.arange(41) < 30
    plots.plot_line(ln, tmp_path / "l.png")
    assert captured[-1].axes[0].get_title() == "1-D slice through θ0 (partial: 30 of 41 points)"
    # complete: the minimum is marked and the title is the plain one
    s.computed[:] = True
    s.train_loss = bowl(a=2.0, b=30.0, x0=0.5, y0=-0.25).train_loss
    plots.plot_contour(s, tmp_path / "c2.png", title="run a")
    ax = captured[-1].axes[0]
    assert ax.get_title() == "run a"
    marks = {h.get_label(): (h.get_xdata()[0], h.get_ydata()[0]) for h in ax.get_lines()}
    assert marks["min"] == (0.5, -0.25)


# ----------------------------------------------------------------------------- truthful scale


def _bowl2(a: float) -> Surface:
    """``L = a (x² + y²)`` on the same 41 × 41 grid for every ``a``."""
    x = np.linspace(-1.0, 1.0, 41)
    X, Y = np.meshgrid(x, x, indexing="ij")
    return Surface(x, x, train_loss=a * (X**2 + Y**2))


def _band_area(cs: ContourSet, level: float) -> float:
    """Area of the filled bands of ``cs`` lying below ``level`` (shoelace, holes signed)."""
    area = 0.0
    for top, path in zip(cs.levels[1:], cs.get_paths(), strict=False):
        if top <= level + 1e-12:
            for poly in path.to_polygons(closed_only=False):
                x, y = poly[:, 0], poly[:, 1]
                area += 0.5 * (np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))
    return abs(area)


def test_flatter_bowl_covers_more_area_below_a_level(tmp_path, captured):
    """Issue 14: on the study's common, clipped, linear scale the flatter minimum looks
    wider (more area below a loss level), never the deepest, narrowest funnel."""
    runs = {"flat": _bowl2(0.5), "sharp": _bowl2(5.0)}
    zr = plots.common_zrange(runs.values())  # the study's one z-range
    lo, top = zr
    assert lo == 0.0 and 0.0 < top <= 10.0  # min over runs .. the clip level
    drawn = {k: plots.drawn_z(s.train_loss, zr) for k, s in runs.items()}
    assert max(float(np.nanmax(d)) for d in drawn.values()) == pytest.approx(top)  # plateau
    for frac in (0.1, 0.25, 0.5, 0.9):
        level = lo + frac * (top - lo)
        cells = {k: int(np.count_nonzero(d < level)) for k, d in drawn.items()}
        assert cells["flat"] > cells["sharp"] > 0

    # The same in what the figures draw: per-run contour maps on the common range ...
    areas = {}
    for k, s in runs.items():
        plots.plot_contour(s, tmp_path / f"c_{k}.png", levels=11, zrange=zr)
        (cs,) = [
            c for c in captured[-1].axes[0].collections if isinstance(c, ContourSet) and c.filled
        ]
        np.testing.assert_allclose(cs.levels, np.linspace(lo, top, 11))
        areas[k] = _band_area(cs, cs.levels[5])
    assert areas["flat"] > areas["sharp"] > 0
    # ... and the default log choice of old is gone: both linear, labelled without log10.
    assert type(cs.norm) is Normalize and captured[-1].axes[1].get_ylabel() == "train loss"


def test_study_figures_share_one_z_range(tmp_path, captured):
    runs = {"flat": _bowl2(0.5), "sharp": _bowl2(5.0), "mid": _bowl2(2.0)}
    zr = plots.common_zrange(runs.values())
    zlims = []
    for k, s in runs.items():
        plots.plot_surface_3d(s, tmp_path / f"s_{k}.png", zrange=zr)
        zlims.append(captured[-1].axes[0].get_zlim())
    plots.plot_grid(runs, tmp_path / "g3.png", kind="surface", zrange=zr)
    zlims += [ax.get_zlim() for ax in captured[-1].axes if ax.name == "3d"]
    plots.plot_grid(runs, tmp_path / "g3d.png", kind="surface")  # default: the same range
    zlims += [ax.get_zlim() for ax in captured[-1].axes if ax.name == "3d"]
    assert len(zlims) == 9
    for z in zlims:
        assert z == pytest.approx(zr)
    plots.plot_grid(runs, tmp_path / "gc.png")
    norms = {
        (c.norm.vmin, c.norm.vmax)
        for ax in captured[-1].axes
        for c in ax.collections
        if isinstance(c, ContourSet)
    }
    assert norms == {zr}

    # A user zmax is the clip level; a log figure says log10, a linear one does not.
    assert plots.common_zrange(runs.values(), zmax=1.5) == (0.0, 1.5)
    pos = {k: Surface(s.xcoordinates, s.ycoordinates, train_loss=s.train_loss + 1e-3)
           for k, s in runs.items()}  # fmt: skip
    plots.plot_grid(pos, tmp_path / "glog.png", kind="surface", log=True)
    assert all(ax.get_zlabel() == "log10 train loss" for ax in captured[-1].axes if ax.name == "3d")
    assert captured[-1].axes[-1].get_ylabel() == "log10 train loss"
    plots.plot_grid(pos, tmp_path / "glin.png", kind="surface")
    assert not any("log" in ax.get_zlabel() for ax in captured[-1].axes if ax.name == "3d")
    assert "log" not in captured[-1].axes[-1].get_ylabel()
