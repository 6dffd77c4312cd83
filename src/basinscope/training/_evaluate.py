"""The training loss and its exact evaluation: dataset-mean loss and accuracy.

Two kinds of target (:class:`~basinscope.training.DataBundle`): one label per
example (``y [N]``, logits ``[B, K]``), where the mean is over examples, and one
target per token (``y [N, T]``, logits ``[B, T, K]``), where the mean is over the
target tokens that count, those not equal to ``IGNORE_INDEX`` (-100):

    L = Σ_{n,t: y_nt ≠ -100} −log softmax(f(x_n)_t)[y_nt] / #{n,t: y_nt ≠ -100}
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ._bundle import IGNORE_INDEX

_EVAL_BATCH = 1024
_EVAL_TOKENS = 2048  # target tokens per evaluated chunk: the float64 logits are tokens × K


def _loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """A minibatch's mean cross-entropy: over its examples, or over its counted target tokens.

    A minibatch whose targets are all ``IGNORE_INDEX`` has loss 0 (and no gradient).
    """
    if y.ndim == 1:
        return F.cross_entropy(out, y)
    total = F.cross_entropy(
        out.reshape(-1, out.shape[-1]), y.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"
    )
    return total / (y != IGNORE_INDEX).sum().clamp(min=1)


@torch.no_grad()
def _evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float] | None:
    """Exact dataset-mean cross-entropy and accuracy (float64 sums over chunks).

    The mean is over examples for ``y [N]``, over counted target tokens for
    ``y [N, T]``; ``None`` when there is nothing to count.
    """
    if len(y) == 0:
        return None
    model.eval()
    loss = torch.zeros((), dtype=torch.float64, device=x.device)
    correct = torch.zeros((), dtype=torch.int64, device=x.device)
    if y.ndim == 1:
        for i in range(0, len(y), _EVAL_BATCH):
            out = model(x[i : i + _EVAL_BATCH])
            yb = y[i : i + _EVAL_BATCH]
            loss += F.cross_entropy(out.double(), yb, reduction="sum")
            correct += (out.argmax(dim=1) == yb).sum()
        return loss.item() / len(y), correct.item() / len(y)
    count = int((y != IGNORE_INDEX).sum())
    if count == 0:
        return None
    chunk = max(1, _EVAL_TOKENS // max(y.shape[1], 1))
    for i in range(0, len(y), chunk):
        out = model(x[i : i + chunk])
        yb = y[i : i + chunk]
        flat = out.double().reshape(-1, out.shape[-1])
        loss += F.cross_entropy(flat, yb.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum")
        correct += ((out.argmax(dim=-1) == yb) & (yb != IGNORE_INDEX)).sum()
    return loss.item() / count, correct.item() / count


def _record(epoch: int, step: int, lr: float, model: nn.Module, tensors: tuple) -> dict[str, Any]:
    x_train, y_train, x_test, y_test = tensors
    rec: dict[str, Any] = {"epoch": epoch, "step": step, "lr": lr}
    for split, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        res = _evaluate(model, x, y)
        rec[f"{split}_loss"], rec[f"{split}_acc"] = res if res is not None else (None, None)
    return rec
