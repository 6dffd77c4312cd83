"""Small classifiers for the classic experiments, and a registry to build any model by name.

The built-in models are deliberately small (the experiments run on a CPU in
minutes): an :class:`MLP`, a :class:`SmallCNN` and a causal
:class:`~basinscope.training._transformer.Transformer` over token ids. :func:`build_model` builds
one of them by its registry name, or any user model given as
``"package.module:factory"``. Building a factory model **imports that module and
calls the factory**: it runs code. Name one only when it is your own choice (an
argument you pass, ``--model`` on the command line); basinscope resolves nothing
but the built-in registry from a file it reads (``config.json`` of a run
directory, a TOML config) unless told ``trust_code=True`` (``--trust-code``).
"""

from __future__ import annotations

import importlib
import inspect
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ..errors import BasinscopeError
from ._transformer import Transformer

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "sigmoid": nn.Sigmoid,
    "softplus": nn.Softplus,  # smooth: exact Hessians without ReLU kinks
    "elu": nn.ELU,
}
"""Activation name -> module class, for :class:`MLP`."""


def _positive_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _shape(input_shape: int | Iterable[int]) -> tuple[int, ...]:
    """``input_shape`` as a tuple of positive ints, or a :class:`BasinscopeError`."""
    try:
        shape = (input_shape,) if isinstance(input_shape, int) else tuple(input_shape)
    except TypeError:
        shape = ()
    if not shape or not all(_positive_int(s) for s in shape):
        raise BasinscopeError(
            f"input_shape {input_shape!r} is not valid; give the shape of one example "
            "as positive integers, e.g. (1, 28, 28) or (40,)."
        )
    return shape


def _check_common(n_classes: int, dropout: float) -> None:
    if isinstance(n_classes, bool) or not isinstance(n_classes, int) or n_classes < 1:
        raise BasinscopeError(f"n_classes {n_classes!r} is not valid; give a positive integer.")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise BasinscopeError(f"dropout {dropout!r} is not valid; give a number in [0, 1).")


