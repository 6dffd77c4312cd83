"""Run a scenario on N gloo ranks on 127.0.0.1, as torchrun would, bounded in time.

:func:`run_ranks` starts ``N`` Python processes of ``_rank_main.py`` with the
environment torchrun sets (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR=127.0.0.1``, a free ``MASTER_PORT``), one thread each, waits at
most ``timeout`` seconds (then kills them all and fails), and returns what each
rank's scenario returned (``torch.save``-able values).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_env(rank: int, world: int, port: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1",
        OMP_WAIT_POLICY="PASSIVE", MPLBACKEND="Agg",
    )  # fmt: skip
    return env


def run_ranks(
    scenario: str,
    tmp: Path,
    *,
    world: int = 2,
    timeout: float = 240,
    expect_fail: bool = False,
    codes: list[int] | None = None,
) -> list[Any]:
    """Each rank's ``scenarios.<scenario>(tmp)`` result, in rank order.

    With ``expect_fail`` the ranks must all exit with an error; their stderr texts are
    returned instead.
    """
    port = free_port()
    procs = [
        subprocess.Popen(
            [sys.executable, str(HERE / "_rank_main.py"), scenario, str(tmp)],
            env=rank_env(r, world, port),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in range(world)
    ]
    outputs = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=timeout))
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
            p.communicate()
        raise AssertionError(
            f"scenario {scenario!r} did not finish in {timeout} s (a hang?)"
        ) from None
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    got = [p.returncode for p in procs]
    if expect_fail:
        assert all(c != 0 for c in got), (got, outputs)
        return [err for _, err in outputs]
    want = [0] * world if codes is None else codes
    assert got == want, "\n".join(f"rank {r}: {o[1][-3000:]}" for r, o in enumerate(outputs))
    return [torch.load(tmp / f"rank{r}.pt", weights_only=False) for r in range(world)]
