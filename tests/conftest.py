"""Shared closed-form problems for the tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn


class LinearRegression:
    """MSE linear regression: L(w) = mean((Xw − y)²) has Hessian A = 2XᵀX/N.

    ``model`` sits at the least-squares minimiser w*, so
    ``L(w* + δ) − L(w*) = ½ δᵀAδ`` exactly.
    """

    def __init__(self, n: int = 5, d: int = 4, seed: int = 0, noise: float = 0.3):
        g = torch.Generator().manual_seed(seed)
        self.X = torch.randn(n * 10, d, generator=g, dtype=torch.float64)
        self.X[:, 0] *= 3.0  # anisotropic curvature
        w_true = torch.randn(d, 1, generator=g, dtype=torch.float64)
        self.y = self.X @ w_true + noise * torch.randn(n * 10, 1, generator=g, dtype=torch.float64)
        self.w_star = torch.linalg.lstsq(self.X, self.y).solution
        self.A = 2 * self.X.T @ self.X / len(self.X)
        self.model = nn.Linear(d, 1, bias=False).double()
        with torch.no_grad():
            self.model.weight.copy_(self.w_star.T)
        self.loss_fn = nn.MSELoss()
        self.L_star = float(((self.X @ self.w_star - self.y) ** 2).mean())

    def loss(self, w: torch.Tensor) -> float:
        return float(((self.X @ w.reshape(-1, 1) - self.y) ** 2).mean())


@pytest.fixture
def one_thread():
    """One thread, as each rank of the distributed tests has (the last bits of a matrix
    product may depend on the thread count)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def linreg() -> LinearRegression:
    return LinearRegression()


def small_mlp(seed: int = 0, d_in: int = 6, n_classes: int = 3, n: int = 50):
    g = torch.Generator().manual_seed(seed)
    torch_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Flatten(),
        nn.Linear(d_in, 8),
        nn.Tanh(),
        nn.Linear(8, 7),
        nn.ReLU(),
        nn.Linear(7, n_classes),
    ).double()
    torch.random.set_rng_state(torch_state)
    X = torch.randn(n, 1, d_in, generator=g, dtype=torch.float64)
    y = torch.randint(0, n_classes, (n,), generator=g)
    return model, X, y


@pytest.fixture
def mlp():
    return small_mlp()


class Quadratic(nn.Module):
    """``L(θ) = ½ θᵀAθ`` for any data: a saddle when ``A`` is indefinite."""

    def __init__(self, A: torch.Tensor, theta: torch.Tensor):
        super().__init__()
        self.register_buffer("A", A)
        self.theta = nn.Parameter(theta.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (0.5 * self.theta @ self.A @ self.theta).expand(len(x))


def mean_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return out.mean()


@pytest.fixture(scope="session")
def small_lr_batch(tmp_path_factory) -> tuple[Path, list]:
    """The demo's study (``basinscope run``: the lr × batch grid) made small: 4 runs of 30
    epochs on 200 digits, 5×5 surfaces with test data, the Hessian measure (λ_max, trace,
    spectrum), the direction spread (3 seeds of 11×11 planes), the interpolations and
    correlations. Returns (study directory, reports)."""
    from basinscope import experiments
    from basinscope.experiments import MeasureConfig, run_study

    study = experiments.STUDIES["lr-batch"](epochs=30, train_size=200, batch_sizes=(100, 20))
    study.measure = MeasureConfig(grid_size=5, noise_samples=4, radius=0.5, spread_grid=11)
    out = tmp_path_factory.mktemp("small-lr-batch")
    reports = run_study(study, out, progress=False)
    return out / "lr-batch", reports
