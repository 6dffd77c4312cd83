"""Study caches are keyed by everything that decides their numbers, survive truncation,
and a study directory has one writer (issue 10, classes 1, 3, 6 and 7)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest
import torch
from torch import nn

import basinscope as bs
from basinscope import experiments
from basinscope._keys import environment
from basinscope.experiments import MeasureConfig, Study, run_study
from basinscope.experiments._caches import _cached_json
from basinscope.training import DataBundle, TrainConfig


def _one_run() -> Study:
    cfg = TrainConfig(
        dataset="digits", train_size=100, epochs=1, lr=0.1, batch_size=50,
        model_kwargs={"widths": (8,)},
    )  # fmt: skip
    measure = MeasureConfig(grid_size=3, noise_samples=2, radius=0.5)
    return Study("one", {"a": cfg}, measure, measures=("surface", "hessian"))


def test_truncated_caches_are_recomputed_and_finished_surfaces_never_replaced(tmp_path):
    first = run_study(_one_run(), tmp_path, progress=False)[0]
    run = tmp_path / "one" / "a"
    saved = {n: json.loads((run / n).read_text()) for n in ("sharpness.json", "hessian.json")}
    for name in saved:  # killed while a foreign tool wrote them, or a full disk
        text = (run / name).read_text()
        (run / name).write_text(text[: len(text) // 2])
    again = run_study(_one_run(), tmp_path, progress=False)[0]
    for name, old in saved.items():
        new = json.loads((run / name).read_text())
        assert new == old  # recomputed: the same numbers, bit for bit
    assert again.values["lambda_max"] == first.values["lambda_max"]
    assert again.sharpness["noise"]["value"] == first.sharpness["noise"]["value"]
    # every cache records the environment it was computed in
    env = environment("cpu", torch.float32)
    assert saved["sharpness.json"]["environment"] == env == saved["hessian.json"]["environment"]
    # an infinite span is refused before any work; the finished surface is kept
    before = (run / "surface.h5").read_bytes()
    bad = _one_run()
    bad.measure = dataclasses.replace(bad.measure, span=(-float("inf"), float("inf")))
    with pytest.raises(bs.BasinscopeError, match=r"span\[0\] must be a finite number"):
        run_study(bad, tmp_path, progress=False)
    assert (run / "surface.h5").read_bytes() == before


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("span", (0.0, float("nan")), r"span\[1\] must be a finite number"),
        ("radius", float("inf"), "sharpness radius must be a finite number"),
        ("sigma", float("nan"), "noise sigma must be a finite number"),
        ("worst_radius", -1.0, "worst radius must be positive"),
        ("grid_size", 3.5, "grid size must be an integer"),
        ("grid_size", 100000, "memory"),
        ("noise_samples", 2.5, "noise samples must be an integer"),
        ("volume_threshold", float("nan"), "volume threshold must be a finite number"),
        ("volume_tolerance", 1.0, r"volume tolerance must lie in \(0, 1\)"),
        ("volume_rule", "maybe", "volume rule must be"),
        ("pac_target", float("nan"), "PAC-Bayes target must be a finite number"),
    ],
)
def test_measure_config_refuses_what_cannot_give_numbers(field, value, message):
    with pytest.raises(bs.BasinscopeError, match=message):
        dataclasses.replace(MeasureConfig(), **{field: value}).validate()


def _bundle(seed: int, shift: float = 0.0) -> DataBundle:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(40, 5, generator=g)
    y = torch.randint(0, 3, (40,), generator=g)
    x_train = x[:30].clone()
    x_train[0, 0] += shift
    return DataBundle("toy", x_train, y[:30], x[30:], y[30:], 3)


def test_measurements_are_keyed_by_the_evaluation_data(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3))
    m = MeasureConfig(grid_size=3, noise_samples=2, radius=0.5)
    surf, first = experiments.measure_run(model, _bundle(0), m, tmp_path, progress=False)
    # the same weights on other training data: measured afresh, never the stale numbers
    surf2, second = experiments.measure_run(
        model, _bundle(0, shift=1.0), m, tmp_path, progress=False
    )
    assert second["settings"]["objective"]["data"] != first["settings"]["objective"]["data"]
    assert surf2.attrs["origin_train_loss"] != surf.attrs["origin_train_loss"]
    obj = experiments.train_objective(model, _bundle(0, shift=1.0), skip_bias_norm=True)
    assert surf2.attrs["origin_train_loss"] == obj.loss()
    assert second["direct"]["loss0"] == obj.loss()
    volume_settings = []
    for data in (_bundle(0), _bundle(1)):
        experiments.cached_volume(
            model, data, dataclasses.replace(m, volume_directions=2, volume_threshold=5.0),
            tmp_path / "volume.json",
        )  # fmt: skip
        volume_settings.append(json.loads((tmp_path / "volume.json").read_text())["settings"])
    assert volume_settings[0]["objective"]["data"] != volume_settings[1]["objective"]["data"]


def test_cached_json_reuses_only_its_own_numbers(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return {"value": 0.5 * len(calls)}

    env = environment("cpu", torch.float32)
    path = tmp_path / "c.json"
    assert _cached_json(path, {"a": 1}, compute, env)["value"] == 0.5
    assert _cached_json(path, {"a": 1}, compute, env)["value"] == 0.5  # reused
    assert _cached_json(path, {"a": 2}, compute, env)["value"] == 1.0  # other settings
    path.write_text("[1, 2")  # truncated
    assert _cached_json(path, {"a": 2}, compute, env)["value"] == 1.5
    path.write_bytes(b"\xff\xfe\x00")  # not text
    assert _cached_json(path, {"a": 2}, compute, env)["value"] == 2.0
    # another thread count only changes rounding: reused, with a warning
    other = {**env, "threads": env["threads"] + 1}
    with pytest.warns(RuntimeWarning, match="threads"):
        assert _cached_json(path, {"a": 2}, compute, other)["value"] == 2.0
    assert len(calls) == 4


def test_a_second_process_on_the_study_directory_gets_one_sentence(tmp_path):
    root = tmp_path / "one"
    holder = (
        "import sys\n"
        "from basinscope._lock import output_lock\n"
        "with output_lock(sys.argv[1], 'the study directory'):\n"
        "    print('held', flush=True)\n"
        "    sys.stdin.read()\n"
    )
    root.mkdir()
    with subprocess.Popen(
        [sys.executable, "-c", holder, str(root)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            assert proc.stdout.readline().strip() == "held"  # EOF if the holder died
            with pytest.raises(bs.BasinscopeError, match="the study directory .* is being written"):
                run_study(_one_run(), tmp_path, progress=False)
            assert not (root / "study.json").exists() and not (root / "a").exists()
        finally:
            proc.stdin.close()
            proc.wait(timeout=120)
