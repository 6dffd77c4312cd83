"""Losses as sums over counted units: how a loss over a whole dataset is formed exactly.

A batch's loss is a pair ``(Σ value, Σ count)``, and the dataset's loss is

    L(θ) = Σ_batches Σ value / Σ_batches Σ count,

whatever the batch size, chunking or (later) the number of processes. The count is
the loss's own unit: examples for a classifier, valid tokens for a language model
(targets equal to ``ignore_index`` and masked positions count 0), the sum of the
weights for a weighted loss. A mean of batch means is not this when batches hold
different counts (a padded batch of short sequences), which is why basinscope never
forms one.

Write your own objective as a function ``fn(output, target) -> (sum, count)``: the
sum of the per-unit losses of the batch (differentiable in ``output``) and their
count (not depending on the weights). Give an ``accuracy=`` function of the same
shape (hits, count) to :class:`SumLoss` when the objective has an accuracy. The
built-in :class:`CrossEntropy` and :class:`MSE` are written this way; any
batch-mean loss (``nn.CrossEntropyLoss()``, ``F.mse_loss``, ...) is wrapped as a
:class:`MeanLoss`, whose count is the batch's number of examples (or, for torch's
cross-entropy and NLL with class weights or ignored targets, the weights of the
targets that count, as torch normalises them).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import BasinscopeError
from ._probes import _class_weights
from ._tree import length

Pair = tuple[Tensor, Tensor]


class Loss:
    """The protocol of an objective: ``loss(output, target) -> (Σ value, Σ count)``.

    ``count(target)`` gives the count from the targets alone (None: unknown, the
    Objective then runs one forward pass to find it); ``accuracy(output, target)``
    gives ``(hits, count)`` or None when the objective has no accuracy.
    """

    def __call__(self, output: Tensor, target: Any) -> Pair:
        raise NotImplementedError

    def count(self, target: Any) -> Tensor | None:
        return None

    def accuracy(self, output: Tensor, target: Any) -> Pair | None:
        return None

    def accuracy_count(self, target: Any) -> Tensor | None:
        return None

    def has_accuracy(self) -> bool:
        """Whether :meth:`accuracy` can return hits when ``accuracy_count`` gives None
        (the count then comes from one forward pass)."""
        return False

    def check(self, output: Tensor, target: Any) -> None:
        """Refuse targets that do not fit the outputs (on the probe's outputs and every
        target), before any work."""


def _part(target: Any, key: str | None, what: str) -> Tensor:
    """The tensor ``target[key]`` of a dict target, or the target itself."""
    if isinstance(target, Mapping):
        name = key or "labels"
        if name not in target:
            fields = ", ".join(repr(k) for k in target)
            raise BasinscopeError(
                f"the targets are a dict without {name!r} (fields {fields}); name the {what} "
                f"field: {what}='<field>'"
            )
        return target[name]
    if key is not None:
        raise BasinscopeError(
            f"{what}={key!r} names a field but the targets are one tensor, not a dict"
        )
    return target


def _classes_last(output: Tensor, t: Tensor, class_dim: int | None = None) -> Tensor:
    """Class scores ``[M, C]`` from ``[..., C]`` (classes last, as a language model gives)
    or torch's ``[N, C, d1, ...]`` layout, for targets ``t`` of shape ``[...]``; an output
    that fits both (``[N, C, C]``) needs ``class_dim``."""
    last = output.ndim == t.ndim + 1 and output.shape[:-1] == t.shape
    first = output.ndim == t.ndim + 1 and output.shape[:1] + output.shape[2:] == t.shape
    if last and first and output.ndim > 2 and class_dim is None:
        raise BasinscopeError(
            f"the model's outputs of shape {list(output.shape)} fit targets "
            f"{list(t.shape)} with the classes on dim 1 (torch's [N, C, T]) and on the last "
            "dim (a language model's [N, T, C]); say which: CrossEntropy(class_dim=1) or "
            "CrossEntropy(class_dim=-1)"
        )
    if last and class_dim in (None, -1, output.ndim - 1):
        return output.reshape(-1, output.shape[-1])
    if first and class_dim in (None, 1):
        return output.movedim(1, -1).reshape(-1, output.shape[1])
    raise BasinscopeError(
        f"the model's outputs of shape {list(output.shape)} do not fit targets of shape "
        f"{list(t.shape)}: cross-entropy needs class scores [..., C] (or [N, C, ...]) for "
        "targets [...]"
    )


class CrossEntropy(Loss):
    """Cross-entropy summed over the targets that count, for classifiers and language models.

    ``Σ value = Σ_i m_i ℓ_i``, ``Σ count = Σ_i m_i w_{y_i}`` over every target ``i``
    (every example of a classifier, every token of a language model), where ``ℓ_i``
    is torch's per-target loss (``reduction='none'``, with class weights ``w`` and
    label smoothing), ``m_i`` is 0 for ``y_i = ignore_index`` and otherwise the
    mask's value (1 without a mask). The ratio is exactly torch's
    ``reduction='mean'`` on the whole dataset at once. Accuracy counts argmax hits
    among the targets that count (token accuracy for a language model).

    Args:
        weight: class weights ``[C]``.
        ignore_index: targets with this value count 0 (padding).
        label_smoothing: as torch's.
        target: for dict targets, the field holding the class indices
            (default ``"labels"``).
        mask: for dict targets, a field of per-target weights (an attention mask).
        class_dim: where the class scores are, ``1`` (torch's ``[N, C, ...]``) or
            ``-1`` (``[..., C]``); needed only when the outputs fit both.
    """

    def __init__(
        self,
        weight: Tensor | None = None,
        ignore_index: int = -100,
        label_smoothing: float = 0.0,
        target: str | None = None,
        mask: str | None = None,
        class_dim: int | None = None,
    ):
        if class_dim not in (None, 1, -1):
            raise BasinscopeError(f"class_dim must be 1 or -1, got {class_dim!r}")
        self.weight = weight
        self.ignore_index = int(ignore_index)
        self.label_smoothing = float(label_smoothing)
        self.target = target
        self.mask = mask
        self.class_dim = class_dim

    def __repr__(self) -> str:
        extra = [
            f"{k}={v!r}"
            for k, v in vars(self).items()
            if v is not None
            and not (k == "ignore_index" and v == -100)
            and not (k == "label_smoothing" and v == 0.0)
        ]
        return f"CrossEntropy({', '.join(extra)})"

    def _weights(self, target: Any) -> tuple[Tensor, Tensor]:
        """``(y, m_i w_{y_i})`` flattened over every target."""
        t = _part(target, self.target, "target").reshape(-1)
        valid = t != self.ignore_index
        c = valid.to(torch.float64)
        if self.weight is not None:
            w = self.weight.detach().to(t.device, torch.float64)
            c = c * w[torch.where(valid, t, 0)]
        if self.mask is not None:
            c = c * _part(target, self.mask, "mask").reshape(-1).to(torch.float64)
        return t, c

    def __call__(self, output: Tensor, target: Any) -> Pair:
        t, c = self._weights(target)
        logits = _classes_last(output, _part(target, self.target, "target"), self.class_dim)
        weight = None if self.weight is None else self.weight.to(logits.device, logits.dtype)
        per = F.cross_entropy(
            logits,
            t,
            weight=weight,
            ignore_index=self.ignore_index,
            reduction="none",
            label_smoothing=self.label_smoothing,
        )
        if self.mask is not None:
            per = per * _part(target, self.mask, "mask").reshape(-1).to(per.dtype)
        per = torch.where(t != self.ignore_index, per, torch.zeros_like(per))
        return per.to(torch.float64).sum(), c.sum()

    def count(self, target: Any) -> Tensor:
        return self._weights(target)[1].sum()

    def check(self, output: Tensor, target: Any) -> None:
        t = _part(target, self.target, "target")
        if t.is_floating_point() or t.is_complex():
            raise BasinscopeError(
                f"CrossEntropy takes class indices but the targets are {str(t.dtype)[6:]}: "
                "pass integer labels (y.long())"
            )
        probe = _part(target, self.target, "target")[: len(output)]
        logits = _classes_last(output, probe, self.class_dim)
        classes = logits.shape[-1]
        bad = (t != self.ignore_index) & ((t < 0) | (t >= classes))
        if bool(bad.any()):
            label = int(t[bad][0])
            raise BasinscopeError(
                f"the targets hold label {label} but the model has {classes} outputs; "
                f"CrossEntropy needs class indices in [0, {classes - 1}] (or ignore_index "
                f"{self.ignore_index})"
            )

    def _hit_mask(self, target: Any) -> tuple[Tensor, Tensor]:
        t = _part(target, self.target, "target").reshape(-1)
        counted = t != self.ignore_index
        if self.mask is not None:
            counted &= _part(target, self.mask, "mask").reshape(-1) != 0
        return t, counted

    def accuracy(self, output: Tensor, target: Any) -> Pair:
        t, counted = self._hit_mask(target)
        logits = _classes_last(output, _part(target, self.target, "target"), self.class_dim)
        hits = (logits.argmax(-1) == t) & counted
        return hits.sum().to(torch.float64), counted.sum().to(torch.float64)

    def accuracy_count(self, target: Any) -> Tensor:
        return self._hit_mask(target)[1].sum().to(torch.float64)


class MSE(Loss):
    """Squared error, as torch's ``mse_loss`` averages it over the dataset.

    Without a mask: ``Σ value = Σ_i mean_j (f_ij − y_ij)²`` over examples ``i`` (the
    mean over each example's elements ``j``), ``Σ count = N``. With ``mask`` (a dict
    target's field of per-element weights ``m_ij``): ``Σ_ij m_ij (f_ij − y_ij)²`` and
    ``Σ_ij m_ij``. No accuracy.
    """

    def __init__(self, target: str | None = None, mask: str | None = None):
        self.target = target
        self.mask = mask

    def __repr__(self) -> str:
        return "MSE()" if self.target is None and self.mask is None else f"MSE({vars(self)})"

    def __call__(self, output: Tensor, target: Any) -> Pair:
        t = _part(target, self.target, "target")
        sq = (output - t.to(output.dtype)) ** 2
        if self.mask is not None:
            m = _part(target, self.mask, "mask").to(sq.dtype).expand_as(sq)
            return (sq * m).to(torch.float64).sum(), m.sum().to(torch.float64)
        per = sq.reshape(len(sq), -1).mean(1) if sq.ndim > 1 else sq
        return per.to(torch.float64).sum(), torch.tensor(float(len(sq)), dtype=torch.float64)

    def check(self, output: Tensor, target: Any) -> None:
        t = _part(target, self.target, "target")
        if output.shape[1:] != t.shape[1:]:
            raise BasinscopeError(
                f"the model's outputs have shape {list(output.shape)[1:]} per example but the "
                f"targets {list(t.shape)[1:]}; MSE needs targets of the outputs' shape"
            )

    def count(self, target: Any) -> Tensor:
        t = _part(target, self.target, "target")
        if self.mask is not None:
            return _part(target, self.mask, "mask").to(torch.float64).expand_as(t).sum()
        return torch.tensor(float(len(t)), dtype=torch.float64)


def check_reduction(loss_fn: Any) -> None:
    """Refuse a torch loss whose ``reduction`` is not a mean over the batch's examples.

    Accepted: ``"mean"`` and :class:`torch.nn.KLDivLoss`'s ``"batchmean"`` (the sum
    over every element divided by the batch size ``B``: the mean over the batch of each
    example's sum over its non-batch dimensions), which :class:`MeanLoss` turns into the
    batch's sum ``B · value`` and count ``B``, so that the dataset's loss ``Σ sum / N``
    is exact for every batch size. Refused in one sentence: ``"sum"``, ``"none"`` and
    any other. A :class:`Loss` gives its own sum and count and is never refused.
    """
    reduction = getattr(loss_fn, "reduction", "mean")
    if isinstance(loss_fn, Loss) or reduction in ("mean", "batchmean"):
        return
    raise BasinscopeError(
        f"loss_fn has reduction={reduction!r}; basinscope needs a batch-mean loss "
        "(reduction='mean', or reduction='batchmean' of nn.KLDivLoss) to form exact "
        "dataset means"
    )


class MeanLoss(Loss):
    """A batch-mean loss ``loss_fn(output, target) -> scalar`` as a sum and a count.

    ``Σ value = count · loss_fn(output, target)``, ``Σ count`` = the number of
    examples, or for torch's cross-entropy and NLL losses with class weights ``w`` or
    ignored targets ``Σ_i w_{y_i}`` over the targets not ignored (torch's own
    denominator). ``nn.KLDivLoss(reduction="batchmean")`` divides by the number of
    examples too, so ``Σ value`` is its sum over every element. Accuracy: argmax hits
    for class scores ``[N, C]`` and integer targets ``[N]`` (ignored targets not
    counted); none otherwise.
    """

    def __init__(self, loss_fn: Callable[[Tensor, Tensor], Tensor]):
        self.loss_fn = loss_fn
        spec = _class_weights(loss_fn)
        self._spec = spec

    def __repr__(self) -> str:
        return f"MeanLoss({self.loss_fn!r})"

    def _weighted(self, target: Any) -> bool:
        return (
            self._spec is not None
            and torch.is_tensor(target)
            and not (target.is_floating_point() or target.is_complex())
        )

    def count(self, target: Any) -> Tensor:
        if not self._weighted(target):
            return torch.tensor(float(length(target, "targets")), dtype=torch.float64)
        assert self._spec is not None
        weight, ignore = self._spec
        valid = target != ignore
        if weight is None:
            return valid.sum().to(torch.float64)
        w = weight.detach().to(target.device, torch.float64)
        return (w[torch.where(valid, target, 0)] * valid).sum()

    def __call__(self, output: Tensor, target: Any) -> Pair:
        count = self.count(target)
        value = self.loss_fn(output, target)
        value = value.to(torch.float64)
        if self._weighted(target):  # a chunk whose targets are all ignored: 0/0 in torch
            value = torch.where(count > 0, value, torch.zeros_like(value))
        return value * count, count

    def _classes(self, output: Tensor, target: Any) -> bool:
        return (
            torch.is_tensor(target)
            and output.ndim == 2
            and output.shape[1] > 1
            and target.ndim == 1
            and not (target.is_floating_point() or target.is_complex())
        )

    def accuracy(self, output: Tensor, target: Any) -> Pair | None:
        if not self._classes(output, target):
            return None
        hits = output.argmax(dim=1) == target
        counted = torch.ones_like(hits)
        if self._spec is not None:
            counted = target != self._spec[1]
        return (hits & counted).sum().to(torch.float64), counted.sum().to(torch.float64)

    def accuracy_count(self, target: Any) -> Tensor | None:
        if not torch.is_tensor(target) or target.ndim != 1 or target.is_floating_point():
            return None
        if self._spec is not None and not (target.is_floating_point() or target.is_complex()):
            return (target != self._spec[1]).sum().to(torch.float64)
        return torch.tensor(float(len(target)), dtype=torch.float64)


class SumLoss(Loss):
    """A user's objective ``fn(output, target) -> (sum, count)`` (see the module docstring).

    Args:
        fn: returns the batch's summed loss (differentiable in ``output``) and its
            count (a number or tensor that does not depend on the weights).
        accuracy: optionally ``accuracy(output, target) -> (hits, count)``.
        count: optionally ``count(target) -> count`` (saves one forward pass).
    """

    def __init__(
        self,
        fn: Callable[[Tensor, Any], tuple[Any, Any]],
        accuracy: Callable[[Tensor, Any], tuple[Any, Any]] | None = None,
        count: Callable[[Any], Any] | None = None,
    ):
        self.fn, self._accuracy, self._count = fn, accuracy, count

    def __repr__(self) -> str:
        return f"SumLoss({getattr(self.fn, '__qualname__', self.fn)!r})"

    def __call__(self, output: Tensor, target: Any) -> Pair:
        got = self.fn(output, target)
        return _pair(got, "loss_fn")

    def count(self, target: Any) -> Tensor | None:
        if self._count is None:
            return None
        got = self._count(target)
        try:
            c = torch.as_tensor(got, dtype=torch.float64).cpu().reshape(())
        except (TypeError, ValueError, RuntimeError) as err:
            raise BasinscopeError(
                f"count(...) must return a number, got a {type(got).__name__}"
            ) from err
        if not (math.isfinite(float(c)) and float(c) >= 0):
            raise BasinscopeError(
                f"count(...) returns {float(c)}; a count must be finite and not negative"
            )
        return c

    def has_accuracy(self) -> bool:
        return self._accuracy is not None

    def accuracy(self, output: Tensor, target: Any) -> Pair | None:
        if self._accuracy is None:
            return None
        return _pair(self._accuracy(output, target), "accuracy")


def _pair(got: Any, what: str) -> Pair:
    """``(sum, count)`` of a user's function: the sum a scalar tensor, the count float64."""
    if not isinstance(got, tuple | list) or len(got) != 2:
        raise BasinscopeError(f"{what} must return a pair (sum, count), got a {type(got).__name__}")
    total, count = got
    if not torch.is_tensor(total) or total.numel() != 1:
        shape = list(total.shape) if torch.is_tensor(total) else type(total).__name__
        raise BasinscopeError(f"{what} must return a scalar tensor as its sum, got {shape}")
    return total.reshape(()), torch.as_tensor(count, dtype=torch.float64).reshape(())


def classification_loss(targets: Any) -> Any:
    """The cross-entropy of a built-in dataset's targets: torch's ``nn.CrossEntropyLoss()``
    for class labels ``[N]`` (the classifiers' loss, as their resumable files are
    keyed), :class:`CrossEntropy` over every counted token for sequences ``[N, T]``."""
    from torch import nn

    if torch.is_tensor(targets) and targets.ndim == 1:
        return nn.CrossEntropyLoss()
    return CrossEntropy()


def as_loss(loss_fn: Any, output: Tensor, target: Any) -> Loss:
    """The :class:`Loss` of what the user gave: a Loss itself; a function returning a pair
    ``(sum, count)`` on the probe's outputs as a :class:`SumLoss`; a batch-mean loss
    returning a scalar as a :class:`MeanLoss`."""
    if isinstance(loss_fn, Loss):
        return loss_fn
    got = loss_fn(output, target)
    if isinstance(got, tuple | list):
        _pair(got, "loss_fn")
        return SumLoss(loss_fn)
    return MeanLoss(loss_fn)
