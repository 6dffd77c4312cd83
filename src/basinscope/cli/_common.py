"""What every command shares: argument types, loading a checkpoint, ``--json``, errors.

The promises of the command line (see the package docstring) live here: the
number types that refuse NaN and ±inf, the output checks made before any work,
one sentence for every error and the exit statuses.
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

from .._checks import check_device, check_output_file
from ..errors import BasinscopeError

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


def saved_when_finished(command: str) -> str:
    """The Ctrl-C message of a command that writes its results only at its end."""
    return (
        f"nothing is saved: the {command} command writes its results only when it "
        "finishes; rerun it"
    )


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


def _check_json(args: argparse.Namespace) -> None:
    """Refuse a ``--json`` path that cannot be written, before any work."""
    if args.json:
        check_output_file(args.json, "the --json file")


def _write_json(args: argparse.Namespace, payload: dict[str, Any], obj: Any) -> None:
    """Write a command's results to ``--json`` (atomically), when it was given.

    The payload gains ``environment`` (torch version, threads, device, dtype of
    ``obj``): the numbers' last bits depend on it.
    """
    from .._io import atomic_write_json
    from .._keys import environment
    from ._processes import is_writer

    if args.json and is_writer():
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
    from ..training import (
        MODELS,
        build_model,
        data_model_options,
        load_checkpoint,
        load_config_data,
        load_dataset,
        load_weights,
    )

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
    options = data_model_options(data) if args.model in MODELS else {}  # token data
    model = build_model(args.model, data.input_shape, data.n_classes, **options)
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
    from ..objective import Objective, classification_loss

    n = len(data.y_train)
    if args.eval_subset is not None and args.eval_subset > n:
        raise BasinscopeError(
            f"--eval-subset must be at most the {n} training examples of dataset "
            f"{data.name!r}, got {args.eval_subset}"
        )
    return Objective(
        model,
        classification_loss(data.y_train),
        (data.x_train, data.y_train),
        skip_bias_norm=skip_bias_norm,
        device=args.device,
        subset=args.eval_subset,
    )


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


# ---------------------------------------------------- inputs against outputs
# The files of a run directory a command reads (or that a command must not replace).
RUN_FILES = ("config.json", "model.pt", "metrics.json", "state.pt", "trajectory.pt")


def _same(a: Path, b: Path) -> bool:
    """Whether two paths name one file (after symbolic links; hard links when both exist)."""
    if a.resolve() == b.resolve():
        return True
    try:
        return a.exists() and b.exists() and a.samefile(b)
    except OSError:
        return False


def _checkpoint_inputs(args: argparse.Namespace, *checkpoints: Any) -> list[tuple[str, Path]]:
    """``(what, path)`` of the files a checkpoint command reads: each checkpoint and its
    run directory's files, and ``--dataset`` when it names a file."""
    inputs: list[tuple[str, Path]] = []
    for c in checkpoints or [args.checkpoint]:
        path = Path(c)
        run_dir = path if path.is_dir() else path.parent
        if not path.is_dir():
            inputs.append(("the checkpoint", path))
        inputs += [(f"the run directory's {name}", run_dir / name) for name in RUN_FILES]
    dataset = getattr(args, "dataset", None)
    if dataset is not None and Path(dataset).suffix:
        inputs.append(("the dataset file", Path(dataset)))
    return inputs


def _check_distinct(outputs: dict[str, Any], inputs: Sequence[tuple[str, Path]]) -> None:
    """Refuse, before any work, an output that is another output of the same command
    (``{what: path}``, ``None`` paths skipped) or one of its inputs (``(what, path)``):
    writing it would destroy the other output or what is being measured."""
    given = [(what, Path(p)) for what, p in outputs.items() if p is not None]
    for i, (what, path) in enumerate(given):
        for other, other_path in given[:i]:
            if _same(path, other_path):
                raise BasinscopeError(
                    f"{what} {str(path)!r} is also {other}; writing one would destroy the "
                    "other: give them different paths"
                )
        for other, source in inputs:
            if _same(path, source):
                raise BasinscopeError(
                    f"{what} {str(path)!r} is {other}, which this command reads; writing it "
                    "would destroy it: give another path"
                )


# ------------------------------------------------------------------ parser
def _device_args(p: argparse.ArgumentParser) -> None:
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
    _device_args(p)
    p.set_defaults(interrupted=NOTHING_SAVED)


# ----------------------------------------------------- errors and statuses
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


def _fail(message: str, exc: BaseException | None = None) -> int:
    from ._processes import error_stream

    message = " ".join(message.split())
    stream = error_stream(message, exc)  # under torchrun: rank 0 says what all ranks raised
    if stream is not None:
        print(f"basinscope: error: {message}", file=stream)
    return 2


def _call(args: argparse.Namespace) -> int:
    """Run the parsed command ``args.func``; returns the exit status.

    0: done; 2: refused input or an output that cannot be written, one sentence
    on stderr; 130: interrupted (Ctrl-C), with what was saved.
    """
    try:
        if getattr(args, "device", None) is not None:
            check_device(args.device, "--device")
        args.func(args)
    except BasinscopeError as exc:
        return _fail(str(exc), exc)
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
