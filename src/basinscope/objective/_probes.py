"""The checks an Objective runs once, before any work: finite weights, a model that
takes the data and returns one tensor, targets that fit the outputs and the loss,
a loss that is a mean over examples; and the descriptions of a loss they (and the resume
keys) use."""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import BasinscopeError


def _check_finite_model(model: nn.Module) -> None:
    """Refuse a model whose parameters or buffers hold NaN or inf (a diverged run)."""
    named = [("parameter", n, t) for n, t in model.named_parameters()]
    named += [("buffer", n, t) for n, t in model.named_buffers()]
    for kind, name, t in named:
        if (t.is_floating_point() or t.is_complex()) and not bool(torch.isfinite(t).all()):
            value = "NaN" if bool(t.isnan().any()) else "inf"
            raise BasinscopeError(
                f"the model's {kind} {name!r} holds {value} (a diverged run?); basinscope "
                "measures a model with finite weights"
            )


def check_output(out: Any) -> None:
    """Refuse a model whose forward returns no single tensor (a dict, a tuple, ...)."""
    if isinstance(out, Mapping | tuple | list) or not torch.is_tensor(out):
        kind = (
            f"a dict (keys {', '.join(repr(k) for k in list(out)[:4])})"
            if isinstance(out, Mapping)
            else f"a {type(out).__name__}"
        )
        raise BasinscopeError(
            f"the model returns {kind}; basinscope needs a model whose forward returns "
            "one tensor of outputs (selecting an output is not supported yet): wrap it "
            "to return that tensor"
        )


def forward_failure(model: nn.Module, x: Any, err: Exception) -> str:
    """The sentence for a model whose forward raises on the data ``x``."""
    if not torch.is_tensor(x):
        from ._tree import describe

        return (
            f"the model cannot evaluate the data: on inputs {describe(x)} its forward raises "
            f"{_error_line(err)}; give inputs the model takes"
        )
    first = next(
        (
            (path, m)
            for path, m in model.named_modules()
            if any(True for _ in m.parameters(recurse=False))
        ),
        None,
    )
    dtype = str(x.dtype)[6:]
    if not (x.is_floating_point() or x.is_complex()) and first is not None:
        path, module = first
        if not isinstance(module, nn.Embedding | nn.EmbeddingBag):
            return (
                f"the inputs are integers ({dtype}) but the model's first layer "
                f"{path or 'the model'!r} is a {type(module).__name__}, not an Embedding; "
                "convert them to floating point (X.float())"
            )
    return (
        f"the model cannot evaluate the data: on inputs of shape {list(x.shape)} "
        f"(examples of shape {list(x.shape[1:])}, {dtype}) its forward raises "
        f"{_error_line(err)}; give inputs of the shape and dtype the model takes"
    )


def check_targets(loss_fn: Any, y: Tensor, out: Tensor) -> None:
    """Targets that fit the outputs ``out`` (of the probe's examples) and the loss."""
    loss_name = _loss_name(loss_fn)
    integer = not (y.is_floating_point() or y.is_complex())
    classes = int(out.shape[1]) if out.ndim >= 2 else 0
    known = _class_loss(loss_fn)
    if known is not None and integer and classes:
        if y.ndim == 2 and y.shape[1] == 1 and out.ndim == 2:
            raise BasinscopeError(
                f"the targets have shape {list(y.shape)} but {loss_name} takes class "
                "indices of shape [N]: pass y.squeeze(1)"
            )
        bad = _bad_labels(y, classes, known)
        if bad is not None:
            i, label = bad
            raise BasinscopeError(
                f"the targets hold label {label} (example {i}) but the model has {classes} "
                f"outputs; {loss_name} needs class indices in [0, {classes - 1}]"
            )
    elif integer and out.ndim == 2 and classes > 1 and y.ndim == 1:
        # Another loss of class indices: a label it cannot take would fail on some
        # later chunk, mid-work; try the first such label now.
        bad = _bad_labels(y, classes, -100)
        if bad is not None:
            i, label = bad
            try:
                loss_fn(out[:1], y[i : i + 1])
            except Exception as err:
                raise BasinscopeError(
                    f"the targets hold label {label} (example {i}) but the model has "
                    f"{classes} outputs, and loss_fn fails on it ({_error_line(err)}); give "
                    f"labels in [0, {classes - 1}]"
                ) from err
    elif _elementwise_loss(loss_fn) and out.ndim >= 1 and out.shape[1:] != y.shape[1:]:
        raise BasinscopeError(
            f"the model's outputs have shape {_per_example(out)} but the targets "
            f"{_per_example(y)}; {loss_name} would broadcast one against the other: "
            "give targets of the outputs' shape"
        )


