"""Argument checks and the JSON view shared by the sharpness measures."""

from __future__ import annotations

import math
import numbers
from dataclasses import fields
from typing import Any

import numpy as np
from torch import Tensor

from ..errors import BasinscopeError


def _positive(name: str, value: float) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise BasinscopeError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)


def _count(name: str, value: int, low: int = 1, high: int | None = None) -> int:
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= low
    if ok and high is not None:
        ok = value <= high
    if not ok:
        span = f"an integer ≥ {low}" if high is None else f"an integer in [{low}, {high}]"
        raise BasinscopeError(f"{name} must be {span}, got {value!r}")
    return int(value)


def _no_vectors(result: Any) -> dict[str, Any]:
    """The fields of a result dataclass without its tensors and arrays (JSON-ready)."""
    return {
        f.name: getattr(result, f.name)
        for f in fields(result)
        if not isinstance(getattr(result, f.name), Tensor | np.ndarray)
    }
