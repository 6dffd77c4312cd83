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

import dataclasses
import functools
import hashlib
import json
import math
import numbers
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.lr_scheduler import LambdaLR
from torch.optim.swa_utils import SWALR, AveragedModel, update_bn
from tqdm import tqdm

from basinscope._checks import check_output_dir
from basinscope._io import atomic_torch_save, atomic_write_json
from basinscope._keys import differences, environment, normalise, tensor_digest, value_digest
from basinscope._lock import output_lock
from basinscope._rng import item_generator, item_seed
from basinscope.data import DataBundle
from basinscope.errors import BasinscopeError
from basinscope.models import MODELS, _check_options, build_model
from basinscope.optim import SAM, frozen_running_stats

OPTIMIZERS = ("sgd", "adam", "adamw")
"""Accepted values of :attr:`TrainConfig.optimizer`."""
SCHEDULES = ("constant", "cosine")
"""Accepted values of :attr:`TrainConfig.schedule`."""

MODEL_FILE, CONFIG_FILE, METRICS_FILE, STATE_FILE, TRAJECTORY_FILE = (
    "model.pt",
    "config.json",
    "metrics.json",
    "state.pt",
    "trajectory.pt",
)
# Keys config.json holds beside the TrainConfig fields: facts about the run.
_RUN_KEYS = (
    "input_shape",
    "n_classes",
    "dataset_name",
    "n_train",
    "n_params",
    "basinscope_version",
    "data_fingerprint",
    "environment",
)
_METRIC_KEYS = ("train_loss", "train_acc", "test_loss", "test_acc")
# Dropout streams use indices far above any epoch index used for shuffling.
_DROPOUT_STREAM = 1 << 32
# The stream of dropout masks drawn while update_bn recomputes the SWA model's statistics.
_UPDATE_BN_STREAM = 2 << 32
_EVAL_BATCH = 1024


def _is_int(v: Any) -> bool:
    """A Python or NumPy integer; ``True``/``False`` and floats such as ``3.0`` are not."""
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    """A finite real number (``nan``, ``inf`` and numbers beyond float range are not)."""
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        return False
    try:
        return math.isfinite(float(v))
    except OverflowError:  # an int beyond float range
        return False


# The config's integer and float fields: validate() converts NumPy scalars to
# Python ones, so config.json holds numbers and a run's identity is the same
# whichever scalar type the caller used.
_INT_FIELDS = ("data_seed", "batch_size", "epochs", "steps", "warmup_steps", "swa_start")
_INT_FIELDS += ("snapshot_every", "seed")
_FLOAT_FIELDS = ("label_noise", "dropout", "lr", "momentum", "weight_decay", "sam_rho", "swa_lr")


def _tuples(v: Any) -> Any:
    """Lists -> tuples, recursively (so a config equals itself after a JSON round trip)."""
    if isinstance(v, (list, tuple)):
        return tuple(_tuples(x) for x in v)
    if isinstance(v, Mapping):
        return {str(k): _tuples(x) for k, x in v.items()}
    return v


def _lists(v: Any) -> Any:
    """Tuples -> lists, recursively (JSON/TOML-able)."""
    if isinstance(v, (list, tuple)):
        return [_lists(x) for x in v]
    if isinstance(v, Mapping):
        return {str(k): _lists(x) for k, x in v.items()}
    return v