def check_loss(loss_fn: Any, out: Tensor, y: Tensor) -> None:
    """The loss takes the probe's outputs and targets and returns a scalar."""
    try:
        value = loss_fn(out, y)
    except Exception as err:
        raise BasinscopeError(loss_failure(out, y, err)) from err
    if not torch.is_tensor(value) or value.numel() != 1:
        got = f"shape {list(value.shape)}" if torch.is_tensor(value) else type(value).__name__
        raise BasinscopeError(f"loss_fn must return a scalar tensor (the batch mean), got {got}")


def probe_rows(y: Tensor, classes: int, first: int = 3, others: int = 3) -> list[int]:
    """The examples :func:`check_mean` tries: the ``first`` ones, the first example
    holding a label outside ``[0, classes)`` (an ignored target) and the first
    examples of up to ``others`` further labels (so that class weights show)."""
    rows = list(range(min(first, len(y))))
    if y.is_floating_point() or y.is_complex() or len(y) <= len(rows):
        return rows
    flat = y.reshape(len(y), -1)
    if y.ndim > 1:  # sequences: the rows with the fewest and the most ignored targets
        odd = (flat < 0).sum(1)
        for i in (int(odd.argmin()), int(odd.argmax())):
            if i not in rows:
                rows.append(i)
    if classes:
        odd = ((flat < 0) | (flat >= classes)).any(1).nonzero()
        if len(odd) and int(odd[0, 0]) not in rows:
            rows.append(int(odd[0, 0]))
    if y.ndim == 1:
        values, inverse = torch.unique(y, return_inverse=True)
        where = torch.arange(len(y), device=y.device)
        start = torch.full((len(values),), len(y), dtype=where.dtype, device=y.device)
        seen = set(int(v) for v in y[rows])
        for i in start.scatter_reduce(0, inverse, where, "amin").sort().values.tolist():
            if len(rows) >= first + others + 1:
                break
            if int(y[i]) not in seen:
                rows.append(i)
                seen.add(int(y[i]))
    return rows


def check_mean(loss_fn: Any, out: Tensor, y: Tensor) -> None:
    """Refuse a loss whose value on a batch is not the mean of its values on the examples.

    ``out``, ``y``: a few examples (:func:`probe_rows`). On a mean loss, the batch
    value is ``Σ_i c_i ℓ_i / Σ_i c_i`` of the examples' own values ``ℓ_i`` with
    ``c_i = 1`` (every torch loss with ``reduction='mean'``, label smoothing, a mean
    over elements), or ``c_i = Σ w_{y_i}`` over the targets not ignored for torch's
    cross-entropy and NLL losses with class weights or ``ignore_index`` (what
    :class:`~basinscope.objective.Batches` counts). A loss normalised by anything
    else (a sum, class weights or an ignored target in a plain function, a mask)
    gives another value, and its dataset value would depend on the chunking. Tried
    on the outputs as they are and paired with the next example's targets (so that
    equal outputs do not hide a weighting); a loss that fails on one example gives
    no verdict.
    """
    from ._tree import length, take

    k = length(y, "targets")
    if out.ndim == 0 or len(out) != k or k < 2:
        return
    counts = _example_counts(loss_fn, y) if torch.is_tensor(y) else [1.0] * k
    for o in (out, out.roll(1, 0)):
        try:
            whole = float(loss_fn(o, y))
            each = [float(loss_fn(o[i : i + 1], take(y, slice(i, i + 1)))) for i in range(k)]
        except Exception:
            return  # a loss that needs more examples at once: nothing to tell
        if not math.isfinite(whole):
            return  # overflow: no verdict
        _refuse_unless_mean(loss_fn, whole, each, counts, out.dtype)


