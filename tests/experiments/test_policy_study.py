"""The policy study: REINFORCE against PPO, flatness of the return against robustness."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from scipy import stats

from basinscope import policy as P
from basinscope import sharpness
from basinscope.experiments import STUDIES, run_study
from basinscope.experiments import _policy as study_module


def test_policy_study_numbers_are_the_measures_of_its_policies(tmp_path, monkeypatch):
    monkeypatch.setattr(study_module, "PERTURBATIONS", {"length": (2.0,), "gravity": (0.5,)})
    st = STUDIES["policy"](seeds=(0, 1), iterations=2, episodes=3)
    st.measure.grid_size, st.measure.volume_directions, st.measure.noise_samples = 5, 2, 2
    st.measure.radius = 0.6  # a few grid points within ε on the 5×5 plane
    rows = run_study(st, tmp_path, progress=False)
    root = tmp_path / "policy"
    assert [r["run"] for r in rows] == ["reinforce_s0", "reinforce_s1", "ppo_s0", "ppo_s1"]
    for r in rows:  # every number recomputed from the trained policy on disk
        run = P.train_policy(
            study_module._policy_net(r["seed"]),
            P.CartPole(),
            algorithm=r["algorithm"],
            iterations=2,
            lr=1e-2,
            seed=r["seed"],
            out_dir=root / r["run"],
        )  # fmt: skip  (a finished run: reloaded, not retrained)
        obj = P.return_objective(run.policy, P.CartPole(), episodes=3, seed=10_000)
        assert r["return"] == pytest.approx(-obj.loss(), rel=1e-12)
        noise = sharpness.average_case(obj, 0.1, samples=2, seed=0)
        assert r["noise_sharpness"] == pytest.approx(noise.value, rel=1e-12)
        long = P.CartPole(P.CartPoleParams(length=1.0))
        light = P.CartPole(P.CartPoleParams(gravity=4.9))
        want = np.mean([-P.return_objective(run.policy, e, episodes=3, seed=10_000).loss()
                        for e in (long, light)])  # fmt: skip
        assert r["robustness"] == pytest.approx(want, rel=1e-12)
    saved = json.loads((root / "robustness.json").read_text())
    tau, p = stats.kendalltau([r["noise_sharpness"] for r in rows], [r["robustness"] for r in rows])
    assert saved["kendall"]["noise_sharpness"] == pytest.approx([tau, p], nan_ok=True)
    text = (root / "summary.md").read_text()
    assert "Measured answer" in text and "Kendall τ with robustness" in text
    with (root / "summary.csv").open() as fh:
        assert [row["run"] for row in csv.DictReader(fh)] == [r["run"] for r in rows]
    assert (root / "figures" / "robustness.png").is_file()
    page = (root / "report.html").read_text()  # the report speaks of returns, not losses
    assert "Negative return surfaces" in page and "mean return of the training episodes" in page
    again = run_study(st, tmp_path, progress=False)  # everything cached: the same numbers
    assert [r["noise_sharpness"] for r in again] == [r["noise_sharpness"] for r in rows]


def test_policy_study_refuses_classifier_options(tmp_path, capsys):
    from basinscope.cli import main as cli_main

    assert (
        cli_main(["run", "--study", "policy", "--dataset", "digits", "--out", str(tmp_path)]) == 2
    )
    err = capsys.readouterr().err
    assert "policy study takes no dataset" in err and "Traceback" not in err
    assert not (tmp_path / "policy").exists()
