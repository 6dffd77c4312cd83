"""The negative return as an Objective: LQR closed form, common random numbers, measures."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import basinscope as bs
from basinscope import policy as P
from basinscope import sharpness
from basinscope.errors import BasinscopeError

A, B, Q, R = [[1.0, 0.1], [0.0, 1.0]], [[0.0], [0.1]], np.eye(2), [[0.1]]
K0 = np.array([[1.0, 1.5]])


def _lqr(horizon: int = 60, gamma: float = 0.95, episodes: int = 8):
    env = P.LQR(A, B, Q, R, max_steps=horizon)
    pol = torch.nn.Linear(2, 1, bias=False).double()
    with torch.no_grad():
        pol.weight.copy_(torch.as_tensor(-K0))
    return env, pol, P.return_objective(pol, env, episodes=episodes, gamma=gamma)


def test_lqr_return_and_surface_match_the_closed_form():
    env, pol, obj = _lqr()
    s0 = env.reset(range(8)).numpy()
    closed = P.lqr_return(env, K0, s0, 0.95)
    np.testing.assert_allclose(P.episode_returns(obj).numpy(), closed, rtol=1e-12, atol=1e-10)
    assert obj.loss() == pytest.approx(-closed.mean(), rel=1e-12)
    mean, se = P.return_stats(obj, obj.theta0)
    assert float(mean[0]) == pytest.approx(closed.mean(), rel=1e-12)
    assert float(se[0]) == pytest.approx(closed.std(ddof=1) / np.sqrt(8), rel=1e-10)
    d = bs.random_directions(obj, 2, norm="none", seed=0)
    surf = bs.plane(obj, d[0], d[1], span=(-0.4, 0.4), steps=9)
    D1, D2 = d[0].numpy().reshape(1, 2), d[1].numpy().reshape(1, 2)
    for i, a in enumerate(surf.xcoordinates):
        for j, b in enumerate(surf.ycoordinates):
            K = K0 - a * D1 - b * D2  # the weights are −K
            want = -P.lqr_return(env, K, s0, 0.95).mean()
            assert surf.train_loss[i, j] == pytest.approx(want, rel=1e-10, abs=1e-10)
    # the return is smooth in K: its gradient is the closed form's (central differences)
    g = obj.grad(obj.theta0).numpy()
    h = 1e-6
    for k in range(2):
        e = np.zeros((1, 2))
        e[0, k] = h
        fd = (
            -P.lqr_return(env, K0 - e, s0, 0.95).mean() + P.lqr_return(env, K0 + e, s0, 0.95).mean()
        ) / (2 * h)
        assert g[k] == pytest.approx(fd, rel=1e-6)


def _cartpole_policy(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))


@pytest.mark.parametrize("stochastic", [False, True])
def test_same_seed_same_surface_however_batched(stochastic):
    pol, env = _cartpole_policy(), P.CartPole()
    before = [p.detach().clone() for p in pol.parameters()]
    kw = {"episodes": 12, "stochastic": stochastic, "horizon": 100}
    obj = P.return_objective(pol, env, **kw)
    d = bs.random_directions(obj, 2, seed=0)
    one = bs.plane(obj, d[0], d[1], steps=5)
    again = bs.plane(P.return_objective(pol, env, batch_size=5, **kw), d[0], d[1], steps=5, chunk=3)  # fmt: skip
    assert np.array_equal(one.train_loss, again.train_loss)  # bit for bit
    assert all(torch.equal(a, b) for a, b in zip(before, pol.parameters(), strict=True))
    # each episode's return is the episode alone, whatever else is in the batch
    alone = P.return_objective(pol, env, batch_size=1, **kw)
    assert torch.equal(P.episode_returns(alone), P.episode_returns(obj))
    # CartPole's reward is 1 a step: returns are whole episode lengths ≤ the horizon
    r = P.episode_returns(obj)
    assert torch.equal(r, r.round()) and bool((r >= 1).all() and (r <= 100).all())


def test_greedy_cartpole_returns_equal_gymnasium_episodes():
    gym = pytest.importorskip("gymnasium")
    pol, env = _cartpole_policy(3), P.CartPole()
    obj = P.return_objective(pol, env, episodes=4, seed=10)
    ours = P.episode_returns(obj).tolist()
    for i, want in enumerate(ours):
        g = gym.make("CartPole-v1")
        obs, _ = g.reset(seed=10 + i)
        total, done = 0.0, False
        while not done:
            with torch.no_grad():
                a = int(pol(torch.as_tensor(obs)).argmax())
            obs, r, term, trunc, _ = g.step(a)
            total, done = total + r, term or trunc
        assert total == want


def test_return_measures_work_and_gradients_are_refused_for_discrete_actions():
    pol, env = _cartpole_policy(), P.CartPole()
    obj = P.return_objective(pol, env, episodes=8)
    noise = sharpness.average_case(obj, 0.05, samples=4, seed=0)
    assert np.isfinite(noise.value) and noise.loss0 == pytest.approx(obj.loss())
    other = _cartpole_policy(1)
    path = bs.interpolate(obj, other, span=(0.0, 1.0), steps=5)
    assert path.train_loss[0] == pytest.approx(obj.loss())  # α = 0 is the policy itself
    obj_other = P.return_objective(other, env, episodes=8)
    assert path.train_loss[-1] == pytest.approx(obj_other.loss())
    with pytest.raises(BasinscopeError, match="piecewise constant"):
        obj.grad(obj.theta0)
    with pytest.raises(BasinscopeError, match="piecewise constant"):
        obj.hvp(obj.theta0, obj.theta0)


def _lqr_returns(env, Ks: np.ndarray, s0: np.ndarray, gamma: float) -> np.ndarray:
    """The closed form of :func:`policy.lqr_return` for many gains ``Ks [N, 1, 2]`` at once."""
    M = env.A[None] - env.B[None] @ Ks
    C = env.Q[None] + np.transpose(Ks, (0, 2, 1)) @ env.R[None] @ Ks
    P_ = np.zeros_like(M)
    for _ in range(env.max_steps):
        P_ = C + gamma * np.transpose(M, (0, 2, 1)) @ P_ @ M
    return -np.einsum("ei,nij,ej->n", s0, P_, s0) / len(s0)


def test_lqr_basin_volume_is_the_closed_form_area():
    """Two weights: the basin {θ : G(θ0) − G(θ) ≤ τ} (mean return) is a plane region whose
    area ½∮ r(φ)² dφ follows from the closed form; the Monte-Carlo estimate brackets it."""
    env, pol, obj = _lqr()
    s0 = env.reset(range(8)).numpy()
    g0 = P.lqr_return(env, K0, s0, 0.95).mean()
    phis = np.linspace(0, 2 * np.pi, 256, endpoint=False)
    u = np.stack([np.cos(phis), np.sin(phis)], 1)[:, None, :]  # [A, 1, 2]
    scan = np.logspace(-3, 3, 300)
    drops = g0 - _lqr_returns(
        env, (K0[None] - scan[None, :, None, None] * u[:, None]).reshape(-1, 1, 2), s0, 0.95
    )
    crossed = drops.reshape(len(phis), len(scan)) > 1.0
    assert crossed.any(1).all()
    first = crossed.argmax(1)  # the first crossing along each ray (star-convex estimate)
    lo, hi = np.where(first > 0, scan[first - 1], 0.0), scan[first]
    for _ in range(60):
        mid = (lo + hi) / 2
        out = g0 - _lqr_returns(env, K0[None] - mid[:, None, None] * u, s0, 0.95) > 1.0
        lo, hi = np.where(out, lo, mid), np.where(out, mid, hi)
    exact = np.log(np.pi * np.mean(hi**2))  # V_2(1)·⟨r²⟩ over uniform angles
    vol = bs.basin_volume(obj, 1.0, n_directions=64, rule="relative", seed=0, tolerance=1e-4)
    assert vol.crossed.all() and vol.ci[0] <= exact <= vol.ci[1]
    assert vol.log_volume == pytest.approx(exact, abs=0.25)


def test_bad_arguments_are_refused():
    pol, env = _cartpole_policy(), P.CartPole()
    for kwargs, says in (
        ({"episodes": 0}, "episodes"),
        ({"gamma": 1.5}, "gamma"),
        ({"horizon": 0}, "horizon"),
        ({"action_std": 0.3}, "action_std"),
        ({"seed": -1}, "seed"),
    ):
        with pytest.raises(BasinscopeError, match=says):
            P.return_objective(pol, env, **kwargs)
    with pytest.raises(BasinscopeError, match="batched environment"):
        P.return_objective(pol, object())
    with pytest.raises(BasinscopeError, match="LQR needs"):
        P.LQR([[1.0]], [[1.0]], np.eye(2), [[1.0]])


@pytest.mark.parametrize("stochastic", [False, True])
def test_the_rollout_engine_is_planned_and_equals_the_plain_engine(stochastic):
    """All points' episodes stepped at once give each point's own returns, bit for bit."""
    from basinscope.objective import PlainEngine

    pol, env = _cartpole_policy(2), P.CartPole()
    obj = P.return_objective(pol, env, episodes=6, horizon=200, stochastic=stochastic)
    assert obj.plan.name == "rollout"
    d = bs.random_directions(obj, 2, seed=0)
    coef = torch.randn(70, 2, generator=torch.Generator().manual_seed(0)).to(obj.dtype)
    fast = obj.plan.engine.evaluate(obj.batches, coef, d, obj.theta0)[0]
    plain = PlainEngine().evaluate(obj.batches, coef, d, obj.theta0)[0]
    assert torch.equal(fast, plain)


def test_pendulum_returns_are_the_step_loop_and_differentiable():
    from basinscope._rng import item_generator

    env = P.Pendulum()
    torch.manual_seed(0)
    pol = torch.nn.Sequential(
        torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)
    ).double()
    for std in (None, 0.3):
        obj = P.return_objective(pol, env, episodes=3, gamma=0.9, horizon=40,
                                 stochastic=std is not None, action_std=std)  # fmt: skip
        s, total, disc = env.reset([0, 1, 2]), torch.zeros(3, dtype=torch.float64), 1.0
        noise = [
            torch.randn(40, 1, generator=item_generator(0, i), dtype=torch.float64)
            for i in range(3)
        ]
        with torch.no_grad():
            for t in range(40):
                a = pol(env.observe(s))
                if std is not None:
                    a = a + std * torch.stack([n[t] for n in noise])
                s, r, _ = env.step(s, a)
                total, disc = total + disc * r, disc * 0.9
        assert torch.allclose(P.episode_returns(obj), total, rtol=0, atol=1e-12)
    # continuous actions: the gradient through the dynamics is the derivative of the return
    v = torch.randn(obj.n, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    h = 1e-6
    fd = obj.evaluate(torch.stack([obj.theta0 + h * v, obj.theta0 - h * v]))[0].diff() / (-2 * h)
    assert float(obj.grad(obj.theta0) @ v) == pytest.approx(float(fd), rel=1e-4)
