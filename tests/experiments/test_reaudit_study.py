"""Re-audit of issue 10 for studies: study.json only after every check, measure settings
checked before training, volumes and noise samples resumable inside a study, the
PAC-Bayes search's unbracketed σ' shown as a bound, and α overflow in ``rescale``."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest
from torch import nn

import basinscope as bs
from basinscope.experiments import MeasureConfig, Study, _measures, run_study, summary_markdown
from basinscope.training import TrainConfig


def _volume_study(epochs: int = 1, dataset: str = "digits") -> Study:
    cfg = TrainConfig(
        dataset=dataset, train_size=100, epochs=epochs, lr=0.1, batch_size=50,
        model_kwargs={"widths": (8,)},
    )  # fmt: skip
    measure = MeasureConfig(volume_threshold=5.0, volume_directions=5)
    return Study("vol", {"a": cfg}, measure, measures=("volume",))


# ------------------------------------------------------- study.json (failure 2)
def test_a_refused_study_leaves_study_json_as_it_was(tmp_path):
    run_study(_volume_study(), tmp_path, progress=False)
    path = tmp_path / "vol" / "study.json"
    before = path.read_bytes()
    with pytest.raises(bs.BasinscopeError, match="another configuration"):
        run_study(_volume_study(epochs=2), tmp_path, progress=False)
    assert path.read_bytes() == before
    with pytest.raises(bs.BasinscopeError, match="unknown dataset 'nosuch2'"):
        run_study(_volume_study(dataset="nosuch2"), tmp_path, progress=False)
    assert path.read_bytes() == before
    assert json.loads(before)["runs"]["a"]["epochs"] == 1


# ------------------------------------------------ volume settings (failure 4)
@pytest.mark.parametrize("rule", ["relative", "absolute"])
@pytest.mark.parametrize("threshold", [-1.0, 0.0])
def test_a_non_positive_volume_threshold_is_refused_before_training(tmp_path, rule, threshold):
    study = _volume_study()
    study.measure = dataclasses.replace(study.measure, volume_rule=rule, volume_threshold=threshold)
    with pytest.raises(bs.BasinscopeError, match="the volume threshold must be positive"):
        run_study(study, tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_a_study_knows_which_settings_it_uses():
    from basinscope.experiments import STUDIES

    size, grid = STUDIES["dataset-size"](), STUDIES["lr-batch"]()
    assert size.uses("volume_threshold") and not grid.uses("volume_threshold")
    assert grid.uses("radius") and not size.uses("radius")
    assert size.uses("grid_size")  # the plane through three minima


# ------------------------------------------------- resumable volume (failure 5)
def test_a_study_killed_inside_its_volume_resumes_the_missing_rays(tmp_path, monkeypatch):
    from basinscope.landscape import _volume as volume

    monkeypatch.setitem(volume.basin_volume.__kwdefaults__, "batch", 2)
    run_study(_volume_study(), tmp_path / "whole", progress=False)
    search, calls, kill = volume._search, [], [2]

    def killed_on_the_second_batch(*args):
        calls.append(1)
        if len(calls) in kill:
            raise KeyboardInterrupt
        return search(*args)

    monkeypatch.setattr(volume, "_search", killed_on_the_second_batch)
    with pytest.raises(KeyboardInterrupt):
        run_study(_volume_study(), tmp_path / "part", progress=False)
    run = tmp_path / "part" / "vol" / "a"
    assert not (run / "volume.json").exists()
    assert len(list(run.glob("volume.json.*.partial"))) == 1  # the first batch of rays
    calls.clear()
    kill.clear()
    run_study(_volume_study(), tmp_path / "part", progress=False)
    assert len(calls) == 2  # rays 2-3 and 4: rays 0-1 came from the partial file
    whole = json.loads((tmp_path / "whole" / "vol" / "a" / "volume.json").read_text())
    assert json.loads((run / "volume.json").read_text()) == whole
    assert whole["log_volume"] is not None
    assert list(run.glob("*.partial")) == []  # the result is cached: no partial left


def test_partial_files_of_other_settings_are_the_studys_to_delete(tmp_path):
    from basinscope.experiments._caches import partial_beside

    cache = tmp_path / "volume.json"
    mine = partial_beside(cache, {"threshold": 5})
    mine.write_text("{}")
    other = partial_beside(cache, {"threshold": 6})
    assert other != mine and not mine.exists()
    assert partial_beside(cache, {"threshold": 6}) == other


# ------------------------------------------------ unbracketed σ' (failure 7)
def test_an_unbracketed_pac_bayes_sigma_is_shown_as_a_bound(monkeypatch, tmp_path):
    from basinscope.experiments import RunReport

    def part(sigma, increase, bracketed):
        return {"value": 0.5, "sigma": sigma, "bound": 15.0, "increase": increase,
                "target": 0.1, "bracketed": bracketed}  # fmt: skip

    saved = {k: part(1.0, 0.0, True) for k in _measures.SUITE_PART}
    saved["pac_bayes"] = part(10.0, 0.05, False)  # even the search's cap passes
    saved["pac_bayes_mag"] = part(1e-6, 0.3, False)  # even the smallest σ fails
    monkeypatch.setattr(_measures, "_cached_json", lambda *a, **k: saved)
    monkeypatch.setattr(_measures, "train_objective", lambda *a, **k: _FakeObjective())
    monkeypatch.setattr(_measures, "objective_key", lambda obj: {})
    monkeypatch.setattr(_measures, "_env", lambda obj: {})
    monkeypatch.setattr(_measures, "data_fingerprint", lambda data: "data")
    report = RunReport("r", TrainConfig(), {}, False, "", model=nn.Linear(2, 2))
    _measures._measure_suite(report, MeasureConfig(), tmp_path, False)
    assert report.values["pac_bayes_sigma"] == 10.0
    text = summary_markdown([report])
    assert "PAC-Bayes σ not bracketed (a bound only)" in text
    assert "pac_bayes_sigma ≥ 10; pac_bayes_mag_sigma ≤ 1e-06" in text


class _FakeObjective:
    pass


# ------------------------------------------------------ rescale α (failure 8)
@pytest.mark.parametrize("alpha, side", [(1e300, "large"), (1e-300, "small")])
def test_an_alpha_whose_rescaled_weights_overflow_is_refused(alpha, side):
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(bs.BasinscopeError, match=re.escape(f"alpha = {alpha:g} is too {side}")):
        bs.rescale(model, "0", alpha)
    assert bs.rescale(model, "0", 10.0)[0].weight.isfinite().all()