@dataclass
class TrainConfig:
    """Everything that determines a training run (JSON/TOML-serialisable).

    Attributes:
        dataset: dataset name for :func:`basinscope.data.load_dataset` (or an .npz path).
        data_dir: where downloaded data is cached; ``None`` for the default.
        train_size: keep a seeded subset of the training set: a count ``>= 1`` or a
            fraction in ``(0, 1]``; ``None`` keeps all of it.
        label_noise: fraction of training labels deliberately flipped to a wrong
            class (data poisoning, :func:`basinscope.data.poison_labels`).
        standardize: standardise the inputs with training-set statistics.
        data_seed: seed of the training subset, kept apart from ``seed`` so that
            runs with different ``seed`` see the same data.
        model: a :data:`basinscope.models.MODELS` name or ``"package.module:factory"``;
            a factory is imported and called when the model is built (it runs that
            code), so a config read from a file may name one only with
            ``trust_code=True`` (:meth:`from_toml`, :func:`load_checkpoint`).
        model_kwargs: options for the model (``widths``, ``channels``, ``activation``, ...).
        dropout: dropout probability, passed to the model as ``dropout`` when nonzero.
        optimizer: one of :data:`OPTIMIZERS`.
        lr: peak learning rate.
        momentum: SGD momentum in ``[0, 1)``.
        nesterov: Nesterov momentum (SGD with ``momentum > 0`` only).
        weight_decay: L2 penalty coefficient (decoupled for ``adamw``).
        batch_size: minibatch size; the last, partial batch of an epoch is kept.
        epochs: number of passes over the training data.
        steps: if set, train exactly this many optimizer steps instead of ``epochs``.
        warmup_steps: linear warm-up length in optimizer steps.
        schedule: one of :data:`SCHEDULES` after the warm-up; see :func:`lr_factor`.
        sam_rho: SAM radius ``ρ`` (Foret et al. 2021) around the optimizer, see
            :class:`basinscope.optim.SAM`; ``0`` trains without SAM. The papers'
            values are 0.05 (SAM) and 0.5 (ASAM).
        sam_adaptive: ASAM (Kwon et al. 2021, ``η = 0.01``) instead of SAM; needs ``sam_rho > 0``.
        swa_start: stochastic weight averaging (Izmailov et al. 2018): average the
            weights at the end of epochs ``swa_start, swa_start + 1, …, last``
            (``torch.optim.swa_utils.AveragedModel``, equal weights); the average,
            with BatchNorm statistics recomputed over the training set
            (``update_bn``), is the model returned, saved and measured. ``None``: off.
        swa_lr: with SWA, from the end of epoch ``swa_start`` on the learning rate
            anneals (cosine, over one epoch's steps, ``torch.optim.swa_utils.SWALR``)
            from its current value to ``swa_lr`` and stays there; ``None`` keeps the
            warm-up/``schedule`` running to the end.
        snapshot_every: keep the flat trainable-parameter vector after epoch 0
            (initialisation), every ``snapshot_every``-th epoch and the last epoch
            (:attr:`TrainResult.trajectory`, ``trajectory.pt``); ``0``: off.
        eval_every_epoch: evaluate after every epoch; else only before and after training.
        seed: seed of initialisation, shuffling and dropout.
        device: torch device string, e.g. ``"cpu"`` or ``"cuda:0"``.
    """

    dataset: str = "digits"
    data_dir: str | None = None
    train_size: int | float | None = None
    label_noise: float = 0.0
    standardize: bool = True
    data_seed: int = 0
    model: str = "mlp"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    dropout: float = 0.0
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    batch_size: int = 64
    epochs: int = 20
    steps: int | None = None
    warmup_steps: int = 0
    schedule: str = "constant"
    sam_rho: float = 0.0
    sam_adaptive: bool = False
    swa_start: int | None = None
    swa_lr: float | None = None
    snapshot_every: int = 0
    eval_every_epoch: bool = True
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        if isinstance(self.data_dir, Path):
            self.data_dir = str(self.data_dir)
        if isinstance(self.model_kwargs, Mapping):
            self.model_kwargs = _tuples(self.model_kwargs)

    def to_dict(self) -> dict[str, Any]:
        """The config as a JSON-able dict (tuples become lists)."""
        return {f.name: _lists(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainConfig:
        """Build and validate a config from a dict such as :meth:`to_dict` returns.

        Raises:
            BasinscopeError: unknown keys (they are named) or an invalid value.
        """
        if not isinstance(d, Mapping):
            raise BasinscopeError(f"a training config must be a table of options, not {d!r}.")
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(d) - set(names))
        if unknown:
            raise BasinscopeError(
                f"unknown training option(s) {', '.join(map(repr, unknown))}; "
                f"accepted: {', '.join(names)}."
            )
        config = cls(**dict(d))
        config.validate()
        return config

    @classmethod
    def from_toml(cls, path: str | Path, *, trust_code: bool = False) -> TrainConfig:
        """Read a config from a TOML file: top-level keys, or a ``[train]`` table.

        A file may name only a built-in model (:data:`basinscope.models.MODELS`):
        a ``"package.module:factory"`` would import and run that code when the
        model is built, so it is refused unless ``trust_code=True`` (CLI:
        ``--trust-code``), which you should pass only for files you trust.

        Raises:
            BasinscopeError: a missing or invalid file, an invalid value, or a
                model factory without ``trust_code``.
        """
        if sys.version_info >= (3, 11):
            import tomllib
        else:  # pragma: no cover - Python 3.10
            try:
                import tomli as tomllib
            except ImportError as e:
                raise BasinscopeError(
                    "reading TOML configs on Python 3.10 needs the 'tomli' package "
                    "(pip install tomli)."
                ) from e
        path = Path(path)
        try:
            with path.open("rb") as f:
                d = tomllib.load(f)
        except FileNotFoundError as e:
            raise BasinscopeError(f"config file {str(path)!r} does not exist.") from e
        except tomllib.TOMLDecodeError as e:
            raise BasinscopeError(f"config file {str(path)!r} is not valid TOML: {e}.") from e
        if isinstance(d.get("train"), dict):
            d = d["train"]
        if not trust_code:
            _refuse_code(path, d.get("model"))
        return cls.from_dict(d)

    def validate(self) -> None:
        """Check every value; raise a one-sentence :class:`BasinscopeError` on the first bad one."""

        def bad(name: str, accepted: str) -> BasinscopeError:
            return BasinscopeError(f"{name} {getattr(self, name)!r} is not valid; {accepted}.")

        if not isinstance(self.dataset, str) or not self.dataset:
            raise bad("dataset", "give a dataset name or an .npz path")
        if self.data_dir is not None and not isinstance(self.data_dir, str):
            raise bad("data_dir", "give a directory path or leave it unset")
        size = self.train_size
        if size is not None and not (
            (_is_int(size) and size > 0)
            or (not _is_int(size) and _is_number(size) and 0.0 < size <= 1.0)
        ):
            raise bad("train_size", "give a count >= 1, a fraction in (0, 1], or leave it unset")
        if not (_is_number(self.label_noise) and 0.0 <= self.label_noise < 1.0):
            raise bad("label_noise", "give a fraction in [0, 1)")
        for name in ("standardize", "nesterov", "eval_every_epoch", "sam_adaptive"):
            if not isinstance(getattr(self, name), bool):
                raise bad(name, "give true or false")
        for name in ("seed", "data_seed"):
            if not (_is_int(getattr(self, name)) and getattr(self, name) >= 0):
                raise bad(name, "give a non-negative integer")
        if not isinstance(self.model, str) or not (self.model in MODELS or ":" in self.model):
            raise bad("model", f"accepted: {', '.join(sorted(MODELS))} or 'package.module:factory'")
        if not isinstance(self.model_kwargs, dict) or not all(
            isinstance(k, str) for k in self.model_kwargs
        ):
            raise bad("model_kwargs", "give a table of model options, e.g. {widths = [64, 64]}")
        if "dropout" in self.model_kwargs:
            raise BasinscopeError(
                "model_kwargs must not contain 'dropout'; set the dropout option instead."
            )
        if not (_is_number(self.dropout) and 0.0 <= self.dropout < 1.0):
            raise bad("dropout", "give a number in [0, 1)")
        if self.model in MODELS:
            _check_options(self.model, MODELS[self.model], self._model_options())
        if self.optimizer not in OPTIMIZERS:
            raise bad("optimizer", f"accepted: {', '.join(OPTIMIZERS)}")
        if not (_is_number(self.lr) and self.lr > 0):
            raise bad("lr", "give a positive learning rate, e.g. 0.1")
        if not (_is_number(self.momentum) and 0.0 <= self.momentum < 1.0):
            raise bad("momentum", "give a number in [0, 1)")
        if self.momentum > 0 and self.optimizer != "sgd":
            raise bad("momentum", f"momentum applies to sgd only, not {self.optimizer}")
        if self.nesterov and (self.optimizer != "sgd" or self.momentum == 0):
            raise bad("nesterov", "Nesterov momentum needs optimizer 'sgd' with momentum > 0")
        if not (_is_number(self.weight_decay) and self.weight_decay >= 0):
            raise bad("weight_decay", "give a non-negative number")
        if not (_is_int(self.batch_size) and self.batch_size >= 1):
            raise bad("batch_size", "give a positive integer")
        if not (_is_int(self.epochs) and self.epochs >= 1):
            raise bad("epochs", "give a positive integer")
        if self.steps is not None and not (_is_int(self.steps) and self.steps >= 1):
            raise bad("steps", "give a positive number of optimizer steps or leave it unset")
        if not (_is_int(self.warmup_steps) and self.warmup_steps >= 0):
            raise bad("warmup_steps", "give a non-negative integer")
        if self.schedule not in SCHEDULES:
            raise bad("schedule", f"accepted: {', '.join(SCHEDULES)}")
        if not (_is_number(self.sam_rho) and self.sam_rho >= 0):
            raise bad("sam_rho", "give 0 (no SAM) or a positive radius, e.g. 0.05 (0.5 for ASAM)")
        if self.sam_adaptive and self.sam_rho == 0:
            raise bad("sam_adaptive", "ASAM needs a positive sam_rho, e.g. 0.5")
        if self.swa_start is not None and not (_is_int(self.swa_start) and self.swa_start >= 1):
            raise bad("swa_start", "give the epoch (>= 1) SWA averages from, or leave it unset")
        if self.swa_start is not None and self.steps is None and self.swa_start > self.epochs:
            raise bad("swa_start", f"give an epoch no later than the last one, {self.epochs}")
        if self.swa_lr is not None and not (_is_number(self.swa_lr) and self.swa_lr > 0):
            raise bad("swa_lr", "give a positive learning rate or leave it unset")
        if self.swa_lr is not None and self.swa_start is None:
            raise bad("swa_lr", "swa_lr needs swa_start, the epoch SWA begins")
        if not (_is_int(self.snapshot_every) and self.snapshot_every >= 0):
            raise bad("snapshot_every", "give 0 (off) or a positive number of epochs")
        if not isinstance(self.device, str):
            raise bad("device", "give a torch device such as 'cpu' or 'cuda:0'")
        try:
            torch.device(self.device)
        except (RuntimeError, ValueError, TypeError) as e:
            raise bad("device", "give a torch device such as 'cpu' or 'cuda:0'") from e
        self._plain_numbers()

    def _plain_numbers(self) -> None:
        """Replace NumPy scalars by Python ints and floats (after validation)."""
        for name in _INT_FIELDS:
            if getattr(self, name) is not None:
                setattr(self, name, int(getattr(self, name)))
        for name in _FLOAT_FIELDS:
            v = getattr(self, name)
            if v is not None and not isinstance(v, (int, float)):
                setattr(self, name, float(v))
        if self.train_size is not None and not isinstance(self.train_size, (int, float)):
            size = self.train_size
            self.train_size = int(size) if isinstance(size, numbers.Integral) else float(size)

    def steps_per_epoch(self, n_train: int) -> int:
        """Optimizer steps in one epoch over ``n_train`` examples (last partial batch kept)."""
        return math.ceil(n_train / self.batch_size)

    def total_steps(self, n_train: int) -> int:
        """Optimizer steps of the whole run: ``steps`` if set, else ``epochs × steps_per_epoch``."""
        return self.steps if self.steps is not None else self.epochs * self.steps_per_epoch(n_train)

    def _model_options(self) -> dict[str, Any]:
        kwargs = dict(self.model_kwargs)
        if self.dropout:
            kwargs["dropout"] = self.dropout
        return kwargs


def _refuse_code(source: str | Path, model: Any) -> None:
    """Refuse a model factory named by a file: building it would import and run code."""
    if isinstance(model, str) and model not in MODELS and ":" in model:
        raise BasinscopeError(
            f"{str(source)!r} names the factory {model!r}, which would import and run code; "
            "pass trust_code=True (CLI: --trust-code) only for run directories and config "
            "files you trust"
        )


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


def make_model(config: TrainConfig, input_shape: Iterable[int], n_classes: int) -> nn.Module:
    """``build_model`` for the config's model, options and dropout (not seeded: caller seeds)."""
    return build_model(config.model, tuple(input_shape), n_classes, **config._model_options())


@dataclass(frozen=True)
class Trajectory:
    """Snapshots of the trainable weights along training (for PCA directions, Li et al. 2018).

    Row ``i`` of ``params`` is the flat vector of all trainable parameters after
    ``epochs[i]`` epochs (0 = initialisation), concatenated in
    ``model.named_parameters()`` order (the layout of the default
    :class:`basinscope.ParamSpace`), as float32 on the CPU. With SWA the rows
    are the optimizer's iterates, not the average.

    Attributes:
        epochs: ``(k,)`` epoch of each snapshot, increasing.
        params: ``[k, n]`` float32 CPU tensor.
        names: the ``len(shapes)`` parameter names, in the order concatenated.
        shapes: their shapes.
    """

    epochs: tuple[int, ...]
    params: torch.Tensor
    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]

    def unflatten(self, i: int) -> dict[str, torch.Tensor]:
        """Snapshot ``i`` as a name -> tensor dict (views into :attr:`params`)."""
        out, offset = {}, 0
        for name, shape in zip(self.names, self.shapes, strict=True):
            k = math.prod(shape)
            out[name] = self.params[i, offset : offset + k].view(shape)
            offset += k
        return out


