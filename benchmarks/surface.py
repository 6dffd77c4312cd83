"""Benchmark: one 2-D filter-normalised loss surface, computed three ways.

The seed tool's setup (Li et al. 2018): an MLP 784-256-128-10 on 2,048
evaluation examples shaped like FashionMNIST ([1, 28, 28]; random data, which
is all a timing needs), a 31×31 grid on span (-1, 1) along two filter-normalised
random directions. In one process, on the same work:

1. **plain loop**, the textbook approach of tomgoldstein/loss-landscape
   (``plot_surface.py`` + ``evaluation.py``): for each grid point write
   ``p.data = w + x·dx + y·dy`` into the model's parameters, then loop over a
   ``DataLoader(TensorDataset, batch_size=128)`` accumulating ``loss·batch`` and
   ``correct``. Same directions and same ParamSpace as ours.
2. **loss-landscapes** (``loss_landscapes.random_plane`` with its
   ``metrics.Loss`` over the 2,048 examples, ``normalization='filter'``): timing
   only, its directions are its own (uniform, drawn from the global RNG).
3. **ours**: ``bs.Objective`` + ``bs.plane`` (the first-layer fast path).

Ours is checked against a float64 evaluation of the same grid (basinscope's
plain path on a float64 copy: every point through the whole network, no
shortcut) and against the plain loop's float32 values. The last line prints the
speed-ups, e.g. ``surface: 10.2x vs plain loop, 4.3x vs loss-landscapes, max rel
err 2e-7``. Each method is timed ``--repeat`` times and the minimum is kept
(the machine may be shared).

    python benchmarks/surface.py [--quick] [--threads N] [--repeat R]
"""

from __future__ import annotations

import argparse
import copy

import numpy as np
import torch
from _common import best_time, seed_tool_mlp
from torch import nn

import basinscope as bs

N_EXAMPLES = 2048
SPAN = (-1.0, 1.0)


