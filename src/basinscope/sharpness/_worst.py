"""Worst-case (adversarial) sharpness by projected gradient ascent.

**Worst-case sharpness** (:func:`worst_case`) — ``max_{‖δ‖≤ρ} L(θ0 + δ) − L(θ0)``
in the L2 or L∞ ball, optionally adaptive (``δ = (|θ0| + η) ⊙ u``, ``‖u‖ ≤ ρ``;
Kwon et al. 2021) and per batch of ``m`` examples (m-sharpness; Foret et al.
2021, Andriushchenko et al. 2023), by projected gradient ascent (:func:`_restart`).
For ``L = ½θᵀAθ`` at ``θ0 = 0`` the L2 value is ``½ρ²·λ_max(A)``.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .. import _dist
from .._checks import check_int, check_positive
from .._rng import item_generator
from ..errors import BasinscopeError
from ..landscape import finite_loss0
from ..objective import Objective
from ._common import _check_reach, _count, _no_vectors

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


def _random_start(
    obj: Objective, radius: float, norm: str, seed: int, batch: int, r: int
) -> Tensor:
    """Restart ``r``'s starting point, uniform in the ball, from ``(seed, 2³²·batch + r)``."""
    theta0 = obj.theta0
    g = item_generator(seed, (batch << 32) + r)
    if norm == "l2":  # uniform in the ball
        z = torch.randn(obj.n, generator=g, dtype=torch.float32).to(theta0)
        rad = radius * float(torch.rand((), generator=g)) ** (1.0 / obj.n)
        return z * (rad / z.norm().clamp_min(1e-30))
    return ((2 * torch.rand(obj.n, generator=g, dtype=torch.float32) - 1) * radius).to(theta0)


def _restart(
    obj: Objective,
    radius: float,
    norm: str,
    scale: Tensor,
    steps: int,
    seed: int,
    batch: int,
    r: int,
) -> tuple[Tensor, float, int, int]:
    """Restart ``r`` of projected gradient ascent on ``F(u) = L(θ0 + scale⊙u)`` over
    ``‖u‖ ≤ radius``: ``(its best u, F(u) (−inf when no step was taken), evaluations,
    gradients)``; it depends on ``(seed, batch, r)`` alone.

    Steps go along the steepest-ascent direction of the ball's norm (``∇F/‖∇F‖₂``
    for L2, ``sign(∇F)`` for L∞) with step size ``s``, starting at ``2ρ`` as in
    APGD (Croce & Hein 2020); a step is kept only when it raises ``F`` (every
    candidate is evaluated exactly), otherwise ``s`` is halved and the search
    stays at the best point. Momentum is left out: the ascent is then monotone,
    and the first step of restart 0 (from ``u = 0``) is SAM's ascent step.
    """
    theta0 = obj.theta0
    count = [0, 0]  # evaluations, gradients

    def value(u: Tensor) -> float:
        count[0] += 1
        v = float(obj.evaluate(theta0 + scale * u)[0][0])
        return math.inf if math.isnan(v) else v  # a diverged point is as sharp as it gets

    def direction(u: Tensor) -> Tensor | None:
        count[1] += 1
        g = scale * obj.grad(theta0 + scale * u)
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

    if r == 0:
        u, f = torch.zeros_like(theta0), -math.inf  # θ0 itself is not a candidate
    else:
        u = _random_start(obj, radius, norm, seed, batch, r)
        f = value(u)
    step = 2 * radius
    d = direction(u) if math.isfinite(f) or r == 0 else None
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
                d = direction(u)
        else:
            step /= 2
    return u, f, count[0], count[1]


def _best(loss0: float, theta0: Tensor, runs: list[tuple[Tensor, float, int, int]]) -> _Ascent:
    """The ascent of a batch from its restarts' results, in restart order (the first
    of equal bests wins)."""
    out = _Ascent(u=torch.zeros_like(theta0), loss=-math.inf, loss0=loss0, evaluations=1)
    for u, f, evaluations, gradients in runs:
        out.evaluations += evaluations
        out.gradients += gradients
        out.restart_values.append(f - loss0 if f > -math.inf else math.nan)  # nan: no step
        if f > out.loss:
            out.u, out.loss = u.to(theta0), f  # gathered results arrive on the CPU
    if out.loss == -math.inf:  # no step could be taken (zero gradient at θ0, one restart)
        out.loss = loss0
    return out


def _ascents(
    parts: list[tuple[int, Objective, float]],
    radius: float,
    norm: str,
    scale: Tensor,
    steps: int,
    restarts: int,
    seed: int,
    progress: bool,
) -> list[_Ascent]:
    """Every batch's ascent (``parts``: ``(batch index, its Objective, its L(θ0))``).

    The work items are the ``(batch, restart)`` pairs; in a process group each rank
    runs its contiguous share of them alone and the results are gathered in order,
    so every value is the one a single process finds.
    """
    items = [(i, r) for i in range(len(parts)) for r in range(restarts)]
    d = _dist.active(parts[0][1].dist) if parts else None
    mine = items if d is None else items[_dist.share(len(items), d.rank, d.size)]
    shown = progress and _dist.is_writer(d)

    def run() -> list[tuple[Tensor, float, int, int]]:
        return [
            _restart(parts[i][1], radius, norm, scale, steps, seed, parts[i][0], r)
            for i, r in tqdm(mine, disable=not shown, desc="ascents", unit="restart")
        ]

    done = [x for share in _dist.gather(d, run) for x in share]
    theta0 = parts[0][1].theta0 if parts else scale
    return [
        _best(loss0, theta0, done[i * restarts : (i + 1) * restarts])
        for i, (_, _, loss0) in enumerate(parts)
    ]


# Over 80 lines because of its docstring (the ball, the ascent, m-sharpness, the
# closed form); the ascent is _restart (_ascents over ranks), the combination over batches _combine.
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
    radius = check_positive("the radius", radius)
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
    _check_reach(obj, "radius", radius, radius * float(scale.max()))
    size = n_examples if m is None else m
    starts = list(range(0, n_examples, size))
    parts, weights = [], []
    for b, s in enumerate(starts):
        part = obj if m is None else obj.part(s, s + size)
        try:
            weight = part.count / obj.count  # the batch's share of the loss's units
        except BasinscopeError:  # a batch whose targets count nothing (all ignored)
            continue
        # each batch of m examples has its own L(θ0)
        known = loss0 if m is None else finite_loss0(part, "its worst-case sharpness")
        parts.append((b, part, known))
        weights.append(weight)
    results = _ascents(parts, radius, norm, scale, steps, restarts, seed, progress)
    settings = {
        "radius": radius,
        "norm": norm,
        "adaptive": bool(adaptive),
        "eta": float(eta),
        "steps": steps,
        "restarts": restarts,
        "seed": int(seed),
        "m": m,
    }
    return _combine(results, weights, scale, settings)


def _combine(
    results: list[_Ascent], weights: list[float], scale: Tensor, settings: dict[str, Any]
) -> WorstCase:
    """The :class:`WorstCase` of the batches' ascents: means weighted by batch size."""
    m = settings["m"]
    values = [r.loss - r.loss0 for r in results]
    ord_ = 2 if settings["norm"] == "l2" else math.inf
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
        **settings,
        n_batches=len(results),
        evaluations=sum(r.evaluations for r in results),
        gradients=sum(r.gradients for r in results),
        restart_values=tuple(results[0].restart_values) if m is None else (),
        batch_values=tuple(values),
    )
