"""The landscape wing's contract: what ``basinscope.landscape`` exports, where it lives,
and the seam to training (a trajectory is duck-typed, training is never imported)."""

from __future__ import annotations

import copy
import importlib

import numpy as np
import torch
from torch import nn

import basinscope as bs
from basinscope import landscape

PUBLIC = {
    "_directions": [
        "NORMALIZERS", "PCADirections", "check_directions", "gram_schmidt",
        "interpolation_direction", "normalize", "pca_directions", "random_directions",
    ],
    "_surface": ["METRICS", "Surface"],
    "_grid": ["line", "plane"],
    "_paths": ["interpolate", "three_model_plane", "trajectory_plane"],
    "_rays": ["ray_directions"],
    "_volume": [
        "RULES", "VolumeResult", "basin_volume", "finite_loss0", "log_unit_ball",
        "volume_from_radii",
    ],
}  # fmt: skip


def test_the_contract_re_exports_each_name_from_its_implementation_file():
    for module, names in PUBLIC.items():
        impl = importlib.import_module(f"basinscope.landscape.{module}")
        for name in names:
            assert getattr(landscape, name) is getattr(impl, name), (module, name)
    assert landscape.METRICS == ("train_loss", "train_acc", "test_loss", "test_acc")


class _Trajectory:
    """What ``trajectory_plane`` reads of a training trajectory: ``epochs`` and
    ``unflatten(i)`` (a state dict per snapshot); nothing of ``basinscope.training``."""

    def __init__(self, models: list[nn.Module], epochs: list[int]):
        self.models, self.epochs = models, epochs

    def unflatten(self, i: int) -> dict[str, torch.Tensor]:
        return dict(self.models[i].named_parameters())


def test_trajectory_plane_reads_a_trajectory_object_like_its_snapshots(mlp):
    model, X, y = mlp
    obj = bs.Objective(model, nn.CrossEntropyLoss(), (X, y))
    snaps = []
    for i in range(3):
        other = copy.deepcopy(model)
        g = torch.Generator().manual_seed(30 + i)
        with torch.no_grad():
            for p in other.parameters():
                p.add_(0.1 * (3 - i) * torch.randn(p.shape, generator=g, dtype=p.dtype))
        snaps.append(other)
    snaps.append(model)
    from_models = landscape.trajectory_plane(obj, snaps, steps=3)
    from_trajectory = landscape.trajectory_plane(obj, _Trajectory(snaps, [0, 2, 4, 6]), steps=3)
    np.testing.assert_array_equal(from_trajectory.train_loss, from_models.train_loss)
    np.testing.assert_array_equal(from_trajectory.directions, from_models.directions)
    assert from_trajectory.attrs["trajectory"] == from_models.attrs["trajectory"]
    assert from_trajectory.attrs["trajectory_epochs"] == [0, 2, 4, 6]
    assert from_models.attrs["trajectory_epochs"] is None
