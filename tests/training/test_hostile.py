"""Hostile input to training: each is one BasinscopeError sentence, before any work (issue 10)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from basinscope.errors import BasinscopeError
from basinscope.training import (
    MLP,
    SAM,
    DataBundle,
    SmallCNN,
    TrainConfig,
    _models,
    load_checkpoint,
    load_dataset,
    load_trajectory,
    poison_labels,
    train,
    train_subset_indices,
)

F32_MAX = float(torch.finfo(torch.float32).max)


def _data(n: int = 24, n_classes: int = 3) -> DataBundle:
    g = torch.Generator().manual_seed(0)
    y = torch.arange(n) % n_classes
    x = torch.randn(n_classes, 4, generator=g)[y] + 0.1 * torch.randn(n, 4, generator=g)
    return DataBundle("tiny", x, y, x[:6].clone(), y[:6].clone(), n_classes)


def _cfg(**kw) -> TrainConfig:
    base = {"model_kwargs": {"widths": (4,)}, "batch_size": 8, "epochs": 2, "lr": 0.05}
    return TrainConfig(**{**base, **kw})


# ------------------------------------------------------------- float options


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        (
            {"lr": 1e300},
            r"lr 1e\+300 is not valid; give a positive learning rate no larger than 3.4e\+38",
        ),
        ({"optimizer": "adam", "lr": 1e39}, r"lr 1e\+39 .*no larger than 3.4e\+37"),
        ({"optimizer": "adamw", "lr": F32_MAX / 10}, "lr .*no larger than 3.4e\\+37"),
        ({"weight_decay": 1e300}, r"weight_decay 1e\+300 .*no larger than 3.4e\+38"),
        ({"sam_rho": 1e300}, r"sam_rho 1e\+300 .*no larger than 3.4e\+38"),
        ({"swa_start": 1, "swa_lr": 1e300}, r"swa_lr 1e\+300 .*no larger than 3.4e\+38"),
        ({"optimizer": "adam", "swa_start": 1, "swa_lr": 1e38}, "swa_lr 1e\\+38 .*3.4e\\+37"),
    ],
)
def test_float_options_float32_cannot_hold_are_refused(kw, match):
    with pytest.raises(BasinscopeError, match=match):
        _cfg(**kw).validate()


def test_the_largest_float32_learning_rates_are_accepted_and_diverge_as_a_result():
    _cfg(lr=F32_MAX, weight_decay=F32_MAX, sam_rho=F32_MAX).validate()
    result = train(_cfg(optimizer="adam", lr=3.3e37, epochs=1), _data(), progress=False)
    assert result.diverged and "now 3.3e+37" in result.message


def test_a_sam_divergence_names_the_radius():
    result = train(_cfg(sam_rho=1e38, epochs=1), _data(), progress=False)
    assert result.diverged
    assert "or the SAM radius sam_rho, now 1e+38" in result.message
    plain = train(_cfg(lr=1e38, epochs=1), _data(), progress=False)
    assert plain.diverged and "sam_rho" not in plain.message


def test_sam_refuses_a_radius_or_eta_float32_cannot_hold():
    param = torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(BasinscopeError, match=r"rho 1e\+300 is not valid; .*3.4e\+38"):
        SAM(torch.optim.SGD([param], lr=0.1), rho=1e300)
    with pytest.raises(BasinscopeError, match=r"eta 1e\+39 is not valid; .*3.4e\+38"):
        SAM(torch.optim.SGD([param], lr=0.1), rho=0.5, adaptive=True, eta=1e39)


# ------------------------------------------------------------------- seeds


@pytest.mark.parametrize("name", ["seed", "data_seed"])
@pytest.mark.parametrize("value", [10**20, 2**63])
def test_seeds_beyond_torch_range_are_refused(name, value):
    with pytest.raises(BasinscopeError, match=f"{name} {value} is not valid; .*below 2\\*\\*63"):
        _cfg(**{name: value}).validate()
    _cfg(**{name: 2**63 - 1}).validate()  # the largest seed torch takes


def test_the_data_functions_refuse_seeds_beyond_torch_range():
    with pytest.raises(BasinscopeError, match="seed must be an integer <= "):
        train_subset_indices(10, 5, 2**64)
    with pytest.raises(BasinscopeError, match="seed must be an integer <= "):
        poison_labels(_data(), 0.5, seed=2**64)
    with pytest.raises(BasinscopeError, match="seed must be an integer <= "):
        load_dataset("digits", train_size=0.1, seed=10**20)
    assert train_subset_indices(10, 3, 2**63 - 1).tolist() == sorted(
        torch.randperm(10, generator=torch.Generator().manual_seed(2**63 - 1))[:3].tolist()
    )


# -------------------------------------------------------------------- TOML


def test_toml_that_cannot_be_decoded_or_read_names_the_file(tmp_path):
    path = tmp_path / "c10.toml"
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(
        BasinscopeError, match=r"config file '.*c10.toml' is not valid TOML: .*UTF-8"
    ):
        TrainConfig.from_toml(path)
    with pytest.raises(BasinscopeError, match=r"config file '.*' is a directory; give a TOML file"):
        TrainConfig.from_toml(tmp_path)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("foo = 1\nlr = 0.1\n", r" holds unknown training option\(s\) 'foo'; give top-level"),
        ("train = 3\n", r" holds unknown training option\(s\) 'train'"),
        ("[optimizer]\nx = 1\n", r": optimizer \{'x': 1\} is not valid; accepted: sgd"),
        ("lr = 1e300\n", r": lr 1e\+300 is not valid"),
    ],
)
def test_toml_whose_top_level_is_not_train_options_names_the_file(tmp_path, text, match):
    path = tmp_path / "run.toml"
    path.write_text(text)
    with pytest.raises(BasinscopeError, match=rf"^config file '.*run.toml'{match}"):
        TrainConfig.from_toml(path)


# ------------------------------------------------------------------ memory


def test_a_model_whose_weights_exceed_memory_is_refused_before_it_is_built(monkeypatch):
    monkeypatch.setattr(_models, "_available_bytes", lambda: 10_000)
    # (64 + 1) * 64 + (64 + 1) * 10 = 4810 parameters, 19240 bytes of float32
    with pytest.raises(
        BasinscopeError,
        match=r"model 'mlp' with input_shape \(64,\), widths \[64\] and n_classes 10 would have "
        r"4,810 parameters, 19,240 bytes of weights, more than the 10,000 bytes",
    ):
        MLP((64,), 10, widths=(64,))
    # conv 1*2*9+2, then 2*2*2 features -> 3 classes: 20 + 8*3 + 3 = 47 parameters fit
    assert sum(p.numel() for p in SmallCNN((1, 4, 4), 3, channels=(2,)).parameters()) == 47
    with pytest.raises(
        BasinscopeError, match="model 'cnn' with .* would have 9,000,020 parameters"
    ):
        SmallCNN((1, 4, 4), 1_000_000, channels=(2,))


@pytest.mark.parametrize("widths", [(100_000_000_000,), (10**30,)])
def test_huge_widths_are_refused_in_one_sentence(widths):
    with pytest.raises(BasinscopeError, match="parameters, .* bytes of weights, more than"):
        train(_cfg(model_kwargs={"widths": widths}), _data(), progress=False)


def test_a_run_directory_whose_config_asks_for_a_huge_model_is_refused(tmp_path):
    run = tmp_path / "run"
    train(_cfg(epochs=1), _data(), out_dir=run, progress=False)
    saved = json.loads((run / "config.json").read_text())
    for widths in ([10**30], [100_000_000_000]):
        (run / "config.json").write_text(json.dumps({**saved, "model_kwargs": {"widths": widths}}))
        with pytest.raises(BasinscopeError, match="bytes of weights, more than"):
            load_checkpoint(run)
    (run / "config.json").write_text(json.dumps({**saved, "input_shape": 4}))
    with pytest.raises(BasinscopeError, match="records input_shape 4, not a list of positive"):
        load_checkpoint(run)
    (run / "config.json").write_text(json.dumps({**saved, "n_classes": 10**30}))
    with pytest.raises(BasinscopeError, match="bytes of weights, more than"):
        load_checkpoint(run)


def _npz(path, y_train, y_test):
    x = np.zeros((len(y_train), 2), dtype=np.float32)
    xt = np.zeros((len(y_test), 2), dtype=np.float32)
    np.savez(path, x_train=x, y_train=np.array(y_train), x_test=xt, y_test=np.array(y_test))
    return path


def test_sparse_labels_are_refused_with_a_relabelling_hint(tmp_path):
    path = _npz(tmp_path / "big.npz", [0, 10**9, 0], [0])
    with pytest.raises(
        BasinscopeError,
        match=r"labels up to 1000000000 but only 2 distinct ones, so n_classes would be "
        r"1000000001; relabel the classes 0..1",
    ):
        load_dataset(str(path), standardize=False)
    # a few absent classes among few classes stay accepted: n_classes is max label + 1
    assert (
        load_dataset(str(_npz(tmp_path / "few.npz", [0, 9, 5], [2])), standardize=False).n_classes
        == 10
    )


# -------------------------------------------------------------- trajectory


@pytest.fixture
def trajectory_run(tmp_path):
    run = tmp_path / "tr"
    train(_cfg(snapshot_every=1), _data(), out_dir=run, progress=False)
    return run


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda s: s.update(params=s["params"][:, :10]), r"params has shape \[3, 10\], but its 3"),
        (lambda s: s.update(params="x"), "params is not a 2-D floating-point tensor"),
        (lambda s: s.update(names=s["names"][:1]), "it records 1 names but 4 shapes"),
        (lambda s: s.update(names=[1, 2, 3, 4]), "names is not a list of parameter names"),
        (lambda s: s.update(shapes=[[-1]] * 4), "shapes is not a list of shapes"),
        (lambda s: s.update(epochs=[0, 2, 1]), "epochs is not an increasing list"),
        (lambda s: s.pop("names"), "it lacks names"),
    ],
)
def test_a_malformed_trajectory_file_is_named_as_malformed(trajectory_run, change, match):
    path = trajectory_run / "trajectory.pt"
    assert load_trajectory(trajectory_run).params.shape == (3, 4 * 4 + 4 + 4 * 3 + 3)
    saved = torch.load(path, weights_only=True)
    change(saved)
    torch.save(saved, path)
    with pytest.raises(
        BasinscopeError,
        match=rf"trajectory file '.*trajectory.pt' .*the file is malformed: {match}",
    ):
        load_trajectory(trajectory_run)


def test_a_resume_with_a_malformed_trajectory_starts_afresh(tmp_path):
    config, data, run = _cfg(epochs=3, snapshot_every=1), _data(), tmp_path / "run"
    whole = train(config, data, progress=False)

    def crash(rec):
        if rec["epoch"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(config, data, out_dir=run, progress=False, on_epoch_end=crash)
    saved = torch.load(run / "trajectory.pt", weights_only=True)
    torch.save({**saved, "params": saved["params"][:, :5]}, run / "trajectory.pt")
    seen = []
    resumed = train(config, data, out_dir=run, progress=False, on_epoch_end=seen.append)
    assert [r["epoch"] for r in seen] == [1, 2, 3]
    assert torch.equal(resumed.trajectory.params, whole.trajectory.params)


# ----------------------------------------------------------------- devices


@pytest.mark.parametrize(
    ("device", "match"),
    [
        ("meta", "device 'meta' is not valid; the meta device holds no data"),
        ("bogus", "device 'bogus' is not valid; give a torch device"),
    ],
)
def test_devices_that_hold_no_data_or_do_not_exist_are_refused(device, match):
    with pytest.raises(BasinscopeError, match=match):
        _cfg(device=device).validate()


def test_a_device_kind_this_build_lacks_is_refused():
    kind = "xla" if not hasattr(torch, "_xla") else "mps"
    try:
        torch.empty(1, device=kind)
    except (RuntimeError, AssertionError):
        pass
    else:
        pytest.skip(f"this torch build has {kind}")
    with pytest.raises(
        BasinscopeError, match=f"device '{kind}' is not valid; this torch build has no"
    ):
        _cfg(device=kind).validate()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_is_checked_where_the_run_uses_it(tmp_path):
    _cfg(device="cuda:0").validate()  # a config trained on a GPU still opens here
    with pytest.raises(BasinscopeError, match="CUDA is not available"):
        train(_cfg(device="cuda"), _data(), progress=False)
    run = tmp_path / "run"
    train(_cfg(epochs=1), _data(), out_dir=run, progress=False)
    with pytest.raises(BasinscopeError, match="CUDA is not available"):
        load_checkpoint(run, device="cuda")


@pytest.mark.parametrize("device", ["meta", "bogus"])
def test_load_checkpoint_refuses_a_device_that_cannot_hold_the_model(tmp_path, device):
    run = tmp_path / "run"
    train(_cfg(epochs=1), _data(), out_dir=run, progress=False)
    with pytest.raises(BasinscopeError, match=f"device '{device}'"):
        load_checkpoint(run, device=device)


# -------------------------------------------------------- the run directory


def test_an_empty_out_dir_is_refused_before_any_work(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(BasinscopeError, match="out_dir '' is not valid; give the path of a run"):
        train(_cfg(), _data(), out_dir="", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_a_run_directory_that_is_a_link_to_nothing_or_a_file_is_refused(tmp_path):
    dangling = tmp_path / "dangdir"
    dangling.symlink_to(tmp_path / "nonexist_dir")
    with pytest.raises(BasinscopeError, match=r"'.*dangdir' is a symbolic link to nothing"):
        train(_cfg(), _data(), out_dir=dangling, progress=False)
    (tmp_path / "afile").write_text("")
    to_file = tmp_path / "tofile"
    to_file.symlink_to(tmp_path / "afile")
    with pytest.raises(BasinscopeError, match=r"'.*tofile' is a symbolic link to a file"):
        train(_cfg(), _data(), out_dir=to_file, progress=False)
    assert not (tmp_path / "nonexist_dir").exists() and (tmp_path / "afile").read_text() == ""


def test_a_link_to_a_directory_is_a_run_directory(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    train(_cfg(epochs=1), _data(), out_dir=tmp_path / "link", progress=False)
    assert (tmp_path / "real" / "model.pt").is_file()


# ------------------------------------------------------------ factory refusal


def test_the_factory_refusal_quotes_the_path_once(tmp_path):
    run = tmp_path / "cf_nf"
    train(_cfg(epochs=1), _data(), out_dir=run, progress=False)
    saved = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**saved, "model": "mlp:x"}))
    with pytest.raises(BasinscopeError) as err:
        load_checkpoint(run)
    assert str(err.value).startswith(f"run directory {str(run)!r} names the factory 'mlp:x',")
    path = tmp_path / "run.toml"
    path.write_text('model = "mlp:x"\n')
    with pytest.raises(BasinscopeError) as err:
        TrainConfig.from_toml(path)
    assert str(err.value).startswith(f"config file {str(path)!r} names the factory 'mlp:x',")
