"""``basinscope surface --seeds K [K ...]``: the slices of several direction seeds.

A file of its own for length; ``_measure`` registers the flags and hands over.
Writes ``<out stem>_seed<k>.h5`` per seed, ``<out stem>_spread.png`` and
``<out stem>_spread.json`` (:func:`~basinscope.sharpness.direction_spread`).
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path
from typing import Any

from .._checks import check_output_file
from ..errors import BasinscopeError
from ..sharpness import COARSE_POINTS
from ._common import _check_distinct, _checkpoint_inputs, _load, _objective
from ._processes import is_writer

RADIUS = 0.25  # ε and the half-width of the curvature fits without --radius


def check_flags(args: argparse.Namespace) -> None:
    """Refuse ``--seeds`` with what contradicts it, and ``--radius`` without it."""
    if args.seeds is None:
        if args.radius is not None:
            raise BasinscopeError("--radius only applies together with --seeds")
        return
    if args.directions == "hessian":
        raise BasinscopeError(
            "--seeds draws random directions for each seed; it cannot be combined with "
            "--directions hessian"
        )
    if args.seed is not None:
        raise BasinscopeError("--seed and --seeds both give the direction seeds; give only --seeds")


def outputs(out: Path, seeds: list[int]) -> dict[str, Path]:
    """``{what: path}`` of every file a spread writes beside ``out``, each checked."""
    stem = out.with_suffix("")
    files = {
        f"the surface file of seed {k}": out.with_name(f"{out.stem}_seed{k}{out.suffix}")
        for k in seeds
    }
    files["the spread figure"] = Path(f"{stem}_spread.png")
    files["the spread JSON file"] = Path(f"{stem}_spread.json")
    for what, path in files.items():
        check_output_file(path, what)
    return files


def interrupted(args: argparse.Namespace) -> str:
    """The Ctrl-C message of ``surface``, with or without ``--seeds``."""
    if args.seeds is None:
        return (
            f"the points computed so far are saved in {args.out}; rerun the same command to resume"
        )
    out = Path(args.out)
    return (
        f"the points computed so far are saved in {out.with_suffix('')}_seed<k>{out.suffix}; "
        "rerun the same command to resume"
    )


def surface_spread(args: argparse.Namespace) -> None:
    """The body of ``surface --seeds``: check, compute, draw, write, print."""
    from .. import plots
    from .._io import atomic_write_json
    from .._keys import environment

    out = Path(args.out)
    seeds = list(args.seeds)
    if len(set(seeds)) != len(seeds):
        twice = next(k for k in seeds if seeds.count(k) > 1)
        raise BasinscopeError(f"--seeds must be distinct, but {twice} is given more than once")
    files = outputs(out, seeds)
    _check_distinct(files, _checkpoint_inputs(args))
    model, data = _load(args)
    obj = _objective(args, model, data, skip_bias_norm=not args.include_bias_norm)
    with warnings.catch_warnings():  # a coarse ε-sharpness is said below, in the CLI's words
        warnings.filterwarnings("ignore", "only .* grid point", RuntimeWarning)
        spread = _compute(args, obj, data, seeds, out)
    figure, json_file = files["the spread figure"], files["the spread JSON file"]
    if is_writer():  # under torchrun rank 0 draws and writes
        plots.plot_spread(spread, figure)
        surfaces = [str(files[f"the surface file of seed {k}"]) for k in seeds]
        payload = spread.to_dict() | {
            "surfaces": surfaces,
            "span": [-args.span, args.span],
            "steps": args.steps,
            "data": args.data,
            "environment": environment(obj.device, obj.dtype),
        }
        atomic_write_json(json_file, payload)
    for k, eps, curv in zip(spread.seeds, spread.eps, spread.curvature, strict=True):
        along = ", ".join(f"{c:.6g}" for c in curv)
        print(
            f"seed {k}: ε-sharpness {eps:.6g}, curvature {along} "
            f"({files[f'the surface file of seed {k}']})"
        )
    print(
        f"ε-sharpness mean ± SD {spread.eps_mean:.6g} ± {spread.eps_sd:.3g}, curvature mean "
        f"± SD {spread.curvature_mean:.6g} ± {spread.curvature_sd:.3g} "
        f"({len(seeds)} seeds, ε = {spread.radius:g}, SD with ddof=1)"
    )
    if any(spread.coarse):
        which = " ".join(str(k) for k, c in zip(seeds, spread.coarse, strict=True) if c)
        print(
            f"note: the ε-sharpness of seed(s) {which} is read off fewer than {COARSE_POINTS} "
            "grid points within ε, so it is mostly rounding noise; use more --steps, a "
            "smaller --span or a larger --radius"
        )
    print(f"figure: {figure}; numbers: {json_file}")


def _compute(args: argparse.Namespace, obj: Any, data: Any, seeds: list[int], out: Path) -> Any:
    """:func:`~basinscope.sharpness.direction_spread` with the command's settings."""
    from ..sharpness import direction_spread

    return direction_spread(
        obj,
        seeds,
        dim=args.dim,
        span=(-args.span, args.span),
        steps=args.steps,
        radius=RADIUS if args.radius is None else args.radius,
        norm=args.norm,
        test=(data.x_test, data.y_test) if args.data == "both" else None,
        path=out,
        progress=not args.quiet,
        update_bn=(data.x_train, data.y_train) if args.update_bn else None,
    )
