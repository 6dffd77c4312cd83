"""The ``spread`` measure: does a run's sharpness depend on the random directions?

A filter-normalised slice (Li et al. 2018) is cut along random directions; users ask
whether a surface, and the ranking of runs read off it, depends on which
(tomgoldstein/loss-landscape #31). For every run this measure cuts one plane per
direction seed (:func:`basinscope.sharpness.direction_spread`) and stores the
ε-sharpness ``max_{‖c‖≤ε} L(θ0 + c1 d1 + c2 d2) − L(θ0)`` and the slice curvature
``d²/dt² L(θ0 + t d)|₀`` of each seed, with their mean ± SD over seeds
(``spread.json``, cached; ``figures/spread_<run>.png``: one panel per seed).
:func:`ranking_text` says whether the study's ranking of its runs holds for every seed.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import BasinscopeError
from ..landscape import Surface
from ._caches import _cached_json, _env, model_fingerprint, objective_key
from ._measures import MeasureConfig, train_objective

if TYPE_CHECKING:
    from ._summary import RunReport


def check_spread_settings(m: MeasureConfig) -> None:
    """Refuse, before any run is trained, ``spread`` settings that cannot give numbers:
    seeds (distinct integers, at least two) and a grid with 0 on it (the axis lines
    through θ0) and 3 points within ε for each curvature fit."""
    from .._checks import check_int, check_seed

    seeds = m.direction_seeds
    if seeds is not None:
        if isinstance(seeds, str | bytes | int) or len(set(seeds)) != len(seeds) or len(seeds) < 2:
            raise BasinscopeError(
                f"the direction seeds must be at least two distinct integers, got {seeds!r}"
            )
        for i, k in enumerate(seeds):
            check_seed(f"direction seed {i}", k)
    grid = check_int("the spread grid", m.spread_grid)
    step = (m.span[1] - m.span[0]) / max(grid - 1, 1)
    at = -m.span[0] / step if step > 0 else 0.5  # the grid index of 0
    if grid < 3 or abs(at - round(at)) > 1e-9 or not 0 <= round(at) < grid:
        raise BasinscopeError(
            f"the spread's planes need 0 on their grid (θ0 on the axis lines): span "
            f"{m.span[0]:g} … {m.span[1]:g} on {grid} points has none; use a span symmetric "
            "about 0 and an odd spread grid"
        )
    if not step <= m.radius * (1 + 1e-12):
        raise BasinscopeError(
            f"the spread grid's spacing {step:.3g} is larger than the radius {m.radius:g}: "
            f"each curvature fit needs 3 points within it; use a spread grid of at least "
            f"{int((m.span[1] - m.span[0]) / m.radius) + 1 | 1} points"
        )


def spread_seeds(m: MeasureConfig) -> tuple[int, ...]:
    """The measure's direction seeds: ``m.direction_seeds``, or by default the study's
    direction seed and the next two (the first plane is then the run's own surface)."""
    if m.direction_seeds is not None:
        return tuple(m.direction_seeds)
    return tuple(m.direction_seed + k for k in range(3))


def measure_spread(report: RunReport, m: MeasureConfig, out: Path, progress: bool) -> None:
    """ε-sharpness and slice curvature over direction seeds (``spread.json``, cached)."""
    from .. import plots
    from ..sharpness import direction_spread

    obj = train_objective(
        report.model, report.data, report.config.device,
        skip_bias_norm=m.skip_bias_norm, subset=m.eval_subset,
    )  # fmt: skip
    seeds = spread_seeds(m)
    settings = {
        "seeds": list(seeds), "grid": m.spread_grid, "span": list(m.span), "radius": m.radius,
        "model": model_fingerprint(report.model), "objective": objective_key(obj),
    }  # fmt: skip

    def compute() -> dict[str, Any]:
        s = direction_spread(
            obj, seeds, dim=2, span=m.span, steps=m.spread_grid, radius=m.radius,
            progress=progress,
        )  # fmt: skip
        surfaces = [
            {"x": v.xcoordinates.tolist(), "y": v.ycoordinates.tolist(),
             "train_loss": v.train_loss.tolist()} for v in s.surfaces
        ]  # fmt: skip
        return s.to_dict() | {"surfaces": surfaces}

    saved = _cached_json(out / "spread.json", settings, compute, _env(obj))
    for key in ("eps_mean", "eps_sd", "curvature_mean", "curvature_sd"):
        report.values[f"spread_{key}"] = saved[key]
    plots.plot_spread(
        spread_from_json(saved),
        out.parent / "figures" / f"spread_{report.name}.png",
        title=f"{report.name}: one plane per direction seed",
    )


def spread_from_json(saved: dict[str, Any]) -> SimpleNamespace:
    """What :func:`basinscope.plots.plot_spread` reads, from a stored ``spread.json``."""
    surfaces = []
    for s in saved["surfaces"]:
        z = np.asarray(s["train_loss"], dtype=np.float64)
        x, y = np.asarray(s["x"]), np.asarray(s["y"])
        surfaces.append(Surface(x, y, train_loss=z, computed=np.isfinite(z)))
    return SimpleNamespace(
        seeds=saved["seeds"], dim=saved["dim"], surfaces=surfaces, eps=saved["eps"]
    )


def _order(values: dict[str, float]) -> list[str]:
    return sorted(values, key=lambda k: -values[k])  # sharpest first


def ranking_text(reports: list[RunReport], root: Path) -> str:
    """Whether the runs' order by ε-sharpness and by slice curvature (the mean over a
    seed's two directions) is the same for every direction seed, as Markdown."""
    from .._io import atomic_write_json

    saved = {}
    for r in reports:
        path = root / r.name / "spread.json"
        if not r.diverged and path.is_file():
            saved[r.name] = json.loads(path.read_text())
    if len(saved) < 2:
        return ""
    seeds = next(iter(saved.values()))["seeds"]
    text = "\n## Direction spread (one plane per direction seed)\n\n"
    text += f"Seeds {', '.join(map(str, seeds))}: ε-sharpness and slice curvature, mean ± SD over seeds.\n\n"
    text += "| run | ε-sharpness | slice curvature |\n|---|---|---|\n"
    for name, s in saved.items():
        text += (
            f"| {name} | {s['eps_mean']:.4g} ± {s['eps_sd']:.2g} "
            f"| {s['curvature_mean']:.4g} ± {s['curvature_sd']:.2g} |\n"
        )
    verdicts = {}
    for label, per_seed in (
        ("ε-sharpness", lambda s, i: s["eps"][i]),
        ("slice curvature", lambda s, i: float(np.mean(s["curvature"][i]))),
    ):
        orders = [_order({n: per_seed(s, i) for n, s in saved.items()}) for i in range(len(seeds))]
        holds = all(o == orders[0] for o in orders)
        verdicts[label] = {"orders": {str(k): o for k, o in zip(seeds, orders, strict=True)},
                           "holds_for_every_seed": holds}  # fmt: skip
        if holds:
            text += f"\nRanked by {label} (sharpest first), {' > '.join(orders[0])}: the same for every seed.\n"
        else:
            differing = [f"seed {k}: {' > '.join(o)}" for k, o in zip(seeds, orders, strict=True)]
            swaps = sum(
                a != b
                for o1, o2 in itertools.combinations(orders, 2)
                for a, b in zip(o1, o2, strict=True)
            )
            text += (
                f"\nRanked by {label} (sharpest first), the order changes with the seed "
                f"({swaps} places differ over the seed pairs): " + "; ".join(differing) + ".\n"
            )
    atomic_write_json(root / "spread_ranking.json", verdicts)
    return text
