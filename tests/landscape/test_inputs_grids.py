"""Hostile input to lines, planes and surface files: one sentence, or the right number."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
from torch import nn

import basinscope as bs

f64 = torch.float64


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))


@pytest.fixture
def obj():
    X = torch.randn(10, 3, generator=torch.Generator().manual_seed(1))
    return bs.Objective(_model(), nn.CrossEntropyLoss(), (X, torch.arange(10) % 2))


# ------------------------------------------------------------------ directions
def test_zero_and_parallel_directions_are_refused(obj):
    d = bs.random_directions(obj, 2, seed=0)
    with pytest.raises(bs.BasinscopeError, match="the direction of a line is zero"):
        bs.line(obj, torch.zeros(obj.n), steps=3)
    with pytest.raises(bs.BasinscopeError, match="direction 2 of a plane is zero"):
        bs.plane(obj, d[0], torch.zeros(obj.n), steps=3)
    for other in (-0.3 * d[0], 2 * d[0]):
        with pytest.raises(bs.BasinscopeError, match="directions 1 and 2 of a plane are parallel"):
            bs.plane(obj, d[0], other, steps=3)
    # independent directions, and paths whose directions are models, stay accepted
    assert bs.plane(obj, d[0], d[0] + 1e-3 * d[1], steps=3).complete
    assert bs.interpolate(obj, obj.model, steps=3).complete


# ------------------------------------------------------------------ overflowing grids
@pytest.mark.parametrize("span", [(-1e300, 1e300), (0.0, 1e39)])
def test_a_span_beyond_the_dtype_is_refused_up_front(obj, span):
    d = bs.random_directions(obj, 2, seed=0)
    with pytest.raises(bs.BasinscopeError, match=r"the span \[.*beyond float32's range"):
        bs.line(obj, d[0], span=span, steps=3)
    with pytest.raises(bs.BasinscopeError, match=r"the span .* × .*beyond float32's range"):
        bs.plane(obj, d[0], d[1], span=(-1, 1), yspan=span, steps=3)
    # in float64 the same span is within range
    wide = bs.Objective(_model(), nn.CrossEntropyLoss(), (obj.x, obj.y), dtype=f64)
    assert bs.line(wide, d[0].double(), span=(0.0, 1e39), steps=2).complete


def test_an_overflowing_point_stores_no_accuracy(obj):
    d = bs.random_directions(obj, 1, seed=0)[0]
    s = bs.line(obj, d, span=(-1e37, 1e37), steps=3)  # finite weights, overflowing outputs
    bad = ~np.isfinite(s.train_loss)
    assert bad[0] and bad[2] and not bad[1]
    assert np.isnan(s.train_acc[bad]).all() and np.isfinite(s.train_acc[1])
    p = bs.plane(obj, d, bs.random_directions(obj, 1, seed=1)[0], span=(-1e37, 1e37), steps=3)
    assert (np.isnan(p.train_acc) == ~np.isfinite(p.train_loss)).all()
    assert np.isfinite(p.train_acc[1, 1])


# ------------------------------------------------------------------ surface files
def _file(path, **datasets):
    attrs = datasets.pop("attrs", None)
    with h5py.File(path, "w") as f:
        for k, v in datasets.items():
            f.create_dataset(k, data=v)
        if attrs is not None:
            f.attrs["basinscope"] = attrs
    return path


_X = np.linspace(-1, 1, 5)


@pytest.mark.parametrize(
    "datasets, match",
    [
        ({"train_loss": _X**2, "attrs": "{bad json"}, "attribute 'basinscope' that is not valid"),
        ({"train_loss": _X**2, "attrs": "[1, 2]"}, "'basinscope' holding a JSON list, not an"),
        ({"train_loss": np.array([b"a"] * 5)}, "dataset 'train_loss' of strings"),
        ({"train_loss": np.ones(7)}, r"'train_loss' of shape \[7\] but .* grid of 5"),
        ({"train_loss": np.ones(5), "train_acc": np.ones((5, 2))}, r"'train_acc' of shape \[5, 2"),
        ({"train_loss": np.ones(5), "computed": np.ones(4, bool)}, r"'computed' of shape \[4\]"),
        ({"train_loss": np.ones(5), "computed": np.full(5, 3)}, "other than 0 and 1"),
        ({"train_loss": np.ones(5), "directions": np.ones(3)}, r"'directions' of shape \[3\]"),
        ({"train_loss": np.ones(5), "directions": np.array([b"x"])}, "'directions' of strings"),
        ({}, "holds none of the datasets train_loss"),
        ({"train_loss": np.ones(5), "ycoordinates": np.ones((2, 2))}, "'ycoordinates' of shape"),
        ({"train_loss": np.ones(5), "ycoordinates": np.ones(3)}, r"shape \[5\] but .* 5 × 3"),
    ],
)
def test_a_surface_file_from_elsewhere_is_checked(tmp_path, datasets, match):
    path = _file(tmp_path / "bad.h5", xcoordinates=_X, **datasets)
    with pytest.raises(bs.BasinscopeError, match=rf"surface file '.*bad.h5' .*{match}"):
        bs.Surface.load(path)


@pytest.mark.parametrize(
    "x, match",
    [
        (np.ones((2, 2)), r"'xcoordinates' of shape \[2, 2\]"),
        (np.array([b"a", b"b"]), "'xcoordinates' of strings"),
        (np.array([0.0, np.nan]), "'xcoordinates' holding NaN"),
        (np.array(1.0), r"'xcoordinates' of shape \[\]"),
    ],
)
def test_bad_coordinates_are_one_sentence(tmp_path, x, match):
    path = _file(tmp_path / "bad.h5", xcoordinates=x, train_loss=np.ones(2))
    with pytest.raises(bs.BasinscopeError, match=match):
        bs.Surface.load(path)


def test_a_file_from_li_et_al_still_loads(tmp_path):
    loss = np.add.outer(_X**2, _X[:3] ** 2)
    loss[1, 2] = np.nan
    path = _file(tmp_path / "li.h5", xcoordinates=_X, ycoordinates=_X[:3], train_loss=loss)
    s = bs.Surface.load(path)
    assert s.shape == (5, 3) and s.attrs == {} and s.directions is None
    assert s.computed.sum() == 14 and not s.computed[1, 2]
