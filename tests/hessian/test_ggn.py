"""The generalised Gauss–Newton operator against its dense form ``Jᵀ H_out J / count``.

The dense reference is built independently of the operator: ``J`` by
``torch.autograd.functional.jacobian`` of the model's output, ``H_out`` by
``torch.func.hessian`` of the loss sum in the output, in float64.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from conftest import small_mlp
from torch import nn

import basinscope as bs
from basinscope import hessian
from basinscope.hessian._random import _PROBE, _rademacher


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def dense_ggn(obj: bs.Objective) -> torch.Tensor:
    """``Jᵀ H_out J / count`` over the whole data at θ0, formed densely."""

    def f(t: torch.Tensor) -> torch.Tensor:
        return obj.batches.forward(obj.space.unflatten(t), obj.x)

    with warnings.catch_warnings():  # torch.func's first forward-mode call scripts decompositions
        warnings.simplefilter("ignore", DeprecationWarning)
        J = torch.autograd.functional.jacobian(f, obj.theta0.clone())
        out = f(obj.theta0).detach()
        H_out = torch.func.hessian(lambda o: obj.batches.loss(o, obj.y)[0])(out)
    m = out.numel()
    J, H_out = J.reshape(m, obj.n), H_out.reshape(m, m)
    return J.T @ H_out @ J / obj.count


def dense_of(op) -> torch.Tensor:
    return op.matmat(torch.eye(op.n, dtype=op.dtype))


@pytest.fixture(scope="module")
def mlp_ggn():
    model, X, y = small_mlp()
    obj = bs.Objective(model, nn.CrossEntropyLoss(), (X, y))
    G = dense_ggn(obj)
    return obj, G, torch.linalg.eigvalsh(G)


def test_mse_linear_model_ggn_is_the_hessian_exactly(linreg):
    obj = bs.Objective(linreg.model, linreg.loss_fn, (linreg.X, linreg.y))
    G = dense_of(hessian.GGNOperator(obj))
    torch.testing.assert_close(G, linreg.A, rtol=1e-12, atol=1e-14)  # 2XᵀX/N
    torch.testing.assert_close(G, dense_of(hessian.HessianOperator(obj)), rtol=1e-12, atol=1e-14)
    lam = torch.linalg.eigvalsh(linreg.A).numpy()
    top, bottom = hessian.extremes(obj, 2, 2, tol=1e-10, curvature="ggn")
    np.testing.assert_allclose(top.values, lam[::-1][:2], rtol=1e-10)
    np.testing.assert_allclose(bottom.values, lam[:2], rtol=1e-10)
    tr = hessian.trace(obj, method="hutch++", sketch=obj.n, curvature="ggn")
    assert tr.value == pytest.approx(float(np.sum(lam)), rel=1e-12) and tr.stderr == 0.0


def test_mlp_ggn_matches_dense_and_is_positive_semidefinite(mlp_ggn):
    obj, G, lam = mlp_ggn
    op = hessian.GGNOperator(obj)
    got = dense_of(op)
    assert op.n_products == obj.n and op.shape == (obj.n, obj.n)
    scale = float(G.abs().max())
    assert float((got - G).abs().max()) <= 1e-10 * scale
    assert float(lam[0]) >= -1e-12  # PSD: cross-entropy is convex in the logits
    assert int((lam > 1e-10 * lam[-1]).sum()) <= len(obj.x) * 2  # rank ≤ N·(C − 1)
    top = hessian.eigenvalues(obj, 3, tol=1e-10, curvature="ggn")
    np.testing.assert_allclose(top.values, lam.flip(0)[:3].numpy(), rtol=1e-8)
    # the bottom end is a 40-fold 0 beside eigenvalues of 1e-8: a larger basis resolves it
    bottom = hessian.eigenvalues(obj, 1, which="bottom", tol=1e-8, max_basis=80, curvature="ggn")
    assert bottom.converged and top.converged
    assert abs(bottom.values[0] - float(lam[0])) <= 1e-8 * top.scale
    both, _ = hessian.extremes(obj, 3, 1, tol=1e-6, curvature="ggn")
    np.testing.assert_allclose(both.values, top.values, rtol=1e-8)
    # the Hessian at this random init is indefinite; its Gauss–Newton part is not
    assert hessian.eigenvalues(obj, 1, which="bottom", tol=1e-8).values[0] < -1e-3
    d = hessian.top_directions(obj, 2, tol=1e-10, curvature="ggn")
    np.testing.assert_allclose(((d @ G) * d).sum(1).numpy(), top.values[:2], rtol=1e-8)


@pytest.mark.parametrize("batch_size", [1, 7, 50])
def test_ggn_does_not_depend_on_the_chunking(mlp_ggn, batch_size):
    obj, G, _ = mlp_ggn
    model, X, y = small_mlp()
    chunked = bs.Objective(model, nn.CrossEntropyLoss(), (X, y), batch_size=batch_size)
    V = torch.randn(4, obj.n, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    want = V @ G
    for kwargs in ({}, {"cache_bytes": 0}, {"cache_bytes": 30_000}, {"batched": True}):
        op = hessian.GGNOperator(chunked, **kwargs)
        torch.testing.assert_close(op.matmat(V), want, rtol=1e-10, atol=1e-13)
        torch.testing.assert_close(op.matvec(V[0]), want[0], rtol=1e-10, atol=1e-13)
        torch.testing.assert_close(op @ V.T, want.T, rtol=1e-10, atol=1e-13)
    if batch_size == 7:  # some chunks kept, the others rebuilt per call
        assert 0 < len(hessian.GGNOperator(chunked, cache_bytes=30_000)._graphs) < 8
    lin = hessian.GGNOperator(chunked).as_linear_operator()
    np.testing.assert_allclose(lin.matvec(V[1].numpy()), want[1].numpy(), rtol=1e-10, atol=1e-13)


def test_ggn_trace_density_and_summary(mlp_ggn):
    obj, G, lam = mlp_ggn
    exact = float(torch.trace(G))
    full = hessian.trace(obj, method="hutch++", sketch=obj.n, curvature="ggn")
    assert full.value == pytest.approx(exact, rel=1e-10)
    # two eigenvalues carry 3/4 of the trace: Hutch++ removes them (Hutchinson's SE is 3%
    # after 600 probes)
    pp = hessian.trace(obj, method="hutch++", rtol=0.02, seed=4, curvature="ggn")
    assert pp.converged and abs(pp.value - exact) < 3 * pp.stderr
    hu = hessian.trace(obj, rtol=0.1, seed=4, curvature="ggn")
    assert hu.converged and abs(hu.value - exact) < 3 * hu.stderr
    z = _rademacher(obj.n, 4, _PROBE, 3)
    assert hu.samples[3] == pytest.approx(float(z @ G @ z), rel=1e-10)
    d = hessian.density(obj, runs=8, steps=30, seed=1, curvature="ggn")
    assert d.negative_mass == 0.0
    assert abs(obj.n * d.moment(1) - exact) < 3 * obj.n * d.moment_se(1)
    assert np.nanmin(d.nodes) >= -1e-10 * float(lam[-1])
    s = hessian.summary(obj, k=2, tol=1e-6, trace_rtol=0.05, per_layer=True, curvature="ggn")
    assert s.lambda_max == pytest.approx(float(lam[-1]), rel=1e-8)
    assert abs(s.lambda_min) <= 1e-6 * s.lambda_max  # the null space of G
    assert abs(s.trace.value - exact) < 3 * s.trace.stderr + 1e-12
    offset = 0
    for name, block in s.per_layer.items():  # the GGN of a block is G's diagonal block
        Gb = G[offset : offset + block.n, offset : offset + block.n]
        offset += block.n
        assert block.lambda_max == pytest.approx(float(torch.linalg.eigvalsh(Gb)[-1]), rel=1e-6)
        # within 3× the requested SE (the SE of 10 deflated probes can be an underestimate)
        exact_b = float(torch.trace(Gb))
        assert abs(block.trace - exact_b) < 3 * 0.05 * max(exact_b, block.lambda_max), name
    json.dumps(s.to_dict())


def test_class_weighted_ggn_over_chunks():
    # Σ_i w_{y_i} ℓ_i / Σ_i w_{y_i}: each chunk's share is its weighted sum over the total
    model, X, y = small_mlp()
    loss = nn.CrossEntropyLoss(weight=torch.tensor([1.0, 3.0, 0.5], dtype=torch.float64))
    G = dense_ggn(bs.Objective(model, loss, (X, y)))
    chunked = bs.Objective(model, loss, (X, y), batch_size=16)
    V = torch.randn(2, chunked.n, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    torch.testing.assert_close(
        hessian.GGNOperator(chunked).matmat(V), V @ G, rtol=1e-10, atol=1e-13
    )


def test_ggn_curvature_keyword_is_checked_and_keys_its_files(tmp_path, linreg):
    obj = bs.Objective(linreg.model, linreg.loss_fn, (linreg.X, linreg.y))
    calls = [
        lambda: hessian.eigenvalues(obj, 1, curvature="fisher"),
        lambda: hessian.extremes(obj, 1, 1, curvature="Hessian"),
        lambda: hessian.trace(obj, curvature=None),
        lambda: hessian.density(obj, curvature="gauss-newton"),
        lambda: hessian.summary(obj, 1, curvature="kfac"),
        lambda: hessian.operator(obj, curvature="fisher"),
        lambda: hessian.top_directions(obj, curvature=1),
    ]
    for call in calls:
        with pytest.raises(bs.BasinscopeError, match="curvature must be 'hessian' or 'ggn'"):
            call()
    H = hessian.HessianOperator(obj)
    with pytest.raises(bs.BasinscopeError, match="curvature='ggn' applies to an Objective"):
        hessian.eigenvalues(H, curvature="ggn")
    G = hessian.GGNOperator(obj)
    assert hessian.operator(G) is G and hessian.operator(G, curvature="ggn") is G
    assert isinstance(hessian.operator(obj, curvature="ggn"), hessian.GGNOperator)
    assert isinstance(G, hessian.SymmetricOperator) and "ggn" in hessian.CURVATURES
    with pytest.raises(bs.BasinscopeError, match=r"theta must have shape \(4,\)"):
        hessian.GGNOperator(obj, torch.zeros(3))
    with pytest.raises(bs.BasinscopeError, match="expected a basinscope Objective"):
        hessian.GGNOperator(H)
    with pytest.raises(bs.BasinscopeError, match=r"vectors must have shape \(k, 4\)"):
        G.matmat(torch.zeros(2, 3))
    # a resumable file of the GGN is not the Hessian's
    path = tmp_path / "probes.json"
    hessian.trace(obj, curvature="ggn", path=path, min_probes=3, max_products=5)
    with pytest.raises(bs.BasinscopeError):
        hessian.trace(obj, path=path, min_probes=3, max_products=5)
    again = hessian.trace(obj, curvature="ggn", path=path, min_probes=3, max_products=5)
    assert len(again.samples) >= 3


def test_a_loss_linear_in_the_output_has_no_gauss_newton_curvature():
    X = torch.randn(20, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = torch.zeros(20)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)).double()
    obj = bs.Objective(model, lambda out, t: out.mean(), (X, y))
    assert hessian.eigenvalues(obj, 1).values[0] > 0  # the Hessian is the model's own
    with pytest.raises(bs.BasinscopeError, match="Gauss–Newton matrix .* identically zero"):
        hessian.eigenvalues(obj, 1, curvature="ggn")


def test_ggn_of_a_non_finite_loss_is_refused():
    model = nn.Linear(3, 1)
    with torch.no_grad():
        model.weight.fill_(1e25)
        model.bias.zero_()
    obj = bs.Objective(model, nn.MSELoss(), (torch.ones(8, 3), torch.zeros(8, 1)))
    with pytest.raises(bs.BasinscopeError, match="loss at θ is inf"):
        hessian.trace(obj, curvature="ggn")
