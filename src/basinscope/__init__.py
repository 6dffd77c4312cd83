"""basinscope: measure and draw the geometry of neural-network loss landscapes.

import basinscope as bs
obj = bs.Objective(model, loss_fn, (X, y))
d = bs.random_directions(obj, 2, norm="filter", seed=0)
surf = bs.plane(obj, d[0], d[1], span=(-1, 1), steps=31)
"""

from __future__ import annotations

from . import directions, hessian, optim, report, sharpness, volume
from .directions import normalize, pca_directions, random_directions
from .errors import BasinscopeError
from .objective import Objective, ParamSpace
from .optim import SAM
from .reparam import rescale
from .surface import Surface, interpolate, line, plane, three_model_plane, trajectory_plane
from .volume import basin_volume

__version__ = "0.1.0"

__all__ = [
    "SAM",
    "BasinscopeError",
    "Objective",
    "ParamSpace",
    "Surface",
    "basin_volume",
    "directions",
    "hessian",
    "interpolate",
    "line",
    "normalize",
    "optim",
    "pca_directions",
    "plane",
    "random_directions",
    "report",
    "rescale",
    "sharpness",
    "three_model_plane",
    "trajectory_plane",
    "volume",
]
