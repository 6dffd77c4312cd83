"""Sampled episodes and the score-function gradient: REINFORCE with a learned baseline.

:func:`collect` rolls E episodes of a stochastic policy out in parallel in a batched
environment (see :class:`Episodes` for what it records). Actions are sampled with a
seeded ``torch.Generator`` alone, never the global RNG:

* discrete: ``a = argmax_a (log softmax(logits)_a + g_a)`` with Gumbel noise
  ``g = −log(−log U)``, exactly a sample of ``π(·|s) = softmax(logits)``
  (the Gumbel-max trick);
* continuous: ``a = μ + σ ⊙ ε``, ``ε ~ 𝒩(0, I)``, with σ a fixed ``action_std`` or
  ``exp(log σ)`` when the policy returns ``(μ, log σ)``; the environment clips.

As in :class:`~basinscope.policy.Rollout`, a finished episode's state is frozen and
its later steps are masked. :func:`reinforce_update` is REINFORCE (Williams 1992)
with a state-value baseline (Sutton & Barto 2018, §13.4): with the discounted
returns-to-go ``G_t = Σ_{k ≥ t} γ^{k−t} r_k`` (Monte Carlo, to the episode's end or
the horizon) over the N steps taken,

    L_π = −(1/N) Σ_t log π(a_t|s_t) (G_t − V(s_t)) − β (1/N) Σ_t H[π(·|s_t)],
    L_V = (1/N) Σ_t ½ (V(s_t) − G_t)²,

one Adam step on each per iteration (the baseline is not differentiated through in
``L_π``: it lowers the variance of the gradient estimate without biasing it).

References: R. J. Williams, "Simple statistical gradient-following algorithms for
connectionist reinforcement learning", Machine Learning 8, 1992; R. S. Sutton,
A. G. Barto, "Reinforcement Learning: An Introduction", 2nd ed., 2018.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import BasinscopeError

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


@dataclass
class Episodes:
    """E episodes of at most T steps, time first (float64 physics).

    ``obs [T+1, E, obs_dim]`` (the last row: where each episode stands after the
    last step, for a bootstrap), ``actions [T, E]`` (indices) or ``[T, E, m]``,
    ``rewards [T, E]`` (0 after an episode's end), ``alive [T, E]`` (step t was taken
    in a running episode), ``terminated [T, E]`` (step t ended the episode).
    """

    obs: Tensor
    actions: Tensor
    rewards: Tensor
    alive: Tensor
    terminated: Tensor

    @property
    def returns(self) -> Tensor:
        """Each episode's undiscounted return ``[E]``."""
        return self.rewards.sum(0)

    @property
    def lengths(self) -> Tensor:
        """Each episode's number of steps ``[E]``."""
        return self.alive.sum(0)

    def taken(self) -> tuple[Tensor, Tensor]:
        """The observations ``[N, obs_dim]`` and actions of the N steps taken."""
        return self.obs[:-1][self.alive], self.actions[self.alive]


def gaussian(out: Any, action_std: float) -> tuple[Tensor, Tensor]:
    """``(μ, σ)`` in float64 from a continuous policy's output (μ, or ``(μ, log σ)``)."""
    if isinstance(out, tuple | list):
        mean, log_std = (o.to(torch.float64) for o in out)
        return mean, log_std.exp().expand_as(mean)
    mean = out.to(torch.float64)
    return mean, torch.full_like(mean, action_std)


def log_prob_entropy(
    discrete: bool, out: Any, actions: Tensor, action_std: float
) -> tuple[Tensor, Tensor]:
    """``(log π(a|s) [B], H[π(·|s)] [B])`` in float64 for the policy's output ``out``.

    Discrete: a Categorical over ``softmax(logits)``; continuous: a diagonal Gaussian
    ``log π = Σ_j (−(a_j − μ_j)²/(2σ_j²) − log σ_j − ½ log 2π)``,
    ``H = Σ_j (½ + ½ log 2π + log σ_j)``.
    """
    if discrete:
        logp = torch.log_softmax(out.to(torch.float64), -1)
        chosen = logp.gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)
        return chosen, -(logp.exp() * logp).sum(-1)
    mean, std = gaussian(out, action_std)
    log_std = std.log()
    z = (actions - mean) / std
    logp = (-0.5 * z * z - log_std - _HALF_LOG_2PI).sum(-1)
    return logp, (0.5 + _HALF_LOG_2PI + log_std).sum(-1)


def _sample(env: Any, out: Any, generator: torch.Generator, action_std: float) -> Tensor:
    """One action per row of ``out``, its noise drawn from ``generator`` (CPU, float64)."""
    if env.discrete:
        logits = out.to(torch.float64)
        u = torch.rand(logits.shape, generator=generator, dtype=torch.float64)
        gumbel = -torch.log(-torch.log(u.clamp_min(1e-300)))  # Gumbel(0, 1)
        return (torch.log_softmax(logits, -1) + gumbel.to(logits.device)).argmax(-1)
    mean, std = gaussian(out, action_std)
    eps = torch.randn(mean.shape, generator=generator, dtype=torch.float64)
    return mean + std * eps.to(mean.device)


