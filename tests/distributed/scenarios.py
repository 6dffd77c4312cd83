"""What the ranks compute in the distributed tests; each function is also run in one
process by the tests, and the two results are compared."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from conftest import small_mlp

import basinscope as bs


def objective(n: int = 40, **kwargs: Any) -> bs.Objective:
    model, X, y = small_mlp(seed=3, n=n)
    return bs.Objective(model, torch.nn.CrossEntropyLoss(), (X, y), batch_size=16, **kwargs)


def evaluations(tmp: Path) -> dict[str, Any]:
    """Points (more and fewer than the ranks), an affine plane, a gradient, products."""
    obj = objective()
    g = torch.Generator().manual_seed(0)
    pts = obj.theta0 + 0.1 * torch.randn(5, obj.n, generator=g, dtype=torch.float64)
    dirs = torch.randn(2, obj.n, generator=g, dtype=torch.float64)
    coef = torch.randn(7, 2, generator=g, dtype=torch.float64)
    v = torch.randn(3, obj.n, generator=g, dtype=torch.float64)
    return {
        "points": obj.evaluate(pts),
        "one": obj.evaluate(pts[:1]),
        "affine": obj.evaluate_affine(coef, dirs),
        "affine_one": obj.evaluate_affine(coef[:1], dirs),
        "affine_one_points": obj.evaluate_affine(coef[:1], dirs, split="points"),
        "grad": obj.grad(),
        "hvp": obj.hvp(v),
        "plan": obj.plan.name,
        "vmap": _vmap_points(),
        "store": _store_reachable(),
    }


def _store_reachable() -> bool:
    """The group's key-value store, which dynamic handout and the CLI's errors use."""
    from basinscope import _dist

    return _dist.default_store() is not None


def _vmap_points() -> tuple[torch.Tensor, torch.Tensor]:
    """11 points of the zoo's conv net through the vmap engine (blocks of 4), shared
    over the ranks in whole blocks: its last bits depend on a point's place in a block."""
    from _zoo import ZOO

    from basinscope import _dist
    from basinscope.objective import VmapEngine
    from basinscope.objective._parallel import evaluate_affine

    case = next(c for c in ZOO if c.name == "cnn")
    obj = bs.Objective(case.model(), torch.nn.CrossEntropyLoss(), case.data(), batch_size=16)
    g = torch.Generator().manual_seed(1)
    dirs = torch.randn(2, obj.n, generator=g, dtype=torch.float64)
    coef = torch.randn(11, 2, generator=g, dtype=torch.float64)
    d = _dist.active(obj.dist)
    return evaluate_affine(obj.batches, d, VmapEngine(block=4), coef, dirs, obj.theta0)


def _test_data() -> tuple[torch.Tensor, torch.Tensor]:
    _, X, y = small_mlp(seed=4, n=30)
    return X, y


def landscape(tmp: Path) -> dict[str, Any]:
    """A plane with test data into a file (also one interrupted, to be resumed), a line
    of a chunk not divisible by the ranks, and a basin volume with partial results."""
    import basinscope.landscape._grid as grid

    obj = objective()
    d = bs.random_directions(obj, 2, norm="filter", seed=1)
    plane = bs.plane(
        obj, d[0], d[1], steps=9, span=(-1, 1), test=_test_data(), path=tmp / "plane.h5", chunk=16
    )
    line = bs.line(obj, d[0], steps=11, chunk=5)
    # Interrupted after two chunks (a kill mid-way), on every rank alike.
    original, seen = grid._evaluate_chunk, {"n": 0}

    def flaky(*args: Any, **kwargs: Any) -> Any:
        seen["n"] += 1
        if seen["n"] > 2:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    grid._evaluate_chunk = flaky
    try:
        bs.plane(obj, d[0], d[1], steps=9, test=_test_data(), path=tmp / "killed.h5", chunk=16)
    except KeyboardInterrupt:
        pass
    finally:
        grid._evaluate_chunk = original
    vol = bs.basin_volume(
        obj, 0.5, rule="relative", n_directions=12, batch=5, path=tmp / "rays.json"
    )
    return {"plane": plane, "line": line, "volume": vol}


def tiny_study():
    from basinscope.experiments import MeasureConfig, Study
    from basinscope.training import TrainConfig

    base = dict(dataset="digits", train_size=120, epochs=1, model_kwargs={"widths": (8,)})
    runs = {
        name: TrainConfig(lr=0.1, batch_size=batch, **base)
        for name, batch in (("a", 20), ("b", 60), ("c", 120))
    }
    measure = MeasureConfig(grid_size=3, noise_samples=3, radius=0.5)
    return Study("tiny", runs, measure, measures=("surface",))


def study(tmp: Path) -> dict[str, Any]:
    """A three-run study: the runs dealt out over the ranks, the report written once."""
    from basinscope.experiments import run_study

    reports = run_study(tiny_study(), tmp, progress=False)
    return {"rows": [r.row() for r in reports]}


