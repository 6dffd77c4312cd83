"""Studies: grids of training runs, each measured the same way, with a report.

A study is a list of named runs (each a :class:`~basinscope.train.TrainConfig`)
plus the measurement settings shared by all of them. :func:`run_study` trains
every run, computes its filter-normalised 2-D surface on the training and test
data (Li et al. 2018), its sharpness, and writes figures and a summary table:

    results/<study>/
        study.json                    the resolved study config
        <run>/config.json, model.pt, metrics.json      (train.py)
        <run>/surface.h5              the plane, resumable
        <run>/sharpness.json          both sharpness measures + their settings
        figures/*.png                 3-D surfaces, contours, grid, bar charts
        summary.csv, summary.md       one row per run

Everything is skipped when already done with the same settings, and every
partial result is resumable, so re-running a killed study loses nothing.

The built-in studies (the classic 4-run grid and the others) are in
:mod:`basinscope.studies`.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import plots, sharpness
from ._io import atomic_write_json, atomic_write_text
from ._keys import tensor_digest
from .data import DataBundle
from .directions import random_directions
from .errors import BasinscopeError
from .objective import Objective
from .surface import Surface, plane
from .train import TrainConfig, load_config_data, train
from .train import _fingerprint as data_fingerprint


@dataclass
class MeasureConfig:
    """How every run of a study is measured.

    Attributes:
        grid_size: points per axis of the 2-D surface (``grid_size²`` in all).
        span: the coefficient range of both axes, in filter-normalised units.
        direction_seed: seed of the two random directions (the same for every run;
            each is filter-normalised against that run's own weights).
        skip_bias_norm: keep biases and normalisation parameters fixed (Li et al.).
        radius: ε of the ε-sharpness (max loss increase within ``‖c‖ ≤ ε``).
        sigma: σ of the Gaussian weight-noise sharpness.
        noise_samples: S, samples of weight noise.
        noise_seed: seed of the weight noise.
        eval_subset: evaluate surfaces on at most this many training examples
            (a fixed seeded subset); ``None`` for all.
    """

    grid_size: int = 31
    span: tuple[float, float] = (-1.0, 1.0)
    direction_seed: int = 0
    skip_bias_norm: bool = True
    radius: float = 0.25
    sigma: float = 0.05
    noise_samples: int = 32
    noise_seed: int = 0
    eval_subset: int | None = None
    volume_threshold: float = 0.1
    volume_rule: str = "absolute"
    volume_directions: int = 50
    volume_tolerance: float = 1e-2
    worst_radius: float = 0.1
    worst_linf_radius: float = 0.002
    adaptive_radius: float = 0.5
    adaptive_sigma: float = 0.05
    keskar_epsilon: float = 1e-3
    pac_target: float = 0.1
    pac_samples: int = 16

    def validate(self) -> None:
        """Refuse settings that cannot give numbers, before any run is trained or measured:
        integer counts, finite spans, radii and widths (an infinite span would replace a
        finished surface with a NaN one), and a grid that fits in memory."""
        from ._checks import check_int, check_number, check_span
        from .surface import _check_memory

        grid = check_int("the grid size", self.grid_size)
        if grid < 2:
            raise BasinscopeError(f"the grid size must be at least 2, got {grid}")
        check_span("the span", self.span)
        _check_memory((grid, grid), 2, "the study's surface")
        for name in ("direction_seed", "noise_seed"):
            check_int(name.replace("_", " "), getattr(self, name))
        for name, minimum in (("noise_samples", 2), ("volume_directions", 2), ("pac_samples", 1)):
            value = check_int(name.replace("_", " "), getattr(self, name))
            if value < minimum:
                raise BasinscopeError(
                    f"{name.replace('_', ' ')} must be at least {minimum}, got {value}"
                )
        if self.eval_subset is not None:
            check_int("the evaluation subset", self.eval_subset, minimum=0)
        for name in (
            "radius",
            "sigma",
            "worst_radius",
            "worst_linf_radius",
            "adaptive_radius",
            "adaptive_sigma",
            "keskar_epsilon",
        ):
            label = {"radius": "the sharpness radius", "sigma": "the noise sigma"}.get(name)
            check_number(label or name.replace("_", " "), getattr(self, name), positive=True)
        check_number("the volume threshold", self.volume_threshold)
        tol = check_number("the volume tolerance", self.volume_tolerance, positive=True)
        if not tol < 1:
            raise BasinscopeError(f"the volume tolerance must lie in (0, 1), got {tol}")
        if self.volume_rule not in ("absolute", "relative"):
            raise BasinscopeError(
                f"the volume rule must be 'absolute' or 'relative', got {self.volume_rule!r}"
            )
        target = check_number("the PAC-Bayes target", self.pac_target)
        if not 0 < target < 1:
            raise BasinscopeError(f"the PAC-Bayes target must lie in (0, 1), got {target}")


@dataclass
class Study:
    """A named list of runs and how to measure them."""

    name: str
    runs: dict[str, TrainConfig]
    measure: MeasureConfig = field(default_factory=MeasureConfig)
    description: str = ""
    measures: tuple[str, ...] = ("surface",)
    finish: Callable[[Study, list[RunReport], Path], str] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "measures": list(self.measures),
            "runs": {k: v.to_dict() for k, v in self.runs.items()},
            "measure": dataclasses.asdict(self.measure),
        }


@dataclass
class RunReport:
    """One row of a study's summary."""

    name: str
    config: TrainConfig
    final: dict[str, Any]
    diverged: bool
    message: str
    surface: Surface | None = None
    sharpness: dict[str, Any] = field(default_factory=dict)
    values: dict[str, Any] = field(default_factory=dict)
    model: nn.Module | None = None
    data: DataBundle | None = None

    def coarse(self) -> list[str]:
        """The summary columns whose value is flagged as a coarse estimate."""
        return ["eps_sharpness_surface"] if self.sharpness.get("surface", {}).get("coarse") else []

    def row(self) -> dict[str, Any]:
        f = self.final
        tl, tel = f.get("train_loss"), f.get("test_loss")
        ta, tea = f.get("train_acc"), f.get("test_acc")
        gap = lambda a, b: (a - b) if a is not None and b is not None else None  # noqa: E731
        return {
            "run": self.name,
            "seed": self.config.seed,
            "lr": self.config.lr,
            "batch_size": self.config.batch_size,
            # training choices beyond lr and batch (None when off: empty columns are dropped)
            "sam_rho": self.config.sam_rho or None,
            "weight_decay": self.config.weight_decay or None,
            "dropout": self.config.dropout or None,
            "epochs": self.config.epochs if self.config.steps is None else None,
            "steps": self.config.steps,
            "train_loss": tl,
            "test_loss": tel,
            "train_acc": ta,
            "test_acc": tea,
            "gap_loss": gap(tel, tl),
            "gap_acc": gap(ta, tea),
            "eps_sharpness_surface": self.sharpness.get("surface", {}).get("value"),
            "eps_sharpness_direct": self.sharpness.get("direct", {}).get("value"),
            "noise_sharpness": self.sharpness.get("noise", {}).get("value"),
            "noise_sharpness_se": self.sharpness.get("noise", {}).get("stderr"),
            **self.values,
            # measures whose value is a coarse estimate (too few grid points within ε):
            # shown in the summary, left out of the rankings (report.py)
            "coarse_measures": " ".join(self.coarse()) or None,
            "status": "diverged" if self.diverged else "ok",
        }


# ------------------------------------------------------------------ running
def train_objective(
    model: nn.Module,
    data: DataBundle,
    device: str = "cpu",
    *,
    skip_bias_norm: bool = False,
    subset: int | None = None,
) -> Objective:
    """The cross-entropy Objective of ``model`` on ``data``'s training set, as every
    study measure uses it (``subset`` 0 or ``None``: all examples)."""
    return Objective(
        model,
        nn.CrossEntropyLoss(),
        (data.x_train, data.y_train),
        skip_bias_norm=skip_bias_norm,
        device=device,
        subset=subset or None,
    )


def measure_run(
    model: nn.Module,
    data: DataBundle,
    measure: MeasureConfig,
    out_dir: Path,
    *,
    device: str = "cpu",
    progress: bool = True,
) -> tuple[Surface, dict[str, Any]]:
    """Surface and sharpness of one trained model; resumable and skipped when done.

    ``surface.h5`` and ``sharpness.json`` are keyed by the weights, the evaluation
    data (training subset and test set), the loss, every setting of ``measure`` and
    the environment: anything else is measured afresh.
    """
    obj = train_objective(
        model, data, device, skip_bias_norm=measure.skip_bias_norm, subset=measure.eval_subset
    )
    d = random_directions(obj, 2, norm="filter", seed=measure.direction_seed)
    fp = model_fingerprint(model)
    objective = objective_key(obj)
    key = study_key(
        fp,
        objective,
        tensor_digest(data.x_test, data.y_test),
        measure.grid_size,
        measure.span,
        measure.direction_seed,
        measure.skip_bias_norm,
        measure.eval_subset,
    )
    surf = plane(
        obj,
        d[0],
        d[1],
        span=measure.span,
        steps=measure.grid_size,
        test=(data.x_test, data.y_test),
        path=out_dir / "surface.h5",
        progress=progress,
        attrs={
            "norm": "filter",
            "direction_seed": measure.direction_seed,
            **own_file(out_dir / "surface.h5", key),
        },
    )

    def compute() -> dict[str, Any]:
        noise = sharpness.average_case(
            obj, measure.sigma, samples=measure.noise_samples, seed=measure.noise_seed
        )
        return {
            "surface": _quiet_coarse(lambda: _asdict(sharpness.from_surface(surf, measure.radius))),
            "direct": _asdict(sharpness.epsilon(obj, d, measure.radius)),
            "noise": {k: v for k, v in _asdict(noise).items() if k != "increases"},
        }

    settings = dataclasses.asdict(measure) | {"model": fp, "objective": objective}
    return surf, _cached_json(out_dir / "sharpness.json", settings, compute, _env(obj))


def _quiet_coarse(read: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``read()`` (ε-sharpness read off the study's grid) without the warning that the
    grid is too coarse for ε: a study records it as ``"coarse"``, shows it in the
    summary and leaves the measure out of the rankings. Other warnings pass through."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = read()
    for w in caught:
        if not (result.get("coarse") and issubclass(w.category, RuntimeWarning)):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return result


def objective_key(obj: Objective) -> dict[str, Any]:
    """The parts of ``obj.fingerprint()`` that decide a cached number (weights, space,
    data after the subset, loss, device, dtype); the torch version and thread count
    only change rounding and are recorded beside it (:func:`_env`)."""
    from ._keys import SOFT

    return {k: v for k, v in obj.fingerprint().items() if k not in SOFT}


def _env(obj: Objective) -> dict[str, Any]:
    from ._keys import environment

    return environment(obj.device, obj.dtype)


def model_fingerprint(*models: nn.Module) -> str:
    """SHA-256 of the models' state dicts (names, shapes, dtypes and values): the cache
    key that ties a stored measurement to the weights it was measured on."""
    import hashlib

    h = hashlib.sha256()
    for model in models:
        for name, t in model.state_dict().items():
            t = t.detach().cpu().contiguous()
            h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def study_key(*parts: Any) -> str:
    """A short key for a computed file: the hash of ``parts`` (JSON)."""
    import hashlib

    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:16]


def own_file(path: Path, key: str) -> dict[str, str]:
    """Delete a surface file a study wrote for other weights, data or settings (a
    retrained run, a new grid), or one that cannot be read, so it is computed afresh; a
    file with the same key is resumed. Returns the attrs that record the key in the
    new file. The surface's own key (see :mod:`basinscope.surface`) still guards the
    resume; this one only decides that the study, which owns the file, replaces it."""
    if path.exists():
        try:
            old = Surface.load(path).attrs.get("study_key")
        except BasinscopeError:
            old = None
        if old != key:
            path.unlink()
    return {"study_key": key}


def _read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``; ``None`` when it is missing, truncated or unreadable."""
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _cached_json(
    path: Path,
    settings: dict[str, Any],
    compute: Callable[[], dict[str, Any]],
    environment: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``compute()`` stored in ``path`` with its ``settings`` and ``environment``.

    Reused while ``settings`` (everything that decides the numbers: weights, data,
    loss, every measure setting, device and dtype) match; a file that is missing,
    truncated, unreadable or of other settings is recomputed and replaced
    atomically. A result computed under another torch version or thread count is
    reused with a warning (its last bits may differ from a fresh one).
    """
    from ._keys import normalise, warn_soft

    settings = normalise(settings)
    saved = _read_json(path) if path.exists() else None
    if saved is not None and saved.get("settings") == settings:
        if environment is not None:
            then = saved.get("environment") or {}
            soft = [k for k in ("torch_version", "threads") if then.get(k) != environment.get(k)]
            warn_soft(path, soft, then, environment)
        return saved
    result = {**compute(), "settings": settings}
    if environment is not None:
        result["environment"] = environment
    atomic_write_json(path, result)
    return json.loads(json.dumps(result, default=str))


def _asdict(obj: Any) -> dict[str, Any]:
    out = dataclasses.asdict(obj)
    return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in out.items()}


def run_study(
    study: Study, out: str | Path = "results", *, progress: bool = True
) -> list[RunReport]:
    """Train, measure and report every run of ``study`` under ``out/<study.name>``.

    Every setting is checked before any work, and the study directory is locked for
    the whole study: a second ``run_study`` (another process) on the same directory
    stops with one sentence instead of interleaving its files with this one's.
    """
    from ._checks import check_output_dir
    from ._lock import output_lock

    study.measure.validate()
    for cfg in study.runs.values():
        cfg.validate()
    root = check_output_dir(Path(out) / study.name, "the study directory")
    root.mkdir(parents=True, exist_ok=True)
    with output_lock(root, "the study directory"):
        return _run_locked(study, root, progress)


def _run_locked(study: Study, root: Path, progress: bool) -> list[RunReport]:
    atomic_write_json(root / "study.json", study.to_dict())
    reports = []
    cache: dict[str, DataBundle] = {}
    for name, cfg in study.runs.items():
        key = json.dumps(
            [
                cfg.dataset,
                cfg.data_dir,
                cfg.train_size,
                cfg.standardize,
                cfg.data_seed,
                cfg.label_noise,
            ]
        )
        data = cache.get(key) or cache.setdefault(key, load_config_data(cfg))
        if progress:
            print(f"[{study.name}] {name}: training", flush=True)
        result = train(cfg, data, out_dir=root / name, progress=progress)
        report = RunReport(name, cfg, result.final, result.diverged, result.message)
        report.model, report.data = result.model, data
        # ‖θ‖₂, the baseline every sharpness measure is compared with (Jiang et al. 2019).
        report.values["param_norm"] = float(
            sum(p.detach().double().pow(2).sum() for p in result.model.parameters()) ** 0.5
        )
        if result.diverged:
            print(f"[{study.name}] {name}: {result.message}", flush=True)
        else:
            for measure in study.measures:
                if progress:
                    print(f"[{study.name}] {name}: {measure}", flush=True)
                MEASURES[measure](report, study.measure, root / name, progress)
        reports.append(report)
    extra = study.finish(study, reports, root) if study.finish else ""
    extra += _correlations(reports, root)
    write_report(reports, root, extra)
    return reports


def _correlations(reports: list[RunReport], root: Path) -> str:
    """The measures' rank correlation with the gap, for studies with ≥ 3 finished runs."""
    from .report import correlation_report

    if sum(not r.diverged for r in reports) < 3:
        return ""
    try:
        text = correlation_report(
            [r.row() for r in reports], root, title="Which measure tracks the generalisation gap"
        )
    except BasinscopeError:  # no measure columns (e.g. a volume-only study without gaps)
        return ""
    return "\n" + text


def _measure_surface(report: RunReport, m: MeasureConfig, out: Path, progress: bool) -> None:
    """The 2-D surface, ε-sharpness and noise sharpness (:func:`measure_run`)."""
    report.surface, report.sharpness = measure_run(
        report.model, report.data, m, out, device=report.config.device, progress=progress
    )


def _measure_volume(report: RunReport, m: MeasureConfig, out: Path, progress: bool) -> None:
    """The star-convex basin volume on the run's own training data (``volume.json``)."""
    result = cached_volume(report.model, report.data, m, out / "volume.json", report.config.device)
    report.values["log_volume"] = result.get("log_volume")
    report.values["volume_ess"] = result.get("ess")


def cached_volume(
    model: nn.Module, data: DataBundle, m: MeasureConfig, path: Path, device: str = "cpu"
) -> dict[str, Any]:
    """Volume of ``model``'s basin on ``data``'s training set, cached in ``path``.

    An empty basin (the model's loss there is above the absolute threshold) is
    recorded with ``log_volume = None`` and the reason, not raised.
    """
    from .volume import basin_volume

    obj = train_objective(model, data, device)
    settings = {
        "threshold": m.volume_threshold,
        "rule": m.volume_rule,
        "n_directions": m.volume_directions,
        "tolerance": m.volume_tolerance,
        "seed": m.direction_seed,
        "fingerprint": data_fingerprint(data),
        "model": model_fingerprint(model),
        "objective": objective_key(obj),
    }

    def compute() -> dict[str, Any]:
        try:
            return basin_volume(
                obj,
                m.volume_threshold,
                n_directions=m.volume_directions,
                rule=m.volume_rule,
                tolerance=m.volume_tolerance,
                seed=m.direction_seed,
            ).to_dict()
        except BasinscopeError as exc:
            return {"log_volume": None, "reason": str(exc)}

    return _cached_json(path, settings, compute, _env(obj))


def _measure_hessian(report: RunReport, m: MeasureConfig, out: Path, progress: bool) -> None:
    """λ_max and trace of the training-loss Hessian (``hessian.json``, cached)."""
    from .hessian import summary

    path = out / "hessian.json"
    obj = train_objective(report.model, report.data, report.config.device)
    settings = {
        "k": 1,
        "tol": 1e-4,
        "trace_rtol": 1e-2,
        "lambda_min": False,
        "seed": m.direction_seed,
        "fingerprint": data_fingerprint(report.data),
        "model": model_fingerprint(report.model),
        "objective": objective_key(obj),
    }

    def compute() -> dict[str, Any]:
        return summary(
            obj, 1, tol=1e-4, trace_rtol=1e-2, lambda_min=False, seed=m.direction_seed
        ).to_dict()

    saved = _cached_json(path, settings, compute, _env(obj))
    report.values["lambda_max"] = saved["lambda_max"]
    report.values["hessian_trace"] = saved["trace"]


def _measure_suite(report: RunReport, m: MeasureConfig, out: Path, progress: bool) -> None:
    """The rest of the sharpness suite (``suite.json``, cached): worst case in an L2 and
    an L∞ ball and its adaptive version, adaptive noise sharpness, Keskar et al.'s
    φ, and Jiang et al.'s PAC-Bayes σ (plain and magnitude-aware)."""
    keys = (
        "worst_radius",
        "worst_linf_radius",
        "adaptive_radius",
        "adaptive_sigma",
        "keskar_epsilon",
        "pac_target",
        "pac_samples",
        "direction_seed",
        "skip_bias_norm",
        "eval_subset",
        "noise_samples",
    )
    obj = train_objective(
        report.model,
        report.data,
        report.config.device,
        skip_bias_norm=m.skip_bias_norm,
        subset=m.eval_subset,
    )
    settings = {k: getattr(m, k) for k in keys} | {
        "fingerprint": data_fingerprint(report.data),
        "model": model_fingerprint(report.model),
        "objective": objective_key(obj),
    }

    def compute() -> dict[str, Any]:
        seed = m.direction_seed
        parts = {
            "worst_case_l2": sharpness.worst_case(obj, m.worst_radius, seed=seed),
            "worst_case_linf": sharpness.worst_case(
                obj, m.worst_linf_radius, norm="linf", seed=seed
            ),
            "adaptive_worst_case": sharpness.worst_case(
                obj, m.adaptive_radius, adaptive=True, seed=seed
            ),
            "adaptive_noise_sharpness": sharpness.average_case(
                obj, m.adaptive_sigma, samples=m.noise_samples, seed=seed, adaptive=True
            ),
            "keskar": sharpness.keskar(obj, m.keskar_epsilon, seed=seed),
            "pac_bayes": sharpness.pac_bayes(
                obj, target=m.pac_target, samples=m.pac_samples, seed=seed
            ),
            "pac_bayes_mag": sharpness.pac_bayes(
                obj, target=m.pac_target, samples=m.pac_samples, seed=seed, magnitude_aware=True
            ),
        }
        return {
            k: (v.to_dict() if hasattr(v, "to_dict") else _asdict(v))
            | ({"increases": None} if k == "adaptive_noise_sharpness" else {})
            for k, v in parts.items()
        }

    saved = _cached_json(out / "suite.json", settings, compute, _env(obj))
    for key in ("worst_case_l2", "worst_case_linf", "adaptive_worst_case", "keskar"):
        report.values[key] = saved[key]["value"]
    report.values["adaptive_noise_sharpness"] = saved["adaptive_noise_sharpness"]["value"]
    for key in ("pac_bayes", "pac_bayes_mag"):
        report.values[f"{key}_sigma"] = saved[key]["sigma"]
        report.values[f"{key}_bound"] = saved[key]["bound"]


def _measure_trajectory(report: RunReport, m: MeasureConfig, out: Path, progress: bool) -> None:
    """The loss on the plane of the run's two principal trajectory directions (Li et al.
    2018, needs ``snapshot_every``): ``trajectory.h5`` and ``figures/trajectory_<run>.png``."""
    from .surface import trajectory_plane
    from .train import load_trajectory

    if not report.config.snapshot_every:
        raise BasinscopeError(
            f"run {report.name!r} kept no snapshots; the trajectory measure needs snapshot_every > 0"
        )
    obj = train_objective(report.model, report.data, report.config.device, subset=m.eval_subset)
    trajectory = load_trajectory(out)
    key = study_key(
        model_fingerprint(report.model),
        objective_key(obj),
        tensor_digest(trajectory.params),
        m.grid_size,
        m.eval_subset,
    )
    surf = trajectory_plane(
        obj,
        trajectory,
        steps=m.grid_size,
        path=out / "trajectory.h5",
        progress=progress,
        attrs=own_file(out / "trajectory.h5", key),
    )
    report.values["pca_explained"] = float(sum(surf.attrs["explained_variance_ratio"]))
    plots.plot_contour(
        surf,
        out.parent / "figures" / f"trajectory_{report.name}.png",
        title=f"{report.name}: training trajectory on its PCA plane",
    )


MEASURES: dict[str, Callable[[RunReport, MeasureConfig, Path, bool], None]] = {
    "trajectory": _measure_trajectory,
    "surface": _measure_surface,
    "volume": _measure_volume,
    "hessian": _measure_hessian,
    "suite": _measure_suite,
}


# ------------------------------------------------------------------ report
_COLUMNS = [
    ("run", "run", "{}"),
    ("seed", "seed", "{}"),
    ("lr", "lr", "{:g}"),
    ("batch_size", "batch", "{}"),
    ("sam_rho", "SAM ρ", "{:g}"),
    ("weight_decay", "wd", "{:g}"),
    ("dropout", "dropout", "{:g}"),
    ("epochs", "epochs", "{}"),
    ("steps", "steps", "{}"),
    ("train_loss", "train loss", "{:.4f}"),
    ("test_loss", "test loss", "{:.4f}"),
    ("train_acc", "train acc", "{:.3f}"),
    ("test_acc", "test acc", "{:.3f}"),
    ("gap_loss", "gap (loss)", "{:.4f}"),
    ("gap_acc", "gap (acc)", "{:.3f}"),
    ("eps_sharpness_surface", "ε-sharpness (grid)", "{:.4f}"),
    ("eps_sharpness_direct", "ε-sharpness (direct)", "{:.4f}"),
    ("noise_sharpness", "noise sharpness", "{:.4f}"),
    ("noise_sharpness_se", "± SE", "{:.4f}"),
    ("label_noise", "label noise", "{:g}"),
    ("n_train", "train examples", "{}"),
    ("lambda_max", "λ_max", "{:.4g}"),
    ("hessian_trace", "tr H", "{:.4g}"),
    ("param_norm", "‖θ‖", "{:.2f}"),
    ("worst_case_l2", "worst-case L2", "{:.4f}"),
    ("worst_case_linf", "worst-case L∞", "{:.4f}"),
    ("adaptive_worst_case", "adaptive worst-case", "{:.4f}"),
    ("adaptive_noise_sharpness", "adaptive noise", "{:.4f}"),
    ("keskar", "Keskar φ", "{:.3f}"),
    ("pac_bayes_sigma", "PAC-Bayes σ", "{:.4g}"),
    ("pac_bayes_bound", "PAC-Bayes term", "{:.4g}"),
    ("pac_bayes_mag_sigma", "PAC-Bayes mag. σ", "{:.4g}"),
    ("pac_bayes_mag_bound", "PAC-Bayes mag. term", "{:.4g}"),
    ("pca_explained", "PCA var. (2 dirs)", "{:.3f}"),
    ("log_volume", "log volume", "{:.1f}"),
    ("volume_ess", "volume ESS", "{:.2f}"),
    ("coarse_measures", "coarse estimates", "{}"),
    ("status", "status", "{}"),
]


def _fmt(value: Any, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return spec.format(value)


def _columns(rows: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """Known columns in their order, then any others; columns empty in every row dropped."""
    keys = list(dict.fromkeys(k for row in rows for k in row))
    known = {k: (k, title, spec) for k, title, spec in _COLUMNS}
    cols = [known[k] for k, _, _ in _COLUMNS if k in keys]
    cols += [(k, k.replace("_", " "), "{:.4g}") for k in keys if k not in known]
    return [c for c in cols if any(row.get(c[0]) not in (None, "") for row in rows)]


def summary_markdown(reports: list[RunReport], measure: dict[str, Any] | None = None) -> str:
    """The summary table as Markdown."""
    rows = [r.row() for r in reports]
    cols = _columns(rows)
    lines = ["| " + " | ".join(title for _, title, _ in cols) + " |"]
    lines.append("|" + "|".join("---" for _ in cols) + "|")
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row.get(k), spec) for k, _, spec in cols) + " |")
    text = "\n".join(lines) + "\n"
    if measure and any(r.surface is not None for r in reports):
        text += (
            f"\nε-sharpness: max train-loss increase within radius ε = {measure['radius']} "
            "of the minimum in the plane of two filter-normalised directions (grid: read off "
            "the surface; direct: a dense polar grid). Noise sharpness: mean train-loss "
            f"increase under Gaussian weight noise σ = {measure['sigma']} over "
            f"{measure['noise_samples']} samples, with its standard error.\n"
        )
    return text


