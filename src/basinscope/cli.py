"""The ``basinscope`` command line. It only parses arguments and calls the library.

Bad input ends with one sentence on stderr and exit status 2, no traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import BasinscopeError

_FORMATTER = argparse.RawDescriptionHelpFormatter


def _size(text: str) -> int | float:
    """A count (``500``) or a fraction (``0.1``)."""
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is neither a count nor a fraction"
            ) from None


def _example(text: str) -> str:
    return "example:\n  " + "\n  ".join(text.strip().splitlines())


# --------------------------------------------------------------------- run
def _cmd_run(args: argparse.Namespace) -> None:
    from .studies import STUDIES
    from .study import run_study, summary_markdown

    if args.study not in STUDIES:
        raise BasinscopeError(f"unknown study {args.study!r}; choose one of {', '.join(STUDIES)}")
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
    study = STUDIES[args.study](**options)
    if args.span is not None and args.span <= 0:
        raise BasinscopeError(
            f"--span must be positive (the grid is [-span, span]), got {args.span}"
        )
    given = {  # options left out keep the study's own defaults
        "grid_size": args.grid_size,
        "span": None if args.span is None else (-args.span, args.span),
        "radius": args.radius,
        "sigma": args.sigma,
        "noise_samples": args.samples,
        "volume_threshold": args.threshold,
        "volume_directions": args.directions,
        "volume_rule": args.rule,
    }
    study.measure = dataclasses.replace(
        study.measure,
        direction_seed=args.seed,
        noise_seed=args.seed,
        **{k: v for k, v in given.items() if v is not None},
    )
    reports = run_study(study, args.out, progress=not args.quiet)
    root = Path(args.out) / study.name
    summary = root / "summary.md"
    print(summary.read_text() if summary.is_file() else summary_markdown(reports))
    print(f"results, figures and summary in {root}/")


# ------------------------------------------------------------------- train
def _cmd_train(args: argparse.Namespace) -> None:
    from .train import TrainConfig, train

    base = TrainConfig.from_toml(args.config).to_dict() if args.config else {}
    fields = {
        "dataset": args.dataset,
        "data_dir": args.data_dir,
        "train_size": args.train_size,
        "model": args.model,
        "dropout": args.dropout,
        "optimizer": args.optimizer,
        "lr": args.lr,
        "momentum": args.momentum,
        "weight_decay": args.weight_decay,
        "batch_size": args.batch_size,
        "epochs": args.epochs,
        "steps": args.steps,
        "warmup_steps": args.warmup_steps,
        "schedule": args.schedule,
        "seed": args.seed,
        "device": args.device,
        "sam_rho": args.sam_rho,
        "sam_adaptive": args.sam_adaptive or None,
        "swa_start": args.swa_start,
        "swa_lr": args.swa_lr,
        "snapshot_every": args.snapshot_every,
    }
    base.update({k: v for k, v in fields.items() if v is not None})
    if args.widths is not None:
        base["model_kwargs"] = {**base.get("model_kwargs", {}), "widths": args.widths}
    if args.batch_norm:
        base["model_kwargs"] = {**base.get("model_kwargs", {}), "batch_norm": True}
    config = TrainConfig.from_dict(base)
    result = train(config, out_dir=args.out, progress=not args.quiet)
    f = result.final
    print(
        f"train loss {f.get('train_loss'):.4f} acc {f.get('train_acc'):.3f}; "
        f"test loss {f.get('test_loss') or float('nan'):.4f} acc {f.get('test_acc') or float('nan'):.3f}"
    )
    if result.diverged:
        print(result.message)
    print(f"checkpoint in {args.out}/")


def _write_json(args: argparse.Namespace, payload: Any) -> None:
    """Write a command's results to ``--json`` (atomically), when it was given."""
    from ._io import atomic_write_json

    if args.json:
        atomic_write_json(args.json, payload)
        print(f"written to {args.json}")


