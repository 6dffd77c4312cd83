"""The experiments and plots wings: their contracts, the old import paths kept for
the transition, and that importing them stays light (no matplotlib until a figure)."""

from __future__ import annotations

import subprocess
import sys

import pytest

import basinscope.experiments as ex
import basinscope.plots as plots


def test_every_exported_name_exists():
    for module in (ex, plots):
        missing = [n for n in module.__all__ if not hasattr(module, n)]
        assert not missing, (module.__name__, missing)


@pytest.mark.parametrize(
    ("old", "names"),
    [
        ("study", ["run_study", "Study", "MeasureConfig", "RunReport", "MEASURES",
                   "summary_markdown", "write_report", "measure_run", "cached_volume",
                   "train_objective", "model_fingerprint", "study_key", "own_file",
                   "objective_key", "_cached_json", "_read_json", "_fmt"]),
        ("studies", ["STUDIES", "REMEDIES", "VOLUME_NOTE", "lr_batch_grid",
                     "lr_batch_grid_study", "dataset_size_study", "poison_study",
                     "remedies_study", "sam_vs_sgd_study", "_REMEDY_MEASURES", "_sam_finish"]),
        ("report", ["correlation_report", "read_summary", "rank_correlations",
                    "correlation_markdown", "excluded_measures", "Correlation", "GAPS",
                    "MEASURE_COLUMNS", "FLAT_IS_LARGE", "HYPERPARAMETERS"]),
        ("reparam", ["rescale", "compare_measures", "measure_suite", "MeasureChange",
                     "MEASURES"]),
    ],
)  # fmt: skip
def test_the_old_import_paths_give_the_same_objects(old, names):
    import importlib

    shim = importlib.import_module(f"basinscope.{old}")
    for name in names:
        new = getattr(ex, name, None)
        if name == "MEASURES" and old == "reparam":
            new = ex.COMPARED_MEASURES
        got = getattr(shim, name)
        if new is not None:
            assert got is new, (old, name)


def test_the_built_in_studies_are_named():
    assert list(ex.STUDIES) == [
        "lr-batch", "dataset-size", "poison", "remedies", "sam-vs-sgd", "lr-batch-grid",
    ]  # fmt: skip
    for name, build in ex.STUDIES.items():
        study = build()
        assert isinstance(study, ex.Study) and study.name == name
        assert set(study.measures) <= set(ex.MEASURES)


def test_importing_experiments_loads_no_matplotlib():
    code = (
        "import sys, basinscope.experiments, basinscope.study, basinscope.studies\n"
        "assert 'matplotlib' not in sys.modules, 'matplotlib was imported'\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
