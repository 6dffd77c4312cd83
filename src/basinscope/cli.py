"""The ``basinscope`` command line. It only parses arguments and calls the library.

Every promise of the command line, under any input:

* Bad input ends with one sentence on stderr and exit status 2, no traceback:
  argparse's own errors, a :class:`BasinscopeError` from the library (a lock
  held by another process included), an ``OSError`` while writing (disk full,
  permission) and running out of memory.
* Checks come before the work: every number is parsed by a type that refuses
  non-integers, NaN and ±inf (no option of ours means anything by them), and
  every output (``--out``, ``--json``, ``--density``, the figures) is checked to
  be writable before anything is computed.
* Opening a run directory runs no code unless ``--trust-code`` says so, and a
  checkpoint is only evaluated on data of the shape it was trained on.
* Ctrl-C says what is true for the command: which finished work is saved and
  resumed by a rerun, or that nothing was saved.
* Every ``--json`` payload records the environment it was computed in.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import math
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from ._checks import check_output_dir, check_output_file
from .errors import BasinscopeError

_FORMATTER = argparse.RawDescriptionHelpFormatter

_TRUST_HELP = (
    "the run directory's config names a model factory; importing it runs its code: "
    "use only for run directories you trust"
)
_MODEL_HELP = (
    "package.module:factory for your own state-dict .pt file; this imports that module "
    "and runs its code"
)
NOTHING_SAVED = "nothing was saved; rerun the command to start again"


class _UsageError(Exception):
    """A command line argparse refused (reported by :func:`main` as one sentence)."""


class _Parser(argparse.ArgumentParser):
    """argparse, but an error is one sentence (no usage block) that :func:`main` reports."""

    def error(self, message: str) -> NoReturn:
        # "argument --steps: must be ..." reads better as "--steps must be ...".
        m = re.fullmatch(r"argument (-[^\s:/]+)(?:/\S+)?: (must .*)", message, flags=re.S)
        if m:
            message = f"{m.group(1)} {m.group(2)}"
        raise _UsageError(f"{message} (see {self.prog} --help)")


def _number_text(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None


def _integer(minimum: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer (``3``, ``1e3``; not ``3.5``, ``nan``), ``≥ minimum``."""

    def integer(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            number = _number_text(text)
            if not (math.isfinite(number) and number.is_integer()):
                raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
            value = int(number)
        if minimum is not None and value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer ≥ {minimum}, got {value}")
        return value

    return integer


def _number(*, positive: bool = False, nonnegative: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite number (NaN and ±inf refused), optionally ``> 0``/``≥ 0``."""

    def number(text: str) -> float:
        value = _number_text(text)
        if positive and not (math.isfinite(value) and value > 0):
            raise argparse.ArgumentTypeError(f"must be a positive finite number, got {text}")
        if nonnegative and not (math.isfinite(value) and value >= 0):
            raise argparse.ArgumentTypeError(f"must be a finite number ≥ 0, got {text}")
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
        return value

    return number


_INT = _integer()
_COUNT = _integer(1)
_SEED = _integer(0)
_FINITE = _number()
_POSITIVE = _number(positive=True)


def _size(text: str) -> int | float:
    """A count (``500``) or a fraction (``0.1``); NaN and ±inf are neither."""
    try:
        return int(text)
    except ValueError:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is neither a count nor a fraction"
            ) from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(
                f"must be a count or a fraction in (0, 1], got {text}"
            ) from None
        return value


def _example(text: str) -> str:
    return "example:\n  " + "\n  ".join(text.strip().splitlines())


# --------------------------------------------------------------------- run
def _cmd_run(args: argparse.Namespace) -> None:
    from .studies import STUDIES
    from .study import run_study, summary_markdown

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

    check_output_dir(args.out, "the run directory")
    base = {}
    if args.config:
        base = TrainConfig.from_toml(args.config, trust_code=args.trust_code).to_dict()
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


def _check_json(args: argparse.Namespace) -> None:
    """Refuse a ``--json`` path that cannot be written, before any work."""
    if args.json:
        check_output_file(args.json, "the --json file")


def _write_json(args: argparse.Namespace, payload: dict[str, Any], obj: Any) -> None:
    """Write a command's results to ``--json`` (atomically), when it was given.

    The payload gains ``environment`` (torch version, threads, device, dtype of
    ``obj``): the numbers' last bits depend on it.
    """
    from ._io import atomic_write_json
    from ._keys import environment

    if args.json:
        payload = {**payload, "environment": environment(obj.device, obj.dtype)}
        try:
            atomic_write_json(args.json, payload)
        except OSError as exc:  # name the file, not atomic_write's temporary
            raise BasinscopeError(
                f"cannot write {str(args.json)!r}: {exc.strerror or exc}"
            ) from None
        print(f"written to {args.json}")


# ------------------------------------------------- checkpoint + objective
def _load(
    args: argparse.Namespace, checkpoint: str | Path | None = None, data: Any = None
) -> tuple[Any, Any]:
    """(model, DataBundle) for a checkpoint command, refused before any work when unusable.

    ``checkpoint`` defaults to ``args.checkpoint``; ``data`` (a DataBundle) is
    the data to evaluate on, or ``None`` for the run's own (or ``--dataset``).
    Refused: a run directory whose config names a user factory without
    ``--trust-code``, data of another shape than the run was trained on, and a
    model whose weights or final loss are not finite (a diverged run).
    """
    from .data import load_dataset
    from .models import build_model
    from .train import load_checkpoint, load_config_data, load_weights

    path = Path(args.checkpoint if checkpoint is None else checkpoint)
    if not path.exists():
        raise BasinscopeError(f"checkpoint {str(path)!r} does not exist")
    run_dir = path if path.is_dir() else path.parent
    has_config = run_dir.joinpath("config.json").is_file()
    if has_config and args.model is None:
        ckpt = load_checkpoint(path, device=args.device, trust_code=args.trust_code)
        if data is None:
            cfg = ckpt.config
            if args.dataset is not None:  # another dataset: all of it, no label noise
                cfg = dataclasses.replace(
                    cfg, dataset=args.dataset, train_size=None, label_noise=0.0
                )
            if args.data_dir is not None:
                cfg = dataclasses.replace(cfg, data_dir=args.data_dir)
            data = load_config_data(cfg)
        _check_shape(path, ckpt.info, data)
        _check_finite(path, ckpt.model, ckpt.metrics)
        return ckpt.model, data
    if args.model is None or (args.dataset is None and data is None):
        raise BasinscopeError(
            f"{str(path)!r} is not a basinscope run directory; for your own weights pass "
            "--model package.module:factory and --dataset"
        )
    if not path.is_file():
        raise BasinscopeError(f"checkpoint file {str(path)!r} does not exist")
    if data is None:
        data = load_dataset(args.dataset, data_dir=args.data_dir)
    model = build_model(args.model, data.input_shape, data.n_classes)
    load_weights(model, path, f"model {args.model!r}")
    _check_finite(path, model, {})
    return model.to(args.device).eval(), data


def _check_shape(path: Path, info: dict[str, Any], data: Any) -> None:
    """Refuse data whose input shape or class count differs from the run's."""
    saved = (list(info.get("input_shape", [])), info.get("n_classes"))
    given = (list(data.input_shape), data.n_classes)
    if saved != given:
        raise BasinscopeError(
            f"{str(path)!r} was trained on inputs of shape {saved[0]} with {saved[1]} classes, "
            f"but dataset {data.name!r} has inputs of shape {given[0]} with {given[1]} "
            "classes; evaluate it on a dataset of the same shape"
        )


def _check_finite(path: Path, model: Any, metrics: dict[str, Any]) -> None:
    """Refuse a model with NaN/inf weights, or whose run ended with a non-finite loss.

    Every measure of such a model is NaN: a number that looks like a result.
    """
    import torch

    for name, t in model.state_dict().items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise BasinscopeError(
                f"checkpoint {str(path)!r} has non-finite weights ({name}); its measures "
                "would be NaN: measure a run that did not diverge"
            )
    final = (metrics.get("final") or {}).get("train_loss")
    if isinstance(final, int | float) and not math.isfinite(final):
        why = f" ({metrics['message']})" if metrics.get("message") else ""
        raise BasinscopeError(
            f"the run {str(path)!r} ended with train loss {final}{why}; its measures would "
            "be NaN: measure a run that did not diverge"
        )


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

    if args.span <= 0:
        raise BasinscopeError(
            f"--span must be positive (the grid is [-span, span]), got {args.span}"
        )
    out = check_output_file(args.out, "the surface file")
    figures = _figures(out, args.dim)
    model, data = _load(args)
    obj = _objective(args, model, data, skip_bias_norm=not args.include_bias_norm)
    test = (data.x_test, data.y_test) if args.data == "both" else None
    if args.directions == "hessian":
        from .hessian import top_directions

        d = top_directions(obj, args.dim, seed=args.seed)
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
    if args.dim == 1:
        written = [plots.plot_line(surf, figures[0])]
    else:
        written = [plots.plot_contour(surf, figures[0]), plots.plot_surface_3d(surf, figures[1])]
    print(f"surface written to {out}; figures: {', '.join(str(p) for p in written)}")


def _figures(out: Path, dim: int, kinds: Sequence[str] | None = None) -> list[Path]:
    """The figures drawn beside ``out`` (``<stem>_line.png`` or ``_contour``/``_3d``), checked.

    Each must be writable before the surface is computed: a surface whose
    figure then fails to be written is work shown as lost.
    """
    stem = out.with_suffix("")
    kinds = kinds or (["line"] if dim == 1 else ["contour", "3d"])
    paths = [Path(f"{stem}_{kind}.png") for kind in kinds]
    for p in paths:
        check_output_file(p, "the figure")
    return paths


# --------------------------------------------------------------- sharpness
def _cmd_sharpness(args: argparse.Namespace) -> None:
    from . import sharpness
    from .directions import random_directions

    _check_sharpness_options(args)
    _check_json(args)
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
    _write_json(args, result, obj)


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
    if not 0 < args.target < 1:
        raise BasinscopeError(f"--target must be an error increase in (0, 1), got {args.target}")
    if args.rescale is not None:
        _rescale_alpha(args.rescale[1])


def _rescale_alpha(text: str) -> float:
    """ALPHA of ``--rescale LAYER ALPHA``: a positive finite number."""
    try:
        alpha = float(text)
    except ValueError:
        alpha = math.nan
    if not (math.isfinite(alpha) and alpha > 0):
        raise BasinscopeError(
            f"--rescale needs LAYER ALPHA with a positive finite number ALPHA, got {text!r}"
        )
    return alpha


def _sharpness_rescale(args: argparse.Namespace, model: Any, data: Any, obj: Any) -> None:
    """Dinh et al. (2017): the same function, rescaled weights; which measures move."""
    from .reparam import compare_measures, rescale

    layer, alpha_text = args.rescale
    alpha = _rescale_alpha(alpha_text)
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
        obj,
    )


# ----------------------------------------------------------------- hessian
def _cmd_hessian(args: argparse.Namespace) -> None:
    from . import hessian

    _check_json(args)
    if args.density:
        check_output_file(args.density, "the --density figure")
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
    _write_json(args, out, obj)


# ------------------------------------------------------------------ volume
def _cmd_volume(args: argparse.Namespace) -> None:
    from .volume import basin_volume

    if args.rule == "relative" and not args.threshold > 0:
        raise BasinscopeError(f"a relative --threshold must be positive, got {args.threshold}")
    _check_json(args)
    args.out = check_output_file(_volume_file(args), "the volume's partial-results file")
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
    from ._keys import value_digest

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


# -------------------------------------------------------------------- path
def _cmd_path(args: argparse.Namespace) -> None:
    from . import plots
    from .surface import interpolate, three_model_plane, trajectory_plane

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
        from .train import load_trajectory

        surf = trajectory_plane(
            obj, load_trajectory(args.checkpoints[0]), margin=args.margin, **common
        )
        written = [plots.plot_contour(surf, figures[0], title="training trajectory")]
    elif two:
        surf = interpolate(obj, loaded[1][0], span=tuple(args.span), labels=tuple(labels), **common)
        written = [plots.plot_line(surf, figures[0])]
    else:
        surf = three_model_plane(
            obj, tuple(m for m, _ in loaded), labels=tuple(labels), margin=args.margin, **common
        )
        written = [plots.plot_contour(surf, figures[0], title="plane of three models")]
    print(f"path written to {args.out}; figures: {', '.join(str(p) for p in written)}")


# ------------------------------------------------------------------ report
def _cmd_report(args: argparse.Namespace) -> None:
    from .report import correlation_report, read_summary

    rows = read_summary(args.study_dir)
    out = Path(args.study_dir) if Path(args.study_dir).is_dir() else Path(args.study_dir).parent
    for name in ("correlation.md", "correlation.json"):
        check_output_file(out / name, "the report file")
    check_output_dir(out / "figures", "the report's figure directory")
    print(
        correlation_report(rows, out, title=f"Measures against the generalisation gap ({out.name})")
    )
    print(f"correlation.md, correlation.json and figures/scatter_*.png in {out}/")


# -------------------------------------------------------------------- plot
def _cmd_plot(args: argparse.Namespace) -> None:
    from . import plots
    from .surface import Surface

    out = check_output_dir(args.out, "the figure directory")
    surfaces = {Path(p).stem: Surface.load(p) for p in args.surfaces}
    if len(surfaces) == 1:
        ((name, s),) = surfaces.items()
        figures = _figures(out / f"{name}.h5", 2 if s.is_2d else 1)
    else:
        figures = [check_output_file(out / "grid.png", "the figure")]
    written = []
    if len(surfaces) == 1:
        if s.is_2d:
            written.append(plots.plot_contour(s, figures[0], key=args.key))
            written.append(plots.plot_surface_3d(s, figures[1], key=args.key))
        else:
            written.append(plots.plot_line(s, figures[0]))
    else:
        written.append(plots.plot_grid(surfaces, figures[0], key=args.key, kind=args.kind))
    print("written: " + ", ".join(str(p) for p in written))


# ------------------------------------------------------------------ parser
def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _trust_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trust-code", action="store_true", help=_TRUST_HELP)


def _checkpoint_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="a run directory written by `basinscope train`, or a .pt")
    p.add_argument("--model", help=_MODEL_HELP)
    p.add_argument("--dataset", help="evaluate on this dataset instead of the run's")
    p.add_argument("--data-dir", help="where dataset files are (or are cached)")
    p.add_argument(
        "--eval-subset", type=_COUNT, help="evaluate on a fixed random subset of this size"
    )
    p.add_argument("--seed", type=_SEED, default=0, help="seed of directions and noise (default 0)")
    _trust_arg(p)
    _common(p)
    p.set_defaults(interrupted=NOTHING_SAVED)


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
    p.add_argument("--sizes", type=_POSITIVE, nargs="+", help="dataset-size: training fractions")
    p.add_argument("--fractions", type=_FINITE, nargs="+", help="poison: mislabelled fractions")
    p.add_argument("--remedies", nargs="+", help="remedies: which remedies to run beside the base")
    p.add_argument("--out", default="results", help="results directory (default: results/)")
    _common(p)
    p.set_defaults(
        func=_cmd_run,
        interrupted="finished runs and measures are saved under {out}/{study}; "
        "rerun the same command to resume",
    )

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
    p.add_argument(
        "--model",
        help="mlp, cnn, or package.module:factory (this imports that module and runs its code)",
    )
    p.add_argument("--widths", type=_COUNT, nargs="+", help="MLP hidden widths")
    p.add_argument("--dropout", type=_FINITE)
    p.add_argument("--batch-norm", action="store_true", help="BatchNorm after each hidden layer")
    p.add_argument("--optimizer", choices=["sgd", "adam", "adamw"])
    p.add_argument("--lr", type=_FINITE)
    p.add_argument("--momentum", type=_FINITE)
    p.add_argument("--weight-decay", type=_FINITE)
    p.add_argument("--batch-size", type=_INT)
    p.add_argument("--epochs", type=_INT)
    p.add_argument("--steps", type=_INT, help="optimizer steps (overrides --epochs)")
    p.add_argument("--warmup-steps", type=_INT)
    p.add_argument("--schedule", choices=["constant", "cosine"])
    p.add_argument(
        "--sam-rho", type=_FINITE, help="SAM radius ρ around the base optimizer (0: off)"
    )
    p.add_argument("--sam-adaptive", action="store_true", help="ASAM: elementwise |w|+η scaling")
    p.add_argument("--swa-start", type=_INT, help="average weights from this epoch on (SWA)")
    p.add_argument("--swa-lr", type=_FINITE, help="SWA learning rate (SWALR anneals to it)")
    p.add_argument("--snapshot-every", type=_INT, help="keep weights every k epochs (PCA paths)")
    p.add_argument("--seed", type=_INT)
    p.add_argument("--device", default=None, help="torch device (default: cpu)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument(
        "--trust-code",
        action="store_true",
        help="the --config file names a model factory; importing it runs its code: "
        "use only for config files you trust",
    )
    p.set_defaults(
        func=_cmd_train,
        interrupted="finished epochs are saved in {out}; "
        "rerun the same command to resume from the last one",
    )

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
    p.set_defaults(
        func=_cmd_surface,
        interrupted="the points computed so far are saved in {out}; "
        "rerun the same command to resume",
    )

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
    p.add_argument("--radius", type=_POSITIVE, default=0.25, help="ε (filter-normalised units)")
    p.add_argument("--sigma", type=_POSITIVE, default=0.05, help="noise standard deviation")
    p.add_argument("--samples", type=_integer(2), default=32, help="noise samples")
    p.add_argument(
        "--worst-case", type=_POSITIVE, metavar="RHO", help="worst case in a ball of radius ρ"
    )
    p.add_argument("--norm", choices=["l2", "linf"], default="l2", help="the ball's norm")
    p.add_argument("--adaptive", action="store_true", help="ball scaled by |w| (ASAM-style)")
    p.add_argument("--m", type=_COUNT, help="m-sharpness: worst case per batch of m examples")
    p.add_argument("--steps", type=_COUNT, default=20, help="ascent steps (1: SAM's step)")
    p.add_argument("--restarts", type=_COUNT, default=2, help="ascent restarts")
    p.add_argument("--keskar", type=_POSITIVE, metavar="EPS", help="Keskar et al.'s φ with box ε")
    p.add_argument("--subspace", type=_COUNT, help="Keskar: a random p-dimensional subspace")
    p.add_argument("--pac-bayes", action="store_true", help="PAC-Bayes σ' (Jiang et al. 2019)")
    p.add_argument("--magnitude-aware", action="store_true", help="PAC-Bayes noise σ²w² + ε²")
    p.add_argument("--target", type=_FINITE, default=0.1, help="PAC-Bayes: allowed error increase")
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
    p.add_argument("--k", type=_COUNT, default=5, help="number of top eigenvalues (default 5)")
    p.add_argument("--tol", type=_POSITIVE, default=1e-4, help="relative eigenvalue tolerance")
    p.add_argument(
        "--trace-rtol", type=_POSITIVE, default=1e-2, help="trace: stop at SE ≤ rtol·|tr|"
    )
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
    _common(p)
    p.set_defaults(
        func=_cmd_path,
        interrupted="the points computed so far are saved in {out}; "
        "rerun the same command to resume",
    )

    p = sub.add_parser(
        "report",
        help="rank correlation of every sharpness measure with the generalisation gap",
        formatter_class=_FORMATTER,
        epilog=_example(
            "basinscope run --study lr-batch-grid\nbasinscope report results/lr-batch-grid"
        ),
    )
    p.add_argument("study_dir", help="a study directory written by `basinscope run` (summary.csv)")
    p.set_defaults(
        func=_cmd_report,
        interrupted="the files already written are complete, the rest are not written; "
        "rerun the command",
    )

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
    return parser


