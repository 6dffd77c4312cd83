"""A small zoo of models every evaluation engine is proved on (see tests/objective).

Each case is tiny (a few hundred parameters, 40 examples, float64) and says which
engine the Objective's plan should choose for it, so a change of the detection
shows as a changed plan, not only as a slower test.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

N_EXAMPLES = 40
CLASSES = 3


@dataclass(frozen=True)
class Case:
    """A model, its data and loss, and the engine its plan should choose."""

    name: str
    build: Callable[[], nn.Module]  # a fresh float64 model, seeded
    inputs: Callable[[torch.Generator], torch.Tensor]  # N_EXAMPLES inputs
    plan: str  # "chain", "first_layer" or "plain"
    batchnorm: bool = False  # has BatchNorm layers (the BatchNorm engine applies)

    def data(self, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        x = self.inputs(g)
        y = torch.randint(0, CLASSES, (N_EXAMPLES,), generator=g)
        return x, y

    def model(self, seed: int = 0) -> nn.Module:
        state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        try:
            return self.build().double()
        finally:
            torch.random.set_rng_state(state)


def _features(g: torch.Generator) -> torch.Tensor:
    return torch.randn(N_EXAMPLES, 6, generator=g, dtype=torch.float64)


def _mlp() -> nn.Module:
    return nn.Sequential(
        nn.Flatten(), nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 7), nn.ReLU(), nn.Linear(7, CLASSES)
    )


def _cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 3 * 3, CLASSES))


class Residual(nn.Module):
    """``out(h + fc2(h))``: a skip connection, no chain."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(6, 6)
        self.fc2 = nn.Linear(6, 6)
        self.out = nn.Linear(6, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.fc1(x))
        return self.out(h + self.fc2(h))


def _tied() -> nn.Module:
    model = nn.Sequential(
        nn.Linear(6, 5),
        nn.ReLU(),
        nn.Linear(5, 5),
        nn.ReLU(),
        nn.Linear(5, 5),
        nn.Linear(5, CLASSES),
    )
    model[4].weight = model[2].weight  # one tensor under two names
    return model


def _hooked() -> nn.Module:
    model = _mlp()
    model[3].register_forward_hook(lambda mod, args, out: out * 2)
    return model


def _embedding() -> nn.Module:
    return nn.Sequential(nn.Embedding(11, 4), nn.Flatten(), nn.ReLU(), nn.Linear(12, CLASSES))


def _batchnorm() -> nn.Module:
    model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, CLASSES))
    with torch.no_grad():  # statistics that are not the initial (0, 1)
        model[1].running_mean.uniform_(-0.5, 0.5)
        model[1].running_var.uniform_(0.5, 2.0)
    return model.eval()


def _dropout() -> nn.Module:
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, CLASSES)).eval()


ZOO: tuple[Case, ...] = (
    Case("mlp", _mlp, _features, "chain"),
    Case("cnn", _cnn, lambda g: torch.randn(N_EXAMPLES, 1, 5, 5, generator=g), "chain"),
    Case("residual", Residual, _features, "first_layer"),
    Case("tied", _tied, _features, "plain"),
    Case("hooks", _hooked, _features, "first_layer"),
    Case(
        "embedding",
        _embedding,
        lambda g: torch.randint(0, 11, (N_EXAMPLES, 3), generator=g),
        "chain",
    ),
    Case("batchnorm_eval", _batchnorm, _features, "first_layer", batchnorm=True),
    Case("dropout_eval", _dropout, _features, "chain"),
)
