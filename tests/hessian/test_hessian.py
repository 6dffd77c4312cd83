from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch
from conftest import Quadratic, mean_loss, small_mlp
from torch import nn
from torch.autograd.function import once_differentiable

import basinscope as bs
from basinscope import hessian
from basinscope.hessian._random import _PROBE, _SLQ, _rademacher

# ------------------------------------------------------------------ helpers


def quadratic(eigs: torch.Tensor, seed: int = 0) -> tuple[bs.Objective, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    n = len(eigs)
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    A = Q @ torch.diag(eigs) @ Q.T
    A = (A + A.T) / 2
    theta = torch.randn(n, generator=g, dtype=torch.float64)
    data = (torch.zeros(8, 1, dtype=torch.float64), torch.zeros(8, dtype=torch.float64))
    return bs.Objective(Quadratic(A, theta), mean_loss, data), A


def dense_hessian(obj: bs.Objective) -> torch.Tensor:
    def f(t: torch.Tensor) -> torch.Tensor:
        return obj.loss_fn(obj.batches.forward(obj.space.unflatten(t), obj.x), obj.y)

    with warnings.catch_warnings():  # torch.func's first forward-mode call scripts decompositions
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.func.hessian(f)(obj.theta0.clone())


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These problems are tiny: a second thread only adds synchronisation (and, on a
    busy machine, a scheduler time slice per kernel)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def mlp_case():
    model, X, y = small_mlp()
    obj = bs.Objective(model, nn.CrossEntropyLoss(), (X, y))
    H = dense_hessian(obj)
    return obj, H, torch.linalg.eigvalsh(H)


# ------------------------------------------------------------ linear regression
def test_linreg_eigenpairs_closed_form(linreg):
    obj = bs.Objective(linreg.model, linreg.loss_fn, (linreg.X, linreg.y))
    lam, U = torch.linalg.eigh(linreg.A)
    top, bottom = hessian.extremes(obj, top=2, bottom=2, tol=1e-10)
    np.testing.assert_allclose(top.values, lam.flip(0)[:2].numpy(), rtol=1e-10)
    np.testing.assert_allclose(bottom.values, lam[:2].numpy(), rtol=1e-10)
    assert top.n_products == bottom.n_products == obj.n  # the whole space, then exact
    for pairs, cols in ((top, [3, 2]), (bottom, [0, 1])):
        overlap = (pairs.vectors @ U[:, cols]).diagonal().abs()
        np.testing.assert_allclose(overlap.numpy(), 1.0, rtol=1e-10)
        assert (pairs.residuals <= 1e-10 * top.values[0]).all() and pairs.converged
    direct = hessian.eigenvalues(obj, 1, which="bottom", tol=1e-10)
    assert direct.values[0] == pytest.approx(float(lam[0]), rel=1e-10)


def test_linreg_trace_and_seeded_probes(linreg):
    obj = bs.Objective(linreg.model, linreg.loss_fn, (linreg.X, linreg.y))
    exact = float(torch.trace(linreg.A))
    # Hutch++ with a sketch spanning the whole space is exact, with no probes.
    pp = hessian.trace(obj, method="hutch++", sketch=obj.n)
    assert pp.value == pytest.approx(exact, rel=1e-12) and pp.stderr == 0.0 and pp.converged
    hu = hessian.trace(obj, method="hutchinson", rtol=0.01, seed=3)
    assert hu.converged and hu.stderr <= 0.01 * abs(hu.value) and len(hu.samples) >= 10
    assert abs(hu.value - exact) < 3 * hu.stderr
    # probe i is the Rademacher vector drawn from (seed, i) alone
    for i in (0, 7):
        z = _rademacher(obj.n, 3, _PROBE, i)
        assert set(z.tolist()) <= {-1.0, 1.0}
        assert hu.samples[i] == pytest.approx(float(z @ linreg.A @ z), rel=1e-12)
    again = hessian.trace(obj, method="hutchinson", rtol=0.01, seed=3)
    np.testing.assert_array_equal(again.samples, hu.samples)
    json.dumps(hu.to_dict())


def test_linreg_density_nodes_and_moments(linreg):
    obj = bs.Objective(linreg.model, linreg.loss_fn, (linreg.X, linreg.y))
    lam = torch.linalg.eigvalsh(linreg.A).numpy()
    d = hessian.density(obj, runs=3, steps=10, seed=1)
    assert d.n_products == 3 * obj.n  # Lanczos stops on the invariant whole space
    for r in range(3):  # each run's nodes are the spectrum, its weights sum to 1
        np.testing.assert_allclose(np.sort(d.nodes[r][~np.isnan(d.nodes[r])]), lam, rtol=1e-10)
        assert d.weights[r].sum() == pytest.approx(1.0, rel=1e-12)
    # Σ_j w_j τ_j^p = vᵀAᵖv for each run's unit start vector v, p = 0..3
    vs = [_rademacher(obj.n, 1, _SLQ, r) / math.sqrt(obj.n) for r in range(3)]
    for p in range(4):
        Ap = torch.linalg.matrix_power(linreg.A, p)
        want = np.mean([float(v @ Ap @ v) for v in vs])
        assert d.moment(p) == pytest.approx(want, rel=1e-10)
    # and over many runs, n·moment(p) → tr(Aᵖ)
    many = hessian.density(obj, runs=300, steps=4)
    for p in (1, 2):
        want = float(torch.trace(torch.linalg.matrix_power(linreg.A, p))) / obj.n
        assert abs(many.moment(p) - want) < 3 * many.moment_se(p)


# -------------------------------------------------------------------- small MLP
def test_mlp_eigenvalues_match_dense(mlp_case):
    obj, H, lam = mlp_case
    top, bottom = hessian.extremes(obj, top=3, bottom=3, tol=1e-10)
    np.testing.assert_allclose(top.values, lam.flip(0)[:3].numpy(), rtol=1e-6)
    np.testing.assert_allclose(bottom.values, lam[:3].numpy(), rtol=1e-6)
    assert lam[0] < 0  # a random init is not a minimum
    for pairs in (top, bottom):
        v = pairs.vectors
        dense_res = (v @ H - torch.as_tensor(pairs.values)[:, None] * v).norm(dim=1)
        np.testing.assert_allclose(pairs.residuals, dense_res.numpy(), atol=1e-12)
        assert (dense_res <= 1e-10 * top.scale).all()
    assert top.scale == pytest.approx(float(lam.abs().max()), rel=1e-10)


def test_mlp_trace_estimators_within_three_se(mlp_case):
    obj, H, _ = mlp_case
    exact = float(torch.trace(H))
    for method in ("hutchinson", "hutch++"):
        est = hessian.trace(obj, method=method, rtol=0.05, max_products=600, seed=1)
        assert est.converged and est.stderr <= 0.05 * abs(est.value)
        assert abs(est.value - exact) < 3 * est.stderr, method
    pp = hessian.trace(obj, method="hutch++", rtol=0.05, max_products=600, seed=1)
    assert pp.n_products == 2 * 16 + len(pp.samples) and pp.rank == 16


def test_mlp_density_integrates_to_one_and_matches_moments(mlp_case):
    obj, H, lam = mlp_case
    d = hessian.density(obj, runs=24, steps=40, seed=0)
    assert np.trapezoid(d.density, d.grid) == pytest.approx(1.0, abs=1e-6)
    first = np.trapezoid(d.grid * d.density, d.grid)
    second = np.trapezoid(d.grid**2 * d.density, d.grid)
    assert first == pytest.approx(d.moment(1), rel=1e-6)  # broadening keeps the mean
    assert second == pytest.approx(d.moment(2) + d.sigma**2, rel=1e-6)
    tr, tr2 = float(torch.trace(H)), float(torch.trace(H @ H))
    assert abs(obj.n * d.moment(1) - tr) < 3 * obj.n * d.moment_se(1)
    assert abs(d.moment(2) - tr2 / obj.n) < 3 * d.moment_se(2)
    json.dumps(d.to_dict())


def test_negative_mass_closed_form(mlp_case):
    obj, H, lam = mlp_case
    lam, U = torch.linalg.eigh(H)
    negative = lam < -1e-9 * lam.abs().max()  # 19 eigenvalues are 0 (to rounding)
    # With as many steps as distinct eigenvalues the quadrature is exact: each run's
    # negative mass is Σ_{λ_i<0} (u_iᵀv)² for its start vector v.
    d = hessian.density(obj, runs=12, steps=obj.n, seed=2)
    want = [
        float(((U.T @ _rademacher(obj.n, 2, _SLQ, r)) ** 2)[negative].sum()) / obj.n
        for r in range(12)
    ]
    assert d.negative_mass == pytest.approx(np.mean(want), rel=1e-8)
    assert abs(d.negative_mass - float(negative.double().mean())) < 3 * d.negative_mass_se


def test_hvp_exact_over_chunks_cached_or_not(mlp_case):
    obj, H, _ = mlp_case
    model, X, y = small_mlp()
    V = torch.randn(3, obj.n, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    want = V @ H
    chunked = bs.Objective(model, nn.CrossEntropyLoss(), (X, y), batch_size=7)
    for kwargs in ({}, {"cache_bytes": 0}, {"cache_bytes": 20_000}, {"batched": True}):
        op = hessian.HessianOperator(chunked, **kwargs)
        torch.testing.assert_close(op.matmat(V), want, rtol=1e-10, atol=1e-12)
        assert op.n_products == 3
    assert 0 < len(hessian.HessianOperator(chunked, cache_bytes=20_000)._graphs) < 8
    torch.testing.assert_close(hessian.hvp(chunked, V[0]), want[0], rtol=1e-10, atol=1e-12)
    lin = hessian.HessianOperator(obj).as_linear_operator()
    np.testing.assert_allclose(lin.matvec(V[1].numpy()), want[1].numpy(), rtol=1e-10, atol=1e-12)


def test_hvp_of_a_class_weighted_loss_over_chunks():
    # Σ_i w_{y_i} ℓ_i / Σ_i w_{y_i}: chunks weigh by their class weight, not their size
    model, X, y = small_mlp()
    weight = torch.tensor([1.0, 3.0, 0.5], dtype=torch.float64)
    whole = bs.Objective(model, nn.CrossEntropyLoss(weight=weight), (X, y))
    H = dense_hessian(whole)
    chunked = bs.Objective(model, nn.CrossEntropyLoss(weight=weight), (X, y), batch_size=16)
    V = torch.randn(2, whole.n, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    torch.testing.assert_close(hessian.hvp(chunked, V), V @ H, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(hessian.hvp(chunked, V), chunked.hvp(V), rtol=1e-12, atol=1e-14)


def test_summary_and_per_layer_blocks(mlp_case):
    obj, H, lam = mlp_case
    s = hessian.summary(obj, k=2, tol=1e-8, trace_rtol=0.1, per_layer=True)
    assert s.lambda_max == pytest.approx(float(lam[-1]), rel=1e-6)
    assert s.lambda_min == pytest.approx(float(lam[0]), rel=1e-6)
    np.testing.assert_allclose(s.top.values, lam.flip(0)[:2].numpy(), rtol=1e-6)
    assert abs(s.trace.value - float(torch.trace(H))) < 3 * s.trace.stderr + 1e-12
    assert list(s.per_layer) == ["1", "3", "5"]  # the three Linear modules
    offset = 0
    for name, block in s.per_layer.items():
        sl = slice(offset, offset + block.n)
        offset += block.n
        Hb = H[sl, sl]
        lb = torch.linalg.eigvalsh(Hb)
        assert block.lambda_max == pytest.approx(float(lb[-1]), rel=1e-6), name
        assert block.lambda_min == pytest.approx(float(lb[0]), rel=1e-6, abs=1e-9), name
        assert abs(block.trace - float(torch.trace(Hb))) < 3 * block.trace_se + 1e-12, name
    assert offset == obj.n
    d = s.to_dict()
    json.dumps(d)
    assert d["lambda_max"] == s.lambda_max and d["per_layer"]["5"]["n"] == 24
    # without λ_min: the same top, fewer products
    fast = hessian.summary(obj, k=2, tol=1e-8, trace_rtol=0.1, lambda_min=False)
    assert fast.lambda_min is None and fast.to_dict()["lambda_min_residual"] is None
    np.testing.assert_allclose(fast.top.values, s.top.values, rtol=1e-8)
    assert fast.top.n_products <= s.top.n_products
    # a block given by pattern: the last layer's weight only
    w = hessian.restrict(obj, "5.weight")
    lw = torch.linalg.eigvalsh(H[-24:-3, -24:-3])
    assert w.n == 21
    assert hessian.eigenvalues(w, 1, tol=1e-10).values[0] == pytest.approx(float(lw[-1]), rel=1e-8)


def test_top_directions_span_the_sharpest_plane(linreg):
    obj = bs.Objective(linreg.model, linreg.loss_fn, (linreg.X, linreg.y))
    lam, U = torch.linalg.eigh(linreg.A)
    d = hessian.top_directions(obj, tol=1e-10)
    assert d.shape == (2, obj.n) and d.dtype == obj.dtype
    torch.testing.assert_close(d @ d.T, torch.eye(2, dtype=d.dtype), rtol=0, atol=1e-12)
    # along the top eigenvector, L(θ0 + t v) − L* = ½ t² λ_max exactly
    t = 0.3
    loss = obj.loss(obj.theta0 + t * d[0])
    assert loss - linreg.L_star == pytest.approx(0.5 * t**2 * float(lam[-1]), rel=1e-9)
    surf = bs.plane(obj, d[0], d[1], span=(-t, t), steps=3)
    assert surf.train_loss[2, 1] - linreg.L_star == pytest.approx(
        0.5 * t**2 * float(lam[-1]), rel=1e-9
    )


# ----------------------------------------------------------------------- saddle
def test_saddle_negative_lambda_min_with_restarts():
    f64 = torch.float64
    eigs = torch.cat(
        [
            torch.tensor([-3.0, -2.9, -1.0], dtype=f64),
            torch.linspace(-0.5, 4.0, 194, dtype=f64),
            torch.tensor([9.0, 9.5, 10.0], dtype=f64),
        ]
    )
    obj, A = quadratic(eigs)
    top, bottom = hessian.extremes(obj, top=3, bottom=3, tol=1e-10, max_basis=24)
    np.testing.assert_allclose(top.values, [10.0, 9.5, 9.0], rtol=1e-8)
    np.testing.assert_allclose(bottom.values, [-3.0, -2.9, -1.0], rtol=1e-8)
    assert top.converged and top.n_products < obj.n  # restarted, not a full sweep
    v = bottom.vectors[0]
    assert float(v @ A @ v) == pytest.approx(-3.0, rel=1e-8)
    small, _ = quadratic(torch.tensor([-2.0, -0.5, 0.1, 1.0, 3.0, 5.0], dtype=f64))
    assert hessian.eigenvalues(small, which="bottom").values[0] == pytest.approx(-2.0, rel=1e-8)
    d = hessian.density(small, runs=4, steps=6)
    assert d.negative_mass == pytest.approx(
        np.mean(
            [float((v[:2] ** 2).sum()) for v in _start_in_eigenbasis(small, 4)],
        ),
        rel=1e-8,
    )


def _start_in_eigenbasis(obj: bs.Objective, runs: int) -> list[torch.Tensor]:
    A = obj.model.A
    _, U = torch.linalg.eigh(A)
    return [U.T @ (_rademacher(obj.n, 0, _SLQ, r) / math.sqrt(obj.n)) for r in range(runs)]


def test_float32_objective_default_tolerance(mlp_case):
    obj64, _, lam = mlp_case
    model, X, y = small_mlp()
    obj = bs.Objective(model.float(), nn.CrossEntropyLoss(), (X.float(), y))
    res = hessian.eigenvalues(obj, 2)
    assert res.converged and res.vectors.dtype == torch.float32
    assert (res.residuals <= 1e-4 * res.scale).all()
    np.testing.assert_allclose(res.values, lam.flip(0)[:2].numpy(), rtol=1e-4)


def test_plot_density(tmp_path, linreg):
    obj = bs.Objective(linreg.model, linreg.loss_fn, (linreg.X, linreg.y))
    path = hessian.plot_density(hessian.density(obj, runs=2), tmp_path / "esd.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -------------------------------------------------------------------- bad input
class Cube(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x**3

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return 3 * x**2 * g


class CubeNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 1).double()

    def forward(self, x):
        return Cube.apply(self.fc(x))


class Noisy(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 2).double()

    def forward(self, x):
        return self.fc(x) + torch.randn(len(x), 2, dtype=x.dtype)


def test_bad_input(linreg):
    obj = bs.Objective(linreg.model, linreg.loss_fn, (linreg.X, linreg.y))
    cases = [
        (lambda: hessian.eigenvalues(obj, 5), "k=5 is larger than the dimension"),
        (lambda: hessian.extremes(obj, top=1, bottom=9), "bottom=9 is larger"),
        (lambda: hessian.eigenvalues(obj, 0), "positive integer"),
        (lambda: hessian.eigenvalues(obj, 1, tol=0.0), "tol must be"),
        (lambda: hessian.eigenvalues(obj, 1, tol=-1e-3), "tol must be"),
        (lambda: hessian.eigenvalues(obj, 1, which="largest"), "which must be"),
        (lambda: hessian.trace(obj, rtol=0), "rtol must be"),
        (lambda: hessian.trace(obj, method="exact"), "method must be"),
        (lambda: hessian.density(obj, runs=0), "runs must be"),
        (lambda: hessian.density(obj, sigma=-1.0), "sigma must be"),
        (lambda: hessian.restrict(obj, "fc9"), "no parameter of the Objective matches 'fc9'"),
        (lambda: hessian.summary(obj, 1, per_layer=["conv1"]), "matches 'conv1'"),
    ]
    for call, match in cases:
        with pytest.raises(bs.BasinscopeError, match=match):
            call()
    model, X, y = small_mlp()
    obj32 = bs.Objective(model.float(), nn.CrossEntropyLoss(), (X.float(), y))
    with pytest.raises(bs.BasinscopeError, match="below what torch.float32"):
        hessian.eigenvalues(obj32, 1, tol=1e-9)


def test_refuses_models_without_curvature_or_determinism():
    X = torch.randn(20, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = torch.randn(20, 1, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    once = bs.Objective(CubeNet(), nn.MSELoss(), (X, y))
    with pytest.raises(bs.BasinscopeError, match="not twice differentiable"):
        hessian.eigenvalues(once)
    l1 = bs.Objective(nn.Linear(3, 1).double(), nn.L1Loss(), (X, y))
    with pytest.raises(bs.BasinscopeError, match="identically zero"):
        hessian.trace(l1)
    noisy = bs.Objective(
        Noisy(), nn.CrossEntropyLoss(), (X, y[:, 0].gt(0).long()), check_determinism=False
    )
    with pytest.raises(bs.BasinscopeError, match="not deterministic"):
        hessian.summary(noisy)


def test_counts_accept_numpy_integers_and_refuse_fractions():
    obj, A = quadratic(torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64))
    a = hessian.trace(obj, min_probes=np.int64(3), max_products=np.int64(6), sketch=np.int32(2))
    b = hessian.trace(obj, min_probes=3, max_products=6, sketch=2)
    np.testing.assert_array_equal(a.samples, b.samples)
    d = hessian.density(obj, runs=np.int64(2), steps=np.int64(4), points=np.int64(11))
    zs = [_rademacher(4, 0, _SLQ, r) for r in range(2)]  # moment 1 = mean zᵀAz/‖z‖²
    assert d.moment(1) == pytest.approx(np.mean([float(z @ A @ z) / 4 for z in zs]), rel=1e-9)
    top = hessian.eigenvalues(obj, np.int64(1), max_products=np.int64(50))
    assert top.values[0] == pytest.approx(4.0, rel=1e-6)
    bad = [
        (lambda: hessian.trace(obj, min_probes=3.5), "min_probes must be an integer"),
        (lambda: hessian.trace(obj, max_products=20.5), "max_products must be an integer"),
        (lambda: hessian.trace(obj, seed=0.5), "seed must be an integer"),
        (lambda: hessian.density(obj, runs=2.5), "runs must be an integer"),
        (lambda: hessian.density(obj, sigma=math.nan), "sigma must be a finite number"),
        (lambda: hessian.density(obj, sigma=math.inf), "sigma must be a finite number"),
        (lambda: hessian.eigenvalues(obj, 1, max_products=9.5), "max_products must be"),
        (lambda: hessian.eigenvalues(obj, 1, tol=math.nan), "tol must be"),
        (lambda: hessian.summary(obj, 1, max_products=9.5), "max_products must be"),
    ]
    for call, match in bad:
        with pytest.raises(bs.BasinscopeError, match=match):
            call()


def test_curvature_of_a_non_finite_loss_is_refused():
    # finite weights whose MSE overflows float32; the Hessian 2XᵀX/N would be finite
    model = nn.Linear(3, 1)
    with torch.no_grad():
        model.weight.fill_(1e25)
        model.bias.zero_()
    obj = bs.Objective(model, nn.MSELoss(), (torch.ones(8, 3), torch.zeros(8, 1)))
    calls = [
        lambda: hessian.eigenvalues(obj, 1),
        lambda: hessian.trace(obj),
        lambda: hessian.density(obj, runs=1, steps=2),
        lambda: hessian.summary(obj, 1),
    ]
    for call in calls:
        with pytest.raises(bs.BasinscopeError, match="loss at θ is inf"):
            call()
