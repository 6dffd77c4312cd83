"""The one sharpness suite: every measure at θ0 under one key vocabulary.

:func:`suite` runs the measures of :data:`SUITE_MEASURES` (or those named) with
the settings of one frozen :class:`SuiteConfig` and returns their result
objects by name; :func:`suite_values` reads the headline number of each. The
studies, ``compare_measures`` (Dinh et al.'s reparameterisation check) and the
CLI share this vocabulary:

==========================  ==========================================================
``worst_case_l2``           :func:`worst_case`, L2 ball of ``radius``
``worst_case_linf``         :func:`worst_case`, L∞ ball of ``linf_radius``
``worst_case_adaptive``     :func:`worst_case`, adaptive (``T = |θ0|``), ``adaptive_radius``
``average_case``            :func:`average_case`, ``sigma``, ``samples`` draws
``average_case_adaptive``   :func:`average_case`, adaptive, ``adaptive_sigma``
``keskar``                  Keskar et al.'s φ (:func:`keskar`, ``keskar_epsilon``)
``pac_bayes``               Jiang et al.'s σ' (:func:`pac_bayes`, ``pac_target``,
                            ``pac_samples`` draws)
``pac_bayes_mag``           the same, magnitude-aware (invariant up to its ε² floor and
                            Monte-Carlo ties)
``lambda_max``              the top Hessian eigenvalue (:func:`basinscope.hessian.eigenvalues`)
``hessian_trace``           ``tr H`` by Hutchinson (:func:`basinscope.hessian.trace`)
``filter_line``             ``max_t L(θ0 + t d) − L(θ0)`` over ``line_steps`` points of
                            ``t ∈ [−1, 1]``, ``d`` a filter-normalised random direction
                            (Li et al. 2018) drawn from ``seed``
==========================  ==========================================================

Every measure is seeded by ``seed``; the worst cases share ``steps`` and ``restarts``.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# The measures are called through the packages' public names (``sharpness.worst_case``,
# ``hessian.trace``), so a monkeypatch of a public name reaches the suite too.
from .. import hessian, sharpness
from .._checks import check_int, check_positive
from ..errors import BasinscopeError
from ..hessian import Eigenpairs
from ..landscape import finite_loss0, line, random_directions
from ..objective import Objective
from ._noise import PacBayes
from ._slice import EpsilonSharpness

SUITE_MEASURES = (
    "worst_case_l2",
    "worst_case_linf",
    "worst_case_adaptive",
    "average_case",
    "average_case_adaptive",
    "keskar",
    "pac_bayes",
    "pac_bayes_mag",
    "lambda_max",
    "hessian_trace",
    "filter_line",
)
"""The measures of :func:`suite`, in the order it runs them by default."""


@dataclass(frozen=True)
class SuiteConfig:
    """Every setting of :func:`suite` (checked on construction, one sentence per bad value).

    Attributes:
        radius: ρ of ``worst_case_l2``.
        linf_radius: ρ of ``worst_case_linf`` (the default is ``0.05 / 100``).
        adaptive_radius: ρ of ``worst_case_adaptive`` (relative to ``|θ0|``).
        sigma: σ of ``average_case``.
        adaptive_sigma: σ of ``average_case_adaptive`` (relative to ``|θ0|``).
        samples: noise draws of the two average cases (≥ 2).
        steps, restarts: the ascent of every worst case.
        keskar_epsilon: ε of ``keskar`` (full space, L-BFGS-B's default budget).
        pac_target: the error increase σ' may cause (``pac_bayes``, ``pac_bayes_mag``).
        pac_samples: Monte-Carlo draws per σ of the PAC-Bayes searches.
        line_steps: points of the ``filter_line`` slice (≥ 2).
        seed: the seed of every measure.
    """

    radius: float = 0.05
    linf_radius: float = 0.0005
    adaptive_radius: float = 0.05
    sigma: float = 0.01
    adaptive_sigma: float = 0.01
    samples: int = 16
    steps: int = 10
    restarts: int = 1
    keskar_epsilon: float = 1e-3
    pac_target: float = 0.1
    pac_samples: int = 16
    line_steps: int = 21
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("radius", "linf_radius", "adaptive_radius", "sigma", "adaptive_sigma"):
            check_positive(name, getattr(self, name))
        check_positive("keskar_epsilon", self.keskar_epsilon)
        target = self.pac_target
        if isinstance(target, bool) or not isinstance(target, numbers.Real) or not 0 < target < 1:
            raise BasinscopeError(f"pac_target must be an error increase in (0, 1), got {target!r}")
        minimum = {"samples": 2, "steps": 1, "restarts": 1, "pac_samples": 1, "line_steps": 2}
        for name, low in minimum.items():
            check_int(name, getattr(self, name), minimum=low)
        check_int("seed", self.seed, minimum=0)


def _worst(c: SuiteConfig, progress: bool) -> dict[str, Any]:
    return {"steps": c.steps, "restarts": c.restarts, "seed": c.seed, "progress": progress}


def _filter_line(obj: Objective, c: SuiteConfig, progress: bool) -> EpsilonSharpness:
    """The largest rise along one filter-normalised random direction, ``t ∈ [−1, 1]``
    (an ε-sharpness of radius 1 in that direction's span)."""
    d = random_directions(obj, 1, norm="filter", seed=c.seed)[0]
    surf = line(obj, d, span=(-1.0, 1.0), steps=c.line_steps)
    losses = surf.metric("train_loss")
    max_loss = float(losses.max())
    loss0 = obj.loss()
    return EpsilonSharpness(
        value=max_loss - loss0,
        loss0=loss0,
        max_loss=max_loss,
        argmax=(float(surf.xcoordinates[int(np.argmax(losses))]),),
        radius=1.0,
        n_points=len(losses),
    )


Runner = Callable[[Objective, SuiteConfig, bool], Any]
_RUNNERS: dict[str, Runner] = {
    "worst_case_l2": lambda obj, c, p: sharpness.worst_case(obj, c.radius, **_worst(c, p)),
    "worst_case_linf": lambda obj, c, p: sharpness.worst_case(
        obj, c.linf_radius, norm="linf", **_worst(c, p)
    ),
    "worst_case_adaptive": lambda obj, c, p: sharpness.worst_case(
        obj, c.adaptive_radius, adaptive=True, **_worst(c, p)
    ),
    "average_case": lambda obj, c, p: sharpness.average_case(
        obj, c.sigma, samples=c.samples, seed=c.seed, progress=p
    ),
    "average_case_adaptive": lambda obj, c, p: sharpness.average_case(
        obj, c.adaptive_sigma, samples=c.samples, seed=c.seed, adaptive=True, progress=p
    ),
    "keskar": lambda obj, c, p: sharpness.keskar(obj, c.keskar_epsilon, seed=c.seed),
    "pac_bayes": lambda obj, c, p: sharpness.pac_bayes(
        obj, target=c.pac_target, samples=c.pac_samples, seed=c.seed, progress=p
    ),
    "pac_bayes_mag": lambda obj, c, p: sharpness.pac_bayes(
        obj,
        target=c.pac_target,
        samples=c.pac_samples,
        seed=c.seed,
        magnitude_aware=True,
        progress=p,
    ),
    "lambda_max": lambda obj, c, p: hessian.eigenvalues(obj, 1, seed=c.seed),
    "hessian_trace": lambda obj, c, p: hessian.trace(obj, seed=c.seed),
    "filter_line": _filter_line,
}


def _check_measures(measures: Sequence[str] | None) -> list[str]:
    """The names asked for, in order: each one of :data:`SUITE_MEASURES`, once."""
    if measures is None:
        return list(SUITE_MEASURES)
    names = [measures] if isinstance(measures, str) else list(measures)
    known = ", ".join(SUITE_MEASURES)
    if not names:
        raise BasinscopeError(f"measures is empty; name at least one of {known}")
    for i, name in enumerate(names):
        if name not in _RUNNERS:
            raise BasinscopeError(f"unknown sharpness measure {name!r}; the suite has {known}")
        if name in names[:i]:
            raise BasinscopeError(f"measures names {name!r} twice; name each measure once")
    return names


def suite(
    obj: Objective,
    config: SuiteConfig | None = None,
    measures: Sequence[str] | None = None,
    *,
    progress: bool = False,
) -> dict[str, Any]:
    """The sharpness measures at ``obj``'s θ0, by name (see the module docstring).

    Args:
        obj: the Objective (never modified).
        config: the settings (default ``SuiteConfig()``).
        measures: names from :data:`SUITE_MEASURES`, run and returned in this
            order (default: all of them, in that order).
        progress: progress bars for the measures that have one.

    Returns:
        ``{name: result}``: :class:`WorstCase`, :class:`NoiseSharpness`,
        :class:`KeskarSharpness`, :class:`PacBayes`, :class:`~basinscope.hessian.Eigenpairs`
        (``lambda_max``), :class:`~basinscope.hessian.TraceEstimate` (``hessian_trace``)
        and :class:`EpsilonSharpness` (``filter_line``); :func:`suite_values` gives
        their headline numbers. A non-finite loss at θ0 is refused before any
        measure runs, and bad names or settings before any work.
    """
    config = SuiteConfig() if config is None else config
    if not isinstance(config, SuiteConfig):
        raise BasinscopeError(f"config must be a SuiteConfig, got {type(config).__name__}")
    names = _check_measures(measures)
    finite_loss0(obj, "its sharpness measures")  # before the first measure
    return {name: _RUNNERS[name](obj, config, progress) for name in names}


def _headline(name: str, result: Any) -> float:
    if isinstance(result, Eigenpairs):
        return float(result.values[0])
    if isinstance(result, PacBayes):
        return result.sigma
    if not hasattr(result, "value"):
        raise BasinscopeError(
            f"suite_values reads the results of sharpness.suite; {name!r} holds a "
            f"{type(result).__name__}"
        )
    return float(result.value)


def suite_values(results: Mapping[str, Any]) -> dict[str, float]:
    """The headline number of each result of :func:`suite`: the eigenvalue for
    ``lambda_max``, σ' for ``pac_bayes`` / ``pac_bayes_mag``, ``value`` for the rest."""
    return {name: _headline(name, result) for name, result in results.items()}
