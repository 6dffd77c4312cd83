"""Sharpness under random weight noise: average-case sharpness and PAC-Bayes flatness.

* **Average-case sharpness** (:func:`average_case`) — the expected loss
  increase under Gaussian weight noise,
  ``E_z[L(θ0 + σ z)] − L(θ0)``, ``z ~ N(0, I)``, estimated from S samples with
  its standard error ``std(ΔL)/√S``. For ``L = ½θᵀAθ`` at ``θ0 = 0`` the
  expectation is ``½σ²·tr(A)``. Sample ``i`` is drawn from ``(seed, i)`` alone.
  With ``adaptive=True`` the noise is ``σ·|θ0| ⊙ z`` (scale-invariant; Kwon et
  al. 2021).
* **PAC-Bayes flatness** (:func:`pac_bayes`) — the largest Gaussian weight-noise
  scale σ that raises the training error by at most a target, and the
  PAC-Bayes bound term built on it (Jiang et al. 2019, "Fantastic
  generalization measures and where to find them").
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from .. import _dist
from .._checks import check_int, check_number, check_positive
from .._partial import open_partial
from .._rng import item_generator
from ..errors import BasinscopeError
from ..landscape import finite_loss0
from ..objective import Objective
from ._common import GAUSSIAN_REACH, _check_reach, _count, _no_vectors


@dataclass(frozen=True)
class NoiseSharpness:
    """Average loss increase under Gaussian weight noise.

    Attributes:
        value: mean of ``L(θ0 + σ z_i) − L(θ0)`` over samples.
        stderr: its standard error, ``std/√S`` (ddof = 1).
        sigma: noise scale σ.
        samples: S.
        loss0: ``L(θ0)``.
        increases: ``[S]`` the individual increases.
        adaptive: whether the noise was scaled by ``|θ0|``.
        seed: the seed of the noise.
    """

    value: float
    stderr: float
    sigma: float
    samples: int
    loss0: float
    increases: np.ndarray
    adaptive: bool
    seed: int


def _gaussian_rows(obj: Objective, seed: int, indices: Sequence[int]) -> Tensor:
    """``[len(indices), n]`` standard normal noise, row ``i`` drawn from ``(seed, i)`` alone
    (float32, then moved to the Objective's device and dtype)."""
    return torch.stack(
        [
            torch.randn(obj.n, generator=item_generator(seed, i), dtype=torch.float32)
            for i in indices
        ]
    ).to(obj.theta0)


def average_case(
    obj: Objective,
    sigma: float,
    *,
    samples: int = 32,
    seed: int = 0,
    adaptive: bool = False,
    chunk: int = 16,
    progress: bool = False,
    path: str | Path | None = None,
) -> NoiseSharpness:
    """Mean loss increase under Gaussian weight noise of scale σ (see module docstring).

    Args:
        obj: the Objective.
        sigma: noise standard deviation σ > 0 (relative to ``|θ0|`` if adaptive).
        samples: S ≥ 2.
        seed: noise sample ``i`` comes from ``(seed, i)`` alone.
        adaptive: scale the noise elementwise by ``|θ0|``.
        chunk: samples evaluated together (results do not depend on it).
        progress: show a progress bar.
        path: a JSON file of partial results (:mod:`basinscope._partial`): the
            loss of each noisy sample is stored as its chunk finishes and a rerun
            evaluates only the missing samples (bit-identical to an uninterrupted
            run). Keyed by the Objective's fingerprint, ``sigma``, ``seed`` and
            ``adaptive`` (not ``samples``: a rerun with more reuses the stored ones).
    """
    sigma = check_number("sigma", sigma, positive=True)
    samples = check_int("samples", samples, minimum=2)
    seed = check_int("seed", seed, minimum=0)
    chunk = check_int("chunk", chunk, minimum=1)
    loss0 = finite_loss0(obj, "its average-case sharpness")
    scale = obj.theta0.abs() if adaptive else torch.ones_like(obj.theta0)
    _check_reach(obj, "sigma", sigma, sigma * float(scale.max()) * GAUSSIAN_REACH)
    settings = {"sigma": sigma, "seed": seed, "adaptive": bool(adaptive)}
    key = {**obj.fingerprint(), **settings} if path is not None else {}
    with open_partial(path, key, what="average-case noise samples", dist=obj.dist) as done:
        todo = done.missing(range(samples))
        shown = progress and _dist.is_writer(obj.dist)
        with tqdm(total=samples, disable=not shown, desc="noise", unit="sample") as bar:
            bar.update(samples - len(todo))
            for start in range(0, len(todo), chunk):
                idx = todo[start : start + chunk]
                z = _gaussian_rows(obj, seed, idx)
                losses, _ = obj.evaluate(obj.theta0 + sigma * scale * z, split="points")
                done.update(dict(zip(idx, losses.tolist(), strict=True)))
                bar.update(len(idx))
        losses = np.array([done.get(i) for i in range(samples)], dtype=np.float64)
    increases = losses - loss0
    return NoiseSharpness(
        value=float(increases.mean()),
        stderr=float(increases.std(ddof=1) / np.sqrt(samples)),
        sigma=float(sigma),
        samples=int(samples),
        loss0=loss0,
        increases=increases,
        adaptive=adaptive,
        seed=int(seed),
    )


@dataclass(frozen=True)
class PacBayes:
    """PAC-Bayes flatness (Jiang et al. 2019): the largest tolerable weight noise.

    Attributes:
        sigma: σ', the largest σ found with error increase ``≤ target``.
        bound: the PAC-Bayes bound term built on σ' (see :func:`pac_bayes`).
        flatness: ``1/σ'²`` (Jiang et al.'s "pacbayes.flatness" /
            "pacbayes.mag.flatness").
        increase: the Monte-Carlo error increase at σ'.
        error0: the training error ``1 − acc(θ0)``.
        target: the allowed increase.
        magnitude_aware: whether the noise variance was ``σ²θ0² + ε²``.
        eps: ε of the magnitude-aware noise.
        samples: Monte-Carlo draws per σ (the same draws at every σ).
        seed: their seed (draw ``i`` from ``(seed, i)``).
        n_examples: m, the number of training examples.
        weight_norm2: ``‖θ0‖₂²`` over the Objective's space.
        bracketed: ``False`` if the search hit ``sigma_min`` or ``sigma_max``
            (σ' is then that end, and not the crossing).
        sigmas, increases: every σ tried and its error increase, in order.
        evaluations: Monte-Carlo evaluations (``samples`` per σ).
    """

    sigma: float
    bound: float
    flatness: float
    increase: float
    error0: float
    target: float
    magnitude_aware: bool
    eps: float
    samples: int
    seed: int
    n_examples: int
    weight_norm2: float
    bracketed: bool
    sigmas: tuple[float, ...]
    increases: tuple[float, ...]
    evaluations: int

    def to_dict(self) -> dict[str, Any]:
        return _no_vectors(self)


def _accuracy0(obj: Objective, measure: str) -> float:
    """The accuracy at θ0, after refusing a non-finite loss there (a diverged model)."""
    loss, acc = obj.evaluate(obj.theta0, split="points")
    if not math.isfinite(float(loss[0])):
        raise BasinscopeError(
            f"the loss at the weights is {float(loss[0])} (not finite), so {measure} is "
            "undefined; check the model (did training diverge?) and the data"
        )
    return float(acc[0])


def noise_error_increase(
    obj: Objective,
    sigma: float,
    *,
    samples: int = 16,
    seed: int = 0,
    magnitude_aware: bool = False,
    eps: float = 1e-3,
    chunk: int = 16,
) -> float:
    """Mean training-error increase ``(1/S) Σ_i err(θ0 + u_i) − err(θ0)`` under noise.

    ``u_i = σ z_i`` (plain) or ``u_i = √(σ²θ0² + ε²) ⊙ z_i`` (magnitude-aware),
    ``z_i ~ N(0, I)`` drawn from ``(seed, i)``: the same ``z_i`` at every σ
    (common random numbers), so for a linear classifier that fits its data the
    estimate is non-decreasing in σ. ``err = 1 − accuracy`` from
    :meth:`Objective.evaluate`. Results do not depend on ``chunk``.
    """
    sigma = check_positive("sigma", sigma)
    samples = _count("samples", samples)
    chunk = _count("chunk", chunk)
    seed = check_int("seed", seed, minimum=0)
    eps = check_positive("eps", eps)
    _check_reach(obj, "sigma", sigma, _largest_std(obj, sigma, magnitude_aware, eps))
    acc0 = _accuracy0(obj, "the noise error increase")
    if math.isnan(acc0):
        raise BasinscopeError(
            "the training error needs a classifier: outputs [N, classes] and integer labels"
        )
    return _error_increase(obj, sigma, samples, seed, magnitude_aware, eps, chunk) - (1 - acc0)


def _largest_std(obj: Objective, sigma: float, magnitude_aware: bool, eps: float) -> float:
    """A bound on ``|u_i|`` of the noise at σ (see :func:`noise_error_increase`)."""
    if magnitude_aware:
        top = float(obj.theta0.abs().max().to(torch.float64)) if obj.n else 0.0
        return math.sqrt((sigma * top) ** 2 + eps**2) * GAUSSIAN_REACH
    return sigma * GAUSSIAN_REACH


def _error_increase(
    obj: Objective,
    sigma: float,
    samples: int,
    seed: int,
    magnitude_aware: bool,
    eps: float,
    chunk: int,
) -> float:
    """Mean error ``(1/S) Σ_i err(θ0 + u_i)`` (see :func:`noise_error_increase`)."""
    theta0 = obj.theta0
    if magnitude_aware:
        std = torch.sqrt(sigma**2 * theta0.to(torch.float64) ** 2 + eps**2).to(theta0)
    else:
        std = torch.full_like(theta0, sigma)
    total = 0.0
    for start in range(0, samples, chunk):
        z = _gaussian_rows(obj, seed, range(start, min(start + chunk, samples)))
        _, acc = obj.evaluate(theta0 + std * z, split="points")
        total += float((1 - acc).sum())
    return total / samples


# Over 80 lines because of its docstring (both bound formulas and the resume rule);
# the search and the bound are _search and _bound.
def pac_bayes(
    obj: Objective,
    *,
    target: float = 0.1,
    magnitude_aware: bool = False,
    eps: float = 1e-3,
    samples: int = 16,
    seed: int = 0,
    tol: float = 1e-2,
    sigma_min: float = 1e-6,
    sigma_max: float = 10.0,
    chunk: int = 16,
    progress: bool = False,
    path: str | Path | None = None,
) -> PacBayes:
    """PAC-Bayes sharpness of Jiang et al. (2019, "Fantastic generalization measures
    and where to find them", §C "sharpness-based measures").

    σ' is the largest σ such that Gaussian weight noise raises the training
    error ``err = 1 − acc`` by at most ``target``,
    ``E_u[err(θ0 + u)] − err(θ0) ≤ target``, with ``u ~ N(0, σ²I)`` (plain) or
    ``u_i ~ N(0, σ²θ0_i² + ε²)`` (magnitude-aware). The expectation is a
    Monte-Carlo mean over ``samples`` draws ``z_i`` that are the same at every σ
    (common random numbers; see :func:`noise_error_increase`), and σ' is found
    by bisection on ``log σ`` in ``[sigma_min, sigma_max]`` until the bracket's
    ratio is below ``1 + tol``; the lower end (a σ known to pass) is returned.

    The bound term, with ``w = θ0`` over the Objective's space (Jiang et al.
    measure weights only: use ``ParamSpace(skip_bias_norm=True)``), ``ω = n``
    its dimension and ``m`` the number of training examples:

    * plain ("pacbayes.orig"): ``‖w‖₂²/(4σ'²) + log(m/σ') + 10``;
    * magnitude-aware ("pacbayes.mag.orig"):
      ``¼ Σ_i log((ε² + (σ'² + 1)‖w‖₂²/ω) / (ε² + σ'²w_i²)) + log(m/σ') + 10``.

    Jiang et al. take the reference point ``w0`` as the origin for "orig" (as
    here) and as the initialisation for "init". No √(·/m) normalisation is
    applied.

    Args:
        obj: a classifier's Objective on its training data.
        target: allowed error increase, in (0, 1) (Jiang et al.: 0.1).
        magnitude_aware: use the noise ``σ²w² + ε²``.
        eps: ε > 0 of the magnitude-aware noise (Jiang et al.: 1e-3).
        samples: Monte-Carlo draws per σ.
        seed: draw ``i`` comes from ``(seed, i)``.
        tol: relative width of the final bracket on σ, > 0.
        sigma_min, sigma_max: the search interval, ``0 < sigma_min < sigma_max``.
        chunk: draws evaluated together (results do not depend on it).
        progress: show a progress bar over the bisection.
        path: a JSON file of partial results (:mod:`basinscope._partial`): the
            Monte-Carlo mean error at each σ tried is stored as it finishes
            (keyed by ``float.hex(σ)``), and a rerun replays the bisection from
            them, evaluating only the σ it has not seen: the same σ sequence and
            result, bit for bit. The bisection is sequential (each σ depends on
            the previous answers), so the unit of work is one σ (``samples``
            evaluations), not one draw. Keyed by the Objective's fingerprint,
            ``magnitude_aware``, ``eps``, ``samples`` and ``seed`` (not ``target``,
            ``tol`` or the interval: another search reuses the σ it shares).
    """
    if isinstance(target, bool) or not isinstance(target, numbers.Real) or not 0 < target < 1:
        raise BasinscopeError(f"target must be an error increase in (0, 1), got {target!r}")
    eps = check_positive("eps", eps)
    samples = _count("samples", samples)
    chunk = _count("chunk", chunk)
    tol = check_positive("tol", tol)
    seed = check_int("seed", seed, minimum=0)
    lo, hi = check_positive("sigma_min", sigma_min), check_positive("sigma_max", sigma_max)
    if not lo < hi:
        raise BasinscopeError(f"sigma_min ({lo}) must be smaller than sigma_max ({hi})")
    _check_reach(obj, "sigma_max", hi, _largest_std(obj, hi, magnitude_aware, eps))
    acc0 = _accuracy0(obj, "its PAC-Bayes sharpness")
    if math.isnan(acc0):
        raise BasinscopeError(
            "pac_bayes needs a classifier (outputs [N, classes] and integer labels) "
            "to measure the training error"
        )
    error0 = 1.0 - acc0
    sigmas: list[float] = []
    increases: list[float] = []
    settings = dict(magnitude_aware=bool(magnitude_aware), eps=eps, samples=samples, seed=seed)
    key = {**obj.fingerprint(), **settings} if path is not None else {}

    def increase(sigma: float) -> float:
        name = float(sigma).hex()
        if name in done:
            mean = float(done.get(name))
        else:
            mean = _error_increase(obj, sigma, samples, seed, magnitude_aware, eps, chunk)
            done.update({name: mean})
        sigmas.append(sigma)
        increases.append(mean - error0)
        bar.update(1)
        return increases[-1]

    total = 2 + math.ceil(math.log2(max(math.log(hi / lo) / math.log1p(tol), 1.0)))
    with (
        open_partial(path, key, what="PAC-Bayes noise evaluations", dist=obj.dist) as done,
        tqdm(
            total=total,
            disable=not (progress and _dist.is_writer(obj.dist)),
            desc="σ search",
            unit="σ",
        ) as bar,
    ):
        sigma, inc, bracketed = _search(increase, lo, hi, target, tol)
    bound, w2 = _bound(obj, sigma, magnitude_aware, eps)
    m = obj.n_examples
    return PacBayes(
        sigma=float(sigma),
        bound=float(bound),
        flatness=1.0 / sigma**2,
        increase=float(inc),
        error0=error0,
        target=float(target),
        magnitude_aware=bool(magnitude_aware),
        eps=eps,
        samples=samples,
        seed=int(seed),
        n_examples=m,
        weight_norm2=w2,
        bracketed=bracketed,
        sigmas=tuple(sigmas),
        increases=tuple(increases),
        evaluations=len(sigmas) * samples,
    )


def _search(
    increase: Callable[[float], float], lo: float, hi: float, target: float, tol: float
) -> tuple[float, float, bool]:
    """``(σ', its error increase, bracketed)``: bisection on ``log σ`` in ``[lo, hi]`` until
    the bracket's ratio is below ``1 + tol``, returning the lower end (a σ known to pass);
    an end of the interval, not bracketed, when the crossing lies outside it."""
    if (inc := increase(hi)) <= target:
        return hi, inc, False
    if (inc := increase(lo)) > target:
        return lo, inc, False
    while hi / lo > 1 + tol:
        mid = math.sqrt(lo * hi)
        value = increase(mid)
        if value <= target:
            lo, inc = mid, value
        else:
            hi = mid
    return lo, inc, True


def _bound(obj: Objective, sigma: float, magnitude_aware: bool, eps: float) -> tuple[float, float]:
    """``(the PAC-Bayes bound term at σ', ‖θ0‖₂²)`` (the formulas of :func:`pac_bayes`)."""
    w = obj.theta0.to(torch.float64)
    w2 = float(w @ w)
    m = obj.n_examples
    if magnitude_aware:
        num = eps**2 + (sigma**2 + 1) * w2 / obj.n
        den = eps**2 + sigma**2 * w**2
        bound = 0.25 * float(torch.log(num / den).sum()) + math.log(m / sigma) + 10
    else:
        bound = w2 / (4 * sigma**2) + math.log(m / sigma) + 10
    return bound, w2
