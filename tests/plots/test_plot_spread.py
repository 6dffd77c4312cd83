"""plots.plot_spread: the slices of several direction seeds, as real PNG files."""

from __future__ import annotations

import types

import matplotlib.image as mpimg
import pytest

import basinscope as bs
from basinscope import plots, sharpness
from basinscope.errors import BasinscopeError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def obj(linreg):
    return bs.Objective(linreg.model, linreg.loss_fn, (linreg.X, linreg.y))


@pytest.mark.parametrize("dim, steps", [(1, 21), (2, 11)])
def test_plot_spread_writes_a_png(obj, tmp_path, dim, steps):
    spread = sharpness.direction_spread(obj, (0, 1, 2), dim=dim, steps=steps, radius=0.45)
    out = plots.plot_spread(spread, tmp_path / f"spread{dim}.png", title="three seeds")
    assert out == tmp_path / f"spread{dim}.png"
    assert out.read_bytes()[:8] == PNG_SIGNATURE
    assert mpimg.imread(out).shape[0] > 100
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # no temporary left behind


def test_plot_spread_of_one_seed_and_of_what_is_no_spread(obj, tmp_path):
    spread = sharpness.direction_spread(obj, [5], dim=1, steps=21, radius=0.45)
    assert plots.plot_spread(spread, tmp_path / "one.png").read_bytes()[:8] == PNG_SIGNATURE
    with pytest.raises(BasinscopeError, match="needs a DirectionSpread"):
        plots.plot_spread(object(), tmp_path / "x.png")
    empty = types.SimpleNamespace(seeds=(0,), dim=1, surfaces=())
    with pytest.raises(BasinscopeError, match="one surface per seed"):
        plots.plot_spread(empty, tmp_path / "x.png")
    with pytest.raises(BasinscopeError, match="unknown surface metric"):
        plots.plot_spread(spread, tmp_path / "x.png", key="loss")
