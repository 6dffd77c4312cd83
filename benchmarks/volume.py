"""Basin-volume radius search: basinscope against Fan et al.'s fixed grid.

Fan, Sandlund & Ko ("Sharp Minima Can Generalize") find each ray's radius by
scanning a fixed grid of 100 coefficients ``R·linspace(0, 1, 100)²`` and taking
the first one whose loss crosses the threshold. basinscope doubles then bisects
(``basinscope.landscape.basin_volume``). Both run here on the same trained model,
the same rays (``ray_directions``, seeded by index) and the same threshold, on
the same evaluation engine, so the difference is the search alone.

Fairness: the grid is given the smallest power-of-two ``R`` that contains every
crossing (it cannot know it in advance; ours finds it by doubling), and ours is
given a tolerance equal to the grid's *best* relative precision on any ray, so
ours is at least as precise on every ray. Both radii are checked to agree
within the sum of their half-widths. The last line prints the ratios.

    python benchmarks/volume.py [--rays 64] [--threads N]
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
from torch import nn

from basinscope.landscape import basin_volume, ray_directions, volume_from_radii
from basinscope.objective import Objective
from basinscope.training import TrainConfig, load_dataset, train

GRID = np.linspace(0.0, 1.0, 100) ** 2


def grid_search(obj: Objective, dirs: torch.Tensor, level: float, R: float):
    """The paper's search: loss at all 100 grid radii of every ray; first crossing."""
    radii, halfwidth = [], []
    coef = torch.as_tensor(R * GRID, dtype=torch.float64)[:, None]
    for u in dirs:
        loss, _ = obj.evaluate_affine(coef, u[None])
        above = np.flatnonzero(loss.numpy() > level)
        j = int(above[0])
        lo, hi = R * GRID[j - 1], R * GRID[j]
        radii.append(0.5 * (lo + hi))
        halfwidth.append(0.5 * (hi - lo))
    return np.array(radii), np.array(halfwidth), len(dirs) * len(GRID)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rays", type=int, default=64)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    data = load_dataset("digits")
    cfg = TrainConfig(
        dataset="digits",
        model_kwargs={"widths": (64, 64)},
        lr=0.1,
        batch_size=32,
        steps=1500,
        seed=0,
    )
    model = train(cfg, data, progress=False).model
    obj = Objective(model, nn.CrossEntropyLoss(), (data.x_train, data.y_train))
    loss0 = obj.loss()
    tau = 0.1  # relative rule: the basin is L − L(θ0) ≤ 0.1
    level = loss0 + tau
    dirs = ray_directions(obj, args.rays, seed=0)
    print(
        f"model: MLP 64-64-64-10 on digits, n = {obj.n}, L(θ0) = {loss0:.4f}, "
        f"threshold L ≤ {level:.4f}, {args.rays} rays"
    )

    # A first pass tells the grid its range (not timed: the grid is given R for free).
    probe = basin_volume(
        obj,
        tau,
        n_directions=args.rays,
        rule="relative",
        tolerance=1e-2,
        bootstrap=0,
        batch=args.rays,
    )
    R = 2.0 ** math.ceil(math.log2(probe.radii.max() * 1.01))

    t = time.perf_counter()
    r_grid, hw_grid, evals_grid = grid_search(obj, dirs, level, R)
    t_grid = time.perf_counter() - t
    precision = float((hw_grid / r_grid).min())  # the grid's best relative half-width

    t = time.perf_counter()
    ours = basin_volume(
        obj,
        tau,
        n_directions=args.rays,
        rule="relative",
        tolerance=precision,
        bootstrap=0,
        batch=args.rays,
    )
    t_ours = time.perf_counter() - t
    # bisection ends with hi − lo ≤ tol·hi and reports the midpoint
    hw_ours = 0.5 * precision * ours.radii * (1 + precision)

    agree = np.abs(ours.radii - r_grid) <= hw_grid + hw_ours + 1e-12
    assert agree.all(), f"radii disagree on {int((~agree).sum())} rays"
    assert (0.5 * precision <= hw_grid / r_grid + 1e-12).all()  # ours at least as precise
    first_crossing = int(sum(np.searchsorted(R * GRID, r) + 1 for r in r_grid))
    print(
        f"grid R = {R:g}: relative half-width {precision:.2e} (best ray) to "
        f"{(hw_grid / r_grid).max():.2e} (worst); ours ≤ {precision:.2e} on every ray"
    )
    print(
        f"fixed grid : {evals_grid:6d} evaluations, {t_grid:7.2f} s "
        f"(stopping at the first crossing would take {first_crossing})"
    )
    print(f"basinscope : {ours.evaluations:6d} evaluations, {t_ours:7.2f} s")
    grid_log = volume_from_radii(r_grid, obj.n, bootstrap=0)["log_mean_rn"]
    print(
        f"radii agree within the half-widths on all {args.rays} rays; "
        f"log⟨rⁿ⟩ grid {grid_log:.1f}, ours {ours.log_mean_rn:.1f}"
    )
    print(
        f"volume: {evals_grid / ours.evaluations:.1f}x fewer evaluations, "
        f"{t_grid / t_ours:.1f}x faster"
    )


if __name__ == "__main__":
    main()
