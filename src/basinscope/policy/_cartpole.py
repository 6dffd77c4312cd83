"""Gymnasium's ``CartPole-v1`` as a batched, differentiable torch environment.

The state is ``s = (x, ẋ, θ, θ̇)``: the cart's position and velocity, the pole's
angle from upright and its angular velocity. Action ``a ∈ {0, 1}`` pushes the
cart with ``F = (2a − 1)·force_mag`` (left for 0, right for 1). With total mass
``M = m_c + m_p`` and ``ℓ`` half the pole's length (Gymnasium's ``length``), the
accelerations are Barto, Sutton & Anderson's (1983), as Gymnasium computes them:

    T  = (F + m_p ℓ θ̇² sin θ) / M
    θ̈  = (g sin θ − cos θ · T) / (ℓ (4/3 − m_p cos²θ / M))
    ẍ  = T − m_p ℓ θ̈ cos θ / M

and one step of length ``τ`` is explicit Euler (the default)

    x' = x + τ ẋ,   ẋ' = ẋ + τ ẍ,   θ' = θ + τ θ̇,   θ̇' = θ̇ + τ θ̈

or, with ``kinematics_integrator="semi-implicit euler"``, the velocities first
and the positions from the new velocities. The episode terminates when
``|x'| > x_threshold`` (2.4) or ``|θ'| > theta_threshold_radians`` (12°); the
reward is +1 for every step, the terminating step included (Gymnasium gives 0
for the steps after it, which it calls undefined: a rollout masks them). The
observation is the state itself (Gymnasium hands it out rounded to float32).

Every operation is Gymnasium's, in its order, on float64 (the constants that
involve parameters only, ``M`` and ``m_p ℓ``, are Python floats as there), so a
float64 trajectory agrees with Gymnasium's to the last bits that its ``np.cos``
and ``np.sin`` and torch's may differ in (about 1e-16 a step).

References: A. G. Barto, R. S. Sutton, C. W. Anderson, "Neuronlike adaptive
elements that can solve difficult learning control problems", IEEE Trans. SMC
13(5), 1983; R. V. Florian, "Correct equations for the dynamics of the
cart-pole system" (2007); Gymnasium's ``classic_control/cartpole.py``.
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

INTEGRATORS = ("euler", "semi-implicit euler")
_POSITIVE = ("masscart", "masspole", "length", "force_mag", "tau")
_THRESHOLDS = ("theta_threshold_radians", "x_threshold")


@dataclass(frozen=True)
class CartPoleParams:
    """CartPole's physical parameters, named and defaulted as Gymnasium's attributes.

    ``length`` is half the pole's length (the distance from the pivot to the
    pole's centre of mass), as in Gymnasium; ``tau`` the step in seconds;
    ``max_steps`` the time limit of ``CartPole-v1`` (500). Masses, lengths, the
    force, the step and the thresholds are positive finite numbers; gravity is
    any finite number. ``dataclasses.replace(params, length=0.7)`` checks again.
    """

    gravity: float = 9.8
    masscart: float = 1.0
    masspole: float = 0.1
    length: float = 0.5
    force_mag: float = 10.0
    tau: float = 0.02
    kinematics_integrator: str = "euler"
    theta_threshold_radians: float = 12 * 2 * math.pi / 360
    x_threshold: float = 2.4
    max_steps: int = 500

    def __post_init__(self) -> None:
        for name in _POSITIVE + _THRESHOLDS:
            value = check_positive(f"CartPoleParams.{name}", getattr(self, name))
            object.__setattr__(self, name, value)
        gravity = check_number("CartPoleParams.gravity", self.gravity)
        object.__setattr__(self, "gravity", gravity)
        if self.kinematics_integrator not in INTEGRATORS:
            raise BasinscopeError(
                f"CartPoleParams.kinematics_integrator must be 'euler' or "
                f"'semi-implicit euler', got {self.kinematics_integrator!r}"
            )
        steps = check_int("CartPoleParams.max_steps", self.max_steps, minimum=1)
        object.__setattr__(self, "max_steps", steps)

    @property
    def total_mass(self) -> float:
        """``M = m_p + m_c``, as Gymnasium's ``__init__`` derives it."""
        return self.masspole + self.masscart

    @property
    def polemass_length(self) -> float:
        """``m_p ℓ``, as Gymnasium's ``__init__`` derives it."""
        return self.masspole * self.length


