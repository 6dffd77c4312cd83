"""Studies: grids of training runs, each measured the same way, with a report.

A study is a list of named runs (each a :class:`~basinscope.training.TrainConfig`)
plus the measurement settings shared by all of them. :func:`run_study` trains
every run, computes its filter-normalised 2-D surface on the training and test
data (Li et al. 2018), its sharpness, and writes figures and a summary table:

    results/<study>/
        study.json                    the resolved study config
        <run>/config.json, model.pt, metrics.json      (train.py)
        <run>/surface.h5              the plane, resumable
        <run>/sharpness.json          both sharpness measures + their settings
        figures/*.png                 3-D surfaces, contours, grid, bar charts
        summary.csv, summary.md       one row per run

Everything is skipped when already done with the same settings, and every
partial result is resumable, so re-running a killed study loses nothing.

The built-in studies (the classic 4-run grid and the others) are in
:data:`~basinscope.experiments.STUDIES`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import _dist
from .._checks import check_output_dir
from .._io import atomic_write_json
from .._lock import output_lock
from .._results import to_json
from ..errors import BasinscopeError
from ..training import DataBundle, TrainConfig, load_config_data, train
from ._common import SETTINGS_USED
from ._correlation import correlation_report
from ._measures import MEASURES, MeasureConfig
from ._summary import RunReport, write_report


@dataclass
class Study:
    """A named list of runs and how to measure them."""

    name: str
    runs: dict[str, TrainConfig]
    measure: MeasureConfig = field(default_factory=MeasureConfig)
    description: str = ""
    measures: tuple[str, ...] = ("surface",)
    finish: Callable[[Study, list[RunReport], Path], str] | None = None
    # MeasureConfig fields that ``finish`` reads besides those of ``measures``
    finish_settings: tuple[str, ...] = ()
    # a study that is not a grid of classifier runs (``policy``): run(study, root,
    # progress) does all of it under the study's lock; ``extra`` holds its settings
    run: Callable[[Study, Path, bool], Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def uses(self, setting: str) -> bool:
        """Whether the :class:`MeasureConfig` field ``setting`` decides any of this study's
        numbers (a setting of one of its measures, or one its ``finish`` reads)."""
        used = set(self.finish_settings)
        for measure in self.measures:
            used |= SETTINGS_USED[measure]
        return setting in used

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "measures": list(self.measures),
            "runs": {k: v.to_dict() for k, v in self.runs.items()},
            "measure": to_json(self.measure),
        }


def run_study(
    study: Study, out: str | Path = "results", *, progress: bool = True
) -> list[RunReport]:
    """Train, measure and report every run of ``study`` under ``out/<study.name>``.

    Every setting is checked before any work, and the study directory is locked for
    the whole study: a second ``run_study`` (another process) on the same directory
    stops with one sentence instead of interleaving its files with this one's.

    Inside a ``torch.distributed`` process group (``torchrun``) every rank calls it
    alike: the runs are dealt out over the ranks (each trained and measured where it
    lands), and rank 0 writes ``study.json``, the comparisons and the report once.
    """
    study.measure.validate()
    if "spread" in study.measures:
        from ._spread import check_spread_settings

        check_spread_settings(study.measure)
    for cfg in study.runs.values():
        cfg.validate()
    root = check_output_dir(Path(out) / study.name, "the study directory")
    root.mkdir(parents=True, exist_ok=True)
    d = _dist.resolve("auto")  # under torchrun: the runs are shared over the ranks
    with _dist.on_writer(d, lambda: output_lock(root, "the study directory")):
        if study.run is not None:
            return study.run(study, root, progress)
        return _run_locked(study, root, progress, d)


def _run_locked(study: Study, root: Path, progress: bool, d: _dist.Dist | None) -> list[RunReport]:
    # Every run's data is loaded and every run directory asked whether it accepts its
    # configuration before study.json is written: a refused study leaves it as it was.
    # Rank 0 alone opens the run directories (their locks) and loads the data first (a
    # download lands once); the other ranks then read the data it cached.
    box: dict[str, dict[str, DataBundle]] = {}
    _dist.agree(d, lambda: box.setdefault("datas", _check_runs(study, root, write=True)) and None)
    datas = _dist.check(d, lambda: box["datas"] if "datas" in box else _load_data(study))
    reports = _runs(study, root, datas, progress, d)

    def finish() -> None:  # once, on rank 0 (the others wait for it)
        extra = study.finish(study, reports, root) if study.finish else ""
        extra += _correlations(reports, root)
        write_report(reports, root, extra)

    _dist.agree(d, finish)
    return reports


def _runs(
    study: Study,
    root: Path,
    datas: dict[str, DataBundle],
    progress: bool,
    d: _dist.Dist | None,
) -> list[RunReport]:
    """Every run trained and measured, in the study's order.

    In a process group each run is trained and measured by the rank that claims it
    when it is free (:func:`basinscope._dist.claims`; its own run directory, nothing
    shared), and the reports, with their models, are gathered on every rank; an error in
    any run stops every rank.
    """
    names = list(study.runs)
    if d is None:
        return [_one_run(study, root, name, datas[name], progress) for name in names]

    def mine() -> dict[str, RunReport]:
        reports = {}
        for i in _dist.claims(d, len(names)):  # the next run, as each rank is free
            name = names[i]  # rank 0 alone prints and shows progress
            report = _one_run(study, root, name, datas[name], progress and d.rank == 0)
            report.data = None  # every rank has the data: only the rest travels
            report.model = None if report.model is None else report.model.cpu()
            reports[name] = report
        return reports

    shared = {k: v for part in _dist.gather(d, mine) for k, v in part.items()}
    for name, report in shared.items():
        report.data = datas[name]
    return [shared[name] for name in names]


def _one_run(study: Study, root: Path, name: str, data: DataBundle, progress: bool) -> RunReport:
    """Train run ``name`` (or reuse its finished checkpoint) and compute its measures."""
    cfg = study.runs[name]
    if progress:
        print(f"[{study.name}] {name}: training", flush=True)
    result = train(cfg, data, out_dir=root / name, progress=progress)
    report = RunReport(name, cfg, result.final, result.diverged, result.message)
    report.model, report.data = result.model, data
    # ‖θ‖₂, the baseline every sharpness measure is compared with (Jiang et al. 2019).
    report.values["param_norm"] = float(
        sum(p.detach().double().pow(2).sum() for p in result.model.parameters()) ** 0.5
    )
    if result.diverged:
        print(f"[{study.name}] {name}: {result.message}", flush=True)
    else:
        for measure in study.measures:
            if progress:
                print(f"[{study.name}] {name}: {measure}", flush=True)
            MEASURES[measure](report, study.measure, root / name, progress)
    return report


def _load_data(study: Study) -> dict[str, DataBundle]:
    """Each run's data, loaded once per distinct dataset setting."""
    cache: dict[str, DataBundle] = {}
    datas = {}
    for name, cfg in study.runs.items():
        key = json.dumps(
            [cfg.dataset, cfg.data_dir, cfg.train_size, cfg.standardize, cfg.data_seed,
             cfg.label_noise]
        )  # fmt: skip
        if key not in cache:
            cache[key] = load_config_data(cfg)
        datas[name] = cache[key]
    return datas


def _check_runs(study: Study, root: Path, write: bool = False) -> dict[str, DataBundle]:
    """Each run's data, after checking that its run directory accepts its configuration
    (no finished or interrupted run of another configuration there): refused before
    anything of the study is written. With ``write``, ``study.json`` is then written."""
    from ..training import check_accepts

    datas = _load_data(study)
    for name, cfg in study.runs.items():
        check_accepts(root / name, cfg, datas[name])  # another configuration is refused
    if write:
        atomic_write_json(root / "study.json", study.to_dict())
    return datas


def _correlations(reports: list[RunReport], root: Path) -> str:
    """The measures' rank correlation with the gap, for studies with ≥ 3 finished runs."""
    if sum(not r.diverged for r in reports) < 3:
        return ""
    try:
        text = correlation_report(
            [r.row() for r in reports], root, title="Which measure tracks the generalisation gap"
        )
    except BasinscopeError:  # no measure columns (e.g. a volume-only study without gaps)
        return ""
    return "\n" + text
