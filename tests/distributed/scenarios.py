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
    }


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
