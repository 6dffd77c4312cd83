"""A linear-quadratic regulator: the policy landscape with a closed form, for the tests.

Dynamics ``s_{t+1} = A s_t + B a_t``, reward ``r_t = −(s_tᵀ Q s_t + a_tᵀ R a_t)``,
initial states ``s_0 ~ 𝒩(0, σ0² I)`` drawn from Gymnasium's generator of each reset
seed. Under a linear policy ``a = −K s`` (an ``nn.Linear(n, m, bias=False)`` with
weight ``−K``) the closed loop is ``s_t = Mᵗ s_0`` with ``M = A − B K``, and the
discounted return of an episode of horizon ``T`` is

    G(s_0) = −s_0ᵀ P_T s_0,    P_T = Σ_{t<T} γᵗ (Mᵗ)ᵀ (Q + Kᵀ R K) Mᵗ,

computed by :func:`lqr_return` with the recursion ``P_{t+1} = (Q + KᵀRK) + γ Mᵀ P_t M``
(Bertsekas, "Dynamic Programming and Optimal Control", ch. 4). The return is
smooth in ``K``, so gradients and Hessians of it are exact too.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from .._checks import check_int, check_number
from ..errors import BasinscopeError
from ._envs import check_action, check_state, initial_states


class LQR:
    """A batched, stateless linear-quadratic regulator (continuous actions, no termination).

    Args:
        A: ``[n, n]`` dynamics; B: ``[n, m]`` input matrix.
        Q: ``[n, n]`` state cost (symmetric positive semi-definite); R: ``[m, m]`` action
            cost (symmetric positive definite).
        init_scale: σ0 of the Gaussian initial states.
        max_steps: the horizon ``T``.
    """

    name = "LQR"
    discrete = False
    n_actions = None

    def __init__(
        self,
        A: Sequence,
        B: Sequence,
        Q: Sequence,
        R: Sequence,
        *,
        init_scale: float = 1.0,
        max_steps: int = 100,
    ) -> None:
        self.A, self.B, self.Q, self.R = (np.asarray(m, dtype=np.float64) for m in (A, B, Q, R))
        n, m = self.B.shape if self.B.ndim == 2 else (0, 0)
        if n == 0 or self.A.shape != (n, n) or self.Q.shape != (n, n) or self.R.shape != (m, m):
            raise BasinscopeError(
                "LQR needs A [n, n], B [n, m], Q [n, n] and R [m, m], got "
                f"{self.A.shape}, {self.B.shape}, {self.Q.shape}, {self.R.shape}"
            )
        if not all(np.isfinite(x).all() for x in (self.A, self.B, self.Q, self.R)):
            raise BasinscopeError("LQR matrices must be finite")
        self.state_dim = self.obs_dim = n
        self.action_dim = m
        self.action_shape = (m,)
        self._matrices = tuple(torch.from_numpy(m) for m in (self.A, self.B, self.Q, self.R))
        self.init_scale = check_number("init_scale", init_scale, positive=True)
        self.max_steps = check_int("max_steps", max_steps, minimum=1)

    def reset(
        self, seeds: Sequence[int], dtype: torch.dtype = torch.float64, device=None
    ) -> Tensor:
        """``[E, n]`` initial states, row ``i`` drawn as ``σ0·normal(n)`` from the generator
        ``gymnasium.utils.seeding.np_random(seeds[i])``."""
        n, scale = self.state_dim, self.init_scale
        return initial_states(
            self.name, seeds, lambda g: scale * g.standard_normal(n), dtype, device
        )

    def step(self, state: Tensor, action: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(A s + B a, −(sᵀQs + aᵀRa), False)`` for every episode."""
        s = check_state(self.name, state, self.state_dim)
        a = check_action(self.name, action, s, self.action_shape).to(s.dtype)
        A, B, Q, R = (m.to(s) for m in self._matrices)
        reward = -((s @ Q) * s).sum(-1) - ((a @ R) * a).sum(-1)
        return s @ A.T + a @ B.T, reward, torch.zeros(s.shape[:-1], dtype=torch.bool)

    def observe(self, state: Tensor) -> Tensor:
        """The policy sees the state itself."""
        return check_state(self.name, state, self.state_dim)


def lqr_return(env: LQR, K: np.ndarray, s0: np.ndarray, gamma: float = 1.0) -> np.ndarray:
    """The closed-form discounted return ``−s_0ᵀ P_T s_0`` of each initial state (rows of
    ``s0``) under ``a = −K s`` over the horizon ``env.max_steps`` (float64)."""
    K = np.asarray(K, dtype=np.float64)
    M = env.A - env.B @ K
    C = env.Q + K.T @ env.R @ K
    P = np.zeros_like(env.A)
    for _ in range(env.max_steps):
        P = C + gamma * M.T @ P @ M
    s0 = np.asarray(s0, dtype=np.float64)
    return -np.einsum("ei,ij,ej->e", s0, P, s0)
