"""Basin volume in ``sam-vs-sgd`` and ``remedies`` (Fan, Sandlund & Ko's SAM experiment).

The study's volumes are checked against a direct :func:`basinscope.basin_volume` on the
saved checkpoint, on the training subset and on the whole training set built here
independently (NumPy standardisation); the summary's Welch t against SciPy's.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

import basinscope as bs
from basinscope import experiments
from basinscope.experiments import MeasureConfig, RunReport, run_study
from basinscope.experiments._remedies import _sam_volume_text, _welch, more_data
from basinscope.training import TrainConfig, load_checkpoint, load_dataset, train_subset_indices

# Tiny runs: 2 epochs on 200 digits (loss ≈ 2.2), so the level 3.0 holds every minimum.
TINY = dict(epochs=2, train_size=200, batch_size=100)
M = MeasureConfig(volume_directions=4, volume_threshold=3.0, volume_tolerance=1e-4)


def _direct(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> bs.VolumeResult:
    """The volume of ``M`` by hand: cross-entropy over ``(x, y)``, the study's settings."""
    obj = bs.Objective(model, nn.CrossEntropyLoss(), (x, y))
    return bs.basin_volume(
        obj, M.volume_threshold, n_directions=M.volume_directions, rule=M.volume_rule,
        tolerance=M.volume_tolerance, seed=M.direction_seed,
    )  # fmt: skip


