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

from collections.abc import Iterator
from typing import Any, Protocol

import torch
from torch import Tensor, nn
from torch.func import functional_call

from ..errors import BasinscopeError
from ._probes import _class_weights
from ._space import ParamSpace

# Elements of θ formed at once by the plain engine (64 MB in float32).
_POINTS_BLOCK = 2**24


class Batches:
    """The data of an Objective in chunks, its model and loss, and the exact reduction.

    ``L(θ) = Σ_chunks count(chunk) · mean(chunk) / Σ_chunks count(chunk)``: for most
    losses a chunk's count is its number of examples. torch's cross-entropy and NLL
    losses with class weights ``w`` or ignored targets average as
    ``Σ_i w_{y_i} ℓ_i / Σ_i w_{y_i}`` over the targets that are not ignored, so there
    the count is ``Σ_i w_{y_i}`` (ignored ones weigh 0); accuracy then counts only
    targets that are not ignored.

    Attributes:
        model: the Objective's private model copy (eval mode, never written to).
        space, loss_fn, theta0, device, dtype, batch_size: as the Objective's.
        x, y: the evaluation tensors; ``n_examples = len(x)``.
        cache: engines' per-data memory (e.g. the first layer's outputs); a new
            Batches starts empty.
    """

    def __init__(
        self,
        model: nn.Module,
        space: ParamSpace,
        loss_fn: Any,
        theta0: Tensor,
        x: Tensor,
        y: Tensor,
        *,
        batch_size: int,
        device: torch.device,
        dtype: torch.dtype,
    ):
        self.model, self.space, self.loss_fn, self.theta0 = model, space, loss_fn, theta0
        self.x, self.y = x, y
        self.batch_size, self.device, self.dtype = batch_size, device, dtype
        self.cache: dict[str, Any] = {}
        self._set_totals()

    def on(self, x: Tensor, y: Tensor) -> Batches:
        """The same model, space and loss on other (already prepared) tensors."""
        return Batches(
            self.model,
            self.space,
            self.loss_fn,
            self.theta0,
            x,
            y,
            batch_size=self.batch_size,
            device=self.device,
            dtype=self.dtype,
        )

    @property
    def n_examples(self) -> int:
        return len(self.x)

    def _set_totals(self) -> None:
        """The denominators of the dataset's loss and accuracy (see the class docstring)."""
        spec = _class_weights(self.loss_fn)
        y = self.y
        self._weighting: tuple[Tensor | None, int] | None = None
        if spec is not None and not (y.is_floating_point() or y.is_complex()):
            weight, ignore = spec
            if weight is not None or bool((y == ignore).any()):
                self._weighting = (
                    None if weight is None else weight.detach().to(y.device, torch.float64),
                    ignore,
                )
        if self._weighting is None:
            self._loss_total: float | int = self.n_examples
            self._acc_total: float | int = self.n_examples
            return
        valid = y != self._weighting[1]
        self._loss_total = float(self._count(y))
        self._acc_total = (
            int(valid.reshape(len(y), -1).all(1).sum()) if y.ndim > 1 else int(valid.sum())
        )
        if self._loss_total <= 0:
            raise BasinscopeError(
                f"every target is ignore_index {self._weighting[1]} (or has class weight 0); "
                "there is nothing to evaluate"
            )

    def _count(self, y: Tensor) -> Tensor:
        """``Σ_i w_{y_i}`` over the targets of ``y`` that are not ignored (float64)."""
        assert self._weighting is not None
        weight, ignore = self._weighting
        valid = y != ignore
        if weight is None:
            return valid.sum().to(torch.float64)
        return (weight[torch.where(valid, y, 0)] * valid).sum()

    def share(self, y: Tensor) -> float | None:
        """A chunk's weight in the dataset's loss, ``count / total``; None for none."""
        if self._weighting is None:
            return len(y) / self.n_examples
        count = float(self._count(y))
        return count / self._loss_total if count > 0 else None

    def chunks(self) -> Iterator[tuple[Tensor, Tensor]]:
        """``(x, y)`` chunks of ``batch_size`` examples, in order."""
        for s in range(0, len(self.x), self.batch_size):
            yield self.x[s : s + self.batch_size], self.y[s : s + self.batch_size]

    def forward(self, params: dict[str, Tensor], x: Tensor) -> Tensor:
        """The private model's output on ``x`` with ``params`` (the others its own)."""
        return functional_call(self.model, params, (x,), strict=False)

    def chunk_loss(self, params: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        """This chunk's share of the dataset-mean loss, differentiable in ``params``.

        ``share(y) · loss_fn(f(x; params), y)``, so the sum over :meth:`chunks` is
        ``L(θ)``. A chunk with no weight in the mean (every target ignored) gives a
        zero that still depends on ``params`` (its gradient is zero).
        """
        out = self.forward(params, x)
        share = self.share(y)
        if share is None:
            return (out * 0).sum()
        return self.loss_fn(out, y) * share

    def stats(self, out: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """(count × batch loss, number correct) for one chunk, in float64.

        The count is the batch mean's denominator (see :meth:`_count`), so the sum
        over chunks divided by the total count is the dataset's loss whatever the
        chunks.
        """
        value = self.loss_fn(out, y).to(torch.float64)
        if self._weighting is None:
            loss = value * len(y)
        else:  # a chunk whose targets are all ignored adds nothing (its mean is 0/0)
            count = self._count(y)
            loss = torch.where(count > 0, value * count, torch.zeros_like(value))
        if out.ndim == 2 and out.shape[1] > 1 and not y.is_floating_point():
            hits = out.argmax(dim=1) == y
            if self._weighting is not None:
                hits &= y != self._weighting[1]
            correct = hits.sum().to(torch.float64)
        else:
            correct = torch.tensor(float("nan"), dtype=torch.float64, device=out.device)
        return loss, correct

    def reduce(self, loss_sum: Tensor, correct: Tensor) -> tuple[Tensor, Tensor]:
        """Sums of :meth:`stats` over all chunks -> ``(loss, accuracy)``, on the CPU."""
        return (loss_sum / self._loss_total).cpu(), (correct / self._acc_total).cpu()


class Engine(Protocol):
    """A way to evaluate the points ``origin + Σ_j coef[k, j] · dirs[j]``.

    ``evaluate(batches, coef[K, m], dirs[m, n], origin[n]) -> (loss[K], acc[K])``,
    float64 on the CPU, the same numbers as :class:`PlainEngine` gives (to
    rounding), and each point's value independent of the other points asked for.
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
