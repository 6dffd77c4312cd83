"""Sharpness of a minimum: how much the loss rises when the weights move.

Measures, each a pure function of an :class:`~basinscope.Objective` returning a
frozen result (``to_dict()`` gives its JSON-ready scalars):

* **ε-sharpness in a slice** — the seed tool's ``max_{‖c‖≤ε} L(θ0 + Σ c_j d_j) − L(θ0)``
  over the coefficients ``c`` of the surface directions (Keskar et al. 2017
  define the same quantity over a box in the full space). It is read off a
  computed :class:`~basinscope.Surface` (:func:`from_surface`, grid points with
  ``‖c‖₂ ≤ ε``) or computed directly (:func:`epsilon`, a dense polar grid of
  the disk, or of the segment for one direction).
* **Average-case sharpness** (:func:`average_case`) — the expected loss
  increase under Gaussian weight noise,
  ``E_z[L(θ0 + σ z)] − L(θ0)``, ``z ~ N(0, I)``, estimated from S samples with
  its standard error ``std(ΔL)/√S``. For ``L = ½θᵀAθ`` at ``θ0 = 0`` the
  expectation is ``½σ²·tr(A)``. Sample ``i`` is drawn from ``(seed, i)`` alone.
  With ``adaptive=True`` the noise is ``σ·|θ0| ⊙ z`` (scale-invariant; Kwon et
  al. 2021).
* **Worst-case sharpness** (:func:`worst_case`) — ``max_{‖δ‖≤ρ} L(θ0 + δ) − L(θ0)``
  in the L2 or L∞ ball, optionally adaptive (``δ = (|θ0| + η) ⊙ u``, ``‖u‖ ≤ ρ``;
  Kwon et al. 2021) and per batch of ``m`` examples (m-sharpness; Foret et al.
  2021, Andriushchenko et al. 2023), by projected gradient ascent. For
  ``L = ½θᵀAθ`` at ``θ0 = 0`` the L2 value is ``½ρ²·λ_max(A)``.
* **Keskar ε-sharpness** (:func:`keskar`) — Keskar et al. (2017)'s
  ``φ = 100·(max_{y∈C_ε} L(θ0 + Ay) − L(θ0)) / (1 + L(θ0))`` over a box, in the
  full space or a random subspace, by L-BFGS-B.
* **PAC-Bayes flatness** (:func:`pac_bayes`) — the largest Gaussian weight-noise
  scale σ that raises the training error by at most a target, and the
  PAC-Bayes bound term built on it (Jiang et al. 2019, "Fantastic
  generalization measures and where to find them").
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.optimize import Bounds, minimize
from torch import Tensor
from tqdm.auto import tqdm

from ._checks import check_int, check_number
from ._partial import open_partial
from ._rng import item_generator
from .errors import BasinscopeError
from .objective import Objective
from .surface import Surface
from .volume import finite_loss0

COARSE_POINTS = 8
"""Fewer grid points than this (besides the origin) within ε make a grid ε-sharpness coarse."""


@dataclass(frozen=True)
class EpsilonSharpness:
    """``value = max_loss − loss0`` over coefficients ``‖c‖₂ ≤ radius``.

    Attributes:
        value: the sharpness.
        loss0: ``L(θ0)``.
        max_loss: the largest loss found in the ball.
        argmax: the coefficients where it was found.
        radius: ε, in units of the (normalised) directions.
        n_points: how many points were examined.
        coarse: read off a grid with fewer than :data:`COARSE_POINTS` points
            besides the origin within ε (:func:`from_surface`): the value is
            then mostly rounding noise and should not be ranked.
    """

    value: float
    loss0: float
    max_loss: float
    argmax: tuple[float, ...]
    radius: float
    n_points: int
    coarse: bool = False


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


def _check_radius(radius: float) -> float:
    return check_number("the radius", radius, positive=True)


def from_surface(
    surface: Surface, radius: float, key: str = "train_loss", *, warn: bool = True
) -> EpsilonSharpness:
    """ε-sharpness read off a computed surface: max over grid points with ``‖c‖₂ ≤ ε``.

    ``L(θ0)`` is the loss stored with the surface at the origin (or the grid
    point at the origin). Points not yet computed are ignored; NaN losses
    (diverged points) count as +∞.

    When fewer than :data:`COARSE_POINTS` computed grid points other than the
    origin lie within ε (a 5×5 grid on ``[−1, 1]²`` with ε = 0.25 has none),
    the "maximum" is the origin's own loss minus itself, i.e. rounding noise
    (``±1e-8``, of either sign): the result is marked ``coarse=True`` and,
    unless ``warn=False`` (for callers that record ``coarse`` themselves), a
    ``RuntimeWarning`` says to use a finer grid or :func:`epsilon`.
    """
    radius = _check_radius(radius)
    values = surface.metric(key)
    coords = [surface.xcoordinates] + ([surface.ycoordinates] if surface.is_2d else [])
    mesh = np.stack(np.meshgrid(*coords, indexing="ij"), axis=-1)
    inside = np.linalg.norm(mesh, axis=-1) <= radius * (1 + 1e-12)
    if surface.computed is not None:
        inside &= surface.computed
    if not inside.any():
        raise BasinscopeError(f"no computed grid point lies within radius {radius} of the origin")
    loss0 = surface.attrs.get(f"origin_{key}")
    if loss0 is None:
        at_origin = np.linalg.norm(mesh, axis=-1) == 0
        if not at_origin.any():
            raise BasinscopeError("the surface has no point at the origin to compare against")
        loss0 = float(values[at_origin][0])
    if not math.isfinite(loss0):
        raise BasinscopeError(
            f"the surface's loss at the origin is {loss0} (not finite), so its ε-sharpness "
            "is undefined; check the model (did training diverge?) and the data"
        )
    off_origin = int((inside & (np.linalg.norm(mesh, axis=-1) > 0)).sum())
    coarse = off_origin < COARSE_POINTS
    if coarse and warn:
        import warnings

        warnings.warn(
            f"only {off_origin} grid point(s) besides the origin lie within ε = {radius:g}, "
            "so the ε-sharpness read off this surface is rounding noise; use a finer grid "
            "(more steps or a smaller span) or sharpness.epsilon",
            RuntimeWarning,
            stacklevel=2,
        )
    vals = np.where(np.isnan(values), np.inf, values)
    vals = np.where(inside, vals, -np.inf)
    flat = int(np.argmax(vals))
    pos = np.unravel_index(flat, vals.shape)
    return EpsilonSharpness(
        value=float(vals[pos] - loss0),
        loss0=float(loss0),
        max_loss=float(vals[pos]),
        argmax=tuple(float(v) for v in mesh[pos]),
        radius=radius,
        n_points=int(inside.sum()),
        coarse=coarse,
    )


def epsilon(
    obj: Objective,
    directions: Tensor,
    radius: float,
    *,
    n_radii: int = 16,
    n_angles: int = 256,
) -> EpsilonSharpness:
    """ε-sharpness computed directly in the span of one or two directions.

    One direction: the segment ``c ∈ [−ε, ε]`` on ``2·n_radii + 1`` points.
    Two: the disk ``‖c‖₂ ≤ ε`` on a polar grid of ``n_radii`` circles (the last
    the boundary) × ``n_angles`` angles. On a quadratic ``½θᵀAθ`` the maximum is
    on the boundary and equals ``½ε²·λ_max(DᵀAD)`` (D the directions as columns),
    reached to ``O((π/n_angles)²)`` relative accuracy.
    """
    radius = _check_radius(radius)
    n_radii = check_int("n_radii", n_radii, minimum=1)
    n_angles = check_int("n_angles", n_angles, minimum=1)
    d = _check_directions(obj, directions)
    if len(d) == 1:
        coef = torch.linspace(-radius, radius, 2 * n_radii + 1, dtype=torch.float64)[:, None]
    elif len(d) == 2:
        r = torch.linspace(0, radius, n_radii + 1, dtype=torch.float64)[1:]
        a = torch.arange(n_angles, dtype=torch.float64) * (2 * torch.pi / n_angles)
        rr, aa = torch.meshgrid(r, a, indexing="ij")
        coef = torch.stack([rr * torch.cos(aa), rr * torch.sin(aa)], -1).reshape(-1, 2)
    else:
        raise BasinscopeError(f"ε-sharpness takes 1 or 2 directions, got {len(d)}")
    loss0 = finite_loss0(obj, "its ε-sharpness")
    losses, _ = obj.evaluate_affine(coef, d)
    losses = torch.where(torch.isnan(losses), torch.inf, losses)
    k = int(torch.argmax(losses))
    return EpsilonSharpness(
        value=float(losses[k]) - loss0,
        loss0=loss0,
        max_loss=float(losses[k]),
        argmax=tuple(float(v) for v in coef[k]),
        radius=radius,
        n_points=len(coef),
    )


def _check_directions(obj: Objective, directions: Any) -> Tensor:
    """``directions`` as a ``[k, n]`` tensor of finite numbers (one direction may be ``[n]``)."""
    try:
        d = torch.as_tensor(directions)
    except (TypeError, ValueError, RuntimeError):
        raise BasinscopeError(
            f"directions must be a tensor of shape (k, {obj.n}), got {type(directions).__name__}"
        ) from None
    d = d.reshape(1, -1) if d.ndim == 1 else d
    if d.ndim != 2 or d.shape[1] != obj.n:
        raise BasinscopeError(
            f"directions must have shape (k, {obj.n}) or ({obj.n},), got {tuple(d.shape)}"
        )
    if not d.is_floating_point() or not bool(torch.isfinite(d).all()):
        raise BasinscopeError(
            "every direction must hold finite floating-point numbers "
            f"(got {d.dtype}, {int((~torch.isfinite(d.double())).sum())} entries NaN or inf)"
        )
    return d


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
    settings = {"sigma": sigma, "seed": seed, "adaptive": bool(adaptive)}
    key = {**obj.fingerprint(), **settings} if path is not None else {}
    with open_partial(path, key, what="average-case noise samples") as done:
        todo = done.missing(range(samples))
        with tqdm(total=samples, disable=not progress, desc="noise", unit="sample") as bar:
            bar.update(samples - len(todo))
            for start in range(0, len(todo), chunk):
                idx = todo[start : start + chunk]
                z = _gaussian_rows(obj, seed, idx)
                losses, _ = obj.evaluate(obj.theta0 + sigma * scale * z)
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


# ------------------------------------------------------------------ helpers
def _positive(name: str, value: float) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise BasinscopeError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)


def _count(name: str, value: int, low: int = 1, high: int | None = None) -> int:
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= low
    if ok and high is not None:
        ok = value <= high
    if not ok:
        span = f"an integer ≥ {low}" if high is None else f"an integer in [{low}, {high}]"
        raise BasinscopeError(f"{name} must be {span}, got {value!r}")
    return int(value)


def _no_vectors(result: Any) -> dict[str, Any]:
    """The fields of a result dataclass without its tensors and arrays (JSON-ready)."""
    return {
        f.name: getattr(result, f.name)
        for f in fields(result)
        if not isinstance(getattr(result, f.name), Tensor | np.ndarray)
    }


# ------------------------------------------------------------- worst case
NORMS = ("l2", "linf")
"""Balls accepted by :func:`worst_case`."""


@dataclass(frozen=True)
class WorstCase:
    """Worst-case (adversarial) sharpness ``max_{‖u‖≤ρ} L(θ0 + T⊙u) − L(θ0)``.

    Attributes:
        value: the largest loss increase found (the mean over batches for
            m-sharpness, weighted by batch size). A lower bound on the true
            maximum, since the ascent is local.
        loss0: ``L(θ0)``.
        max_loss: ``loss0 + value``; without ``m``, the loss at ``θ0 + delta``
            evaluated exactly over the whole data.
        delta: ``[n]`` the best perturbation ``δ = T⊙u`` in parameter space
            (``None`` with ``m``: each batch has its own).
        delta_norm: ``‖u‖`` in the ball's norm (``≤ radius``; for the plain
            ball ``u = δ``); the mean over batches with ``m``.
        delta_l2: ``‖δ‖₂`` in parameter space (mean over batches with ``m``).
        radius, norm, adaptive, eta: the ball (see :func:`worst_case`).
        steps, restarts, seed, m: the search settings.
        n_batches: batches of ``m`` examples (1 without ``m``).
        evaluations: exact loss evaluations (each over one batch, or all data).
        gradients: gradient evaluations.
        restart_values: the best increase of each restart (without ``m``).
        batch_values: the increase of each batch (one entry without ``m``).
    """

    value: float
    loss0: float
    max_loss: float
    delta: Tensor | None
    delta_norm: float
    delta_l2: float
    radius: float
    norm: str
    adaptive: bool
    eta: float
    steps: int
    restarts: int
    seed: int
    m: int | None
    n_batches: int
    evaluations: int
    gradients: int
    restart_values: tuple[float, ...]
    batch_values: tuple[float, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (without ``delta``)."""
        return _no_vectors(self)


