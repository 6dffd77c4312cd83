"""Transitional shim: the study runner now lives in :mod:`basinscope.experiments`.

Kept so that ``basinscope.study`` imports keep working while the package is
restructured (issue 11); import from :mod:`basinscope.experiments` instead.
"""

from __future__ import annotations

from .experiments._caches import _cached_json as _cached_json
from .experiments._caches import _read_json as _read_json
from .experiments._caches import data_fingerprint as data_fingerprint
from .experiments._caches import model_fingerprint as model_fingerprint
from .experiments._caches import objective_key as objective_key
from .experiments._caches import own_file as own_file
from .experiments._caches import study_key as study_key
from .experiments._measures import MEASURES as MEASURES
from .experiments._measures import MeasureConfig as MeasureConfig
from .experiments._measures import cached_volume as cached_volume
from .experiments._measures import measure_run as measure_run
from .experiments._measures import train_objective as train_objective
from .experiments._runner import Study as Study
from .experiments._runner import run_study as run_study
from .experiments._summary import RunReport as RunReport
from .experiments._summary import _fmt as _fmt
from .experiments._summary import summary_markdown as summary_markdown
from .experiments._summary import write_report as write_report
