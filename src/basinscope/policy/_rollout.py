"""The return of a policy over a fixed set of episodes, as a module of the policy's weights.

:class:`Rollout` wraps a policy network and a batched environment. Its input is a
batch of episode indices ``i``; episode ``i`` always starts from the state that
``reset(seed = seed + i)`` gives and draws its action noise from its own stream
``(seed, i)`` (:mod:`basinscope._rng`): *common random numbers*, so the return is a
deterministic function of the weights and two nearby weight points see the same
episodes. It outputs each episode's discounted return

    G_i(θ) = Σ_{t < T_i} γᵗ r(s_t, a_t),   a_t = π_θ(observe(s_t); ξ_{i,t}),

where ``T_i`` is the episode's termination step or the horizon. Actions:

* discrete, greedy: ``argmax_a logits``; stochastic: ``argmax_a (log softmax(logits)
  + g_a)`` with Gumbel noise ``g`` — exactly a sample of ``softmax(logits)``
  (the Gumbel-max trick);
* continuous, deterministic: the policy's output (the mean); stochastic:
  ``μ + σ ⊙ ε`` with ``ε ~ 𝒩(0, I)``, σ a fixed ``action_std`` or ``exp(log σ)``
  when the policy returns ``(μ, log σ)``.

The physics runs in float64 whatever the policy's precision (observations are cast
to the policy's dtype, actions back); the start states and the noise are plain
attributes, so the copy an Objective makes keeps them in float64.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from .._rng import item_generator
from ..errors import BasinscopeError

DISCRETE_GRADIENT = (
    "the return of a policy with discrete actions is piecewise constant in its weights "
    "(an argmax picks each action), so its gradient is zero almost everywhere and "
    "undefined at the jumps: gradient-based measures (Hessian, worst case, Keskar, "
    "PAC-Bayes search) are refused; use those that evaluate returns only — surfaces, "
    "paths, noise sharpness, ε-sharpness on a grid, basin volume"
)


class Rollout(nn.Module):
    """``forward(episodes [E] long) -> returns [E]`` of ``policy`` in ``env`` (see the module)."""

    def __init__(
        self,
        policy: nn.Module,
        env: Any,
        *,
        episodes: int,
        seed: int,
        gamma: float,
        horizon: int,
        stochastic: bool,
        action_std: float | None,
    ) -> None:
        super().__init__()
        self.policy, self.env = policy, env
        self.gamma, self.horizon, self.stochastic = gamma, horizon, stochastic
        self.action_std = action_std
        self.start = env.reset([seed + i for i in range(episodes)])  # float64 [E, S]
        self.noise = None
        if stochastic:
            width = env.n_actions if env.discrete else env.action_dim
            draws = []
            for i in range(episodes):
                g = item_generator(seed, i)
                if env.discrete:  # Gumbel(0, 1) = −log(−log U), U ∈ (0, 1)
                    u = torch.rand(horizon, width, generator=g, dtype=torch.float64)
                    draws.append(-torch.log(-torch.log(u.clamp_min(1e-300))))
                else:
                    draws.append(torch.randn(horizon, width, generator=g, dtype=torch.float64))
            self.noise = torch.stack(draws)  # [E, T, width]

    def wrap_other(self, policy: nn.Module) -> nn.Module:
        """Another policy under this module's parameter names (``policy.<name>``), so that
        paths between policies (:func:`basinscope.interpolate`) take bare policies;
        a module that already has those names is returned as it is."""
        names = {n for n, _ in self.named_parameters()}
        if names <= {n for n, _ in policy.named_parameters()}:
            return policy
        return nn.ModuleDict({"policy": policy})

    def extra_repr(self) -> str:
        return (
            f"env={self.env.name}, episodes={len(self.start)}, horizon={self.horizon}, "
            f"gamma={self.gamma}, stochastic={self.stochastic}"
        )

    def _act(self, out: Any, noise: Tensor | None) -> Tensor:
        env = self.env
        if env.discrete:
            logits = out.to(torch.float64)
            if noise is not None:
                logits = torch.log_softmax(logits, -1) + noise
            return logits.argmax(-1)
        if isinstance(out, tuple | list):  # (mean, log σ)
            mean, log_std = (o.to(torch.float64) for o in out)
            std = log_std.exp()
        else:
            mean = out.to(torch.float64)
            std = self.action_std
        if noise is None:
            return mean
        return mean + std * noise

    def points_engine(self) -> Any:
        """The engine that steps the episodes of many weight points at once
        (:class:`~basinscope.policy.RolloutEngine`; the plan verifies it first)."""
        from ._engine import RolloutEngine

        return RolloutEngine()

    def returns_at(self, params: dict[str, Tensor], episodes: Tensor) -> Tensor:
        """``[B, E]`` returns of the episodes at B weight points at once: ``params`` maps
        this module's parameter names to ``[B, *shape]`` stacks. The environment steps
        all ``B·E`` episodes together; the policy runs once a step for all points
        (``torch.func.vmap``); the loop ends when every episode has."""
        own = {k.removeprefix("policy."): v for k, v in params.items()}
        dtype = next(iter(own.values())).dtype
        b = len(next(iter(own.values())))

        def one(p: dict[str, Tensor], obs: Tensor) -> Any:
            return torch.func.functional_call(self.policy, p, (obs,))

        policy = torch.func.vmap(one, in_dims=(0, 0))
        state = self.start[episodes.to(self.start.device).long()].to(episodes.device)
        return self._roll(lambda obs: policy(own, obs), state.expand(b, -1, -1), episodes, dtype)

    def forward(self, episodes: Tensor) -> Tensor:
        grads = torch.is_grad_enabled() and any(p.requires_grad for p in self.policy.parameters())
        if self.env.discrete and grads:
            raise BasinscopeError(DISCRETE_GRADIENT)
        dtype = next((p.dtype for p in self.policy.parameters()), torch.float64)
        state = self.start[episodes.to(self.start.device).long()].to(episodes.device)
        return self._roll(self.policy, state, episodes, dtype)

    def _roll(self, policy: Any, state: Tensor, episodes: Tensor, dtype: torch.dtype) -> Tensor:
        """The returns of the episodes starting at ``state`` (``[..., E, S]``: one point's,
        or a stack of points'), ``policy`` mapping observations ``[..., E, obs]`` in the
        policy's ``dtype`` to its outputs. A finished episode's state stays put and its
        rewards are masked; the loop ends when every episode has (not inside vmap,
        where a data-dependent exit is impossible)."""
        idx = episodes.to(self.start.device).long()
        noise = None if self.noise is None else self.noise[idx].to(episodes.device)
        total = torch.zeros(state.shape[:-1], dtype=torch.float64, device=state.device)
        alive = torch.ones(state.shape[:-1], dtype=torch.bool, device=state.device)
        discount = 1.0
        for t in range(self.horizon):
            out = policy(self.env.observe(state).to(dtype))
            action = self._act(out, None if noise is None else noise[:, t])
            nxt, reward, terminated = self.env.step(state, action)
            total = total + discount * torch.where(alive, reward, torch.zeros_like(reward))
            alive = alive & ~terminated
            state = torch.where(alive[..., None], nxt, state)
            discount *= self.gamma
            if self.env.discrete and not _batched(alive) and not bool(alive.any()):
                break
        return total


def _batched(t: Tensor) -> bool:
    """Whether ``t`` is a functorch batched tensor (inside ``torch.func.vmap``)."""
    try:
        return bool(torch._C._functorch.is_batchedtensor(t))
    except AttributeError:  # pragma: no cover - other torch builds
        return True


def check_std(action_std: float | None, env: Any, stochastic: bool) -> float | None:
    """σ of a stochastic continuous policy: a positive number (or None when the policy
    returns ``(μ, log σ)``); ignored for deterministic and discrete policies."""
    if action_std is None:
        return None
    if not (isinstance(action_std, int | float) and math.isfinite(action_std) and action_std > 0):
        raise BasinscopeError(f"action_std must be a positive number, got {action_std!r}")
    if env.discrete or not stochastic:
        raise BasinscopeError(
            "action_std is the noise of a stochastic continuous policy; "
            f"{'the actions are discrete' if env.discrete else 'stochastic=False'} here"
        )
    return float(action_std)
