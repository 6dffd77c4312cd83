"""What the benchmarks share: the seed tool's MLP and a best-of-N timer."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn


def seed_tool_mlp(seed: int = 0) -> nn.Sequential:
    """The MLP 784-256-128-10 of the seed tool's setup, freshly initialised from ``seed``."""
    torch.manual_seed(seed)  # nn.Linear initialises from the global RNG (a script may seed it)
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(784, 256),
        nn.ReLU(),
        nn.Linear(256, 128),
        nn.ReLU(),
        nn.Linear(128, 10),
    )


def best_time(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    """Minimum wall-clock time over ``repeat`` runs, and the last result."""
    best, result = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t)
    return best, result