def collect(
    policy: nn.Module,
    env: Any,
    start: Tensor,
    *,
    horizon: int,
    generator: torch.Generator,
    action_std: float,
    dtype: torch.dtype,
) -> Episodes:
    """Roll the episodes that start at ``start [E, state_dim]`` out for at most ``horizon``
    steps with actions sampled from ``policy`` (stops early once every episode ended)."""
    state = start
    alive = torch.ones(len(start), dtype=torch.bool, device=start.device)
    obs, actions, rewards, alives, ends = [], [], [], [], []
    with torch.no_grad():
        for _ in range(horizon):
            seen = env.observe(state)
            action = _sample(env, policy(seen.to(dtype)), generator, action_std)
            nxt, reward, terminated = env.step(state, action)
            terminated = terminated.to(alive.device) & alive
            obs.append(seen)
            actions.append(action)
            rewards.append(torch.where(alive, reward.to(torch.float64), 0.0))
            alives.append(alive)
            ends.append(terminated)
            alive = alive & ~terminated
            state = torch.where(alive[:, None], nxt, state)  # a finished episode stays put
            if not bool(alive.any()):
                break
        obs.append(env.observe(state))
    return Episodes(
        obs=torch.stack(obs).to(torch.float64),
        actions=torch.stack(actions),
        rewards=torch.stack(rewards),
        alive=torch.stack(alives),
        terminated=torch.stack(ends),
    )


def discounted_returns(rewards: Tensor, terminated: Tensor, gamma: float) -> Tensor:
    """``G_t = r_t + γ (1 − done_t) G_{t+1}`` backwards from the last step (``[T, E]``)."""
    out = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[0])
    for t in range(len(rewards) - 1, -1, -1):
        running = rewards[t] + gamma * (~terminated[t]) * running
        out[t] = running
    return out


def state_values(value: nn.Module, obs: Tensor, dtype: torch.dtype) -> Tensor:
    """``V(s)`` as float64 ``[B]`` from the critic's ``[B]`` or ``[B, 1]`` output."""
    out = value(obs.to(dtype))
    if not isinstance(out, Tensor) or out.shape not in ((len(obs),), (len(obs), 1)):
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise BasinscopeError(
            f"the value network must map observations [B, {obs.shape[-1]}] to values [B] or "
            f"[B, 1], got {shape} for B = {len(obs)}"
        )
    return out.reshape(len(obs)).to(torch.float64)


@dataclass
class Learner:
    """What an update changes and reads: the two networks, their optimisers, the settings."""

    policy: nn.Module
    value: nn.Module
    policy_optimizer: torch.optim.Optimizer
    value_optimizer: torch.optim.Optimizer
    discrete: bool
    dtype: torch.dtype
    value_dtype: torch.dtype
    action_std: float
    gamma: float
    entropy: float

    def log_prob_entropy(self, obs: Tensor, actions: Tensor) -> tuple[Tensor, Tensor]:
        """``(log π(a|s), H[π(·|s)])`` of the current policy, differentiable."""
        out = self.policy(obs.to(self.dtype))
        return log_prob_entropy(self.discrete, out, actions, self.action_std)

    def values(self, obs: Tensor) -> Tensor:
        """``V(s)`` of the current critic, differentiable."""
        return state_values(self.value, obs, self.value_dtype)

    def step(self, policy_loss: Tensor, value_loss: Tensor) -> None:
        """One Adam step of each network on its own loss."""
        self.policy_optimizer.zero_grad(set_to_none=True)
        self.value_optimizer.zero_grad(set_to_none=True)
        policy_loss.backward()
        value_loss.backward()
        self.policy_optimizer.step()
        self.value_optimizer.step()


def reinforce_update(learner: Learner, episodes: Episodes) -> dict[str, float]:
    """One REINFORCE step with the baseline on ``episodes`` (the losses of the module)."""
    obs, actions = episodes.taken()
    targets = discounted_returns(episodes.rewards, episodes.terminated, learner.gamma)
    targets = targets[episodes.alive]
    values = learner.values(obs)
    advantage = targets - values.detach()
    logp, ent = learner.log_prob_entropy(obs, actions)
    policy_loss = -(logp * advantage).mean() - learner.entropy * ent.mean()
    value_loss = 0.5 * ((values - targets) ** 2).mean()
    learner.step(policy_loss, value_loss)
    return {
        "policy_loss": policy_loss.item(),
        "value_loss": value_loss.item(),
        "entropy": ent.mean().item(),
    }
