"""The random vectors of the curvature estimators, each from ``(seed, index)`` alone.

Every random vector (Lanczos start, probe, sketch column, SLQ start) is drawn
from ``(seed, index)`` alone (see :mod:`basinscope._rng`), in a stream of its
own per purpose, so work can be split or resumed and give the same numbers.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._rng import item_generator

# Random streams: each purpose draws vector i from (seed, stream · 2³² + i).
_LANCZOS, _PROBE, _SKETCH, _SLQ = 1, 2, 3, 4


def _generator(seed: int, stream: int, index: int) -> torch.Generator:
    return item_generator(seed, (stream << 32) + index)


def _rademacher(n: int, seed: int, stream: int, index: int) -> Tensor:
    g = _generator(seed, stream, index)
    return (torch.randint(0, 2, (n,), generator=g, dtype=torch.int8) * 2 - 1).to(torch.float64)