# ------------------------------------------------- checkpoint + objective
def _load(args: argparse.Namespace) -> tuple[Any, Any]:
    """(model, DataBundle) for a checkpoint command."""
    from .data import load_dataset
    from .models import build_model
    from .train import load_checkpoint, load_config_data, load_weights

    path = Path(args.checkpoint)
    if not path.exists():
        raise BasinscopeError(f"checkpoint {str(path)!r} does not exist")
    has_config = (path if path.is_dir() else path.parent).joinpath("config.json").is_file()
    if has_config and args.model is None:
        ckpt = load_checkpoint(path, device=args.device)
        cfg = ckpt.config
        if args.dataset is not None:  # another dataset: all of it, no label noise
            cfg = dataclasses.replace(cfg, dataset=args.dataset, train_size=None, label_noise=0.0)
        if args.data_dir is not None:
            cfg = dataclasses.replace(cfg, data_dir=args.data_dir)
        data = load_config_data(cfg)
        return ckpt.model, data
    if args.model is None or args.dataset is None:
        raise BasinscopeError(
            f"{str(path)!r} is not a basinscope run directory; for your own weights pass "
            "--model package.module:factory and --dataset"
        )
    if not path.is_file():
        raise BasinscopeError(f"checkpoint file {str(path)!r} does not exist")
    data = load_dataset(args.dataset, data_dir=args.data_dir)
    model = build_model(args.model, data.input_shape, data.n_classes)
    load_weights(model, path, f"model {args.model!r}")
    return model.to(args.device).eval(), data


def _objective(args: argparse.Namespace, model: Any, data: Any, skip_bias_norm: bool) -> Any:
    from torch import nn

    from .objective import Objective

    return Objective(
        model,
        nn.CrossEntropyLoss(),
        (data.x_train, data.y_train),
        skip_bias_norm=skip_bias_norm,
        device=args.device,
        subset=args.eval_subset,
    )


# ----------------------------------------------------------------- surface
def _cmd_surface(args: argparse.Namespace) -> None:
    from . import plots
    from .directions import random_directions
    from .surface import line, plane

    if args.steps < 2:
        raise BasinscopeError(f"--steps must be at least 2, got {args.steps}")
    if args.span <= 0:
        raise BasinscopeError(
            f"--span must be positive (the grid is [-span, span]), got {args.span}"
        )
    model, data = _load(args)
    obj = _objective(args, model, data, skip_bias_norm=not args.include_bias_norm)
    test = (data.x_test, data.y_test) if args.data == "both" else None
    if args.directions == "hessian":
        from .hessian import top_directions

        d = top_directions(obj, args.dim, seed=args.seed)
    else:
        d = random_directions(obj, args.dim, norm=args.norm, seed=args.seed)
    out = Path(args.out)
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
    stem = out.with_suffix("")
    if args.dim == 1:
        written = [plots.plot_line(surf, f"{stem}_line.png")]
    else:
        written = [
            plots.plot_contour(surf, f"{stem}_contour.png"),
            plots.plot_surface_3d(surf, f"{stem}_3d.png"),
        ]
    print(f"surface written to {out}; figures: {', '.join(str(p) for p in written)}")


