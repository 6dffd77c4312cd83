"""Sharpness along training: every measure at every weight snapshot of a run.

:func:`measure_along` reads a finished run written with ``snapshot_every > 0``
(``trajectory.pt``: the trainable weights after epochs 0, k, 2k, … and the last),
rebuilds the model at each snapshot (a copy with the snapshot's weights; the run
directory is only read) and computes, on the study Objective of
:func:`train_objective` (cross-entropy, token-level for sequence targets):

* ``loss``, ``accuracy`` — train and test, exact dataset means;
* ``lambda_max`` — ``λ_max(∇²L)`` by Lanczos (:func:`basinscope.hessian.eigenvalues`);
* ``hessian_trace`` — ``tr ∇²L = E_z[zᵀHz]``, Rademacher ``z`` (Hutchinson 1989), ± SE;
* ``epsilon`` — the studies' ε-sharpness ("ε-sharpness (direct)" of :func:`measure_run`):
  ``max_{‖c‖₂≤ε} L(θ + c₁d₁ + c₂d₂) − L(θ)`` on the plane of two filter-normalised
  random directions (Li et al. 2018), biases and norm parameters fixed;
* ``volume`` — the star-convex basin volume ``log V_n(1) + log⟨r(u)ⁿ⟩`` (Fan, Sandlund
  & Ko), by default with the poison study's relative rule ``L − L(θ) ≤ τ`` (the
  absolute ``L ≤ τ`` is empty wherever the loss is still above τ).

x is the optimizer step after the snapshot's epoch. BatchNorm statistics (not in
the snapshots) are recomputed on the training set, as SWA's ``update_bn`` does.
With ``out``, each (snapshot, measure) result is written atomically as it finishes,
one :mod:`basinscope._partial` file per measure keyed by the run, its trajectory,
the data, the measure's settings and the environment, items by epoch and weights
digest: a killed call resumes with nothing recomputed; another run's or other
settings' file is refused.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from .. import _dist, hessian, landscape, sharpness
from .._checks import check_int, check_output_dir, check_positive
from .._io import atomic_write_json
from .._keys import environment, normalise, tensor_digest, value_digest
from .._lock import output_lock
from .._partial import open_partial
from .._results import to_json
from ..errors import BasinscopeError
from ..training import DataBundle, data_fingerprint, load_config_data
from ._measures import train_objective

ALONG_MEASURES = ("loss", "accuracy", "lambda_max", "hessian_trace", "epsilon", "volume")
"""The measures :func:`measure_along` computes at each snapshot, in this order."""
ALONG_FILE = "along.json"
_CHOICES = {"rule": ("absolute", "relative"), "skip_bias_norm": (True, False)}


def _validate(s: Any, what: str, positive: tuple[str, ...], counts: dict[str, int]) -> None:
    """Refuse, in one sentence, a setting of a measure that cannot give numbers."""
    for name in positive:
        check_positive(f"the {what} {name}", getattr(s, name))
    for name, minimum in counts.items():
        check_int(f"the {what} {name}", getattr(s, name), minimum=minimum)
    for name in sorted(set(_CHOICES) & set(vars(s))):
        if getattr(s, name) not in _CHOICES[name]:
            raise BasinscopeError(f"the {what} {name} must be one of {_CHOICES[name]}")
    if not getattr(s, "tolerance", 0) < 1:
        raise BasinscopeError(f"the {what} tolerance must lie in (0, 1), got {s.tolerance}")


@dataclass(frozen=True)
class LambdaMaxSettings:
    """``lambda_max``: Lanczos relative tolerance, product budget and start-vector seed."""

    tol: float = 1e-4
    max_products: int = 500
    seed: int = 0

    def __post_init__(self) -> None:
        _validate(self, "λ_max", ("tol",), {"max_products": 2, "seed": 0})


@dataclass(frozen=True)
class TraceSettings:
    """``hessian_trace``: Hutchinson stops at ``stderr ≤ rtol·|tr H|`` after at least
    ``min_probes`` probes, or at ``max_products``; probes drawn from ``seed``."""

    rtol: float = 0.1
    min_probes: int = 10
    max_products: int = 50
    seed: int = 0

    def __post_init__(self) -> None:
        _validate(self, "trace", ("rtol",), {"min_probes": 2, "seed": 0})
        check_int("the trace max_products", self.max_products, minimum=self.min_probes)


@dataclass(frozen=True)
class EpsilonSettings:
    """``epsilon``: the radius ε (filter-normalised units, the studies' 0.25), the polar
    grid of the disk (``n_radii`` circles × ``n_angles``), the directions' seed, and
    whether biases and normalisation parameters stay fixed (Li et al.)."""

    radius: float = 0.25
    n_radii: int = 4
    n_angles: int = 32
    seed: int = 0
    skip_bias_norm: bool = True

    def __post_init__(self) -> None:
        _validate(self, "ε-sharpness", ("radius",), {"n_radii": 1, "n_angles": 1, "seed": 0})


@dataclass(frozen=True)
class VolumeSettings:
    """``volume``: the basin ``L − L(θ) ≤ τ`` (``rule="relative"``) or ``L ≤ τ``
    (``"absolute"``: an empty basin is recorded as ``None`` with the reason), searched
    along ``n_directions`` rays from ``seed`` to a relative ``tolerance`` < 1."""

    threshold: float = 0.1
    rule: str = "relative"
    n_directions: int = 10
    tolerance: float = 2e-2
    seed: int = 0

    def __post_init__(self) -> None:
        _validate(self, "volume", ("threshold", "tolerance"), {"n_directions": 2, "seed": 0})


@dataclass(frozen=True)
class AlongSettings:
    """The settings of every measure of :func:`measure_along` (``loss`` and ``accuracy``
    have none); the defaults take seconds per snapshot of the demo MLP on a CPU."""

    lambda_max: LambdaMaxSettings = field(default_factory=LambdaMaxSettings)
    hessian_trace: TraceSettings = field(default_factory=TraceSettings)
    epsilon: EpsilonSettings = field(default_factory=EpsilonSettings)
    volume: VolumeSettings = field(default_factory=VolumeSettings)

    def of(self, measure: str) -> dict[str, Any]:
        """The settings of ``measure`` as a flat dict (``{}`` for loss and accuracy)."""
        own = getattr(self, measure, None)
        return dataclasses.asdict(own) if own is not None else {}


@dataclass(frozen=True)
class AlongTraining:
    """The measures of a run at each of its snapshots (:func:`measure_along`).

    Attributes:
        run_dir: the run directory measured.
        epochs: ``(k,)`` the snapshots' epochs (0 = initialisation).
        steps: ``(k,)`` their x coordinate: optimizer steps, or epochs (``x_unit``).
        x_unit: ``"step"`` or ``"epoch"``.
        measures: the measures computed, in :data:`ALONG_MEASURES` order.
        series: one number per snapshot (``None`` where undefined) for each of
            ``train_loss test_loss train_acc test_acc lambda_max hessian_trace
            hessian_trace_se epsilon_sharpness log_volume`` that was measured.
        details: every number of each measure, per snapshot.
        jump: the step of the test-accuracy jump (:func:`basinscope.plots.accuracy_jump`).
        settings: the settings of each measure.
        batchnorm: ``"recomputed"`` when BatchNorm statistics were re-estimated, else ``None``.
        environment: torch version, threads, device and dtype of the arithmetic.
    """

    run_dir: str
    epochs: tuple[int, ...]
    steps: tuple[int, ...]
    x_unit: str
    measures: tuple[str, ...]
    series: dict[str, list[Any]]
    details: dict[str, list[dict[str, Any]]]
    jump: int | None
    settings: dict[str, dict[str, Any]]
    batchnorm: str | None
    environment: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return normalise(dataclasses.asdict(self))


# ----------------------------------------------------------------- the run
@dataclass
class _Run:
    """A finished run with snapshots, opened for measuring, and where to measure it."""

    path: Path
    model: nn.Module
    data: DataBundle
    params: torch.Tensor  # [k, n] the snapshots, float32, in the model's trainable order
    epochs: tuple[int, ...]
    steps: tuple[int, ...]
    x_unit: str
    identity: str
    device: str
    dtype: torch.dtype | None


def _open_run(run_dir: Any, data: Any, device: str, dtype: Any, trust_code: bool) -> _Run:
    """The run at ``run_dir``, its snapshots and data, refused in one sentence when unusable."""
    from ..training import load_checkpoint, load_trajectory

    path = Path(run_dir)
    if not path.is_dir():
        what = "is not a directory" if path.exists() else "does not exist"
        raise BasinscopeError(f"run directory {str(path)!r} {what}; give a run written by train")
    if not (path / "trajectory.pt").is_file():
        raise BasinscopeError(
            f"run {str(path)!r} kept no weight snapshots (no trajectory.pt); train it with "
            "snapshot_every > 0 (CLI: --snapshot-every) to measure it along training"
        )
    if not (path / "model.pt").is_file():
        raise BasinscopeError(
            f"run {str(path)!r} has not finished training (no model.pt); rerun its train "
            "command to finish it, then measure it along training"
        )
    ckpt = load_checkpoint(path, device=device, trust_code=trust_code)
    traj = load_trajectory(path)
    sealed = ckpt.metrics.get("trajectory_digest")
    if sealed is not None and sealed != tensor_digest(traj.params):
        raise BasinscopeError(
            f"run {str(path)!r} holds a trajectory.pt that is not the one of its "
            "metrics.json; train the run again"
        )
    if (differs := traj.mismatch(ckpt.model)) is not None:  # the model's code changed
        raise BasinscopeError(f"the model that run {str(path)!r} builds {differs}; train it again")
    config = ckpt.config.to_dict() | {"device": None}
    return _Run(
        path=path,
        model=ckpt.model,
        data=_run_data(path, ckpt, data),
        params=traj.params,
        epochs=traj.epochs,
        **_steps(ckpt.config, ckpt.info.get("n_train"), traj.epochs),
        identity=value_digest({"config": config, "data": ckpt.info.get("data_fingerprint")}),
        device=device,
        dtype=dtype,
    )


def _run_data(path: Path, ckpt: Any, data: Any) -> DataBundle:
    """``data``, or the run's own, refused when it is not what the run was trained on
    (the Objective refuses data of another shape, or labels the model has no class for)."""
    if data is not None:
        if not isinstance(data, DataBundle):
            raise BasinscopeError(f"data must be a DataBundle, got {type(data).__name__}")
        return data
    data, recorded = load_config_data(ckpt.config), ckpt.info.get("data_fingerprint")
    if recorded is not None and recorded != data_fingerprint(data):
        raise BasinscopeError(
            f"dataset {ckpt.config.dataset!r} loads other data than run {str(path)!r} was "
            "trained on (its files changed since); pass the run's data"
        )
    return data


def _steps(config: Any, n_train: Any, epochs: Sequence[int]) -> dict[str, Any]:
    """Each snapshot's optimizer step, ``min(epoch × steps per epoch, total)`` (every epoch
    but a run's last takes ⌈n_train / batch_size⌉ steps), or the epochs without ``n_train``."""
    if not (isinstance(n_train, int) and n_train > 0):
        return {"steps": tuple(epochs), "x_unit": "epoch"}
    per_epoch, total = config.steps_per_epoch(n_train), config.total_steps(n_train)
    return {"steps": tuple(min(e * per_epoch, total) for e in epochs), "x_unit": "step"}


def _batchnorm(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def _recompute_batchnorm(model: nn.Module, x: torch.Tensor, batch: int = 4096) -> None:
    """Running statistics of every BatchNorm = the cumulative average over ``x``'s
    batches (``momentum=None``; dropout stays off: only the BatchNorm layers train)."""
    layers = _batchnorm(model)
    saved = [m.momentum for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    for i in range(0, len(x), batch):
        model(x[i : i + batch])
    for m, momentum in zip(layers, saved, strict=True):
        m.momentum = momentum
    model.eval()


# --------------------------------------------------------- one snapshot
class _Snapshot:
    """The model at snapshot ``i`` and its Objectives, built on first use."""

    def __init__(self, run: _Run, i: int) -> None:
        self.run, self.i = run, i
        self._objectives: dict[bool, Any] = {}

    @cached_property
    def model(self) -> nn.Module:
        model, offset = copy.deepcopy(self.run.model).eval(), 0
        with torch.no_grad():
            for p in (p for p in model.parameters() if p.requires_grad):
                p.copy_(self.run.params[self.i, offset : offset + p.numel()].view_as(p))
                offset += p.numel()
        if _batchnorm(model):
            _recompute_batchnorm(model, self.run.data.x_train.to(next(model.parameters()).device))
        return model if self.run.dtype is None else model.to(self.run.dtype)

    def objective(self, skip_bias_norm: bool = False) -> Any:
        """The study Objective (:func:`train_objective`) on the training set."""
        if skip_bias_norm not in self._objectives:
            self._objectives[skip_bias_norm] = train_objective(
                self.model, self.run.data, self.run.device, skip_bias_norm=skip_bias_norm
            )
        return self._objectives[skip_bias_norm]

    @cached_property
    def evaluation(self) -> dict[str, dict[str, float | None]]:
        """``{"loss": {train, test}, "accuracy": {train, test}}`` (test ``None`` without data)."""
        obj, data = self.objective(), self.run.data
        out: dict[str, dict[str, float | None]] = {
            "loss": {"test": None},
            "accuracy": {"test": None},
        }
        test = obj.with_data((data.x_test, data.y_test)) if len(data.y_test) else None
        for split, o in (("train", obj), ("test", test)) if test is not None else [("train", obj)]:
            loss, acc = o.evaluate(o.theta0)
            out["loss"][split], out["accuracy"][split] = float(loss[0]), float(acc[0])
        return out


def _lambda_max(snap: _Snapshot, s: LambdaMaxSettings) -> dict[str, Any]:
    obj = snap.objective()
    d = hessian.eigenvalues(obj, 1, tol=s.tol, seed=s.seed, max_products=s.max_products).to_dict()
    keep = ("converged", "n_products", "n")
    return {"value": d["values"][0], "residual": d["residuals"][0]} | {k: d[k] for k in keep}


def _hessian_trace(snap: _Snapshot, s: TraceSettings) -> dict[str, Any]:
    t = hessian.trace(
        snap.objective(), rtol=s.rtol, min_probes=s.min_probes, max_products=s.max_products,
        seed=s.seed,
    )  # fmt: skip
    return {k: v for k, v in t.to_dict().items() if k != "samples"}


def _epsilon(snap: _Snapshot, s: EpsilonSettings) -> dict[str, Any]:
    obj = snap.objective(s.skip_bias_norm)
    d = landscape.random_directions(obj, 2, norm="filter", seed=s.seed)
    return to_json(sharpness.epsilon(obj, d, s.radius, n_radii=s.n_radii, n_angles=s.n_angles))


def _volume(snap: _Snapshot, s: VolumeSettings) -> dict[str, Any]:
    try:
        return landscape.basin_volume(
            snap.objective(), s.threshold, n_directions=s.n_directions, rule=s.rule,
            tolerance=s.tolerance, seed=s.seed,
        ).to_dict()  # fmt: skip
    except BasinscopeError as exc:  # an empty basin (absolute rule, loss above τ)
        return {"log_volume": None, "reason": str(exc)}


# Each measure's computation, called through the wings' public names (``hessian.trace``),
# and its headline series: (series name, field of the measure's record).
_COMPUTE: dict[str, Callable[[_Snapshot, Any], dict[str, Any]]] = {
    "loss": lambda snap, s: snap.evaluation["loss"],
    "accuracy": lambda snap, s: snap.evaluation["accuracy"],
    "lambda_max": _lambda_max,
    "hessian_trace": _hessian_trace,
    "epsilon": _epsilon,
    "volume": _volume,
}
_SERIES: dict[str, tuple[tuple[str, str], ...]] = {
    "loss": (("train_loss", "train"), ("test_loss", "test")),
    "accuracy": (("train_acc", "train"), ("test_acc", "test")),
    "lambda_max": (("lambda_max", "value"),),
    "hessian_trace": (("hessian_trace", "value"), ("hessian_trace_se", "stderr")),
    "epsilon": (("epsilon_sharpness", "value"),),
    "volume": (("log_volume", "log_volume"),),
}


# -------------------------------------------------------------- the loop
def _check_measures(measures: Any) -> tuple[str, ...]:
    """The measures asked for, each one of :data:`ALONG_MEASURES` once, in that order."""
    names = [measures] if isinstance(measures, str) else list(measures)
    known = ", ".join(ALONG_MEASURES)
    if not names:
        raise BasinscopeError(f"no measure was asked for; name at least one of {known}")
    for i, name in enumerate(names):
        if name not in ALONG_MEASURES:
            raise BasinscopeError(f"unknown measure {name!r} along training; choose from {known}")
        if name in names[:i]:
            raise BasinscopeError(f"the measure {name!r} is named twice; name each once")
    return tuple(m for m in ALONG_MEASURES if m in names)


def measure_along(
    run_dir: str | Path,
    measures: Sequence[str] = ALONG_MEASURES,
    *,
    out: str | Path | None = None,
    data: DataBundle | None = None,
    settings: AlongSettings | None = None,
    device: str = "cpu",
    dtype: torch.dtype | None = None,
    trust_code: bool = False,
    progress: bool = False,
) -> AlongTraining:
    """The measures of a finished run at each of its weight snapshots (see the module).

    Args:
        run_dir: a run directory written by :func:`basinscope.training.train` with
            ``snapshot_every > 0``; only read.
        measures: names from :data:`ALONG_MEASURES` (computed in that order).
        out: a directory for the resumable results (``<measure>.partial.json``,
            rewritten as each snapshot's result finishes) and ``along.json``; locked
            for one writer. ``None`` writes nothing.
        data: the data to measure on (train split: the Objective; test split: test
            loss and accuracy); default the run's own, checked against its fingerprint.
        settings: the measures' settings (default :class:`AlongSettings`).
        device, dtype: where and in what precision to evaluate (default the model's).
        trust_code: allow a model factory the run's config names (runs its code).
        progress: a progress bar over the snapshots.

    Raises:
        BasinscopeError: a run that does not exist, kept no snapshots or has not finished;
            an unknown measure; an ``out`` that cannot be written, is the run directory,
            is being written by another process, or holds another run's or settings' results.
    """
    names = _check_measures(measures)
    settings = AlongSettings() if settings is None else settings
    if not isinstance(settings, AlongSettings):
        raise BasinscopeError(f"settings must be an AlongSettings, got {type(settings).__name__}")
    if out is None:
        return _measure(
            _open_run(run_dir, data, device, dtype, trust_code), names, settings, None, progress
        )
    out_dir = check_output_dir(out, "the along-training directory")
    if out_dir.exists() and Path(run_dir).exists() and out_dir.samefile(run_dir):
        raise BasinscopeError(
            f"the along-training directory {str(out)!r} is the run directory, whose files are "
            "never written; give another directory (the CLI's default is RUN/along)"
        )
    run = _open_run(run_dir, data, device, dtype, trust_code)
    out_dir.mkdir(parents=True, exist_ok=True)
    lock = lambda: output_lock(out_dir, "the along-training directory", is_dir=True)  # noqa: E731
    with _dist.on_writer(group := _dist.resolve("auto"), lock):  # torchrun: rank 0 writes
        result = _measure(run, names, settings, out_dir, progress)
        _dist.agree(group, lambda: atomic_write_json(out_dir / ALONG_FILE, result.to_dict()))
    return result


def _measure(run: _Run, names: tuple, settings: Any, out: Path | None, bar: bool) -> AlongTraining:
    """Compute what the partial files lack, snapshot by snapshot; assemble the result."""
    from ..plots import accuracy_jump

    first, batchnorm = next(iter(run.model.parameters()), None), bool(_batchnorm(run.model))
    env = environment(run.device, run.dtype or (first.dtype if first is not None else None))
    d = run.data
    key = {
        "run": run.identity,
        "trajectory": tensor_digest(run.params),
        "data": tensor_digest(d.x_train, d.y_train, d.x_test, d.y_test),
        "batchnorm": batchnorm,
        **env,
    }
    items = [f"{e}:{tensor_digest(run.params[i])}" for i, e in enumerate(run.epochs)]
    group = _dist.resolve("auto")
    bar = bar and _dist.is_writer(group)
    with contextlib.ExitStack() as stack:
        done = {
            m: stack.enter_context(
                open_partial(
                    None if out is None else out / f"{m}.partial.json",
                    key | {"measure": m, **settings.of(m)},
                    what=f"{m} along training",
                    dist=group,
                )
            )
            for m in names
        }
        for i, item in enumerate(tqdm(items, disable=not bar, desc="along training")):
            snap = _Snapshot(run, i)
            for m in [m for m in names if item not in done[m]]:
                done[m].update({item: normalise(_COMPUTE[m](snap, getattr(settings, m, None)))})
        details = {m: [done[m].get(item) for item in items] for m in names}
    series = {n: [r.get(k) for r in details[m]] for m in names for n, k in _SERIES[m]}
    return AlongTraining(
        run_dir=str(run.path),
        epochs=run.epochs,
        steps=run.steps,
        x_unit=run.x_unit,
        measures=names,
        series=series,
        details=details,
        jump=accuracy_jump(run.steps, series["test_acc"]) if "test_acc" in series else None,
        settings={m: settings.of(m) for m in names if settings.of(m)},
        batchnorm="recomputed" if batchnorm else None,
        environment=env,
    )
