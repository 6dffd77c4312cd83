"""Every evaluation engine against the plain one, on every model of the zoo; the plan's
choices and reasons; Batches, restrict and the determinism probe."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from _zoo import N_EXAMPLES, ZOO, Case
from torch import nn

import basinscope as bs
from basinscope.objective import (
    BatchNormEngine,
    ChainEngine,
    FirstLayerEngine,
    Objective,
    PlainEngine,
    batchnorm_layers,
    combine,
)

ENGINES = ("first_layer", "chain", "batchnorm")


def _objective(case: Case, dtype: torch.dtype, batch_size: int = 16) -> Objective:
    x, y = case.data()
    model = case.model().to(dtype)
    return Objective(model, nn.CrossEntropyLoss(), (x, y), batch_size=batch_size)


def _points(obj: Objective) -> tuple[torch.Tensor, torch.Tensor]:
    d = bs.random_directions(obj, 2, seed=7)
    coef = torch.tensor(
        [[0.0, 0.0], [0.5, -1.0], [2.0, 0.25], [0.0, 0.7], [-0.3, 0.0], [1.0, 1.0], [-1.5, 0.4]],
        dtype=obj.dtype,
    )
    return coef, d.to(obj.dtype)


def _engine(obj: Objective, name: str):
    """The engine ``name`` for ``obj``, or None where the plan refuses it."""
    plan = obj.plan
    if name == "chain":
        return plan.engine if plan.name == "chain" else None
    if plan.name == "chain":
        return FirstLayerEngine(plan.engine.first)
    return plan.engine if plan.name == "first_layer" else None


def _with_statistics(obj: Objective, point: torch.Tensor, x: torch.Tensor) -> Objective:
    """An Objective of the model moved to ``point``, its BatchNorm statistics set by
    torch's ``update_bn`` on ``x`` (one batch)."""
    moved = copy.deepcopy(obj.model)
    params = obj.space.unflatten(point)
    with torch.no_grad():
        for name, p in moved.named_parameters():
            p.copy_(params[name])
    torch.optim.swa_utils.update_bn(torch.utils.data.DataLoader(x, batch_size=len(x)), moved)
    moved.eval()
    return Objective(moved, obj.loss_fn, (obj.x, obj.y), space=obj.space, batch_size=obj.batch_size)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("case", ZOO, ids=[c.name for c in ZOO])
def test_every_engine_agrees_with_the_plain_engine(case: Case, dtype, engine):
    obj = _objective(case, dtype, batch_size=64 if engine == "batchnorm" else 16)
    assert obj.plan.name == case.plan, obj.plan
    coef, d = _points(obj)
    plain = PlainEngine().evaluate(obj.batches, coef, d, obj.theta0)
    rtol = 1e-12 if dtype == torch.float64 else 1e-6
    atol_acc = 0.0 if dtype == torch.float64 else 1.5 / N_EXAMPLES
    if engine == "batchnorm":
        if not case.batchnorm:
            with pytest.raises(bs.BasinscopeError, match="BatchNorm layers"):
                batchnorm_layers(obj.model)
            return
        got = BatchNormEngine(obj.batches).evaluate(obj.batches, coef, d, obj.theta0)
        points = combine(obj.theta0, coef, d)
        want = [o.evaluate(o.theta0) for o in (_with_statistics(obj, p, obj.x) for p in points)]
        torch.testing.assert_close(got[0], torch.cat([w[0] for w in want]), rtol=rtol, atol=0)
        torch.testing.assert_close(got[1], torch.cat([w[1] for w in want]), rtol=0, atol=atol_acc)
        assert not torch.equal(got[0], plain[0])  # the statistics matter here
        return
    fast = _engine(obj, engine)
    if fast is None:
        assert obj.plan.refused[engine], obj.plan  # refused, with a reason
        return
    got = fast.evaluate(obj.batches, coef, d, obj.theta0)
    torch.testing.assert_close(got[0], plain[0], rtol=rtol, atol=0)
    torch.testing.assert_close(got[1], plain[1], rtol=0, atol=atol_acc)
    if engine == "first_layer":  # at θ0 the arithmetic is the plain engine's: bit for bit
        assert got[0][0].item() == plain[0][0].item() and got[1][0].item() == plain[1][0].item()
    # the plan's own choice is what evaluate_affine runs
    assert torch.equal(obj.evaluate_affine(coef, d)[0], obj.plan.engine.evaluate(
        obj.batches, coef, d, obj.theta0)[0])  # fmt: skip


