"""Tests for basinscope.training's SAM: SAM/ASAM against closed forms and a hand-written two-pass reference."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from basinscope.errors import BasinscopeError
from basinscope.training import SAM, frozen_running_stats


class Quadratic(nn.Module):
    """L(θ) = ½ θᵀAθ with θ the module's one parameter."""

    def __init__(self, theta: torch.Tensor, A: torch.Tensor):
        super().__init__()
        self.theta = nn.Parameter(theta.clone())
        self.register_buffer("A", A)

    def forward(self) -> torch.Tensor:
        return 0.5 * self.theta @ self.A @ self.theta


def _quadratic(seed: int = 0, d: int = 5) -> Quadratic:
    g = torch.Generator().manual_seed(seed)
    Q = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64)).Q
    A = Q @ torch.diag(torch.tensor([5.0, 2.0, 1.0, 0.5, 0.1], dtype=torch.float64)) @ Q.T
    theta = torch.randn(d, generator=g, dtype=torch.float64)
    return Quadratic(theta, A)


def _closure(model: nn.Module):
    def closure():
        loss = model()
        loss.backward()
        return loss

    return closure


@pytest.mark.parametrize("adaptive", [False, True])
def test_one_step_on_a_quadratic_matches_the_closed_form(adaptive):
    q = _quadratic()
    theta, A = q.theta.detach().clone(), q.A
    lr, rho, eta = 0.1, 0.3, 0.01
    sam = SAM(torch.optim.SGD(q.parameters(), lr=lr), rho, adaptive=adaptive, eta=eta)
    loss = sam.step(_closure(q))

    g = A @ theta
    if adaptive:  # ASAM: ε̂ = ρ T²g / ‖Tg‖, T = |θ| + η
        T = theta.abs() + eta
        eps = rho * T**2 * g / torch.linalg.vector_norm(T * g)
    else:  # SAM: ε̂ = ρ g / ‖g‖
        eps = rho * g / torch.linalg.vector_norm(g)
    expected = theta - lr * A @ (theta + eps)
    torch.testing.assert_close(q.theta.detach(), expected, rtol=1e-13, atol=1e-15)
    assert loss.item() == pytest.approx(0.5 * float(theta @ A @ theta), rel=1e-14)
    # Not the plain gradient step: the perturbation moved the gradient.
    assert (q.theta.detach() - (theta - lr * g)).abs().max() > 1e-3


def test_default_radii_are_the_papers():
    q = _quadratic()
    assert SAM(torch.optim.SGD(q.parameters(), lr=0.1)).rho == 0.05
    asam = SAM(torch.optim.SGD(q.parameters(), lr=0.1), adaptive=True)
    assert (asam.rho, asam.eta) == (0.5, 0.01)


def test_zero_gradient_gives_a_plain_step():
    q = _quadratic()
    with torch.no_grad():
        q.theta.zero_()  # the minimum: g = 0, so ε̂ must be 0 (not NaN)
    sam = SAM(torch.optim.SGD(q.parameters(), lr=0.1, weight_decay=0.0), 0.05)
    sam.step(_closure(q))
    assert torch.equal(q.theta.detach(), torch.zeros(5, dtype=torch.float64))


def _tiny(seed: int = 0):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)).double()
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(7, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (7,), generator=g)
    return model, x, y


def _reference_sam_gradient(params, x, y, rho, adaptive, eta):
    """∇L(w + ε̂), written out with torch.autograd.grad on a functional model."""

    def loss(ps):
        w1, b1, w2, b2 = ps
        return F.cross_entropy(F.linear(F.relu(F.linear(x, w1, b1)), w2, b2), y)

    ws = [p.detach().clone().requires_grad_(True) for p in params]
    g = torch.autograd.grad(loss(ws), ws)
    if adaptive:
        T = [w.detach().abs() + eta for w in ws]
        norm = torch.sqrt(sum(((t * gi) ** 2).sum() for t, gi in zip(T, g, strict=True)))
        eps = [rho * t * t * gi / norm for t, gi in zip(T, g, strict=True)]
    else:
        norm = torch.sqrt(sum((gi**2).sum() for gi in g))
        eps = [rho * gi / norm for gi in g]
    wp = [(w.detach() + e).requires_grad_(True) for w, e in zip(ws, eps, strict=True)]
    return torch.autograd.grad(loss(wp), wp)


