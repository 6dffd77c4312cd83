"""Transitional shim: the built-in studies now live in :mod:`basinscope.experiments`.

Kept so that ``basinscope.studies`` imports keep working while the package is
restructured (issue 11); import from :mod:`basinscope.experiments` instead.
"""

from __future__ import annotations

from .experiments._common import VOLUME_NOTE as VOLUME_NOTE
from .experiments._dataset_size import dataset_size_study as dataset_size_study
from .experiments._lr_batch import lr_batch_grid as lr_batch_grid
from .experiments._lr_batch import lr_batch_grid_study as lr_batch_grid_study
from .experiments._poison import poison_study as poison_study
from .experiments._remedies import _REMEDY_MEASURES as _REMEDY_MEASURES
from .experiments._remedies import REMEDIES as REMEDIES
from .experiments._remedies import _sam_finish as _sam_finish
from .experiments._remedies import remedies_study as remedies_study
from .experiments._remedies import sam_vs_sgd_study as sam_vs_sgd_study
from .experiments._studies import STUDIES as STUDIES
