"""The built-in studies by name, for ``basinscope run --study``."""

from __future__ import annotations

from collections.abc import Callable

from ._dataset_size import dataset_size_study
from ._grokking import grokking_study
from ._lr_batch import lr_batch_grid, lr_batch_grid_study
from ._poison import poison_study
from ._policy import policy_study
from ._remedies import remedies_study, sam_vs_sgd_study
from ._runner import Study
from ._warmup import warmup_study

STUDIES: dict[str, Callable[..., Study]] = {
    "lr-batch": lr_batch_grid,
    "dataset-size": dataset_size_study,
    "poison": poison_study,
    "remedies": remedies_study,
    "sam-vs-sgd": sam_vs_sgd_study,
    "lr-batch-grid": lr_batch_grid_study,
    "grokking": grokking_study,
    "warmup": warmup_study,
    "policy": policy_study,
}