@pytest.mark.parametrize("adaptive", [False, True])
@pytest.mark.parametrize("base", ["sgd-momentum", "adam"])
def test_matches_a_hand_written_two_pass_reference(adaptive, base):
    model, x, y = _tiny()
    reference = copy.deepcopy(model)

    def make(ps):
        if base == "adam":
            return torch.optim.Adam(ps, lr=0.01, weight_decay=0.1)
        return torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.1)

    rho = 0.5 if adaptive else 0.05
    sam = SAM(make(model.parameters()), rho, adaptive=adaptive)
    ref_opt = make(reference.parameters())  # fed the hand-computed ∇L(w + ε̂)

    def closure():
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss

    for _ in range(3):  # several steps: the base optimizer's state carries over
        sam.step(closure)
        ref_params = list(reference.parameters())
        grads = _reference_sam_gradient(ref_params, x, y, rho, adaptive, 0.01)
        for p, gi in zip(ref_params, grads, strict=True):
            p.grad = gi.clone()
        ref_opt.step()
        for p, r in zip(model.parameters(), ref_params, strict=True):
            torch.testing.assert_close(p.detach(), r.detach(), rtol=1e-12, atol=1e-14)
    moved = [
        (p - q).abs().max()
        for p, q in zip(model.parameters(), _tiny()[0].parameters(), strict=True)
    ]
    assert max(moved) > 1e-3


def test_manual_first_and_second_step_restore_the_weights_bit_for_bit():
    model, x, y = _tiny()
    before = [p.detach().clone() for p in model.parameters()]
    sam = SAM(torch.optim.SGD(model.parameters(), lr=0.0), 0.05)  # lr 0: step changes nothing
    F.cross_entropy(model(x), y).backward()
    sam.first_step(zero_grad=True)
    assert all(p.grad is None for p in model.parameters())
    shift = torch.sqrt(
        sum(((p - b) ** 2).sum() for p, b in zip(model.parameters(), before, strict=True))
    )
    assert shift.item() == pytest.approx(0.05, rel=1e-12)  # ‖ε̂‖ = ρ
    with pytest.raises(RuntimeError, match="between first_step and second_step"):
        sam.state_dict()
    with pytest.raises(RuntimeError, match="first_step called twice"):
        sam.first_step()
    F.cross_entropy(model(x), y).backward()
    sam.second_step()
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))
    with pytest.raises(RuntimeError, match="without first_step"):
        sam.second_step()


def _bn_model():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        return nn.Sequential(
            nn.Linear(4, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 3)
        ).double()


@pytest.mark.parametrize("momentum", [0.1, None])  # exponential and cumulative averages
def test_batchnorm_statistics_are_updated_once_per_step(momentum):
    model = _bn_model()
    model[1].momentum = momentum
    plain = copy.deepcopy(model)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (16,), generator=g)
    model.train()
    plain.train()
    with torch.no_grad():
        plain(x)  # one forward at the unperturbed weights

    sam = SAM(torch.optim.SGD(model.parameters(), lr=0.1), 0.5, model=model)
    sam.step(lambda: F.cross_entropy(model(x), y).backward())
    bn, ref = model[1], plain[1]
    assert bn.num_batches_tracked.item() == 1
    torch.testing.assert_close(bn.running_mean, ref.running_mean, rtol=0, atol=0)
    torch.testing.assert_close(bn.running_var, ref.running_var, rtol=0, atol=0)
    assert not torch.equal(bn.running_mean, torch.zeros(5, dtype=torch.float64))

    # Without the model, the second pass (at w + ε̂) is folded in as well.
    twice = copy.deepcopy(plain)
    twice.load_state_dict(_bn_model().state_dict())
    twice[1].momentum = momentum
    unfrozen = SAM(torch.optim.SGD(twice.parameters(), lr=0.1), 0.5)
    unfrozen.step(lambda: F.cross_entropy(twice(x), y).backward())
    assert twice[1].num_batches_tracked.item() == 2
    assert not torch.equal(twice[1].running_mean, ref.running_mean)


