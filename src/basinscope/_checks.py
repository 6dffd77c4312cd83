"""Argument checks shared by the library and the CLI.

Each check raises :class:`BasinscopeError` with one sentence that names the
value and what is accepted, and returns the value converted (an ``int`` for a
count, a ``float`` for a number), so a call site reads
``steps = check_int("steps", steps, minimum=2)``. Checks run before any work.
"""

from __future__ import annotations

import math
import numbers
import os
from pathlib import Path
from typing import Any

from .errors import BasinscopeError


def check_int(
    name: str, value: Any, *, minimum: int | None = None, maximum: int | None = None
) -> int:
    """``value`` as an int: a Python/NumPy integer (or an integral float such as 3.0)."""
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if not ok and isinstance(value, numbers.Real) and not isinstance(value, bool):
        ok = math.isfinite(float(value)) and float(value).is_integer()
    if not ok:
        raise BasinscopeError(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise BasinscopeError(f"{name} must be an integer >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise BasinscopeError(f"{name} must be an integer <= {maximum}, got {value}")
    return value


SEED_MAX = 2**63 - 1  # torch.Generator.manual_seed takes a signed 64-bit seed


def check_seed(name: str, value: Any) -> int:
    """A seed: an integer in ``[0, 2**63 - 1]`` (what a torch generator accepts)."""
    return check_int(name, value, minimum=0, maximum=SEED_MAX)


def check_device(value: Any, name: str = "device") -> Any:
    """``value`` as a ``torch.device`` that exists here: ``cpu``, or ``cuda[:N]`` when
    CUDA is available (a device torch does not know, ``meta`` or one this build lacks
    is refused in one sentence)."""
    import torch

    try:
        device = torch.device(value)
    except (RuntimeError, TypeError):
        raise BasinscopeError(
            f"{name} {value!r} is not a device torch knows; use 'cpu' or 'cuda[:N]'"
        ) from None
    if device.type == "meta":
        raise BasinscopeError(f"{name} 'meta' holds no data; use 'cpu' or 'cuda[:N]'")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise BasinscopeError(f"{name} {value!r}: CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise BasinscopeError(
                f"{name} {value!r}: this machine has {torch.cuda.device_count()} CUDA devices"
            )
    elif device.type != "cpu":
        try:
            torch.empty(1, device=device)
        except (RuntimeError, AssertionError):
            raise BasinscopeError(
                f"{name} {value!r} is not available in this torch build; use 'cpu' or 'cuda[:N]'"
            ) from None
    return device


def check_number(
    name: str,
    value: Any,
    *,
    positive: bool = False,
    nonnegative: bool = False,
    finite: bool = True,
) -> float:
    """``value`` as a float; NaN is never accepted, ±inf only with ``finite=False``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise BasinscopeError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if math.isnan(value) or (finite and math.isinf(value)):
        raise BasinscopeError(f"{name} must be a finite number, got {value}")
    if positive and not value > 0:
        raise BasinscopeError(f"{name} must be positive, got {value}")
    if nonnegative and not value >= 0:
        raise BasinscopeError(f"{name} must be non-negative, got {value}")
    return value


def check_positive(name: str, value: Any, *, zero: bool = False) -> float:
    """A positive (with ``zero``: non-negative) finite real number, as a float."""
    ok = (
        isinstance(value, numbers.Real)
        and not isinstance(value, bool)
        and math.isfinite(float(value))
        and (float(value) >= 0 if zero else float(value) > 0)
    )
    if not ok:
        kind = "non-negative" if zero else "positive"
        raise BasinscopeError(f"{name} must be a {kind} finite number, got {value!r}")
    return float(value)


def check_span(name: str, span: Any) -> tuple[float, float]:
    """A finite interval ``(lo, hi)`` with ``hi > lo``."""
    try:
        lo, hi = span
    except (TypeError, ValueError):
        raise BasinscopeError(f"{name} must be a pair (min, max), got {span!r}") from None
    lo, hi = check_number(f"{name}[0]", lo), check_number(f"{name}[1]", hi)
    if not hi > lo:
        raise BasinscopeError(f"{name} must have max > min, got ({lo}, {hi})")
    return lo, hi


def _writable_dir(directory: Path, what: str, target: Path) -> None:
    """``directory`` exists as a writable directory or can be created."""
    d = directory
    while not d.exists():  # the nearest existing ancestor decides
        if d.parent == d:
            break
        d = d.parent
    if not d.is_dir():
        raise BasinscopeError(
            f"{what} {str(target)!r} cannot be written: {str(d)!r} is a file, not a directory"
        )
    if not os.access(d, os.W_OK | os.X_OK):
        raise BasinscopeError(
            f"{what} {str(target)!r} cannot be written: {str(d)!r} is not writable"
        )


def check_output_file(path: str | Path, what: str = "the output file") -> Path:
    """``path`` can be created or replaced: its directory is (or can be made) writable."""
    path = Path(path)
    if path.is_dir():
        raise BasinscopeError(f"{what} {str(path)!r} is a directory; give a file name")
    if path.exists() and not os.access(path, os.W_OK):
        raise BasinscopeError(f"{what} {str(path)!r} exists and is not writable")
    _writable_dir(path.parent, what, path)
    return path


def check_output_dir(path: str | Path, what: str = "the output directory") -> Path:
    """``path`` is a writable directory or can be created as one."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise BasinscopeError(f"{what} {str(path)!r} is a file, not a directory")
    _writable_dir(path, what, path)
    return path
