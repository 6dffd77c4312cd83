"""What determines a training run: :class:`TrainConfig`, its validation and its JSON/TOML forms.

A config holds the training choices the studies compare (optimizer, dropout,
warm-up + cosine, SAM/ASAM, SWA, weight decay, trajectory snapshots), all
recorded in the run's ``config.json``. :meth:`TrainConfig.validate` refuses a
bad value with one sentence naming it and what is accepted.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .._checks import check_device, check_number, check_seed
from ..errors import BasinscopeError
from ._models import MODELS, _check_options

OPTIMIZERS = ("sgd", "adam", "adamw")
"""Accepted values of :attr:`TrainConfig.optimizer`."""
SCHEDULES = ("constant", "cosine")
"""Accepted values of :attr:`TrainConfig.schedule`."""


F32_MAX = float(torch.finfo(torch.float32).max)
"""The largest float32, about 3.4e38: no float option may exceed it, since the
optimizers hand their hyperparameters to float32 kernels (a larger one is refused
instead of overflowing there)."""
_ADAM_BETA1 = 0.9  # torch's default; Adam's first step divides lr by 1 - beta1


def _lr_limit(optimizer: str) -> float:
    """The largest learning rate whose first step stays within float32."""
    return F32_MAX * (1 - _ADAM_BETA1) if optimizer in ("adam", "adamw") else F32_MAX


def _lr_ok(lr: Any, optimizer: str) -> bool:
    """A positive learning rate whose step ``lr`` (Adam: ``lr / (1 - beta1)``) float32 holds."""
    if not (_is_number(lr) and lr > 0):
        return False
    scale = 1 - _ADAM_BETA1 if optimizer in ("adam", "adamw") else 1.0
    return float(lr) / scale <= F32_MAX


def _is_int(v: Any) -> bool:
    """A Python or NumPy integer; ``True``/``False`` and floats such as ``3.0`` are not."""
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    """A finite real number: what :func:`basinscope._checks.check_number` accepts.

    ``nan``, ``inf``, bools and ints beyond float range are not (the caller words
    the refusal, so the sentence names the option and what it accepts).
    """
    try:
        check_number("value", v)
    except (BasinscopeError, OverflowError):  # OverflowError: an int beyond float range
        return False
    return True


def _is_float32(v: Any) -> bool:
    """A finite real number float32 can hold (``|v| <= F32_MAX``)."""
    return _is_number(v) and abs(float(v)) <= F32_MAX


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
        where = f"config file {str(path)!r}"
        try:
            with path.open("rb") as f:
                d = tomllib.load(f)
        except FileNotFoundError as e:
            raise BasinscopeError(f"{where} does not exist.") from e
        except IsADirectoryError as e:
            raise BasinscopeError(f"{where} is a directory; give a TOML file.") from e
        except OSError as e:
            raise BasinscopeError(f"{where} cannot be read: {e.strerror or e}.") from e
        except UnicodeDecodeError as e:  # tomllib decodes UTF-8 itself
            raise BasinscopeError(f"{where} is not valid TOML: it is not UTF-8 text ({e}).") from e
        except tomllib.TOMLDecodeError as e:
            raise BasinscopeError(f"{where} is not valid TOML: {e}.") from e
        if isinstance(d.get("train"), dict):
            d = d["train"]
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise BasinscopeError(
                f"{where} holds unknown training option(s) {', '.join(map(repr, unknown))}; "
                "give top-level TrainConfig fields or a [train] table of them "
                f"(accepted: {', '.join(sorted(names))})."
            )
        if not trust_code:
            _refuse_code(where, d.get("model"))
        try:
            return cls.from_dict(d)
        except BasinscopeError as e:  # an invalid value: say which file holds it
            raise BasinscopeError(f"{where}: {e}") from None

    def validate(self) -> None:
        """Check every value; raise a one-sentence :class:`BasinscopeError` on the first bad one."""
        self._validate_data()
        self._validate_model()
        self._validate_optimizer()
        self._validate_schedule()
        self._validate_device()
        self._plain_numbers()

    def _validate_device(self) -> None:
        """A device torch knows, not ``meta``, and of a kind this build has.

        Whether a CUDA device is present is checked where the run uses it
        (:func:`basinscope.training._guards._device`): a run directory trained on a
        GPU still opens on a machine without one.
        """
        accepted = "give a torch device such as 'cpu' or 'cuda:0'"
        if not isinstance(self.device, str):
            raise self._bad("device", accepted)
        try:
            device = torch.device(self.device)
        except (RuntimeError, ValueError, TypeError) as e:
            raise self._bad("device", accepted) from e
        if device.type == "meta":
            raise self._bad("device", f"the meta device holds no data, {accepted}")
        if device.type != "cuda":
            try:
                check_device(self.device)
            except BasinscopeError:
                raise self._bad(
                    "device", f"this torch build has no {device.type} device, {accepted}"
                ) from None

    def _lr_accepted(self) -> str:
        why = (
            f"{self.optimizer}'s first step divides it by 1 - beta1 = 0.1"
            if self.optimizer in ("adam", "adamw")
            else "the optimizer steps in float32"
        )
        limit = _lr_limit(self.optimizer)
        return f"give a positive learning rate no larger than {limit:.3g} ({why})"

    def _bad(self, name: str, accepted: str) -> BasinscopeError:
        return BasinscopeError(f"{name} {getattr(self, name)!r} is not valid; {accepted}.")

    def _validate_data(self) -> None:
        """The dataset options, the boolean flags and the seeds."""
        bad = self._bad
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
            if not _is_int(getattr(self, name)):
                raise bad(name, "give a non-negative integer")
            try:  # torch generators take a signed 64-bit seed
                check_seed(name, getattr(self, name))
            except BasinscopeError:
                raise bad(name, "give a non-negative integer below 2**63") from None

    def _validate_model(self) -> None:
        """The model name, its options and dropout."""
        bad = self._bad
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

    def _validate_optimizer(self) -> None:
        """The optimizer and its hyperparameters, the batch size and the run length."""
        bad = self._bad
        if self.optimizer not in OPTIMIZERS:
            raise bad("optimizer", f"accepted: {', '.join(OPTIMIZERS)}")
        if not (_is_number(self.lr) and self.lr > 0):
            raise bad("lr", "give a positive learning rate, e.g. 0.1")
        if not _lr_ok(self.lr, self.optimizer):
            raise bad("lr", self._lr_accepted())
        if not (_is_number(self.momentum) and 0.0 <= self.momentum < 1.0):
            raise bad("momentum", "give a number in [0, 1)")
        if self.momentum > 0 and self.optimizer != "sgd":
            raise bad("momentum", f"momentum applies to sgd only, not {self.optimizer}")
        if self.nesterov and (self.optimizer != "sgd" or self.momentum == 0):
            raise bad("nesterov", "Nesterov momentum needs optimizer 'sgd' with momentum > 0")
        if not (_is_number(self.weight_decay) and self.weight_decay >= 0):
            raise bad("weight_decay", "give a non-negative number")
        if not _is_float32(self.weight_decay):
            raise bad("weight_decay", f"give a non-negative number no larger than {F32_MAX:.3g}")
        if not (_is_int(self.batch_size) and self.batch_size >= 1):
            raise bad("batch_size", "give a positive integer")
        if not (_is_int(self.epochs) and self.epochs >= 1):
            raise bad("epochs", "give a positive integer")
        if self.steps is not None and not (_is_int(self.steps) and self.steps >= 1):
            raise bad("steps", "give a positive number of optimizer steps or leave it unset")

    def _validate_schedule(self) -> None:
        """Warm-up and schedule, SAM/ASAM, SWA and the snapshots."""
        bad = self._bad
        if not (_is_int(self.warmup_steps) and self.warmup_steps >= 0):
            raise bad("warmup_steps", "give a non-negative integer")
        if self.schedule not in SCHEDULES:
            raise bad("schedule", f"accepted: {', '.join(SCHEDULES)}")
        if not (_is_float32(self.sam_rho) and self.sam_rho >= 0):
            raise bad(
                "sam_rho",
                "give 0 (no SAM) or a positive radius, e.g. 0.05 (0.5 for ASAM), "
                f"no larger than {F32_MAX:.3g}",
            )
        if self.sam_adaptive and self.sam_rho == 0:
            raise bad("sam_adaptive", "ASAM needs a positive sam_rho, e.g. 0.5")
        if self.swa_start is not None and not (_is_int(self.swa_start) and self.swa_start >= 1):
            raise bad("swa_start", "give the epoch (>= 1) SWA averages from, or leave it unset")
        if self.swa_start is not None and self.steps is None and self.swa_start > self.epochs:
            raise bad("swa_start", f"give an epoch no later than the last one, {self.epochs}")
        if self.swa_lr is not None and not (_is_number(self.swa_lr) and self.swa_lr > 0):
            raise bad("swa_lr", "give a positive learning rate or leave it unset")
        if self.swa_lr is not None and not _lr_ok(self.swa_lr, self.optimizer):
            raise bad("swa_lr", self._lr_accepted())
        if self.swa_lr is not None and self.swa_start is None:
            raise bad("swa_lr", "swa_lr needs swa_start, the epoch SWA begins")
        if not (_is_int(self.snapshot_every) and self.snapshot_every >= 0):
            raise bad("snapshot_every", "give 0 (off) or a positive number of epochs")

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


def _refuse_code(where: str, model: Any) -> None:
    """Refuse a model factory named by a file: building it would import and run code.

    ``where`` is the phrase naming the file, its path already quoted once, e.g.
    ``"config file 'run.toml'"`` or ``"run directory 'runs/a'"``.
    """
    if isinstance(model, str) and model not in MODELS and ":" in model:
        raise BasinscopeError(
            f"{where} names the factory {model!r}, which would import and run code; "
            "pass trust_code=True (CLI: --trust-code) only for run directories and config "
            "files you trust"
        )
