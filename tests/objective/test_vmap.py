"""The vmap engine against the plain one on every model of the zoo and on trees, attention
and user losses; each point's value a function of the point and its place in its block;
its sizing; the plan's timing, refusals and ``make_plan(..., engine=...)``."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from _zoo import N_EXAMPLES, ZOO, Case
from torch import nn

import basinscope as bs
from basinscope.objective import CrossEntropy, Objective, PlainEngine, VmapEngine, _vmap, make_plan
from basinscope.training import Transformer


def _objective(case: Case, dtype: torch.dtype, batch_size: int = 16) -> Objective:
    x, y = case.data()
    return Objective(case.model().to(dtype), nn.CrossEntropyLoss(), (x, y), batch_size=batch_size)


def _points(obj: Objective, k: int = 11) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    coef = torch.randn(k, 2, generator=g, dtype=torch.float64).to(obj.dtype)
    coef[0] = 0.0
    return coef, bs.random_directions(obj, 2, seed=7).to(obj.dtype)


def _close(got, want, dtype: torch.dtype) -> None:
    """Loss to 1e-10 relative in float64 and 1e-5 in float32; accuracy exact in float64,
    within one example's flip in float32."""
    rtol = 1e-10 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(got[0], want[0], rtol=rtol, atol=0)
    atol = 0.0 if dtype == torch.float64 else 1.5 / N_EXAMPLES
    torch.testing.assert_close(got[1], want[1], rtol=0, atol=atol)