@dataclass
class _Ascent:
    """The result of the ascent on one batch."""

    u: Tensor
    loss: float
    loss0: float
    restart_values: list[float] = field(default_factory=list)
    evaluations: int = 0
    gradients: int = 0


def _ascend(
    obj: Objective,
    radius: float,
    norm: str,
    scale: Tensor,
    steps: int,
    restarts: int,
    seed: int,
    batch: int,
    loss0: float | None = None,
) -> _Ascent:
    """Projected gradient ascent on ``F(u) = L(θ0 + scale⊙u)`` over ``‖u‖ ≤ radius``.

    Steps go along the steepest-ascent direction of the ball's norm (``∇F/‖∇F‖₂``
    for L2, ``sign(∇F)`` for L∞) with step size ``s``, starting at ``2ρ`` as in
    APGD (Croce & Hein 2020); a step is kept only when it raises ``F`` (every
    candidate is evaluated exactly), otherwise ``s`` is halved and the search
    stays at the best point. Momentum is left out: the ascent is then monotone,
    and its first step from ``u = 0`` is SAM's ascent step.
    """
    theta0 = obj.theta0
    loss0 = finite_loss0(obj, "its worst-case sharpness") if loss0 is None else loss0
    out = _Ascent(u=torch.zeros_like(theta0), loss=-math.inf, loss0=loss0, evaluations=1)

    def value(u: Tensor) -> float:
        out.evaluations += 1
        v = float(obj.evaluate(theta0 + scale * u)[0][0])
        return math.inf if math.isnan(v) else v  # a diverged point is as sharp as it gets

    def grad(u: Tensor) -> Tensor:
        out.gradients += 1
        return scale * obj.grad(theta0 + scale * u)

    def direction(g: Tensor) -> Tensor | None:
        if norm == "l2":
            size = g.norm()
            return g / size if size > 0 and torch.isfinite(size) else None
        d = torch.sign(g)
        return d if bool(d.any()) and bool(torch.isfinite(g).all()) else None

    def project(u: Tensor) -> Tensor:
        if norm == "l2":
            size = u.norm()
            return u * (radius / size) if size > radius else u
        return u.clamp(-radius, radius)

    for r in range(restarts):
        if r == 0:
            u, f = torch.zeros_like(theta0), -math.inf  # θ0 itself is not a candidate
        else:
            g = item_generator(seed, (batch << 32) + r)
            if norm == "l2":  # uniform in the ball
                z = torch.randn(obj.n, generator=g, dtype=torch.float32).to(theta0)
                rad = radius * float(torch.rand((), generator=g)) ** (1.0 / obj.n)
                u = z * (rad / z.norm().clamp_min(1e-30))
            else:
                u = ((2 * torch.rand(obj.n, generator=g, dtype=torch.float32) - 1) * radius).to(
                    theta0
                )
            f = value(u)
        step = 2 * radius
        d = direction(grad(u)) if math.isfinite(f) or r == 0 else None
        for k in range(steps):
            if d is None:
                break
            cand = project(u + step * d)
            fc = value(cand)
            if fc > f:
                u, f = cand, fc
                if not math.isfinite(f):
                    break
                if k < steps - 1:
                    d = direction(grad(u))
            else:
                step /= 2
        out.restart_values.append(f - loss0 if f > -math.inf else math.nan)  # nan: no step
        if f > out.loss:
            out.u, out.loss = u, f
    if out.loss == -math.inf:  # no step could be taken (zero gradient at θ0, one restart)
        out.loss = loss0
    return out


