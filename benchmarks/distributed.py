"""One process against two: the same surface and basin volume of a small ResNet.

The model is a small residual network with BatchNorm on CIFAR-shaped images
(the kind of model where no engine beats one forward pass per point: the only way
to go faster is more hardware). Each configuration runs in fresh processes with
one thread each, started the way ``torchrun`` starts them (``RANK``,
``WORLD_SIZE``, ``MASTER_ADDR=127.0.0.1``, gloo), and times only the measure:

* a 6×6 plane through the weights along filter-normalised directions
  (point-parallel: every rank evaluates its share of each chunk of points);
* a basin volume of 8 rays (the rays still searching are dealt out afresh at
  every step of their search).

The two-process results must equal the one-process results bit for bit (same
thread count, same device); the last line prints the speed-ups.

    python benchmarks/distributed.py [--steps 6] [--rays 8] [--examples 256]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn


class Block(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(x + self.bn2(self.conv2(y)))


def resnet(c: int = 16, blocks: int = 3) -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, c, 3, padding=1, bias=False),
        nn.BatchNorm2d(c),
        nn.ReLU(),
        *[Block(c) for _ in range(blocks)],
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(c, 10),
    )
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # BatchNorm statistics of a trained net, not the identity
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1, generator=g)
                m.running_var.uniform_(0.5, 1.5, generator=g)
    return net.eval()


def worker(args: argparse.Namespace) -> None:
    """One rank: build the Objective, time the plane and the volume, save the results."""
    import torch.distributed as dist

    import basinscope as bs

    torch.set_num_threads(1)
    if int(os.environ["WORLD_SIZE"]) > 1:
        dist.init_process_group("gloo")
    g = torch.Generator().manual_seed(2)
    X = torch.randn(args.examples, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (args.examples,), generator=g)
    obj = bs.Objective(resnet(), nn.CrossEntropyLoss(), (X, y), batch_size=128)
    d = bs.random_directions(obj, 2, norm="filter", seed=0)
    obj.evaluate_affine(torch.zeros(1, 2), d)  # the plan and the engine's caches
    t0 = time.perf_counter()
    surf = bs.plane(obj, d[0], d[1], steps=args.steps, span=(-0.5, 0.5), chunk=64)
    t1 = time.perf_counter()
    vol = bs.basin_volume(obj, 0.5, rule="relative", n_directions=args.rays, r0=1.0, batch=64)
    t2 = time.perf_counter()
    out = Path(args.out) / f"rank{os.environ['RANK']}.pt"
    torch.save(
        {"surface": surf.train_loss, "radii": vol.radii, "times": (t1 - t0, t2 - t1),
         "evaluations": vol.evaluations, "engine": obj.plan.name},
        out,
    )  # fmt: skip
    if dist.is_initialized():
        dist.destroy_process_group()


def launch(world: int, args: argparse.Namespace, tmp: Path) -> list[dict]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for rank in range(world):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1",
                   OMP_WAIT_POLICY="PASSIVE")  # fmt: skip
        cmd = [sys.executable, __file__, "--worker", "--out", str(tmp),
               "--steps", str(args.steps), "--rays", str(args.rays),
               "--examples", str(args.examples)]  # fmt: skip
        procs.append(subprocess.Popen(cmd, env=env))
    for p in procs:
        if p.wait(timeout=1800) != 0:
            raise SystemExit(f"a rank of the {world}-process run failed")
    return [torch.load(tmp / f"rank{r}.pt", weights_only=False) for r in range(world)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--rays", type=int, default=8)
    parser.add_argument("--examples", type=int, default=256)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    times = {}
    with tempfile.TemporaryDirectory() as one, tempfile.TemporaryDirectory() as two:
        ref = launch(1, args, Path(one))[0]
        got = launch(2, args, Path(two))
    for r in got:  # every rank returns the whole result, equal to one process's
        assert np.array_equal(r["surface"], ref["surface"]), "surfaces differ"
        assert np.array_equal(r["radii"], ref["radii"]), "radii differ"
    points = args.steps**2
    for i, what in enumerate(("surface", "volume")):
        times[what] = (ref["times"][i], max(r["times"][i] for r in got))
    print(f"model: residual CNN with BatchNorm, {args.examples} CIFAR-shaped images, engine "
          f"{ref['engine']}")  # fmt: skip
    print(f"surface {args.steps}×{args.steps}: 1 process {times['surface'][0]:.2f} s "
          f"({times['surface'][0] / points:.3f} s/point), 2 processes {times['surface'][1]:.2f} s")  # fmt: skip
    print(f"volume {args.rays} rays ({ref['evaluations']} evaluations): 1 process "
          f"{times['volume'][0]:.2f} s, 2 processes {times['volume'][1]:.2f} s")  # fmt: skip
    print("results of 2 processes identical to 1 process: yes (bit for bit)")
    s, v = (times[k][0] / times[k][1] for k in ("surface", "volume"))
    print(f"distributed: surface {s:.2f}x, volume {v:.2f}x faster with 2 processes than 1")


if __name__ == "__main__":
    main()