# --------------------------------------------------------------- agreement
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("case", ZOO, ids=[c.name for c in ZOO])
def test_vmap_agrees_with_the_plain_engine_on_the_zoo(case: Case, dtype):
    obj = _objective(case, dtype)
    coef, d = _points(obj)
    plain = PlainEngine().evaluate(obj.batches, coef, d, obj.theta0)
    plan = make_plan(obj.batches, engine="vmap")  # verified, untimed
    assert plan.name == "vmap" and plan.engine.block == 8, plan
    got = plan.engine.evaluate(obj.batches, coef, d, obj.theta0)
    assert got[0].dtype == got[1].dtype == torch.float64 and got[0].device.type == "cpu"
    _close(got, plain, dtype)
    # blocks of 3 (the last padded) and chunks cut into pieces of 5 rows: the same
    _close(VmapEngine(block=3, rows=5).evaluate(obj.batches, coef, d, obj.theta0), plain, dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("case", ZOO, ids=[c.name for c in ZOO])
def test_a_point_depends_on_its_place_in_its_block_alone(case: Case, dtype):
    """Bit-identical when the points keep their places ``i mod B`` (a split at a multiple
    of B); to rounding at other places (one at a time, a split at 3)."""
    obj = _objective(case, dtype)
    coef, d = _points(obj, k=9)
    engine = VmapEngine(block=4, rows=7)  # blocks of 4, the last padded; chunks cut at 7 rows
    run = lambda c: engine.evaluate(obj.batches, c, d, obj.theta0)  # noqa: E731
    whole = run(coef)
    kept = [run(coef[:4]), run(coef[4:])]  # every point at its place
    for i in (0, 1):
        assert torch.equal(whole[i], torch.cat([p[i] for p in kept]))
    moved = [run(coef[:3]), run(coef[3:])]
    ones = [run(coef[k : k + 1]) for k in range(len(coef))]
    assert torch.equal(whole[0][:1], ones[0][0])  # place 0 in both
    rtol = 1e-12 if dtype == torch.float64 else 1e-6
    for parts in (moved, ones):
        joined = tuple(torch.cat([p[i] for p in parts]) for i in (0, 1))
        torch.testing.assert_close(joined[0], whole[0], rtol=rtol, atol=0)
        _close(joined, whole, dtype)


class _Tree(nn.Module):
    """Dict inputs, a LayerNorm, attention and a dict output (``"logits"`` selected)."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(7, 8)
        self.norm = nn.LayerNorm(8)
        self.qkv = nn.Linear(8, 24)
        self.out = nn.Linear(8, 3)

    def forward(self, ids: torch.Tensor, scale: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.norm(self.emb(ids)) * scale[:, None, None]
        q, k, v = self.qkv(h).unflatten(-1, (3, 2, 4)).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return {"logits": self.out(a.transpose(1, 2).flatten(2).mean(1)), "aux": h}


def test_trees_attention_layernorm_and_a_user_loss_that_vmap_could_not_batch():
    g = torch.Generator().manual_seed(0)
    x = {"ids": torch.randint(0, 7, (30, 5), generator=g), "scale": torch.rand(30, generator=g)}
    x["scale"] = x["scale"].double()
    y = torch.randint(0, 3, (30,), generator=g)

    def loss(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if not bool(torch.isfinite(out).all().item()):  # .item() and a branch: no vmap
            raise ValueError("not finite")
        return F.cross_entropy(out, target)

    torch.manual_seed(0)
    obj = Objective(_Tree().double(), loss, (x, y), batch_size=8, output="logits")
    coef, d = _points(obj)
    plan = make_plan(obj.batches, engine="vmap")
    assert plan.name == "vmap", plan
    _close(plan.engine.evaluate(obj.batches, coef, d, obj.theta0),
           PlainEngine().evaluate(obj.batches, coef, d, obj.theta0), torch.float64)  # fmt: skip


def test_the_transformer_in_float32_with_a_token_level_loss():
    torch.manual_seed(0)
    model = Transformer((6,), 9, d_model=8, n_heads=2, n_layers=1)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randint(0, 9, (24, 6), generator=g), torch.randint(0, 9, (24, 6), generator=g)
    y[:3, :2] = -100  # ignored tokens: the count is not the number of examples
    obj = Objective(model, CrossEntropy(class_dim=-1), (x, y), batch_size=10)
    coef, d = _points(obj, k=5)
    got = VmapEngine().evaluate(obj.batches, coef, d, obj.theta0)
    want = PlainEngine().evaluate(obj.batches, coef, d, obj.theta0)
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=0)
    torch.testing.assert_close(got[1], want[1], rtol=0, atol=1.5 / obj.batches.totals[1])
    assert float(got[0][0]) == pytest.approx(obj.loss(), rel=1e-5)


# ------------------------------------------------------------------ sizing
def test_the_block_and_rows_follow_the_parameters_and_the_activations(monkeypatch):
    obj = _objective(ZOO[0], torch.float64)  # Flatten, 6 -> 8 -> 7 -> 3 with activations
    b = obj.batches
    # per example: input 6, Flatten 6, Linear 8, Tanh 8, Linear 7, ReLU 7, Linear 3
    assert _vmap.activations_per_example(b) == 45.0
    engine = _vmap.vmap_engine(b)
    assert (engine.block, engine.rows) == (8, None)  # whole chunks of 16
    monkeypatch.setattr(_vmap, "_ACTIVATIONS", 8 * 45 * 5 + 7)
    assert (_vmap.vmap_engine(b).block, _vmap.vmap_engine(b).rows) == (8, 5)
    monkeypatch.setattr(_vmap, "_POINTS_BLOCK", 3 * obj.n)
    assert _vmap.vmap_engine(b).block == 3
    monkeypatch.setattr(_vmap, "_POINTS_BLOCK", obj.n)
    why = f"room for one point at a time ({obj.n} parameters)"
    assert _vmap.vmap_engine(b) == why
    assert make_plan(b, engine="vmap").refused["vmap"] == why


# ------------------------------------------------------------------- plan
def _case(name: str) -> Case:
    return next(c for c in ZOO if c.name == name)


def test_the_plan_times_vmap_against_the_engine_it_would_otherwise_use(monkeypatch):
    obj = _objective(_case("residual"), torch.float64)
    chain = "residual or custom forward (a module's input is not the previous output)"
    plan = make_plan(obj.batches)  # the zoo's models are too quick to time: vmap unsaid
    assert plan.name == "first_layer" and dict(plan.refused) == {"chain": chain}
    vm, d = _vmap.vmap_engine(obj.batches), bs.random_directions(obj, 2, seed=7)
    assert _vmap.faster(vm, plan.engine, obj.batches, d) == ""
    monkeypatch.setattr(_vmap, "_MIN_TIMED", 0.0)
    monkeypatch.setattr(_vmap, "_SPEEDUP", 1e9)  # timed, never fast enough
    plan = make_plan(obj.batches)
    slow = re.fullmatch(
        r"verified but not faster here \(([\d.e+-]+)× the first_layer engine\)",
        plan.refused["vmap"],
    )
    assert plan.name == "first_layer" and slow and 0 < float(slow.group(1)) < 1e9
    monkeypatch.setattr(_vmap, "_SPEEDUP", 0.0)  # always fast enough
    plan = make_plan(obj.batches)
    assert plan.name == "vmap" and dict(plan.refused) == {"chain": chain}
    assert str(plan) == f"engine vmap; not chain: {chain}"
    tied = make_plan(_objective(_case("tied"), torch.float64).batches)
    assert tied.name == "vmap" and list(tied.refused) == ["chain"]
    # the chain stays first where it applies: vmap is not even tried
    assert make_plan(_objective(ZOO[0], torch.float64).batches).name == "chain"


def test_the_timing_grows_the_data_to_a_chunk_and_compares_the_best_runs(monkeypatch):
    x, y = ZOO[0].data()
    obj = Objective(ZOO[0].model(), nn.CrossEntropyLoss(), (x.repeat(5, 1), y.repeat(5)),
                    batch_size=150)  # fmt: skip
    per_example = {"first_layer": 1e-3, "vmap": 5e-4}  # seconds, whatever the machine
    runs: list[tuple[str, int, int]] = []

    def seconds(engine, batches, coef, dirs) -> float:
        runs.append((engine.name, batches.n_examples, len(coef)))
        return per_example[engine.name] * batches.n_examples

    monkeypatch.setattr(_vmap, "_seconds", seconds)
    usual, vm = make_plan(obj.batches, engine="first_layer").engine, VmapEngine()
    d = bs.random_directions(obj, 2, seed=7)
    # 64 and 128 examples take under 0.2 s: doubled up to the chunk, 150; 3 rounds there
    assert _vmap.faster(vm, usual, obj.batches, d) is None  # 2× as fast
    assert runs == [("first_layer", 64, 8), ("first_layer", 128, 8), ("first_layer", 150, 8)] + [
        ("first_layer", 150, 8), ("vmap", 150, 8)] * 3  # fmt: skip
    per_example["vmap"] = 1.25e-3
    assert _vmap.faster(vm, usual, obj.batches, d) == (
        "verified but not faster here (0.80× the first_layer engine)"
    )
    per_example["first_layer"] = 2e-3  # 128 examples take 0.26 s: long enough
    runs.clear()
    assert _vmap.faster(vm, usual, obj.batches, d) is None  # 1.6× as fast
    assert {n for _, n, _ in runs} == {64, 128} and runs[2:4] == [
        ("first_layer", 128, 8), ("vmap", 128, 8)]  # fmt: skip
    per_example["first_layer"] = 3e-4  # the whole chunk in 45 ms: too quick
    runs.clear()
    assert _vmap.faster(vm, usual, obj.batches, d) == ""
    assert runs == [("first_layer", n, 8) for n in (64, 128, 150, 150)]


class _Branchy(nn.Module):
    """A forward that reads a value (``.item()``): vmap cannot batch it."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.fc(x)
        return out if out.sum().item() > -1e9 else -out


def test_a_model_vmap_cannot_batch_is_refused_with_the_reason():
    x, y = ZOO[0].data()
    obj = Objective(_Branchy().double(), nn.CrossEntropyLoss(), (x, y), batch_size=16)
    plan = make_plan(obj.batches)
    assert plan.name == "first_layer" and list(plan.refused) == ["chain", "vmap"]
    why = plan.refused["vmap"]
    assert why.startswith("fails on the verification points (") and ".item()" in why, why
    asked = make_plan(obj.batches, engine="vmap")  # falls back, saying why
    assert asked.name == "first_layer" and dict(asked.refused) == {
        "chain": plan.refused["chain"],
        "vmap": why,
    }
    coef, d = _points(obj, k=3)
    with pytest.raises(RuntimeError, match=r"\.item\(\)"):
        VmapEngine().evaluate(obj.batches, coef, d, obj.theta0)


def test_an_engine_can_be_named_and_is_used_untimed_when_it_verifies():
    mlp = _objective(ZOO[0], torch.float64).batches
    tied = _objective(_case("tied"), torch.float64).batches
    residual = _objective(_case("residual"), torch.float64).batches
    asked = lambda e: f"not tried (engine={e!r} was asked for)"  # noqa: E731
    for name, before in [("chain", []), ("vmap", ["chain"]), ("first_layer", ["chain", "vmap"])]:
        plan = make_plan(mlp, engine=name)
        assert plan.name == name and dict(plan.refused) == {k: asked(name) for k in before}
    plain = make_plan(mlp, engine="plain")
    assert plain.name == "plain" and list(plain.refused) == ["chain", "vmap", "first_layer"]
    # a named engine that does not apply: the usual untimed choice, and why
    plan = make_plan(residual, engine="chain")
    assert plan.name == "first_layer" and plan.refused["chain"].startswith("residual or custom")
    plan = make_plan(tied, engine="first_layer")
    assert plan.name == "plain" and plan.refused["first_layer"] == "tied weights"
    plan = make_plan(tied, engine="vmap")
    assert plan.name == "vmap" and isinstance(plan.engine, VmapEngine)
    with pytest.raises(bs.BasinscopeError, match="engine must be one of 'chain', 'vmap'"):
        make_plan(mlp, engine="batchnorm")
