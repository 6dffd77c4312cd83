"""One way to turn a result into JSON: :func:`to_json`.

Every measure returns a small (frozen) dataclass; what is written to a ``.json``
file beside it is that dataclass as a dict, with NumPy arrays as lists. NaN stays a
float (``json`` writes it as ``NaN``, which Python reads back), so a diverged
measurement is recorded as what it is rather than dropped or turned into ``None``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

__all__ = ["to_json"]


def _plain(value: Any) -> Any:
    """``value`` with every NumPy array inside it (dicts, lists, tuples) as a list."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    return value


def to_json(result: Any) -> dict[str, Any]:
    """A result dataclass as a JSON-ready dict.

    ``dataclasses.asdict`` (nested dataclasses become dicts too), then every NumPy
    array becomes a (nested) list; floats, NaN included, are kept as they are.

    Raises:
        TypeError: ``result`` is not a dataclass instance.
    """
    if not dataclasses.is_dataclass(result) or isinstance(result, type):
        raise TypeError(f"to_json needs a dataclass instance, got {type(result).__name__}")
    return _plain(dataclasses.asdict(result))
