"""The landscape wing: directions in parameter space, loss surfaces (lines and planes,
saved as HDF5 with Li et al.'s dataset names), paths between minima, and the
star-convex basin volume. It reads the evaluation core (:mod:`basinscope.objective`)
and the ground files only.
"""

from ._directions import NORMALIZERS as NORMALIZERS
from ._directions import PCADirections as PCADirections
from ._directions import check_directions as check_directions
from ._directions import gram_schmidt as gram_schmidt
from ._directions import interpolation_direction as interpolation_direction
from ._directions import normalize as normalize
from ._directions import pca_directions as pca_directions
from ._directions import random_directions as random_directions
from ._grid import check_grid_memory as check_grid_memory
from ._grid import line as line
from ._grid import plane as plane
from ._paths import interpolate as interpolate
from ._paths import three_model_plane as three_model_plane
from ._paths import trajectory_plane as trajectory_plane
from ._rays import ray_directions as ray_directions
from ._surface import METRICS as METRICS
from ._surface import Surface as Surface
from ._volume import RULES as RULES
from ._volume import VolumeResult as VolumeResult
from ._volume import basin_volume as basin_volume
from ._volume import finite_loss0 as finite_loss0
from ._volume import log_unit_ball as log_unit_ball
from ._volume import volume_from_radii as volume_from_radii
