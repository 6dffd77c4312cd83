"""BatchNorm running statistics recomputed at every point of a surface (``update_bn``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:
    from ..objective import Objective


class _BatchNormUpdate:
    """Recompute BatchNorm running statistics at each point, as SWA's ``update_bn`` does.

    At a point θ the running mean and variance of every BatchNorm layer are
    reset and re-estimated from the batches of ``data`` in train mode (batches
    of ``obj.batch_size``, averaged with weights proportional to their sizes, so
    the mean is the dataset's; SWA's ``update_bn`` weights batches equally),
    with every other module left in eval mode (dropout off); the point is then
    evaluated in eval mode with those statistics. Without it a point far from
    θ0 is evaluated with θ0's statistics, which can make a basin look sharper
    than it is (Izmailov et al. 2018; Garipov et al. 2018).

    **Cost:** one extra forward pass over ``data`` per point, and every point
    runs the whole network (the first-layer shortcut does not apply): roughly
    ``1 + |data|/|eval data|`` times the plain evaluation of the point.
    """

    def __init__(self, obj: Objective, data: Any):
        from torch import nn

        from ..errors import BasinscopeError

        self.bn = {
            name: m
            for name, m in obj.model.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
        }
        if not self.bn:
            raise BasinscopeError(
                "update_bn needs a model with BatchNorm layers that track running statistics"
            )
        self.data = obj.with_data(data)
        if self.data.n_examples < 2:
            raise BasinscopeError("update_bn needs at least 2 examples to estimate statistics")

    def _batches(self) -> list[Tensor]:
        """The data in batches of ``batch_size``; a last batch of one example (which
        BatchNorm cannot normalise in train mode) joins the one before it."""
        x, size = self.data.x, self.data.batch_size
        starts = list(range(0, len(x), size))
        if len(starts) > 1 and len(x) - starts[-1] == 1:
            starts.pop()
        ends = starts[1:] + [len(x)]
        return [x[a:b] for a, b in zip(starts, ends, strict=True)]

    def _buffers(self, obj: Objective, params: dict[str, Tensor]) -> dict[str, Tensor]:
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
            for x in self._batches():
                # momentum b/seen (seen counts this batch): the running mean is the size-weighted mean of
                # the batch means, i.e. the dataset mean; the variance is the
                # size-weighted mean of the batch variances.
                seen += len(x)
                for m in self.bn.values():
                    m.momentum = len(x) / seen
                obj._forward({**params, **buffers}, x)
        finally:
            for name, m in self.bn.items():
                m.train(saved[name][0])
                m.momentum = saved[name][1]
        return buffers

    @torch.no_grad()
    def evaluate(
        self, objs: list[Objective], coef: Tensor, dirs: Tensor, origin: Tensor
    ) -> list[tuple[Tensor, Tensor]]:
        """``(loss[K], acc[K])`` on each Objective's data at ``origin + coef @ dirs``."""
        first = objs[0]
        sums = [torch.zeros(2, len(coef), dtype=torch.float64) for _ in objs]
        for k, c in enumerate(coef.tolist()):
            theta = origin.clone()
            for j, cj in enumerate(c):
                if cj != 0:
                    theta.add_(dirs[j], alpha=cj)
            params = first.space.unflatten(theta)
            full = {**params, **self._buffers(first, params)}
            for o, acc in zip(objs, sums, strict=True):
                for x, y in o._chunks():
                    dl, dc = o._stats(o._forward(full, x), y)
                    acc[0, k] += float(dl)
                    acc[1, k] += float(dc)
        return [(a[0] / o.n_examples, a[1] / o.n_examples) for o, a in zip(objs, sums, strict=True)]