@pytest.mark.parametrize(
    "name, reason",
    [
        ("residual", "residual or custom forward"),
        ("tied", "tied weights"),
        ("hooks", "forward hooks"),
        ("batchnorm_eval", "(BatchNorm1d) is not one the chain runs"),
    ],
)
def test_the_plan_says_why_a_faster_engine_was_refused(name, reason):
    case = next(c for c in ZOO if c.name == name)
    plan = _objective(case, torch.float64).plan
    assert reason in (plan.refused.get("first_layer", "") + plan.refused["chain"]), plan
    assert list(plan.refused) == ["chain", "first_layer"][: len(plan.refused)]
    assert plan.name in str(plan) and reason in str(plan)


def test_plan_reasons_for_the_loss_the_targets_and_the_first_layer():
    case = ZOO[0]
    x, y = case.data()
    model = case.model()
    smooth = Objective(model, nn.CrossEntropyLoss(label_smoothing=0.1), (x, y))
    assert smooth.plan.name == "first_layer"
    assert smooth.plan.refused == {"chain": "loss is not a plain cross-entropy"}
    y_ignored = y.clone()
    y_ignored[:3] = -100
    ignored = Objective(model, nn.CrossEntropyLoss(), (x, y_ignored))
    assert ignored.plan.name == "first_layer"
    assert "targets are not all class indices" in ignored.plan.refused["chain"]
    normed = nn.Sequential(nn.LayerNorm(6), nn.Linear(6, 3)).double()
    plan = Objective(normed, nn.CrossEntropyLoss(), (x, y)).plan
    assert plan.name == "plain"
    assert plan.refused["first_layer"] == "first layer is not Linear/Conv/Embedding (LayerNorm)"
    assert isinstance(bs.Objective(model, F.cross_entropy, (x, y)).plan.engine, ChainEngine)


def test_the_plan_is_made_once_per_data():
    obj = _objective(ZOO[0], torch.float64)
    assert obj.plan is obj.plan
    test = obj.with_data(ZOO[0].data(seed=1))
    assert test.plan is not obj.plan and test.plan.name == obj.plan.name
    assert test.batches is not obj.batches and test.batches.model is obj.batches.model


# ------------------------------------------------------------------- Batches
def test_batches_chunks_losses_and_reduction(linreg):
    obj = Objective(linreg.model, linreg.loss_fn, (linreg.X, linreg.y), batch_size=7)
    b = obj.batches
    assert (b.n_examples, b.batch_size, b.dtype, b.device) == (50, 7, obj.dtype, obj.device)
    assert b.model is obj.model and b.space is obj.space and b.theta0 is obj.theta0
    assert [len(x) for x, _ in b.chunks()] == [7] * 7 + [1]
    params = b.space.unflatten(b.theta0)
    total = sum(float(b.chunk_loss(params, x, y)) for x, y in b.chunks())
    assert total == pytest.approx(obj.loss(), rel=1e-13)
    sums = [b.stats(b.forward(params, x), y) for x, y in b.chunks()]
    loss, acc = b.reduce(sum(s[0] for s in sums), sum(s[1] for s in sums))
    assert float(loss) == obj.loss() and torch.isnan(acc)


def test_chunk_loss_weights_chunks_by_their_count():
    g = torch.Generator().manual_seed(0)
    x, y = (
        torch.randn(30, 4, generator=g, dtype=torch.float64),
        torch.randint(0, 3, (30,), generator=g),
    )
    y[:10] = -100  # the first chunk is all ignored: nothing of the mean, zero gradient
    model = nn.Linear(4, 3).double()
    w = torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)
    obj = Objective(model, nn.CrossEntropyLoss(weight=w), (x, y), batch_size=10)
    b = obj.batches
    t = obj.theta0.clone().requires_grad_(True)
    losses = [b.chunk_loss(b.space.unflatten(t), xc, yc) for xc, yc in b.chunks()]
    assert float(losses[0].detach()) == 0.0
    with torch.no_grad():
        want = F.cross_entropy(model(x), y, weight=w)
    assert float(sum(losses).detach()) == pytest.approx(float(want), rel=1e-13)
    (g0,) = torch.autograd.grad(losses[0], t, retain_graph=True)
    assert not g0.any()
    (g_all,) = torch.autograd.grad(sum(losses), t)
    torch.testing.assert_close(g_all, obj.grad(), rtol=1e-13, atol=1e-15)


