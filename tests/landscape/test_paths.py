"""Paths between minima: interpolation, the three-model plane, PCA of a trajectory,
and BatchNorm statistics recomputed along a path."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA
from torch import nn

import basinscope as bs
from basinscope.errors import BasinscopeError
from basinscope.landscape import interpolate, pca_directions, three_model_plane, trajectory_plane
from basinscope.plots import plot_contour


def _perturbed(model: nn.Module, seed: int, scale: float = 0.3) -> nn.Module:
    other = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return other


def test_interpolation_end_points_reproduce_both_models(mlp):
    model, X, y = mlp
    other = _perturbed(model, 1)
    obj = bs.Objective(model, nn.CrossEntropyLoss(), (X, y))
    obj_b = bs.Objective(other, nn.CrossEntropyLoss(), (X, y))
    s = interpolate(obj, other, span=(-0.5, 1.5), steps=9, test=(X[:20], y[:20]))
    alphas = s.xcoordinates
    i0, i1 = int(np.flatnonzero(alphas == 0.0)[0]), int(np.flatnonzero(alphas == 1.0)[0])
    assert s.train_loss[i0] == pytest.approx(obj.loss(), rel=1e-13)
    assert s.train_loss[i1] == pytest.approx(obj_b.loss(), rel=1e-13)
    assert s.train_acc[i1] == float(obj_b.evaluate(obj_b.theta0)[1][0])
    # an interior point equals the model with interpolated weights
    a = alphas[3]
    mid = copy.deepcopy(model)
    with torch.no_grad():
        for p, q, r in zip(mid.parameters(), model.parameters(), other.parameters(), strict=True):
            p.copy_((1 - a) * q + a * r)
    assert s.train_loss[3] == pytest.approx(
        bs.Objective(mid, nn.CrossEntropyLoss(), (X, y)).loss(), rel=1e-12
    )
    test_b = obj_b.with_data((X[:20], y[:20]))
    assert s.test_loss[i1] == pytest.approx(test_b.loss(), rel=1e-13)
    assert s.attrs["marks"] == [["θ_a", [0.0]], ["θ_b", [1.0]]]


def test_interpolation_float32_end_points_are_exact():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 3))
    other = _perturbed(model, 2)
    X, y = torch.randn(64, 5), torch.randint(0, 3, (64,))
    obj = bs.Objective(model, nn.CrossEntropyLoss(), (X, y))
    s = interpolate(obj, other, span=(0.0, 1.0), steps=3)
    assert s.train_loss[0] == obj.loss()
    assert s.train_loss[-1] == bs.Objective(other, nn.CrossEntropyLoss(), (X, y)).loss()


def test_interpolation_refuses_models_differing_outside_the_space(mlp):
    model, X, y = mlp
    other = _perturbed(model, 3)
    obj = bs.Objective(model, nn.CrossEntropyLoss(), (X, y), skip_bias_norm=True)
    with pytest.raises(BasinscopeError, match="keeps fixed"):
        interpolate(obj, other, steps=5)
    with pytest.raises(BasinscopeError, match="coordinates"):
        interpolate(obj, torch.zeros(3), steps=5)


def test_three_model_plane_passes_through_all_three(tmp_path, mlp):
    model, X, y = mlp
    models = (model, _perturbed(model, 4), _perturbed(model, 5))
    obj = bs.Objective(model, nn.CrossEntropyLoss(), (X, y))
    s = three_model_plane(obj, models, labels=("100%", "10%", "1%"), steps=7, margin=0.1)
    own = [bs.Objective(m, nn.CrossEntropyLoss(), (X, y)).loss() for m in models]
    # geometry: θ1 at the origin, θ2 on the x axis, distances preserved
    thetas = [obj.space.flatten(m).double() for m in models]
    s.save(tmp_path / "p.h5")
    s = bs.Surface.load(tmp_path / "p.h5")  # the marks keep their order through the file
    assert [lab for lab, _ in s.attrs["marks"]] == ["100%", "10%", "1%"]
    marks = dict(s.attrs["marks"])
    assert marks["100%"] == [0.0, 0.0]
    assert marks["10%"][0] == pytest.approx(float((thetas[1] - thetas[0]).norm()), rel=1e-12)
    assert np.hypot(*marks["1%"]) == pytest.approx(float((thetas[2] - thetas[0]).norm()), rel=1e-12)
    assert np.hypot(marks["1%"][0] - marks["10%"][0], marks["1%"][1]) == pytest.approx(
        float((thetas[2] - thetas[1]).norm()), rel=1e-12
    )
    # the surface's own map evaluated at the marks gives the three models' losses
    off = np.array(s.attrs["coefficient_map"]["offset"])
    mat = np.array(s.attrs["coefficient_map"]["matrix"])
    coef = torch.from_numpy(off + np.array([marks[k] for k in ("100%", "10%", "1%")]) @ mat)
    np.testing.assert_allclose(coef.numpy(), np.eye(3), atol=1e-12)
    loss, _ = obj.evaluate_affine(coef, torch.stack(thetas), origin=torch.zeros_like(thetas[0]))
    np.testing.assert_allclose(loss.numpy(), own, rtol=1e-10)
    assert [v for _, v in s.attrs["mark_losses"]] == pytest.approx(own, rel=1e-12)
    # the grid covers the triangle
    assert s.xcoordinates.min() < 0 < marks["10%"][0] < s.xcoordinates.max()
    assert s.ycoordinates.min() < 0 < marks["1%"][1] < s.ycoordinates.max()
    s.save(tmp_path / "p.h5")
    plot_contour(bs.Surface.load(tmp_path / "p.h5"), tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 0


def test_three_model_plane_bad_input(mlp):
    model, X, y = mlp
    obj = bs.Objective(model, nn.CrossEntropyLoss(), (X, y))
    with pytest.raises(BasinscopeError, match="exactly 3"):
        three_model_plane(obj, (model, model))
    other = _perturbed(model, 6)
    theta = obj.theta0
    line_third = theta + 2 * (obj.space.flatten(other) - theta)
    with pytest.raises(BasinscopeError, match="one line"):
        three_model_plane(obj, (model, other, line_third))


def test_pca_directions_recover_a_planted_plane_and_match_sklearn():
    g = torch.Generator().manual_seed(0)
    n, T = 200, 12
    q, _ = torch.linalg.qr(torch.randn(n, 2, generator=g, dtype=torch.float64))
    final = torch.randn(n, generator=g, dtype=torch.float64)
    t = torch.linspace(1, 0, T, dtype=torch.float64)
    a = 3.0 * t + 0.5 * torch.sin(7 * t)
    b = 0.8 * torch.cos(5 * t) * t
    traj = final + a[:, None] * q[:, 0] + b[:, None] * q[:, 1]
    traj[-1] = final
    pca = pca_directions(traj, final)
    # the planted plane is recovered exactly (the trajectory lies in it)
    proj = pca.directions.double() @ q
    assert torch.allclose(proj.det().abs(), torch.tensor(1.0, dtype=torch.float64), atol=1e-10)
    # agreement with scikit-learn's PCA on Li et al.'s matrix θ_t − θ_final
    ref = PCA(n_components=2).fit((traj - final).numpy())
    np.testing.assert_allclose(
        pca.explained_variance_ratio, ref.explained_variance_ratio_, rtol=1e-10
    )
    for i in range(2):
        cos = float(pca.directions[i].double() @ torch.from_numpy(ref.components_[i]))
        assert abs(cos) == pytest.approx(1.0, abs=1e-10)
    # coordinates are the projections of θ_t − θ_final, and reconstruct it exactly
    recon = torch.from_numpy(pca.coordinates) @ pca.directions.double()
    torch.testing.assert_close(recon, traj - final, rtol=0, atol=1e-10)
    assert pca.explained_variance_ratio.sum() == pytest.approx(1.0, abs=1e-12)


def test_pca_bad_input():
    with pytest.raises(BasinscopeError, match="at least 3 snapshots"):
        pca_directions(torch.zeros(2, 5))
    with pytest.raises(BasinscopeError, match="same point"):
        pca_directions(torch.ones(4, 5))


def test_trajectory_plane_contains_the_trajectory(tmp_path, mlp):
    model, X, y = mlp
    obj = bs.Objective(model, nn.CrossEntropyLoss(), (X, y))
    snaps = [_perturbed(model, 10 + i, scale=0.2 * (4 - i)) for i in range(4)] + [model]
    s = trajectory_plane(obj, snaps, steps=5)
    traj = np.asarray(s.attrs["trajectory"])
    assert traj.shape == (5, 2)
    np.testing.assert_allclose(traj[-1], 0.0, atol=1e-12)
    assert (traj[:, 0] >= s.xcoordinates.min()).all() and (traj[:, 0] <= s.xcoordinates.max()).all()
    assert s.train_loss[2, 2] == pytest.approx(  # the centre of an odd grid is not θ0 in general
        float(
            obj.evaluate_affine(
                torch.tensor([[s.xcoordinates[2], s.ycoordinates[2]]]),
                torch.from_numpy(s.directions).double(),
            )[0][0]
        ),
        rel=1e-6,
    )
    plot_contour(s, tmp_path / "t.png")


def _recorded(models: list[nn.Module], names: list[str] | None = None):
    """A training ``Trajectory`` of ``models``: all their parameters, or only ``names``."""
    from basinscope.training import Trajectory

    named = [dict(m.named_parameters()) for m in models]
    names = names or list(named[0])
    rows = [torch.cat([d[n].detach().reshape(-1) for n in names]) for d in named]
    return Trajectory(
        epochs=tuple(range(len(models))),
        params=torch.stack(rows).float(),
        names=tuple(names),
        shapes=tuple(tuple(named[0][n].shape) for n in names),
    )


def test_a_trajectory_of_another_model_is_blamed_on_the_model(mlp):
    model, X, y = mlp
    snaps = [_perturbed(model, 40 + i, scale=0.1) for i in range(2)] + [model]
    own = bs.Objective(model, nn.CrossEntropyLoss(), (X, y), skip_bias_norm=True)
    assert trajectory_plane(own, _recorded(snaps), steps=2).complete  # biases not measured
    names = "the model given does not match the trajectory's parameter names: "
    fix = "; measure the model the trajectory was recorded from"
    wrapped = nn.Sequential()
    wrapped.add_module("net", model)  # the same network, named 'net.1.weight', ...
    full = bs.Objective(model, nn.CrossEntropyLoss(), (X, y))
    wide = nn.Sequential(
        nn.Flatten(), nn.Linear(6, 9), nn.Tanh(), nn.Linear(9, 7), nn.ReLU(), nn.Linear(7, 3)
    ).double()
    cases = [
        (bs.Objective(wrapped, nn.CrossEntropyLoss(), (X, y)), _recorded(snaps),
         f"{names}the trajectory records '1.weight' (and 5 more), which the model lacks"),
        (full, _recorded(snaps, ["1.weight", "3.weight", "5.weight"]),
         f"{names}the trajectory does not record the model's '1.bias' (and 2 more)"),
        (bs.Objective(wide, nn.CrossEntropyLoss(), (X, y)), _recorded(snaps),
         "the model given does not match the trajectory's parameter shapes: the model's "
         "'1.weight' has shape [9, 6], the trajectory records [8, 6]"),
    ]  # fmt: skip
    for obj, trajectory, said in cases:
        with pytest.raises(BasinscopeError) as info:
            trajectory_plane(obj, trajectory, steps=2)
        assert str(info.value) == said + fix


class _BNNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(4, 6)
        self.bn = nn.BatchNorm1d(6)
        self.fc2 = nn.Linear(6, 3)

    def forward(self, x):
        return self.fc2(torch.relu(self.bn(self.fc1(x))))


def test_update_bn_matches_swa_utils_update_bn():
    torch.manual_seed(0)
    net = _BNNet().double()
    X, y = torch.randn(40, 4, dtype=torch.float64), torch.randint(0, 3, (40,))
    net.train()
    for _ in range(3):
        net(X)  # give it running statistics of its own
    net.eval()
    other = _perturbed(net, 7, scale=0.5)
    obj = bs.Objective(net, nn.CrossEntropyLoss(), (X, y), batch_size=20)
    s = interpolate(obj, other, span=(0.0, 1.0), steps=3, update_bn=(X, y))
    # reference: SWA's update_bn on the model at α = 0.5, batches of the same size
    mid = copy.deepcopy(net)
    with torch.no_grad():
        for p, q, r in zip(mid.parameters(), net.parameters(), other.parameters(), strict=True):
            p.copy_(0.5 * q + 0.5 * r)
    loader = torch.utils.data.DataLoader(X, batch_size=20)  # equal batches: same weights
    torch.optim.swa_utils.update_bn(loader, mid)
    mid.eval()
    with torch.no_grad():
        ref = float(nn.functional.cross_entropy(mid(X), y))
    assert s.train_loss[1] == pytest.approx(ref, rel=1e-12)
    # without update_bn a model with statistics of its own cannot be an end point
    own_stats = copy.deepcopy(other).train()
    own_stats(2 * X)
    with pytest.raises(BasinscopeError, match="update_bn"):
        interpolate(obj, own_stats.eval(), span=(0.0, 1.0), steps=3)
    plain = interpolate(obj, obj.space.flatten(other), span=(0.0, 1.0), steps=3)
    assert abs(plain.train_loss[1] - ref) > 1e-6  # θ_a's statistics give another value
    assert s.attrs["update_bn"] is True
    # the objective's model is untouched (still θ_a's statistics, eval mode)
    assert torch.equal(obj.model.bn.running_mean, net.bn.running_mean)
    assert not obj.model.bn.training


def test_update_bn_needs_batchnorm(mlp):
    model, X, y = mlp
    obj = bs.Objective(model, nn.CrossEntropyLoss(), (X, y))
    with pytest.raises(BasinscopeError, match="BatchNorm"):
        interpolate(obj, model, steps=3, update_bn=(X, y))


def test_update_bn_on_a_random_plane():
    torch.manual_seed(1)
    net = _BNNet().double()
    X, y = torch.randn(32, 4, dtype=torch.float64), torch.randint(0, 3, (32,))
    net.train()
    net(X)
    net.eval()
    obj = bs.Objective(net, nn.CrossEntropyLoss(), (X, y))
    d = bs.random_directions(obj, 2, seed=0)
    s = bs.plane(obj, d[0], d[1], steps=3, update_bn=(X, y))
    # reference at (α, β) = (1, -1): weights moved, statistics recomputed by SWA's update_bn
    moved = copy.deepcopy(net)
    point = obj.space.unflatten(obj.theta0 + d[0] - d[1])
    with torch.no_grad():
        for name, p in moved.named_parameters():
            p.copy_(point[name])
    torch.optim.swa_utils.update_bn(torch.utils.data.DataLoader(X, batch_size=len(X)), moved)
    moved.eval()
    with torch.no_grad():
        ref = float(nn.functional.cross_entropy(moved(X), y))
    assert s.train_loss[2, 0] == pytest.approx(ref, rel=1e-12)
    assert s.attrs["update_bn"] is True


def test_update_bn_statistics_are_the_dataset_mean_and_a_single_last_example_is_fine():
    torch.manual_seed(2)
    net = _BNNet().double().eval()
    X, y = torch.randn(65, 4, dtype=torch.float64), torch.randint(0, 3, (65,))
    obj = bs.Objective(net, nn.CrossEntropyLoss(), (X, y), batch_size=16)  # 16,16,16,17
    from basinscope.objective import BatchNormEngine

    bn = BatchNormEngine(obj.batches)
    assert [n for _, n in bn._batches()] == [16, 16, 16, 17]
    params = obj.space.unflatten(obj.theta0)
    buffers = bn._buffers(params)
    h = net.fc1(X)  # the BatchNorm layer's input
    torch.testing.assert_close(buffers["bn.running_mean"], h.mean(0), rtol=1e-12, atol=1e-14)
    s = interpolate(obj, obj.theta0, span=(0.0, 1.0), steps=2, update_bn=(X, y))
    assert np.isfinite(s.train_loss).all()


def test_trajectory_plane_with_fixed_biases(mlp):
    model, X, y = mlp
    obj = bs.Objective(model, nn.CrossEntropyLoss(), (X, y), skip_bias_norm=True)
    snaps = [_perturbed(model, 20 + i, scale=0.1 * (3 - i)) for i in range(3)] + [model]
    s = trajectory_plane(obj, snaps, steps=3)  # the snapshots' biases differ: only directions
    # the trajectory is the PCA of the snapshots' weights in the space (biases left out)
    want = pca_directions(torch.stack([obj.space.flatten(m) for m in snaps]), obj.theta0)
    np.testing.assert_allclose(np.asarray(s.attrs["trajectory"]), want.coordinates, atol=1e-12)
    np.testing.assert_allclose(s.directions, want.directions.float().numpy(), atol=1e-7)
    assert s.complete
