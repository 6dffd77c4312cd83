"""Hostile input to load_dataset (.npz files)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import basinscope as bs
from basinscope.training import load_dataset, poison_labels


def _npz(tmp_path: Path, name: str = "d.npz", **override: np.ndarray) -> Path:
    arrays = {
        "x_train": np.arange(12, dtype=np.float64).reshape(6, 2),
        "y_train": np.array([0, 1, 2, 0, 1, 2]),
        "x_test": np.ones((3, 2)),
        "y_test": np.array([2, 1, 0]),
    }
    arrays.update(override)
    path = tmp_path / name
    np.savez(path, **arrays)
    return path


# ------------------------------------------------------------------ .npz datasets
@pytest.mark.parametrize("split", ["train", "test"])
@pytest.mark.parametrize("bad, kind", [(np.nan, "NaN"), (np.inf, "inf"), (-np.inf, "inf")])
def test_npz_non_finite_inputs_name_file_array_and_example(tmp_path, split, bad, kind):
    x = np.ones((6, 2)) if split == "train" else np.ones((3, 2))
    x[2, 1] = bad
    path = _npz(tmp_path, **{f"x_{split}": x})
    with pytest.raises(bs.BasinscopeError) as err:
        load_dataset(str(path))
    assert str(err.value) == (
        f"{path} has x_{split} holding {kind} (example 2); inputs must be finite numbers"
    )


def test_npz_values_beyond_float32_are_refused(tmp_path):
    path = _npz(tmp_path, x_test=np.full((3, 2), 1e300))
    with pytest.raises(bs.BasinscopeError, match=r"x_test holding 1e\+300, beyond float32"):
        load_dataset(str(path))


@pytest.mark.parametrize("split, what", [("train", "training"), ("test", "test")])
def test_npz_empty_split_is_refused(tmp_path, split, what):
    path = _npz(tmp_path, **{f"x_{split}": np.zeros((0, 2)), f"y_{split}": np.zeros(0, np.int64)})
    with pytest.raises(bs.BasinscopeError, match=rf"{path} has an empty {what} split \(x_{split}"):
        load_dataset(str(path))


@pytest.mark.parametrize(
    "override, match",
    [
        ({"x_test": np.ones((3, 2), dtype=np.complex64)}, "x_test of dtype complex64"),
        ({"x_train": np.ones((6, 0))}, r"x_train of shape \(6, 0\), examples with no values"),
        ({"y_test": np.array([2.0, 1.0, 0.0])}, r"y_test of dtype float64.*astype\(np.int64\)"),
        ({"y_train": np.zeros((6, 1), np.int64)}, r"y_train of shape \(6, 1\)"),
        ({"x_test": np.ones((3, 3))}, r"x_train examples of shape \(2,\) but x_test.*\(3,\)"),
    ],
)
def test_npz_mis_shaped_or_typed_arrays(tmp_path, override, match):
    path = _npz(tmp_path, **override)
    with pytest.raises(bs.BasinscopeError, match=match):
        load_dataset(str(path))


def test_npz_good_file_and_path_objects_still_load(tmp_path):
    path = _npz(tmp_path)
    b = load_dataset(path, standardize=False)  # a Path, not only a str
    assert b.n_classes == 3 and b.x_train[5].tolist() == [10.0, 11.0]
    with pytest.raises(bs.BasinscopeError, match="dataset name 3 is not valid"):
        load_dataset(3)  # type: ignore[arg-type]
    with pytest.raises(bs.BasinscopeError, match="seed must be an integer"):
        load_dataset(str(path), seed=1.5)  # type: ignore[arg-type]


def test_label_noise_needs_two_classes(tmp_path):
    path = _npz(tmp_path, y_train=np.zeros(6, np.int64), y_test=np.zeros(3, np.int64))
    one = load_dataset(str(path), standardize=False)
    assert one.n_classes == 1
    with pytest.raises(bs.BasinscopeError, match="needs at least 2 classes"):
        poison_labels(one, 0.5)
    assert torch.equal(poison_labels(one, 0.0).y_train, one.y_train)