def hessian(tmp: Path) -> dict[str, Any]:
    """Curvature of the float64 MLP: Lanczos eigenvalues at both ends and the GGN's
    (data-parallel products), Hutchinson probes into a partial file, Hutch++ and SLQ
    runs into a partial file (point-parallel), a summary per layer (data-parallel
    Lanczos, point-parallel probes; for each probing operator built, whether every
    data-parallel one was freed before), the summary's deflated probes given a fixed
    basis, and a trace on a data-parallel operator given as such (every rank makes
    every product)."""
    import weakref

    from basinscope import hessian as hs
    from basinscope.hessian import _summary

    obj = objective()
    top, bottom = hs.extremes(obj, 3, 2, tol=1e-9)
    hutch = hs.trace(obj, rtol=0.3, max_products=41, path=tmp / "probes.json")
    hpp = hs.trace(obj, method="hutch++", sketch=5, rtol=0.05, max_products=41)
    dens = hs.density(obj, runs=5, steps=12, points=201, path=tmp / "slq.json")
    made, freed = [], []
    build, alone = _summary.operator, _summary.operator_alone

    def tracked(*args: Any, **kwargs: Any) -> Any:
        op = build(*args, **kwargs)
        made.append(weakref.ref(op))
        return op

    def probing(*args: Any) -> Any:
        freed.append(all(ref() is None for ref in made))
        return alone(*args)

    _summary.operator, _summary.operator_alone = tracked, probing
    try:
        summary = hs.summary(obj, k=2, per_layer=True, trace_rtol=0.2)
    finally:
        _summary.operator, _summary.operator_alone = build, alone
    g = torch.Generator().manual_seed(7)
    Q = torch.linalg.qr(torch.randn(obj.n, 3, generator=g, dtype=torch.float64)).Q.T
    given = _summary._deflated(
        obj, "hessian", None, Q, 0.5, rtol=0.2, atol=0.0, seed=2, max_probes=25
    )
    ggn = hs.eigenvalues(obj, 2, tol=1e-9, curvature="ggn")
    shared = hs.trace(hs.operator(obj), rtol=0.05, max_products=23, path=tmp / "shared.json")
    return {
        "top": top.values, "bottom": bottom.values, "residuals": top.residuals,
        "products": top.n_products, "hutchinson": hutch, "hutch++": hpp, "density": dens,
        "summary": summary.to_dict(), "summary_trace": summary.trace, "freed": freed,
        "given": given, "ggn": ggn.values, "shared": shared,
    }  # fmt: skip


def sharpness(tmp: Path) -> dict[str, Any]:
    """Noise samples, PAC-Bayes draws, worst-case restarts (also m-sharpness), the
    direct ε-sharpness and Keskar's L-BFGS-B (sequential: data-parallel)."""
    obj = objective()
    d = bs.random_directions(obj, 2, norm="filter", seed=5)
    return {
        "noise": bs.sharpness.average_case(
            obj, 0.05, samples=7, chunk=3, seed=2, path=tmp / "noise.json"
        ),
        "pac": bs.sharpness.pac_bayes(obj, target=0.05, samples=5, tol=0.2, chunk=2),
        "worst": bs.sharpness.worst_case(obj, 0.1, steps=3, restarts=3),
        "worst_m": bs.sharpness.worst_case(obj, 0.1, norm="linf", steps=2, restarts=2, m=16),
        "eps": bs.sharpness.epsilon(obj, d, radius=0.2),
        "keskar": bs.sharpness.keskar(obj, epsilon=1e-3),
    }


class _FailsOnRankOne(torch.nn.Module):
    """A linear model whose forward fails on rank 1 for weights far from the start."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(6, 3).double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        if dist.get_rank() == 1 and float(self.fc.weight.abs().max()) > 50:
            raise ValueError("this rank's device cannot hold such weights")
        return self.fc(x.flatten(1))


def failures(tmp: Path) -> dict[str, Any]:
    """An error on one rank is raised on both with one sentence; a rank that dies leaves
    the other with a sentence, not a hang; describing on rank 0 alone hangs nothing."""
    import os

    import torch.distributed as dist

    _, X, y = small_mlp(seed=3, n=40)
    obj = bs.Objective(_FailsOnRankOne(), torch.nn.CrossEntropyLoss(), (X, y))
    if dist.get_rank() == 0:
        obj.describe()  # reads the plan: no collective
    out: dict[str, Any] = {"loss": obj.loss()}
    far = torch.full((4, obj.n), 100.0, dtype=torch.float64)
    try:
        obj.evaluate(far)
    except bs.BasinscopeError as err:
        out["error"] = (type(err).__name__, str(err))
    torch.save(out, tmp / f"rank{dist.get_rank()}.pt")
    if dist.get_rank() == 1:
        os._exit(3)  # dies before the next collective
    try:
        obj.evaluate(far[:, :] * 0)
    except bs.BasinscopeError as err:
        out["died"] = str(err)
    return out


def cli_commands(tmp: Path) -> dict[str, Any]:
    """``sharpness``, ``hessian``, ``path --trajectory`` and ``trajectory`` through the
    command line's own process group (joined and left by each command), as torchrun
    runs them; each command's exit status and what this rank printed."""
    import contextlib
    import io

    from basinscope.cli import main

    run, out = tmp / "run", tmp / "two"
    commands = {
        "sharpness": ["sharpness", str(run), "--samples", "4", "--worst-case", "0.05",
                      "--restarts", "3", "--steps", "2", "--json", str(out / "s.json")],
        "hessian": ["hessian", str(run), "--k", "2", "--density", str(out / "d.png"),
                    "--json", str(out / "h.json")],
        "path": ["path", str(run), "--trajectory", "--steps", "3", "--out", str(out / "p.h5")],
        "trajectory": ["trajectory", str(run), "--measures", "loss", "lambda_max",
                       "--out", str(out / "along")],
    }  # fmt: skip
    result = {}
    for name, argv in commands.items():
        text = io.StringIO()
        with contextlib.redirect_stdout(text):
            code = main([*argv, "--quiet"] if name != "trajectory" else argv)
        result[name] = (code, text.getvalue())
    return result