# --------------------------------------------------------------- sharpness
def _cmd_sharpness(args: argparse.Namespace) -> None:
    from . import sharpness
    from .directions import random_directions

    _check_sharpness_options(args)
    model, data = _load(args)
    obj = _objective(args, model, data, skip_bias_norm=True)
    if args.rescale is not None:
        _sharpness_rescale(args, model, data, obj)
        return
    d = random_directions(obj, 2, norm="filter", seed=args.seed)
    eps = sharpness.epsilon(obj, d, args.radius)
    noise = sharpness.average_case(
        obj, args.sigma, samples=args.samples, seed=args.seed, progress=not args.quiet
    )
    result: dict[str, Any] = {
        "loss": eps.loss0,
        "eps_sharpness": {"radius": eps.radius, "value": eps.value, "argmax": eps.argmax},
        "noise_sharpness": {
            "sigma": noise.sigma,
            "samples": noise.samples,
            "value": noise.value,
            "stderr": noise.stderr,
        },
        "seed": args.seed,
    }
    print(f"loss at the minimum        {eps.loss0:.6f}")
    print(f"ε-sharpness (ε = {eps.radius:g})     {eps.value:.6f}")
    print(f"noise sharpness (σ = {noise.sigma:g})  {noise.value:.6f} ± {noise.stderr:.6f}")
    if args.worst_case is not None:
        wc = sharpness.worst_case(
            obj,
            args.worst_case,
            norm=args.norm,
            adaptive=args.adaptive,
            steps=args.steps,
            restarts=args.restarts,
            m=args.m,
            seed=args.seed,
            progress=not args.quiet,
        )
        result["worst_case"] = wc.to_dict()
        kind = ("adaptive " if args.adaptive else "") + args.norm.upper()
        print(f"worst case, {kind} ball ρ = {wc.radius:g}  {wc.value:.6f}")
    if args.keskar is not None:
        k = sharpness.keskar(obj, args.keskar, subspace_dim=args.subspace, seed=args.seed)
        result["keskar"] = k.to_dict()
        where = f"{args.subspace}-dim subspace" if args.subspace else "full space"
        print(f"Keskar φ (ε = {k.epsilon:g}, {where})  {k.value:.6f}")
    if args.pac_bayes:
        pb = sharpness.pac_bayes(
            obj,
            target=args.target,
            magnitude_aware=args.magnitude_aware,
            seed=args.seed,
            progress=not args.quiet,
        )
        result["pac_bayes"] = pb.to_dict()
        kind = "magnitude-aware " if args.magnitude_aware else ""
        print(
            f"PAC-Bayes {kind}σ' (error +{pb.target:g})  {pb.sigma:.6g}; bound term {pb.bound:.6g}"
        )
    _write_json(args, result)


def _check_sharpness_options(args: argparse.Namespace) -> None:
    """Refuse sub-options without their measure, and bad numbers, before any work."""
    import math

    parents = {
        "--worst-case": (
            args.worst_case is not None,
            {"--norm": args.norm != "l2", "--adaptive": args.adaptive, "--m": args.m is not None},
        ),
        "--keskar": (args.keskar is not None, {"--subspace": args.subspace is not None}),
        "--pac-bayes": (
            args.pac_bayes,
            {"--magnitude-aware": args.magnitude_aware, "--target": args.target != 0.1},
        ),
    }
    for parent, (given, children) in parents.items():
        orphans = [flag for flag, used in children.items() if used]
        if orphans and not given:
            raise BasinscopeError(f"{orphans[0]} only applies together with {parent}")
    if args.rescale is not None and (
        args.worst_case is not None or args.keskar is not None or args.pac_bayes
    ):
        raise BasinscopeError(
            "--rescale compares its own set of measures; run --worst-case, --keskar and "
            "--pac-bayes without it"
        )
    for flag, value in (("--worst-case", args.worst_case), ("--keskar", args.keskar)):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise BasinscopeError(f"{flag} must be a positive finite number, got {value}")


def _sharpness_rescale(args: argparse.Namespace, model: Any, data: Any, obj: Any) -> None:
    """Dinh et al. (2017): the same function, rescaled weights; which measures move."""
    from .reparam import compare_measures, rescale

    layer, alpha_text = args.rescale
    try:
        alpha = float(alpha_text)
    except ValueError:
        raise BasinscopeError(
            f"--rescale needs LAYER ALPHA with a number ALPHA, got {alpha_text!r}"
        ) from None
    other = _objective(args, rescale(model, layer, alpha), data, skip_bias_norm=True)
    table = compare_measures(obj, other, seed=args.seed)
    print(f"rescaling {layer!r} by α = {alpha:g} and the next layer by 1/α (same function):")
    print(f"{'measure':24s} {'before':>12s} {'after':>12s} {'rel. change':>12s}  invariant")
    for name, c in table.items():
        mark = "yes" if c.invariant else "no"
        print(f"{name:24s} {c.before:12.6g} {c.after:12.6g} {c.rel_change:12.2e}  {mark}")
    _write_json(
        args,
        {"layer": layer, "alpha": alpha} | {k: dataclasses.asdict(v) for k, v in table.items()},
    )