def write_report(reports: list[RunReport], root: Path, extra: str = "") -> None:
    """summary.csv, summary.md (plus ``extra`` Markdown) and the figures of a study."""
    rows = [r.row() for r in reports]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(root / "summary.csv", buf.getvalue())
    measured = [r for r in reports if r.surface is not None]
    settings = measured[0].sharpness.get("settings") if measured else None
    atomic_write_text(root / "summary.md", summary_markdown(reports, settings) + extra)
    if not measured:
        return
    fig = root / "figures"
    surfaces = {r.name: r.surface for r in measured}
    for name, s in surfaces.items():
        plots.plot_surface_3d(s, fig / f"surface3d_{name}.png", title=f"{name}: train loss")
        plots.plot_contour(s, fig / f"contour_{name}.png", title=f"{name}: train loss")
    grid = {"ncols": math.ceil(math.sqrt(len(surfaces)))}
    plots.plot_grid(surfaces, fig / "grid_contour.png", suptitle="train loss", **grid)
    plots.plot_grid(
        surfaces, fig / "grid_surface.png", kind="surface", suptitle="train loss", **grid
    )
    if all(s.test_loss is not None for s in surfaces.values()):
        plots.plot_grid(
            surfaces, fig / "grid_contour_test.png", key="test_loss", suptitle="test loss", **grid
        )
    radius = settings["radius"] if settings else None
    plots.plot_bars(
        {r.name: r.sharpness["direct"]["value"] for r in measured},
        fig / "sharpness_eps.png",
        ylabel=f"ε-sharpness (ε = {radius})",
        title="max loss increase within ε (higher = sharper)",
    )
    plots.plot_bars(
        {r.name: r.sharpness["noise"]["value"] for r in measured},
        fig / "sharpness_noise.png",
        errors={r.name: r.sharpness["noise"]["stderr"] for r in measured},
        ylabel=f"mean loss increase (σ = {settings['sigma'] if settings else ''})",
        title="Gaussian weight-noise sharpness (higher = sharper)",
    )
