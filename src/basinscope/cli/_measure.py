"""The measures of one checkpoint: ``surface``, ``sharpness``, ``hessian``, ``volume``.

``sharpness`` lives in ``_sharpness`` (a file of its own for length); this module
registers the four commands in the order of ``basinscope --help``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import _dist
from .._checks import check_output_file
from ..errors import BasinscopeError
from . import _sharpness, _spread
from ._common import (
    _COUNT,
    _FINITE,
    _FORMATTER,
    _INT,
    _POSITIVE,
    _SEED,
    NOTHING_SAVED,
    _check_distinct,
    _check_json,
    _checkpoint_args,
    _checkpoint_inputs,
    _example,
    _figures,
    _integer,
    _load,
    _objective,
    _write_json,
    saved_when_finished,
)
from ._processes import is_writer


# ----------------------------------------------------------------- surface
def _cmd_surface(args: argparse.Namespace) -> None:
    from .. import plots
    from ..landscape import line, plane, random_directions

    if args.span <= 0:
        raise BasinscopeError(
            f"--span must be positive (the grid is [-span, span]), got {args.span}"
        )
    _spread.check_flags(args)
    if args.seeds is not None:  # several direction seeds: a file of its own for length
        return _spread.surface_spread(args)
    args.seed = 0 if args.seed is None else args.seed  # None: not given (see --seeds)
    out = check_output_file(args.out, "the surface file")
    figures = _figures(out, args.dim)
    outputs = {"the surface file": out} | {
        f"the {f.stem.rsplit('_', 1)[-1]} figure": f for f in figures
    }
    _check_distinct(outputs, _checkpoint_inputs(args))
    model, data = _load(args)
    obj = _objective(args, model, data, skip_bias_norm=not args.include_bias_norm)
    test = (data.x_test, data.y_test) if args.data == "both" else None
    if args.directions == "hessian":
        from ..hessian import top_directions

        # one process's directions (rank 0 alone, broadcast), whatever the number of
        # processes: they key the surface file, so a resume with another count matches
        d = _dist.agree(obj.dist, lambda: top_directions(obj, args.dim, seed=args.seed))
    else:
        d = random_directions(obj, args.dim, norm=args.norm, seed=args.seed)
    common = {
        "span": (-args.span, args.span),
        "steps": args.steps,
        "test": test,
        "path": out,
        "progress": not args.quiet,
        "update_bn": (data.x_train, data.y_train) if args.update_bn else None,
        "attrs": {
            "norm": args.norm if args.directions == "random" else "unit",
            "directions": args.directions,
            "direction_seed": args.seed,
            "data": args.data,
        },
    }
    surf = line(obj, d[0], **common) if args.dim == 1 else plane(obj, d[0], d[1], **common)
    if not is_writer():  # under torchrun rank 0 draws
        written = figures
    elif args.dim == 1:
        written = [plots.plot_line(surf, figures[0])]
    else:
        written = [plots.plot_contour(surf, figures[0]), plots.plot_surface_3d(surf, figures[1])]
    print(f"surface written to {out}; figures: {', '.join(str(p) for p in written)}")


# ----------------------------------------------------------------- hessian
def _cmd_hessian(args: argparse.Namespace) -> None:
    from .. import hessian

    _check_json(args)
    if args.density:
        check_output_file(args.density, "the --density figure")
    _check_distinct(
        {"the --json file": args.json, "the --density figure": args.density},
        _checkpoint_inputs(args),
    )
    model, data = _load(args)
    obj = _objective(args, model, data, skip_bias_norm=False)
    per_layer: bool | list[str] = args.layers if args.layers else bool(args.per_layer)
    res = hessian.summary(
        obj, args.k, tol=args.tol, trace_rtol=args.trace_rtol, per_layer=per_layer, seed=args.seed
    )
    out = res.to_dict()
    print(f"coordinates n        {res.n}")
    print(f"λ_max                {res.lambda_max:.6g}")
    print(f"λ_min                {res.lambda_min:.6g}")
    print("top-k                " + ", ".join(f"{v:.6g}" for v in out["top_k"]))
    print(f"trace                {res.trace.value:.6g} ± {res.trace.stderr:.2g} (SE)")
    print(f"Hessian-vector products {res.n_products}")
    if res.per_layer:
        print(f"\n{'block':<24} {'n':>8} {'λ_max':>12} {'λ_min':>12} {'trace':>12} {'± SE':>10}")
        for name, layer in res.per_layer.items():
            print(
                f"{name:<24} {layer.n:>8} {layer.lambda_max:>12.5g} {layer.lambda_min:>12.5g} "
                f"{layer.trace:>12.5g} {layer.trace_se:>10.2g}"
            )
    if args.density:
        dens = hessian.density(obj, seed=args.seed)
        png = hessian.plot_density(dens, args.density) if is_writer() else args.density
        out["density"] = dens.to_dict()
        print(f"spectral density drawn in {png}")
    _write_json(args, out, obj)


# ------------------------------------------------------------------ volume
def _cmd_volume(args: argparse.Namespace) -> None:
    from ..landscape import basin_volume

    if args.rule == "relative" and not args.threshold > 0:
        raise BasinscopeError(f"a relative --threshold must be positive, got {args.threshold}")
    _check_json(args)
    args.out = check_output_file(_volume_file(args), "the volume's partial-results file")
    _check_distinct(
        {"the --out file": args.out, "the --json file": args.json}, _checkpoint_inputs(args)
    )
    model, data = _load(args)
    obj = _objective(args, model, data, skip_bias_norm=False)
    # basin_volume refuses an empty basin too, naming its keywords; here, the flags
    if args.rule == "absolute" and (loss0 := obj.loss()) >= args.threshold:
        raise BasinscopeError(
            f"--threshold {args.threshold:g} is below the loss at the minimum ({loss0:.6g}); "
            "the basin would be empty: raise --threshold or use --rule relative"
        )
    res = basin_volume(
        obj,
        args.threshold,
        n_directions=args.directions,
        rule=args.rule,
        seed=args.seed,
        norm=args.norm,
        r_max=args.r_max,
        tolerance=args.tolerance,
        progress=not args.quiet,
        path=args.out,
    )
    d = res.to_dict()
    print(f"coordinates n              {res.n}")
    print(f"loss at the minimum        {res.loss0:.6f}  ({res.rule} threshold {res.threshold:g})")
    print(
        f"log volume                 {res.log_volume:.2f}  "
        f"({100 * res.ci_level:.0f}% bootstrap {res.ci[0]:.2f} … {res.ci[1]:.2f})"
    )
    print(f"log⟨rⁿ⟩                    {res.log_mean_rn:.2f}")
    print(
        f"radii min/median/max       {d['radius_min']:.4g} / {d['radius_median']:.4g} / "
        f"{d['radius_max']:.4g}"
    )
    print(
        f"effective sample size      {res.ess:.2f} of {len(res.radii)} "
        f"(largest ray's share {res.top_share:.2f}; the estimate is a lower bound)"
    )
    print(f"rays not crossed by r_max  {res.n_uncrossed}")
    print(f"loss evaluations           {res.evaluations}")
    print(f"rays recorded in {args.out} (a rerun reuses them)")
    _write_json(args, d, obj)


def _volume_file(args: argparse.Namespace) -> Path:
    """``--out``, or by default ``<run>/volume-<hash of the settings>.json``.

    One default file per computation: trying another threshold on the same run
    starts its own file instead of being refused by the first one's.
    """
    from .._keys import value_digest

    if args.out is not None:
        return Path(args.out)
    ckpt = Path(args.checkpoint)
    settings = {
        "checkpoint": ckpt.name if ckpt.is_file() else None,
        "model": args.model,
        "dataset": args.dataset,
        "eval_subset": args.eval_subset,
        "threshold": args.threshold,
        "rule": args.rule,
        "norm": args.norm,
        "seed": args.seed,
        "r_max": args.r_max,
        "tolerance": args.tolerance,
    }
    run_dir = ckpt if ckpt.is_dir() else ckpt.parent
    return run_dir / f"volume-{value_digest(settings)[:10]}.json"


def _volume_interrupted(args: argparse.Namespace) -> str:
    if args.out is not None:
        return f"the rays finished so far are saved in {args.out}; rerun the same command to resume"
    return NOTHING_SAVED


# ------------------------------------------------------------------ parser
def _register_surface(sub: argparse._SubParsersAction) -> None:
    """``basinscope surface``: a line or plane around a checkpoint."""
    p = sub.add_parser(
        "surface",
        help="1-D or 2-D loss surface of a checkpoint (HDF5 + figures)",
        formatter_class=_FORMATTER,
        epilog=_example(
            "basinscope surface runs/a --dim 2 --steps 41 --span 1 --out runs/a/plane.h5\n"
            "basinscope surface runs/a --dim 1 --norm layer --data both --out line.h5\n"
            "basinscope surface runs/a --directions hessian --span 0.5 --out hess.h5\n"
            "basinscope surface runs/a --seeds 0 1 2 --out runs/a/plane.h5   # spread over seeds"
        ),
    )
    _checkpoint_args(p)
    p.add_argument("--dim", type=_INT, choices=[1, 2], default=2, help="line (1) or plane (2)")
    p.add_argument("--steps", type=_integer(2), default=31, help="points per axis (default 31)")
    p.add_argument("--span", type=_FINITE, default=1.0, help="grid is [-span, span] (default 1)")
    p.add_argument("--norm", choices=["filter", "layer", "none"], default="filter")
    p.add_argument(
        "--directions",
        choices=["random", "hessian"],
        default="random",
        help="random normalised directions, or the top Hessian eigenvectors (unit length)",
    )
    p.add_argument(
        "--include-bias-norm", action="store_true", help="move biases and norm parameters too"
    )
    p.add_argument(
        "--data", choices=["train", "both"], default="both", help="train data, or train and test"
    )
    p.add_argument("--update-bn", action="store_true", help="recompute BatchNorm stats per point")
    p.add_argument("--out", default="surface.h5", help="HDF5 file; resumed if it exists")
    p.add_argument(
        "--seeds",
        type=_SEED,
        nargs="+",
        metavar="K",
        help="one surface per direction seed (OUT_seedK.h5), their ε-sharpness and curvature "
        "at θ0 with mean ± SD (OUT_spread.json, OUT_spread.png)",
    )
    p.add_argument(
        "--radius", type=_POSITIVE, help="with --seeds: ε and the curvature fits' |t| (0.25)"
    )
    # seed None: --seed not given (it conflicts with --seeds), 0 then
    p.set_defaults(func=_cmd_surface, interrupted=_spread.interrupted, seed=None)


def _register_hessian(sub: argparse._SubParsersAction) -> None:
    """``basinscope hessian``: the spectrum's extremes and the trace."""
    p = sub.add_parser(
        "hessian",
        help="Hessian λ_max, λ_min, top-k, trace (and per layer) of a checkpoint",
        formatter_class=_FORMATTER,
        epilog=_example(
            "basinscope hessian runs/a --k 5 --per-layer --json runs/a/hessian.json\n"
            "basinscope hessian runs/a --layers net.1 net.3 --density runs/a/density.png"
        ),
    )
    _checkpoint_args(p)
    p.add_argument("--k", type=_COUNT, default=5, help="number of top eigenvalues (default 5)")
    p.add_argument("--tol", type=_POSITIVE, default=1e-4, help="relative eigenvalue tolerance")
    p.add_argument(
        "--trace-rtol", type=_POSITIVE, default=1e-2, help="trace: stop at SE ≤ rtol·|tr|"
    )
    p.add_argument("--per-layer", action="store_true", help="also one block per module")
    p.add_argument("--layers", nargs="+", help="blocks to measure: module names or patterns")
    p.add_argument("--density", help="draw the spectral density (SLQ) into this PNG")
    p.add_argument("--json", help="also write the results to this JSON file")
    p.set_defaults(func=_cmd_hessian, interrupted=saved_when_finished("hessian"))


