"""What the built-in studies share: their run configurations, the volume note and the
settings each measure reads."""

from __future__ import annotations

from typing import Any

from ..training import TrainConfig
from ._summary import RunReport


def _mlp_run(**fields: Any) -> TrainConfig:
    """A run of the built-in grids: the MLP 64-128-128-10 unless ``fields`` say otherwise."""
    return TrainConfig(**{"model": "mlp", "model_kwargs": {"widths": (128, 128)}, **fields})


def _step_runs(
    variants: dict[str, dict[str, Any]], *, steps: int, epochs: int | None, **common: Any
) -> dict[str, TrainConfig]:
    """One MLP run per variant, all with the same budget: ``steps`` (or ``epochs``)."""
    budget = {"epochs": epochs, "steps": None} if epochs else {"epochs": 1, "steps": steps}
    return {
        name: TrainConfig(model="mlp", model_kwargs={"widths": (64, 64)}, **budget, **common, **v)
        for name, v in variants.items()
    }


def _ok(reports: list[RunReport]) -> list[RunReport]:
    return [r for r in reports if not r.diverged and r.values.get("log_volume") is not None]


VOLUME_NOTE = (
    "\nlog volume: natural log of the star-convex Monte-Carlo estimate "
    "V_n(1)·mean(r_iⁿ) over random rays (Fan, Sandlund & Ko). In this many dimensions "
    "the mean is dominated by the largest radius (ESS ≈ 1), so the estimate is in "
    "effect a lower bound on the volume; compare runs, not absolute values.\n"
)


# The MeasureConfig fields each measure reads: a study refuses an option for a measure
# it does not make (``Study.uses``) instead of ignoring it.
SETTINGS_USED: dict[str, frozenset[str]] = {
    "surface": frozenset(
        [
            "grid_size",
            "span",
            "direction_seed",
            "skip_bias_norm",
            "radius",
            "sigma",
            "noise_samples",
            "noise_seed",
            "eval_subset",
        ]
    ),
    "volume": frozenset(
        [
            "volume_threshold",
            "volume_rule",
            "volume_directions",
            "volume_tolerance",
            "direction_seed",
        ]
    ),
    "hessian": frozenset({"direction_seed"}),
    "spread": frozenset(
        [
            "direction_seed",
            "direction_seeds",
            "spread_grid",
            "span",
            "radius",
            "skip_bias_norm",
            "eval_subset",
        ]
    ),
    "suite": frozenset(
        [
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
        ]
    ),
    "trajectory": frozenset({"grid_size", "eval_subset"}),
}
