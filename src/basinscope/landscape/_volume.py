"""Basin volume: the Monte-Carlo star-convex estimator (Fan, Sandlund & Ko).

The basin of a minimum θ0 is the set ``{θ : L(θ) ≤ τ}`` (absolute rule, the
paper's) or ``{θ : L(θ) − L(θ0) ≤ τ}`` (relative rule). If it is star-convex
around θ0, its volume in polar coordinates is

    V = ∫_{S^{n-1}} ∫_0^{r(u)} ρ^{n-1} dρ du = V_n(1) · E_u[ r(u)ⁿ ],

with ``u`` uniform on the unit sphere, ``r(u)`` the radius where the loss
along the ray ``θ0 + ρ u`` first crosses the threshold and
``V_n(1) = π^{n/2} / Γ(n/2 + 1)`` the unit ball's volume. The estimate from N
rays is

    log V ≈ log V_n(1) + log (1/N) Σ_i r_iⁿ,

computed in float64 with log-sum-exp; ``log⟨rⁿ⟩`` (without the constant) is the
quantity Fan et al. report. In high dimension ``r_iⁿ`` is dominated by the
largest radius (``log⟨rⁿ⟩ → n·log r_max − log N``), so the estimate has a huge
variance and, with finitely many rays, is in effect a lower bound on the
volume; :class:`VolumeResult` reports the effective sample size and the share
of the largest term so that this is visible.

Radii are found for all rays at once: start at ``r0``, double until the loss
crosses (or ``r_max``), then bisect to a relative tolerance. Each ray's
direction comes from ``(seed, index)`` alone, and its search depends on that
ray alone, so with ``basin_volume(..., path=...)`` finished rays are stored as
each batch ends (:mod:`basinscope._partial`) and an interrupted run resumes
with the same radii, bit for bit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from .. import _dist
from .._checks import check_int, check_number
from .._partial import open_partial
from ..errors import BasinscopeError
from ..objective import Objective
from ._directions import NORMALIZERS
from ._rays import _check_precondition, _ray, _search
from ._rays import ray_directions as ray_directions  # also basinscope.volume.ray_directions

RULES = ("absolute", "relative")


def log_unit_ball(n: int) -> float:
    """``log V_n(1) = (n/2)·log π − log Γ(n/2 + 1)``."""
    return 0.5 * n * math.log(math.pi) - math.lgamma(0.5 * n + 1.0)


def _logsumexp(a: np.ndarray) -> float:
    m = float(np.max(a))
    return m + math.log(float(np.sum(np.exp(a - m))))


@dataclass(frozen=True)
class VolumeResult:
    """A star-convex basin-volume estimate.

    Attributes:
        log_volume: ``log V_n(1) + log⟨rⁿ⟩`` (natural log).
        log_mean_rn: ``log⟨rⁿ⟩ = log (1/N) Σ r_iⁿ`` (Fan et al.'s quantity).
        log_unit_ball: ``log V_n(1)``.
        n: number of coordinates.
        radii: ``[N]`` crossing radii (``r_max`` for rays that never crossed).
        crossed: ``[N]`` whether each ray crossed within ``r_max``.
        ess: effective sample size of the weights ``w_i = r_iⁿ``,
            ``(Σw)² / Σw²`` (1 means one ray carries the whole estimate).
        top_share: ``max w / Σ w``.
        ci: bootstrap interval of ``log_volume`` (level ``ci_level``).
        threshold, rule, loss0: the basin definition and ``L(θ0)``.
        evaluations: loss evaluations spent (one = one point on the whole data).
        tolerance: relative bisection tolerance.
    """

    log_volume: float
    log_mean_rn: float
    log_unit_ball: float
    n: int
    radii: np.ndarray
    crossed: np.ndarray
    ess: float
    top_share: float
    ci: tuple[float, float]
    ci_level: float
    threshold: float
    rule: str
    loss0: float
    evaluations: int
    tolerance: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def n_uncrossed(self) -> int:
        return int((~self.crossed).sum())

    def to_dict(self) -> dict[str, Any]:
        return {
            "log_volume": self.log_volume,
            "log_mean_rn": self.log_mean_rn,
            "log_unit_ball": self.log_unit_ball,
            "n": self.n,
            "n_directions": len(self.radii),
            "n_uncrossed": self.n_uncrossed,
            "radius_min": float(self.radii.min()),
            "radius_median": float(np.median(self.radii)),
            "radius_max": float(self.radii.max()),
            "ess": self.ess,
            "top_share": self.top_share,
            "ci": list(self.ci),
            "ci_level": self.ci_level,
            "threshold": self.threshold,
            "rule": self.rule,
            "loss0": self.loss0,
            "evaluations": self.evaluations,
            "tolerance": self.tolerance,
            **self.extra,
        }


def volume_from_radii(
    radii: np.ndarray,
    n: int,
    *,
    bootstrap: int = 1000,
    ci_level: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """The log-sum-exp aggregate of radii and its diagnostics (see module docstring)."""
    r = np.asarray(radii, dtype=np.float64)
    if r.ndim != 1 or len(r) < 2:
        raise BasinscopeError(f"the volume needs at least 2 radii, got {r.size}")
    if np.any(~np.isfinite(r)) or np.any(r <= 0):
        raise BasinscopeError("every radius must be a positive finite number")
    logw = n * np.log(r)
    lse = _logsumexp(logw)
    log_mean = lse - math.log(len(r))
    ess = math.exp(2 * lse - _logsumexp(2 * logw))
    top = math.exp(float(logw.max()) - lse)
    rng = np.random.default_rng(seed)
    boots = np.array(
        [
            _logsumexp(logw[rng.integers(0, len(r), len(r))]) - math.log(len(r))
            for _ in range(bootstrap)
        ]
    )
    lo, hi = (
        np.quantile(boots, [(1 - ci_level) / 2, (1 + ci_level) / 2])
        if bootstrap
        else (
            np.nan,
            np.nan,
        )
    )
    lub = log_unit_ball(n)
    return {
        "log_volume": lub + log_mean,
        "log_mean_rn": log_mean,
        "log_unit_ball": lub,
        "ess": ess,
        "top_share": top,
        "ci": (float(lub + lo), float(lub + hi)),
        "ci_level": ci_level,
    }


def finite_loss0(obj: Objective, measure: str) -> float:
    """``L(θ0)``, refused with one sentence when it is NaN or infinite."""
    loss0 = obj.loss()
    if not math.isfinite(loss0):
        raise BasinscopeError(
            f"the loss at the weights is {loss0} (not finite), so {measure} is undefined; "
            "check the model (did training diverge?) and the data"
        )
    return loss0


def _volume_key(obj: Objective, settings: dict[str, Any], precondition: Tensor | None) -> dict:
    from .._keys import tensor_digest

    return {
        **obj.fingerprint(),
        **settings,
        "precondition": None if precondition is None else tensor_digest(precondition),
    }


def _check_arguments(
    obj: Objective,
    threshold: Any,
    rule: Any,
    n_directions: Any,
    seed: Any,
    norm: Any,
    precondition: Any,
    r0: Any,
    r_max: Any,
    tolerance: Any,
    batch: Any,
    bootstrap: Any,
) -> tuple[dict[str, Any], int, int, int, Tensor | None]:
    """:func:`basin_volume`'s arguments checked in order, each refused with one sentence.

    Returns the settings that key the rays (``threshold, rule, seed, norm, r0, r_max,
    tolerance``), the counts ``n_directions, batch, bootstrap`` and the precondition.
    """
    if rule not in RULES:
        raise BasinscopeError(f"unknown threshold rule {rule!r}; use 'absolute' or 'relative'")
    threshold = check_number("threshold", threshold)
    n_directions = check_int("n_directions", n_directions, minimum=2)
    seed = check_int("seed", seed, minimum=0)
    batch = check_int("batch", batch, minimum=1)
    bootstrap = check_int("bootstrap", bootstrap, minimum=0)
    tolerance = check_number("tolerance", tolerance, positive=True)
    if not tolerance < 1:
        raise BasinscopeError(f"tolerance must be a relative tolerance in (0, 1), got {tolerance}")
    r0 = check_number("r0", r0, positive=True)
    r_max = check_number("r_max", r_max, positive=True)
    if not r0 < r_max:
        raise BasinscopeError(f"need 0 < r0 < r_max, got r0={r0}, r_max={r_max}")
    if norm not in NORMALIZERS:
        raise BasinscopeError(
            f"unknown normalisation {norm!r}; use one of {', '.join(NORMALIZERS)}"
        )
    precondition = _check_precondition(obj, precondition)
    settings = dict(
        threshold=threshold, rule=rule, seed=seed, norm=norm, r0=r0, r_max=r_max,
        tolerance=tolerance,
    )  # fmt: skip
    return settings, n_directions, batch, bootstrap, precondition


def _level(obj: Objective, threshold: float, rule: str) -> tuple[float, float]:
    """``(L(θ0), the loss level that ends the basin)``; an empty basin is refused."""
    if rule == "relative" and not threshold > 0:
        raise BasinscopeError(f"a relative threshold must be positive, got {threshold}")
    loss0 = finite_loss0(obj, "the basin volume")
    level = threshold if rule == "absolute" else loss0 + threshold
    if loss0 >= level:
        raise BasinscopeError(
            f"the threshold {threshold:g} is below the loss at the minimum ({loss0:.6g}); "
            "the basin would be empty: raise it or use rule='relative'"
        )
    return loss0, level


def _search_rays(
    obj: Objective,
    done: Any,
    n_directions: int,
    batch: int,
    progress: bool,
    level: float,
    settings: dict[str, Any],
    precondition: Tensor | None,
) -> list[Any]:
    """``[radius, crossed, evaluations, largest loss]`` of rays ``0 … n_directions−1``:
    the ones ``done`` (a :mod:`basinscope._partial` store) lacks are searched in batches
    of ``batch`` and stored as each batch ends."""
    seed, norm = settings["seed"], settings["norm"]
    r0, r_max, tolerance = settings["r0"], settings["r_max"], settings["tolerance"]
    todo = done.missing(range(n_directions))
    shown = progress and _dist.is_writer(obj.dist)
    with tqdm(total=n_directions, disable=not shown, desc="rays", unit="ray") as bar:
        bar.update(n_directions - len(todo))
        for s in range(0, len(todo), batch):
            idx = todo[s : s + batch]
            dirs = torch.stack([_ray(obj, seed, i, norm, precondition) for i in idx])
            r, c, evals, big = _search(obj, dirs, level, r0, r_max, tolerance)
            done.update(
                {
                    i: [float(r[k]), bool(c[k]), int(evals[k]), float(big[k])]
                    for k, i in enumerate(idx)
                }
            )
            bar.update(len(idx))
    return [done.get(i) for i in range(n_directions)]


def basin_volume(
    obj: Objective,
    threshold: float,
    *,
    n_directions: int = 100,
    rule: str = "absolute",
    seed: int = 0,
    norm: str = "none",
    precondition: Tensor | None = None,
    r0: float = 1.0,
    r_max: float = 1e4,
    tolerance: float = 1e-3,
    batch: int = 64,
    bootstrap: int = 1000,
    progress: bool = False,
    path: str | Path | None = None,
) -> VolumeResult:
    """Monte-Carlo star-convex volume of ``{L ≤ τ}`` (or ``{L − L(θ0) ≤ τ}``) around θ0.

    Args:
        obj: the Objective (its training data defines the landscape).
        threshold: τ, a finite number.
        n_directions: N ≥ 2 rays.
        rule: ``absolute`` (``L > τ`` ends the basin; Fan et al.) or ``relative``.
        seed, norm, precondition: the ray directions (:func:`ray_directions`);
            ``precondition`` is ``[n]``, positive and finite.
        r0: first radius tried; halved while it is already outside the basin.
        r_max: largest radius (finite); rays not crossed by then keep ``r_max``
            and are reported in ``crossed``/``n_uncrossed``.
        tolerance: bisection stops when ``(hi − lo) ≤ tolerance · hi``; the
            reported radius is the midpoint, within ``tolerance/2`` relative.
        batch: rays searched together (results do not depend on it).
        bootstrap: resamples for the confidence interval (0 for none).
        progress: show a progress bar over rays.
        path: a JSON file of partial results (:mod:`basinscope._partial`): each
            batch of rays is stored there as it finishes (radius, crossed,
            evaluations, largest loss seen), and a rerun with the same path
            computes only the rays it lacks, giving the same result bit for bit
            as an uninterrupted run. Keyed by the Objective's fingerprint and
            ``threshold, rule, seed, norm, precondition, r0, r_max, tolerance``
            (not ``n_directions`` or ``batch``: a rerun with more rays reuses the
            stored ones); a file of another computation is refused.

    Returns:
        A :class:`VolumeResult`.
    """
    settings, n_directions, batch, bootstrap, precondition = _check_arguments(
        obj, threshold, rule, n_directions, seed, norm, precondition, r0, r_max, tolerance,
        batch, bootstrap,
    )  # fmt: skip
    threshold, seed = settings["threshold"], settings["seed"]
    r_max, tolerance = settings["r_max"], settings["tolerance"]
    loss0, level = _level(obj, threshold, rule)
    key = _volume_key(obj, settings, precondition) if path is not None else {}
    with open_partial(path, key, what="basin-volume rays", dist=obj.dist) as done:
        rays = _search_rays(obj, done, n_directions, batch, progress, level, settings, precondition)
    radii = np.array([ray[0] for ray in rays], dtype=np.float64)
    crossed = np.array([ray[1] for ray in rays], dtype=bool)
    evaluations = sum(int(ray[2]) for ray in rays)
    largest = max(float(ray[3]) for ray in rays)
    if not crossed.any():
        raise BasinscopeError(
            f"no ray crossed the threshold {level:.6g} within r_max = {r_max:g} "
            f"(largest loss seen {largest:.6g}); raise r_max or lower the threshold"
        )
    stats = volume_from_radii(radii, obj.n, bootstrap=bootstrap, seed=seed)
    return VolumeResult(
        radii=radii,
        crossed=crossed,
        n=obj.n,
        threshold=float(threshold),
        rule=rule,
        loss0=loss0,
        evaluations=evaluations,
        tolerance=tolerance,
        **stats,
    )
