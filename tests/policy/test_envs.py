"""The batched CartPole-v1 and Pendulum-v1 against Gymnasium's own environments.

Each episode of Gymnasium's (``gymnasium.make(id).unwrapped``, stepped one at a
time with float64 actions) is compared with the same episode inside one batched
torch step, at every step: state, observation, reward and termination to 1e-12
(float64, absolute); the initial states of ``reset(seed=s)`` to 1e-15.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from basinscope.errors import BasinscopeError
from basinscope.policy import (
    BatchedEnv,
    CartPole,
    CartPoleParams,
    Pendulum,
    PendulumParams,
    angle_normalize,
)

gym = pytest.importorskip("gymnasium")

TOL = 1e-12
SEEDS = [0, 1, 7, 42, 2024, 2**40 + 3]
CARTPOLE_CHANGED = {
    "gravity": 11.2,
    "masscart": 1.3,
    "masspole": 0.25,
    "length": 0.7,
    "force_mag": 12.5,
    "tau": 0.01,
    "x_threshold": 3.0,
    "theta_threshold_radians": 0.25,
}
PENDULUM_CHANGED = {"g": 9.81, "m": 1.4, "l": 0.8, "dt": 0.04, "max_speed": 6.5, "max_torque": 1.5}


def _gym_envs(env_id: str, seeds: list[int], attrs: dict | None = None) -> list:
    """Gymnasium's environments after ``reset(seed=s)``, with ``attrs`` set on them."""
    envs = []
    for seed in seeds:
        env = gym.make(env_id)
        env.reset(seed=seed)
        raw = env.unwrapped
        for name, value in (attrs or {}).items():
            setattr(raw, name, value)
        if env_id == "CartPole-v1":  # derived in CartPoleEnv.__init__, so derive them again
            raw.total_mass = raw.masspole + raw.masscart
            raw.polemass_length = raw.masspole * raw.length
        envs.append(raw)
    return envs


def _close(ours: torch.Tensor, theirs, tol: float = TOL) -> None:
    np.testing.assert_allclose(ours.numpy(), np.asarray(theirs, dtype=np.float64), rtol=0, atol=tol)


def _cartpole_action(raw, rng: np.random.Generator, balance: bool) -> int:
    """A random push, or (``balance``) mostly a stabilising one so that episodes run long."""
    x, x_dot, theta, theta_dot = raw.state
    if balance and rng.random() > 0.2:
        return int(theta + 0.3 * theta_dot + 0.01 * x + 0.05 * x_dot > 0)
    return int(rng.integers(2))


def _compare_cartpole(env: CartPole, raws: list, seeds: list[int], balance: bool) -> np.ndarray:
    """Step both until every episode of Gymnasium's terminates (or 500 steps); the lengths."""
    rng = np.random.default_rng(5)
    state = env.reset(seeds)
    lengths = np.zeros(len(seeds), dtype=int)
    alive = np.ones(len(seeds), dtype=bool)
    for _ in range(env.max_steps):
        action = [_cartpole_action(raw, rng, balance) for raw in raws]
        state, reward, terminated = env.step(state, torch.tensor(action))
        live = np.flatnonzero(alive)
        steps = [raws[i].step(action[i]) for i in live]
        theirs = np.stack([raws[i].state for i in live])
        _close(state[live], theirs)
        _close(env.observe(state)[live], theirs)
        # Gymnasium hands the observation out rounded to float32
        assert np.array_equal(np.stack([s[0] for s in steps]), state[live].float().numpy())
        assert [s[1] for s in steps] == reward[live].tolist() == [1.0] * len(live)
        assert [s[2] for s in steps] == terminated[live].tolist()
        assert not any(s[3] for s in steps)
        lengths[live] += 1
        alive[live] = ~terminated[live].numpy()
        if not alive.any():
            break
    return lengths


@pytest.mark.parametrize("env_cls, env_id", [(CartPole, "CartPole-v1"), (Pendulum, "Pendulum-v1")])
def test_reset_is_gymnasiums(env_cls, env_id):
    env = env_cls()
    state = env.reset(SEEDS)
    assert state.shape == (len(SEEDS), env.state_dim) and state.dtype == torch.float64
    for row, seed in zip(state, SEEDS, strict=True):
        made = gym.make(env_id)
        obs, _ = made.reset(seed=seed)
        _close(row, made.unwrapped.state, 1e-15)
        _close(env.observe(row).float(), obs, 0.0)
    assert torch.equal(env.reset(SEEDS, dtype=torch.float32), state.float())
    assert torch.equal(env.reset(np.array(SEEDS[:2])), state[:2])


