"""``torchrun -m basinscope COMMAND ...``: the command on every rank of a process group.

torchrun starts one process per rank with ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR`` and ``MASTER_PORT`` set. :func:`processes` then joins the group
(gloo on the CPU, NCCL with ``--device cuda``, each rank on ``cuda:LOCAL_RANK``),
and every Objective the command builds shares its work over it
(:mod:`basinscope._dist`). Rank 0 alone prints, shows progress, writes the
outputs and says what went wrong; the other ranks' standard output and error are
silent, except for an error that happened on them alone.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import os
import sys
from collections.abc import Iterator
from datetime import timedelta
from typing import TextIO

from .. import _dist
from ..errors import BasinscopeError

# The commands whose work is shared over ranks; the others run in one process.
SHARED = ("surface", "path", "volume", "sharpness", "hessian", "trajectory", "run")


def launched() -> int:
    """The number of processes torchrun launched (``WORLD_SIZE``; 1 when not set)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def rank() -> int:
    """This process's rank in the default group (0 when there is none)."""
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_writer() -> bool:
    """Whether this process writes the command's outputs (rank 0, or the only process)."""
    return rank() == 0


def timeout() -> timedelta:
    """How long a rank waits for the others at one collective: ``BASINSCOPE_TIMEOUT``
    seconds, by default 6 hours (a study's ranks wait for each other's runs, and rank 0
    writes the report while the others wait; torch's default is 10–30 minutes)."""
    value = os.environ.get("BASINSCOPE_TIMEOUT", "21600")
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds < 1e9:
        raise BasinscopeError(f"BASINSCOPE_TIMEOUT must be a number of seconds > 0, got {value!r}")
    return timedelta(seconds=seconds)


@contextlib.contextmanager
def processes(args: argparse.Namespace) -> Iterator[None]:
    """Join torchrun's process group for the command (nothing when not under torchrun).

    The group is made once per process and kept until it exits (a second command in the
    same process, or a script that made the group itself, uses it: tearing a group down
    and making it again on torchrun's one port can hang).
    """
    import torch.distributed as dist

    if launched() <= 1:
        yield
        return
    if args.command not in SHARED:
        raise BasinscopeError(
            f"basinscope {args.command} runs in one process; launch it without torchrun "
            f"(the commands shared over processes are {', '.join(SHARED)})"
        )
    backend = _device(args)
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=timeout())
        atexit.register(_leave)
    if dist.get_rank() == 0:
        yield
        return
    args.quiet = True
    with (
        open(os.devnull, "w") as null,
        contextlib.redirect_stdout(null),
        contextlib.redirect_stderr(null),
    ):
        yield


def _device(args: argparse.Namespace) -> str:
    """The backend for ``--device`` (gloo, or NCCL with each rank on cuda:LOCAL_RANK)."""
    device = str(getattr(args, "device", None) or "cpu")
    if not device.startswith("cuda"):
        return "gloo"
    import torch

    if not torch.cuda.is_available():
        raise BasinscopeError("--device cuda: CUDA is not available on this machine")
    if device != "cuda":
        raise BasinscopeError(
            f"--device {device} under torchrun would put every rank on one GPU; give "
            "--device cuda (each rank then uses cuda:LOCAL_RANK)"
        )
    args.device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    torch.cuda.set_device(torch.device(args.device))
    return "nccl"


def _leave() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def error_stream(message: str, exc: BaseException | None = None) -> TextIO | None:
    """Where the one-sentence error goes: stderr on rank 0 (or the only process).

    On another rank: nowhere for an error every rank raised together (rank 0 says it:
    a :class:`~basinscope._dist.RankError`, or a check that failed alike on every rank
    before any work, which rank 0 posts in the group's store and the others wait a
    few seconds to find), the real stderr for an error of its own.
    """
    import torch.distributed as dist

    if not dist.is_initialized():  # refused before the group was joined: rank 0 says it
        return sys.stderr if os.environ.get("RANK", "0") == "0" or launched() <= 1 else None
    store = _dist.default_store()
    if dist.get_rank() == 0:
        if store is not None:
            store.set(_ERROR_KEY, message)
        return sys.stderr
    if exc is not None and getattr(exc, "shared", False):
        return None
    if store is not None:
        try:
            store.wait([_ERROR_KEY], timedelta(seconds=5))
            if store.get(_ERROR_KEY).decode() == message:
                return None
        except Exception:  # rank 0 did not fail alike (or the store is gone): say it here
            pass
    return sys.__stderr__


_ERROR_KEY = "basinscope/error/0"
