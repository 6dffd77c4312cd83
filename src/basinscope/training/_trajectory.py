"""The weight trajectory: :class:`Trajectory` and the snapshots a run keeps along training.

Snapshots are the flat trainable-parameter vectors after epoch 0
(initialisation), every ``snapshot_every``-th epoch and the last one, for
PCA-of-trajectory directions (Li et al. 2018). The run directory
(:mod:`basinscope.training._rundir`) writes them to ``trajectory.pt``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn


@dataclass(frozen=True)
class Trajectory:
    """Snapshots of the trainable weights along training (for PCA directions, Li et al. 2018).

    Row ``i`` of ``params`` is the flat vector of all trainable parameters after
    ``epochs[i]`` epochs (0 = initialisation), concatenated in
    ``model.named_parameters()`` order (the layout of the default
    :class:`basinscope.ParamSpace`), as float32 on the CPU. With SWA the rows
    are the optimizer's iterates, not the average.

    Attributes:
        epochs: ``(k,)`` epoch of each snapshot, increasing.
        params: ``[k, n]`` float32 CPU tensor.
        names: the ``len(shapes)`` parameter names, in the order concatenated.
        shapes: their shapes.
    """

    epochs: tuple[int, ...]
    params: torch.Tensor
    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]

    def unflatten(self, i: int) -> dict[str, torch.Tensor]:
        """Snapshot ``i`` as a name -> tensor dict (views into :attr:`params`)."""
        out, offset = {}, 0
        for name, shape in zip(self.names, self.shapes, strict=True):
            k = math.prod(shape)
            out[name] = self.params[i, offset : offset + k].view(shape)
            offset += k
        return out

    def mismatch(self, model: nn.Module, needed: Sequence[str] | None = None) -> str | None:
        """How ``model`` does not match the parameters recorded here, or None when it does.

        ``needed``: the model's parameters the snapshots must hold (a measure's
        coordinates); by default its trainable ones, what training records, in order.
        The answer completes a sentence about the model: ``"does not match the
        trajectory's parameter names: the trajectory records 'fc.weight', which the
        model lacks"``.
        """
        own = {n: tuple(p.shape) for n, p in model.named_parameters()}
        trained = [n for n, p in model.named_parameters() if p.requires_grad]
        want = list(trained if needed is None else needed)
        recorded = dict(zip(self.names, self.shapes, strict=True))
        names = "does not match the trajectory's parameter names: "
        if lacked := [n for n in recorded if n not in own]:
            return f"{names}the trajectory records {_some(lacked)}, which the model lacks"
        if unrecorded := [n for n in want if n not in recorded]:
            return f"{names}the trajectory does not record the model's {_some(unrecorded)}"
        if needed is None and (frozen := [n for n in recorded if n not in want]):
            return (
                f"{names}the trajectory records {_some(frozen)}, which the model does not "
                "train (requires_grad=False)"
            )
        if other := [n for n in recorded if own[n] != recorded[n]]:
            return (
                f"does not match the trajectory's parameter shapes: the model's {other[0]!r} "
                f"has shape {list(own[other[0]])}, the trajectory records "
                f"{list(recorded[other[0]])}"
            )
        if needed is None and list(recorded) != want:
            return f"{names}the model orders its parameters otherwise than the trajectory"
        return None


def _some(names: list[str]) -> str:
    """``'a'``, or ``'a' (and 2 more)``: the first of some parameter names."""
    more = f" (and {len(names) - 1} more)" if len(names) > 1 else ""
    return f"{names[0]!r}{more}"


def _snapshot_due(epoch: int, every: int, n_epochs: int) -> bool:
    """Whether a snapshot is kept after ``epoch`` (0 = initialisation)."""
    return epoch == 0 or epoch % every == 0 or epoch == n_epochs


def _flat(params: list[torch.Tensor]) -> torch.Tensor:
    """The flat float32 CPU vector of ``params`` (a copy)."""
    return torch.cat([p.detach().reshape(-1).to("cpu", torch.float32) for p in params])


def _int_list(v: Any) -> bool:
    return isinstance(v, (list, tuple)) and all(
        isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in v
    )


def _trajectory_problem(saved: Any) -> str | None:
    """What is wrong with the structure of a ``trajectory.pt``'s contents, or None.

    It must be a dict with ``names`` (distinct strings), ``shapes`` (one list of
    non-negative ints per name), ``epochs`` (increasing non-negative ints) and
    ``params``, a floating-point ``[len(epochs), total size of shapes]`` tensor.
    """
    if not isinstance(saved, Mapping):
        return f"it holds a {type(saved).__name__}, not a dict"
    missing = [k for k in ("epochs", "params", "names", "shapes") if k not in saved]
    if missing:
        return f"it lacks {', '.join(missing)}"
    names, shapes, epochs, params = (saved[k] for k in ("names", "shapes", "epochs", "params"))
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        return "names is not a list of parameter names"
    if len(set(names)) != len(names):
        return "names repeats a parameter name"
    if not isinstance(shapes, (list, tuple)) or not all(_int_list(s) for s in shapes):
        return "shapes is not a list of shapes (lists of non-negative integers)"
    if len(shapes) != len(names):
        return f"it records {len(names)} names but {len(shapes)} shapes"
    if not _int_list(epochs) or not epochs or list(epochs) != sorted(set(epochs)):
        return "epochs is not an increasing list of non-negative epochs"
    if not torch.is_tensor(params) or not params.is_floating_point() or params.ndim != 2:
        return "params is not a 2-D floating-point tensor"
    want = (len(epochs), sum(math.prod(s) for s in shapes))
    if tuple(params.shape) != want:
        return (
            f"params has shape {list(params.shape)}, but its {len(epochs)} epochs and the "
            f"shapes of its {len(names)} parameters make {list(want)}"
        )
    return None


def _as_trajectory(saved: Mapping[str, Any]) -> Trajectory:
    return Trajectory(
        epochs=tuple(int(e) for e in saved["epochs"]),
        params=saved["params"],
        names=tuple(saved["names"]),
        shapes=tuple(tuple(int(d) for d in s) for s in saved["shapes"]),
    )


class _Sink(Protocol):
    def save_trajectory(self, content: dict[str, Any]) -> None: ...


class Snapshots:
    """The trajectory being recorded; with a run directory (``sink``), each new snapshot is saved."""

    def __init__(self, model: nn.Module, sink: _Sink | None = None) -> None:
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.params = [p for _, p in named]
        self.names = [n for n, _ in named]
        self.shapes = [list(p.shape) for p in self.params]
        self.sink = sink
        self.epochs: list[int] = []
        self.rows: list[torch.Tensor] = []

    def resume(self, saved: Mapping[str, Any] | None, epoch: int, expected: list[int]) -> bool:
        """Reload the snapshots up to ``epoch`` from a saved trajectory; False if it lacks them."""
        if saved is None or _trajectory_problem(saved) is not None:
            return False
        if list(saved["names"]) != self.names or [list(s) for s in saved["shapes"]] != self.shapes:
            return False  # another model's snapshots: train afresh
        keep = [i for i, e in enumerate(saved["epochs"]) if e <= epoch]
        if [saved["epochs"][i] for i in keep] != expected:
            return False
        self.epochs = list(expected)
        self.rows = [saved["params"][i].clone() for i in keep]
        return True

    def take(self, epoch: int) -> None:
        self.epochs.append(epoch)
        self.rows.append(_flat(self.params))
        if self.sink is not None:
            self.sink.save_trajectory(self.content())

    def content(self) -> dict[str, Any]:
        """What ``trajectory.pt`` holds besides the run identity."""
        return {
            "epochs": list(self.epochs),
            "params": torch.stack(self.rows),
            "names": list(self.names),
            "shapes": self.shapes,
        }

    def trajectory(self) -> Trajectory:
        return _as_trajectory(self.content())
