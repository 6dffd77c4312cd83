"""The BatchNorm-recomputing engine: running statistics re-estimated at every point.

At a point θ the running mean and variance of every BatchNorm layer are reset
and re-estimated from the batches of the statistics data in train mode (batches
of its ``batch_size``, averaged with weights proportional to their sizes, so the
mean is the dataset's; SWA's ``update_bn`` weights batches equally), with every
other module left in eval mode (dropout off); the point is then evaluated in
eval mode with those statistics. Without it a point far from θ0 is evaluated
with θ0's statistics, which can make a basin look sharper than it is
(Izmailov et al. 2018; Garipov et al. 2018).

**Cost:** one extra forward pass over the statistics data per point, and every
point runs the whole network (the first-layer shortcut does not apply): roughly
``1 + |data|/|eval data|`` times the plain evaluation of the point.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..errors import BasinscopeError
from ._engine import Batches
from ._tree import take


def batchnorm_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The BatchNorm layers of ``model`` that track running statistics, by path;
    refused with one sentence when there are none."""
    bn = {
        name: m
        for name, m in model.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    }
    if not bn:
        raise BasinscopeError(
            "update_bn needs a model with BatchNorm layers that track running statistics"
        )
    return bn


class BatchNormEngine:
    """Each point evaluated with BatchNorm statistics re-estimated on ``data``.

    At a point θ the running mean and variance of every BatchNorm layer are
    reset and re-estimated from the batches of ``data`` in train mode (batches
    of ``batch_size``, averaged with weights proportional to their sizes, so
    the mean is the dataset's; SWA's ``update_bn`` weights batches equally),
    with every other module left in eval mode (dropout off); the point is then
    evaluated in eval mode with those statistics. Without it a point far from
    θ0 is evaluated with θ0's statistics, which can make a basin look sharper
    than it is (Izmailov et al. 2018; Garipov et al. 2018).

    **Cost:** one extra forward pass over ``data`` per point, and every point
    runs the whole network (the first-layer shortcut does not apply): roughly
    ``1 + |data|/|eval data|`` times the plain evaluation of the point.

    Args:
        data: the Batches the statistics are estimated on (the Objective's data or
            other data of the same model, e.g. ``obj.with_data(train).batches``).
    """

    name = "batchnorm"

    def __init__(self, data: Batches):
        self.bn = batchnorm_layers(data.model)
        self.data = data
        if data.n_examples < 2:
            raise BasinscopeError("update_bn needs at least 2 examples to estimate statistics")

    def __repr__(self) -> str:
        return f"BatchNormEngine({len(self.bn)} layers, {self.data.n_examples} examples)"

    def _batches(self) -> list[tuple[Any, int]]:
        """The inputs in batches of ``batch_size`` with their sizes; a last batch of one
        example (which BatchNorm cannot normalise in train mode) joins the one before."""
        x, size, n = self.data.x, self.data.batch_size, self.data.n_examples
        starts = list(range(0, n, size))
        if len(starts) > 1 and n - starts[-1] == 1:
            starts.pop()
        ends = starts[1:] + [n]
        return [(take(x, slice(a, b)), b - a) for a, b in zip(starts, ends, strict=True)]

    def _buffers(self, params: dict[str, Tensor]) -> dict[str, Tensor]:
        """The re-estimated running statistics at the parameters ``params``."""
        buffers: dict[str, Tensor] = {}
        for name, m in self.bn.items():
            prefix = f"{name}." if name else ""
            buffers[prefix + "running_mean"] = torch.zeros_like(m.running_mean)
            buffers[prefix + "running_var"] = torch.ones_like(m.running_var)
            buffers[prefix + "num_batches_tracked"] = torch.zeros_like(m.num_batches_tracked)
        saved = {name: (m.training, m.momentum) for name, m in self.bn.items()}
        try:
            for m in self.bn.values():
                m.train()
            seen = 0
            for x, size in self._batches():
                # momentum b/seen (seen counts this batch): the running mean is the
                # size-weighted mean of the batch means, i.e. the dataset mean; the
                # variance is the size-weighted mean of the batch variances.
                seen += size
                for m in self.bn.values():
                    m.momentum = size / seen
                self.data.forward({**params, **buffers}, x)
        finally:
            for name, m in self.bn.items():
                m.train(saved[name][0])
                m.momentum = saved[name][1]
        return buffers

    def evaluate(
        self, batches: Batches, coef: Tensor, dirs: Tensor, origin: Tensor
    ) -> tuple[Tensor, Tensor]:
        """``(loss[K], acc[K])`` on ``batches`` at ``origin + Σ_j coef[k, j] dirs[j]``."""
        return self.evaluate_each([batches], coef, dirs, origin)[0]

    @torch.no_grad()
    def evaluate_each(
        self, each: list[Batches], coef: Tensor, dirs: Tensor, origin: Tensor
    ) -> list[tuple[Tensor, Tensor]]:
        """``(loss[K], acc[K])`` on each Batches' data, one re-estimation per point."""
        space = each[0].space
        sums = [
            (
                torch.zeros(len(coef), dtype=torch.float64),
                torch.zeros(len(coef), dtype=torch.float64),
            )
            for _ in each
        ]
        for k, c in enumerate(coef.tolist()):
            theta = origin.clone()
            for j, cj in enumerate(c):
                if cj != 0:
                    theta.add_(dirs[j], alpha=cj)
            params = space.unflatten(theta)
            full = {**params, **self._buffers(params)}
            for b, (loss, correct) in zip(each, sums, strict=True):
                for x, y in b.chunks():
                    dl, dc = b.stats(b.forward(full, x), y)
                    loss[k] += float(dl)
                    correct[k] += float(dc)
        return [b.reduce(loss, correct) for b, (loss, correct) in zip(each, sums, strict=True)]
