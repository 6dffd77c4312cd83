"""Factories: the optimizer, schedules, SAM, the model and the data a :class:`TrainConfig` names.

Each turns config options into the torch object that implements them, so the
step loop (:mod:`basinscope.training._loop`) builds nothing itself.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR
from torch.optim.swa_utils import SWALR

from ._bundle import DataBundle
from ._config import TrainConfig
from ._models import _options, _resolve, build_model
from ._sam import SAM


def lr_factor(
    step: int, total_steps: int, warmup_steps: int = 0, schedule: str = "constant"
) -> float:
    """Multiplier of the peak learning rate for optimizer step ``step`` (0-based).

    Warm-up (Goyal et al. 2017), for ``t < W``: ``(t + 1) / (W + 1)``, a linear
    ramp from ``1/(W+1)`` up to 1. Afterwards ``1`` (``"constant"``) or cosine
    annealing to 0 at the end of training (Loshchilov & Hutter 2017, SGDR without
    restarts): ``½ (1 + cos(π (t − W) / (T − W)))``, which is 0 at ``t = T``.
    """
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    if schedule == "constant":
        return 1.0
    progress = min((step - warmup_steps) / max(total_steps - warmup_steps, 1), 1.0)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def make_scheduler(
    optimizer: torch.optim.Optimizer, config: TrainConfig, total_steps: int
) -> LambdaLR:
    """A per-optimizer-step ``LambdaLR`` scheduler following :func:`lr_factor`.

    One ``LambdaLR`` with the closed form rather than ``SequentialLR(LinearLR,
    CosineAnnealingLR)``: the chained form accumulates rounding step by step and
    ``SequentialLR`` emits a deprecation warning when it switches schedulers.
    """
    return LambdaLR(
        optimizer,
        functools.partial(
            lr_factor,
            total_steps=total_steps,
            warmup_steps=config.warmup_steps,
            schedule=config.schedule,
        ),
    )


def make_optimizer(config: TrainConfig, params: Iterable[torch.Tensor]) -> torch.optim.Optimizer:
    """The optimizer named by ``config.optimizer`` with the config's hyperparameters."""
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            params,
            lr=config.lr,
            momentum=config.momentum,
            nesterov=config.nesterov,
            weight_decay=config.weight_decay,
        )
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)


def make_sam(config: TrainConfig, optimizer: torch.optim.Optimizer, model: nn.Module) -> SAM | None:
    """SAM/ASAM around ``optimizer`` as the config asks, or ``None`` when ``sam_rho`` is 0.

    The second pass runs inside :func:`basinscope.optim.frozen_running_stats` of
    ``model``: BatchNorm statistics are updated once per step, at the unperturbed weights.
    """
    if config.sam_rho == 0:
        return None
    return SAM(optimizer, config.sam_rho, adaptive=config.sam_adaptive, model=model)


def make_swa_scheduler(
    optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int
) -> SWALR:
    """``SWALR`` to ``config.swa_lr``: cosine annealing over one epoch of optimizer steps.

    Built when SWA begins (building it applies its first value to ``optimizer``)
    and stepped once per optimizer step in place of :func:`make_scheduler`'s.
    """
    return SWALR(
        optimizer, swa_lr=config.swa_lr, anneal_epochs=steps_per_epoch, anneal_strategy="cos"
    )


def make_model(
    config: TrainConfig,
    input_shape: Iterable[int],
    n_classes: int,
    *,
    vocab_size: int | None = None,
    readout: str | None = None,
) -> nn.Module:
    """``build_model`` for the config's model, options and dropout (not seeded: caller seeds).

    The data's facts reach a factory that names them as parameters (the built-in
    ``"transformer"`` does) unless ``model_kwargs`` sets them: ``vocab_size``, the
    number of token ids, and ``readout``, ``"sequence"`` for one target per token or
    ``"last"`` for one label per sequence (:func:`data_model_options` gives both).
    A factory taking only ``**kwargs`` gets neither.
    """
    options = config._model_options()
    names, _ = _options(_resolve(config.model))
    for name, value in (("vocab_size", vocab_size), ("readout", readout)):
        if value is not None and name in names and name not in options:
            options[name] = value
    return build_model(config.model, tuple(input_shape), n_classes, **options)


def data_model_options(data: DataBundle) -> dict[str, Any]:
    """The facts of token data a model is built for: ``vocab_size`` and ``readout``.

    ``{}`` for feature inputs. For integer inputs, ``vocab_size`` is the bundle's
    (else the largest token id + 1) and ``readout`` is ``"sequence"`` when there is a
    target per token (``y [N, T]``), ``"last"`` when there is one label per sequence.
    """
    if data.x_train.is_floating_point():
        return {}
    vocab = data.vocab_size
    if vocab is None:
        ids = [t.max() for t in (data.x_train, data.x_test) if t.numel()]
        vocab = int(max(ids)) + 1 if ids else 1
    return {"vocab_size": int(vocab), "readout": "sequence" if data.token_targets else "last"}


def load_config_data(config: TrainConfig) -> DataBundle:
    """The dataset a config trains on (subset, label noise and standardisation applied)."""
    from ._data import load_dataset  # looked up per call: the data loaders load lazily

    return load_dataset(
        config.dataset,
        data_dir=config.data_dir,
        train_size=config.train_size,
        standardize=config.standardize,
        seed=config.data_seed,
        label_noise=config.label_noise,
    )
