"""Transitional: SAM/ASAM now live in :mod:`basinscope.training` (``training/_sam.py``)."""

from .training._sam import ASAM_ETA as ASAM_ETA
from .training._sam import ASAM_RHO as ASAM_RHO
from .training._sam import SAM as SAM
from .training._sam import SAM_RHO as SAM_RHO
from .training._sam import frozen_running_stats as frozen_running_stats
