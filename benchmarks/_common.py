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


# Hessian-vector products PyHessian has made (reset it before a run).
PYH_PRODUCTS = [0]


def counting_pyhessian() -> Any:
    """PyHessian's ``pyhessian.hessian`` module with its product function wrapped to count
    calls in :data:`PYH_PRODUCTS` (the same function otherwise; patched once)."""
    import importlib

    pyh = importlib.import_module("pyhessian.hessian")  # the module (the package exports the class)
    if not hasattr(pyh.hessian_vector_product, "counting"):
        original = pyh.hessian_vector_product

        def counted(gradsH, params, v):
            PYH_PRODUCTS[0] += 1
            return original(gradsH, params, v)

        counted.counting = True
        pyh.hessian_vector_product = counted
    return pyh
