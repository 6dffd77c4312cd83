"""experiments: studies of trained runs, their reports, and reparameterisation.

A *study* is a named grid of training runs measured the same way
(:class:`Study`, :func:`run_study`); this wing holds everything around it:

* ``_runner`` — :class:`Study` and :func:`run_study` (train, measure, report; one
  writer per study directory);
* ``_measures`` — the measures registry :data:`MEASURES` and :class:`MeasureConfig`;
* ``_caches`` — the keys that tie every stored number to what decided it;
* ``_summary`` — :class:`RunReport`, ``summary.csv``/``summary.md`` and the figures;
* ``_report`` — :func:`html_report`: a study directory as one offline ``report.html``;
* ``_correlation`` — which measure predicts generalisation: Kendall's τ and Jiang et
  al.'s granulated Ψ over the runs (``correlation.md``/``correlation.json``);
* ``_along`` — :func:`measure_along`: every measure at every weight snapshot of a run;
* ``_reparam`` — function-preserving rescaling and which measures notice it;
* ``_lr_batch``, ``_remedies``, ``_dataset_size``, ``_poison``, ``_grokking``,
  ``_warmup`` — the built-in
  studies, one file a theme, named in :data:`STUDIES` (``_studies``).

It may import every other wing; nothing below it imports it.
"""

from ._along import ALONG_MEASURES as ALONG_MEASURES
from ._along import AlongSettings as AlongSettings
from ._along import AlongTraining as AlongTraining
from ._along import EpsilonSettings as EpsilonSettings
from ._along import LambdaMaxSettings as LambdaMaxSettings
from ._along import TraceSettings as TraceSettings
from ._along import VolumeSettings as VolumeSettings
from ._along import measure_along as measure_along
from ._caches import model_fingerprint as model_fingerprint
from ._caches import objective_key as objective_key
from ._caches import own_file as own_file
from ._caches import study_key as study_key
from ._common import VOLUME_NOTE as VOLUME_NOTE
from ._correlation import FLAT_IS_LARGE as FLAT_IS_LARGE
from ._correlation import GAPS as GAPS
from ._correlation import HYPERPARAMETERS as HYPERPARAMETERS
from ._correlation import MEASURE_COLUMNS as MEASURE_COLUMNS
from ._correlation import Correlation as Correlation
from ._correlation import correlation_markdown as correlation_markdown
from ._correlation import correlation_report as correlation_report
from ._correlation import excluded_measures as excluded_measures
from ._correlation import rank_correlations as rank_correlations
from ._correlation import read_summary as read_summary
from ._dataset_size import dataset_size_study as dataset_size_study
from ._grokking import grokking_study as grokking_study
from ._lr_batch import lr_batch_grid as lr_batch_grid
from ._lr_batch import lr_batch_grid_study as lr_batch_grid_study
from ._measures import MEASURES as MEASURES
from ._measures import SUITE_PART as SUITE_PART
from ._measures import MeasureConfig as MeasureConfig
from ._measures import cached_volume as cached_volume
from ._measures import measure_run as measure_run
from ._measures import train_objective as train_objective
from ._poison import poison_study as poison_study
from ._remedies import REMEDIES as REMEDIES
from ._remedies import remedies_study as remedies_study
from ._remedies import sam_vs_sgd_study as sam_vs_sgd_study
from ._reparam import MEASURES as COMPARED_MEASURES
from ._reparam import MeasureChange as MeasureChange
from ._reparam import compare_measures as compare_measures
from ._reparam import measure_suite as measure_suite
from ._reparam import rescale as rescale
from ._reparam import suite_config as suite_config
from ._report import html_report as html_report
from ._runner import Study as Study
from ._runner import run_study as run_study
from ._studies import STUDIES as STUDIES
from ._summary import RunReport as RunReport
from ._summary import summary_markdown as summary_markdown
from ._summary import write_report as write_report
from ._warmup import warmup_study as warmup_study

__all__ = [
    "ALONG_MEASURES",
    "COMPARED_MEASURES",
    "FLAT_IS_LARGE",
    "GAPS",
    "HYPERPARAMETERS",
    "MEASURES",
    "MEASURE_COLUMNS",
    "REMEDIES",
    "STUDIES",
    "SUITE_PART",
    "VOLUME_NOTE",
    "AlongSettings",
    "AlongTraining",
    "Correlation",
    "EpsilonSettings",
    "LambdaMaxSettings",
    "MeasureChange",
    "MeasureConfig",
    "RunReport",
    "Study",
    "TraceSettings",
    "VolumeSettings",
    "cached_volume",
    "compare_measures",
    "correlation_markdown",
    "correlation_report",
    "dataset_size_study",
    "excluded_measures",
    "grokking_study",
    "html_report",
    "lr_batch_grid",
    "lr_batch_grid_study",
    "measure_along",
    "measure_run",
    "measure_suite",
    "model_fingerprint",
    "objective_key",
    "own_file",
    "poison_study",
    "rank_correlations",
    "read_summary",
    "remedies_study",
    "rescale",
    "run_study",
    "sam_vs_sgd_study",
    "study_key",
    "suite_config",
    "summary_markdown",
    "train_objective",
    "warmup_study",
    "write_report",
]
