"""Proximal policy optimisation with the clipped surrogate objective (Schulman et al. 2017).

The advantages are GAE(λ) (Schulman et al. 2016) of the critic's values ``V``
computed once before the update, with ``done_t`` the termination of step t:

    δ_t = r_t + γ (1 − done_t) V(s_{t+1}) − V(s_t),
    Â_t = δ_t + γλ (1 − done_t) Â_{t+1},

bootstrapped from ``V(s_T)`` where an episode is cut by the horizon, and normalised
to mean 0 and standard deviation 1 over the N steps taken. The value targets are
``R_t = Â_t + V(s_t)`` (before the normalisation). With the probability ratio
``ρ_t(θ) = π_θ(a_t|s_t) / π_old(a_t|s_t)`` against the policy that collected the
episodes, each minibatch takes one Adam step on

    L_π = −mean_t min(ρ_t Â_t, clip(ρ_t, 1 − ε, 1 + ε) Â_t) − β mean_t H[π_θ(·|s_t)],
    L_V = mean_t ½ (V(s_t) − R_t)²,

over ``epochs`` passes, each through the steps shuffled (with the iteration's
seeded generator) into ``minibatches`` near-equal minibatches.

References: J. Schulman, F. Wolski, P. Dhariwal, A. Radford, O. Klimov, "Proximal
Policy Optimization Algorithms", arXiv:1707.06347 (2017); J. Schulman, P. Moritz,
S. Levine, M. Jordan, P. Abbeel, "High-Dimensional Continuous Control Using
Generalized Advantage Estimation", ICLR 2016.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._reinforce import Episodes, Learner


def gae(rewards: Tensor, terminated: Tensor, values: Tensor, gamma: float, lam: float) -> Tensor:
    """GAE(λ) advantages ``[T, E]`` from ``values [T+1, E]`` (see the module)."""
    out = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[0])
    for t in range(len(rewards) - 1, -1, -1):
        keep = (~terminated[t]).to(rewards.dtype)
        delta = rewards[t] + gamma * keep * values[t + 1] - values[t]
        running = delta + gamma * lam * keep * running
        out[t] = running
    return out


def ppo_update(
    learner: Learner,
    episodes: Episodes,
    *,
    lam: float,
    clip: float,
    epochs: int,
    minibatches: int,
    generator: torch.Generator,
) -> dict[str, float]:
    """``epochs`` passes of clipped-surrogate minibatch steps on ``episodes``; the mean losses."""
    steps, n_episodes = episodes.rewards.shape
    obs, actions = episodes.taken()
    with torch.no_grad():
        flat = episodes.obs.reshape((steps + 1) * n_episodes, -1)
        values = learner.values(flat).reshape(steps + 1, n_episodes)
        advantages = gae(episodes.rewards, episodes.terminated, values, learner.gamma, lam)
        targets = (advantages + values[:-1])[episodes.alive]
        advantages = advantages[episodes.alive]
        old_logp, _ = learner.log_prob_entropy(obs, actions)
    if len(advantages) > 1:
        advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
    sums = dict.fromkeys(
        ("policy_loss", "value_loss", "entropy", "approx_kl", "clip_fraction"), 0.0
    )
    count = 0
    for _ in range(epochs):
        order = torch.randperm(len(obs), generator=generator).to(obs.device)
        for idx in torch.tensor_split(order, minibatches):
            if len(idx) == 0:
                continue
            logp, ent = learner.log_prob_entropy(obs[idx], actions[idx])
            log_ratio = logp - old_logp[idx]
            ratio = log_ratio.exp()
            adv = advantages[idx]
            surrogate = torch.min(ratio * adv, ratio.clamp(1 - clip, 1 + clip) * adv)
            policy_loss = -surrogate.mean() - learner.entropy * ent.mean()
            value_loss = 0.5 * ((learner.values(obs[idx]) - targets[idx]) ** 2).mean()
            learner.step(policy_loss, value_loss)
            with torch.no_grad():  # Schulman's k3 estimate of KL(π_old ‖ π_θ)
                kl = ((ratio - 1) - log_ratio).mean()
                clipped = ((ratio - 1).abs() > clip).to(torch.float64).mean()
            for name, v in zip(
                sums, (policy_loss, value_loss, ent.mean(), kl, clipped), strict=True
            ):
                sums[name] += v.item()
            count += 1
    return {name: total / max(count, 1) for name, total in sums.items()}
