"""Argument checks and the JSON view shared by the sharpness measures."""

from __future__ import annotations

import numbers
from dataclasses import fields
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import BasinscopeError


def _count(name: str, value: int, low: int = 1, high: int | None = None) -> int:
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= low
    if ok and high is not None:
        ok = value <= high
    if not ok:
        span = f"an integer ≥ {low}" if high is None else f"an integer in [{low}, {high}]"
        raise BasinscopeError(f"{name} must be {span}, got {value!r}")
    return int(value)


GAUSSIAN_REACH = 10.0
"""A bound on ``|z|`` of the standard normal draws (float32 ``randn`` stays below ~9)."""


def _check_reach(obj: Any, name: str, value: float, reach: float) -> None:
    """Refuse ``value`` (the setting ``name``: a σ, radius or ε) when the perturbed weights
    ``θ0 + δ``, with ``|δ_i| ≤ reach``, can overflow the Objective's dtype: every loss
    there would be inf or NaN, a number that looks like a measure."""
    dtype = obj.theta0.dtype
    largest = float(torch.finfo(dtype).max)
    top = float(obj.theta0.abs().max()) + float(reach) if obj.n else float(reach)
    if not top < largest:
        raise BasinscopeError(
            f"{name} = {value:g} is too large: the perturbed weights would reach {top:.3g}, "
            f"beyond the largest {str(dtype).removeprefix('torch.')} ({largest:.3g}); "
            f"choose a smaller {name}"
        )


def _no_vectors(result: Any) -> dict[str, Any]:
    """The fields of a result dataclass without its tensors and arrays (JSON-ready)."""
    return {
        f.name: getattr(result, f.name)
        for f in fields(result)
        if not isinstance(getattr(result, f.name), Tensor | np.ndarray)
    }
