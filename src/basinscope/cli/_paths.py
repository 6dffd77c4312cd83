"""``basinscope path``: paths between minima (interpolation, three models, trajectory)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .._checks import check_output_file
from ..errors import BasinscopeError
from ._common import (
    _COUNT,
    _FINITE,
    _FORMATTER,
    _MODEL_HELP,
    _check_distinct,
    _checkpoint_inputs,
    _device_args,
    _example,
    _figures,
    _integer,
    _load,
    _number,
    _objective,
    _trust_arg,
)
from ._processes import is_writer


# -------------------------------------------------------------------- path
def _cmd_path(args: argparse.Namespace) -> None:
    from .. import plots
    from ..landscape import interpolate, three_model_plane, trajectory_plane

    if args.trajectory and len(args.checkpoints) != 1:
        raise BasinscopeError(
            f"--trajectory draws one run's trajectory; give one checkpoint, got {len(args.checkpoints)}"
        )
    if not 2 <= len(args.checkpoints) <= 3 and not args.trajectory:
        raise BasinscopeError(
            f"give two checkpoints (interpolation), three (their plane), or one with "
            f"--trajectory; got {len(args.checkpoints)}"
        )
    labels = args.labels or [Path(c).name or str(c) for c in args.checkpoints]
    if len(labels) != len(args.checkpoints):
        raise BasinscopeError(
            f"--labels needs one name per checkpoint ({len(args.checkpoints)}), got {len(labels)}"
        )
    two = len(args.checkpoints) == 2 and not args.trajectory
    if two and not args.span[1] > args.span[0]:
        raise BasinscopeError(f"--span must be MIN MAX with MAX > MIN, got {args.span}")
    out = check_output_file(args.out, "the path file")
    figures = _figures(out, 1 if two else 2, kinds=["line"] if two else ["contour"])
    _check_distinct(
        {"the path file": out, "the figure": figures[0]},
        _checkpoint_inputs(args, *args.checkpoints),
    )
    # The first checkpoint gives the data; every other one is evaluated on it and
    # must have been trained on data of its shape.
    model, data = _load(args, args.checkpoints[0])
    loaded = [(model, data)] + [_load(args, c, data) for c in args.checkpoints[1:]]
    # All parameters are coordinates: the models differ in their biases too.
    obj = _objective(args, model, data, skip_bias_norm=False)
    common = {
        "steps": args.steps,
        "test": (data.x_test, data.y_test) if args.data == "both" else None,
        "path": out,
        "progress": not args.quiet,
        "update_bn": (data.x_train, data.y_train) if args.update_bn else None,
    }
    if args.trajectory:
        from ..training import load_trajectory

        run = Path(args.checkpoints[0])  # a run directory, or a weights file in one
        trajectory = load_trajectory(run if run.is_dir() else run.parent)
        surf = trajectory_plane(obj, trajectory, margin=args.margin, **common)
        draw = lambda: plots.plot_contour(surf, figures[0], title="training trajectory")  # noqa: E731
    elif two:
        surf = interpolate(obj, loaded[1][0], span=tuple(args.span), labels=tuple(labels), **common)
        draw = lambda: plots.plot_line(surf, figures[0])  # noqa: E731
    else:
        surf = three_model_plane(
            obj, tuple(m for m, _ in loaded), labels=tuple(labels), margin=args.margin, **common
        )
        draw = lambda: plots.plot_contour(surf, figures[0], title="plane of three models")  # noqa: E731
    written = [draw()] if is_writer() else figures  # under torchrun rank 0 draws
    print(f"path written to {args.out}; figures: {', '.join(str(p) for p in written)}")


# ------------------------------------------------------------------ parser
def register(sub: argparse._SubParsersAction) -> None:
    """Add ``basinscope path``: the line or plane through two or three minima."""
    p = sub.add_parser(
        "path",
        help="paths between minima: interpolation, plane of three models, PCA trajectory",
        formatter_class=_FORMATTER,
        epilog=_example(
            "basinscope path results/lr-batch/high-lr_small-batch results/lr-batch/high-lr_large-batch\n"
            "basinscope path runs/full runs/tenth runs/hundredth --labels 100% 10% 1% --out plane3.h5\n"
            "basinscope path runs/a --trajectory --out trajectory.h5   # needs --snapshot-every"
        ),
    )
    p.add_argument("checkpoints", nargs="+", help="run directories (the first gives the data)")
    p.add_argument("--trajectory", action="store_true", help="PCA plane of one run's trajectory")
    p.add_argument(
        "--span", type=_FINITE, nargs=2, default=[-0.5, 1.5], help="interpolation α range"
    )
    p.add_argument("--steps", type=_integer(2), default=41, help="points per axis (default 41)")
    p.add_argument(
        "--margin",
        type=_number(nonnegative=True),
        default=0.25,
        help="planes: border around the models",
    )
    p.add_argument("--labels", nargs="+", help="names of the models in the figures")
    p.add_argument("--data", choices=["train", "both"], default="both", help="also the test data")
    p.add_argument("--update-bn", action="store_true", help="recompute BatchNorm stats per point")
    p.add_argument("--out", default="path.h5", help="HDF5 file; resumed if it exists")
    p.add_argument("--model", help=_MODEL_HELP)
    p.add_argument("--dataset", help="evaluate on this dataset instead of the first run's")
    p.add_argument("--data-dir", help="where dataset files are (or are cached)")
    p.add_argument(
        "--eval-subset", type=_COUNT, help="evaluate on a fixed random subset of this size"
    )
    _trust_arg(p)
    _device_args(p)
    p.set_defaults(
        func=_cmd_path,
        interrupted="the points computed so far are saved in {out}; "
        "rerun the same command to resume",
    )
