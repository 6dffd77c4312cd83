"""Transitional: ``basinscope.train`` is now :mod:`basinscope.training` (its step loop is ``_loop``).

This module re-exports the names code imported from it, so ``bs.train.TrainConfig``
and ``bs.train.load_trajectory(...)`` keep working. Setting one of the names
below on this module (as ``monkeypatch.setattr("basinscope.train._train", ...)``
does) also sets it where it is defined, so the patch still reaches the loop.
"""

import sys
import types

from .training import *  # noqa: F403  (every public name of the package)
from .training import _fingerprint as _fingerprint
from .training import _loop
from .training._loop import _train as _train

_OWNERS = {"train": _loop, "_train": _loop}


class _Shim(types.ModuleType):
    def __setattr__(self, name: str, value: object) -> None:
        super().__setattr__(name, value)
        if name in _OWNERS:
            setattr(_OWNERS[name], name, value)


sys.modules[__name__].__class__ = _Shim
