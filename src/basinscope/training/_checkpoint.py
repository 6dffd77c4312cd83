"""Reading a run directory: its file names, the seal of ``metrics.json``, checkpoints, weights.

:func:`load_checkpoint` opens a finished run and runs no code of its own (only
built-in models are rebuilt from ``config.json`` unless ``trust_code=True``);
:func:`load_weights` and :func:`load_trajectory` read one file. The writing half,
and the run directory object itself, is :mod:`basinscope.training._rundir`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._keys import tensor_digest, value_digest
from ..errors import BasinscopeError
from ._config import TrainConfig, _is_int, _refuse_code
from ._factories import make_model
from ._guards import _device
from ._trajectory import Trajectory, _as_trajectory, _trajectory_problem

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
    "vocab_size",
    "readout",
    "dataset_name",
    "n_train",
    "n_params",
    "basinscope_version",
    "data_fingerprint",
    "environment",
)


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
            ``basinscope_version``, ``data_fingerprint``; for token data also
            ``vocab_size`` and ``readout``.
    """

    model: nn.Module
    config: TrainConfig
    metrics: dict[str, Any]
    path: Path
    info: dict[str, Any] = field(default_factory=dict)


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


def _load_trajectory_file(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """``(contents, None)`` for a well-formed ``trajectory.pt``, else ``(None, what is wrong)``."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # any failure to unpickle is an unreadable file
        return None, f"it cannot be read ({type(e).__name__})"
    problem = _trajectory_problem(saved)
    return (saved, None) if problem is None else (None, problem)


def _read_trajectory(path: Path) -> dict[str, Any] | None:
    """A well-formed ``trajectory.pt``'s contents, or None (missing, unreadable, malformed)."""
    if not path.is_file():
        return None
    return _load_trajectory_file(path)[0]


def load_trajectory(run_dir: str | Path) -> Trajectory:
    """The weight snapshots a run with ``snapshot_every > 0`` wrote (``trajectory.pt``).

    Args:
        run_dir: the run directory, or its ``trajectory.pt``.

    Returns:
        A :class:`Trajectory`; ``params`` is ``[k, n]`` float32 on the CPU. A run that
        is still training (or was interrupted) gives the snapshots taken so far.

    Raises:
        BasinscopeError: no ``trajectory.pt`` there, or one that is unreadable or
            malformed (its types, its epochs, or params that do not match the
            names and shapes it records).
    """
    path = Path(run_dir)
    if path.suffix != ".pt":
        path = path / TRAJECTORY_FILE
    if not path.is_file():
        raise BasinscopeError(
            f"{str(path)!r} does not exist; train with snapshot_every > 0 to record the "
            "weight trajectory."
        )
    saved, problem = _load_trajectory_file(path)
    if saved is None:
        raise BasinscopeError(
            f"trajectory file {str(path)!r} could not be read as a weight trajectory, the "
            f"file is malformed: {problem}; train the run again."
        )
    return _as_trajectory(saved)


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
    dev = _device(device)
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
    _check_info(run_dir / CONFIG_FILE, info)
    config = TrainConfig.from_dict(saved)
    weights = _read_weights(model_path)
    with torch.random.fork_rng(devices=[]):  # building initialises weights: keep RNG as it was
        model = make_model(
            config,
            info["input_shape"],
            info["n_classes"],
            vocab_size=info.get("vocab_size"),
            readout=info.get("readout"),
        )
    _load_into(model, weights, model_path, _describe(config, info))
    metrics_path = run_dir / METRICS_FILE
    metrics = _read_json(metrics_path) if metrics_path.is_file() else {}
    if isinstance(metrics, dict) and model_path.name == MODEL_FILE:
        _check_sealed(run_dir, raw, metrics, weights)
    model.to(dev).eval()
    return Checkpoint(model=model, config=config, metrics=metrics, path=run_dir, info=info)


def _check_info(path: Path, info: Mapping[str, Any]) -> None:
    """Refuse a ``config.json`` whose ``input_shape``, ``n_classes``, ``vocab_size`` or
    ``readout`` no model could have."""
    shape, k = info["input_shape"], info["n_classes"]
    if not isinstance(shape, list) or not shape or not all(_is_int(d) and d > 0 for d in shape):
        raise BasinscopeError(
            f"{str(path)!r} records input_shape {shape!r}, not a list of positive integers; "
            "give a run directory written by basinscope's train."
        )
    if not (_is_int(k) and k > 0):
        raise BasinscopeError(
            f"{str(path)!r} records n_classes {k!r}, not a positive integer; "
            "give a run directory written by basinscope's train."
        )
    vocab = info.get("vocab_size")
    if vocab is not None and not (_is_int(vocab) and vocab > 0):
        raise BasinscopeError(
            f"{str(path)!r} records vocab_size {vocab!r}, not a positive integer; "
            "give a run directory written by basinscope's train."
        )
    readout = info.get("readout")
    if readout is not None and readout not in ("sequence", "last"):
        raise BasinscopeError(
            f"{str(path)!r} records readout {readout!r}, not 'sequence' or 'last'; "
            "give a run directory written by basinscope's train."
        )


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
