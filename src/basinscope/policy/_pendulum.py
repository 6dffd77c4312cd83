"""Gymnasium's ``Pendulum-v1`` as a batched, differentiable torch environment.

The state is ``s = (θ, θ̇)``, the angle from upright (counter-clockwise) and the
angular velocity; the action a torque ``u`` of shape ``[..., 1]``. One step
clips the torque to ``±max_torque``, scores the current state and advances
with semi-implicit Euler, clipping the speed to ``±max_speed``:

    u    = clip(u, −u_max, u_max)
    r    = −(angle_normalize(θ)² + 0.1 θ̇² + 0.001 u²),  angle_normalize(θ) = ((θ + π) mod 2π) − π
    θ̇'   = clip(θ̇ + (3g / (2l) · sin θ + 3 / (m l²) · u) · dt, −v_max, v_max)
    θ'   = θ + θ̇' dt

so the reward belongs to the state the step starts from, and ``θ`` itself is
never wrapped (only the reward and the observation ``(cos θ, sin θ, θ̇)`` see
the angle modulo 2π). The episode never terminates; ``Pendulum-v1`` truncates
at 200 steps. The gradient is the physics': zero through a clipped torque or a
clipped speed, as the clipped map's derivative is.

Every operation is Gymnasium's, in its order; the parameter-only constants
``3g / (2l)`` and ``3 / (m l²)`` are computed as Python floats as there. The
torque keeps its own dtype until it meets the state (as NumPy promotes it in
Gymnasium: a float32 torque makes ``0.001 u²`` and ``3 / (m l²) · u`` float32
there and here), and the next state and reward come back in the state's dtype.

References: Gymnasium's ``classic_control/pendulum.py`` (M. Towers et al.,
arXiv:2407.17032, 2024), after OpenAI Gym's ``Pendulum-v0``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .._checks import check_int, check_number, check_positive
from ..errors import BasinscopeError
from ._envs import PhysicsEnv, check_action, check_state, initial_states

_POSITIVE = ("max_speed", "max_torque", "dt", "m", "l")


def angle_normalize(theta: Tensor) -> Tensor:
    """``((θ + π) mod 2π) − π`` in [−π, π), Gymnasium's ``angle_normalize`` (the modulo
    takes the divisor's sign, as ``torch.remainder`` and NumPy's ``%`` both do)."""
    return torch.remainder(theta + math.pi, 2 * math.pi) - math.pi


@dataclass(frozen=True)
class PendulumParams:
    """Pendulum's physical parameters, named and defaulted as Gymnasium's attributes.

    ``g`` gravity, ``m`` the mass, ``l`` the length, ``dt`` the step in seconds,
    ``max_speed`` and ``max_torque`` the clips, ``max_steps`` the time limit of
    ``Pendulum-v1`` (200). All but gravity are positive finite numbers; gravity
    is any finite number. ``dataclasses.replace(params, l=1.3)`` checks again.
    """

    max_speed: float = 8.0
    max_torque: float = 2.0
    dt: float = 0.05
    g: float = 10.0
    m: float = 1.0
    l: float = 1.0
    max_steps: int = 200

    def __post_init__(self) -> None:
        for name in _POSITIVE:
            value = check_positive(f"PendulumParams.{name}", getattr(self, name))
            object.__setattr__(self, name, value)
        object.__setattr__(self, "g", check_number("PendulumParams.g", self.g))
        steps = check_int("PendulumParams.max_steps", self.max_steps, minimum=1)
        object.__setattr__(self, "max_steps", steps)


class Pendulum(PhysicsEnv):
    """Batched ``Pendulum-v1``: ``reset(seeds)``, ``step(state, action)``, ``observe(state)``.

    ``Pendulum(params=PendulumParams(g=9.81))`` changes the physics. The state
    is ``[..., 2]`` (θ, θ̇), the action a floating torque ``[..., 1]`` and the
    observation ``[..., 3]`` (cos θ, sin θ, θ̇).
    """

    name = "Pendulum-v1"
    Params = PendulumParams
    state_dim = 2
    obs_dim = 3
    discrete = False
    n_actions: int | None = None
    action_dim: int | None = 1
    action_shape: tuple[int, ...] = (1,)

    def reset(
        self,
        seeds: Sequence[int],
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """``[E, 2]``: row ``i`` is the state ``gymnasium.make("Pendulum-v1").reset(seed=
        seeds[i])`` starts from, θ uniform on (−π, π) and θ̇ on (−1, 1)."""

        def draw(rng: np.random.Generator) -> np.ndarray:
            high = np.array([np.pi, 1.0])
            return rng.uniform(low=-high, high=high)

        return initial_states(self.name, seeds, draw, dtype, device)

    def step(self, state: Tensor, action: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """One step of every episode: ``(next_state [..., 2], reward [...], terminated [...])``.

        The reward scores ``state`` and the clipped torque; ``terminated`` is
        all False (the pendulum never terminates, it is truncated).
        """
        state = check_state(self.name, state, self.state_dim)
        action = check_action(self.name, action, state, self.action_shape)
        if not action.is_floating_point():
            raise BasinscopeError(
                f"{self.name} action must be a floating tensor of torques, got dtype {action.dtype}"
            )
        p = self.params
        th, thdot = state.unbind(-1)
        u = torch.clamp(action, -p.max_torque, p.max_torque)[..., 0]
        costs = angle_normalize(th) ** 2 + 0.1 * thdot**2 + 0.001 * (u**2)
        gravity_term = 3 * p.g / (2 * p.l)
        torque_term = 3.0 / (p.m * p.l**2)
        newthdot = thdot + (gravity_term * torch.sin(th) + torque_term * u) * p.dt
        newthdot = torch.clamp(newthdot, -p.max_speed, p.max_speed)
        newth = th + newthdot * p.dt
        next_state = torch.stack((newth, newthdot), dim=-1).to(state.dtype)
        terminated = torch.zeros(th.shape, dtype=torch.bool, device=th.device)
        return next_state, (-costs).to(state.dtype), terminated

    def observe(self, state: Tensor) -> Tensor:
        """``[..., 3]``: ``(cos θ, sin θ, θ̇)`` (Gymnasium's, which it rounds to float32)."""
        th, thdot = check_state(self.name, state, self.state_dim).unbind(-1)
        return torch.stack((torch.cos(th), torch.sin(th), thdot), dim=-1)
