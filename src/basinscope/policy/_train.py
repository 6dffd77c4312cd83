"""Training a policy network by policy gradients: REINFORCE with a baseline, or PPO.

:func:`train_policy` takes any ``nn.Module`` policy (observations ``[B, obs_dim]``
to logits ``[B, n_actions]``, or to actions ``[B, action_dim]`` or ``(μ, log σ)``)
and a batched environment, and trains a deep copy of it. Iteration ``k`` collects
E episodes in parallel (:func:`~basinscope.policy._reinforce.collect`) that start
from ``reset`` seeds hashed from ``(seed, k)`` and draw their actions, and PPO its
minibatch shuffles, from the generator ``item_generator(seed, k)``; then one update:

* ``"reinforce"``: the score-function gradient with a learned state-value baseline
  (Williams 1992; :mod:`basinscope.policy._reinforce` has the losses);
* ``"ppo"``: the clipped surrogate over GAE(λ) advantages (Schulman et al. 2017;
  :mod:`basinscope.policy._ppo`).

Nothing reads the global RNG (the default critic is initialised from the seed too),
so a seed gives the same weights bit for bit under the same thread count.

With ``out_dir`` the run is resumable: after every iteration ``checkpoint.pt``
(both networks, both Adam states, the iteration, the history and the run's key)
and then ``metrics.json`` are written atomically; a rerun with the same arguments
(``iterations`` may grow) resumes after the last finished iteration and ends with
the weights of an uninterrupted run. The key holds every setting, the initial
weights' digests, the environment's and the device; a directory holding a run of
other settings is refused in one sentence, never overwritten (another torch version
or thread count only warns: the rounding may differ).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .._checks import check_int, check_number, check_output_dir, check_seed
from .._io import atomic_torch_save, atomic_write_json
from .._keys import check_key, environment, tensor_digest, value_digest, warn_soft
from .._lock import output_lock
from .._rng import item_generator
from ..errors import BasinscopeError
from ._ppo import ppo_update
from ._reinforce import Learner, collect, gaussian, reinforce_update, state_values

ALGORITHMS = ("ppo", "reinforce")
CHECKPOINT_FILE = "checkpoint.pt"
METRICS_FILE = "metrics.json"
_RESET, _CRITIC = 1, 2  # tags of the seed streams beside item_generator's
_FRESH = "delete it or choose another out_dir"


@dataclass
class PolicyRun:
    """The result of :func:`train_policy`.

    Attributes:
        policy: the trained copy of the policy.
        value: the trained critic (the baseline of REINFORCE).
        history: one dict an iteration: ``iteration``, ``mean_return`` (undiscounted,
            over the iteration's episodes), ``mean_length``, ``steps``, the losses
            and ``entropy`` (PPO adds ``approx_kl`` and ``clip_fraction``).
        final_return: the last iteration's ``mean_return``.
        out_dir: the run directory, if any.
    """

    policy: nn.Module
    value: nn.Module
    history: list[dict[str, Any]]
    final_return: float
    out_dir: Path | None = None


def _stream_seed(seed: int, index: int, tag: int) -> np.random.SeedSequence:
    return np.random.SeedSequence([seed & 0xFFFFFFFF, seed >> 32, index, tag])


def episode_seeds(seed: int, iteration: int, episodes: int) -> list[int]:
    """The ``reset`` seeds of iteration ``iteration``'s episodes (64-bit, hashed)."""
    words = _stream_seed(seed, iteration, _RESET).generate_state(episodes, dtype=np.uint64)
    return [int(w) for w in words]


def default_value(
    obs_dim: int, seed: int, dtype: torch.dtype, device: torch.device, hidden: int = 64
) -> nn.Sequential:
    """The default critic: ``obs_dim → 64 → 64 → 1`` with tanh, every weight and bias
    ``U(−1/√fan_in, 1/√fan_in)`` (PyTorch's default) drawn from a generator of ``seed``."""
    g = torch.Generator().manual_seed(int(_stream_seed(seed, 0, _CRITIC).generate_state(1)[0]))
    sizes = [(obs_dim, hidden), (hidden, hidden), (hidden, 1)]
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(sizes):
        linear = nn.utils.skip_init(nn.Linear, n_in, n_out, dtype=dtype)
        bound = 1 / math.sqrt(n_in)
        with torch.no_grad():
            linear.weight.uniform_(-bound, bound, generator=g)
            linear.bias.uniform_(-bound, bound, generator=g)
        layers += [linear, nn.Tanh()] if i < len(sizes) - 1 else [linear]
    return nn.Sequential(*layers).to(device)


def _float_parameter(module: nn.Module, what: str) -> Tensor:
    """The first trainable floating parameter of ``module`` (its dtype and device rule)."""
    for p in module.parameters():
        if p.requires_grad and p.is_floating_point():
            return p
    raise BasinscopeError(f"the {what} has no trainable floating-point parameters to train")


def _check_env(env: Any) -> None:
    for attr in ("reset", "step", "observe", "discrete", "max_steps", "obs_dim"):
        if not hasattr(env, attr):
            raise BasinscopeError(
                f"env must be a batched environment (CartPole, Pendulum, LQR), got "
                f"{type(env).__name__} without {attr!r}"
            )
    width = "n_actions" if env.discrete else "action_dim"
    check_int(f"env.{width}", getattr(env, width, None), minimum=1)


def _fraction(name: str, value: Any, *, closed: bool) -> float:
    value = check_number(name, value)
    if not (0 <= value <= 1 if closed else 0 < value <= 1):
        raise BasinscopeError(f"{name} must lie in {'[0' if closed else '(0'}, 1], got {value}")
    return value


def _settings(env: Any, a: dict[str, Any]) -> dict[str, Any]:
    """Every setting of the run checked (one sentence each), those that matter kept."""
    if a["algorithm"] not in ALGORITHMS:
        raise BasinscopeError(f"algorithm must be 'ppo' or 'reinforce', got {a['algorithm']!r}")
    s: dict[str, Any] = {
        "algorithm": a["algorithm"],
        "episodes_per_iteration": check_int(
            "episodes_per_iteration", a["episodes_per_iteration"], minimum=1
        ),
        "gamma": _fraction("gamma", a["gamma"], closed=False),
        "lr": check_number("lr", a["lr"], positive=True),
        "seed": check_seed("seed", a["seed"]),
        "horizon": env.max_steps
        if a["horizon"] is None
        else check_int("horizon", a["horizon"], minimum=1),
        "entropy": check_number("entropy", a["entropy"], nonnegative=True),
    }
    if a["algorithm"] == "ppo":
        s["ppo_epochs"] = check_int("ppo_epochs", a["ppo_epochs"], minimum=1)
        s["clip"] = check_number("clip", a["clip"], positive=True)
        s["minibatches"] = check_int("minibatches", a["minibatches"], minimum=1)
        s["gae_lambda"] = _fraction("gae_lambda", a["gae_lambda"], closed=True)
    std = check_number("action_std", a["action_std"], positive=True)
    if not env.discrete:
        s["action_std"] = std
    if not isinstance(a["progress"], bool):
        raise BasinscopeError(f"progress must be True or False, got {a['progress']!r}")
    return s


def _plain(value: Any) -> Any:
    """``value`` as JSON scalars and lists (arrays, tensors, dataclasses, containers)."""
    if isinstance(value, np.ndarray | Tensor):
        return [str(value.dtype), list(value.shape), value.tolist()]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _plain(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return repr(value)


def _env_key(env: Any) -> str:
    """The environment's class, name, time limit and attributes, hashed."""
    attrs = vars(env) if hasattr(env, "__dict__") else {}
    facts = {"name": getattr(env, "name", None), "max_steps": env.max_steps, "attrs": attrs}
    return f"{type(env).__qualname__} {value_digest(_plain(facts))}"


def _module_key(module: nn.Module) -> str:
    """The module's class and its initial state (names, dtypes, shapes, bytes), hashed."""
    state = [(name, tensor_digest(t)) for name, t in module.state_dict().items()]
    return f"{type(module).__qualname__} {value_digest(state)}"


def _check_outputs(env: Any, learner: Learner, start: Tensor) -> None:
    """The policy's and the critic's outputs on the first episodes have the right shapes
    (on copies, so that a train-mode BatchNorm keeps its statistics)."""
    obs = env.observe(start)
    b = len(obs)
    with torch.no_grad():
        out = copy.deepcopy(learner.policy)(obs.to(learner.dtype))
        state_values(copy.deepcopy(learner.value), obs, learner.value_dtype)
    if env.discrete:
        want = f"logits [B, {env.n_actions}]"
        ok = isinstance(out, Tensor) and tuple(out.shape) == (b, env.n_actions)
    else:
        want = f"actions [B, {env.action_dim}] or a pair (μ, log σ)"
        ok = isinstance(out, Tensor) and tuple(out.shape) == (b, env.action_dim)
        if isinstance(out, tuple | list) and len(out) == 2:
            try:
                mean, std = gaussian(out, 1.0)
                ok = tuple(mean.shape) == (b, env.action_dim) and tuple(std.shape) == (
                    b,
                    env.action_dim,
                )
            except (RuntimeError, AttributeError):
                ok = False
    if not ok:
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise BasinscopeError(
            f"the policy must map observations [B, {env.obs_dim}] to {want} for "
            f"{env.name}, got {got} for B = {b}"
        )


def _resume(out: Path, key: dict[str, Any], learner: Learner, iterations: int) -> list[dict]:
    """Restore the run saved in ``out`` (its history), or ``[]`` when there is none."""
    path = out / CHECKPOINT_FILE
    if not path.is_file():
        if (out / METRICS_FILE).exists():
            raise BasinscopeError(
                f"{str(out)!r} holds a metrics.json without a policy checkpoint.pt (another "
                f"run's results); {_FRESH}"
            )
        return []
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        saved_key = saved["key"]
    except Exception:  # any unreadable file is refused, never overwritten
        raise BasinscopeError(
            f"{str(path)!r} cannot be read as a policy training checkpoint; {_FRESH}"
        ) from None
    soft = check_key(path, saved_key, key, what="a policy training run", fresh=_FRESH)
    warn_soft(path, soft, saved_key, key)
    done = saved["iteration"]
    if done > iterations:
        raise BasinscopeError(
            f"{str(out)!r} holds {done} finished iterations, more than iterations={iterations}; "
            f"ask for at least {done} or {_FRESH}"
        )
    learner.policy.load_state_dict(saved["policy"])
    learner.value.load_state_dict(saved["value"])
    learner.policy_optimizer.load_state_dict(saved["policy_optimizer"])
    learner.value_optimizer.load_state_dict(saved["value_optimizer"])
    return list(saved["history"])


def _save(out: Path, key: dict[str, Any], learner: Learner, history: list[dict]) -> None:
    """The checkpoint, then ``metrics.json`` (both atomic)."""
    atomic_torch_save(
        out / CHECKPOINT_FILE,
        {
            "key": key,
            "iteration": len(history),
            "policy": learner.policy.state_dict(),
            "value": learner.value.state_dict(),
            "policy_optimizer": learner.policy_optimizer.state_dict(),
            "value_optimizer": learner.value_optimizer.state_dict(),
            "history": history,
        },
    )
    metrics = {
        "settings": key,
        "iterations_done": len(history),
        "final_return": history[-1]["mean_return"],
        "history": history,
    }
    atomic_write_json(out / METRICS_FILE, metrics)


def _iterate(
    learner: Learner,
    env: Any,
    s: dict[str, Any],
    iterations: int,
    history: list[dict],
    save: Any,
    progress: bool,
) -> None:
    """Iterations ``len(history)`` to ``iterations − 1``: collect, update, record, save."""
    seed, n = s["seed"], s["episodes_per_iteration"]
    device = _float_parameter(learner.policy, "policy").device
    bar = tqdm(
        total=iterations,
        initial=len(history),
        disable=not progress,
        desc=f"{s['algorithm']} {getattr(env, 'name', type(env).__name__)}",
        unit="it",
    )
    with bar:
        for it in range(len(history), iterations):
            g = item_generator(seed, it)
            start = env.reset(episode_seeds(seed, it, n), device=device)
            episodes = collect(
                learner.policy, env, start, horizon=s["horizon"], generator=g,
                action_std=learner.action_std, dtype=learner.dtype,
            )  # fmt: skip
            if s["algorithm"] == "ppo":
                losses = ppo_update(
                    learner, episodes, lam=s["gae_lambda"], clip=s["clip"],
                    epochs=s["ppo_epochs"], minibatches=s["minibatches"], generator=g,
                )  # fmt: skip
            else:
                losses = reinforce_update(learner, episodes)
            record = {
                "iteration": it + 1,
                "mean_return": float(episodes.returns.mean()),
                "mean_length": float(episodes.lengths.double().mean()),
                "steps": int(episodes.alive.sum()),
                **losses,
            }
            history.append(record)
            if save is not None:
                save(history)
            bar.set_postfix(ret=f"{record['mean_return']:.4g}", refresh=False)
            bar.update()


def train_policy(
    policy: nn.Module,
    env: Any,
    *,
    algorithm: str = "ppo",
    iterations: int,
    episodes_per_iteration: int = 16,
    gamma: float = 0.99,
    lr: float = 3e-3,
    seed: int = 0,
    horizon: int | None = None,
    ppo_epochs: int = 4,
    clip: float = 0.2,
    minibatches: int = 4,
    gae_lambda: float = 0.95,
    entropy: float = 0.0,
    action_std: float = 0.5,
    value: nn.Module | None = None,
    out_dir: str | Path | None = None,
    progress: bool = False,
) -> PolicyRun:
    """Train a copy of ``policy`` in ``env`` by REINFORCE or PPO (see the module).

    Args:
        policy: any ``nn.Module``: observations ``[B, obs_dim]`` to logits ``[B, n_actions]``
            (a Categorical over their softmax) or actions ``[B, action_dim]`` (a Gaussian
            of σ ``action_std`` around them) or ``(μ, log σ)``. Never modified.
        env: a batched environment (:class:`CartPole`, :class:`Pendulum`, :class:`LQR`).
        algorithm: ``"ppo"`` or ``"reinforce"``.
        iterations: rounds of collecting ``episodes_per_iteration`` episodes and updating.
        gamma: the discount γ ∈ (0, 1]; lr: Adam's step for both networks.
        seed: seeds the episodes, the action noise, the shuffles and the default critic.
        horizon: steps per episode at most (default ``env.max_steps``).
        ppo_epochs, clip, minibatches, gae_lambda: PPO's passes, ε, minibatches, λ.
        entropy: the weight β of the entropy bonus.
        value: the critic (observations to ``[B]`` or ``[B, 1]``), copied; default
            :func:`default_value`.
        out_dir: a run directory to checkpoint to and resume from.
        progress: a progress bar on stderr.
    """
    if not isinstance(policy, nn.Module):
        raise BasinscopeError(f"policy must be a torch.nn.Module, got {type(policy).__name__}")
    if value is not None and not isinstance(value, nn.Module):
        raise BasinscopeError(
            f"value must be a torch.nn.Module or None, got {type(value).__name__}"
        )
    _check_env(env)
    iterations = check_int("iterations", iterations, minimum=1)
    s = _settings(env, locals())
    out = None if out_dir is None else _check_out_dir(out_dir)
    learner = _learner(policy, value, env, s)
    device = _float_parameter(learner.policy, "policy").device
    seeds = episode_seeds(s["seed"], 0, s["episodes_per_iteration"])
    _check_outputs(env, learner, env.reset(seeds, device=device))
    key = {
        **s,
        "env": _env_key(env),
        "policy": _module_key(learner.policy),
        "value": _module_key(learner.value),
        **environment(device),
    }
    history: list[dict[str, Any]] = []
    if out is None:
        _iterate(learner, env, s, iterations, history, None, progress)
    else:
        out.mkdir(parents=True, exist_ok=True)
        with output_lock(out, "the run directory", is_dir=True):
            history = _resume(out, key, learner, iterations)
            save = lambda h: _save(out, key, learner, h)  # noqa: E731
            _iterate(learner, env, s, iterations, history, save, progress)
    final = history[-1]["mean_return"]
    return PolicyRun(learner.policy, learner.value, history, final, out)


def _learner(policy: nn.Module, value: nn.Module | None, env: Any, s: dict[str, Any]) -> Learner:
    """Copies of the policy and the critic (default: :func:`default_value` in the policy's
    dtype and device), an Adam optimiser for each and the loss settings."""
    p = _float_parameter(policy, "policy")
    net = copy.deepcopy(policy)
    critic = (
        default_value(env.obs_dim, s["seed"], p.dtype, p.device)
        if value is None
        else copy.deepcopy(value)
    )
    return Learner(
        policy=net,
        value=critic,
        policy_optimizer=torch.optim.Adam(net.parameters(), lr=s["lr"]),
        value_optimizer=torch.optim.Adam(critic.parameters(), lr=s["lr"]),
        discrete=bool(env.discrete),
        dtype=p.dtype,
        value_dtype=_float_parameter(critic, "value network").dtype,
        action_std=s.get("action_std", 1.0),  # a discrete policy has no σ
        gamma=s["gamma"],
        entropy=s["entropy"],
    )


def _check_out_dir(out_dir: Any) -> Path:
    if not isinstance(out_dir, str | Path) or not str(out_dir).strip():
        raise BasinscopeError(f"out_dir must be the path of a run directory, got {out_dir!r}")
    return check_output_dir(out_dir, "the run directory")