def _refuse_unless_mean(
    loss_fn: Any, whole: float, each: list[float], counts: list[float], dtype: torch.dtype
) -> None:
    """The verdict of :func:`check_mean` on one batch: ``whole`` against ``each``."""
    k = len(each)
    kept = [(c, v) for c, v in zip(counts, each, strict=True) if c > 0]
    bad = next(
        (
            i
            for i, (c, v) in enumerate(zip(counts, each, strict=True))
            if c > 0 and not math.isfinite(v)
        ),
        None,
    )
    fix = (
        "use bs.CrossEntropy() (token-level, with ignore_index and masks), nn.CrossEntropyLoss "
        "or nn.NLLLoss (whose weight and ignore_index basinscope counts exactly), or give a "
        "function returning (sum, count)"
    )
    if bad is not None:
        raise BasinscopeError(
            f"loss_fn is not a mean over examples (on {k} examples it gives {whole:.6g} but "
            f"on example {bad} alone {each[bad]}: it divides by a count of its own, such as "
            f"weights, ignored targets or a mask), so its value over the dataset would "
            f"depend on batch_size; {fix}"
        )
    if not kept:
        return
    finite = [v for _, v in kept]
    total, lo, hi = sum(finite), min(finite), max(finite)
    rel = max(1e-5, 32 * torch.finfo(dtype).eps) if dtype.is_floating_point else 1e-5
    tol = rel * (abs(whole) + max(abs(lo), abs(hi))) + 1e-30
    if len(kept) >= 2 and abs(whole - total) <= tol and not lo - tol <= whole <= hi + tol:
        raise BasinscopeError(
            f"loss_fn sums over the batch (on {k} examples it gives {whole:.6g}, the sum "
            f"of their losses, not a mean within [{lo:.6g}, {hi:.6g}]), so its value "
            "would depend on batch_size; basinscope needs a batch-mean loss "
            "(reduction='mean')"
        )
    mean = sum(c * v for c, v in kept) / sum(c for c, _ in kept)
    if abs(whole - mean) > tol:
        raise BasinscopeError(
            f"loss_fn is not a mean over examples (on {k} examples it gives {whole:.6g}, "
            f"the mean of their own losses is {mean:.6g}: it weighs or normalises them by "
            f"a count of its own), so its value over the dataset would depend on "
            f"batch_size; {fix}"
        )


def _example_counts(loss_fn: Any, y: Tensor) -> list[float]:
    """Each example's weight ``c_i`` in a batch mean of ``loss_fn`` (see :func:`check_mean`)."""
    spec = _class_weights(loss_fn)
    if spec is None or y.is_floating_point() or y.is_complex():
        return [1.0] * len(y)
    weight, ignore = spec
    valid = y != ignore
    if weight is None:
        count = valid.to(torch.float64)
    else:
        w = weight.detach().to(y.device, torch.float64)
        count = w[torch.where(valid, y, 0)] * valid
    return count.reshape(len(y), -1).sum(1).tolist()


def _describe_callable(fn: Any, depth: int = 0) -> Any:
    """A JSON-able description of a loss: its class and settings, or its code and closure.

    Two losses with the same description compute the same function (a module's
    hyper-parameters and tensors, a function's byte code, constants and closed-over
    values, a ``functools.partial``'s arguments are all included).
    """
    from .._keys import tensor_digest

    if depth > 4:
        return repr(type(fn))
    if torch.is_tensor(fn):
        return tensor_digest(fn)
    if isinstance(fn, int | float | str | bool | type(None)):
        return fn
    if isinstance(fn, tuple | list):
        return [_describe_callable(v, depth + 1) for v in fn]
    if isinstance(fn, dict):
        return {str(k): _describe_callable(v, depth + 1) for k, v in sorted(fn.items(), key=str)}
    if isinstance(fn, functools.partial):
        return {
            "partial": _describe_callable(fn.func, depth + 1),
            "args": _describe_callable(list(fn.args), depth + 1),
            "kwargs": _describe_callable(dict(fn.keywords), depth + 1),
        }
    kind = type(fn)
    name = f"{kind.__module__}.{kind.__qualname__}"
    if isinstance(fn, nn.Module):
        settings = {
            k: _describe_callable(v, depth + 1)
            for k, v in vars(fn).items()
            if not k.startswith("_") and k != "training"
        }
        tensors = [[k, tensor_digest(v)] for k, v in fn.state_dict().items()]
        return {"module": name, "settings": settings, "tensors": tensors}
    code = getattr(fn, "__code__", None)
    if code is not None:
        cells = [c.cell_contents for c in (getattr(fn, "__closure__", None) or ())]
        return {
            "function": f"{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', '')}",
            "code": code.co_code.hex(),
            "consts": repr(code.co_consts),
            "closure": _describe_callable(cells, depth + 1),
            "defaults": _describe_callable(
                list(getattr(fn, "__defaults__", None) or ()), depth + 1
            ),
        }
    return {"object": name, "repr": repr(fn)[:200]}


def _per_example(t: Tensor) -> str:
    """``[N, 3, 4]`` for a tensor of ``N`` examples of shape ``[3, 4]``."""
    return "[" + ", ".join(["N", *(str(d) for d in t.shape[1:])]) + "]"


def _error_line(err: BaseException) -> str:
    """``Type: first line of the message`` of an exception from user code."""
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__


def _loss_name(loss_fn: Any) -> str:
    fn = loss_fn.func if isinstance(loss_fn, functools.partial) else loss_fn
    if isinstance(fn, nn.Module):
        return type(fn).__name__
    return fn.__name__ if any(fn is f for f in _TORCH_LOSSES) else "loss_fn"


