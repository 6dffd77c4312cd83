"""Transitional shim: the rank correlations now live in :mod:`basinscope.experiments`.

Kept so that ``basinscope.report`` (and ``bs.report``) keep working while the
package is restructured (issue 11); import from :mod:`basinscope.experiments` instead.
"""

from __future__ import annotations

from .experiments._correlation import FLAT_IS_LARGE as FLAT_IS_LARGE
from .experiments._correlation import GAPS as GAPS
from .experiments._correlation import HYPERPARAMETERS as HYPERPARAMETERS
from .experiments._correlation import MEASURE_COLUMNS as MEASURE_COLUMNS
from .experiments._correlation import Correlation as Correlation
from .experiments._correlation import correlation_markdown as correlation_markdown
from .experiments._correlation import correlation_report as correlation_report
from .experiments._correlation import excluded_measures as excluded_measures
from .experiments._correlation import rank_correlations as rank_correlations
from .experiments._correlation import read_summary as read_summary
