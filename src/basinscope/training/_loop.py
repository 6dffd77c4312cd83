"""Train the classic experiments' classifiers: seeded, resumable, checkpointed.

:func:`train` runs minibatch SGD/Adam on cross-entropy for a :class:`TrainConfig`
and returns a :class:`TrainResult`. Three properties matter for the studies
built on it:

* **Deterministic and local randomness.** Initialisation is seeded by
  ``config.seed``; epoch ``e``'s shuffling comes from ``item_generator(seed, e)``
  and its dropout masks from a generator reseeded from ``(seed, e)``, so no epoch
  depends on the history before it. All of it runs inside
  ``torch.random.fork_rng``: the caller's global RNG state is left as it was.
* **Crash-resume, bit for bit.** With ``out_dir``, the full training state is
  written atomically after every epoch (``state.pt``); a rerun of the same
  config resumes there and ends with exactly the weights of an uninterrupted
  run. A finished run (``model.pt`` + ``metrics.json``) is returned without
  training again.
* **Divergence is a result, not an exception.** A NaN/inf minibatch loss stops
  training and is reported in :attr:`TrainResult.message` and ``metrics.json``
  (NaN/inf in the data itself is refused before training).
* **One writer, one run per directory.** ``train`` locks ``out_dir``; it never
  overwrites another configuration's finished or interrupted run, and reuses a
  finished one only when ``metrics.json``'s digests (written last) show that
  ``config.json`` and ``model.pt`` belong to it. Opening a run directory
  (:func:`load_checkpoint`) runs no code: only built-in models are rebuilt from
  ``config.json`` unless ``trust_code=True``.
* **Bit-reproducible under the same environment.** The same config, data, torch
  version, thread count and device give the same weights bit for bit (also after
  a crash and resume); the environment is recorded in ``config.json``,
  ``metrics.json`` and ``state.pt``, and a resume under another one warns.

The training choices the studies compare are config options, all recorded in the
run's ``config.json``: optimizer (SGD with coupled weight decay, Adam, AdamW with
decoupled weight decay), dropout, linear warm-up + cosine annealing, SAM/ASAM
around the optimizer (:class:`basinscope.optim.SAM`), stochastic weight averaging
(``torch.optim.swa_utils``), and snapshots of the weight trajectory for
PCA-of-trajectory directions (:class:`Trajectory`, :func:`load_trajectory`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, update_bn
from tqdm import tqdm

from .._keys import environment, normalise
from .._rng import item_generator, item_seed
from ..errors import BasinscopeError
from ._bundle import DataBundle
from ._config import TrainConfig
from ._evaluate import _loss, _record
from ._factories import (
    data_model_options,
    load_config_data,
    make_model,
    make_optimizer,
    make_sam,
    make_scheduler,
    make_swa_scheduler,
)
from ._guards import _check_data, _check_model, _device, data_fingerprint
from ._run import Run
from ._rundir import RunDir, TrainResult, _identity, check_run_dir
from ._sam import frozen_running_stats
from ._trajectory import Snapshots, _snapshot_due

# Dropout streams use indices far above any epoch index used for shuffling.
_DROPOUT_STREAM = 1 << 32
# The stream of dropout masks drawn while update_bn recomputes the SWA model's statistics.
_UPDATE_BN_STREAM = 2 << 32


def train(
    config: TrainConfig,
    data: DataBundle | None = None,
    *,
    out_dir: str | Path | None = None,
    progress: bool = True,
    on_epoch_end: Callable[[dict[str, Any]], None] | None = None,
    replace: bool = False,
) -> TrainResult:
    """Train ``config.model`` on ``data`` with cross-entropy, minibatch by minibatch.

    The loss is the minibatch mean over examples (labels ``y [N]``) or over the
    counted target tokens (``y [N, T]``, tokens equal to -100 left out); the recorded
    losses and accuracies are exact means over the whole split in the same units.

    With ``sam_rho > 0`` every step is a SAM/ASAM step (two forward/backward
    passes, :class:`basinscope.optim.SAM`); with ``swa_start`` the weights of the
    last epochs are averaged and the average is the result; with
    ``snapshot_every`` the weight trajectory is kept.

    Args:
        config: the run's settings; validated first.
        data: the dataset; ``None`` loads ``config.dataset`` with
            :func:`basinscope.data.load_dataset`.
        out_dir: run directory for ``config.json``, ``model.pt``, ``metrics.json``,
            ``trajectory.pt`` (with ``snapshot_every``) and, while training, the
            resume state ``state.pt``. It is locked for the whole call (a second
            writer stops with one sentence). A finished run there with the same
            config and data is returned without training, once ``metrics.json``'s
            digests show that ``config.json`` and ``model.pt`` belong to it; an
            interrupted one is resumed (with a warning when the torch version,
            thread count or device differ, since the weights will then not be
            bit-identical to an uninterrupted run). Another configuration's
            finished or interrupted run there is never overwritten: it is refused.
        progress: show a tqdm progress bar (on stderr) with the current loss.
        on_epoch_end: called with each epoch's record (the history entry, or
            ``{epoch, step, lr}`` when the epoch is not evaluated) after the
            resume state is written.
        replace: instead of refusing, delete another configuration's run (or a
            set of files that do not belong together) in ``out_dir`` and train
            this one there. Off by default: finished work is never lost unasked.

    Returns:
        A :class:`TrainResult`; a NaN/inf loss sets ``diverged`` instead of raising.

    Raises:
        BasinscopeError: invalid config, data, model output or device; an
            ``out_dir`` that cannot be written, is being written by another
            process, holds another run, or holds files that do not belong together.
    """
    config.validate()
    if out_dir is not None:
        check_run_dir(out_dir)
    device = _device(config.device)
    data = _checked_data(config, data, device)
    fingerprint = data_fingerprint(data)
    if out_dir is None:
        with _fork_rng(device):
            return _train(config, data, device, fingerprint, None, progress, on_epoch_end)
    with RunDir.open(out_dir, _identity(config, fingerprint)) as run_dir:
        finished = run_dir.finished(config, data, replace=replace)
        if finished is not None:
            return finished
        with _fork_rng(device):
            return _train(config, data, device, fingerprint, run_dir, progress, on_epoch_end)


def _train(
    config: TrainConfig,
    data: DataBundle,
    device: torch.device,
    fingerprint: str,
    run_dir: RunDir | None,
    progress: bool,
    on_epoch_end: Callable[[dict[str, Any]], None] | None,
) -> TrainResult:
    """Resume or start, run the epochs, finish (inside the caller's forked RNG)."""
    run = _start(config, data, device, fingerprint, run_dir)
    _epochs(run, progress, on_epoch_end)
    return _finish(run)


def _checked_data(config: TrainConfig, data: DataBundle | None, device: torch.device) -> DataBundle:
    """The data to train on (``config.dataset`` when not given), refused before any work if bad.

    Also refuses a ``swa_start`` beyond the last epoch and a model whose output
    for two examples is not ``[2, n_classes]`` logits.
    """
    if data is None:
        data = load_config_data(config)
    _check_data(data)
    n = len(data.y_train)
    n_epochs = math.ceil(config.total_steps(n) / config.steps_per_epoch(n))
    if config.swa_start is not None and config.swa_start > n_epochs:
        raise BasinscopeError(
            f"swa_start {config.swa_start} is not valid; these {config.total_steps(n)} steps "
            f"make {n_epochs} epochs, so give an epoch from 1 to {n_epochs}."
        )
    with torch.random.fork_rng(devices=[]):  # a throwaway model: keep the RNG as it was
        model = make_model(config, data.input_shape, data.n_classes, **data_model_options(data))
        _check_model(model, config, data, device)
    return data


def _fork_rng(device: torch.device):
    """``fork_rng`` over the CPU generator and, for CUDA, that one device's generator."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return torch.random.fork_rng(devices=[index], device_type="cuda")
    return torch.random.fork_rng(devices=[])


def _seed_global(seed: int, device: torch.device) -> None:
    """Seed the (forked) generators that init and dropout draw from on ``device``."""
    torch.default_generator.manual_seed(seed)
    if device.type == "cuda":
        with torch.cuda.device(device):
            torch.cuda.manual_seed(seed)


def _start(
    config: TrainConfig,
    data: DataBundle,
    device: torch.device,
    fingerprint: str,
    run_dir: RunDir | None,
) -> Run:
    """Build the seeded model, optimizer and schedules; resume from ``state.pt`` or begin.

    A new run records epoch 0 (and the initial snapshot); with a run directory,
    ``config.json`` is written either way.
    """
    start = time.perf_counter()
    _seed_global(config.seed, device)
    options = data_model_options(data)
    model = make_model(config, data.input_shape, data.n_classes, **options).to(device)  # on CPU
    env = normalise(environment(device, _compute_dtype(data, model)))  # str, not TorchVersion
    optimizer = make_optimizer(config, [p for p in model.parameters() if p.requires_grad])
    n = len(data.y_train)
    per_epoch, total = config.steps_per_epoch(n), config.total_steps(n)
    run = Run(
        config=config,
        device=device,
        model=model,
        optimizer=optimizer,
        sam=make_sam(config, optimizer, model),
        scheduler=make_scheduler(
            optimizer, config, total
        ),  # the base optimizer's lr, also under SAM
        tensors=tuple(t.to(device) for t in (data.x_train, data.y_train, data.x_test, data.y_test)),
        snapshots=Snapshots(model, run_dir),
        env=env,
        run_dir=run_dir,
        per_epoch=per_epoch,
        total=total,
        n_epochs=math.ceil(total / per_epoch),
        start=start,
        environments=[env],
    )
    resumed = run_dir is not None and run_dir.resume(run)
    if run_dir is not None:
        info = _run_info(data, model, fingerprint, env)
        run_dir.begin(config, info, keep_trajectory=resumed and bool(config.snapshot_every))
    if not resumed:
        run.history.append(_record(0, 0, run.lr(), model, run.tensors))
        if config.snapshot_every:
            run.snapshots.take(0)
    return run


def _compute_dtype(data: DataBundle, model: nn.Module) -> torch.dtype:
    """The dtype the arithmetic runs in: the inputs', or the model's for integer token ids."""
    if data.x_train.is_floating_point():
        return data.x_train.dtype
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)


def _run_info(
    data: DataBundle, model: nn.Module, fingerprint: str, env: dict[str, Any]
) -> dict[str, Any]:
    """The facts about a run that ``config.json`` holds beside its config."""
    from basinscope import __version__

    return {
        "input_shape": list(data.input_shape),
        "n_classes": data.n_classes,
        **data_model_options(data),  # vocab_size and readout, for token data only
        "dataset_name": data.name,
        "n_train": len(data.y_train),
        "n_params": sum(p.numel() for p in model.parameters()),
        "basinscope_version": __version__,
        "data_fingerprint": fingerprint,
        "environment": env,
    }


def _epochs(
    run: Run, progress: bool, on_epoch_end: Callable[[dict[str, Any]], None] | None
) -> None:
    """Epoch after epoch to the last one or a divergence; the resume state after each."""
    config = run.config
    bar = tqdm(
        total=run.total,
        initial=run.step,
        disable=not progress,
        desc=f"train {config.model}",
        unit="step",
    )
    with bar:
        while run.epoch < run.n_epochs and not run.diverged:
            _epoch(run, bar, progress)
            rec = _end_of_epoch(run)
            if run.diverged:
                break
            if run.run_dir is not None:
                run.run_dir.save_state(run)
            if on_epoch_end is not None:
                on_epoch_end(dict(rec))


def _epoch(run: Run, bar: tqdm, progress: bool) -> None:
    """One pass over the training set in epoch ``run.epoch``'s order, one step per minibatch.

    The order comes from ``item_generator(seed, epoch)`` and the dropout masks from
    a generator reseeded from ``(seed, epoch)``: no epoch depends on the ones before.
    """
    config, device = run.config, run.device
    x_train, y_train = run.tensors[0], run.tensors[1]
    n, bs = len(y_train), config.batch_size
    perm = torch.randperm(n, generator=item_generator(config.seed, run.epoch)).to(device)
    _seed_global(item_seed(config.seed, _DROPOUT_STREAM + run.epoch), device)
    run.model.train()
    for i in range(0, n, bs):
        if run.step >= run.total:
            break
        idx = perm[i : i + bs]
        value = _step(run, x_train[idx], y_train[idx])
        if run.diverged:
            break
        bar.update(1)
        if progress:
            bar.set_postfix(loss=f"{value:.4g}", epoch=run.epoch + 1, refresh=False)
    run.epoch += 1


def _step(run: Run, xb: torch.Tensor, yb: torch.Tensor) -> float:
    """One optimizer (or SAM) step on a minibatch; its loss. A NaN/inf loss marks a divergence."""
    model, optimizer, sam = run.model, run.optimizer, run.sam
    optimizer.zero_grad(set_to_none=True)
    loss = _loss(model(xb), yb)
    value = loss.item()
    if not math.isfinite(value):
        run.diverged = True
        radius = f", or the SAM radius sam_rho, now {sam.rho:g}" if sam is not None else ""
        run.message = (
            f"diverged at epoch {run.epoch + 1} step {run.step + 1}: loss became {value} "
            f"(lower the learning rate, now {run.lr():g}{radius}, or add warm-up steps)"
        )
        return value
    loss.backward()
    if sam is None:
        optimizer.step()
    else:  # second pass at w + ε̂; BatchNorm statistics come from the first
        sam.first_step(zero_grad=True)
        with frozen_running_stats(model):
            _loss(model(xb), yb).backward()
        sam.second_step()
    (run.swa_scheduler if run.swa_scheduler is not None else run.scheduler).step()
    run.step += 1
    return value


def _end_of_epoch(run: Run) -> dict[str, Any]:
    """Average for SWA, keep a snapshot when due, evaluate: the epoch's record."""
    config = run.config
    if config.swa_start is not None and run.epoch >= config.swa_start and not run.diverged:
        if run.swa_model is None:
            run.swa_model = AveragedModel(run.model)
        run.swa_model.update_parameters(run.model)
        if config.swa_lr is not None and run.swa_scheduler is None:
            run.swa_scheduler = make_swa_scheduler(run.optimizer, config, run.per_epoch)
    every = config.snapshot_every
    if every and not run.diverged and _snapshot_due(run.epoch, every, run.n_epochs):
        run.snapshots.take(run.epoch)
    lr = run.lr()
    if config.eval_every_epoch or run.epoch == run.n_epochs or run.diverged:
        rec = _record(run.epoch, run.step, lr, run.model, run.tensors)
        run.history.append(rec)
    else:
        rec = {"epoch": run.epoch, "step": run.step, "lr": lr}
    return rec


def _finish(run: Run) -> TrainResult:
    """The result: the last iterate, or the SWA average; with a run directory, sealed on disk."""
    run.model.eval()
    final_iterate = dict(run.history[-1])
    model = run.model
    if run.swa_model is not None and not run.diverged:
        model = _swa_average(run)
    wall = run.wall_time()
    final = dict(run.history[-1])
    if run.run_dir is not None:
        run.run_dir.finish(run, model, final, final_iterate, wall)
    return TrainResult(
        model=model,
        config=run.config,
        history=run.history,
        diverged=run.diverged,
        message=run.message,
        final=final,
        out_dir=run.run_dir.path if run.run_dir is not None else None,
        wall_time_s=wall,
        final_iterate=final_iterate,
        trajectory=run.snapshots.trajectory() if run.config.snapshot_every else None,
    )


def _swa_average(run: Run) -> nn.Module:
    """The SWA model with BatchNorm statistics recomputed, its record added to the history."""
    assert run.swa_model is not None
    model = run.swa_model.module
    # Recompute BatchNorm statistics for the averaged weights: one pass over the
    # training set in order (update_bn leaves models without BatchNorm as they are).
    _seed_global(item_seed(run.config.seed, _UPDATE_BN_STREAM), run.device)
    x_train, bs = run.tensors[0], run.config.batch_size
    update_bn([x_train[i : i + bs] for i in range(0, len(x_train), bs)], model)
    rec = _record(run.epoch, run.step, run.lr(), model, run.tensors)
    rec.update(weights="swa", swa_n_averaged=int(run.swa_model.n_averaged))
    run.history.append(rec)
    model.eval()
    return model
