"""``basinscope sharpness``: ε, noise, worst case, Keskar, PAC-Bayes, and ``--rescale``.

One of the measures of a checkpoint (see ``_measure``), in a file of its own for length.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from typing import Any

from ..errors import BasinscopeError
from ._common import (
    _COUNT,
    _FINITE,
    _FORMATTER,
    _POSITIVE,
    _check_distinct,
    _check_json,
    _checkpoint_args,
    _checkpoint_inputs,
    _example,
    _integer,
    _load,
    _objective,
    _write_json,
    saved_when_finished,
)


# --------------------------------------------------------------- sharpness
class _Shown:
    """The measures as printed: a finite value with its format, else ``not finite (why)``.

    A NaN or infinite measure is never printed as a number: it is named, and the command
    then ends with one sentence and exit status 2 (:meth:`check`), without ``--json``.
    """

    def __init__(self) -> None:
        self.broken: list[str] = []

    def __call__(self, name: str, value: float, spec: str, why: str) -> str:
        if math.isfinite(value):
            return format(value, spec)
        self.broken.append(f"{name} ({why})")
        return f"not finite ({why})"

    def check(self) -> None:
        if self.broken:
            raise BasinscopeError(
                f"not finite: {'; '.join(self.broken)}; nothing was written to --json"
            )


def _check_against_data(args: argparse.Namespace, obj: Any) -> None:
    """Refuse options that exceed the loaded data or model, before the first measure."""
    if args.m is not None and args.m > obj.n_examples:
        raise BasinscopeError(
            f"--m must be an integer in [1, {obj.n_examples}] (the examples evaluated), "
            f"got {args.m}"
        )
    if args.subspace is not None and args.subspace > obj.n:
        raise BasinscopeError(
            f"--subspace must be an integer in [1, {obj.n}] (the parameters measured), "
            f"got {args.subspace}"
        )


def _cmd_sharpness(args: argparse.Namespace) -> None:
    from .. import sharpness
    from ..landscape import random_directions

    _check_sharpness_options(args)
    _check_json(args)
    _check_distinct({"the --json file": args.json}, _checkpoint_inputs(args))
    model, data = _load(args)
    obj = _objective(args, model, data, skip_bias_norm=True)
    if args.rescale is not None:
        _sharpness_rescale(args, model, data, obj)
        return
    _check_against_data(args, obj)
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
    show = _Shown()
    overflow = "the loss overflowed at the perturbed weights: use a smaller {}"
    print(f"loss at the minimum        {eps.loss0:.6f}")
    value = show("ε-sharpness", eps.value, ".6f", overflow.format("--radius"))
    print(f"ε-sharpness (ε = {eps.radius:g})     {value}")
    value = show("noise sharpness", noise.value, ".6f", overflow.format("--sigma"))
    if math.isfinite(noise.value):
        value += f" ± {noise.stderr:.6f}"
    print(f"noise sharpness (σ = {noise.sigma:g})  {value}")
    _optional_measures(args, obj, result, show)
    show.check()
    _write_json(args, result, obj)


def _optional_measures(
    args: argparse.Namespace, obj: Any, result: dict[str, Any], show: _Shown
) -> None:
    """``--worst-case``, ``--keskar`` and ``--pac-bayes``, printed and added to ``result``."""
    from .. import sharpness

    overflow = "the loss overflowed at the perturbed weights: use a smaller {}"
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
        value = show("worst case", wc.value, ".6f", overflow.format("--worst-case"))
        print(f"worst case, {kind} ball ρ = {wc.radius:g}  {value}")
    if args.keskar is not None:
        k = sharpness.keskar(obj, args.keskar, subspace_dim=args.subspace, seed=args.seed)
        result["keskar"] = k.to_dict()
        where = f"{args.subspace}-dim subspace" if args.subspace else "full space"
        value = show("Keskar φ", k.value, ".6f", overflow.format("--keskar"))
        print(f"Keskar φ (ε = {k.epsilon:g}, {where})  {value}")
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
        print(f"PAC-Bayes {kind}σ' (error +{pb.target:g})  {pac_bayes_text(pb)}")


def pac_bayes_text(pb: Any) -> str:
    """σ' and the bound term; when the search did not bracket the target, which end of
    the interval σ' is and that it is only a bound on the crossing."""
    text = f"{pb.sigma:.6g}; bound term {pb.bound:.6g}"
    if pb.bracketed:
        return text
    if pb.increase <= pb.target:  # even the largest σ tried passes
        return (
            f"≥ {pb.sigma:.6g} (a lower bound: the search did not bracket the target, even "
            f"σ = {pb.sigma:g}, the search's cap, raises the error by only {pb.increase:+.3g}); "
            f"bound term at that σ {pb.bound:.6g}"
        )
    return (
        f"≤ {pb.sigma:.6g} (an upper bound: the search did not bracket the target, even "
        f"σ = {pb.sigma:g}, the smallest tried, raises the error by {pb.increase:+.3g}); "
        f"bound term at it {pb.bound:.6g}"
    )


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
    from ..experiments import compare_measures, rescale

    layer, alpha_text = args.rescale
    alpha = _rescale_alpha(alpha_text)
    other = _objective(args, rescale(model, layer, alpha), data, skip_bias_norm=True)
    table = compare_measures(obj, other, seed=args.seed)
    show = _Shown()
    print(f"rescaling {layer!r} by α = {alpha:g} and the next layer by 1/α (same function):")
    print(f"{'measure':24s} {'before':>12s} {'after':>12s} {'rel. change':>12s}  invariant")
    for name, c in table.items():
        mark = "yes" if c.invariant else "no"
        before, after = (
            show(f"{name} {when}", v, ".6g", "the loss overflowed: use an alpha nearer 1")
            for when, v in (("before", c.before), ("after", c.after))
        )
        print(f"{name:24s} {before:>12s} {after:>12s} {c.rel_change:12.2e}  {mark}")
    show.check()
    _write_json(
        args,
        {"layer": layer, "alpha": alpha} | {k: dataclasses.asdict(v) for k, v in table.items()},
        obj,
    )


# ------------------------------------------------------------------ parser
def register(sub: argparse._SubParsersAction) -> None:
    """Add ``basinscope sharpness``: ε, noise, worst case, Keskar, PAC-Bayes."""
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
    p.set_defaults(func=_cmd_sharpness, interrupted=saved_when_finished("sharpness"))