def _volume_interrupted(args: argparse.Namespace) -> str:
    if args.out is not None:
        return f"the rays finished so far are saved in {args.out}; rerun the same command to resume"
    return NOTHING_SAVED


def _os_error(exc: OSError) -> str:
    """One sentence for an ``OSError`` (disk full, permission), naming the file."""
    name = exc.filename
    if name is not None:  # atomic writes fail on ".<name>.<random>.tmp": name the target
        p = Path(name)
        m = re.fullmatch(r"\.(.+)\.[^.]+\.tmp", p.name)
        name = str(p.with_name(m.group(1))) if m else str(p)
    reason = exc.strerror or str(exc) or type(exc).__name__
    writing = exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG)
    verb = "cannot write" if writing else "cannot read or write"
    return f"{verb} {name!r}: {reason}" if name else f"{verb} a file: {reason}"


def _fail(message: str) -> int:
    print(f"basinscope: error: {' '.join(message.split())}", file=sys.stderr)
    return 2


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
        args.func(args)
    except BasinscopeError as exc:
        return _fail(str(exc))
    except OSError as exc:
        return _fail(_os_error(exc))
    except MemoryError:
        return _fail(
            "out of memory: the computation does not fit on this machine; use fewer points "
            "(--steps, --directions, --samples) or a smaller --eval-subset"
        )
    except KeyboardInterrupt:
        saved = args.interrupted
        saved = saved(args) if callable(saved) else saved.format(**vars(args))
        print(f"basinscope: interrupted; {saved}", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