@dataclass
class TrainResult:
    """The outcome of :func:`train`.

    Attributes:
        model: the trained model, in eval mode, on ``config.device``: with SWA the
            averaged model (BatchNorm statistics recomputed), else the last iterate.
            It is what ``model.pt`` holds.
        config: the config it was trained with.
        history: one record per evaluation: ``{epoch, step, lr, train_loss,
            train_acc, test_loss, test_acc}``; epoch 0 is before training,
            ``lr`` is the rate the next step would use, losses are exact
            dataset means, accuracies fractions in [0, 1] (``test_*`` are
            ``None`` without test data). These describe the optimizer's
            iterates; with SWA one last record, marked ``"weights": "swa"`` and
            holding ``swa_n_averaged``, describes the averaged model.
        diverged: training stopped on a NaN/inf minibatch loss (no SWA model is
            formed then: the last iterate is returned).
        message: why it stopped, if it diverged; else ``""``.
        final: the last history record: the returned, saved model's numbers.
        final_iterate: the last record of the optimizer's own weights (the final
            SGD/Adam iterate); equal to ``final`` without SWA.
        out_dir: the run directory, or ``None``.
        wall_time_s: training time in seconds (summed over resumed parts).
        reused: the finished run in ``out_dir`` was returned without training.
        trajectory: the weight snapshots when ``config.snapshot_every > 0``, else ``None``.
    """

    model: nn.Module
    config: TrainConfig
    history: list[dict[str, Any]]
    diverged: bool = False
    message: str = ""
    final: dict[str, Any] = field(default_factory=dict)
    out_dir: Path | None = None
    wall_time_s: float = 0.0
    reused: bool = False
    final_iterate: dict[str, Any] = field(default_factory=dict)
    trajectory: Trajectory | None = None


