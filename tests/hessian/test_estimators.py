"""The curvature estimators on a dense symmetric matrix, without a model.

Lanczos, Hutchinson, Hutch++ and SLQ read only the symmetric-operator protocol
(``n``, ``dtype``, ``device``, ``matvec``, ``matmat``), so here they run on a
random symmetric matrix ``A`` and are checked against ``torch.linalg.eigh(A)``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import basinscope as bs
from basinscope import hessian
from basinscope.hessian._random import _PROBE, _SLQ, _rademacher


class Matrix:
    """A dense symmetric matrix as a :class:`hessian.SymmetricOperator`, counting products."""

    def __init__(self, A: torch.Tensor):
        self.A = A
        self.n = A.shape[0]
        self.dtype = A.dtype
        self.device = A.device
        self.products = 0

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        self.products += 1
        return self.A @ v

    def matmat(self, vs: torch.Tensor) -> torch.Tensor:
        self.products += len(vs)
        return vs @ self.A  # rows A v_i (A symmetric)


def symmetric(eigs: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """``Q diag(eigs) Qᵀ`` with a random orthogonal ``Q`` (float64)."""
    g = torch.Generator().manual_seed(seed)
    n = len(eigs)
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    A = Q @ torch.diag(eigs.to(torch.float64)) @ Q.T
    return (A + A.T) / 2


def random_symmetric(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    B = torch.randn(n, n, generator=g, dtype=torch.float64)
    return (B + B.T) / 2


@pytest.fixture(scope="module")
def indefinite():
    A = random_symmetric(60, seed=3)
    return A, torch.linalg.eigh(A).eigenvalues


def test_a_dense_matrix_is_a_symmetric_operator():
    op = Matrix(random_symmetric(5))
    assert isinstance(op, hessian.SymmetricOperator)
    assert hessian.operator(op) is op
    assert not isinstance(torch.zeros(3), hessian.SymmetricOperator)
    with pytest.raises(bs.BasinscopeError, match="theta applies to an Objective"):
        hessian.operator(op, torch.zeros(5))


def test_top_and_bottom_k_match_eigh(indefinite):
    A, w = indefinite
    op = Matrix(A)
    top, bottom = hessian.extremes(op, top=4, bottom=3, tol=1e-10)
    assert top.converged and bottom.converged
    np.testing.assert_allclose(top.values, w.flip(0)[:4].numpy(), rtol=0, atol=1e-8)
    np.testing.assert_allclose(bottom.values, w[:3].numpy(), rtol=0, atol=1e-8)
    assert bottom.values[0] < 0 < top.values[0]  # an indefinite matrix: both ends found
    assert top.n_products == bottom.n_products == op.products
    for pairs in (top, bottom):  # residuals are those of the returned vectors
        V = pairs.vectors
        res = (V @ A - torch.as_tensor(pairs.values)[:, None] * V).norm(dim=1)
        np.testing.assert_allclose(pairs.residuals, res.numpy(), atol=1e-12)
        torch.testing.assert_close(V @ V.T, torch.eye(len(V), dtype=V.dtype), atol=1e-8, rtol=0)


def test_eigenvalues_one_end_and_restarts(indefinite):
    A, w = indefinite
    # a small basis forces thick restarts; the answer is the same to tolerance
    for max_basis in (None, 12):
        top = hessian.eigenvalues(Matrix(A), 3, tol=1e-9, max_basis=max_basis)
        bottom = hessian.eigenvalues(Matrix(A), 2, which="bottom", tol=1e-9, max_basis=max_basis)
        np.testing.assert_allclose(top.values, w.flip(0)[:3].numpy(), atol=1e-7)
        np.testing.assert_allclose(bottom.values, w[:2].numpy(), atol=1e-7)
        assert top.converged and bottom.converged


def test_full_krylov_space_is_exact():
    eigs = torch.tensor([5.0, 2.0, 2.0, -1.0, 0.5, 0.0], dtype=torch.float64)
    op = Matrix(symmetric(eigs, seed=1))
    top, bottom = hessian.extremes(op, top=2, bottom=2, tol=1e-8)
    np.testing.assert_allclose(top.values, [5.0, 2.0], atol=1e-12)
    np.testing.assert_allclose(bottom.values, [-1.0, 0.0], atol=1e-12)
    assert op.products <= len(eigs) + 1  # a repeated eigenvalue ends Krylov early


def test_hutchinson_within_its_stated_standard_error():
    eigs = torch.linspace(0.1, 3.0, 40, dtype=torch.float64)
    A = symmetric(eigs, seed=2)
    exact = float(eigs.sum())
    var1 = 2 * (float((A * A).sum()) - float((A.diagonal() ** 2).sum()))  # one sample
    z = []
    for seed in range(6):
        op = Matrix(A)
        est = hessian.trace(op, rtol=0.02, seed=seed)
        assert est.converged and est.method == "hutchinson"
        assert est.n_products == op.products == len(est.samples)
        assert est.stderr <= 0.02 * abs(est.value)
        # SE is std/√S of the samples; it estimates √(var₁/S)
        assert est.stderr == pytest.approx(math.sqrt(var1 / len(est.samples)), rel=0.6)
        z.append((est.value - exact) / est.stderr)
        # the samples are zᵀAz of the probes (seed, i)
        probes = torch.stack([_rademacher(40, seed, _PROBE, i) for i in range(len(est.samples))])
        np.testing.assert_allclose(est.samples, ((probes @ A) * probes).sum(1).numpy())
    assert max(abs(v) for v in z) < 4


def test_hutch_plus_plus_is_exact_on_low_rank():
    eigs = torch.zeros(50, dtype=torch.float64)
    eigs[:5] = torch.tensor([9.0, 4.0, 2.5, -1.5, 0.7])
    op = Matrix(symmetric(eigs, seed=4))
    est = hessian.trace(op, method="hutch++", sketch=8, min_probes=3, rtol=1e-6, atol=1e-9)
    assert est.exact == pytest.approx(float(eigs.sum()), abs=1e-10)
    assert est.value == pytest.approx(float(eigs.sum()), abs=1e-10)
    assert np.abs(est.samples).max() < 1e-10  # nothing left outside the sketch
    assert est.rank == 8 and est.converged
    assert est.n_products == op.products == 2 * 8 + len(est.samples)
    # Hutchinson alone on the same matrix is not exact
    plain = hessian.trace(Matrix(op.A), min_probes=3, max_products=3, rtol=1e-6)
    assert abs(plain.value - float(eigs.sum())) > 1e-3


def test_slq_moments_match_the_matrix():
    A = random_symmetric(30, seed=5) + 2 * torch.eye(30, dtype=torch.float64)
    n = len(A)
    op = Matrix(A)
    steps = 8
    d = hessian.density(op, runs=6, steps=steps, points=2001, seed=1)
    assert d.n_products == op.products == 6 * steps
    # Gauss quadrature is exact for polynomials of degree < 2·steps, run by run:
    # Σ_j w_j τ_j^p = vᵀAᵖv / vᵀv for the start vector v of the run
    V = torch.stack([_rademacher(n, 1, _SLQ, r) for r in range(6)])
    for p in (1, 2, 3, 5, 2 * steps - 1):
        Ap = torch.linalg.matrix_power(A, p)
        per_run = ((V @ Ap) * V).sum(1) / (V * V).sum(1)
        np.testing.assert_allclose(d._run_moments(p), per_run.numpy(), rtol=1e-9)
        # and their mean estimates tr(Aᵖ)/n within a few standard errors
        exact = float(torch.trace(Ap)) / n
        assert abs(d.moment(p) - exact) <= 4 * d.moment_se(p) + 1e-12 * abs(exact)
    assert float(np.trapezoid(d.density, d.grid)) == pytest.approx(1.0, abs=1e-3)
    np.testing.assert_allclose(np.nansum(d.weights, axis=1), 1.0, rtol=1e-12)


def test_slq_with_n_steps_has_the_eigenvalues_as_nodes():
    eigs = torch.tensor([-2.0, -0.5, 0.3, 1.0, 4.0], dtype=torch.float64)
    d = hessian.density(Matrix(symmetric(eigs, seed=6)), runs=2, steps=5, points=11)
    for row in d.nodes:
        np.testing.assert_allclose(np.sort(row), eigs.numpy(), atol=1e-10)
    assert d.negative_mass == pytest.approx(float(d.weights[:, :2].sum(1).mean()))


def test_resumable_files_need_an_objective(tmp_path):
    op = Matrix(random_symmetric(6))
    for call in (
        lambda: hessian.trace(op, path=tmp_path / "t.json"),
        lambda: hessian.density(op, runs=1, steps=2, path=tmp_path / "d.json"),
    ):
        with pytest.raises(bs.BasinscopeError, match="path .* needs an Objective"):
            call()
