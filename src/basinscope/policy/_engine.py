"""The engine that evaluates a return objective at many weight points at once.

:class:`RolloutEngine` forms ``B`` points ``θ0 + Σ_j c_j d_j`` at a time and rolls
out every episode of every point together (:meth:`Rollout.returns_at`): one
environment step for all ``B·E`` episodes and one vmapped policy call per time
step, instead of one Python loop of ``T`` steps per point. The plan
(:func:`basinscope.objective.make_plan`) verifies it against the plain engine
before using it; each point's return is its own episodes' (the sum over episodes
is the exact float64 reduction of the other engines).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..objective import Batches
from ..objective._engine import combine
from ..objective._vmap import _stacked


class RolloutEngine:
    """``B`` weight points × all their episodes per batched rollout (see the module)."""

    name = "rollout"

    def __init__(self, block: int = 64) -> None:
        self.block = int(block)

    def __repr__(self) -> str:
        return f"RolloutEngine(block={self.block})"

    @torch.no_grad()
    def evaluate(
        self, batches: Batches, coef: Tensor, dirs: Tensor, origin: Tensor
    ) -> tuple[Tensor, Tensor]:
        """``(loss[K], acc[K])`` at ``origin + Σ_j coef[k, j] dirs[j]``, float64."""
        loss = torch.zeros(len(coef), dtype=torch.float64, device=batches.device)
        correct = torch.zeros_like(loss)
        for s in range(0, len(coef), self.block):
            points = combine(origin, coef[s : s + self.block], dirs)
            params = _stacked(batches.space, points)
            for x, y in batches.chunks():
                returns = batches.model.returns_at(params, x)
                for k in range(len(points)):
                    dl, dc = batches.stats(returns[k], y)
                    loss[s + k] += dl
                    correct[s + k] += dc
        return batches.reduce(loss, correct)
