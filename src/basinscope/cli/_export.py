"""``basinscope export``: a surface file in another format (``--vtk``: for ParaView).

It parses the options and calls :func:`basinscope.plots.export_vtk`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .._checks import check_output_file
from ..errors import BasinscopeError
from ._common import _FORMATTER, _example, saved_when_finished


def _out(args: argparse.Namespace) -> Path:
    """``--out``, or by default the surface's path with the suffix ``.vtu``."""
    return Path(args.out) if args.out is not None else Path(args.surface).with_suffix(".vtu")


def _cmd_export(args: argparse.Namespace) -> None:
    from ..landscape import Surface
    from ..plots import export_vtk
    from ..plots._vtk import vtk_format

    out = _out(args)
    vtk_format(out)  # the output is checked before the surface is read
    check_output_file(out, "the VTK file")
    if out.resolve() == Path(args.surface).resolve():
        raise BasinscopeError(f"--out {str(out)!r} is the surface file itself; give another file")
    surface = Surface.load(args.surface)
    written = export_vtk(surface, out, key=args.key, log=args.log)
    print(f"written: {written} (open it in ParaView)")


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``basinscope export``."""
    p = sub.add_parser(
        "export",
        help="write a surface file for other tools (--vtk: a mesh that ParaView opens)",
        formatter_class=_FORMATTER,
        epilog=_example(
            "basinscope export runs/a/plane.h5 --vtk        # writes runs/a/plane.vtu\n"
            "basinscope export runs/a/plane.h5 --vtk --log --out plane_log.vtk  # legacy VTK"
        ),
    )
    p.add_argument("surface", help="an HDF5 surface file (basinscope surface, or Li et al.'s)")
    fmt = p.add_mutually_exclusive_group(required=True)
    fmt.add_argument(
        "--vtk",
        action="store_true",
        help="a VTK mesh: quads (a plane) or line cells (a line) at height z = the loss, "
        "every metric as point data",
    )
    p.add_argument(
        "--out",
        help="the file: .vtu (VTK XML) or .vtk (legacy VTK); ParaView opens both "
        "(default: the surface's path with .vtu)",
    )
    p.add_argument(
        "--key",
        default="train_loss",
        choices=["train_loss", "test_loss", "train_acc", "test_acc"],
        help="the metric that gives the height z (default train_loss)",
    )
    p.add_argument("--log", action="store_true", help="z = log10 of it (the point data stay raw)")
    p.set_defaults(func=_cmd_export, interrupted=saved_when_finished("export"))
