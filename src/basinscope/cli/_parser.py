"""The top-level parser: each group of commands adds its own sub-parser, in help order."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from ..errors import BasinscopeError
from . import _export, _measure, _paths, _study, _train, _trajectory
from ._common import _FORMATTER, _call, _example, _fail, _Parser, _UsageError
from ._processes import processes


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="basinscope",
        description="Measure and draw the geometry of neural-network loss landscapes.",
        formatter_class=_FORMATTER,
        epilog=_example("basinscope run            # the 4-run lr × batch study, offline")
        + "\n\nnaming code runs it: --model package.module:factory imports that module and "
        "calls the factory,\nand so does opening a run directory whose config names one "
        "(refused unless --trust-code).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # `basinscope --help` lists the commands in this order: the study first, then
    # one run, its measures and the paths between runs, then what reads results
    # (report, plot, export).
    _study.register_run(sub)
    _train.register(sub)
    _measure.register(sub)
    _paths.register(sub)
    _trajectory.register(sub)
    _study.register_results(sub)
    _export.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``basinscope`` console script; returns the exit status.

    0: done; 2: refused input or an output that cannot be written, one sentence
    on stderr; 130: interrupted (Ctrl-C), with what was saved.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except _UsageError as exc:
        return _fail(str(exc))
    try:
        with processes(args):  # under torchrun: every rank runs the command together
            return _call(args)
    except BasinscopeError as exc:
        return _fail(str(exc), exc)
