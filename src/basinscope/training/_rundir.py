"""The run directory: one locked folder that owns every file of a training run.

``config.json`` (the config and the run's facts), ``state.pt`` (the resume
state, written atomically after every epoch), ``trajectory.pt`` (the weight
snapshots), ``model.pt`` and, written last, ``metrics.json``, which seals the
set with the digests of ``config.json``'s run and of ``model.pt``.
:class:`RunDir` locks the directory for one writer, never overwrites another
configuration's finished or interrupted run, reuses a finished one only when
the seal shows its files belong together, and saves and restores the resume
state so that a resumed run ends with the weights of an uninterrupted one, bit
for bit. Reading a finished run is :mod:`basinscope.training._checkpoint`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from .._checks import check_output_dir
from .._io import atomic_torch_save, atomic_write_json
from .._keys import differences, normalise, tensor_digest, value_digest
from .._lock import output_lock
from ..errors import BasinscopeError
from ._bundle import DataBundle
from ._checkpoint import (
    CONFIG_FILE,
    METRICS_FILE,
    MODEL_FILE,
    STATE_FILE,
    TRAJECTORY_FILE,
    _check_sealed,
    _describe,
    _json_or_none,
    _load_into,
    _mismatch,
    _read_json,
    _read_trajectory,
    _read_weights,
    _saved_identity,
    _state_digest,
)
from ._config import TrainConfig
from ._evaluate import _evaluate
from ._factories import data_model_options, make_model, make_swa_scheduler
from ._guards import _device, data_fingerprint
from ._run import Run
from ._trajectory import Trajectory, _as_trajectory, _snapshot_due


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


def _identity(config: TrainConfig, fingerprint: str) -> dict[str, Any]:
    """What makes two runs the same run: the config (less the device) and the data."""
    d = config.to_dict()
    d.pop("device")
    return {"config": d, "data": fingerprint}


def _differing(saved: Any, identity: Mapping[str, Any]) -> str:
    """What differs between a saved run identity and ``identity``: option names, the data."""
    if not isinstance(saved, Mapping) or not isinstance(saved.get("config"), Mapping):
        return "an unrecorded configuration"
    names = differences(saved["config"], identity["config"])
    if saved.get("data") != identity["data"]:
        names.append("data")
    return " and ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names)


_AFRESH = "choose another out_dir (CLI: --out) or delete the directory to train this one"


def _same_number(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is b
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-7)


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
        stacklevel=6,  # the caller of train(): train, _train, _start, resume, here
    )
    return [*before, now]


def check_accepts(out_dir: str | Path, config: TrainConfig, data: DataBundle) -> None:
    """Refuse, in one sentence and writing nothing, when ``out_dir`` holds a finished or
    interrupted run of another configuration or data than ``config`` on ``data`` (what
    :func:`train` would refuse); a directory that is absent or holds this run passes."""
    out = Path(out_dir)
    if out.is_dir():
        with RunDir.open(out, _identity(config, data_fingerprint(data))) as rd:
            rd.finished(config, data, replace=False)


def check_run_dir(out_dir: Any) -> Path:
    """``out_dir`` as a run directory path that can be created or written, or one sentence.

    Refused: an empty path (it would mean the current directory), a symbolic link
    whose target is missing (creating the directory would fail) or is not a
    directory, a file, and a location that cannot be written.
    """
    if not isinstance(out_dir, (str, Path)) or not str(out_dir).strip():
        raise BasinscopeError(
            f"out_dir {out_dir!r} is not valid; give the path of a run directory (CLI: --out)."
        )
    out = Path(out_dir)
    if out.is_symlink() and not out.is_dir():
        what = "a file" if out.exists() else "nothing (a dangling link)"
        raise BasinscopeError(
            f"the run directory {str(out)!r} is a symbolic link to {what}, not a directory; "
            "give a directory path or remove the link."
        )
    return check_output_dir(out, "the run directory")


class RunDir:
    """A run directory, locked by this process for the whole training call.

    Create one with :meth:`open`. ``identity`` (config less device, data
    fingerprint) says which run the directory is for; files of another run are
    refused (or, with ``replace``, deleted) and never overwritten.
    """

    def __init__(self, path: Path, identity: dict[str, Any]) -> None:
        self.path, self.identity = path, identity

    @classmethod
    @contextmanager
    def open(cls, out_dir: str | Path, identity: dict[str, Any]) -> Iterator[RunDir]:
        """Check ``out_dir`` can be written, create it and hold its lock while in the block."""
        out = check_run_dir(out_dir)
        # Create the directory first, so every writer locks the same <out>/.basinscope.lock.
        out.mkdir(parents=True, exist_ok=True)
        with output_lock(out, "the run directory"):
            yield cls(out, identity)

    # ----------------------------------------------------------------------- #
    # Another run's files, and a finished run of this one
    # ----------------------------------------------------------------------- #

    def finished(
        self, config: TrainConfig, data: DataBundle, *, replace: bool
    ) -> TrainResult | None:
        """This run's finished result if the directory holds it, else ``None`` (train or resume).

        Raises:
            BasinscopeError: another run's work is there, or files that do not belong
                together; with ``replace`` those files are deleted instead.
        """
        try:
            return self._load_finished(config, data, self._claim())
        except BasinscopeError:
            if not replace:
                raise
            for name in (MODEL_FILE, METRICS_FILE, TRAJECTORY_FILE, STATE_FILE):
                (self.path / name).unlink(missing_ok=True)
            return None

    def _claim(self) -> dict[str, Any] | None:
        """Refuse to train here over another run's work; return the readable ``config.json``.

        Another configuration's finished results (``model.pt``, ``metrics.json``) or
        resume state (``state.pt``) are never overwritten: the caller stops with one
        sentence naming what differs. ``config.json`` alone (a run killed before its
        first epoch ended) holds no work and may be replaced.
        """
        out, identity = self.path, self.identity
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
        state = self._read_state()
        if state is not None and state.get("identity") != identity:
            raise BasinscopeError(
                f"run directory {str(out)!r} holds an interrupted run of another configuration "
                f"(different {_differing(state.get('identity'), identity)}); rerun that "
                f"configuration to resume it, or {_AFRESH}"
            )
        return saved

    def _load_finished(
        self, config: TrainConfig, data: DataBundle, saved: dict[str, Any] | None
    ) -> TrainResult | None:
        """The finished run here if it is this run's and its files belong together.

        ``None`` when there is no complete run of this config here (train or resume).
        The model is built from ``config`` (the caller's own), never from the file.

        Raises:
            BasinscopeError: the files do not belong together (see ``_check_sealed``).
        """
        out = self.path
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
            model = make_model(config, data.input_shape, data.n_classes, **data_model_options(data))
        _load_into(model, weights, out / MODEL_FILE, _describe(config, saved))
        model.eval()
        if not sealed:  # written before the digests: its numbers must be this model's
            res = _evaluate(model, data.x_train, data.y_train)
            if res is None or not _same_number(res[0], metrics["final"].get("train_loss")):
                raise _mismatch(out, "the loss of model.pt is not the one metrics.json records")
        trajectory = None
        if config.snapshot_every:
            saved_trajectory = self.read_trajectory()
            if saved_trajectory is None:
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

    # ----------------------------------------------------------------------- #
    # The resume state and the trajectory
    # ----------------------------------------------------------------------- #

    def _read_state(self) -> dict[str, Any] | None:
        """``state.pt`` as a dict, or None when missing or unreadable (it is only a cache)."""
        path = self.path / STATE_FILE
        if not path.is_file():
            return None
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # unreadable state: start afresh, it is only a cache
            return None
        return state if isinstance(state, dict) else None

    def resume(self, run: Run) -> bool:
        """Restore ``run`` from this run's ``state.pt``; False when there is none to resume.

        The state holds the weights, the optimizer (SAM's when SAM is on) and both
        schedulers' state, the SWA average, epoch, step, history, training time and
        environments. With snapshots, the trajectory saved so far must cover every
        snapshot up to the state's epoch, else the run starts afresh (no gaps).
        """
        state = self._read_state()
        if state is None or state.get("identity") != self.identity:
            return False
        every = run.config.snapshot_every
        if every:
            expected = [
                e for e in range(state["epoch"] + 1) if _snapshot_due(e, every, run.n_epochs)
            ]
            if not run.snapshots.resume(self.read_trajectory(), state["epoch"], expected):
                return False  # the trajectory so far is lost: train afresh rather than leave a gap
        run.model.load_state_dict(state["model"])
        run.stepper.load_state_dict(state["optimizer"])
        run.scheduler.load_state_dict(state["scheduler"])
        if state["swa_model"] is not None:
            run.swa_model = AveragedModel(run.model)
            run.swa_model.load_state_dict(state["swa_model"])
        if state["swa_scheduler"] is not None:  # built after the optimizer's lr is restored
            run.swa_scheduler = make_swa_scheduler(run.optimizer, run.config, run.per_epoch)
            run.swa_scheduler.load_state_dict(state["swa_scheduler"])
        run.epoch, run.step, run.history, run.elapsed = (
            state["epoch"],
            state["step"],
            state["history"],
            state["wall_time_s"],
        )
        run.environments = _resumed_under(self.path, list(state.get("environments") or []), run.env)
        return True

    def save_state(self, run: Run) -> None:
        """Write the resume state of ``run`` (atomically), after an epoch."""
        atomic_torch_save(
            self.path / STATE_FILE,
            {
                "identity": self.identity,
                "model": run.model.state_dict(),
                "optimizer": run.stepper.state_dict(),
                "scheduler": run.scheduler.state_dict(),
                "swa_model": None if run.swa_model is None else run.swa_model.state_dict(),
                "swa_scheduler": None
                if run.swa_scheduler is None
                else run.swa_scheduler.state_dict(),
                "epoch": run.epoch,
                "step": run.step,
                "history": run.history,
                "wall_time_s": run.wall_time(),
                "environments": run.environments,
            },
        )

    def read_trajectory(self) -> dict[str, Any] | None:
        """This run's saved ``trajectory.pt``, or None (missing, unreadable, another run's)."""
        saved = _read_trajectory(self.path / TRAJECTORY_FILE)
        return saved if saved is not None and saved.get("identity") == self.identity else None

    def save_trajectory(self, content: dict[str, Any]) -> None:
        """Write the snapshots so far (atomically) with this run's identity."""
        atomic_torch_save(self.path / TRAJECTORY_FILE, {"identity": self.identity, **content})

    # ----------------------------------------------------------------------- #
    # Starting and finishing
    # ----------------------------------------------------------------------- #

    def begin(self, config: TrainConfig, info: dict[str, Any], *, keep_trajectory: bool) -> None:
        """Remove another config's results and write ``config.json`` (the config and ``info``)."""
        stale = [MODEL_FILE, METRICS_FILE]  # results of another config
        if not keep_trajectory:
            stale.append(TRAJECTORY_FILE)
        for name in stale:
            (self.path / name).unlink(missing_ok=True)
        atomic_write_json(self.path / CONFIG_FILE, {**config.to_dict(), **info})

    def finish(
        self,
        run: Run,
        model: nn.Module,
        final: dict[str, Any],
        final_iterate: dict[str, Any],
        wall: float,
    ) -> None:
        """Write ``model.pt``, then the sealing ``metrics.json``; drop ``state.pt``."""
        # model.pt first, metrics.json last: metrics.json seals the set with the
        # digests of config.json's run and of model.pt, so a crash between the
        # writes leaves no metrics.json (removed when this training began) and
        # the rerun resumes from state.pt instead of reusing a half-written run.
        out = self.path
        weights = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        atomic_torch_save(out / MODEL_FILE, weights)
        seal = {
            "identity_digest": value_digest(_saved_identity(_read_json(out / CONFIG_FILE))),
            "model_digest": _state_digest(weights),
        }
        if run.config.snapshot_every:
            seal["trajectory_digest"] = tensor_digest(run.snapshots.trajectory().params)
        atomic_write_json(
            out / METRICS_FILE,
            {
                "history": run.history,
                "final": final,
                "final_iterate": final_iterate,
                "diverged": run.diverged,
                "message": run.message,
                "wall_time_s": wall,
                "epochs_run": run.epoch,
                "steps_run": run.step,
                "completed": True,
                "environment": run.env,
                "environments": run.environments,
                **seal,
            },
        )
        (out / STATE_FILE).unlink(missing_ok=True)
