"""What an engine reads (:class:`Batches`), what an engine is (:class:`Engine`), and the
reference engine every other one must agree with (:class:`PlainEngine`).

An engine evaluates the points ``origin + Σ_j coef[k, j] · dirs[j]`` of a line, a
plane or a set of rays; the Objective's :class:`~basinscope.objective.Plan`
chooses which one runs. Engines read nothing of the Objective but its Batches:
the private model copy, the space, the loss, the data in chunks and the exact
float64 reduction. A data shard with an all-reduce, or a loss whose count is not
the number of examples (tokens), is a change of Batches only.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from ..errors import BasinscopeError
from ._losses import Loss
from ._space import ParamSpace
from ._tree import Tree, functional, length, select_output, take

# Elements of θ formed at once by the plain engine (64 MB in float32).
_POINTS_BLOCK = 2**24


class Batches:
    """The data of an Objective in chunks, its model and loss, and the exact reduction.

    ``L(θ) = Σ_chunks Σ value / Σ_chunks Σ count`` for the loss's ``(Σ value, Σ count)``
    on each chunk (see :mod:`basinscope.objective._losses`): the count is examples
    for a classifier, valid tokens for a token-level loss, the weights for a
    weighted one. The totals are the loss's count of the whole dataset (from the
    targets alone, or for a user's objective without a ``count``, from one forward
    pass at ``θ0``), so a chunk's differentiable share is its sum over the total.
    Accuracy is the objective's metric ``(hits, count)`` reduced the same way, NaN
    when the objective has none.

    Attributes:
        model: the Objective's private model copy (eval mode, never written to).
        space, theta0, device, dtype, batch_size: as the Objective's.
        loss: the :class:`~basinscope.objective.Loss`; ``loss_fn``: what the user gave.
        output: which part of the model's return value the loss reads.
        x, y: the evaluation inputs and targets (tensors, tuples or dicts of them);
            ``n_examples`` their number of examples.
        cache: engines' per-data memory (e.g. the first layer's outputs); a new
            Batches starts empty.
    """

    def __init__(
        self,
        model: nn.Module,
        space: ParamSpace,
        loss: Loss,
        theta0: Tensor,
        x: Tree,
        y: Tree,
        *,
        batch_size: int,
        device: torch.device,
        dtype: torch.dtype,
        output: Any = None,
        loss_fn: Any = None,
    ):
        self.model, self.space, self.loss, self.theta0 = model, space, loss, theta0
        self.loss_fn = loss if loss_fn is None else loss_fn
        self.output = output
        self.x, self.y = x, y
        self.batch_size, self.device, self.dtype = batch_size, device, dtype
        self.cache: dict[str, Any] = {}
        self._totals: tuple[float, float] | None = None
        # A data shard of a process group reduces to its raw sums (the ranks' sums are
        # added before the one division by the totals).
        self.raw = False

    def on(self, x: Tree, y: Tree) -> Batches:
        """The same model, space and loss on other (already prepared) data."""
        return Batches(
            self.model,
            self.space,
            self.loss,
            self.theta0,
            x,
            y,
            batch_size=self.batch_size,
            device=self.device,
            dtype=self.dtype,
            output=self.output,
            loss_fn=self.loss_fn,
        )

    @property
    def n_examples(self) -> int:
        return length(self.x, "inputs")

    @property
    def totals(self) -> tuple[float, float]:
        """``(Σ count of the loss, Σ count of the accuracy)`` over the whole dataset.

        From the targets alone when the loss can count them; otherwise from one
        forward pass at ``θ0``. A dataset that counts nothing is refused.
        """
        if self._totals is None:
            count, acc = self.loss.count(self.y), self.loss.accuracy_count(self.y)
            if count is None or (acc is None and self.loss.has_accuracy()):
                count, acc = self._counted_totals()
            total = float(count)
            if not total > 0:
                spec = getattr(self.loss, "_spec", None)
                ignore = getattr(self.loss, "ignore_index", spec[1] if spec else None)
                what = "" if ignore is None else f" {ignore}"
                raise BasinscopeError(
                    f"every target is ignore_index{what} (or masked, or of weight 0): the "
                    "targets count nothing, so there is nothing to evaluate"
                )
            self._totals = (total, math.nan if acc is None else float(acc))
        return self._totals

    @torch.no_grad()
    def _counted_totals(self) -> tuple[Tensor, Tensor | None]:
        """The totals from one forward pass (a user's objective without ``count``)."""
        params = self.space.unflatten(self.theta0)
        count = torch.zeros((), dtype=torch.float64)
        acc: Tensor | None = torch.zeros((), dtype=torch.float64)
        for x, y in self.chunks():
            out = self.forward(params, x)
            count += self.loss(out, y)[1].detach().cpu()
            hit = self.loss.accuracy(out, y)
            acc = None if hit is None or acc is None else acc + hit[1].detach().cpu()
        return count, acc

    def chunks(self) -> Iterator[tuple[Tree, Tree]]:
        """``(x, y)`` chunks of ``batch_size`` examples, in order."""
        for s in range(0, self.n_examples, self.batch_size):
            part = slice(s, s + self.batch_size)
            yield take(self.x, part), take(self.y, part)

    def forward(self, params: dict[str, Tensor], x: Tree) -> Tensor:
        """The tensor the loss reads from the private model's output on ``x`` with
        ``params`` (the other parameters and buffers its own)."""
        return select_output(functional(self.model, params, x), self.output)

    def chunk_loss(self, params: dict[str, Tensor], x: Tree, y: Tree) -> Tensor:
        """This chunk's share of the dataset's loss, differentiable in ``params``.

        ``Σ value(chunk) / Σ count(dataset)``, so the sum over :meth:`chunks` is
        ``L(θ)``; a chunk that counts nothing gives a zero that still depends on
        ``params``.
        """
        total, _ = self.loss(self.forward(params, x), y)
        return total / self.totals[0]

    def stats(self, out: Tensor, y: Tree) -> tuple[Tensor, Tensor]:
        """``(Σ value, hits)`` of one chunk, in float64, on the chunk's device.

        Summed over chunks and divided by :attr:`totals` (:meth:`reduce`), they give
        the dataset's loss and accuracy whatever the chunks.
        """
        value = self.loss(out, y)[0].to(torch.float64)
        hit = self.loss.accuracy(out, y)
        if hit is None:
            return value, torch.tensor(math.nan, dtype=torch.float64, device=value.device)
        return value, hit[0].to(device=value.device, dtype=torch.float64)

    def reduce(self, loss_sum: Tensor, correct: Tensor) -> tuple[Tensor, Tensor]:
        """Sums of :meth:`stats` over all chunks -> ``(loss, accuracy)``, on the CPU (a
        shard's :attr:`raw` sums, undivided)."""
        if self.raw:
            return loss_sum.cpu(), correct.cpu()
        count, acc = self.totals
        return (loss_sum / count).cpu(), (correct / acc if acc > 0 else correct * math.nan).cpu()


class Engine(Protocol):
    """A way to evaluate the points ``origin + Σ_j coef[k, j] · dirs[j]``.

    ``evaluate(batches, coef[K, m], dirs[m, n], origin[n]) -> (loss[K], acc[K])``,
    float64 on the CPU, the same numbers as :class:`PlainEngine` gives (to
    rounding), and each point's value independent of the other points asked for (the
    vmap engine: independent of them at the same place in its block of ``block``
    points, which is how a process group splits its points).
    """

    name: str

    def evaluate(
        self, batches: Batches, coef: Tensor, dirs: Tensor, origin: Tensor
    ) -> tuple[Tensor, Tensor]: ...


class PlainEngine:
    """The reference: each point formed whole and run through the whole network."""

    name = "plain"

    @torch.no_grad()
    def evaluate(
        self, batches: Batches, coef: Tensor, dirs: Tensor, origin: Tensor
    ) -> tuple[Tensor, Tensor]:
        # Points are formed a block at a time (a [K, n] matrix of whole points
        # can be large) and elementwise, so each point's value is the same
        # whatever the number of points asked for at once.
        block = max(1, _POINTS_BLOCK // batches.space.n)
        results = [
            evaluate_points(batches, combine(origin, coef[s : s + block], dirs))
            for s in range(0, len(coef), block)
        ]
        return torch.cat([r[0] for r in results]), torch.cat([r[1] for r in results])

    def __repr__(self) -> str:
        return "PlainEngine()"


@torch.no_grad()
def evaluate_points(batches: Batches, points: Tensor) -> tuple[Tensor, Tensor]:
    """Exact dataset-mean ``(loss[K], accuracy[K])`` at each row of ``points[K, n]``."""
    loss = torch.zeros(len(points), dtype=torch.float64, device=batches.device)
    correct = torch.zeros_like(loss)
    for x, y in batches.chunks():
        for k in range(len(points)):
            out = batches.forward(batches.space.unflatten(points[k]), x)
            dl, dc = batches.stats(out, y)
            loss[k] += dl
            correct[k] += dc
    return batches.reduce(loss, correct)


def combine(origin: Tensor, coef: Tensor, dirs: Tensor) -> Tensor:
    """``origin + Σ_j coef[:, j] · dirs[j]`` as ``[K, n]``, elementwise (row k never
    depends on the other rows, unlike a matrix product whose kernel may vary with K)."""
    points = origin.repeat(len(coef), 1)
    for j in range(len(dirs)):
        points += coef[:, j : j + 1] * dirs[j]
    return points