def _class_loss(loss_fn: Any) -> int | None:
    """For torch's cross-entropy or NLL loss (class-index targets): its ``ignore_index``
    (-100 by default); None for any other loss."""
    spec = _class_weights(loss_fn)
    return None if spec is None else spec[1]


def _class_weights(loss_fn: Any) -> tuple[Tensor | None, int] | None:
    """``(weight, ignore_index)`` of torch's cross-entropy or NLL loss, else None."""
    if isinstance(loss_fn, nn.CrossEntropyLoss | nn.NLLLoss):
        return loss_fn.weight, int(loss_fn.ignore_index)
    keywords: dict[str, Any] = {}
    if isinstance(loss_fn, functools.partial):
        keywords, loss_fn = dict(loss_fn.keywords), loss_fn.func
    if loss_fn is F.cross_entropy or loss_fn is F.nll_loss:
        return keywords.get("weight"), int(keywords.get("ignore_index", -100))
    return None


def _elementwise_loss(loss_fn: Any) -> bool:
    """torch's elementwise losses, which broadcast outputs against targets of another shape."""
    fn = loss_fn.func if isinstance(loss_fn, functools.partial) else loss_fn
    return isinstance(fn, _ELEMENTWISE_MODULES) or any(fn is f for f in _ELEMENTWISE_FUNCTIONS)


def _bad_labels(y: Tensor, classes: int, ignore: int | None) -> tuple[int, int] | None:
    """``(example, label)`` of the first label outside ``[0, classes)`` (not ``ignore``)."""
    bad = (y < 0) | (y >= classes)
    if ignore is not None:
        bad &= y != ignore
    if not bool(bad.any()):
        return None
    rows = bad.reshape(len(y), -1)
    i = int(rows.any(1).nonzero()[0, 0])
    label = int(y.reshape(len(y), -1)[i][rows[i]][0])
    return i, label


def loss_failure(out: Tensor, y: Any, err: Exception) -> str:
    """The sentence for a loss that raises on the probe's outputs and targets."""
    hint = "give targets the loss takes"
    if not torch.is_tensor(y):
        return (
            f"loss_fn fails on the model's outputs of shape {list(out.shape)}: {_error_line(err)}"
        )
    integer = not (y.is_floating_point() or y.is_complex())
    if integer and y.ndim == 2 and y.shape[1] == 1 and out.ndim == 2 and out.shape[1] > 1:
        hint = "class indices have shape [N]: pass y.squeeze(1)"
    elif not integer and y.ndim == 1 and out.ndim == 2 and bool((y == y.round()).all()):
        hint = "the targets look like class indices stored as floats: pass y.long()"
    return (
        f"loss_fn fails on the model's outputs of shape {list(out.shape)} and targets of "
        f"shape {list(y.shape)} ({str(y.dtype)[6:]}): {_error_line(err)}; {hint}"
    )


_ELEMENTWISE_MODULES: tuple[type[nn.Module], ...] = (
    nn.MSELoss,
    nn.L1Loss,
    nn.SmoothL1Loss,
    nn.HuberLoss,
    nn.BCELoss,
    nn.BCEWithLogitsLoss,
)
_ELEMENTWISE_FUNCTIONS = (
    F.mse_loss,
    F.l1_loss,
    F.smooth_l1_loss,
    F.huber_loss,
    F.binary_cross_entropy,
    F.binary_cross_entropy_with_logits,
)
_TORCH_LOSSES = (F.cross_entropy, F.nll_loss, *_ELEMENTWISE_FUNCTIONS)


def _check_pair(loss: Any, out: Tensor, y: Any) -> None:
    """A sum-and-count objective gives a finite count that is not negative on the probe."""
    try:
        _, count = loss(out, y)
    except BasinscopeError:
        raise
    except Exception as err:
        raise BasinscopeError(loss_failure(out, y, err)) from err
    c = float(count)
    if not (math.isfinite(c) and c >= 0):
        raise BasinscopeError(
            f"the loss's count on the first examples is {c}; a count (examples, tokens, "
            "weights) must be finite and not negative"
        )


def _refuse_if_random(out: Tensor, again: Tensor, advice: str | None = None) -> None:
    """The one determinism check: two evaluations of the same weights must agree."""
    from ._inputs import _same_value

    if not _same_value(out, again):
        diff = (out - again).abs().max().item() if out.shape == again.shape else math.nan
        advice = advice or "disable dropout/noise in eval mode or pass check_determinism=False"
        raise BasinscopeError(
            f"the model's evaluation is not deterministic (two evaluations of the "
            f"same weights differ by up to {diff:.3g}); {advice}"
        )
