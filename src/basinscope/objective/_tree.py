"""Data as trees of tensors: a tensor, a tuple/list or a dict of them, examples first.

A model's inputs may be one tensor (``model(x)``), a tuple (``model(*x)``) or a dict
(``model(**x)``, HuggingFace-style ``input_ids``/``attention_mask``); targets may be
a tensor or a dict. Every leaf holds the same number of examples along its first
dimension, so a chunk of examples is the same slice of every leaf.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.utils import _pytree

from ..errors import BasinscopeError

Tree = Any  # a Tensor, or a tuple / list / dict of Trees


def leaves(tree: Tree) -> list[Tensor]:
    """The tensors of ``tree``, in a fixed order (dict keys as given)."""
    return [t for t in _pytree.tree_leaves(tree) if torch.is_tensor(t)]


def tree_map(fn: Callable[[Tensor], Any], tree: Tree) -> Tree:
    """``tree`` with ``fn`` applied to every tensor (other leaves kept)."""
    return _pytree.tree_map(lambda t: fn(t) if torch.is_tensor(t) else t, tree)


def length(tree: Tree, what: str) -> int:
    """The number of examples of ``tree``: the common first dimension of its tensors."""
    ts = leaves(tree)
    if not ts:
        raise BasinscopeError(f"the {what} hold no tensor")
    sizes = {int(t.shape[0]) if t.ndim else -1 for t in ts}
    if -1 in sizes:
        raise BasinscopeError(f"the {what} must have a leading example dimension, got a scalar")
    if len(sizes) > 1:
        raise BasinscopeError(
            f"the {what} hold tensors with different numbers of examples "
            f"({', '.join(str(s) for s in sorted(sizes))}); every tensor needs the same "
            "first dimension"
        )
    return sizes.pop()


def take(tree: Tree, index: slice | Tensor) -> Tree:
    """The examples ``index`` (a slice or an index tensor) of every tensor of ``tree``."""
    return tree_map(lambda t: t[index], tree)


def is_tensor(tree: Tree) -> bool:
    return torch.is_tensor(tree)


def call(model: nn.Module, x: Tree) -> Any:
    """``model(x)``, ``model(*x)`` or ``model(**x)`` for a tensor, tuple or dict ``x``."""
    if isinstance(x, Mapping):
        return model(**x)
    if isinstance(x, tuple | list):
        return model(*x)
    return model(x)


def functional(model: nn.Module, params: dict[str, Tensor], x: Tree) -> Any:
    """:func:`call` through ``torch.func.functional_call`` with ``params`` (others own)."""
    if isinstance(x, Mapping):
        return functional_call(model, params, (), dict(x), strict=False)
    if isinstance(x, tuple | list):
        return functional_call(model, params, tuple(x), strict=False)
    return functional_call(model, params, (x,), strict=False)


def describe(tree: Tree) -> str:
    """``[N, 28]`` for a tensor, ``{'input_ids': [N, 16], ...}`` for a dict, for messages."""
    if torch.is_tensor(tree):
        return "[" + ", ".join(["N", *(str(d) for d in tree.shape[1:])]) + "]"
    if isinstance(tree, Mapping):
        return "{" + ", ".join(f"{k!r}: {describe(v)}" for k, v in tree.items()) + "}"
    if isinstance(tree, tuple | list):
        return "(" + ", ".join(describe(v) for v in tree) + ")"
    return type(tree).__name__


def select_output(out: Any, output: str | int | Callable[[Any], Tensor] | None) -> Tensor:
    """The tensor a loss reads from a model's return value.

    ``output`` None: the value itself when it is a tensor, the ``"logits"`` field of a
    mapping (HuggingFace's ``ModelOutput`` is one) that has it; a string or integer:
    that field or position; a callable: ``output(value)``. Anything else is refused
    with the fields that exist.
    """
    if callable(output):
        got = output(out)
        if not torch.is_tensor(got):
            raise BasinscopeError(
                f"output(...) returns a {type(got).__name__}; it must return the tensor the "
                "loss reads"
            )
        return got
    if output is None:
        if torch.is_tensor(out):
            return out
        if isinstance(out, Mapping) and torch.is_tensor(out.get("logits")):
            return out["logits"]
        raise BasinscopeError(_which_output(out))
    try:
        got = out[output]
    except (KeyError, IndexError, TypeError) as err:
        raise BasinscopeError(
            f"the model's output has no field {output!r}; " + _fields(out)
        ) from err
    if not torch.is_tensor(got):
        raise BasinscopeError(
            f"the model's output field {output!r} is a {type(got).__name__}, not a tensor; "
            + _fields(out)
        )
    return got


def _fields(out: Any) -> str:
    if isinstance(out, Mapping):
        return "its fields are " + ", ".join(repr(k) for k in out)
    if isinstance(out, tuple | list):
        return f"it is a {len(out)}-item {type(out).__name__} (positions 0 to {len(out) - 1})"
    return f"it is a {type(out).__name__}"


def _which_output(out: Any) -> str:
    if isinstance(out, Mapping):
        keys = ", ".join(repr(k) for k in list(out)[:6])
        return (
            f"the model returns a mapping (fields {keys}) without 'logits'; name the field "
            "the loss reads: Objective(..., output='<field>') (or output=a function of the "
            "model's return value)"
        )
    if isinstance(out, tuple | list):
        return (
            f"the model returns a {len(out)}-item {type(out).__name__}; say which item the "
            "loss reads: Objective(..., output=0) (or output=a function of the model's "
            "return value)"
        )
    return (
        f"the model returns a {type(out).__name__}, not a tensor; pass output=a function "
        "that picks the tensor the loss reads"
    )