# ------------------------------------------------------------------ restrict
def test_restrict_is_a_fresh_objective_on_a_block(mlp):
    model, X, y = mlp
    obj = Objective(model, nn.CrossEntropyLoss(), (X, y))
    plan = obj.plan
    sub = obj.restrict(["3", "5.weight"])
    assert sub.space.names == ["3.weight", "3.bias", "5.weight"]
    pieces = obj.space.unflatten(obj.theta0)
    assert torch.equal(sub.theta0, torch.cat([pieces[n].reshape(-1) for n in sub.space.names]))
    assert sub.x is obj.x and sub.model is obj.model  # shared, not copied
    assert sub.loss() == obj.loss()
    assert obj.plan is plan and sub.plan is not plan and sub.batches.space is sub.space
    # its Hessian is the diagonal block of the full one
    i = obj.space.names.index("3.weight")
    lo = obj.space.offsets[i]
    e = torch.zeros(sub.n, dtype=torch.float64)
    e[2] = 1.0
    full = torch.zeros(obj.n, dtype=torch.float64)
    full[lo + 2] = 1.0
    block = obj.hvp(full)[lo : lo + sub.space.numels[0]]
    torch.testing.assert_close(sub.hvp(e)[: sub.space.numels[0]], block, rtol=1e-12, atol=1e-14)
    d = bs.random_directions(sub, 2, seed=0)
    coef = torch.tensor([[0.5, -0.5]], dtype=torch.float64)
    torch.testing.assert_close(
        sub.evaluate_affine(coef, d)[0], sub.evaluate_affine(coef, d, shortcut=False)[0],
        rtol=1e-12, atol=0,
    )  # fmt: skip


def test_restrict_refusals(mlp):
    model, X, y = mlp
    obj = Objective(model, nn.CrossEntropyLoss(), (X, y))
    with pytest.raises(bs.BasinscopeError, match="no parameter of the Objective matches 'fc9'"):
        obj.restrict("fc9")
    with pytest.raises(bs.BasinscopeError, match="modules are 1, 3, 5"):
        obj.restrict(["1", "fc9"])
    with pytest.raises(bs.BasinscopeError, match="include names no parameters"):
        obj.restrict([])


# --------------------------------------------------------------- determinism
class _Noisy(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 2).double()

    def forward(self, x):
        return F.dropout(self.fc(x), 0.5, training=True)


def test_check_determinism_is_one_public_probe():
    x, y = torch.randn(10, 3, dtype=torch.float64), torch.randint(0, 2, (10,))
    obj = Objective(_Noisy(), nn.CrossEntropyLoss(), (x, y), check_determinism=False)
    with pytest.raises(bs.BasinscopeError, match="not deterministic.*check_determinism=False"):
        obj.check_determinism()
    with pytest.raises(bs.BasinscopeError, match="not deterministic.*its Hessian is undefined"):
        obj.check_determinism(obj.theta0 * 2, advice="its Hessian is undefined")
    calm = Objective(nn.Linear(3, 2).double(), nn.CrossEntropyLoss(), (x, y))
    calm.check_determinism()
    calm.check_determinism(calm.theta0 + 1.0)


# ---------------------------------------------------------------- BatchNorm
def test_batchnorm_engine_joins_a_last_single_example_and_needs_two():
    case = next(c for c in ZOO if c.batchnorm)
    x, y = case.data()
    obj = Objective(case.model(), nn.CrossEntropyLoss(), (x[:33], y[:33]), batch_size=16)
    assert [n for _, n in BatchNormEngine(obj.batches)._batches()] == [16, 17]
    with pytest.raises(bs.BasinscopeError, match="at least 2 examples"):
        BatchNormEngine(obj.with_data((x[:1], y[:1])).batches)
