"""basinscope: measure and draw the geometry of neural-network loss landscapes.

import basinscope as bs
obj = bs.Objective(model, loss_fn, (X, y))
d = bs.random_directions(obj, 2, norm="filter", seed=0)
surf = bs.plane(obj, d[0], d[1], span=(-1, 1), steps=31)
"""

from __future__ import annotations

from . import directions, hessian, sharpness, volume
from .directions import normalize, random_directions
from .errors import BasinscopeError
from .objective import Objective, ParamSpace
from .surface import Surface, line, plane
from .volume import basin_volume

__version__ = "0.1.0"

__all__ = [
    "BasinscopeError",
    "Objective",
    "ParamSpace",
    "Surface",
    "basin_volume",
    "directions",
    "hessian",
    "line",
    "normalize",
    "plane",
    "random_directions",
    "sharpness",
    "volume",
]
