"""Curvature through attention: causal language models with a token-level loss.

Two small causal LMs over padded targets (``-100`` past each sequence's end, counted
0 by ``bs.CrossEntropy()``): one on ``nn.TransformerEncoderLayer`` (as
``tests/objective/test_losses.py``'s), one on ``F.scaled_dot_product_attention``
(basinscope's own ``training`` transformer). PyTorch runs their attention on a fused
kernel without a second derivative; the curvature measures must give the
eigenvalues, trace, density and Gauss–Newton matrix of a dense float64 reference
formed under the math backend, and leave the user's backend flags as they were,
also when the computation fails. The sharpness measures (first derivatives only)
must return points whose loss, evaluated directly, is the one they report.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _lm import LM as _LM
from _lm import T, V
from _lm import padded as _padded
from torch import nn
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel

import basinscope as bs
from basinscope import hessian
from basinscope.hessian._random import _PROBE, _SLQ, _rademacher
from basinscope.sharpness._keskar import _subspace
from basinscope.training import build_model


def _gpt() -> nn.Module:
    torch.manual_seed(3)
    model = build_model("transformer", (T,), V, d_model=4, n_heads=2, n_layers=1, d_mlp=8)
    with torch.no_grad():  # GPT-2's 0.02 initialisation leaves almost no curvature
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model.double()


MODELS = {"encoder": lambda: _LM(d=4, layers=1).double(), "sdpa": _gpt}


def _flags() -> tuple[bool, ...]:
    cuda = torch.backends.cuda
    return (
        cuda.flash_sdp_enabled(),
        cuda.mem_efficient_sdp_enabled(),
        cuda.math_sdp_enabled(),
        cuda.cudnn_sdp_enabled(),
    )


def _kernel() -> str:
    """The backward node of a small attention call: which kernel PyTorch chose."""
    q = torch.randn(1, 1, 3, 2, dtype=torch.float64, requires_grad=True)
    return type(F.scaled_dot_product_attention(q, q, q, is_causal=True).grad_fn).__name__


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class Case:
    """A model, its padded data, the Objective, and dense float64 H and G at θ0."""

    def __init__(self, name: str):
        self.model = MODELS[name]()
        self.x, self.y = _padded(n=6)
        self.obj = bs.Objective(self.model, bs.CrossEntropy(), (self.x, self.y), batch_size=4)
        self.valid = self.y != -100
        theta = self.obj.theta0.clone()
        with warnings.catch_warnings(), sdpa_kernel([SDPBackend.MATH]):
            warnings.simplefilter("ignore", DeprecationWarning)
            self.H = torch.autograd.functional.hessian(self.loss_of, theta)
            J = torch.autograd.functional.jacobian(self.logits, theta).reshape(-1, len(theta))
            out = self.logits(theta)
            H_out = torch.func.hessian(self.token_sum)(out).reshape(out.numel(), -1)
        self.G = J.T @ H_out @ J / int(self.valid.sum())

    def logits(self, theta: torch.Tensor) -> torch.Tensor:
        """The user's model (not the Objective's copy) at ``theta``."""
        return functional_call(self.model, self.obj.space.unflatten(theta), (self.x,))

    def token_sum(self, out: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(out[self.valid], self.y[self.valid], reduction="sum")

    def loss_of(self, theta: torch.Tensor) -> torch.Tensor:
        """Torch's token-level mean: the loss summed over valid tokens / their number."""
        return self.token_sum(self.logits(theta)) / int(self.valid.sum())

    def direct(self, theta: torch.Tensor) -> float:
        with torch.no_grad():
            return float(self.loss_of(theta.to(torch.float64)))


@pytest.fixture(scope="module", params=list(MODELS))
def case(request) -> Case:
    return Case(request.param)


def _probes_are_exact(est: hessian.TraceEstimate, A: torch.Tensor) -> None:
    """Each Hutchinson sample is ``zᵀAz`` for its Rademacher probe ``z(seed, i)``."""
    want = [float(z @ A @ z) for z in (_rademacher(len(A), est.seed, _PROBE, i) for i in range(3))]
    np.testing.assert_allclose(est.samples, want, rtol=1e-9)
    assert est.value == pytest.approx(np.mean(want), rel=1e-9)


def test_fused_attention_has_no_second_derivative(case):
    # The premise: outside the math backend autograd cannot form this Hessian.
    theta = case.obj.theta0.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(case.loss_of(theta), theta, create_graph=True)
    try:
        torch.autograd.grad(g.sum(), theta)
    except RuntimeError as err:
        assert "is not implemented" in str(err)
    else:
        pytest.skip("this PyTorch runs attention on a twice-differentiable kernel by default")


def test_attention_hessian_eigenvalues_trace_and_density_match_dense(case):
    obj, H = case.obj, case.H
    lam = torch.linalg.eigvalsh(H)
    top, bottom = hessian.extremes(obj, top=3, bottom=2, tol=1e-9)
    np.testing.assert_allclose(top.values, lam.flip(0)[:3].numpy(), rtol=1e-6)
    np.testing.assert_allclose(bottom.values, lam[:2].numpy(), rtol=1e-6)
    assert top.converged and bottom.values[0] < 0  # a random init is a saddle
    assert hessian.eigenvalues(obj, 2, tol=1e-9).values == pytest.approx(top.values[:2], rel=1e-8)
    _probes_are_exact(hessian.trace(obj, min_probes=3, max_products=3, seed=5), H)
    d = hessian.density(obj, runs=3, steps=12, seed=2)
    for p in range(4):  # Σ_j w_j τ_j^p = vᵀHᵖv for each run's unit start vector
        Hp = torch.linalg.matrix_power(H, p)
        vs = [_rademacher(obj.n, 2, _SLQ, r) / math.sqrt(obj.n) for r in range(3)]
        assert d.moment(p) == pytest.approx(np.mean([float(v @ Hp @ v) for v in vs]), rel=1e-8)


