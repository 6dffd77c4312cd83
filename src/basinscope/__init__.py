"""basinscope: measure and draw the geometry of neural-network loss landscapes.

    import basinscope as bs
    obj = bs.Objective(model, loss_fn, (X, y))
    d = bs.random_directions(obj, 2, norm="filter", seed=0)
    surf = bs.plane(obj, d[0], d[1], span=(-1, 1), steps=31)

The core (``objective``) and the measuring wings (``landscape``, ``hessian``,
``sharpness``) load with the package; ``training``, ``experiments`` and ``plots``
load on first use (``bs.training.train(...)``), so ``import basinscope`` stays light.
See ARCHITECTURE.md for the layout.
"""

from __future__ import annotations

import importlib
from typing import Any

from . import hessian, landscape, objective, sharpness
from ._version import __version__
from .errors import BasinscopeError
from .landscape import (
    Surface,
    basin_volume,
    interpolate,
    line,
    plane,
    random_directions,
    three_model_plane,
    trajectory_plane,
)
from .objective import MSE, CrossEntropy, Loss, MeanLoss, Objective, ParamSpace, SumLoss

_LAZY_MODULES = ("training", "experiments", "plots")
_LAZY_NAMES = {"SAM": "training", "rescale": "experiments"}

__all__ = [
    "SAM",
    "MSE",
    "BasinscopeError",
    "CrossEntropy",
    "Loss",
    "MeanLoss",
    "Objective",
    "ParamSpace",
    "Surface",
    "__version__",
    "basin_volume",
    "experiments",
    "hessian",
    "interpolate",
    "landscape",
    "line",
    "objective",
    "plane",
    "plots",
    "random_directions",
    "rescale",
    "sharpness",
    "SumLoss",
    "three_model_plane",
    "training",
    "trajectory_plane",
]


def __getattr__(name: str) -> Any:
    """Load ``training``, ``experiments`` and ``plots`` (and SAM, rescale) on first use."""
    if name in _LAZY_MODULES:
        module = importlib.import_module(f".{name}", __name__)
        globals()[name] = module
        return module
    if name in _LAZY_NAMES:
        value = getattr(__getattr__(_LAZY_NAMES[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'basinscope' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
