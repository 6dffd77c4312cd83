"""Shared study outputs of the experiments tests (computed once per session)."""

from __future__ import annotations

from pathlib import Path

import pytest

from basinscope import experiments
from basinscope.experiments import MeasureConfig, run_study


@pytest.fixture(scope="session")
def small_lr_batch(tmp_path_factory) -> tuple[Path, list]:
    """The demo's study (``basinscope run``: the lr × batch grid) made small: 4 runs of 30
    epochs on 200 digits, 5×5 surfaces with test data, the Hessian measure (λ_max, trace,
    spectrum), the interpolations and correlations. Returns (study directory, reports)."""
    study = experiments.STUDIES["lr-batch"](epochs=30, train_size=200, batch_sizes=(100, 20))
    study.measure = MeasureConfig(grid_size=5, noise_samples=4, radius=0.5)
    out = tmp_path_factory.mktemp("small-lr-batch")
    reports = run_study(study, out, progress=False)
    return out / "lr-batch", reports
