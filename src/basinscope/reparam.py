"""Transitional shim: reparameterisation now lives in :mod:`basinscope.experiments`.

Kept so that ``basinscope.reparam`` imports keep working while the package is
restructured (issue 11); import from :mod:`basinscope.experiments` instead.
"""

from __future__ import annotations

from .experiments._reparam import MEASURES as MEASURES
from .experiments._reparam import MeasureChange as MeasureChange
from .experiments._reparam import compare_measures as compare_measures
from .experiments._reparam import measure_suite as measure_suite
from .experiments._reparam import rescale as rescale
