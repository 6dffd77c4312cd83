"""``basinscope train``: one run from options or a TOML config."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .._checks import check_output_dir
from ._common import _COUNT, _FINITE, _FORMATTER, _INT, RUN_FILES, _check_distinct, _example, _size


def _shown(value: Any, spec: str) -> str:
    """A final metric as printed: its value (0 included), ``n/a`` only when it is missing."""
    return "n/a" if value is None else format(value, spec)


# ------------------------------------------------------------------- train
def _cmd_train(args: argparse.Namespace) -> None:
    from ..training import TrainConfig, train

    check_output_dir(args.out, "the run directory")
    inputs = [("the --config file", Path(args.config))] if args.config else []
    if args.dataset is not None and Path(args.dataset).suffix:
        inputs.append(("the dataset file", Path(args.dataset)))
    _check_distinct({f"the run directory's {n}": Path(args.out) / n for n in RUN_FILES}, inputs)
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
        f"train loss {_shown(f.get('train_loss'), '.4f')} acc {_shown(f.get('train_acc'), '.3f')}; "
        f"test loss {_shown(f.get('test_loss'), '.4f')} acc {_shown(f.get('test_acc'), '.3f')}"
    )
    if result.diverged:
        print(result.message)
    print(f"checkpoint in {args.out}/")


# ------------------------------------------------------------------ parser
def register(sub: argparse._SubParsersAction) -> None:
    """Add ``basinscope train``: every TrainConfig field as an option."""
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