def make_setup(seed: int = 0) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """The MLP after a few Adam steps on random FashionMNIST-shaped data."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N_EXAMPLES, 1, 28, 28, generator=g)
    y = torch.randint(0, 10, (N_EXAMPLES,), generator=g)
    model = seed_tool_mlp(seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for step in range(20):
        idx = torch.arange(step * 128, (step + 1) * 128) % N_EXAMPLES
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
    return model.eval(), x, y


# ------------------------------------------------------------------ baselines
def plain_loop(
    model: nn.Module,
    space: bs.ParamSpace,
    dirs: torch.Tensor,
    xs: np.ndarray,
    ys: np.ndarray,
    x: torch.Tensor,
    y: torch.Tensor,
) -> tuple[np.ndarray, np.ndarray]:
    """Li et al.'s ``crunch`` + ``eval_loss``, as written there, on a copy of the model.

    Their ``set_weights`` does ``p.data = w + d`` with ``d = dx·x + dy·y`` per
    tensor; ``eval_loss`` sums ``loss.item() * batch_size`` and correct
    predictions over a DataLoader and divides by the dataset size.
    """
    net = copy.deepcopy(model).eval()  # their tool writes into the model itself
    criterion = nn.CrossEntropyLoss()
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, y), batch_size=128, shuffle=False
    )
    params = dict(net.named_parameters())
    names = space.names  # the same coordinates as ours (all parameters here)
    weights = [params[n].data.clone() for n in names]
    dx = [space.unflatten(dirs[0])[n] for n in names]
    dy = [space.unflatten(dirs[1])[n] for n in names]
    losses = np.zeros((len(xs), len(ys)))
    accs = np.zeros((len(xs), len(ys)))
    for i, a in enumerate(xs):
        for j, b in enumerate(ys):
            for n, w, u, v in zip(names, weights, dx, dy, strict=True):
                params[n].data = w + (u * float(a) + v * float(b))
            total_loss, correct, total = 0.0, 0, 0
            with torch.no_grad():
                for inputs, targets in loader:
                    outputs = net(inputs)
                    total_loss += criterion(outputs, targets).item() * inputs.size(0)
                    _, predicted = torch.max(outputs.data, 1)
                    correct += predicted.eq(targets).sum().item()
                    total += inputs.size(0)
            losses[i, j] = total_loss / total
            accs[i, j] = correct / total
    return losses, accs


def loss_landscapes_plane(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int
) -> np.ndarray | None:
    """``loss_landscapes.random_plane`` with its ``Loss`` metric; None if not installed.

    Imported lazily so that the benchmark runs without it. Version 3.0.6 works
    with torch 2.x and numpy 2 as is (the code path used here has no removed
    numpy aliases), so no monkeypatching is needed.
    """
    try:
        import loss_landscapes
        import loss_landscapes.metrics
    except ImportError:
        return None
    metric = loss_landscapes.metrics.Loss(nn.CrossEntropyLoss(), x, y)
    torch.manual_seed(0)  # its random directions come from the global RNG
    # Its directions are rescaled to a total norm |θ|/distance over the grid;
    # ours are filter-normalised (norm |θ|) over (-1, 1): distance 0.5 spans the same.
    return loss_landscapes.random_plane(
        model, metric, distance=0.5, steps=steps, normalization="filter", deepcopy_model=True
    )


def ours(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, dirs: torch.Tensor, steps: int
) -> bs.Surface:
    obj = bs.Objective(model, nn.CrossEntropyLoss(), (x, y))
    return bs.plane(obj, dirs[0], dirs[1], span=SPAN, steps=steps)


def float64_reference(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, dirs: torch.Tensor, steps: int
) -> np.ndarray:
    """Every grid point through the whole network in float64 (no first-layer shortcut)."""
    obj = bs.Objective(copy.deepcopy(model).double(), nn.CrossEntropyLoss(), (x, y))
    coords = np.linspace(*SPAN, steps)
    coef = torch.from_numpy(np.stack(np.meshgrid(coords, coords, indexing="ij"), -1).reshape(-1, 2))
    loss, _ = obj.evaluate_affine(coef, dirs.double(), shortcut=False)
    return loss.numpy().reshape(steps, steps)


# ----------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="11×11 grid, one repeat (smoke run)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--repeat", type=int, default=None, help="timed runs per method (min kept)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    steps = 11 if args.quick else 31
    repeat = args.repeat or (1 if args.quick else 3)

    model, x, y = make_setup()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    # Li et al.'s default: every parameter is a coordinate; biases get d = θ.
    probe = bs.Objective(model, nn.CrossEntropyLoss(), (x, y))
    dirs = bs.random_directions(probe, 2, norm="filter", seed=0)
    coords = np.linspace(*SPAN, steps)
    print(
        f"MLP 784-256-128-10 ({probe.n:,} parameters), {N_EXAMPLES} examples, "
        f"{steps}x{steps} grid, {torch.get_num_threads()} threads, best of {repeat}"
    )

    t_ours, surf = best_time(lambda: ours(model, x, y, dirs, steps), repeat)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), f"basinscope modified the model's {k}"
    print(f"  ours             {t_ours:8.2f} s")

    t_plain, (plain_loss, plain_acc) = best_time(
        lambda: plain_loop(model, probe.space, dirs, coords, coords, x, y), repeat
    )
    print(f"  plain loop       {t_plain:8.2f} s")

    t_ll, ll = best_time(lambda: loss_landscapes_plane(model, x, y, steps), repeat)
    if ll is None:
        print("  loss-landscapes  not installed (pip install loss-landscapes); ratio skipped")
    else:
        assert ll.shape == (steps, steps)
        print(f"  loss-landscapes  {t_ll:8.2f} s  (its own directions; timing only)")

    ref = float64_reference(model, x, y, dirs, steps)
    err = float(np.max(np.abs(surf.train_loss - ref) / np.abs(ref)))
    err_plain = float(np.max(np.abs(plain_loss - surf.train_loss) / np.abs(surf.train_loss)))
    flips = int(np.max(np.abs(plain_acc - surf.train_acc)) * N_EXAMPLES + 0.5)
    print(f"  ours vs float64 reference: max rel err {err:.1e}")
    print(
        f"  plain loop vs ours (both float32): max rel diff {err_plain:.1e}, accuracy {flips} ex."
    )
    assert err <= 1e-5, f"ours is off the float64 reference by {err:.2e} (> 1e-5)"
    assert err_plain <= 1e-5, f"the plain loop and ours disagree by {err_plain:.2e}"
    assert flips <= 2, f"accuracies differ by {flips} examples at some point"
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), f"a baseline modified the model's {k}"

    vs_ll = (
        "loss-landscapes not installed"
        if ll is None
        else f"{t_ll / t_ours:.1f}x vs loss-landscapes"
    )
    print(f"surface: {t_plain / t_ours:.1f}x vs plain loop, {vs_ll}, max rel err {err:.0e}")


if __name__ == "__main__":
    main()