# ----------------------------------------------------------------- hessian
def _cmd_hessian(args: argparse.Namespace) -> None:
    from . import hessian

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
        png = hessian.plot_density(dens, args.density)
        out["density"] = dens.to_dict()
        print(f"spectral density drawn in {png}")
    _write_json(args, out)


# ------------------------------------------------------------------ volume
def _cmd_volume(args: argparse.Namespace) -> None:
    from .volume import basin_volume

    model, data = _load(args)
    obj = _objective(args, model, data, skip_bias_norm=False)
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
    _write_json(args, d)


# -------------------------------------------------------------------- path
def _cmd_path(args: argparse.Namespace) -> None:
    from . import plots
    from .surface import interpolate, three_model_plane, trajectory_plane

    if args.steps < 2:
        raise BasinscopeError(f"--steps must be at least 2, got {args.steps}")
    if args.trajectory and len(args.checkpoints) != 1:
        raise BasinscopeError(
            f"--trajectory draws one run's trajectory; give one checkpoint, got {len(args.checkpoints)}"
        )
    if not 2 <= len(args.checkpoints) <= 3 and not args.trajectory:
        raise BasinscopeError(
            f"give two checkpoints (interpolation), three (their plane), or one with "
            f"--trajectory; got {len(args.checkpoints)}"
        )
    loaded = []
    for ckpt in args.checkpoints:
        args.checkpoint = ckpt
        loaded.append(_load(args))
    model, data = loaded[0]
    # All parameters are coordinates: the models differ in their biases too.
    obj = _objective(args, model, data, skip_bias_norm=False)
    labels = args.labels or [Path(c).name or str(c) for c in args.checkpoints]
    if len(labels) != len(args.checkpoints):
        raise BasinscopeError(
            f"--labels needs one name per checkpoint ({len(args.checkpoints)}), got {len(labels)}"
        )
    common = {
        "steps": args.steps,
        "test": (data.x_test, data.y_test) if args.data == "both" else None,
        "path": Path(args.out),
        "progress": not args.quiet,
        "update_bn": (data.x_train, data.y_train) if args.update_bn else None,
    }
    stem = Path(args.out).with_suffix("")
    if args.trajectory:
        from .train import load_trajectory

        surf = trajectory_plane(
            obj, load_trajectory(args.checkpoints[0]), margin=args.margin, **common
        )
        written = [plots.plot_contour(surf, f"{stem}_contour.png", title="training trajectory")]
    elif len(args.checkpoints) == 2:
        if not args.span[1] > args.span[0]:
            raise BasinscopeError(f"--span must be MIN MAX with MAX > MIN, got {args.span}")
        surf = interpolate(obj, loaded[1][0], span=tuple(args.span), labels=tuple(labels), **common)
        written = [plots.plot_line(surf, f"{stem}_line.png")]
    else:
        surf = three_model_plane(
            obj, tuple(m for m, _ in loaded), labels=tuple(labels), margin=args.margin, **common
        )
        written = [plots.plot_contour(surf, f"{stem}_contour.png", title="plane of three models")]
    print(f"path written to {args.out}; figures: {', '.join(str(p) for p in written)}")


# ------------------------------------------------------------------ report
def _cmd_report(args: argparse.Namespace) -> None:
    from .report import correlation_report, read_summary

    rows = read_summary(args.study_dir)
    out = Path(args.study_dir) if Path(args.study_dir).is_dir() else Path(args.study_dir).parent
    print(
        correlation_report(rows, out, title=f"Measures against the generalisation gap ({out.name})")
    )
    print(f"correlation.md, correlation.json and figures/scatter_*.png in {out}/")