def test_attention_ggn_matches_its_dense_form(case):
    obj, G = case.obj, case.G
    lam = torch.linalg.eigvalsh(G)
    assert float(lam[0]) >= -1e-12  # positive semi-definite, unlike H at this saddle
    Vs = torch.randn(3, obj.n, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for batch_size in (1, 4, 6):
        chunked = bs.Objective(
            case.model, bs.CrossEntropy(), (case.x, case.y), batch_size=batch_size
        )
        got = hessian.GGNOperator(chunked).matmat(Vs)
        torch.testing.assert_close(got, Vs @ G, rtol=1e-10, atol=1e-12 * float(G.abs().max()))
    top = hessian.eigenvalues(obj, 3, tol=1e-9, curvature="ggn")
    np.testing.assert_allclose(top.values, lam.flip(0)[:3].numpy(), rtol=1e-6)
    _probes_are_exact(hessian.trace(obj, min_probes=3, max_products=3, curvature="ggn"), G)
    assert hessian.density(obj, runs=2, steps=10, curvature="ggn").negative_mass == 0.0


class _Bomb(nn.Module):
    """The LM, raising inside its forward once armed (after the Objective's checks)."""

    armed = False
    seen = ""  # the attention kernel's backward, as autograd records it inside

    def __init__(self):
        super().__init__()
        self.inner = _LM(d=4, layers=1).double()

    def forward(self, x):
        if _Bomb.armed:
            _Bomb.seen = _kernel()
            raise RuntimeError("boom")
        return self.inner(x)


def test_the_users_backend_flags_are_unchanged_after_success_and_error():
    x, y = _padded(n=6)
    obj = bs.Objective(_Bomb(), bs.CrossEntropy(), (x, y), batch_size=4)
    user = _flags()
    torch.backends.cuda.enable_mem_efficient_sdp(False)  # a user's own setting
    try:
        mine, fused = _flags(), _kernel()
        assert "ScaledDotProduct" in fused
        for curvature in hessian.CURVATURES:
            hessian.eigenvalues(obj, 1, curvature=curvature, max_products=5)
            assert _flags() == mine
            hessian.trace(obj, min_probes=2, max_products=3, curvature=curvature)
            hessian.density(obj, runs=1, steps=3, curvature=curvature)
            assert _flags() == mine
        _Bomb.armed = True
        for curvature in hessian.CURVATURES:
            _Bomb.seen = ""
            with pytest.raises(RuntimeError, match="boom"):
                hessian.eigenvalues(obj, 1, curvature=curvature)
            assert "ScaledDotProduct" not in _Bomb.seen  # inside: the math backend's matmuls
            assert _flags() == mine and _kernel() == fused  # after: the user's fused kernel
    finally:
        _Bomb.armed = False
        torch.backends.cuda.enable_mem_efficient_sdp(user[1])
    assert _flags() == user


def test_worst_case_sharpness_returns_a_point_of_its_reported_loss(case):
    obj = case.obj
    loss0 = case.direct(obj.theta0)
    for norm in ("l2", "linf"):
        w = bs.sharpness.worst_case(obj, radius=0.05, norm=norm, steps=4, restarts=2, seed=1)
        assert w.loss0 == pytest.approx(loss0, rel=1e-12)
        assert w.max_loss == pytest.approx(case.direct(obj.theta0 + w.delta), rel=1e-12)
        assert w.value == pytest.approx(w.max_loss - loss0, rel=1e-9)
        assert w.value > 0 and w.value == pytest.approx(max(w.restart_values), rel=1e-12)
        size = torch.linalg.vector_norm(w.delta, ord=2 if norm == "l2" else math.inf)
        assert float(size) <= 0.05 * (1 + 1e-12)
        assert w.delta_l2 == pytest.approx(float(w.delta.norm()), rel=1e-12)
    # m-sharpness over batches of 2 sequences: a mean weighted by each batch's valid tokens
    m = bs.sharpness.worst_case(obj, radius=0.05, steps=2, restarts=1, m=2)
    tokens = case.valid.reshape(3, -1).sum(1).double()
    want = float((torch.tensor(m.batch_values, dtype=torch.float64) * tokens).sum() / tokens.sum())
    assert m.n_batches == 3 and m.value == pytest.approx(want, rel=1e-12)


def test_keskar_sharpness_returns_a_point_of_its_reported_loss(case):
    obj = case.obj
    loss0 = case.direct(obj.theta0)
    k = bs.sharpness.keskar(obj, epsilon=1e-2, maxiter=4)
    y = torch.from_numpy(k.y)
    assert k.loss0 == pytest.approx(loss0, rel=1e-12)
    assert k.max_loss == pytest.approx(case.direct(obj.theta0 + y), rel=1e-12)
    assert k.value == pytest.approx(100 * (k.max_loss - loss0) / (1 + loss0), rel=1e-9)
    assert k.value > 0
    np.testing.assert_allclose(k.half_width, 1e-2 * (obj.theta0.abs() + 1).numpy(), rtol=1e-12)
    assert (np.abs(k.y) <= k.half_width * (1 + 1e-12)).all()
    assert k.delta_l2 == pytest.approx(float(y.norm()), rel=1e-12)
    sub = bs.sharpness.keskar(obj, epsilon=1e-2, subspace_dim=4, seed=3, maxiter=4)
    A = _subspace(obj, 4, 3)
    assert sub.max_loss == pytest.approx(case.direct(obj.theta0 + A @ torch.from_numpy(sub.y)))
    assert sub.value > 0 and (np.abs(sub.y) <= sub.half_width * (1 + 1e-12)).all()
