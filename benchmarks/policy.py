"""A 21×21 reward surface: the textbook loop against basinscope, same points, same episodes.

The textbook loop (as in Sullivan et al. 2022's reward-surface scripts): for every
grid point write the weights into the policy, then play each episode one by one in
Gymnasium's own ``CartPole-v1`` (``reset(seed=i)``, greedy actions from the policy
on each float32 observation, until termination or the 500-step limit) and average
the returns. basinscope: ``policy.return_objective`` (the batched torch CartPole,
all episodes of a point at once, the engine its plan picks) and ``bs.plane`` on the
same filter-normalised directions. The policy is an MLP whose weights start at a
stabilising controller, so episodes near the centre last the full 500 steps. Every
point's mean return is compared (a greedy CartPole return is a whole number of
steps: equal, or the point is counted as differing). The last line prints the ratio.

    python benchmarks/policy.py [--steps 21] [--episodes 8] [--threads N]
"""

from __future__ import annotations

import argparse
import time

import gymnasium as gym
import numpy as np
import torch
from torch import nn
from torch.nn.utils import vector_to_parameters

import basinscope as bs
from basinscope import policy as P


def controller(seed: int = 0) -> nn.Module:
    """An MLP 4-16-2 whose first unit is the classic PD balance law on (θ, θ̇, x, ẋ)."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 2))
    with torch.no_grad():
        net[0].weight.mul_(0.1)
        net[0].weight[0] = torch.tensor([0.5, 1.0, 10.0, 2.0])
        net[2].weight.mul_(0.1)
        net[2].weight[:, 0] = torch.tensor([-3.0, 3.0])
    return net


def textbook(policy: nn.Module, points: torch.Tensor, episodes: int) -> np.ndarray:
    """Mean return at every point: weights written in, Gymnasium episodes one by one."""
    env = gym.make("CartPole-v1")
    out = []
    for theta in points:
        vector_to_parameters(theta.to(torch.float32), policy.parameters())
        total = 0.0
        for i in range(episodes):
            obs, _ = env.reset(seed=i)
            done = False
            while not done:
                with torch.no_grad():
                    action = int(policy(torch.as_tensor(obs)).argmax())
                obs, reward, terminated, truncated, _ = env.step(action)
                total += reward
                done = terminated or truncated
        out.append(total / episodes)
    return np.array(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=21)
    p.add_argument("--episodes", type=int, default=8)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    policy = controller()
    obj = P.return_objective(policy, P.CartPole(), episodes=args.episodes)
    d = bs.random_directions(obj, 2, norm="filter", seed=0)
    t0 = time.perf_counter()
    surf = bs.plane(obj, d[0], d[1], span=(-1, 1), steps=args.steps)
    t_ours = time.perf_counter() - t0
    coef = np.stack(np.meshgrid(surf.xcoordinates, surf.ycoordinates, indexing="ij"), -1)
    coef = torch.as_tensor(coef.reshape(-1, 2), dtype=torch.float64)
    points = obj.theta0.double()[None] + coef @ d.double()
    t0 = time.perf_counter()
    ref = textbook(controller(), points, args.episodes)
    t_text = time.perf_counter() - t0
    ours = -surf.train_loss.reshape(-1)
    same = np.sum(ours == ref)
    print(f"plan: {obj.plan}")
    print(
        f"{len(ref)} points × {args.episodes} episodes: mean return at the centre "
        f"{ours[len(ours) // 2]:.1f}, range {ours.min():.1f} … {ours.max():.1f}"
    )
    print(f"textbook loop (Gymnasium, episode by episode): {t_text:7.2f} s")
    print(f"basinscope (batched torch CartPole)          : {t_ours:7.2f} s")
    print(
        f"the same mean return at {same} of {len(ref)} points "
        f"(largest difference {np.abs(ours - ref).max():.3f})"
    )
    print(f"policy surface: {t_text / t_ours:.1f}x faster than the textbook loop")


if __name__ == "__main__":
    main()
