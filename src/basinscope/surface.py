"""Transitional: ``basinscope.surface`` moved to :mod:`basinscope.landscape` (``_surface``,
``_grid``, ``_paths``, ``_batchnorm_update``). Re-exports what is imported from here today.

A ``monkeypatch`` on a name here reaches only code that imports it from this module at
call time (the CLI does); patch :mod:`basinscope.landscape._grid` and friends otherwise.
"""

from .landscape._batchnorm_update import _BatchNormUpdate as _BatchNormUpdate
from .landscape._grid import _available_memory as _available_memory
from .landscape._grid import _check_memory as _check_memory
from .landscape._grid import line as line
from .landscape._grid import plane as plane
from .landscape._paths import interpolate as interpolate
from .landscape._paths import three_model_plane as three_model_plane
from .landscape._paths import trajectory_plane as trajectory_plane
from .landscape._surface import METRICS as METRICS
from .landscape._surface import Surface as Surface