@dataclass
class Checkpoint:
    """A finished run loaded by :func:`load_checkpoint`.

    Attributes:
        model: the trained model, in eval mode.
        config: its training config.
        metrics: the contents of ``metrics.json`` (``{}`` if absent).
        path: the run directory.
        info: the run facts saved in ``config.json``: ``input_shape``,
            ``n_classes``, ``dataset_name``, ``n_train``, ``n_params``,
            ``basinscope_version``, ``data_fingerprint``.
    """

    model: nn.Module
    config: TrainConfig
    metrics: dict[str, Any]
    path: Path
    info: dict[str, Any] = field(default_factory=dict)


def _device(name: str) -> torch.device:
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BasinscopeError(f"device {name!r} is not available on this machine; use 'cpu'.")
    return device


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


def _check_data(data: DataBundle) -> None:
    """Refuse data training cannot use, with one sentence, before any work.

    ``x_train [N, *input_shape]`` floating point and finite, ``y_train [N]`` int64
    class indices in ``[0, n_classes)``; the test split (possibly empty) the same,
    with the training split's example shape and dtype.
    """
    x, y, k = data.x_train, data.y_train, data.n_classes
    if not _is_int(k) or k < 1:
        raise BasinscopeError(f"n_classes {k!r} is not valid; give a positive number of classes.")
    if x.ndim < 2 or len(x) == 0 or y.ndim != 1 or len(x) != len(y):
        raise BasinscopeError(
            f"training data of shape {tuple(x.shape)} with labels of shape {tuple(y.shape)} "
            "is not valid; give x_train [N, *input_shape] with N >= 1 and y_train [N]."
        )
    xt, yt = data.x_test, data.y_test
    has_test = bool(len(yt) or xt.numel())  # an empty test split may have any shape
    if has_test and (
        yt.ndim != 1 or xt.ndim < 1 or len(xt) != len(yt) or xt.shape[1:] != x.shape[1:]
    ):
        shape = ", ".join(map(str, x.shape[1:]))
        raise BasinscopeError(
            f"test data of shape {tuple(xt.shape)} with labels of shape {tuple(yt.shape)} "
            f"does not match the training data; give x_test [M, {shape}] and y_test [M]."
        )
    for name, t in (("x_train", x), ("x_test", xt)):
        if name == "x_test" and not has_test:
            continue
        if not t.is_floating_point():
            raise BasinscopeError(f"{name} has dtype {t.dtype}; give floating-point inputs.")
        if t.dtype != x.dtype:
            raise BasinscopeError(
                f"x_test has dtype {t.dtype} but x_train {x.dtype}; give both the same dtype."
            )
        bad = ~torch.isfinite(t)
        if bad.any():
            first = int(bad.reshape(len(t), -1).any(dim=1).nonzero()[0, 0])
            raise BasinscopeError(
                f"{name} holds {int(bad.sum())} NaN or infinite value(s) (the first in example "
                f"{first}); give finite inputs."
            )
    for name, t in (("y_train", y), ("y_test", yt)):
        if t.dtype != torch.int64:
            raise BasinscopeError(f"{name} has dtype {t.dtype}; give int64 class indices.")
        if len(t) and (int(t.min()) < 0 or int(t.max()) >= k):
            raise BasinscopeError(
                f"{name} holds labels outside [0, {k}); give class indices below n_classes={k}."
            )


def _check_model(model: nn.Module, config: TrainConfig, data: DataBundle, device) -> None:
    """Refuse a model that cannot train on ``data``: its dtype, or its output for two examples.

    ``model`` is a throwaway copy built for this check (a factory may keep state),
    evaluated in eval mode without gradients.
    """
    x = data.x_train
    dtypes = sorted({str(p.dtype) for p in model.parameters() if p.is_floating_point()})
    if dtypes and str(x.dtype) not in dtypes:
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
    want = (min(len(x), 2), data.n_classes)
    if not torch.is_tensor(out) or tuple(out.shape) != want:
        got = f"shape {tuple(out.shape)}" if torch.is_tensor(out) else f"a {type(out).__name__}"
        raise BasinscopeError(
            f"model {config.model!r} returned {got} for {want[0]} examples; give a model "
            f"that returns logits [B, n_classes={data.n_classes}]."
        )


def _fingerprint(data: DataBundle) -> str:
    """A hash of the tensors, so a finished run is reused only for the same data."""
    h = hashlib.blake2b(digest_size=16)
    for t in (data.x_train, data.y_train, data.x_test, data.y_test):
        t = t.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


@torch.no_grad()
def _evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float] | None:
    """Exact dataset-mean cross-entropy and accuracy (float64 sums over chunks)."""
    if len(y) == 0:
        return None
    model.eval()
    loss = torch.zeros((), dtype=torch.float64, device=x.device)
    correct = torch.zeros((), dtype=torch.int64, device=x.device)
    for i in range(0, len(y), _EVAL_BATCH):
        out = model(x[i : i + _EVAL_BATCH])
        yb = y[i : i + _EVAL_BATCH]
        loss += F.cross_entropy(out.double(), yb, reduction="sum")
        correct += (out.argmax(dim=1) == yb).sum()
    return loss.item() / len(y), correct.item() / len(y)


def _record(epoch: int, step: int, lr: float, model: nn.Module, tensors: tuple) -> dict[str, Any]:
    x_train, y_train, x_test, y_test = tensors
    rec: dict[str, Any] = {"epoch": epoch, "step": step, "lr": lr}
    for split, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        res = _evaluate(model, x, y)
        rec[f"{split}_loss"], rec[f"{split}_acc"] = res if res is not None else (None, None)
    return rec


def _identity(config: TrainConfig, fingerprint: str) -> dict[str, Any]:
    """What makes two runs the same run: the config (less the device) and the data."""
    d = config.to_dict()
    d.pop("device")
    return {"config": d, "data": fingerprint}


def _saved_identity(saved: Mapping[str, Any]) -> dict[str, Any]:
    # An option missing from an older config.json had its default value then.
    defaults = TrainConfig().to_dict()
    names = [f.name for f in dataclasses.fields(TrainConfig) if f.name != "device"]
    return {
        "config": {k: saved.get(k, defaults[k]) for k in names},
        "data": saved.get("data_fingerprint"),
    }


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise BasinscopeError(f"{str(path)!r} could not be read as JSON: {e}.") from e


