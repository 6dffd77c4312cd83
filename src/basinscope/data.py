"""Datasets: built-in offline data, downloadable IDX/CIFAR files, and user .npz files."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DataBundle:
    """A classification dataset held as tensors.

    Attributes:
        name: registry name (``digits``, ``mnist1d``, ...) or the .npz path.
        x_train: float32 ``[N, *input_shape]``.
        y_train: int64 ``[N]`` class indices in ``[0, n_classes)``.
        x_test, y_test: the same for the test split.
        n_classes: number of classes.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    n_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])
