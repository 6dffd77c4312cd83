"""The dataset a training run reads: :class:`DataBundle`, the tensors of one task."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

IGNORE_INDEX = -100
"""A token target with this value counts in no loss or accuracy (``F.cross_entropy``'s default)."""


@dataclass(frozen=True)
class DataBundle:
    """A classification or token-prediction dataset held as tensors.

    Two kinds of task share it:

    * **one label per example**: ``x [N, *input_shape]`` (float32 features, or int64
      token ids ``[N, T]`` such as ``a ∘ b =``), ``y [N]`` class indices;
    * **one target per token** (a language model): ``x [N, T]`` int64 token ids,
      ``y [N, T]`` int64 next-token targets, where :data:`IGNORE_INDEX` (-100) marks a
      position that counts in no loss; losses and accuracies are means over the
      counted tokens.

    Attributes:
        name: registry name (``digits``, ``modular-add``, ``markov-lm``, ...) or a path.
        x_train: float32 ``[N, *input_shape]``, or int64 token ids ``[N, T]``.
        y_train: int64 ``[N]`` class indices in ``[0, n_classes)``, or ``[N, T]`` token
            targets in ``[0, n_classes)`` or :data:`IGNORE_INDEX`.
        x_test, y_test: the same for the test split.
        n_classes: number of classes (the vocabulary size for a language model).
        vocab_size: number of token ids the inputs use (``None`` for feature inputs).
        best_loss: the lowest expected per-example (per-token) cross-entropy any model
            can reach on this data, in nats, when it is known in closed form (the
            entropy rate of a Markov language); ``None`` otherwise.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    n_classes: int
    vocab_size: int | None = None
    best_loss: float | None = None

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def token_targets(self) -> bool:
        """Whether there is one target per token (``y [N, T]``) rather than one per example."""
        return self.y_train.ndim == 2


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


def _token_bundle(
    name: str,
    arrays: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    n_classes: int,
    vocab_size: int,
    best_loss: float | None = None,
) -> DataBundle:
    """Copy token arrays ``(x_train, y_train, x_test, y_test)`` into an all-int64 bundle."""
    x_tr, y_tr, x_te, y_te = (torch.tensor(np.asarray(a, dtype=np.int64)) for a in arrays)
    return DataBundle(name, x_tr, y_tr, x_te, y_te, n_classes, vocab_size, best_loss)
