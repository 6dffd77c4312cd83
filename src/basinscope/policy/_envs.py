"""What every batched environment of the policy wing offers, and the checks they share.

An environment here is stateless: ``reset(seeds)`` gives the initial states
``s_0`` of E episodes and ``step(s_t, a_t) -> (s_{t+1}, r_t, terminated_{t+1})``
maps a batch of states and actions to the next ones, in pure torch, batched over
any leading dimensions and differentiable wherever the physics is. Time limits
(``max_steps``) and the masking of steps after termination belong to whoever
rolls the episodes out (the return objective), as Gymnasium's ``TimeLimit``
wrapper and ``steps_beyond_terminated`` do for one episode.

The initial states are Gymnasium's exactly: ``env.reset(seed=s)`` seeds the
environment's generator with ``gymnasium.utils.seeding.np_random(s)``, i.e.
``numpy.random.Generator(PCG64(SeedSequence(s)))``, and draws the state with
its ``uniform``; :func:`initial_states` makes the same generator, so Gymnasium
itself is needed only by the tests.

Reference: M. Towers et al., "Gymnasium: A Standard Interface for Reinforcement
Learning Environments", arXiv:2407.17032 (2024).
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from dataclasses import fields
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor

from .._checks import check_int
from ..errors import BasinscopeError


@runtime_checkable
class BatchedEnv(Protocol):
    """A batched, stateless environment (what :class:`CartPole` and :class:`Pendulum` are).

    ``discrete`` says whether an action is an index among ``n_actions`` choices
    (``action_dim`` is then None) or a vector of ``action_dim`` reals
    (``n_actions`` is then None); ``action_shape`` is the trailing shape of one
    action in :meth:`step` (``()`` for an index).
    """

    name: str
    state_dim: int
    obs_dim: int
    discrete: bool
    n_actions: int | None
    action_dim: int | None
    action_shape: tuple[int, ...]

    @property
    def max_steps(self) -> int:
        """The episode's time limit (Gymnasium's ``max_episode_steps``)."""
        ...

    def reset(
        self,
        seeds: Sequence[int],
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """The initial states ``[E, state_dim]`` that ``reset(seed=s)`` gives, one row a seed."""
        ...

    def step(self, state: Tensor, action: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(next_state [..., state_dim], reward [...], terminated [...] bool)``."""
        ...

    def observe(self, state: Tensor) -> Tensor:
        """What the policy sees of ``state``: ``[..., obs_dim]``."""
        ...


class PhysicsEnv:
    """What CartPole and Pendulum share: a frozen parameter dataclass ``Params``
    (checked to be one), the time limit it holds and a ``repr`` naming the changed
    parameters."""

    name: str
    Params: type

    def __init__(self, params: Any = None) -> None:
        kind = self.name.split("-")[0]
        if params is None:
            params = self.Params()
        if not isinstance(params, self.Params):
            raise BasinscopeError(
                f"{kind} params must be a {self.Params.__name__}, got {type(params).__name__}"
            )
        self.params = params

    @property
    def max_steps(self) -> int:
        """The time limit of an episode (Gymnasium's ``max_episode_steps``)."""
        return self.params.max_steps

    def __repr__(self) -> str:
        changed = [
            f"{f.name}={getattr(self.params, f.name)!r}"
            for f in fields(self.Params)
            if getattr(self.params, f.name) != f.default
        ]
        return f"{self.name.split('-')[0]}({', '.join(changed)})"


def gymnasium_generator(seed: int) -> np.random.Generator:
    """The generator ``gymnasium.utils.seeding.np_random(seed)`` makes (PCG64 from a
    ``SeedSequence``), the one ``env.reset(seed=seed)`` draws its initial state from."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed)))


def initial_states(
    env: str,
    seeds: Sequence[int],
    draw: Callable[[np.random.Generator], np.ndarray],
    dtype: torch.dtype,
    device: torch.device | str | None,
) -> Tensor:
    """``draw(generator of seed)`` for every seed, stacked as a ``[E, state_dim]`` tensor.

    Seeds are non-negative integers (as Gymnasium accepts them); a single integer
    is refused so that ``reset(3)`` is not mistaken for three episodes.
    """
    array = isinstance(seeds, np.ndarray | Tensor)
    if (
        isinstance(seeds, numbers.Integral | str | bytes)
        or not (array or isinstance(seeds, Sequence))
        or (array and seeds.ndim != 1)
    ):
        raise BasinscopeError(
            f"{env}.reset takes a sequence of seeds (one an episode), got {seeds!r}"
        )
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise BasinscopeError(f"{env}.reset dtype must be a floating torch dtype, got {dtype!r}")
    values = [seed.item() if isinstance(seed, np.generic | Tensor) else seed for seed in seeds]
    rows = [draw(gymnasium_generator(check_int("seed", s, minimum=0))) for s in values]
    if not rows:
        raise BasinscopeError(f"{env}.reset needs at least one seed, got an empty sequence")
    return torch.as_tensor(np.stack(rows), dtype=dtype, device=device)


def check_state(env: str, state: Any, state_dim: int) -> Tensor:
    """``state`` is a floating tensor ``[..., state_dim]`` (shape and dtype only: no
    value is read, so no device synchronises)."""
    if not isinstance(state, Tensor):
        raise BasinscopeError(f"{env} state must be a torch tensor, got {type(state).__name__}")
    if not state.is_floating_point():
        raise BasinscopeError(f"{env} state must be a floating tensor, got dtype {state.dtype}")
    if state.dim() == 0 or state.shape[-1] != state_dim:
        raise BasinscopeError(
            f"{env} state must have shape [..., {state_dim}], got {tuple(state.shape)}"
        )
    return state


def check_action(env: str, action: Any, state: Tensor, trailing: tuple[int, ...]) -> Tensor:
    """``action`` is a tensor of shape ``state.shape[:-1] + trailing`` on the state's device."""
    if not isinstance(action, Tensor):
        raise BasinscopeError(f"{env} action must be a torch tensor, got {type(action).__name__}")
    want = tuple(state.shape[:-1]) + trailing
    if tuple(action.shape) != want:
        raise BasinscopeError(
            f"{env} action must have shape {want} for a state of shape "
            f"{tuple(state.shape)}, got {tuple(action.shape)}"
        )
    if action.device != state.device:
        raise BasinscopeError(
            f"{env} action is on {action.device} but the state is on {state.device}"
        )
    return action