def _register_volume(sub: argparse._SubParsersAction) -> None:
    """``basinscope volume``: the basin's star-convex volume."""
    p = sub.add_parser(
        "volume",
        help="Monte-Carlo star-convex basin volume of a checkpoint",
        formatter_class=_FORMATTER,
        epilog=_example(
            "basinscope volume runs/a --threshold 0.1 --directions 200 --json runs/a/volume.json\n"
            "basinscope volume runs/a --rule relative --threshold 0.05 --norm filter"
        ),
    )
    _checkpoint_args(p)
    p.add_argument("--threshold", type=_FINITE, required=True, help="loss threshold τ")
    p.add_argument(
        "--rule",
        choices=["absolute", "relative"],
        default="absolute",
        help="basin is L ≤ τ (absolute) or L − L(θ0) ≤ τ (relative)",
    )
    p.add_argument("--directions", type=_integer(2), default=100, help="number of rays N")
    p.add_argument(
        "--norm",
        choices=["none", "filter", "layer"],
        default="none",
        help="ray directions: uniform on the sphere, or normalised first",
    )
    p.add_argument("--tolerance", type=_POSITIVE, default=1e-3, help="relative bisection tolerance")
    p.add_argument("--r-max", type=_POSITIVE, default=1e4, help="largest radius searched")
    p.add_argument(
        "--out",
        help="JSON file of the rays finished so far, so that a killed run resumes "
        "(default: RUN/volume-<hash of the settings>.json)",
    )
    p.add_argument("--json", help="also write the result to this JSON file")
    p.set_defaults(func=_cmd_volume, interrupted=_volume_interrupted)


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``surface``, ``sharpness``, ``hessian`` and ``volume``."""
    _register_surface(sub)
    _sharpness.register(sub)  # in a file of its own for length
    _register_hessian(sub)
    _register_volume(sub)