class CartPole(PhysicsEnv):
    """Batched ``CartPole-v1``: ``reset(seeds)``, ``step(state, action)``, ``observe(state)``.

    ``CartPole(params=CartPoleParams(length=0.7))`` changes the physics (the
    robustness studies vary the pole, the masses and gravity). Actions are
    ``{0, 1}`` as an integer, boolean or floating tensor of the state's leading
    shape; a floating action ``a ∈ [0, 1]`` pushes with ``(2a − 1)·force_mag``,
    exactly Gymnasium's push at 0 and 1 and differentiable in between (values
    are not checked: that would synchronise a GPU every step).
    """

    name = "CartPole-v1"
    Params = CartPoleParams
    state_dim = 4
    obs_dim = 4
    discrete = True
    n_actions: int | None = 2
    action_dim: int | None = None
    action_shape: tuple[int, ...] = ()

    def reset(
        self,
        seeds: Sequence[int],
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """``[E, 4]``: row ``i`` is the state ``gymnasium.make("CartPole-v1").reset(seed=
        seeds[i])`` starts from, each coordinate uniform on (−0.05, 0.05)."""

        def draw(rng: np.random.Generator) -> np.ndarray:
            return rng.uniform(low=-0.05, high=0.05, size=(4,))

        return initial_states(self.name, seeds, draw, dtype, device)

    def step(self, state: Tensor, action: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """One step of every episode: ``(next_state [..., 4], reward [...], terminated [...])``.

        ``state`` is ``[..., 4]`` and ``action`` ``[...]``; the reward is 1 for
        every step (the terminating one included) and ``terminated`` says whether
        the next state is out of bounds.
        """
        state = check_state(self.name, state, self.state_dim)
        action = check_action(self.name, action, state, self.action_shape)
        p = self.params
        x, x_dot, theta, theta_dot = state.unbind(-1)
        force = (action.to(state.dtype) * 2.0 - 1.0) * p.force_mag
        costheta = torch.cos(theta)
        sintheta = torch.sin(theta)
        temp = (force + p.polemass_length * (theta_dot * theta_dot) * sintheta) / p.total_mass
        thetaacc = (p.gravity * sintheta - costheta * temp) / (
            p.length * (4.0 / 3.0 - p.masspole * (costheta * costheta) / p.total_mass)
        )
        xacc = temp - p.polemass_length * thetaacc * costheta / p.total_mass
        if p.kinematics_integrator == "euler":
            x = x + p.tau * x_dot
            x_dot = x_dot + p.tau * xacc
            theta = theta + p.tau * theta_dot
            theta_dot = theta_dot + p.tau * thetaacc
        else:  # semi-implicit euler
            x_dot = x_dot + p.tau * xacc
            x = x + p.tau * x_dot
            theta_dot = theta_dot + p.tau * thetaacc
            theta = theta + p.tau * theta_dot
        next_state = torch.stack((x, x_dot, theta, theta_dot), dim=-1)
        terminated = (
            (x < -p.x_threshold)
            | (x > p.x_threshold)
            | (theta < -p.theta_threshold_radians)
            | (theta > p.theta_threshold_radians)
        )
        return next_state, torch.ones_like(x), terminated

    def observe(self, state: Tensor) -> Tensor:
        """The observation is the state ``(x, ẋ, θ, θ̇)`` itself."""
        return check_state(self.name, state, self.state_dim)
