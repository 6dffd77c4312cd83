"""The measures registry: what a study can measure on each trained run.

:data:`MEASURES` maps a name of ``Study.measures`` to a function
``(report, measure_config, run_dir, progress) -> None`` that computes the measure
(cached beside the run, :mod:`._caches`) and stores its numbers on the
:class:`~basinscope.experiments.RunReport`:

* ``surface`` — the filter-normalised 2-D plane (Li et al. 2018), ε-sharpness read
  off it and computed directly, and Gaussian weight-noise sharpness;
* ``volume`` — the star-convex basin volume (Fan, Sandlund & Ko);
* ``hessian`` — λ_max and the trace of the training-loss Hessian, and its spectral
  density (``spectrum.json``);
* ``suite`` — the rest of the sharpness suite (worst case, Keskar, PAC-Bayes), by
  :func:`basinscope.sharpness.suite` under its key vocabulary;
* ``trajectory`` — the loss on the plane of the run's principal trajectory directions;
* ``spread`` — ε-sharpness and slice curvature on one plane per direction seed.

:class:`MeasureConfig` holds every setting they share.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from .. import sharpness
from .._keys import tensor_digest
from .._results import to_json
from ..errors import BasinscopeError
from ..landscape import Surface, plane, random_directions
from ..objective import Objective, classification_loss
from ..training import DataBundle, data_fingerprint
from ._caches import (
    _cached_json,
    _env,
    model_fingerprint,
    objective_key,
    own_file,
    partial_beside,
    study_key,
)

if TYPE_CHECKING:
    from ._summary import RunReport


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
        direction_seeds: the seeds of the ``spread`` measure's planes (default: the
            direction seed and the next two).
        spread_grid: points per axis of each of those planes (odd: 0 is on the grid).
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
    direction_seeds: tuple[int, ...] | None = None
    spread_grid: int = 21

    def validate(self) -> None:
        """Refuse settings that cannot give numbers, before any run is trained or measured:
        integer counts, finite spans, radii and widths (an infinite span would replace a
        finished surface with a NaN one), and a grid that fits in memory."""
        from .._checks import check_int, check_number, check_span
        from ..landscape import check_grid_memory

        grid = check_int("the grid size", self.grid_size)
        if grid < 2:
            raise BasinscopeError(f"the grid size must be at least 2, got {grid}")
        check_span("the span", self.span)
        check_grid_memory((grid, grid), 2, "the study's surface")
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
        threshold = check_number("the volume threshold", self.volume_threshold)
        if not threshold > 0:  # a cross-entropy loss is ≥ 0: the basin would be empty
            raise BasinscopeError(
                f"the volume threshold must be positive (the {self.volume_rule} basin "
                f"L{' − L(θ0)' if self.volume_rule == 'relative' else ''} ≤ τ of a "
                f"cross-entropy loss is empty for τ ≤ 0), got {threshold}"
            )
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

    def suite_config(self) -> sharpness.SuiteConfig:
        """The :class:`~basinscope.sharpness.SuiteConfig` of the ``suite`` measure: every
        measure seeded by ``direction_seed``, the worst cases with the ascent's own
        defaults (20 steps, 2 restarts), the adaptive noise over ``noise_samples`` draws."""
        return sharpness.SuiteConfig(
            radius=self.worst_radius,
            linf_radius=self.worst_linf_radius,
            adaptive_radius=self.adaptive_radius,
            adaptive_sigma=self.adaptive_sigma,
            samples=self.noise_samples,
            steps=20,
            restarts=2,
            keskar_epsilon=self.keskar_epsilon,
            pac_target=self.pac_target,
            pac_samples=self.pac_samples,
            seed=self.direction_seed,
        )


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
        classification_loss(data.y_train),
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

    settings = to_json(measure) | {"model": fp, "objective": objective}
    partial = partial_beside(out_dir / "sharpness.json", settings)

    def compute() -> dict[str, Any]:
        noise = sharpness.average_case(
            obj, measure.sigma, samples=measure.noise_samples, seed=measure.noise_seed,
            path=partial,
        )  # fmt: skip
        return {
            "surface": _quiet_coarse(lambda: to_json(sharpness.from_surface(surf, measure.radius))),
            "direct": to_json(sharpness.epsilon(obj, d, measure.radius)),
            "noise": {k: v for k, v in to_json(noise).items() if k != "increases"},
        }

    return surf, _cached_json(out_dir / "sharpness.json", settings, compute, _env(obj), partial)


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
    from ..landscape import basin_volume

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

    partial = partial_beside(path, settings)  # the rays finished so far: a rerun resumes

    def compute() -> dict[str, Any]:
        try:
            return basin_volume(
                obj,
                m.volume_threshold,
                n_directions=m.volume_directions,
                rule=m.volume_rule,
                tolerance=m.volume_tolerance,
                seed=m.direction_seed,
                path=partial,
            ).to_dict()
        except BasinscopeError as exc:
            return {"log_volume": None, "reason": str(exc)}

    return _cached_json(path, settings, compute, _env(obj), partial)


def _measure_hessian(report: RunReport, m: MeasureConfig, out: Path, progress: bool) -> None:
    """λ_max and trace of the training-loss Hessian (``hessian.json``, cached)."""
    from ..hessian import summary

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
    _hessian_spectrum(obj, settings | {"runs": SPECTRUM[0], "steps": SPECTRUM[1]}, out)


SPECTRUM = (2, 40)
"""(runs, Lanczos steps) of the spectral density the ``hessian`` measure stores."""


def _hessian_spectrum(obj: Objective, settings: dict[str, Any], out: Path) -> None:
    """The training-loss Hessian's eigenvalue density by stochastic Lanczos quadrature
    (Ghorbani et al. 2019; ``spectrum.json``, cached): the Ritz values and weights of
    :data:`SPECTRUM` runs, from which the report draws the broadened density."""
    from ..hessian import density

    def compute() -> dict[str, Any]:
        d = density(obj, runs=SPECTRUM[0], steps=SPECTRUM[1], seed=settings["seed"])
        return {k: v for k, v in d.to_dict().items() if k not in ("grid", "density")}

    _cached_json(out / "spectrum.json", settings, compute, _env(obj))


# The study's part of the sharpness suite (λ_max and tr H are the "hessian" measure,
# the plain noise sharpness is part of "surface"), in the suite's one vocabulary.
SUITE_PART = (
    "worst_case_l2",
    "worst_case_linf",
    "worst_case_adaptive",
    "average_case_adaptive",
    "keskar",
    "pac_bayes",
    "pac_bayes_mag",
)


def _measure_suite(report: RunReport, m: MeasureConfig, out: Path, progress: bool) -> None:
    """The rest of the sharpness suite (``suite.json``, cached; :data:`SUITE_PART` of
    :func:`basinscope.sharpness.suite`): worst case in an L2 and an L∞ ball and its
    adaptive version, adaptive noise sharpness, Keskar et al.'s φ, and Jiang et al.'s
    PAC-Bayes σ (plain and magnitude-aware)."""
    from ._common import SETTINGS_USED

    keys = sorted(SETTINGS_USED["suite"])  # the settings that key suite.json
    obj = train_objective(
        report.model,
        report.data,
        report.config.device,
        skip_bias_norm=m.skip_bias_norm,
        subset=m.eval_subset,
    )
    # the measure names are part of the key: a suite.json of the former vocabulary
    # (``adaptive_worst_case``, ``adaptive_noise_sharpness``) is recomputed
    settings = {k: getattr(m, k) for k in keys} | {
        "measures": list(SUITE_PART),
        "fingerprint": data_fingerprint(report.data),
        "model": model_fingerprint(report.model),
        "objective": objective_key(obj),
    }

    def compute() -> dict[str, Any]:
        parts = sharpness.suite(obj, m.suite_config(), SUITE_PART)
        return {
            k: (v.to_dict() if hasattr(v, "to_dict") else to_json(v))
            | ({"increases": None} if k == "average_case_adaptive" else {})
            for k, v in parts.items()
        }

    saved = _cached_json(out / "suite.json", settings, compute, _env(obj))
    for key in ("worst_case_l2", "worst_case_linf", "worst_case_adaptive", "keskar"):
        report.values[key] = saved[key]["value"]
    report.values["average_case_adaptive"] = saved["average_case_adaptive"]["value"]
    bounds = []
    for key in ("pac_bayes", "pac_bayes_mag"):
        report.values[f"{key}_sigma"] = saved[key]["sigma"]
        report.values[f"{key}_bound"] = saved[key]["bound"]
        if saved[key].get("bracketed") is False:  # σ' is an end of the search, a bound
            side = "≥" if saved[key]["increase"] <= saved[key]["target"] else "≤"
            bounds.append(f"{key}_sigma {side} {saved[key]['sigma']:.4g}")
    if bounds:  # shown in the summary: the search did not bracket the target
        report.values["pac_bayes_unbracketed"] = "; ".join(bounds)


def _measure_trajectory(report: RunReport, m: MeasureConfig, out: Path, progress: bool) -> None:
    """The loss on the plane of the run's two principal trajectory directions (Li et al.
    2018, needs ``snapshot_every``): ``trajectory.h5`` and ``figures/trajectory_<run>.png``."""
    from .. import plots
    from ..landscape import trajectory_plane
    from ..training import load_trajectory

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


def _measure_spread(report: RunReport, m: MeasureConfig, out: Path, progress: bool) -> None:
    """ε-sharpness and slice curvature over direction seeds (:mod:`._spread`)."""
    from ._spread import measure_spread

    measure_spread(report, m, out, progress)


MEASURES: dict[str, Callable[[RunReport, MeasureConfig, Path, bool], None]] = {
    "spread": _measure_spread,
    "trajectory": _measure_trajectory,
    "surface": _measure_surface,
    "volume": _measure_volume,
    "hessian": _measure_hessian,
    "suite": _measure_suite,
}