def worst_case(
    obj: Objective,
    radius: float,
    *,
    norm: str = "l2",
    adaptive: bool = False,
    eta: float = 0.0,
    steps: int = 20,
    restarts: int = 2,
    seed: int = 0,
    m: int | None = None,
    progress: bool = False,
) -> WorstCase:
    """Worst-case sharpness: the largest loss increase in a ball around θ0.

    ``S = max_{‖u‖_p ≤ ρ} L(θ0 + T⊙u) − L(θ0)`` with ``p ∈ {2, ∞}`` and ``T = 1``
    (plain) or ``T = |θ0| + η`` elementwise (adaptive, Kwon et al. 2021 "ASAM":
    invariant to rescalings of the weights that leave the network's function
    unchanged when ``η = 0``). Andriushchenko et al. (2023, "A modern look at the
    relationship between sharpness and generalization") measure exactly this,
    by APGD-style ascent, which is done here: ``steps`` projected ascent steps
    from each of ``restarts`` starting points, the step size (initially ``2ρ``)
    halved whenever a step does not raise the loss; every candidate is evaluated
    exactly and the best one is kept. Restart 0 starts at ``u = 0``, so its first
    step is SAM's ascent step (Foret et al. 2021), ``δ = ρ·T²g/‖Tg‖₂`` for L2 and
    ``ρ·T⊙sign(g)`` for L∞ (``g = ∇L(θ0)``): ``steps=1, restarts=1`` returns SAM's
    perturbation. Restart ``r ≥ 1`` starts at a point drawn uniformly in the
    ball from ``(seed, r)`` (with ``m``, ``(seed, 2³²·b + r)`` for batch ``b``).

    m-sharpness (Foret et al. 2021; Andriushchenko et al. 2023): with ``m`` the
    data are split, in order, into consecutive batches of ``m`` examples (the
    last may be smaller), the worst case is found for each batch's own loss,
    and ``value`` is their mean weighted by batch size.

    For ``L = ½θᵀAθ`` at ``θ0 = 0`` (L2, plain): ``S = ½ρ²·λ_max(A)``; the L∞
    maximiser of a convex loss is a vertex of the box.

    Args:
        obj: the Objective (never modified).
        radius: ρ > 0 (relative to ``|θ0|`` when adaptive).
        norm: ``"l2"`` or ``"linf"``.
        adaptive: scale the ball elementwise by ``T = |θ0| + η``.
        eta: η ≥ 0; the default 0 keeps exact scale invariance but leaves
            coordinates with ``θ0_i = 0`` unperturbed (Kwon et al. use 0.01).
        steps: ascent steps per restart (gradient evaluations, less the last).
        restarts: starting points (≥ 1); a zero gradient at θ0 (an exact
            critical point) needs ``restarts ≥ 2`` to move at all.
        seed: the random starting points' seed.
        m: examples per batch for m-sharpness (default: all data, one batch).
        progress: show a progress bar over batches.

    Returns:
        A :class:`WorstCase`.
    """
    radius = _positive("the radius", radius)
    if norm not in NORMS:
        raise BasinscopeError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")
    if isinstance(eta, bool) or not isinstance(eta, numbers.Real) or not 0 <= eta < math.inf:
        raise BasinscopeError(f"eta must be a finite number ≥ 0, got {eta!r}")
    steps = _count("steps", steps)
    restarts = _count("restarts", restarts)
    seed = check_int("seed", seed, minimum=0)
    n_examples = obj.n_examples
    if m is not None:
        m = _count("m", m, 1, n_examples)
    loss0 = finite_loss0(obj, "its worst-case sharpness")
    scale = obj.theta0.abs() + eta if adaptive else torch.ones_like(obj.theta0)
    size = n_examples if m is None else m
    starts = list(range(0, n_examples, size))
    results: list[_Ascent] = []
    weights = []
    for b, s in enumerate(tqdm(starts, disable=not progress, desc="batches", unit="batch")):
        part = obj if m is None else obj.with_data((obj.x[s : s + size], obj.y[s : s + size]))
        known = loss0 if m is None else None  # each batch of m examples has its own L(θ0)
        results.append(_ascend(part, radius, norm, scale, steps, restarts, seed, b, known))
        weights.append(len(part.x) / n_examples)
    values = [r.loss - r.loss0 for r in results]
    ord_ = 2 if norm == "l2" else math.inf
    u_norms = [float(torch.linalg.vector_norm(r.u, ord=ord_)) for r in results]
    l2s = [float((scale * r.u).norm()) for r in results]
    mean = lambda xs: float(sum(w * x for w, x in zip(weights, xs, strict=True)))  # noqa: E731
    value = mean(values)
    loss0 = mean([r.loss0 for r in results])
    return WorstCase(
        value=value,
        loss0=loss0,
        max_loss=loss0 + value if m is not None else results[0].loss,
        delta=(scale * results[0].u).clone() if m is None else None,
        delta_norm=mean(u_norms),
        delta_l2=mean(l2s),
        radius=radius,
        norm=norm,
        adaptive=bool(adaptive),
        eta=float(eta),
        steps=steps,
        restarts=restarts,
        seed=int(seed),
        m=m,
        n_batches=len(results),
        evaluations=sum(r.evaluations for r in results),
        gradients=sum(r.gradients for r in results),
        restart_values=tuple(results[0].restart_values) if m is None else (),
        batch_values=tuple(values),
    )