def _whole_training_set(train_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """All digits training examples, standardised (NumPy, float64) with the mean and SD
    of the ``train_size`` subset the runs trained on (digits have one channel)."""
    raw = load_dataset("digits", standardize=False)
    x = raw.x_train.numpy().astype(np.float64)
    kept = x[train_subset_indices(len(x), train_size, 0).numpy()]
    z = ((x - kept.mean()) / kept.std()).astype(np.float32)
    return torch.from_numpy(z), raw.y_train


# SAM and SGD can reach the same (quantised) volume: SciPy warns on a sample of equal values
@pytest.mark.filterwarnings("ignore:Precision loss occurred:RuntimeWarning")
def test_sam_vs_sgd_volumes_on_both_landscapes_equal_a_direct_call(tmp_path):
    st = experiments.sam_vs_sgd_study(**TINY, seeds=2)
    assert all(cfg.train_size == 200 for cfg in st.runs.values())
    st.measures, st.measure = ("volume",), M
    reports = run_study(st, tmp_path, progress=False)
    root = tmp_path / "sam-vs-sgd"
    x_all, y_all = _whole_training_set(200)
    own = load_dataset("digits", train_size=200)
    for r in reports:
        model = load_checkpoint(root / r.name).model
        mine = _direct(model, own.x_train, own.y_train)
        more = _direct(model, x_all, y_all)
        assert r.values["log_volume"] == mine.log_volume
        assert (r.values["log_volume_ci_low"], r.values["log_volume_ci_high"]) == mine.ci
        assert r.values["log_volume_more_data"] == more.log_volume
        assert r.values["log_volume_more_data_ci_low"] == more.ci[0]
        assert r.values["log_volume_more_data_ci_high"] == more.ci[1]
        assert (root / r.name / "volume_more_data.json").is_file()
    # the summary: per-landscape means, Welch's t and p as SciPy computes them
    text = (root / "summary.md").read_text()
    assert "## Is SAM's minimum a larger basin?" in text and "**Answer:**" in text
    ways = []
    for column, label in (
        ("log_volume", "own (200 examples, trained on)"),
        ("log_volume_more_data", "more data (all 1437)"),
    ):
        v = {k: [r.values[column] for r in reports if r.name.startswith(k)] for k in ("sgd", "sam")}
        t = stats.ttest_ind(v["sam"], v["sgd"], equal_var=False)
        d = np.mean(v["sam"]) - np.mean(v["sgd"])
        assert f"| {label} | {np.mean(v['sgd']):.1f} ± {np.std(v['sgd'], ddof=1):.1f} |" in text
        assert (
            f"| {d:+.1f} | {np.exp(d / 26122):.4f} | {t.statistic:.2f} | {t.pvalue:.3g} |" in text
        )
        ways.append("larger" if d > 0 else "smaller")
    holds = "It holds on both landscapes" if ways[0] == ways[1] else "It does not hold on both"
    assert holds in text
    # the columns of the summary table, with a title each
    assert "| log volume | log V CI low | log V CI high | log V (more data) |" in text
    # a rerun reads every volume back from its file: the same numbers
    again = run_study(st, tmp_path, progress=False)
    assert [r.values for r in again] == [r.values for r in reports]


def test_the_more_data_landscape_is_the_runs_own_pipeline_on_all_examples():
    cfg = TrainConfig(dataset="digits", train_size=200)
    data = load_dataset("digits", train_size=200)
    more = more_data(cfg, data)
    x_all, y_all = _whole_training_set(200)
    assert torch.equal(more.x_train, x_all) and torch.equal(more.y_train, y_all)
    keep = train_subset_indices(len(y_all), 200, 0)
    assert torch.equal(more.x_train[keep], data.x_train)  # bit for bit what it trained on
    assert torch.equal(more.x_test, data.x_test)
    raw = more_data(TrainConfig(dataset="digits", train_size=0.3, standardize=False), data)
    assert torch.equal(raw.x_train, load_dataset("digits", standardize=False).x_train)
    assert more_data(TrainConfig(dataset="digits"), data) is None  # trained on all of it
    assert more_data(TrainConfig(dataset="digits", train_size=1.0), data) is None


def _report(name: str, **values: float) -> RunReport:
    r = RunReport(name, TrainConfig(), {"test_acc": 0.9}, False, "")
    r.values.update(values)
    return r


UP = ([-1000.0, -990.0, -985.0], [-900.0, -896.0, -880.0])  # (SGD, SAM) log V per seed
DOWN = ([-900.0, -896.0, -880.0], [-1000.0, -990.0, -985.0])
NOISE = ([-1000.0, -900.0, -950.0], [-1010.0, -905.0, -960.0])
NOISE_UP = ([-1000.0, -900.0, -950.0], [-990.0, -895.0, -940.0])


@pytest.mark.parametrize(
    ("own", "more", "answer"),
    [
        (
            UP,
            UP,
            "It holds on both landscapes: SAM's basin is larger on each (significantly on both)",
        ),
        (UP, DOWN, "It does not hold on both landscapes (larger, then smaller)."),
        (
            NOISE,
            NOISE,
            "It holds on both landscapes: SAM's basin is smaller on each (significantly on neither)",
        ),
        (UP, NOISE_UP, "SAM's basin is larger on each (significantly on its own landscape only)"),
    ],
)
def test_the_volume_answer_follows_welch_on_each_landscape(own, more, answer):
    reports = [
        _report(f"{kind}_seed{k}", log_volume=own[i][k], log_volume_more_data=more[i][k])
        for k in range(3)
        for i, kind in enumerate(("sgd", "sam"))
    ]
    text = _sam_volume_text(reports, {"own": 200, "more": 1437, "n": 1000}, M)
    for (sgd, sam), label in ((own, "own (200 examples, trained on)"), (more, "more data (all 1437)")):  # fmt: skip
        t = stats.ttest_ind(sam, sgd, equal_var=False)
        assert _welch(sam, sgd) == (t.statistic, t.pvalue)
        d = np.mean(sam) - np.mean(sgd)
        row = f"| {label} | {np.mean(sgd):.1f} ± {np.std(sgd, ddof=1):.1f} | "
        row += f"{np.mean(sam):.1f} ± {np.std(sam, ddof=1):.1f} | {d:+.1f} | "
        assert row + f"{np.exp(d / 1000):.4f} | {t.statistic:.2f} | {t.pvalue:.3g} |" in text
    assert answer in text


def test_an_empty_basin_leaves_the_volume_test_undefined():
    reports = [_report(f"{k}_seed{s}", log_volume=-1000.0 - s, log_volume_more_data=None)
               for k in ("sgd", "sam") for s in range(2)]  # fmt: skip
    reports[0].values["log_volume"] = -900.0
    text = _sam_volume_text(reports, {"own": 200, "more": 1437, "n": 1000}, M)
    assert "| more data (all 1437) | 0 basins | 0 basins | n/a |" in text
    assert "on more data's landscape the test is undefined" in text
    assert "Whether it holds on both landscapes is undetermined." in text
    alone = _sam_volume_text(reports, {"own": 1437, "n": 1000}, M)  # trained on all data
    assert "No larger landscape" in alone and "more data (" not in alone
    assert np.isnan(_welch([1.0, 1.0], [2.0, 2.0])).all()  # no spread: the test is undefined


def test_the_studies_measure_volume_by_default():
    sam = experiments.sam_vs_sgd_study()
    assert "volume" in sam.measures and {c.train_size for c in sam.runs.values()} == {0.5}
    assert sam.measure.volume_threshold == 0.5 and sam.measure.volume_tolerance == 1e-3
    assert sam.uses("volume_threshold") and sam.uses("volume_directions")
    rem = experiments.remedies_study()
    assert "volume" in rem.measures and rem.measure.volume_threshold == 0.5
    assert experiments.sam_vs_sgd_study(train_size=None).runs["sgd_seed0"].train_size is None


def test_remedies_report_which_remedy_enlarged_the_basin(tmp_path):
    st = experiments.remedies_study(**TINY, remedies=("sam", "dropout"))
    st.measures, st.measure = ("volume",), M
    reports = run_study(st, tmp_path, progress=False)
    root = tmp_path / "remedies"
    data = load_dataset("digits", train_size=200)
    vol = {}
    for r in reports:
        direct = _direct(load_checkpoint(root / r.name).model, data.x_train, data.y_train)
        assert r.values["log_volume"] == direct.log_volume
        assert (r.values["log_volume_ci_low"], r.values["log_volume_ci_high"]) == direct.ci
        assert "log_volume_more_data" not in r.values  # remedies: the own landscape only
        vol[r.name] = direct
    text = (root / "summary.md").read_text()
    moved = {"larger": [], "smaller": []}
    base = vol["base"]
    for name in ("sam", "dropout"):
        d = vol[name].log_volume - base.log_volume
        flatter = int(d > 0) if d else None
        count = f"{flatter}/1" if flatter is not None else "0/0"  # the volume is one vote
        assert f"| {name} | {count} | n/a |" in text and f"| {d:+.1f} |" in text
        lo, hi = (vol[name], base) if d > 0 else (base, vol[name])
        overlap = "" if lo.ci[0] > hi.ci[1] else ", intervals overlap"
        moved["larger" if d > 0 else "smaller"].append(f"{name} ({d:+.1f}{overlap})")
    assert "**Basin volume** of {θ : L(θ) ≤ 3}" in text
    assert (
        f"Enlarged the base minimum's basin: {', '.join(moved['larger']) or 'none'}. "
        f"Did not: {', '.join(moved['smaller']) or 'none'}." in text
    )