def _json_or_none(path: Path) -> dict[str, Any] | None:
    """``path`` as a JSON object, or None when it is missing, unreadable or not an object."""
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return d if isinstance(d, dict) else None


def _state_digest(state: Mapping[str, torch.Tensor]) -> str:
    """A digest of a state dict: its names and its tensors' dtypes, shapes and bytes."""
    names = sorted(state)
    return value_digest([names, tensor_digest(*(state[k] for k in names))])


def _differing(saved: Any, identity: Mapping[str, Any]) -> str:
    """What differs between a saved run identity and ``identity``: option names, the data."""
    if not isinstance(saved, Mapping) or not isinstance(saved.get("config"), Mapping):
        return "an unrecorded configuration"
    names = differences(saved["config"], identity["config"])
    if saved.get("data") != identity["data"]:
        names.append("data")
    return " and ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names)


_AFRESH = "choose another out_dir (CLI: --out) or delete the directory to train this one"


def _claim(out: Path, identity: dict[str, Any]) -> dict[str, Any] | None:
    """Refuse to train into ``out`` over another run's work; return its readable ``config.json``.

    Another configuration's finished results (``model.pt``, ``metrics.json``) or
    resume state (``state.pt``) are never overwritten: the caller stops with one
    sentence naming what differs. ``config.json`` alone (a run killed before its
    first epoch ended) holds no work and may be replaced.
    """
    saved = _json_or_none(out / CONFIG_FILE)
    theirs = _saved_identity(saved) if saved is not None else None
    results = [n for n in (MODEL_FILE, METRICS_FILE) if (out / n).is_file()]
    if results and theirs != identity:
        if saved is None:
            raise BasinscopeError(
                f"run directory {str(out)!r} holds {' and '.join(results)} without a readable "
                f"config.json that says which run they belong to; {_AFRESH}"
            )
        raise BasinscopeError(
            f"run directory {str(out)!r} holds a finished run of another configuration "
            f"(different {_differing(theirs, identity)}); {_AFRESH}"
        )
    state = _read_state(out)
    if state is not None and state.get("identity") != identity:
        raise BasinscopeError(
            f"run directory {str(out)!r} holds an interrupted run of another configuration "
            f"(different {_differing(state.get('identity'), identity)}); rerun that "
            f"configuration to resume it, or {_AFRESH}"
        )
    return saved


def _mismatch(out: Path, what: str) -> BasinscopeError:
    return BasinscopeError(
        f"run directory {str(out)!r} holds files that do not belong together ({what}); "
        "delete the directory or choose another out_dir (CLI: --out) to train afresh"
    )


def _check_sealed(
    out: Path, saved: Mapping[str, Any], metrics: Mapping[str, Any], weights: Mapping
) -> bool:
    """Check ``config.json`` and ``model.pt`` against the digests ``metrics.json`` seals.

    ``metrics.json`` is written last, with the digests of the run identity that
    ``config.json`` describes and of the weights in ``model.pt``; a set mixed from
    two runs (or a file replaced since) is refused. Returns False for a run
    written before the digests existed (nothing to compare), True when sealed.
    """
    if "model_digest" not in metrics and "identity_digest" not in metrics:
        return False
    if metrics.get("identity_digest") != value_digest(_saved_identity(saved)):
        raise _mismatch(out, "config.json describes another run than metrics.json")
    if metrics.get("model_digest") != _state_digest(weights):
        raise _mismatch(out, "model.pt does not match the model metrics.json was written for")
    return True


def _same_number(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is b
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-7)


def _load_finished(
    out: Path,
    config: TrainConfig,
    data: DataBundle,
    identity: dict[str, Any],
    saved: dict[str, Any] | None,
) -> TrainResult | None:
    """The finished run in ``out`` if it is this run's and its files belong together.

    ``None`` when there is no complete run of this config there (train or resume).
    The model is built from ``config`` (the caller's own), never from the file.

    Raises:
        BasinscopeError: the files do not belong together (see :func:`_check_sealed`).
    """
    metrics = _json_or_none(out / METRICS_FILE)
    keys = ("history", "final", "diverged", "message", "wall_time_s")
    if saved is None or metrics is None or not metrics.get("completed"):
        return None
    if not all(k in metrics for k in keys) or not isinstance(metrics["final"], dict):
        return None  # not a metrics.json train wrote: this config is trained again
    if not (out / MODEL_FILE).is_file():
        return None
    weights = _read_weights(out / MODEL_FILE)
    sealed = _check_sealed(out, saved, metrics, weights)
    with torch.random.fork_rng(devices=[]):  # building initialises weights: keep RNG as it was
        model = make_model(config, data.input_shape, data.n_classes)
    _load_into(model, weights, out / MODEL_FILE, _describe(config, saved))
    model.eval()
    if not sealed:  # written before the digests: its numbers must be this model's
        res = _evaluate(model, data.x_train, data.y_train)
        if res is None or not _same_number(res[0], metrics["final"].get("train_loss")):
            raise _mismatch(out, "the loss of model.pt is not the one metrics.json records")
    trajectory = None
    if config.snapshot_every:
        saved_trajectory = _read_trajectory(out / TRAJECTORY_FILE)
        if saved_trajectory is None or saved_trajectory.get("identity") != identity:
            return None  # train again to write it
        digest = metrics.get("trajectory_digest")
        if digest is not None and digest != tensor_digest(saved_trajectory["params"]):
            raise _mismatch(out, "trajectory.pt is not the trajectory metrics.json records")
        trajectory = _as_trajectory(saved_trajectory)
    (out / STATE_FILE).unlink(missing_ok=True)  # left if a crash came after the seal
    return TrainResult(
        model=model.to(_device(config.device)),
        config=config,
        history=metrics["history"],
        diverged=metrics["diverged"],
        message=metrics["message"],
        final=metrics["final"],
        out_dir=out,
        wall_time_s=metrics["wall_time_s"],
        reused=True,
        final_iterate=metrics.get("final_iterate", metrics["final"]),
        trajectory=trajectory,
    )


def _read_state(out: Path) -> dict[str, Any] | None:
    """``state.pt`` as a dict, or None when missing or unreadable (it is only a cache)."""
    path = out / STATE_FILE
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # unreadable state: start afresh, it is only a cache
        return None
    return state if isinstance(state, dict) else None