# -------------------------------------------------------------------- plot
def _cmd_plot(args: argparse.Namespace) -> None:
    from . import plots
    from .surface import Surface

    surfaces = {Path(p).stem: Surface.load(p) for p in args.surfaces}
    out = Path(args.out)
    written = []
    if len(surfaces) == 1:
        ((name, s),) = surfaces.items()
        if s.is_2d:
            written.append(plots.plot_contour(s, out / f"{name}_contour.png", key=args.key))
            written.append(plots.plot_surface_3d(s, out / f"{name}_3d.png", key=args.key))
        else:
            written.append(plots.plot_line(s, out / f"{name}_line.png"))
    else:
        written.append(plots.plot_grid(surfaces, out / "grid.png", key=args.key, kind=args.kind))
    print("written: " + ", ".join(str(p) for p in written))


# ------------------------------------------------------------------ parser
def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _checkpoint_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="a run directory written by `basinscope train`, or a .pt")
    p.add_argument("--model", help="package.module:factory for your own state-dict .pt file")
    p.add_argument("--dataset", help="evaluate on this dataset instead of the run's")
    p.add_argument("--data-dir", help="where dataset files are (or are cached)")
    p.add_argument("--eval-subset", type=int, help="evaluate on a fixed random subset of this size")
    p.add_argument("--seed", type=int, default=0, help="seed of directions and noise (default 0)")
    _common(p)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="basinscope",
        description="Measure and draw the geometry of neural-network loss landscapes.",
        formatter_class=_FORMATTER,
        epilog=_example("basinscope run            # the 4-run lr × batch study, offline"),
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

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
            "basinscope run --study lr-batch-grid     # which measure predicts the gap"
        ),
    )
    p.add_argument(
        "--study",
        default="lr-batch",
        help="lr-batch (default), lr-batch-grid, remedies, sam-vs-sgd, dataset-size, poison",
    )
    p.add_argument("--dataset", help="dataset name or .npz path (default: the study's)")
    p.add_argument("--data-dir", help="where dataset files are (or are cached)")
    p.add_argument(
        "--grid-size",
        type=int,
        help="surface points per axis (default: the study's, 31 for lr-batch)",
    )
    p.add_argument("--span", type=float, help="surface grid is [-span, span]² (default 1)")
    p.add_argument("--epochs", type=int, help="epochs per run (default: the study's)")
    p.add_argument("--seed", type=int, default=0, help="seed of training, directions, noise")
    p.add_argument("--radius", type=float, help="ε of the ε-sharpness (default 0.25)")
    p.add_argument("--sigma", type=float, help="σ of the weight-noise sharpness (default 0.05)")
    p.add_argument("--samples", type=int, help="weight-noise samples (default 32)")
    p.add_argument("--threshold", type=float, help="basin loss threshold (volume; default 0.1)")
    p.add_argument("--directions", type=int, help="rays per volume estimate (default 50)")
    p.add_argument(
        "--rule",
        choices=["absolute", "relative"],
        help="basin is L ≤ τ or L − L(θ0) ≤ τ (default: the study's)",
    )
    p.add_argument("--sizes", type=float, nargs="+", help="dataset-size: training fractions")
    p.add_argument("--fractions", type=float, nargs="+", help="poison: mislabelled fractions")
    p.add_argument("--remedies", nargs="+", help="remedies: which remedies to run beside the base")
    p.add_argument("--out", default="results", help="results directory (default: results/)")
    _common(p)
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser(
        "train",
        help="train one run from options or a TOML config",
        formatter_class=_FORMATTER,
        epilog=_example(
            "basinscope train --dataset digits --lr 0.1 --batch-size 32 --epochs 20 --out runs/a\n"
            "basinscope train --config run.toml --out runs/b\n"
            "basinscope train --model mypkg.nets:make_net --dataset data.npz --out runs/c\n"
            "basinscope train --sam-rho 0.05 --batch-size 512 --out runs/sam\n"
            "basinscope train --swa-start 60 --swa-lr 0.05 --snapshot-every 5 --out runs/swa"
        ),
    )
    p.add_argument("--config", help="TOML file with TrainConfig fields")
    p.add_argument("--out", required=True, help="run directory (checkpoint, config, metrics)")
    p.add_argument("--dataset")
    p.add_argument("--data-dir")
    p.add_argument("--train-size", type=_size, help="fraction (≤ 1) or number of examples")
    p.add_argument("--model", help="mlp, cnn, or package.module:factory")
    p.add_argument("--widths", type=int, nargs="+", help="MLP hidden widths")
    p.add_argument("--dropout", type=float)
    p.add_argument("--batch-norm", action="store_true", help="BatchNorm after each hidden layer")
    p.add_argument("--optimizer", choices=["sgd", "adam", "adamw"])
    p.add_argument("--lr", type=float)
    p.add_argument("--momentum", type=float)
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--epochs", type=int)
    p.add_argument("--steps", type=int, help="optimizer steps (overrides --epochs)")
    p.add_argument("--warmup-steps", type=int)
    p.add_argument("--schedule", choices=["constant", "cosine"])
    p.add_argument("--sam-rho", type=float, help="SAM radius ρ around the base optimizer (0: off)")
    p.add_argument("--sam-adaptive", action="store_true", help="ASAM: elementwise |w|+η scaling")
    p.add_argument("--swa-start", type=int, help="average weights from this epoch on (SWA)")
    p.add_argument("--swa-lr", type=float, help="SWA learning rate (SWALR anneals to it)")
    p.add_argument("--snapshot-every", type=int, help="keep weights every k epochs (PCA paths)")
    p.add_argument("--seed", type=int)
    p.add_argument("--device", default=None, help="torch device (default: cpu)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser(
        "surface",
        help="1-D or 2-D loss surface of a checkpoint (HDF5 + figures)",
        formatter_class=_FORMATTER,
        epilog=_example(
            "basinscope surface runs/a --dim 2 --steps 41 --span 1 --out runs/a/plane.h5\n"
            "basinscope surface runs/a --dim 1 --norm layer --data both --out line.h5\n"
            "basinscope surface runs/a --directions hessian --span 0.5 --out hess.h5"
        ),
    )
    _checkpoint_args(p)
    p.add_argument("--dim", type=int, choices=[1, 2], default=2, help="line (1) or plane (2)")
    p.add_argument("--steps", type=int, default=31, help="points per axis (default 31)")
    p.add_argument("--span", type=float, default=1.0, help="grid is [-span, span] (default 1)")
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
    p.set_defaults(func=_cmd_surface)

    p = sub.add_parser(
        "sharpness",
        help="sharpness measures of a checkpoint (ε, noise, worst case, Keskar, PAC-Bayes)",
        formatter_class=_FORMATTER,
        epilog=_example(
            "basinscope sharpness runs/a --radius 0.25 --sigma 0.05 --json sharp.json\n"
            "basinscope sharpness runs/a --worst-case 0.1 --norm linf --keskar 1e-3 --pac-bayes\n"
            "basinscope sharpness runs/a --worst-case 0.5 --adaptive --m 128\n"
            "basinscope sharpness runs/a --rescale net.1 10   # Dinh et al.'s reparameterisation"
        ),
    )
    _checkpoint_args(p)
    p.add_argument("--radius", type=float, default=0.25, help="ε (filter-normalised units)")
    p.add_argument("--sigma", type=float, default=0.05, help="noise standard deviation")
    p.add_argument("--samples", type=int, default=32, help="noise samples")
    p.add_argument(
        "--worst-case", type=float, metavar="RHO", help="worst case in a ball of radius ρ"
    )
    p.add_argument("--norm", choices=["l2", "linf"], default="l2", help="the ball's norm")
    p.add_argument("--adaptive", action="store_true", help="ball scaled by |w| (ASAM-style)")
    p.add_argument("--m", type=int, help="m-sharpness: worst case per batch of m examples")
    p.add_argument("--steps", type=int, default=20, help="ascent steps (1: SAM's step)")
    p.add_argument("--restarts", type=int, default=2, help="ascent restarts")
    p.add_argument("--keskar", type=float, metavar="EPS", help="Keskar et al.'s φ with box ε")
    p.add_argument("--subspace", type=int, help="Keskar: a random p-dimensional subspace")
    p.add_argument("--pac-bayes", action="store_true", help="PAC-Bayes σ' (Jiang et al. 2019)")
    p.add_argument("--magnitude-aware", action="store_true", help="PAC-Bayes noise σ²w² + ε²")
    p.add_argument("--target", type=float, default=0.1, help="PAC-Bayes: allowed error increase")
    p.add_argument(
        "--rescale",
        nargs=2,
        metavar=("LAYER", "ALPHA"),
        help="compare measures before/after the function-preserving α, 1/α rescaling",
    )
    p.add_argument("--json", help="also write the results to this JSON file")
    p.set_defaults(func=_cmd_sharpness)

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
    p.add_argument("--k", type=int, default=5, help="number of top eigenvalues (default 5)")
    p.add_argument("--tol", type=float, default=1e-4, help="relative eigenvalue tolerance")
    p.add_argument("--trace-rtol", type=float, default=1e-2, help="trace: stop at SE ≤ rtol·|tr|")
    p.add_argument("--per-layer", action="store_true", help="also one block per module")
    p.add_argument("--layers", nargs="+", help="blocks to measure: module names or patterns")
    p.add_argument("--density", help="draw the spectral density (SLQ) into this PNG")
    p.add_argument("--json", help="also write the results to this JSON file")
    p.set_defaults(func=_cmd_hessian)

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
    p.add_argument("--threshold", type=float, required=True, help="loss threshold τ")
    p.add_argument(
        "--rule",
        choices=["absolute", "relative"],
        default="absolute",
        help="basin is L ≤ τ (absolute) or L − L(θ0) ≤ τ (relative)",
    )
    p.add_argument("--directions", type=int, default=100, help="number of rays N")
    p.add_argument(
        "--norm",
        choices=["none", "filter", "layer"],
        default="none",
        help="ray directions: uniform on the sphere, or normalised first",
    )
    p.add_argument("--tolerance", type=float, default=1e-3, help="relative bisection tolerance")
    p.add_argument("--r-max", type=float, default=1e4, help="largest radius searched")
    p.add_argument("--json", help="also write the result to this JSON file")
    p.set_defaults(func=_cmd_volume)

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
    p.add_argument("--span", type=float, nargs=2, default=[-0.5, 1.5], help="interpolation α range")
    p.add_argument("--steps", type=int, default=41, help="points per axis (default 41)")
    p.add_argument("--margin", type=float, default=0.25, help="planes: border around the models")
    p.add_argument("--labels", nargs="+", help="names of the models in the figures")
    p.add_argument("--data", choices=["train", "both"], default="both", help="also the test data")
    p.add_argument("--update-bn", action="store_true", help="recompute BatchNorm stats per point")
    p.add_argument("--out", default="path.h5", help="HDF5 file; resumed if it exists")
    p.add_argument("--model", help="package.module:factory for your own state-dict .pt files")
    p.add_argument("--dataset", help="evaluate on this dataset instead of the first run's")
    p.add_argument("--data-dir", help="where dataset files are (or are cached)")
    p.add_argument("--eval-subset", type=int, help="evaluate on a fixed random subset of this size")
    _common(p)
    p.set_defaults(func=_cmd_path)

    p = sub.add_parser(
        "report",
        help="rank correlation of every sharpness measure with the generalisation gap",
        formatter_class=_FORMATTER,
        epilog=_example(
            "basinscope run --study lr-batch-grid\nbasinscope report results/lr-batch-grid"
        ),
    )
    p.add_argument("study_dir", help="a study directory written by `basinscope run` (summary.csv)")
    p.set_defaults(func=_cmd_report)

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
    p.set_defaults(func=_cmd_plot)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``basinscope`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except BasinscopeError as exc:
        print(f"basinscope: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "basinscope: interrupted; finished work is saved and a rerun resumes", file=sys.stderr
        )
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
