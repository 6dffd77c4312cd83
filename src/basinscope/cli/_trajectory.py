"""``basinscope trajectory``: every measure at every weight snapshot of a run.

It parses the options and calls :func:`basinscope.experiments.measure_along` (which
writes ``along.json`` and the resumable per-measure files) and
:func:`basinscope.plots.plot_along` (``along.png``).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from .._checks import check_output_dir, check_output_file
from ._common import (
    _FORMATTER,
    _POSITIVE,
    _SEED,
    RUN_FILES,
    _check_distinct,
    _device_args,
    _example,
    _integer,
    _trust_arg,
)
from ._processes import is_writer

_MEASURES = ("loss", "accuracy", "lambda_max", "hessian_trace", "epsilon", "volume")


def _out(args: argparse.Namespace) -> Path:
    """``--out``, or by default ``RUN_DIR/along``."""
    return Path(args.out) if args.out is not None else Path(args.run_dir) / "along"


def _settings(args: argparse.Namespace) -> Any:
    """The measures' settings: the library's defaults, with the options given."""
    from ..experiments import (
        AlongSettings,
        EpsilonSettings,
        LambdaMaxSettings,
        TraceSettings,
        VolumeSettings,
    )

    volume = {"rule": args.rule, "threshold": args.threshold, "n_directions": args.directions}
    return AlongSettings(
        lambda_max=LambdaMaxSettings(seed=args.seed),
        hessian_trace=TraceSettings(seed=args.seed),
        epsilon=EpsilonSettings(seed=args.seed, radius=args.radius),
        volume=VolumeSettings(seed=args.seed, **{k: v for k, v in volume.items() if v is not None}),
    )


def _cell(value: Any, spec: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return format(value, spec)


def _print_table(result: Any) -> None:
    """One line per snapshot: its epoch and step, then each headline number measured."""
    columns = [
        (name, spec)
        for name, spec in (
            ("train_acc", ".3f"),
            ("test_acc", ".3f"),
            ("train_loss", ".4f"),
            ("lambda_max", ".4g"),
            ("hessian_trace", ".4g"),
            ("epsilon_sharpness", ".4g"),
            ("log_volume", ".1f"),
        )
        if name in result.series
    ]
    print("  ".join([f"{'epoch':>6}", f"{result.x_unit:>8}"] + [f"{n:>17}" for n, _ in columns]))
    for i, (epoch, step) in enumerate(zip(result.epochs, result.steps, strict=True)):
        cells = [f"{_cell(result.series[n][i], spec):>17}" for n, spec in columns]
        print("  ".join([f"{epoch:>6}", f"{step:>8}", *cells]))
    if result.jump is not None:
        print(f"test accuracy jumps at {result.x_unit} {result.jump}")


def _cmd_trajectory(args: argparse.Namespace) -> None:
    from .. import plots
    from ..experiments import measure_along

    out = check_output_dir(_out(args), "the along-training directory")
    figure = check_output_file(out / "along.png", "the figure")
    run = Path(args.run_dir)
    _check_distinct(
        {"the along.json file": out / "along.json", "the figure": figure},
        [(f"the run directory's {name}", run / name) for name in RUN_FILES],
    )
    settings = _settings(args)  # refused in one sentence before the run is opened
    result = measure_along(
        run,
        args.measures,
        out=out,
        settings=settings,
        device=args.device,
        trust_code=args.trust_code,
        progress=not args.quiet,
    )
    _print_table(result)
    if is_writer():
        plots.plot_along(result.to_dict(), figure)
    print(f"numbers written to {out / 'along.json'}; figure: {figure}")


def _interrupted(args: argparse.Namespace) -> str:
    return (
        f"the measures finished so far are saved in {_out(args)}; rerun the same command to resume"
    )


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``basinscope trajectory``."""
    p = sub.add_parser(
        "trajectory",
        help="every measure at every weight snapshot of a run, against the step",
        formatter_class=_FORMATTER,
        epilog=_example(
            "basinscope train --epochs 20 --snapshot-every 2 --out runs/a\n"
            "basinscope trajectory runs/a                  # writes runs/a/along/along.{json,png}\n"
            "basinscope trajectory runs/a --measures loss accuracy lambda_max --out along_a"
        ),
    )
    p.add_argument("run_dir", help="a run directory written by `basinscope train --snapshot-every`")
    p.add_argument(
        "--measures",
        nargs="+",
        choices=_MEASURES,
        default=list(_MEASURES),
        metavar="MEASURE",
        help=f"what to compute at each snapshot (default all: {', '.join(_MEASURES)})",
    )
    p.add_argument(
        "--out",
        help="directory of along.json, along.png and the resumable per-measure files "
        "(default: RUN_DIR/along)",
    )
    p.add_argument("--seed", type=_SEED, default=0, help="seed of every measure (default 0)")
    p.add_argument("--radius", type=_POSITIVE, default=0.25, help="ε of the ε-sharpness")
    p.add_argument(
        "--rule",
        choices=["absolute", "relative"],
        help="basin volume: L − L(θ) ≤ τ (relative, default) or L ≤ τ (absolute)",
    )
    p.add_argument("--threshold", type=_POSITIVE, help="basin volume threshold τ (default 0.1)")
    p.add_argument("--directions", type=_integer(2), help="basin volume rays (default 10)")
    _trust_arg(p)
    _device_args(p)
    p.set_defaults(func=_cmd_trajectory, interrupted=_interrupted)