def _load_state(out: Path, identity: dict[str, Any]) -> dict[str, Any] | None:
    state = _read_state(out)
    return state if state is not None and state.get("identity") == identity else None


def _snapshot_due(epoch: int, every: int, n_epochs: int) -> bool:
    """Whether a snapshot is kept after ``epoch`` (0 = initialisation)."""
    return epoch == 0 or epoch % every == 0 or epoch == n_epochs


def _flat(params: list[torch.Tensor]) -> torch.Tensor:
    """The flat float32 CPU vector of ``params`` (a copy)."""
    return torch.cat([p.detach().reshape(-1).to("cpu", torch.float32) for p in params])


def _read_trajectory(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        return None
    keys = {"epochs", "params", "names", "shapes"}
    return saved if isinstance(saved, dict) and keys <= set(saved) else None


def _as_trajectory(saved: Mapping[str, Any]) -> Trajectory:
    return Trajectory(
        epochs=tuple(int(e) for e in saved["epochs"]),
        params=saved["params"],
        names=tuple(saved["names"]),
        shapes=tuple(tuple(int(d) for d in s) for s in saved["shapes"]),
    )


def load_trajectory(run_dir: str | Path) -> Trajectory:
    """The weight snapshots a run with ``snapshot_every > 0`` wrote (``trajectory.pt``).

    Args:
        run_dir: the run directory, or its ``trajectory.pt``.

    Returns:
        A :class:`Trajectory`; ``params`` is ``[k, n]`` float32 on the CPU. A run that
        is still training (or was interrupted) gives the snapshots taken so far.

    Raises:
        BasinscopeError: no readable ``trajectory.pt`` there.
    """
    path = Path(run_dir)
    if path.suffix != ".pt":
        path = path / TRAJECTORY_FILE
    if not path.is_file():
        raise BasinscopeError(
            f"{str(path)!r} does not exist; train with snapshot_every > 0 to record the "
            "weight trajectory."
        )
    saved = _read_trajectory(path)
    if saved is None:
        raise BasinscopeError(
            f"{str(path)!r} could not be read as a weight trajectory; train the run again."
        )
    return _as_trajectory(saved)


class _Snapshots:
    """The trajectory being recorded; with a run directory, each new snapshot is saved."""

    def __init__(self, model: nn.Module, identity: dict[str, Any], path: Path | None) -> None:
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.params = [p for _, p in named]
        self.names = [n for n, _ in named]
        self.shapes = [list(p.shape) for p in self.params]
        self.identity, self.path = identity, path
        self.epochs: list[int] = []
        self.rows: list[torch.Tensor] = []

    def resume(self, epoch: int, expected: list[int]) -> bool:
        """Reload the snapshots up to ``epoch`` from the file; False if it lacks them."""
        saved = _read_trajectory(self.path) if self.path is not None else None
        if saved is None or saved.get("identity") != self.identity:
            return False
        keep = [i for i, e in enumerate(saved["epochs"]) if e <= epoch]
        if [saved["epochs"][i] for i in keep] != expected:
            return False
        self.epochs = list(expected)
        self.rows = [saved["params"][i].clone() for i in keep]
        return True

    def take(self, epoch: int) -> None:
        self.epochs.append(epoch)
        self.rows.append(_flat(self.params))
        if self.path is not None:
            atomic_torch_save(self.path, {"identity": self.identity, **self._content()})

    def _content(self) -> dict[str, Any]:
        return {
            "epochs": list(self.epochs),
            "params": torch.stack(self.rows),
            "names": list(self.names),
            "shapes": self.shapes,
        }

    def trajectory(self) -> Trajectory:
        return _as_trajectory(self._content())


def load_config_data(config: TrainConfig) -> DataBundle:
    """The dataset a config trains on (subset, label noise and standardisation applied)."""
    from basinscope.data import load_dataset

    return load_dataset(
        config.dataset,
        data_dir=config.data_dir,
        train_size=config.train_size,
        standardize=config.standardize,
        seed=config.data_seed,
        label_noise=config.label_noise,
    )


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
    device = _device(config.device)
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
        _check_model(make_model(config, data.input_shape, data.n_classes), config, data, device)
    fingerprint = _fingerprint(data)
    if out_dir is None:
        with _fork_rng(device):
            return _train(config, data, device, fingerprint, None, progress, on_epoch_end)
    out = check_output_dir(out_dir, "the run directory")
    # Create the directory first, so every writer locks the same <out>/.basinscope.lock.
    out.mkdir(parents=True, exist_ok=True)
    with output_lock(out, "the run directory"):
        identity = _identity(config, fingerprint)
        try:
            saved = _claim(out, identity)
            finished = _load_finished(out, config, data, identity, saved)
        except BasinscopeError:
            if not replace:
                raise
            for name in (MODEL_FILE, METRICS_FILE, TRAJECTORY_FILE, STATE_FILE):
                (out / name).unlink(missing_ok=True)
            finished = None
        if finished is not None:
            return finished
        with _fork_rng(device):
            return _train(config, data, device, fingerprint, out, progress, on_epoch_end)


def _train(
    config: TrainConfig,
    data: DataBundle,
    device: torch.device,
    fingerprint: str,
    out: Path | None,
    progress: bool,
    on_epoch_end: Callable[[dict[str, Any]], None] | None,
) -> TrainResult:
    start = time.perf_counter()
    _seed_global(config.seed, device)
    model = make_model(config, data.input_shape, data.n_classes).to(device)  # init on the CPU
    env = normalise(environment(device, data.x_train.dtype))  # plain str, not TorchVersion
    optimizer = make_optimizer(config, [p for p in model.parameters() if p.requires_grad])
    sam = make_sam(config, optimizer, model)
    n, bs = len(data.y_train), config.batch_size
    per_epoch, total = config.steps_per_epoch(n), config.total_steps(n)
    n_epochs = math.ceil(total / per_epoch)
    scheduler = make_scheduler(optimizer, config, total)  # the base optimizer's lr, also under SAM
    swa_model: AveragedModel | None = None
    swa_scheduler: SWALR | None = None
    tensors = tuple(t.to(device) for t in (data.x_train, data.y_train, data.x_test, data.y_test))
    x_train, y_train = tensors[0], tensors[1]
    identity = _identity(config, fingerprint)
    every = config.snapshot_every
    snapshots = _Snapshots(model, identity, out / TRAJECTORY_FILE if out else None)

    epoch, step, history, elapsed = 0, 0, [], 0.0
    state = _load_state(out, identity) if out is not None else None
    if state is not None and every:
        expected = [e for e in range(state["epoch"] + 1) if _snapshot_due(e, every, n_epochs)]
        if not snapshots.resume(state["epoch"], expected):
            state = None  # the trajectory so far is lost: train afresh rather than leave a gap
    if state is not None:
        model.load_state_dict(state["model"])
        (sam if sam is not None else optimizer).load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if state["swa_model"] is not None:
            swa_model = AveragedModel(model)
            swa_model.load_state_dict(state["swa_model"])
        if state["swa_scheduler"] is not None:  # built after the optimizer's lr is restored
            swa_scheduler = make_swa_scheduler(optimizer, config, per_epoch)
            swa_scheduler.load_state_dict(state["swa_scheduler"])
        epoch, step, history, elapsed = (
            state["epoch"],
            state["step"],
            state["history"],
            state["wall_time_s"],
        )
        environments = _resumed_under(out, list(state.get("environments") or []), env)
    else:
        environments = [env]
    if out is not None:
        from basinscope import __version__

        stale = [MODEL_FILE, METRICS_FILE]  # results of another config
        if state is None or not every:
            stale.append(TRAJECTORY_FILE)
        for name in stale:
            (out / name).unlink(missing_ok=True)
        run_info = {
            "input_shape": list(data.input_shape),
            "n_classes": data.n_classes,
            "dataset_name": data.name,
            "n_train": n,
            "n_params": sum(p.numel() for p in model.parameters()),
            "basinscope_version": __version__,
            "data_fingerprint": fingerprint,
            "environment": env,
        }
        atomic_write_json(out / CONFIG_FILE, {**config.to_dict(), **run_info})
    if state is None:
        history.append(_record(0, 0, optimizer.param_groups[0]["lr"], model, tensors))
        if every:
            snapshots.take(0)

    diverged, message = False, ""
    bar = tqdm(
        total=total, initial=step, disable=not progress, desc=f"train {config.model}", unit="step"
    )
    with bar:
        while epoch < n_epochs and not diverged:
            perm = torch.randperm(n, generator=item_generator(config.seed, epoch)).to(device)
            _seed_global(item_seed(config.seed, _DROPOUT_STREAM + epoch), device)
            model.train()
            for i in range(0, n, bs):
                if step >= total:
                    break
                idx = perm[i : i + bs]
                xb, yb = x_train[idx], y_train[idx]
                optimizer.zero_grad(set_to_none=True)
                loss = F.cross_entropy(model(xb), yb)
                value = loss.item()
                if not math.isfinite(value):
                    lr = optimizer.param_groups[0]["lr"]
                    diverged = True
                    message = (
                        f"diverged at epoch {epoch + 1} step {step + 1}: loss became {value} "
                        f"(lower the learning rate, now {lr:g}, or add warm-up steps)"
                    )
                    break
                loss.backward()
                if sam is None:
                    optimizer.step()
                else:  # second pass at w + ε̂; BatchNorm statistics come from the first
                    sam.first_step(zero_grad=True)
                    with frozen_running_stats(model):
                        F.cross_entropy(model(xb), yb).backward()
                    sam.second_step()
                (swa_scheduler if swa_scheduler is not None else scheduler).step()
                step += 1
                bar.update(1)
                if progress:
                    bar.set_postfix(loss=f"{value:.4g}", epoch=epoch + 1, refresh=False)
            epoch += 1
            if config.swa_start is not None and epoch >= config.swa_start and not diverged:
                if swa_model is None:
                    swa_model = AveragedModel(model)
                swa_model.update_parameters(model)
                if config.swa_lr is not None and swa_scheduler is None:
                    swa_scheduler = make_swa_scheduler(optimizer, config, per_epoch)
            if every and not diverged and _snapshot_due(epoch, every, n_epochs):
                snapshots.take(epoch)
            lr = optimizer.param_groups[0]["lr"]
            if config.eval_every_epoch or epoch == n_epochs or diverged:
                rec = _record(epoch, step, lr, model, tensors)
                history.append(rec)
            else:
                rec = {"epoch": epoch, "step": step, "lr": lr}
            if diverged:
                break
            if out is not None:
                atomic_torch_save(
                    out / STATE_FILE,
                    {
                        "identity": identity,
                        "model": model.state_dict(),
                        "optimizer": (sam if sam is not None else optimizer).state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "swa_model": None if swa_model is None else swa_model.state_dict(),
                        "swa_scheduler": None
                        if swa_scheduler is None
                        else swa_scheduler.state_dict(),
                        "epoch": epoch,
                        "step": step,
                        "history": history,
                        "wall_time_s": elapsed + time.perf_counter() - start,
                        "environments": environments,
                    },
                )
            if on_epoch_end is not None:
                on_epoch_end(dict(rec))

    model.eval()
    final_iterate = dict(history[-1])
    if swa_model is not None and not diverged:
        model = swa_model.module
        # Recompute BatchNorm statistics for the averaged weights: one pass over the
        # training set in order (update_bn leaves models without BatchNorm as they are).
        _seed_global(item_seed(config.seed, _UPDATE_BN_STREAM), device)
        update_bn([x_train[i : i + bs] for i in range(0, n, bs)], model)
        rec = _record(epoch, step, optimizer.param_groups[0]["lr"], model, tensors)
        rec.update(weights="swa", swa_n_averaged=int(swa_model.n_averaged))
        history.append(rec)
        model.eval()
    wall = elapsed + time.perf_counter() - start
    final = dict(history[-1])
    if out is not None:
        # model.pt first, metrics.json last: metrics.json seals the set with the
        # digests of config.json's run and of model.pt, so a crash between the
        # writes leaves no metrics.json (removed when this training began) and
        # the rerun resumes from state.pt instead of reusing a half-written run.
        weights = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        atomic_torch_save(out / MODEL_FILE, weights)
        seal = {
            "identity_digest": value_digest(_saved_identity(_read_json(out / CONFIG_FILE))),
            "model_digest": _state_digest(weights),
        }
        if every:
            seal["trajectory_digest"] = tensor_digest(snapshots.trajectory().params)
        atomic_write_json(
            out / METRICS_FILE,
            {
                "history": history,
                "final": final,
                "final_iterate": final_iterate,
                "diverged": diverged,
                "message": message,
                "wall_time_s": wall,
                "epochs_run": epoch,
                "steps_run": step,
                "completed": True,
                "environment": env,
                "environments": environments,
                **seal,
            },
        )
        (out / STATE_FILE).unlink(missing_ok=True)
    return TrainResult(
        model=model,
        config=config,
        history=history,
        diverged=diverged,
        message=message,
        final=final,
        out_dir=out,
        wall_time_s=wall,
        final_iterate=final_iterate,
        trajectory=snapshots.trajectory() if every else None,
    )


def _resumed_under(out: Path, before: list[dict[str, Any]], env: dict[str, Any]) -> list:
    """The environments a run was trained under, warning when the resume adds one.

    Training is bit-reproducible only under the same torch version, thread count
    and device (the summation order of the kernels depends on them), so a resume
    elsewhere gives weights that differ from an uninterrupted run's.
    """
    if not before:  # a state written before environments were recorded
        return [env]
    last, now = normalise(before[-1]), normalise(env)
    if last == now:
        return before
    detail = ", ".join(
        f"{k.replace('_', ' ')} {last.get(k)} then, {now.get(k)} now"
        for k in sorted(set(last) | set(now))
        if last.get(k) != now.get(k)
    )
    warnings.warn(
        f"resuming run directory {str(out)!r} under another environment ({detail}): the "
        "weights will not be bit-identical to an uninterrupted run, which needs the same "
        "torch version, thread count and device",
        RuntimeWarning,
        stacklevel=4,
    )
    return [*before, now]


def _describe(config: TrainConfig, info: Mapping[str, Any]) -> str:
    options = config._model_options()
    text = f"model {config.model!r} with input_shape {tuple(info['input_shape'])}"
    text += f", n_classes {info['n_classes']}"
    return text + (f" and options {options}" if options else "")


def _few(keys: Iterable[str], n: int = 3) -> str:
    keys = sorted(keys)
    more = f" and {len(keys) - n} more" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def load_checkpoint(
    path: str | Path, device: str = "cpu", *, trust_code: bool = False
) -> Checkpoint:
    """Load a run written by :func:`train`.

    Opening a run directory runs no code of its own: the model is rebuilt only
    from the built-in registry (:data:`basinscope.models.MODELS`). A
    ``config.json`` naming a ``"package.module:factory"`` is refused unless
    ``trust_code=True`` (CLI: ``--trust-code``): building that model imports the
    module and calls the factory with the file's ``model_kwargs``, so pass it
    only for run directories you trust.

    Args:
        path: the run directory, or its ``model.pt``.
        device: where to put the model.
        trust_code: allow the model factory the run directory names.

    Returns:
        A :class:`Checkpoint` whose model is rebuilt with :func:`build_model` from the
        saved config, ``input_shape`` and ``n_classes``, loaded, and put in eval mode.

    Raises:
        BasinscopeError: missing ``model.pt``/``config.json``, an unreadable file,
            a model factory without ``trust_code``, weights that do not match the
            rebuilt model, or a ``model.pt``/``config.json`` other than the ones
            ``metrics.json`` was written for.
    """
    path = Path(path)
    model_path = path if path.suffix == ".pt" else path / MODEL_FILE
    run_dir = model_path.parent
    for p in (model_path, run_dir / CONFIG_FILE):
        if not p.is_file():
            raise BasinscopeError(
                f"checkpoint {str(path)!r} has no {p.name}; give a run directory written by "
                "basinscope's train or the model.pt inside it."
            )
    saved = _read_json(run_dir / CONFIG_FILE)
    if not isinstance(saved, dict) or "input_shape" not in saved or "n_classes" not in saved:
        raise BasinscopeError(
            f"{str(run_dir / CONFIG_FILE)!r} lacks input_shape and n_classes; "
            "give a run directory written by basinscope's train."
        )
    if not trust_code:
        _refuse_code(f"run directory {str(run_dir)!r}", saved.get("model"))
    raw = dict(saved)
    info = {k: saved.pop(k) for k in _RUN_KEYS if k in saved}
    config = TrainConfig.from_dict(saved)
    dev = _device(device)
    weights = _read_weights(model_path)
    with torch.random.fork_rng(devices=[]):  # building initialises weights: keep RNG as it was
        model = make_model(config, info["input_shape"], info["n_classes"])
    _load_into(model, weights, model_path, _describe(config, info))
    metrics_path = run_dir / METRICS_FILE
    metrics = _read_json(metrics_path) if metrics_path.is_file() else {}
    if isinstance(metrics, dict) and model_path.name == MODEL_FILE:
        _check_sealed(run_dir, raw, metrics, weights)
    model.to(dev).eval()
    return Checkpoint(model=model, config=config, metrics=metrics, path=run_dir, info=info)


def _read_weights(model_path: Path) -> dict[str, torch.Tensor]:
    """A state dict file's tensors (``torch.load`` with ``weights_only=True``)."""
    try:
        state = torch.load(model_path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise BasinscopeError(
            f"checkpoint {str(model_path)!r} could not be read: {type(e).__name__}: {e}."
        ) from e
    if not isinstance(state, Mapping) or not all(
        isinstance(k, str) and torch.is_tensor(v) for k, v in state.items()
    ):
        raise BasinscopeError(
            f"checkpoint {str(model_path)!r} holds a {type(state).__name__}, not a state dict."
        )
    return dict(state)


def _load_into(model: nn.Module, state: Mapping[str, torch.Tensor], model_path: Path, what: str):
    """Load ``state`` into ``model``, refusing missing, unexpected or misshapen entries."""
    expected = model.state_dict()
    problems = []
    if missing := set(expected) - set(state):
        problems.append(f"missing keys {_few(missing)}")
    if unexpected := set(state) - set(expected):
        problems.append(f"unexpected keys {_few(unexpected)}")
    shapes = [
        f"{k} (checkpoint {list(state[k].shape)}, model {list(v.shape)})"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if shapes:
        problems.append(f"shape mismatch for {_few(shapes)}")
    if problems:
        raise BasinscopeError(
            f"checkpoint {str(model_path)!r} does not match {what}: {'; '.join(problems)}."
        )
    model.load_state_dict(state)


def load_weights(model: nn.Module, model_path: str | Path, what: str) -> None:
    """Load a state dict file into ``model`` (which must be ours, freshly built).

    Raises:
        BasinscopeError: unreadable file, not a state dict, or keys/shapes that do
            not match ``model`` (``what`` describes the model in the message).
    """
    model_path = Path(model_path)
    _load_into(model, _read_weights(model_path), model_path, what)
