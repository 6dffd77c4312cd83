from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import small_mlp
from torch import nn

import basinscope as bs


def test_line_on_quadratic_is_half_t2_dAd(linreg):
    obj = bs.Objective(linreg.model, linreg.loss_fn, (linreg.X, linreg.y))
    d = bs.random_directions(obj, 1, norm="none", seed=0)[0]
    s = bs.line(obj, d, span=(-2, 2), steps=21)
    t = s.xcoordinates
    want = linreg.L_star + 0.5 * t**2 * float(d @ linreg.A @ d)
    np.testing.assert_allclose(s.train_loss, want, rtol=1e-12)
    assert s.complete and not s.is_2d


def test_plane_on_quadratic_matches_closed_form(linreg):
    obj = bs.Objective(linreg.model, linreg.loss_fn, (linreg.X, linreg.y))
    d = bs.random_directions(obj, 2, norm="none", seed=1)
    s = bs.plane(obj, d[0], d[1], span=(-1, 1), steps=7, yspan=(-0.5, 1.5), ysteps=5)
    M = (d @ linreg.A @ d.T).numpy()
    a, b = np.meshgrid(s.xcoordinates, s.ycoordinates, indexing="ij")
    c = np.stack([a, b], -1)
    want = linreg.L_star + 0.5 * np.einsum("ijk,kl,ijl->ij", c, M, c)
    assert s.train_loss.shape == (7, 5)
    np.testing.assert_allclose(s.train_loss, want, rtol=1e-12)


def test_save_load_roundtrip_with_li_dataset_names(tmp_path, mlp):
    model, X, y = mlp
    obj = bs.Objective(model, nn.CrossEntropyLoss(), (X[:30], y[:30]))
    d = bs.random_directions(obj, 2, seed=0)
    s = bs.plane(obj, d[0], d[1], steps=4, test=(X[30:], y[30:]), attrs={"run": "a"})
    s.save(tmp_path / "s.h5")
    with h5py.File(tmp_path / "s.h5") as f:
        for key in (
            "xcoordinates",
            "ycoordinates",
            "train_loss",
            "train_acc",
            "test_loss",
            "test_acc",
        ):
            assert key in f
        assert f["train_loss"].shape == (4, 4)
    t = bs.Surface.load(tmp_path / "s.h5")
    for key in ("xcoordinates", "ycoordinates", "train_loss", "train_acc", "test_loss", "test_acc"):
        np.testing.assert_array_equal(getattr(t, key), getattr(s, key))
    assert t.attrs["run"] == "a"
    assert t.attrs["origin_test_loss"] == pytest.approx(
        float(F.cross_entropy(model(X[30:]).detach(), y[30:])), rel=1e-12
    )
    np.testing.assert_array_equal(t.directions, d.float().numpy())


def test_resume_after_crash_gives_the_same_file(tmp_path, monkeypatch):
    model, X, y = small_mlp(seed=3)
    obj = bs.Objective(model, nn.CrossEntropyLoss(), (X, y), batch_size=16)
    d = bs.random_directions(obj, 2, seed=0)
    full = bs.plane(obj, d[0], d[1], steps=6, path=tmp_path / "full.h5", chunk=5, test=(X, y))

    # The crash is injected around the evaluation, so that both runs compute alike.
    calls = {"points": 0, "limit": 12}
    evaluate_affine = bs.Objective.evaluate_affine

    def flaky(self, coefficients, *args, **kwargs):
        if calls["points"] + len(coefficients) > calls["limit"]:
            raise RuntimeError("killed")
        calls["points"] += len(coefficients)
        return evaluate_affine(self, coefficients, *args, **kwargs)

    monkeypatch.setattr(bs.Objective, "evaluate_affine", flaky)
    crashy = bs.Objective(model, nn.CrossEntropyLoss(), (X, y), batch_size=16)
    with pytest.raises(RuntimeError, match="killed"):
        bs.plane(crashy, d[0], d[1], steps=6, path=tmp_path / "part.h5", chunk=5, test=(X, y))
    partial = bs.Surface.load(tmp_path / "part.h5")
    n_done = int(partial.computed.sum())
    assert 0 < n_done < 36
    calls["points"], calls["limit"] = 0, 10**9
    resumed = bs.plane(crashy, d[0], d[1], steps=6, path=tmp_path / "part.h5", chunk=5, test=(X, y))
    # only the missing points were evaluated, once on the training and once on the test data
    assert calls["points"] == (36 - n_done) * 2
    again = bs.Surface.load(tmp_path / "part.h5")
    for key in ("train_loss", "train_acc", "test_loss", "test_acc", "computed"):
        np.testing.assert_array_equal(getattr(again, key), getattr(full, key))
        np.testing.assert_array_equal(getattr(resumed, key), getattr(full, key))
    assert again.attrs == bs.Surface.load(tmp_path / "full.h5").attrs


def test_resume_refuses_other_directions(tmp_path, mlp):
    model, X, y = mlp
    obj = bs.Objective(model, nn.CrossEntropyLoss(), (X, y))
    d = bs.random_directions(obj, 2, seed=0)
    bs.plane(obj, d[0], d[1], steps=3, path=tmp_path / "s.h5")
    e = bs.random_directions(obj, 2, seed=1)
    with pytest.raises(bs.BasinscopeError, match=r"another computation \(different directions\)"):
        bs.plane(obj, e[0], e[1], steps=3, path=tmp_path / "s.h5")


def test_bad_grid_input(mlp):
    model, X, y = mlp
    obj = bs.Objective(model, nn.CrossEntropyLoss(), (X, y))
    d = bs.random_directions(obj, 2, seed=0)
    with pytest.raises(bs.BasinscopeError, match="at least 2 steps"):
        bs.plane(obj, d[0], d[1], steps=1)
    with pytest.raises(bs.BasinscopeError, match="max > min"):
        bs.line(obj, d[0], span=(1, -1))
    with pytest.raises(bs.BasinscopeError, match="does not exist"):
        bs.Surface.load("/nonexistent/surface.h5")


def test_accuracy_surface_matches_direct_evaluation(mlp):
    model, X, y = mlp
    obj = bs.Objective(model, nn.CrossEntropyLoss(), (X, y))
    d = bs.random_directions(obj, 1, seed=4)[0]
    s = bs.line(obj, d, steps=5)
    for t, acc in zip(s.xcoordinates, s.train_acc, strict=True):
        params = obj.space.unflatten(obj.theta0 + float(t) * d)
        out = torch.func.functional_call(model, params, (X,))
        assert acc == (out.argmax(1) == y).double().mean().item()


def test_a_plane_of_directions_of_different_lengths_is_one_sentence():
    model, X, y = small_mlp()
    obj = bs.Objective(model, nn.CrossEntropyLoss(), (X, y))
    with pytest.raises(bs.BasinscopeError, match="directions have 3 and 2 coordinates"):
        bs.plane(obj, torch.ones(3), torch.ones(2), steps=3)