def test_cartpole_random_pushes_terminate_when_gymnasiums_do():
    lengths = _compare_cartpole(CartPole(), _gym_envs("CartPole-v1", SEEDS), SEEDS, False)
    assert (lengths < 500).all()  # every episode ended by termination, flags compared


def test_cartpole_long_balanced_episodes():
    lengths = _compare_cartpole(CartPole(), _gym_envs("CartPole-v1", SEEDS), SEEDS, True)
    assert lengths.min() >= 200


@pytest.mark.parametrize("integrator", ["euler", "semi-implicit euler"])
def test_cartpole_with_changed_physics(integrator):
    attrs = {**CARTPOLE_CHANGED, "kinematics_integrator": integrator}
    env = CartPole(params=CartPoleParams(**attrs))
    for balance in (False, True):
        _compare_cartpole(env, _gym_envs("CartPole-v1", SEEDS, attrs), SEEDS, balance)


def _compare_pendulum(env: Pendulum, raws: list, steps: int, dtype=np.float64) -> None:
    rng = np.random.default_rng(11)
    state = env.reset(SEEDS)
    for _ in range(steps):
        # beyond the torque limit at times, so the clip is exercised
        action = rng.uniform(-1.5, 1.5, (len(SEEDS), 1)) * env.params.max_torque
        action = action.astype(dtype)
        before = state
        state, reward, terminated = env.step(state, torch.from_numpy(action))
        assert state.dtype == reward.dtype == torch.float64 and not terminated.any()
        th = np.array([raw.state[0] for raw in raws])
        steps = [raw.step(a) for raw, a in zip(raws, action, strict=True)]
        theirs = np.stack([raw.state for raw in raws])
        _close(state, theirs)
        observed = env.observe(state)
        _close(observed, np.stack([np.cos(theirs[:, 0]), np.sin(theirs[:, 0]), theirs[:, 1]], -1))
        obs = np.stack([s[0] for s in steps])  # rounded to float32 by Gymnasium
        np.testing.assert_allclose(observed.float().numpy(), obs, rtol=2**-23)
        _close(reward, [s[1] for s in steps])
        assert not any(s[2] or s[3] for s in steps)
        _close(angle_normalize(before[:, 0]), ((th + np.pi) % (2 * np.pi)) - np.pi, 0.0)


def test_pendulum_steps_are_gymnasiums():
    _compare_pendulum(Pendulum(), _gym_envs("Pendulum-v1", SEEDS), 200)


def test_pendulum_with_changed_physics():
    env = Pendulum(params=PendulumParams(**PENDULUM_CHANGED))
    _compare_pendulum(env, _gym_envs("Pendulum-v1", SEEDS, PENDULUM_CHANGED), 200)


@pytest.mark.skipif(int(np.__version__.split(".")[0]) < 2, reason="NEP 50 promotion (NumPy 2)")
def test_pendulum_float32_torques_are_promoted_as_numpy_does():
    # Gymnasium's action space is float32: u² and 3/(ml²)·u are then float32 there, and here
    _compare_pendulum(Pendulum(), _gym_envs("Pendulum-v1", SEEDS), 50, np.float32)


