"""A training run in progress: everything the step loop reads and changes, in one object.

The run directory (:mod:`basinscope.training._rundir`) saves it as the resume
state ``state.pt`` after every epoch and restores it on a rerun; the loop
(:mod:`basinscope.training._loop`) steps it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR
from torch.optim.swa_utils import SWALR, AveragedModel

from ._config import TrainConfig
from ._sam import SAM
from ._trajectory import Snapshots

if TYPE_CHECKING:
    from ._rundir import RunDir


@dataclass
class Run:
    """One run: its model and optimizer state, counters, history and where it is saved.

    Attributes:
        tensors: ``(x_train, y_train, x_test, y_test)`` on the run's device.
        per_epoch, total, n_epochs: optimizer steps per epoch, in all, and epochs.
        start: ``time.perf_counter()`` when this (possibly resumed) part began.
        elapsed: training time of the parts before it (from ``state.pt``).
        environments: the environments the run was trained under, one per change.
    """

    config: TrainConfig
    device: torch.device
    model: nn.Module
    optimizer: torch.optim.Optimizer
    sam: SAM | None
    scheduler: LambdaLR
    tensors: tuple[torch.Tensor, ...]
    snapshots: Snapshots
    env: dict[str, Any]
    run_dir: RunDir | None
    per_epoch: int
    total: int
    n_epochs: int
    start: float
    environments: list[dict[str, Any]]
    swa_model: AveragedModel | None = None
    swa_scheduler: SWALR | None = None
    epoch: int = 0
    step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    elapsed: float = 0.0
    diverged: bool = False
    message: str = ""

    @property
    def stepper(self) -> torch.optim.Optimizer:
        """The optimizer whose state is saved: the SAM wrapper, or the base optimizer."""
        return self.sam if self.sam is not None else self.optimizer

    def lr(self) -> float:
        """The learning rate the next step would use."""
        return self.optimizer.param_groups[0]["lr"]

    def wall_time(self) -> float:
        """Training time in seconds, summed over resumed parts."""
        return self.elapsed + time.perf_counter() - self.start