# ----------------------------------------------------------------- Keskar
@dataclass(frozen=True)
class KeskarSharpness:
    """Keskar et al. (2017) ε-sharpness ``φ = 100·(max_{y∈C_ε} L(θ0+Ay) − L(θ0)) / (1 + L(θ0))``.

    Attributes:
        value: φ (a lower bound on the true box maximum: L-BFGS-B is local).
        loss0: ``L(θ0)``.
        max_loss: the largest loss found, ``L(θ0 + A y)``.
        y: ``[p]`` the maximiser in the box's coordinates (float64).
        half_width: ``[p]`` the box ``|y_i| ≤ ε(|(A⁺θ0)_i| + 1)``.
        delta_l2: ``‖A y‖₂``, the perturbation's length in parameter space.
        at_bound: fraction of the coordinates of ``y`` on the box's faces.
        epsilon: ε.
        subspace_dim: p for a random subspace, ``None`` for the full space.
        seed: the subspace's seed.
        maxiter: the L-BFGS-B iteration budget.
        iterations, evaluations: used by L-BFGS-B (each evaluation is a loss
            and a gradient over the whole data).
        message: L-BFGS-B's stopping message.
    """

    value: float
    loss0: float
    max_loss: float
    y: np.ndarray
    half_width: np.ndarray
    delta_l2: float
    at_bound: float
    epsilon: float
    subspace_dim: int | None
    seed: int
    maxiter: int
    iterations: int
    evaluations: int
    message: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (without ``y`` and ``half_width``)."""
        return _no_vectors(self)


def _subspace(obj: Objective, p: int, seed: int) -> Tensor:
    """``A``, ``[n, p]`` float64, column ``j`` ~ N(0, I) drawn from ``(seed, j)``."""
    cols = [
        torch.randn(obj.n, generator=item_generator(seed, j), dtype=torch.float32) for j in range(p)
    ]
    return torch.stack(cols, dim=1).to(device=obj.device, dtype=torch.float64)


def keskar(
    obj: Objective,
    epsilon: float = 1e-3,
    *,
    subspace_dim: int | None = None,
    seed: int = 0,
    maxiter: int = 10,
) -> KeskarSharpness:
    """ε-sharpness of Keskar et al. (2017, "On large-batch training for deep
    learning: generalization gap and sharp minima", Metric 2.1).

    ``φ = 100 · (max_{y ∈ C_ε} L(θ0 + A y) − L(θ0)) / (1 + L(θ0))`` over the box
    ``C_ε = {y ∈ R^p : |y_i| ≤ ε(|(A⁺θ0)_i| + 1)}``, in the full space (``A = I``,
    ``p = n``, the box ``|δ_i| ≤ ε(|θ0_i| + 1)``) or a random p-dimensional
    subspace: ``A`` is ``n × p`` with i.i.d. N(0, 1) entries (column ``j`` drawn
    from ``(seed, j)``) and ``A⁺θ0`` is the least-squares solution
    ``argmin_y ‖Ay − θ0‖₂`` from the QR factorisation of ``A`` (never forming
    ``A⁺``; memory ``n·p`` float64 numbers).

    The maximum is sought as Keskar et al. do, by ``scipy.optimize.minimize(
    method="L-BFGS-B")`` on ``−L(θ0 + Ay)`` from ``y = 0`` with the box as
    bounds and the exact gradient ``−Aᵀ∇L`` (float64 for scipy). On a convex
    loss the maximiser is a vertex of the box: for ``L = ½‖θ‖²`` it is
    ``y_i = sign(θ0_i)·ε(|θ0_i| + 1)``.

    Args:
        obj: the Objective.
        epsilon: ε > 0 (Keskar et al. report 1e-3 and 5e-4).
        subspace_dim: p in ``[1, n]``, or ``None`` for the full space.
        seed: the subspace's seed.
        maxiter: L-BFGS-B iterations (≥ 1).
    """
    epsilon = _positive("epsilon", epsilon)
    maxiter = _count("maxiter", maxiter)
    seed = check_int("seed", seed, minimum=0)
    if subspace_dim is not None:
        subspace_dim = _count("subspace_dim", subspace_dim, 1, obj.n)
    loss0 = finite_loss0(obj, "its Keskar sharpness")
    theta0 = obj.theta0
    theta64 = theta0.to(torch.float64)
    if subspace_dim is None:
        A = None
        center = theta64
    else:
        A = _subspace(obj, subspace_dim, seed)
        Q, R = torch.linalg.qr(A)
        center = torch.linalg.solve_triangular(R, (Q.T @ theta64)[:, None], upper=True)[:, 0]
        del Q, R
    half = (epsilon * (center.abs() + 1)).cpu().numpy()
    best = {"loss": -math.inf, "y": np.zeros_like(half)}
    count = {"evaluations": 0}

    def negative(y: np.ndarray) -> tuple[float, np.ndarray]:
        yt = torch.from_numpy(y).to(device=obj.device, dtype=torch.float64)
        delta = yt if A is None else A @ yt
        point = (theta64 + delta).to(theta0.dtype)
        loss = float(obj.evaluate(point)[0][0])
        g = obj.grad(point).to(torch.float64)
        gy = g if A is None else A.T @ g
        count["evaluations"] += 1
        if loss > best["loss"]:
            best["loss"], best["y"] = loss, y.copy()
        return -loss, -gy.cpu().numpy()

    res = minimize(
        negative,
        np.zeros_like(half),
        jac=True,
        method="L-BFGS-B",
        bounds=Bounds(-half, half),
        options={"maxiter": maxiter},
    )
    y, max_loss = best["y"], best["loss"]
    yt = torch.from_numpy(y).to(device=obj.device, dtype=torch.float64)
    delta = yt if A is None else A @ yt
    return KeskarSharpness(
        value=100.0 * (max_loss - loss0) / (1.0 + loss0),
        loss0=loss0,
        max_loss=max_loss,
        y=y,
        half_width=half,
        delta_l2=float(delta.norm()),
        at_bound=float(np.mean(np.isclose(np.abs(y), half, rtol=1e-9, atol=0.0))),
        epsilon=epsilon,
        subspace_dim=subspace_dim,
        seed=int(seed),
        maxiter=maxiter,
        iterations=int(res.nit),
        evaluations=count["evaluations"],
        message=str(res.message),
    )


# -------------------------------------------------------------- PAC-Bayes
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
    loss, acc = obj.evaluate(obj.theta0)
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
    sigma = _positive("sigma", sigma)
    samples = _count("samples", samples)
    chunk = _count("chunk", chunk)
    seed = check_int("seed", seed, minimum=0)
    eps = _positive("eps", eps)
    acc0 = _accuracy0(obj, "the noise error increase")
    if math.isnan(acc0):
        raise BasinscopeError(
            "the training error needs a classifier: outputs [N, classes] and integer labels"
        )
    return _error_increase(obj, sigma, samples, seed, magnitude_aware, eps, chunk) - (1 - acc0)


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
        _, acc = obj.evaluate(theta0 + std * z)
        total += float((1 - acc).sum())
    return total / samples


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
    eps = _positive("eps", eps)
    samples = _count("samples", samples)
    chunk = _count("chunk", chunk)
    tol = _positive("tol", tol)
    seed = check_int("seed", seed, minimum=0)
    lo, hi = _positive("sigma_min", sigma_min), _positive("sigma_max", sigma_max)
    if not lo < hi:
        raise BasinscopeError(f"sigma_min ({lo}) must be smaller than sigma_max ({hi})")
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
        open_partial(path, key, what="PAC-Bayes noise evaluations") as done,
        tqdm(total=total, disable=not progress, desc="σ search", unit="σ") as bar,
    ):
        if increase(hi) <= target:
            sigma, inc, bracketed = hi, increases[-1], False
        elif increase(lo) > target:
            sigma, inc, bracketed = lo, increases[-1], False
        else:
            inc = increases[-1]
            while hi / lo > 1 + tol:
                mid = math.sqrt(lo * hi)
                value = increase(mid)
                if value <= target:
                    lo, inc = mid, value
                else:
                    hi = mid
            sigma, bracketed = lo, True
    w = obj.theta0.to(torch.float64)
    w2 = float(w @ w)
    m = obj.n_examples
    if magnitude_aware:
        num = eps**2 + (sigma**2 + 1) * w2 / obj.n
        den = eps**2 + sigma**2 * w**2
        bound = 0.25 * float(torch.log(num / den).sum()) + math.log(m / sigma) + 10
    else:
        bound = w2 / (4 * sigma**2) + math.log(m / sigma) + 10
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
