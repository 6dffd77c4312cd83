from __future__ import annotations

import csv
import itertools
import json
import shutil

import numpy as np
import pytest
import torch

import basinscope as bs
from basinscope import experiments, sharpness
from basinscope.experiments import MeasureConfig, Study, run_study
from basinscope.experiments._remedies import _REMEDY_MEASURES
from basinscope.training import TrainConfig


def _tiny(**over):
    base = dict(dataset="digits", train_size=200, epochs=2, model_kwargs={"widths": (16,)})
    runs = {
        "a": TrainConfig(lr=0.1, batch_size=20, **{**base, **over}),
        "b": TrainConfig(lr=0.1, batch_size=100, **{**base, **over}),
    }
    return Study("tiny", runs, MeasureConfig(grid_size=4, noise_samples=4, radius=0.5))


def test_study_writes_consistent_results(tmp_path):
    reports = run_study(_tiny(), tmp_path, progress=False)
    root = tmp_path / "tiny"
    with (root / "summary.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["run"] for r in rows] == ["a", "b"]
    for rep, row in zip(reports, rows, strict=True):
        metrics = json.loads((root / rep.name / "metrics.json").read_text())
        assert float(row["test_acc"]) == pytest.approx(metrics["final"]["test_acc"])
        assert float(row["gap_loss"]) == pytest.approx(
            metrics["final"]["test_loss"] - metrics["final"]["train_loss"]
        )
        surf = bs.Surface.load(root / rep.name / "surface.h5")
        assert surf.complete and surf.train_loss.shape == (4, 4)
        # the table's grid sharpness is the one read off the saved surface (4 points
        # within ε on this 4×4 grid: a coarse estimate, flagged in the summary)
        with pytest.warns(RuntimeWarning, match="rounding noise"):
            grid = sharpness.from_surface(surf, 0.5)
        assert float(row["eps_sharpness_surface"]) == pytest.approx(grid.value, rel=1e-12)
        assert row["coarse_measures"] == "eps_sharpness_surface"
        # the origin loss of the surface is the trained model's final train loss
        assert surf.attrs["origin_train_loss"] == pytest.approx(
            metrics["final"]["train_loss"], rel=1e-5
        )
    for name in ("grid_contour.png", "grid_surface.png", "sharpness_eps.png", "contour_a.png"):
        assert (root / "figures" / name).stat().st_size > 1000
    assert "ε-sharpness" in (root / "summary.md").read_text()


def test_rerun_skips_finished_work(tmp_path, monkeypatch):
    run_study(_tiny(), tmp_path, progress=False)
    before = (tmp_path / "tiny" / "a" / "surface.h5").read_bytes()

    def boom(*a, **k):
        raise AssertionError("recomputed")

    monkeypatch.setattr("basinscope.training._loop._train", boom)
    monkeypatch.setattr("basinscope.objective.Objective.evaluate_affine", boom)
    monkeypatch.setattr("basinscope.sharpness.average_case", boom)
    reports = run_study(_tiny(), tmp_path, progress=False)
    assert len(reports) == 2
    assert (tmp_path / "tiny" / "a" / "surface.h5").read_bytes() == before


def test_diverged_run_is_reported_not_fatal(tmp_path):
    s = _tiny()
    s.runs["b"] = TrainConfig(
        dataset="digits",
        train_size=200,
        epochs=2,
        lr=1e6,
        batch_size=20,
        model_kwargs={"widths": (64, 64)},
    )
    reports = run_study(s, tmp_path, progress=False)
    assert [r.row()["status"] for r in reports] == ["ok", "diverged"]
    md = (tmp_path / "tiny" / "summary.md").read_text()
    assert "diverged" in md


def test_measure_config_validation():
    with pytest.raises(bs.BasinscopeError, match="grid size"):
        MeasureConfig(grid_size=1).validate()
    with pytest.raises(bs.BasinscopeError, match="span"):
        MeasureConfig(span=(1.0, -1.0)).validate()


def test_builtin_grid_is_the_classic_four_runs():
    s = experiments.STUDIES["lr-batch"]()
    assert len(s.runs) == 4
    lrs = {c.lr for c in s.runs.values()}
    batches = {c.batch_size for c in s.runs.values()}
    assert len(lrs) == 2 and len(batches) == 2
    assert len({(c.epochs, c.dataset, c.model, c.seed) for c in s.runs.values()}) == 1
    assert np.prod([len(lrs), len(batches)]) == 4


def test_volume_studies_small(tmp_path):
    from basinscope.experiments import dataset_size_study, poison_study

    s = dataset_size_study(sizes=(0.1, 0.3), steps=60, batch_size=32)
    s.measure = MeasureConfig(volume_directions=4, volume_threshold=3.0, volume_tolerance=0.05)
    reports = run_study(s, tmp_path, progress=False)
    root = tmp_path / "dataset-size"
    cross = json.loads((root / "cross_landscape.json").read_text())
    assert cross["rows"] == ["size-0.1", "size-0.3"]
    # the diagonal is each run's own-landscape volume
    for i, r in enumerate(reports):
        assert cross["log_volume"][i][i] == pytest.approx(r.values["log_volume"])
        assert r.values["n_train"] == round({0: 0.1, 1: 0.3}[i] * 1437)
    fit = json.loads((root / "fit.json").read_text())
    slope = (fit["log_volume"][1] - fit["log_volume"][0]) / np.log(
        fit["sizes"][1] / fit["sizes"][0]
    )
    assert fit["slope"] == pytest.approx(slope, rel=1e-9)  # two points: the exact line
    assert (root / "figures" / "cross_landscape.png").exists()

    p = poison_study(fractions=(0.0, 0.3), steps=60, batch_size=32)
    p.measure = MeasureConfig(
        volume_directions=4,
        volume_threshold=3.0,
        volume_tolerance=0.05,
        grid_size=3,
        noise_samples=2,
    )
    reports = run_study(p, tmp_path, progress=False)
    rows = [r.row() for r in reports]
    assert [row["label_noise"] for row in rows] == [0.0, 0.3]
    assert all(row["eps_sharpness_direct"] is not None for row in rows)
    with pytest.raises(bs.BasinscopeError, match="fractions"):
        poison_study(fractions=(1.5,))
    for bad in (0.0, 1.5, -3):
        with pytest.raises(bs.BasinscopeError, match="dataset sizes"):
            dataset_size_study(sizes=(bad,))
    counts = dataset_size_study(sizes=(100, 0.5, 1))
    assert [c.train_size for c in counts.runs.values()] == [0.5, None, 100]


def test_hessian_measure_in_a_study(tmp_path):
    s = _tiny()
    s.runs = {"a": s.runs["a"]}
    s.measures = ("hessian",)
    (report,) = run_study(s, tmp_path, progress=False)
    saved = json.loads((tmp_path / "tiny" / "a" / "hessian.json").read_text())
    row = report.row()
    assert row["lambda_max"] == saved["lambda_max"] > 0
    assert row["hessian_trace"] == saved["trace"]
    # λ_max is the top eigenvalue: no Rayleigh quotient of H may exceed it
    from torch import nn

    from basinscope.training import load_dataset

    data = load_dataset("digits", train_size=200)
    obj = bs.Objective(report.model, nn.CrossEntropyLoss(), (data.x_train, data.y_train))
    import torch

    v = torch.randn(obj.n, generator=torch.Generator().manual_seed(0))
    v = v / v.norm()
    assert float(v @ obj.hvp(v)) <= saved["lambda_max"] * (1 + 1e-4)


def test_lr_batch_grid_adds_interpolation_and_correlations(small_lr_batch):
    root, reports = small_lr_batch
    by = {r.name: r for r in reports}
    for lr in ("high-lr", "low-lr"):
        s = bs.Surface.load(root / f"interpolation_{lr}.h5")
        x = s.xcoordinates
        assert s.complete and x[0] == -0.5 and x[-1] == 1.5
        small, large = by[f"{lr}_small-batch"].final, by[f"{lr}_large-batch"].final
        assert s.train_loss[x == 0][0] == pytest.approx(small["train_loss"], rel=1e-5)
        assert s.train_loss[x == 1][0] == pytest.approx(large["train_loss"], rel=1e-5)
        assert s.test_acc[x == 1][0] == pytest.approx(large["test_acc"], abs=1e-12)
        assert (root / "figures" / f"interpolation_{lr}.png").is_file()
    text = (root / "summary.md").read_text()
    assert "Interpolation between minima" in text and "Kendall" in text
    corr = json.loads((root / "correlation.json").read_text())
    assert {c["measure"] for c in corr} >= {"noise_sharpness", "param_norm"}
    assert all(c["n"] == 4 for c in corr)
    with (root / "summary.csv").open() as fh:
        norms = [float(r["param_norm"]) for r in csv.DictReader(fh)]
    model = by["high-lr_small-batch"].model
    assert norms[list(by).index("high-lr_small-batch")] == pytest.approx(
        float(sum(p.detach().double().pow(2).sum() for p in model.parameters()).sqrt()), rel=1e-12
    )


def test_suite_measure_matches_direct_calls(tmp_path):
    st = _tiny()
    st.measures = ("suite",)
    st.measure = MeasureConfig(noise_samples=4, pac_samples=4)
    reports = run_study(st, tmp_path, progress=False)
    rep = reports[0]
    obj = bs.Objective(
        rep.model, torch.nn.CrossEntropyLoss(), (rep.data.x_train, rep.data.y_train),
        skip_bias_norm=True,
    )  # fmt: skip
    wc = sharpness.worst_case(obj, 0.1, seed=0)
    pb = sharpness.pac_bayes(obj, target=0.1, samples=4, seed=0, magnitude_aware=True)
    assert rep.values["worst_case_l2"] == pytest.approx(wc.value, rel=1e-12)
    assert rep.values["pac_bayes_mag_sigma"] == pytest.approx(pb.sigma, rel=1e-12)
    saved = json.loads((tmp_path / "tiny" / "a" / "suite.json").read_text())
    assert saved["keskar"]["value"] == rep.values["keskar"] > 0
    assert saved["worst_case_linf"]["norm"] == "linf"
    text = (tmp_path / "tiny" / "summary.md").read_text()
    assert "Keskar φ" in text and "PAC-Bayes σ" in text
    # one vocabulary: the sharpness suite's keys, in suite.json and the summary
    assert set(saved) == set(experiments.SUITE_PART) | {"settings", "environment"}
    adaptive = sharpness.worst_case(obj, 0.5, adaptive=True, seed=0)
    assert rep.values["worst_case_adaptive"] == saved["worst_case_adaptive"]["value"]
    assert rep.values["worst_case_adaptive"] == pytest.approx(adaptive.value, rel=1e-12)
    assert "average_case_adaptive" in rep.values and "adaptive_worst_case" not in rep.values
    # a suite.json of the former vocabulary is recomputed, not misread
    path = tmp_path / "tiny" / "a" / "suite.json"
    old = {
        ("adaptive_worst_case" if k == "worst_case_adaptive" else k): v for k, v in saved.items()
    }
    old["settings"] = {k: v for k, v in saved["settings"].items() if k != "measures"}
    path.write_text(json.dumps(old))
    again = run_study(st, tmp_path, progress=False)[0]
    assert json.loads(path.read_text()) == saved
    assert again.values == rep.values


def test_remedies_study_compares_each_remedy_with_the_base(tmp_path):
    st = experiments.remedies_study(epochs=4, train_size=200, batch_size=100)
    assert list(st.runs) == list(experiments.REMEDIES)
    runs = st.runs
    assert runs["sam"].sam_rho == 0.05 and runs["asam"].sam_adaptive
    assert runs["swa"].swa_start == 3 and runs["small-batch"].batch_size == 16
    assert runs["warmup-cosine"].schedule == "cosine" and runs["weight-decay"].weight_decay > 0
    for name, cfg in runs.items():  # one change each
        diff = {k for k, v in cfg.to_dict().items() if runs["base"].to_dict()[k] != v}
        assert (name == "base") == (not diff)
    st = experiments.remedies_study(
        epochs=4, train_size=200, batch_size=100, remedies=("sam", "swa")
    )
    assert list(st.runs) == ["base", "sam", "swa"]
    st.measures = ("surface", "suite", "trajectory")
    st.measure = MeasureConfig(grid_size=3, noise_samples=4, pac_samples=4, radius=0.5)
    reports = run_study(st, tmp_path, progress=False)
    traj = bs.Surface.load(tmp_path / "remedies" / "sam" / "trajectory.h5")
    assert traj.complete and traj.attrs["trajectory_epochs"] == [0, 1, 2, 3, 4]
    assert 0 < reports[1].values["pca_explained"] <= 1 + 1e-12
    assert (tmp_path / "remedies" / "figures" / "trajectory_sam.png").is_file()
    text = (tmp_path / "remedies" / "summary.md").read_text()
    assert "Did the remedy flatten the minimum?" in text and "SWA: the averaged weights" in text
    rows = {r.name: r.row() for r in reports}
    base, sam = rows["base"], rows["sam"]
    votes = [
        (sam[m] > base[m]) if "sigma" in m else (sam[m] < base[m])
        for m in _REMEDY_MEASURES
        if m in sam and sam[m] is not None and sam[m] != base[m]
    ]
    assert f"| sam | {sum(votes)}/{len(votes)} |" in text
    assert "- **sam**" in text and "- **swa**" in text and "- **dropout**" not in text
    with pytest.raises(bs.BasinscopeError, match="unknown remedy"):
        experiments.remedies_study(remedies=("magic",))


def test_sam_vs_sgd_runs_a_welch_test(tmp_path):
    from scipy import stats

    st = experiments.sam_vs_sgd_study(epochs=2, train_size=200, batch_size=100, seeds=2)
    assert sorted(st.runs) == ["sam_seed0", "sam_seed1", "sgd_seed0", "sgd_seed1"]
    st.measures = ()
    reports = run_study(st, tmp_path, progress=False)
    acc = {
        k: [r.final["test_acc"] for r in reports if r.name.startswith(k)] for k in ("sgd", "sam")
    }
    p = stats.ttest_ind(acc["sam"], acc["sgd"], equal_var=False).pvalue
    text = (tmp_path / "sam-vs-sgd" / "summary.md").read_text()
    assert f"p = {p:.3g}" in text and "Diagnosis" in text
    with pytest.raises(bs.BasinscopeError, match="at least 2 seeds"):
        experiments.sam_vs_sgd_study(seeds=1)


def test_lr_batch_grid_study_is_the_full_factorial():
    st = experiments.lr_batch_grid_study()
    keys = {(c.lr, c.batch_size, c.seed) for c in st.runs.values()}
    assert len(st.runs) == 18 and keys == set(
        itertools.product((0.5, 0.2, 0.1), (16, 64, 512), (0, 1))
    )
    assert {c.epochs for c in st.runs.values()} == {60}
    assert "suite" in st.measures


def test_dataset_size_draws_the_plane_through_three_minima(tmp_path):
    from basinscope import plots
    from basinscope.experiments import dataset_size_study
    from basinscope.experiments._measures import train_objective

    s = dataset_size_study(sizes=(0.05, 0.1, 0.3), steps=60, batch_size=32)
    s.measure = MeasureConfig(
        volume_directions=2, volume_threshold=3.0, volume_tolerance=0.1, grid_size=3
    )
    reports = run_study(s, tmp_path, progress=False)
    root = tmp_path / "dataset-size"
    plane = bs.Surface.load(root / "plane_three_sizes.h5")
    small_plane = bs.Surface.load(root / "plane_three_sizes_smallest.h5")
    small, big = reports[0], reports[-1]  # the runs are in order of size
    labels = [lab for lab, _ in plane.attrs["marks"]]
    assert labels == [f"{r.values['n_train']} ex." for r in reversed(reports)]
    # the first mark is the largest set's own minimum, on its own landscape
    assert dict(plane.attrs["mark_losses"])[labels[0]] == pytest.approx(
        big.final["train_loss"], rel=1e-5
    )
    assert dict(plane.attrs["marks"])[labels[0]] == [0.0, 0.0] and plane.complete
    # the same plane (models, coordinates, grid) on the smallest set's landscape
    assert small_plane.complete and small_plane.attrs["marks"] == plane.attrs["marks"]
    assert np.array_equal(small_plane.xcoordinates, plane.xcoordinates)
    assert np.array_equal(small_plane.ycoordinates, plane.ycoordinates)
    assert not np.allclose(small_plane.train_loss, plane.train_loss)
    # each mark's loss is its model's loss on that landscape's training data
    for surf, land in ((plane, big), (small_plane, small)):
        got = dict(surf.attrs["mark_losses"])
        for lab, r in zip(labels, reversed(reports), strict=True):
            want = train_objective(r.model, land.data).loss()
            assert got[lab] == pytest.approx(want, rel=1e-6), (lab, land.name)  # float32
    # the same numbers, the classification and one colour range for both panels
    fan = json.loads((root / "plane_three_sizes.json").read_text())
    for key, surf in (("full", plane), ("smallest", small_plane)):
        assert fan["landscapes"][key]["train_loss"] == surf.attrs["mark_losses"]
        low = [lab for lab, v in surf.attrs["mark_losses"] if v <= 3.0]
        assert fan["landscapes"][key]["low"] == low
    assert fan["zrange"] == pytest.approx(plots.common_zrange([small_plane, plane]))
    assert fan["zrange"][0] == pytest.approx(
        min(small_plane.train_loss.min(), plane.train_loss.min())
    )
    text = (root / "summary.md").read_text()
    assert "plane through three minima" in text
    assert ("do not show" in text) != fan["paper_pattern"]
    assert f"{fan['landscapes']['smallest']['train_loss'][2][1]:.4f}" in text
    assert (root / "figures" / "plane_three_sizes.png").is_file()


def test_retrained_runs_are_measured_afresh(tmp_path):
    run_study(_tiny(), tmp_path, progress=False)
    root = tmp_path / "tiny" / "a"
    old = json.loads((root / "sharpness.json").read_text())
    # Training refuses to replace a finished run of another configuration: remove the
    # training files only, so the measurements of the old weights stay behind.
    for f in [*root.iterdir(), *root.with_name("b").iterdir()]:
        if f.name not in ("surface.h5", "sharpness.json"):
            shutil.rmtree(f) if f.is_dir() else f.unlink()
    again = _tiny(epochs=3)  # other weights: every cached measurement must follow
    again.measure = MeasureConfig(grid_size=5, noise_samples=4, radius=0.5)  # and another grid
    reports = run_study(again, tmp_path, progress=False)
    surf = bs.Surface.load(root / "surface.h5")
    assert surf.train_loss.shape == (5, 5) and surf.complete
    assert surf.attrs["origin_train_loss"] == pytest.approx(
        reports[0].final["train_loss"], rel=1e-5
    )
    new = json.loads((root / "sharpness.json").read_text())
    assert new["settings"]["model"] != old["settings"]["model"]
    assert new["settings"]["model"] == experiments.model_fingerprint(reports[0].model)


def test_sam_finish_without_spread_draws_no_conclusion(tmp_path):
    from basinscope.experiments import RunReport
    from basinscope.experiments._remedies import _sam_finish

    cfg = TrainConfig()

    def rep(name, acc, diverged=False):
        return RunReport(name, cfg, {"test_acc": acc}, diverged, "diverged at step 1")

    flat = [rep("sgd_seed0", 0.9), rep("sgd_seed1", 0.9), rep("sam_seed0", 0.903)]
    flat.append(rep("sam_seed1", 0.903))
    text = _sam_finish(None, flat, tmp_path)
    assert "test is undefined" in text and "helps significantly" not in text
    mixed = [rep("sgd_seed0", 0.90), rep("sgd_seed1", 0.91), rep("sgd_seed2", 0.92)]
    mixed += [rep("sam_seed0", 0.93), rep("sam_seed1", 0.95), rep("sam_seed2", 0.5, True)]
    text = _sam_finish(None, mixed, tmp_path)
    assert "over 3 SGD and 2 SAM seeds" in text
