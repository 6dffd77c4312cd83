"""The commands of a whole study: ``run`` (train, measure, report), ``report`` and ``plot``."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from .._checks import check_output_dir, check_output_file
from ..errors import BasinscopeError
from ._common import (
    _COUNT,
    _FINITE,
    _FORMATTER,
    _INT,
    _POSITIVE,
    _SEED,
    _check_distinct,
    _device_args,
    _example,
    _figures,
    _integer,
)


# --------------------------------------------------------------------- run
def _cmd_run(args: argparse.Namespace) -> None:
    from ..experiments import STUDIES, run_study, summary_markdown

    if args.study not in STUDIES:
        raise BasinscopeError(f"unknown study {args.study!r}; choose one of {', '.join(STUDIES)}")
    check_output_dir(args.out, "the results directory")
    options: dict[str, Any] = {"device": args.device, "seed": args.seed}
    if args.dataset is not None:
        options["dataset"] = args.dataset
    if args.epochs is not None:
        options["epochs"] = args.epochs
    if args.data_dir is not None:
        options["data_dir"] = args.data_dir
    for option, study_name in (("sizes", "dataset-size"), ("fractions", "poison")):
        if getattr(args, option) is not None:
            if args.study != study_name:
                raise BasinscopeError(f"--{option} applies to --study {study_name} only")
            options[option] = tuple(getattr(args, option))
    if args.remedies is not None:
        if args.study != "remedies":
            raise BasinscopeError("--remedies applies to --study remedies only")
        options["remedies"] = tuple(args.remedies)
    if args.span is not None and args.span <= 0:
        raise BasinscopeError(
            f"--span must be positive (the grid is [-span, span]), got {args.span}"
        )
    study = STUDIES[args.study](**options)
    given = {  # options left out keep the study's own defaults
        "grid_size": args.grid_size,
        "span": None if args.span is None else (-args.span, args.span),
        "radius": args.radius,
        "sigma": args.sigma,
        "noise_samples": args.samples,
        "volume_threshold": args.threshold,
        "volume_directions": args.directions,
        "volume_rule": args.rule,
        "direction_seeds": None if args.direction_seeds is None else tuple(args.direction_seeds),
    }
    given = {k: v for k, v in given.items() if v is not None}
    _check_measure_options(args.study, study, given)
    study.measure = dataclasses.replace(
        study.measure, direction_seed=args.seed, noise_seed=args.seed, **given
    )
    study.measure.validate()  # every measure setting, before anything is trained
    reports = run_study(study, args.out, progress=not args.quiet)
    root = Path(args.out) / study.name
    summary = root / "summary.md"
    print(summary.read_text() if summary.is_file() else summary_markdown(reports))
    print(f"results, figures and summary in {root}/")


_FLAGS = {
    "grid_size": "--grid-size",
    "span": "--span",
    "radius": "--radius",
    "sigma": "--sigma",
    "noise_samples": "--samples",
    "volume_threshold": "--threshold",
    "volume_directions": "--directions",
    "volume_rule": "--rule",
    "direction_seeds": "--direction-seeds",
}


def _check_measure_options(name: str, study: Any, given: dict[str, Any]) -> None:
    """Refuse a measure option the study does not use (``--threshold`` to a study that
    measures no volume), as ``--sizes`` is refused on the wrong study: never ignored."""
    from ..experiments import STUDIES

    for field in given:
        if not study.uses(field):
            users = [n for n, make in STUDIES.items() if make().uses(field)]
            listed = " or ".join([", ".join(users[:-1]), users[-1]] if len(users) > 1 else users)
            raise BasinscopeError(
                f"{_FLAGS[field]} applies to --study {listed} only; --study {name} does not use it"
            )


# ------------------------------------------------------------------ report
def _cmd_report(args: argparse.Namespace) -> None:
    from ..experiments import correlation_report, html_report, read_summary

    given = Path(args.study_dir)
    out = given if given.is_dir() else given.parent
    html = Path(args.html) if args.html else out / "report.html"
    study = given.is_dir() and (given / "study.json").is_file()
    if args.html and not study:
        raise BasinscopeError(
            f"--html needs a study directory, and {str(given)!r} has no study.json; "
            "give a directory written by 'basinscope run'"
        )
    # an unfinished study (no summary.csv yet) still gets the page of what it has
    rows = read_summary(given) if not study or (given / "summary.csv").is_file() else []
    correlate = len(rows) >= 3 or not study  # Kendall's τ needs three runs (it says so)
    if correlate:
        for name in ("correlation.md", "correlation.json"):
            check_output_file(out / name, "the report file")
        check_output_dir(out / "figures", "the report's figure directory")
    if study:
        check_output_file(html, "the HTML report")
    if correlate:
        title = f"Measures against the generalisation gap ({out.name})"
        print(correlation_report(rows, out, title=title))
        print(f"correlation.md, correlation.json and figures/scatter_*.png in {out}/")
    if study:
        written = html_report(given, html)
        size = written.stat().st_size / 2**20
        print(f"written: {written} ({size:.1f} MB, self-contained: open it in any browser)")
    else:
        print(f"no study.json in {out}: report.html is written for directories of 'basinscope run'")


# -------------------------------------------------------------------- plot
def surface_labels(paths: list[str]) -> list[str]:
    """A unique label for each surface file: the shortest path suffix (without ``.h5``)
    that tells them apart, ``d1/s.h5 d2/s.h5`` -> ``d1/s``, ``d2/s``; one path or distinct
    stems keep the stem. The same file named twice is refused."""
    resolved = [Path(p).resolve() for p in paths]
    for i, p in enumerate(resolved):
        if p in resolved[:i]:
            raise BasinscopeError(f"the surface {paths[i]!r} is given twice; give it once")
    parts = [p.with_suffix("").parts for p in resolved]
    for k in range(1, max(len(q) for q in parts) + 1):
        labels = ["/".join(q[-k:]) for q in parts]
        if len(set(labels)) == len(labels):
            return labels
    return [str(p) for p in resolved]  # unreachable: the full paths differ


def _cmd_plot(args: argparse.Namespace) -> None:
    from .. import plots
    from ..landscape import Surface

    out = check_output_dir(args.out, "the figure directory")
    labels = surface_labels(args.surfaces)
    figures: dict[str, list[Path]] = {}
    surfaces = {}
    for label, p in zip(labels, args.surfaces, strict=True):
        s = surfaces[label] = Surface.load(p)
        figures[label] = _figures(out / f"{label.replace('/', '_')}.h5", 2 if s.is_2d else 1)
    grid = check_output_file(out / "grid.png", "the figure") if len(surfaces) > 1 else None
    if grid is not None and len({s.is_2d for s in surfaces.values()}) > 1:
        raise BasinscopeError("plot got a mix of 1-D lines and 2-D planes; plot them apart")
    outputs = {
        f"the {f.stem.rsplit('_', 1)[-1]} figure of {label}": f
        for label, fs in figures.items()
        for f in fs
    }
    _check_distinct(
        outputs | {"the grid figure": grid},
        [(f"the surface {p!r}", Path(p)) for p in args.surfaces],
    )
    written = []
    planes = [s for s in surfaces.values() if s.is_2d]
    zr = plots.common_zrange(planes, args.key) if planes else None  # one scale for all
    for label, s in surfaces.items():
        if s.is_2d:
            written.append(plots.plot_contour(s, figures[label][0], key=args.key, zrange=zr))
            written.append(plots.plot_surface_3d(s, figures[label][1], key=args.key, zrange=zr))
        else:
            written.append(plots.plot_line(s, figures[label][0]))
    if grid is not None:
        written.append(plots.plot_grid(surfaces, grid, key=args.key, kind=args.kind, zrange=zr))
    print("written: " + ", ".join(str(p) for p in written))


# ------------------------------------------------------------------ parser
def register_run(sub: argparse._SubParsersAction) -> None:
    """Add ``basinscope run``: a built-in study, end to end (the first command of the help)."""
    p = sub.add_parser(
        "run",
        help="train, measure and report a built-in study (default: the 4-run grid)",
        formatter_class=_FORMATTER,
        epilog=_example(
            "basinscope run\nbasinscope run --dataset digits --grid-size 21 --epochs 20 --out results\n"
            "basinscope run --study dataset-size --sizes 0.05 0.1 0.3 1 --threshold 0.1\n"
            "basinscope run --study poison --fractions 0 0.1 0.2 0.4\n"
            "basinscope run --study remedies          # SAM, ASAM, SWA, wd, dropout, warm-up\n"
            "basinscope run --study sam-vs-sgd        # does SAM help? (3 seeds each)\n"
            "basinscope run --study lr-batch-grid     # which measure predicts the gap\n"
            "basinscope run --study grokking          # measures along a run that groks\n"
            "basinscope run --study warmup            # warm-up against the 2/η stability line\n"
            "basinscope run --study policy            # REINFORCE vs PPO: sharp policies fragile?"
        ),
    )
    from ..experiments._studies import STUDIES

    p.add_argument(
        "--study",
        default="lr-batch",
        help=", ".join(f"{n} (default)" if n == "lr-batch" else n for n in STUDIES),
    )
    p.add_argument("--dataset", help="dataset name or .npz path (default: the study's)")
    p.add_argument("--data-dir", help="where dataset files are (or are cached)")
    p.add_argument(
        "--grid-size",
        type=_INT,
        help="surface points per axis (default: the study's, 31 for lr-batch)",
    )
    p.add_argument("--span", type=_FINITE, help="surface grid is [-span, span]² (default 1)")
    p.add_argument("--epochs", type=_COUNT, help="epochs per run (default: the study's)")
    p.add_argument("--seed", type=_SEED, default=0, help="seed of training, directions, noise")
    p.add_argument("--radius", type=_POSITIVE, help="ε of the ε-sharpness (default 0.25)")
    p.add_argument("--sigma", type=_POSITIVE, help="σ of the weight-noise sharpness (default 0.05)")
    p.add_argument("--samples", type=_integer(2), help="weight-noise samples (default 32)")
    p.add_argument("--threshold", type=_FINITE, help="basin loss threshold (volume; default 0.1)")
    p.add_argument("--directions", type=_integer(2), help="rays per volume estimate (default 50)")
    p.add_argument(
        "--rule",
        choices=["absolute", "relative"],
        help="basin is L ≤ τ or L − L(θ0) ≤ τ (default: the study's)",
    )
    p.add_argument(
        "--direction-seeds",
        type=_SEED,
        nargs="+",
        help="seeds of the planes whose sharpness spread is reported (lr-batch; default: "
        "--seed and the next two)",
    )
    p.add_argument("--sizes", type=_POSITIVE, nargs="+", help="dataset-size: training fractions")
    p.add_argument("--fractions", type=_FINITE, nargs="+", help="poison: mislabelled fractions")
    p.add_argument("--remedies", nargs="+", help="remedies: which remedies to run beside the base")
    p.add_argument("--out", default="results", help="results directory (default: results/)")
    _device_args(p)
    p.set_defaults(
        func=_cmd_run,
        interrupted="finished runs and measures are saved under {out}/{study}; "
        "rerun the same command to resume",
    )


def _register_report(sub: argparse._SubParsersAction) -> None:
    """``basinscope report``: the interactive report and the measures against the gap."""
    p = sub.add_parser(
        "report",
        help="write a study's interactive report.html (offline, one file) and the rank "
        "correlation of every sharpness measure with the generalisation gap",
        formatter_class=_FORMATTER,
        epilog=_example(
            "basinscope run --study lr-batch-grid\nbasinscope report results/lr-batch-grid\n"
            "basinscope report results/lr-batch --html /tmp/lr-batch.html"
        ),
    )
    p.add_argument(
        "study_dir",
        help="a study directory written by `basinscope run` (or its summary.csv: the "
        "correlations only)",
    )
    p.add_argument("--html", help="where to write the HTML report (default: DIR/report.html)")
    p.set_defaults(
        func=_cmd_report,
        interrupted="the files already written are complete, the rest are not written; "
        "rerun the command",
    )


def _register_plot(sub: argparse._SubParsersAction) -> None:
    """``basinscope plot``: redraw surfaces."""
    p = sub.add_parser(
        "plot",
        help="redraw surfaces, or several side by side on a common scale",
        formatter_class=_FORMATTER,
        epilog=_example(
            "basinscope plot results/lr-batch/*/surface.h5 --out figs --kind contour\n"
            "basinscope plot runs/a/plane.h5 --key test_loss"
        ),
    )
    p.add_argument("surfaces", nargs="+", help="HDF5 surface files")
    p.add_argument("--key", default="train_loss", help="train_loss, test_loss, train_acc, test_acc")
    p.add_argument("--kind", choices=["contour", "surface"], default="contour")
    p.add_argument("--out", default=".", help="directory for the PNG files")
    p.set_defaults(
        func=_cmd_plot,
        interrupted="the figures already written are complete, the rest are not written; "
        "rerun the command",
    )


def register_results(sub: argparse._SubParsersAction) -> None:
    """Add ``report`` and ``plot``, which read what earlier commands wrote."""
    _register_report(sub)
    _register_plot(sub)
