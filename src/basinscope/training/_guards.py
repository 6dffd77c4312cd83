"""Refusals before any training work: the device, the data and the model's output on it.

Each check raises one :class:`BasinscopeError` sentence naming the value and what
is accepted. :func:`data_fingerprint` hashes the data, the half of a run's identity
that the config does not hold.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch
from torch import nn

from .._checks import check_device
from ..errors import BasinscopeError
from ._bundle import IGNORE_INDEX, DataBundle
from ._config import TrainConfig, _is_int


def _device(name: Any) -> torch.device:
    """``name`` as a device that exists here (:func:`basinscope._checks.check_device`).

    Unknown devices, ``meta``, a kind this torch build lacks and an absent CUDA
    device are refused in one sentence, before any work.
    """
    return check_device(name)


def _check_data(data: DataBundle) -> None:
    """Refuse data training cannot use, with one sentence, before any work.

    ``x_train [N, *input_shape]`` floating point and finite, or int64 token ids in
    ``[0, vocab_size)``; ``y_train [N]`` int64 class indices in ``[0, n_classes)``, or
    ``[N, T]`` token targets in ``[0, n_classes)`` or -100 (not counted); the test split
    (possibly empty) the same, with the training split's example shapes and dtype.
    """
    x, y, k = data.x_train, data.y_train, data.n_classes
    if not _is_int(k) or k < 1:
        raise BasinscopeError(f"n_classes {k!r} is not valid; give a positive number of classes.")
    vocab = data.vocab_size
    if vocab is not None and not (_is_int(vocab) and vocab >= 1):
        raise BasinscopeError(f"vocab_size {vocab!r} is not valid; give a positive integer.")
    if x.ndim < 2 or len(x) == 0 or y.ndim not in (1, 2) or len(x) != len(y):
        raise BasinscopeError(
            f"training data of shape {tuple(x.shape)} with labels of shape {tuple(y.shape)} "
            "is not valid; give x_train [N, *input_shape] with N >= 1 and y_train [N] "
            "(or [N, T] for one target per token)."
        )
    xt, yt = data.x_test, data.y_test
    has_test = bool(len(yt) or xt.numel())  # an empty test split may have any shape
    if has_test and (
        yt.shape[1:] != y.shape[1:]
        or xt.ndim < 1
        or len(xt) != len(yt)
        or xt.shape[1:] != x.shape[1:]
    ):
        shape = ", ".join(map(str, x.shape[1:]))
        labels = ", ".join(["M", *map(str, y.shape[1:])])
        raise BasinscopeError(
            f"test data of shape {tuple(xt.shape)} with labels of shape {tuple(yt.shape)} "
            f"does not match the training data; give x_test [M, {shape}] and y_test [{labels}]."
        )
    for name, t in (("x_train", x), ("x_test", xt)):
        if name == "x_test" and not has_test:
            continue
        _check_inputs(name, t, x.dtype, vocab)
    for name, t in (("y_train", y), ("y_test", yt)):
        _check_targets(name, t, k)


def _check_inputs(name: str, t: torch.Tensor, dtype: torch.dtype, vocab: int | None) -> None:
    """Floating-point and finite inputs, or int64 token ids in ``[0, vocab)``; both splits alike."""
    if t.dtype != dtype:
        raise BasinscopeError(
            f"x_test has dtype {t.dtype} but x_train {dtype}; give both the same dtype."
        )
    if not t.is_floating_point():
        if t.dtype != torch.int64:
            raise BasinscopeError(
                f"{name} has dtype {t.dtype}; give floating-point inputs or int64 token ids."
            )
        if t.numel() and int(t.min()) < 0:
            raise BasinscopeError(f"{name} holds the token id {int(t.min())}; give token ids >= 0.")
        if vocab is not None and t.numel() and int(t.max()) >= vocab:
            raise BasinscopeError(
                f"{name} holds the token id {int(t.max())}; give token ids below "
                f"vocab_size={vocab}."
            )
        return
    bad = ~torch.isfinite(t)
    if bad.any():
        first = int(bad.reshape(len(t), -1).any(dim=1).nonzero()[0, 0])
        raise BasinscopeError(
            f"{name} holds {int(bad.sum())} NaN or infinite value(s) (the first in example "
            f"{first}); give finite inputs."
        )


def _check_targets(name: str, t: torch.Tensor, k: int) -> None:
    """int64 class indices in ``[0, k)``; per-token targets may also be -100 (not counted)."""
    if t.dtype != torch.int64:
        raise BasinscopeError(f"{name} has dtype {t.dtype}; give int64 class indices.")
    counted = t[t != IGNORE_INDEX] if t.ndim == 2 else t
    if counted.numel() and (int(counted.min()) < 0 or int(counted.max()) >= k):
        ignored = f" or {IGNORE_INDEX} (not counted)" if t.ndim == 2 else ""
        raise BasinscopeError(
            f"{name} holds labels outside [0, {k}); give class indices below "
            f"n_classes={k}{ignored}."
        )


def _check_model(model: nn.Module, config: TrainConfig, data: DataBundle, device) -> None:
    """Refuse a model that cannot train on ``data``: its dtype, or its output for two examples.

    ``model`` is a throwaway copy built for this check (a factory may keep state),
    evaluated in eval mode without gradients. Token ids (integer inputs) have no
    dtype to match.
    """
    x = data.x_train
    dtypes = sorted({str(p.dtype) for p in model.parameters() if p.is_floating_point()})
    if x.is_floating_point() and dtypes and str(x.dtype) not in dtypes:
        raise BasinscopeError(
            f"x_train has dtype {x.dtype} but model {config.model!r} computes in "
            f"{', '.join(dtypes)}; give inputs of the model's dtype (e.g. x.float())."
        )
    try:
        with torch.no_grad():
            out = model.to(device).eval()(x[:2].to(device))
    except Exception as e:  # any failure of the forward pass on the data is bad input
        raise BasinscopeError(
            f"model {config.model!r} cannot take inputs of shape {tuple(x.shape[1:])}: "
            f"{type(e).__name__}: {e}."
        ) from e
    b = min(len(x), 2)
    if data.token_targets:
        t = data.y_train.shape[1]
        want, what = (b, t, data.n_classes), f"[B, T={t}, n_classes={data.n_classes}]"
    else:
        want, what = (b, data.n_classes), f"[B, n_classes={data.n_classes}]"
    if not torch.is_tensor(out) or tuple(out.shape) != want:
        got = f"shape {tuple(out.shape)}" if torch.is_tensor(out) else f"a {type(out).__name__}"
        raise BasinscopeError(
            f"model {config.model!r} returned {got} for {want[0]} examples; give a model "
            f"that returns logits {what}."
        )


def data_fingerprint(data: DataBundle) -> str:
    """A hash of the tensors, so a finished run is reused only for the same data."""
    h = hashlib.blake2b(digest_size=16)
    for t in (data.x_train, data.y_train, data.x_test, data.y_test):
        t = t.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()