def test_frozen_running_stats_restores_buffers_on_error():
    model = _bn_model().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ZeroDivisionError), frozen_running_stats(model):
        model(torch.randn(8, 4, dtype=torch.float64))
        1 / 0  # noqa: B018
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_lr_scheduler_on_the_base_optimizer_sets_the_step_size():
    q = _quadratic()
    base = torch.optim.SGD(q.parameters(), lr=0.2)
    sam = SAM(base, 0.1)
    warmup = 3
    sched = torch.optim.lr_scheduler.LambdaLR(base, lambda t: min((t + 1) / (warmup + 1), 1.0))
    theta, A = q.theta.detach().clone(), q.A
    lrs = []
    for _ in range(5):
        lr = sam.param_groups[0]["lr"]  # the same dicts as base.param_groups
        lrs.append(lr)
        sam.step(_closure(q))
        sched.step()
        g = A @ theta
        theta = theta - lr * A @ (theta + 0.1 * g / torch.linalg.vector_norm(g))
    assert lrs == pytest.approx([0.05, 0.1, 0.15, 0.2, 0.2], rel=1e-15)
    assert sam.param_groups is base.param_groups
    torch.testing.assert_close(q.theta.detach(), theta, rtol=1e-12, atol=1e-15)


def test_state_dict_round_trip_continues_bit_for_bit():
    model, x, y = _tiny()

    def run(m, opt, steps):
        for _ in range(steps):
            opt.step(lambda: F.cross_entropy(m(x), y).backward())

    sam = SAM(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), 0.5, adaptive=True)
    run(model, sam, 2)
    saved = copy.deepcopy(sam.state_dict())
    weights = copy.deepcopy(model.state_dict())
    run(model, sam, 2)

    other, _, _ = _tiny(seed=5)
    other.load_state_dict(weights)
    fresh = SAM(torch.optim.SGD(other.parameters(), lr=0.3), 0.05)  # other hyperparameters
    fresh.load_state_dict(saved)
    assert (fresh.rho, fresh.adaptive, fresh.eta) == (0.5, True, 0.01)
    assert fresh.param_groups is fresh.base_optimizer.param_groups
    assert fresh.param_groups[0]["lr"] == 0.1 and fresh.param_groups[0]["momentum"] == 0.9
    run(other, fresh, 2)
    assert all(
        torch.equal(a, b) for a, b in zip(model.parameters(), other.parameters(), strict=True)
    )
    assert "momentum_buffer" in saved["base"]["state"][0]


def test_deepcopy_keeps_the_wrapper_whole():
    model, _, _ = _tiny()
    sam = SAM(torch.optim.SGD(model.parameters(), lr=0.1), 0.2, adaptive=True)
    twin = copy.deepcopy(sam)
    assert (twin.rho, twin.adaptive) == (0.2, True)
    assert twin.param_groups is twin.base_optimizer.param_groups


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"rho": 0.0}, r"rho 0.0 is not valid; give a positive radius"),
        ({"rho": -1}, "rho -1 is not valid"),
        ({"rho": math.inf}, "rho inf is not valid"),
        ({"rho": True}, "rho True is not valid"),
        ({"rho": math.nan}, "rho nan is not valid"),
        ({"rho": 10**400}, "rho 1000.* is not valid"),
        ({"eta": math.nan, "adaptive": True}, "eta nan is not valid"),
        ({"eta": -0.1, "adaptive": True}, "eta -0.1 is not valid; give a non-negative"),
        ({"adaptive": "yes"}, "adaptive 'yes' is not valid; give True or False"),
        ({"model": "net"}, "model str is not valid"),
    ],
)
def test_bad_options(kwargs, match):
    q = _quadratic()
    with pytest.raises(BasinscopeError, match=match):
        SAM(torch.optim.SGD(q.parameters(), lr=0.1), **kwargs)


def test_bad_base_and_misuse():
    q = _quadratic()
    with pytest.raises(BasinscopeError, match="base_optimizer list is not valid"):
        SAM(list(q.parameters()))
    sam = SAM(torch.optim.SGD(q.parameters(), lr=0.1))
    with pytest.raises(BasinscopeError, match="base_optimizer SAM is not valid"):
        SAM(sam)
    with pytest.raises(RuntimeError, match="needs a closure"):
        sam.step()
    with pytest.raises(BasinscopeError, match="SAM state dict with keys"):
        sam.load_state_dict(torch.optim.SGD(q.parameters(), lr=0.1).state_dict())
