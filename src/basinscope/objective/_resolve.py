"""Deciding and checking an Objective's loss on the probe's outputs, before any work."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ..errors import BasinscopeError
from ._losses import Loss, MeanLoss, as_loss
from ._probes import (
    _check_pair,
    check_loss,
    check_mean,
    check_output,
    check_targets,
    loss_failure,
    probe_rows,
)
from ._tree import leaves, take

if TYPE_CHECKING:
    from ._objective import Objective


def resolve_loss(obj: Objective) -> Loss:
    """The :class:`Loss` of ``loss_fn``, decided on the probe's outputs (a pair: a sum
    and a count; a scalar: a batch mean), with the targets and loss checked."""
    x, y = obj._probe_data()
    with torch.no_grad():
        out = obj._raw_forward(obj.space.unflatten(obj.theta0), x)
        check_output(out)
        mean_fn = obj.loss_fn.loss_fn if isinstance(obj.loss_fn, MeanLoss) else None
        if not isinstance(obj.loss_fn, Loss):
            mean_fn = obj.loss_fn
        if torch.is_tensor(obj.y) and mean_fn is not None:
            check_targets(mean_fn, obj.y, out)
        if isinstance(obj.loss_fn, Loss):
            loss: Loss = obj.loss_fn
        else:
            try:
                loss = as_loss(obj.loss_fn, out, y)
            except BasinscopeError:
                raise
            except Exception as err:
                raise BasinscopeError(loss_failure(out, y, err)) from err
        loss.check(out, obj.y)
        if isinstance(loss, MeanLoss):
            check_loss(loss.loss_fn, out, y)
        else:
            _check_pair(loss, out, y)
    return loss


def probe_mean(obj: Objective, params: dict[str, Tensor], out: Tensor) -> None:
    """Is the loss a mean over examples: tried on the first examples, the first one
    with an ignored target and the first ones of other labels (a few forwards)."""
    classes = int(out.shape[1]) if out.ndim >= 2 else 0
    labels = obj.y
    if not torch.is_tensor(labels):  # a dict's labels (else its first tensor) pick rows
        labels = labels.get("labels") if isinstance(labels, dict) else None
        labels = labels if torch.is_tensor(labels) else leaves(obj.y)[0]
    rows = probe_rows(labels, classes)
    if max(rows) < len(out):
        sample = out[rows]
    else:
        try:
            sample = obj.batches.forward(params, take(obj.x, torch.tensor(rows)))
        except Exception:  # a model that takes only some batch shapes: the first rows
            rows = rows[:3]
            sample = out[rows]
    check_mean(obj.criterion.loss_fn, sample, take(obj.y, torch.tensor(rows)))
