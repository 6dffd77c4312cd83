"""Exact evaluation of a classifier during training: dataset-mean loss and accuracy."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

_EVAL_BATCH = 1024


@torch.no_grad()
def _evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float] | None:
    """Exact dataset-mean cross-entropy and accuracy (float64 sums over chunks)."""
    if len(y) == 0:
        return None
    model.eval()
    loss = torch.zeros((), dtype=torch.float64, device=x.device)
    correct = torch.zeros((), dtype=torch.int64, device=x.device)
    for i in range(0, len(y), _EVAL_BATCH):
        out = model(x[i : i + _EVAL_BATCH])
        yb = y[i : i + _EVAL_BATCH]
        loss += F.cross_entropy(out.double(), yb, reduction="sum")
        correct += (out.argmax(dim=1) == yb).sum()
    return loss.item() / len(y), correct.item() / len(y)


def _record(epoch: int, step: int, lr: float, model: nn.Module, tensors: tuple) -> dict[str, Any]:
    x_train, y_train, x_test, y_test = tensors
    rec: dict[str, Any] = {"epoch": epoch, "step": step, "lr": lr}
    for split, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        res = _evaluate(model, x, y)
        rec[f"{split}_loss"], rec[f"{split}_acc"] = res if res is not None else (None, None)
    return rec