def _batch_states(env) -> torch.Tensor:
    """``[3, 4, state_dim]`` states, one of them laid out column-major."""
    g = torch.Generator().manual_seed(3)
    base = env.reset(list(range(12))).reshape(3, 4, env.state_dim)
    return base + 0.2 * torch.randn(base.shape, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("env", [CartPole(), Pendulum()], ids=["cartpole", "pendulum"])
def test_a_batch_steps_as_each_episode_alone(env):
    g = torch.Generator().manual_seed(4)
    states = _batch_states(env)
    if env.discrete:
        actions = torch.randint(0, 2, states.shape[:-1], generator=g)
    else:
        actions = 3 * torch.rand(*states.shape[:-1], 1, generator=g, dtype=torch.float64) - 1.5
    together = env.step(states, actions)
    flat = states.reshape(-1, env.state_dim)
    column_major = flat.T.contiguous().T  # each coordinate contiguous across episodes
    layouts = env.step(column_major, actions.reshape(12, *env.action_shape))
    for k in range(12):
        i, j = divmod(k, 4)
        alone = env.step(states[i, j], actions[i, j])
        one = env.step(states[i, j : j + 1], actions[i, j : j + 1])
        for full, a, b, c in zip(together, alone, one, layouts, strict=True):
            assert torch.equal(full[i, j], a) and torch.equal(full[i, j], b[0])
            assert torch.equal(full[i, j], c[k])
    observed = env.observe(states)
    assert observed.shape == (3, 4, env.obs_dim)
    assert torch.equal(observed[1, 2], env.observe(states[1, 2]))


def test_gradients_flow_through_the_physics():
    cart, pend = CartPole(), Pendulum()
    s = (cart.reset([0, 1]) * 2).requires_grad_()
    a = torch.tensor([0.3, 0.8], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda s, a: cart.step(s, a)[0], (s, a))
    s = pend.reset([0, 1]).requires_grad_()
    u = torch.tensor([[0.5], [-1.2]], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda s, u: pend.step(s, u)[:2], (s, u))
    clipped = torch.tensor([[3.0], [-3.0]], dtype=torch.float64, requires_grad=True)
    pend.step(pend.reset([0, 1]), clipped)[0].sum().backward()
    assert torch.equal(clipped.grad, torch.zeros_like(clipped))  # a clipped torque moves nothing


def test_the_contract():
    cart, pend = CartPole(), Pendulum()
    assert isinstance(cart, BatchedEnv) and isinstance(pend, BatchedEnv)
    assert (cart.state_dim, cart.obs_dim, cart.n_actions, cart.action_dim) == (4, 4, 2, None)
    assert (pend.state_dim, pend.obs_dim, pend.n_actions, pend.action_dim) == (2, 3, None, 1)
    assert cart.discrete and not pend.discrete
    assert (cart.max_steps, pend.max_steps) == (500, 200)
    assert gym.make("CartPole-v1").spec.max_episode_steps == cart.max_steps
    assert gym.make("Pendulum-v1").spec.max_episode_steps == pend.max_steps
    raw = gym.make("CartPole-v1").unwrapped
    params = CartPoleParams()
    for field in dataclasses.fields(params):
        if field.name != "max_steps":
            assert getattr(params, field.name) == getattr(raw, field.name), field.name
    assert (params.total_mass, params.polemass_length) == (raw.total_mass, raw.polemass_length)
    raw = gym.make("Pendulum-v1").unwrapped
    for field in dataclasses.fields(PendulumParams):
        if field.name != "max_steps":
            assert getattr(PendulumParams(), field.name) == getattr(raw, field.name), field.name
    assert repr(CartPole(CartPoleParams(length=0.7))) == "CartPole(length=0.7)"
    assert CartPole(CartPoleParams(masscart=2)).params.masscart == 2.0


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: CartPoleParams(length=-0.5), "CartPoleParams.length must be a positive"),
        (lambda: CartPoleParams(masspole=0), "CartPoleParams.masspole must be a positive"),
        (lambda: CartPoleParams(tau=float("inf")), "CartPoleParams.tau must be a positive"),
        (lambda: CartPoleParams(gravity=float("nan")), "CartPoleParams.gravity must be a finite"),
        (lambda: CartPoleParams(kinematics_integrator="rk4"), "'euler' or 'semi-implicit euler'"),
        (lambda: CartPoleParams(max_steps=0), "CartPoleParams.max_steps must be an integer >= 1"),
        (lambda: dataclasses.replace(CartPoleParams(), masscart=-1), "masscart must be a pos"),
        (lambda: PendulumParams(dt=0.0), "PendulumParams.dt must be a positive"),
        (lambda: PendulumParams(l="1"), "PendulumParams.l must be a positive"),
        (lambda: PendulumParams(g=float("-inf")), "PendulumParams.g must be a finite"),
        (lambda: CartPole(params={"length": 0.7}), "must be a CartPoleParams, got dict"),
        (lambda: Pendulum(params=CartPoleParams()), "must be a PendulumParams"),
        (lambda: CartPole().reset(3), "takes a sequence of seeds"),
        (lambda: CartPole().reset([1, -2]), "seed must be an integer >= 0"),
        (lambda: CartPole().reset([1.5]), "seed must be an integer"),
        (lambda: Pendulum().reset([]), "at least one seed"),
        (lambda: Pendulum().reset([0], dtype=torch.int64), "floating torch dtype"),
        (lambda: CartPole().step(torch.zeros(2, 3), torch.zeros(2)), r"shape \[\.\.\., 4\]"),
        (lambda: CartPole().step(torch.zeros(2, 4), torch.zeros(2, 1)), r"shape \(2,\)"),
        (lambda: CartPole().step(np.zeros(4), torch.zeros(())), "must be a torch tensor"),
        (lambda: Pendulum().step(torch.zeros(2, 2), torch.zeros(2)), r"shape \(2, 1\)"),
        (lambda: Pendulum().step(torch.zeros(2), torch.ones(1, dtype=torch.long)), "floating"),
        (lambda: Pendulum().observe(torch.zeros(3, dtype=torch.long)), "floating tensor"),
    ],
)
def test_refusals(make, match):
    with pytest.raises(BasinscopeError, match=match):
        make()
