"""The dataset a training run reads: :class:`DataBundle`, tensors of one classification task."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
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


def _bundle(
    name: str,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    n_classes: int,
) -> DataBundle:
    """Copy NumPy arrays into a :class:`DataBundle` of float32 / int64 tensors."""
    return DataBundle(
        name=name,
        x_train=torch.tensor(np.asarray(x_train, dtype=np.float32)),
        y_train=torch.tensor(np.asarray(y_train, dtype=np.int64)),
        x_test=torch.tensor(np.asarray(x_test, dtype=np.float32)),
        y_test=torch.tensor(np.asarray(y_test, dtype=np.int64)),
        n_classes=n_classes,
    )