def _check_flag(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise BasinscopeError(f"{name} {value!r} is not valid; give true or false.")


def _check_choice(name: str, value: Any, accepted: Iterable[str]) -> None:
    accepted = list(accepted)
    if not isinstance(value, str) or value not in accepted:
        raise BasinscopeError(f"{name} {value!r} is not known; accepted: {', '.join(accepted)}.")


def _positive_ints(name: str, values: Sequence[int]) -> tuple[int, ...]:
    try:
        out = tuple(values)
    except TypeError:
        out = ()
    if not all(_positive_int(v) for v in out):
        raise BasinscopeError(
            f"{name} {values!r} is not valid; give a list of positive integers, e.g. [64, 64]."
        )
    return out


def _available_bytes() -> int | None:
    """Memory the system can still give: ``MemAvailable`` of ``/proc/meminfo``, else
    ``os.sysconf``'s available pages; None if neither is known."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def _check_fits(model: str, n_params: int, sizes: str) -> None:
    """Refuse, before any layer is allocated, a model whose weights would not fit in memory.

    ``n_params`` is counted from the options (Python integers, so a width of
    ``10**30`` is refused here rather than overflowing inside torch); only the
    weights are counted, so a model that passes may still need more to train.
    """
    nbytes = n_params * torch.empty((), dtype=torch.get_default_dtype()).element_size()
    available = _available_bytes()
    if nbytes >= 2**63 or (available is not None and nbytes > available):
        room = f"the {available:,} bytes of memory available" if available else "any memory"
        raise BasinscopeError(
            f"model {model!r} with {sizes} would have {n_params:,} parameters, "
            f"{nbytes:,} bytes of weights, more than {room}; give smaller sizes."
        )


def _mlp_params(features: int, n_classes: int, widths: Sequence[int], batch_norm: bool) -> int:
    """The parameter count of :class:`MLP` (weights, biases, BatchNorm scales and shifts)."""
    total = 0
    for width in widths:
        total += features * width + width + (2 * width if batch_norm else 0)
        features = width
    return total + features * n_classes + n_classes


def _cnn_params(
    shape: tuple[int, ...], n_classes: int, channels: Sequence[int], head: str, batch_norm: bool
) -> int:
    """The parameter count of :class:`SmallCNN` for a 2-D/3-D ``shape`` (mirrors its layers)."""
    c, spatial, total = shape[0], list(shape[1:]), 0
    kernel = 3 ** len(spatial)
    for ch in channels:
        total += c * ch * kernel + ch + (2 * ch if batch_norm else 0)
        if min(spatial) >= 2:
            spatial = [s // 2 for s in spatial]
        c = ch
    features = c if head == "avg" else c * math.prod(spatial)
    return total + features * n_classes + n_classes


class MLP(nn.Module):
    """A multilayer perceptron: flatten, then ``Linear → activation (→ Dropout)`` blocks.

    Input ``[B, *input_shape]``, output logits ``[B, n_classes]``.

    Args:
        input_shape: shape of one example; it is flattened to ``prod(input_shape)`` features.
        n_classes: number of output logits.
        widths: hidden layer widths; ``()`` gives a linear (softmax regression) model.
        dropout: dropout probability after each hidden activation; 0 adds no Dropout layer.
        activation: a name from :data:`ACTIVATIONS`.
        batch_norm: put a ``BatchNorm1d`` between each hidden Linear and its activation
            (Ioffe & Szegedy 2015); off by default, which keeps the layer indices
            ``net.1, net.3, …`` of earlier checkpoints.
    """

    def __init__(
        self,
        input_shape: int | Sequence[int],
        n_classes: int,
        widths: Sequence[int] = (64, 64),
        dropout: float = 0.0,
        activation: str = "relu",
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        shape = _shape(input_shape)
        _check_common(n_classes, dropout)
        widths = _positive_ints("widths", widths)
        _check_choice("activation", activation, ACTIVATIONS)
        _check_flag("batch_norm", batch_norm)
        features = math.prod(shape)
        _check_fits(
            "mlp",
            _mlp_params(features, n_classes, widths, batch_norm),
            f"input_shape {shape}, widths {list(widths)} and n_classes {n_classes}",
        )
        layers: list[nn.Module] = [nn.Flatten()]
        for width in widths:
            layers.append(nn.Linear(features, width))
            if batch_norm:
                layers.append(nn.BatchNorm1d(width))
            layers.append(ACTIVATIONS[activation]())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            features = width
        layers.append(nn.Linear(features, n_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, n_classes]`` for inputs ``[B, *input_shape]``."""
        return self.net(x)


class SmallCNN(nn.Module):
    """A small convolutional network for images ``(C, H, W)`` or sequences ``(C, L)``.

    ``Conv(3×3 or 3, padding 1) → ReLU → MaxPool(2)`` per entry of ``channels``
    (the pooling is left out once a spatial size is below 2, so tiny inputs such
    as 8×8 digits still work), then a linear head on the flattened features
    (``head="flatten"``) or on their global average (``head="avg"``). A 1-D
    ``input_shape`` ``(L,)`` is treated as one channel ``(1, L)``.

    Input ``[B, *input_shape]``, output logits ``[B, n_classes]``.

    Args:
        input_shape: ``(C, H, W)`` (Conv2d), ``(C, L)`` or ``(L,)`` (Conv1d).
        n_classes: number of output logits.
        channels: output channels of each convolution block.
        dropout: dropout probability before the linear head; 0 adds no Dropout layer.
        head: ``"flatten"`` or ``"avg"`` (global average pooling).
        batch_norm: put a BatchNorm between each convolution and its ReLU.
    """

    def __init__(
        self,
        input_shape: int | Sequence[int],
        n_classes: int,
        channels: Sequence[int] = (16, 32),
        dropout: float = 0.0,
        head: str = "flatten",
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        shape = _shape(input_shape)
        _check_common(n_classes, dropout)
        channels = _positive_ints("channels", channels)
        _check_choice("head", head, ("flatten", "avg"))
        _check_flag("batch_norm", batch_norm)
        layers: list[nn.Module] = []
        if len(shape) == 1:
            layers.append(nn.Unflatten(1, (1, shape[0])))
            shape = (1, shape[0])
        if len(shape) == 2:
            conv, pool, avg, bn = nn.Conv1d, nn.MaxPool1d, nn.AdaptiveAvgPool1d, nn.BatchNorm1d
        elif len(shape) == 3:
            conv, pool, avg, bn = nn.Conv2d, nn.MaxPool2d, nn.AdaptiveAvgPool2d, nn.BatchNorm2d
        else:
            raise BasinscopeError(
                f"input_shape {shape} is not valid for the cnn model; accepted: "
                "(C, H, W) images, (C, L) or (L,) sequences."
            )
        _check_fits(
            "cnn",
            _cnn_params(shape, n_classes, channels, head, batch_norm),
            f"input_shape {shape}, channels {list(channels)} and n_classes {n_classes}",
        )
        c, spatial = shape[0], list(shape[1:])
        for ch in channels:
            layers.append(conv(c, ch, kernel_size=3, padding=1))
            if batch_norm:
                layers.append(bn(ch))
            layers.append(nn.ReLU())
            if min(spatial) >= 2:
                layers.append(pool(2))
                spatial = [s // 2 for s in spatial]
            c = ch
        if head == "avg":
            layers.append(avg(1))
            features = c
        else:
            features = c * math.prod(spatial)
        layers.append(nn.Flatten())
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        layers.append(nn.Linear(features, n_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, n_classes]`` for inputs ``[B, *input_shape]``."""
        return self.net(x)


MODELS: dict[str, Callable[..., nn.Module]] = {
    "mlp": MLP,
    "cnn": SmallCNN,
    "transformer": Transformer,
}
"""Built-in model name -> factory ``factory(input_shape, n_classes, **options)``.

The transformer takes int64 token ids ``[B, T]`` (``input_shape = (T,)``); its
``vocab_size`` and ``readout`` are filled in from the data by
:func:`basinscope.training.make_model` when the config does not set them.
"""


def _options(factory: Callable[..., Any]) -> tuple[list[str], bool]:
    """Keyword names ``factory`` accepts, and whether it also takes ``**kwargs``."""
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):  # builtins without a signature: accept anything
        return [], True
    names = [
        p.name
        for p in params
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and not p.name.startswith("_")
    ]
    return names, any(p.kind is p.VAR_KEYWORD for p in params)


def _resolve(name: str) -> Callable[..., Any]:
    """The factory for a registry name or a ``"package.module:factory"`` string."""
    if not isinstance(name, str):
        raise BasinscopeError(
            f"model {name!r} is not valid; give one of {', '.join(sorted(MODELS))} "
            "or 'package.module:factory'."
        )
    if name in MODELS:
        return MODELS[name]
    module_name, sep, attr = name.partition(":")
    if not sep or not module_name or not attr:
        raise BasinscopeError(
            f"model {name!r} is not known; accepted: {', '.join(sorted(MODELS))} "
            "or 'package.module:factory'."
        )
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as e:  # any import-time failure of user code is a bad model name
        raise BasinscopeError(
            f"model {name!r} could not be imported: {type(e).__name__}: {e}."
        ) from e
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise BasinscopeError(f"model {name!r} is not valid: {module_name} has no {attr!r}.")
        obj = getattr(obj, part)
    if not callable(obj):
        raise BasinscopeError(f"model {name!r} is not valid: {attr!r} is not callable.")
    return obj


def _check_options(name: str, factory: Callable[..., Any], kwargs: Mapping[str, Any]) -> None:
    """Refuse keyword options that ``factory`` does not accept, naming the accepted ones."""
    names, var_kw = _options(factory)
    if var_kw:
        return
    accepted = [n for n in names if n not in ("input_shape", "n_classes")]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise BasinscopeError(
            f"model {name!r} does not accept option(s) {', '.join(unknown)}; "
            f"accepted: {', '.join(accepted) or 'none'}."
        )


def build_model(
    name: str, input_shape: int | Sequence[int], n_classes: int, **kwargs: Any
) -> nn.Module:
    """Build a classifier by name.

    Args:
        name: a key of :data:`MODELS` (``"mlp"``, ``"cnn"``, ``"transformer"``) or ``"package.module:factory"``.
            A factory (function or class) is called as
            ``factory(input_shape=..., n_classes=..., **kwargs)``, passing
            ``input_shape`` and ``n_classes`` only if its signature accepts them.
            This imports the module and runs the factory: pass only names you
            chose yourself, never one read from an untrusted file.
        input_shape: shape of one example, e.g. ``(1, 28, 28)``.
        n_classes: number of classes.
        **kwargs: model options (``widths``, ``channels``, ``dropout``, ...).

    Returns:
        The model, a fresh ``nn.Module`` (in train mode, on the CPU).

    Raises:
        BasinscopeError: unknown name, import failure, unknown option, or a
            factory that does not return an ``nn.Module``.
    """
    factory = _resolve(name)
    _check_options(name, factory, kwargs)
    if name in MODELS:
        model = factory(input_shape, n_classes, **kwargs)
    else:
        names, var_kw = _options(factory)
        given = {"input_shape": tuple(_shape(input_shape)), "n_classes": n_classes}
        extra = {k: v for k, v in given.items() if var_kw or k in names}
        model = factory(**extra, **kwargs)
    if not isinstance(model, nn.Module):
        raise BasinscopeError(
            f"model {name!r} returned a {type(model).__name__}, not a torch.nn.Module."
        )
    return model
