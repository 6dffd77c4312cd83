"""``Objective.describe()``: what an Objective's numbers mean, for a person to read.

A number is trustworthy when its definition is the one the reader has in mind: the
loss's unit (examples, valid tokens, weights) and its count, the metric (accuracy
over which units, or none), the data the sums run over, the engine that evaluates
lines and planes (and why faster ones were refused), and which checks passed.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from ._losses import MSE, CrossEntropy, MeanLoss, SumLoss
from ._tree import describe

if TYPE_CHECKING:
    from ._objective import Objective


def _unit(obj: Objective) -> str:
    loss = obj.criterion
    y = obj.y
    per_example = torch.is_tensor(y) and y.ndim == 1
    if isinstance(loss, CrossEntropy):
        unit = "examples" if per_example else "target tokens"
        extra = [f"ignore_index {loss.ignore_index} counts 0"]
        if loss.weight is not None:
            extra.append("weighted by class")
        if loss.mask is not None:
            extra.append(f"weighted by the mask {loss.mask!r}")
        return f"cross-entropy summed over {unit} ({', '.join(extra)})"
    if isinstance(loss, MSE):
        return "squared error" + (f", weighted by the mask {loss.mask!r}" if loss.mask else "")
    if isinstance(loss, MeanLoss):
        spec = loss._spec
        if spec is not None and not per_example:
            return (
                f"{loss.loss_fn!r}, a batch mean over its counted targets (ignore_index {spec[1]})"
            )
        what = "its counted targets" if spec is not None else "examples"
        return f"{loss.loss_fn!r}, a batch mean over {what}"
    if isinstance(loss, SumLoss):
        return f"the user's (sum, count) objective {loss!r}"
    return repr(loss)


def describe_objective(obj: Objective) -> str:
    """The lines of :meth:`Objective.describe`."""
    count, acc = obj.batches.totals
    plan = obj.plan
    lines = [
        f"loss: {_unit(obj)}; L(θ) = Σ value / Σ count with count {count:g} over "
        f"{obj.n_examples} examples (independent of batch_size {obj.batch_size})",
        "accuracy: none (NaN)"
        if math.isnan(acc)
        else f"accuracy: argmax hits over {acc:g} counted targets",
        f"data: inputs {describe(obj.x)}, targets {describe(obj.y)}; "
        f"{str(obj.dtype)[6:]} on {obj.device}",
        f"coordinates: {obj.n} ({len(obj.space.names)} tensors)",
        f"evaluation: {plan} (each engine verified against the plain one)",
        "curvature: double backward, attention on its math backend",
    ]
    if obj.output is not None:
        lines.insert(1, f"output: {obj.output!r} of the model's return value")
    return "\n".join(lines)
