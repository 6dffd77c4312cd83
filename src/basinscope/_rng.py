"""Randomness keyed by ``(seed, index)``.

Every work item (grid point, ray, noise sample, probe vector) draws its random
numbers from a generator seeded by its own ``(seed, index)`` pair alone, so
work split over processes, or resumed after a crash, gives the same numbers bit
for bit as one uninterrupted run. ``numpy.random.SeedSequence`` mixes the pair
so that neighbouring indices give unrelated streams.
"""

from __future__ import annotations

import numpy as np
import torch


def item_seed(seed: int, index: int) -> int:
    """A 63-bit seed derived from ``(seed, index)`` by SeedSequence hashing."""
    words = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(seed) >> 32, int(index)])
    hi, lo = words.generate_state(2, dtype=np.uint32)
    return ((int(hi) << 32) | int(lo)) & 0x7FFFFFFFFFFFFFFF


def item_generator(seed: int, index: int) -> torch.Generator:
    """A CPU ``torch.Generator`` for work item ``index`` of a computation seeded by ``seed``."""
    g = torch.Generator(device="cpu")
    g.manual_seed(item_seed(seed, index))
    return g
