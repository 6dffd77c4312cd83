"""One rank of a test scenario: ``python _rank_main.py SCENARIO TMP`` (see ``_ranks.py``)."""

from __future__ import annotations

import os
import sys
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

import scenarios  # noqa: E402


def main() -> None:
    name, tmp = sys.argv[1], Path(sys.argv[2])
    torch.set_num_threads(1)
    if name.startswith("cli_"):  # the command line joins (and leaves) the group itself
        result = getattr(scenarios, name)(tmp)
        torch.save(result, tmp / f"rank{os.environ['RANK']}.pt")
        return
    dist.init_process_group("gloo", timeout=timedelta(seconds=90))
    try:
        result = getattr(scenarios, name)(tmp)
        torch.save(result, tmp / f"rank{dist.get_rank()}.pt")
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
