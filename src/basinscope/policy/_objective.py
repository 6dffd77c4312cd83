"""The negative return of a policy as an :class:`~basinscope.Objective`.

:func:`return_objective` builds the Objective whose "loss" at weights θ is

    L(θ) = −(1/E) Σ_i G_i(θ),

minus the mean discounted return over E fixed episodes (:class:`Rollout`: common
random numbers, so L is a deterministic function of θ). Everything that takes an
Objective then works on it: ``bs.plane``/``bs.line`` draw *negative* return
surfaces, ``bs.interpolate`` the path between two policies, noise sharpness is the
mean return *drop* under weight noise, ε-sharpness the largest drop within ε, and
``bs.basin_volume(obj, τ, rule="relative")`` the volume where the return falls by at
most τ (``rule="absolute"``: where the return is at least −τ). Gradients exist for
continuous actions (the path through the dynamics; exact for the LQR); for discrete
actions every gradient-based measure is refused in one sentence.

:func:`episode_returns` gives each episode's return at given weights, and
:func:`return_stats` the mean and its standard error ``sd/√E`` over episodes
(Sullivan et al. 2022, "Cliff Diving: Exploring Reward Surfaces in Reinforcement
Learning Environments", draw such surfaces from episode means).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from .._checks import check_int, check_number
from ..errors import BasinscopeError
from ..objective import Objective, SumLoss
from ._rollout import Rollout, check_std


def _negative_return(returns: Tensor, episodes: Tensor) -> tuple[Tensor, int]:
    return -returns.sum(), returns.numel()


def return_objective(
    policy: nn.Module,
    env: Any,
    *,
    episodes: int = 32,
    seed: int = 0,
    gamma: float = 1.0,
    horizon: int | None = None,
    stochastic: bool = False,
    action_std: float | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    batch_size: int = 4096,
    group: Any = "auto",
) -> Objective:
    """The Objective ``L(θ) = −mean_i G_i(θ)`` of ``policy`` in ``env`` (see the module).

    Args:
        policy: any ``nn.Module`` mapping observations ``[B, obs_dim]`` to logits
            ``[B, n_actions]`` (discrete) or actions ``[B, action_dim]`` (or ``(μ, log σ)``).
            It is copied, never modified.
        env: a batched environment (:class:`CartPole`, :class:`Pendulum`, :class:`LQR`).
        episodes: E, the fixed episodes; episode i starts at ``reset(seed + i)``.
        seed: seed of the start states and of the action noise.
        gamma: the discount γ ∈ (0, 1].
        horizon: steps per episode (default: the environment's time limit).
        stochastic: sample actions with the fixed noise instead of acting greedily.
        action_std: σ of a stochastic continuous policy that returns only μ.
        device, dtype, batch_size, group: as for :class:`~basinscope.Objective`
            (``batch_size`` counts episodes).
    """
    if not isinstance(policy, nn.Module):
        raise BasinscopeError(f"policy must be a torch.nn.Module, got {type(policy).__name__}")
    for attr in ("reset", "step", "observe", "discrete", "max_steps"):
        if not hasattr(env, attr):
            raise BasinscopeError(
                f"env must be a batched environment (CartPole, Pendulum, LQR), got "
                f"{type(env).__name__} without {attr!r}"
            )
    episodes = check_int("episodes", episodes, minimum=1)
    seed = check_int("seed", seed, minimum=0)
    gamma = check_number("gamma", gamma)
    if not 0 < gamma <= 1:
        raise BasinscopeError(f"gamma must lie in (0, 1], got {gamma}")
    horizon = env.max_steps if horizon is None else check_int("horizon", horizon, minimum=1)
    std = check_std(action_std, env, stochastic)  # None: the policy returns (μ, log σ)
    rollout = Rollout(
        policy, env, episodes=episodes, seed=seed, gamma=gamma, horizon=horizon,
        stochastic=bool(stochastic), action_std=std,
    )  # fmt: skip
    index = torch.arange(episodes)
    return Objective(
        rollout,
        SumLoss(_negative_return),
        (index, index),
        device=device,
        dtype=dtype,
        batch_size=batch_size,
        group=group,
    )


def episode_returns(obj: Objective, theta: Tensor | None = None) -> Tensor:
    """Each episode's return ``G_i(θ)`` (``[E]``, float64) at ``theta`` (default θ0)."""
    rollout = obj.model
    if not isinstance(rollout, Rollout):
        raise BasinscopeError("episode_returns needs an Objective made by return_objective")
    theta = obj.theta0 if theta is None else torch.as_tensor(theta).to(obj.theta0)
    index = torch.arange(len(rollout.start), device=obj.device)
    with torch.no_grad():
        return obj.batches.forward(obj.space.unflatten(theta), index).double()


def return_stats(obj: Objective, points: Tensor) -> tuple[Tensor, Tensor]:
    """Mean return and its standard error over the episodes, at each of ``points [K, n]``."""
    points = torch.as_tensor(points)
    if points.dim() == 1:
        points = points[None]
    returns = torch.stack([episode_returns(obj, p) for p in points])  # [K, E]
    e = returns.shape[1]
    se = (
        returns.std(1, unbiased=True) / math.sqrt(e)
        if e > 1
        else torch.full((len(points),), math.inf)
    )
    return returns.mean(1), se
