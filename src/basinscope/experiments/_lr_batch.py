"""The learning-rate × batch-size studies (Keskar et al. 2017; Jiang et al. 2019).

* ``lr-batch`` — the classic 4-run grid: high/low learning rate × large/small batch,
  with the interpolation between their minima (Keskar et al.'s Fig. 3) and whether the
  runs' ranking by sharpness holds for every direction seed.
* ``lr-batch-grid`` — 3 learning rates × 3 batch sizes × 2 seeds, for the rank
  correlation of every measure with the generalisation gap (Jiang et al. 2019).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .._keys import tensor_digest
from ..landscape import interpolate
from ._caches import model_fingerprint, objective_key, own_file, study_key
from ._common import _mlp_run
from ._measures import MeasureConfig, train_objective
from ._runner import Study
from ._summary import RunReport


def lr_batch_grid(
    *,
    dataset: str = "digits",
    epochs: int = 100,
    seed: int = 0,
    device: str = "cpu",
    lrs: tuple[float, float] = (0.5, 0.1),
    batch_sizes: tuple[int, int] = (512, 16),
    **overrides: Any,
) -> Study:
    """The classic 4-run grid: {high, low} learning rate × {large, small} batch.

    Same model (an MLP), data, epochs and seed for all four; plain SGD, so the
    only differences are the step size and the gradient noise.
    """
    hi, lo = lrs
    large, small = batch_sizes
    runs = {}
    for lr_name, lr in (("high-lr", hi), ("low-lr", lo)):
        for bs_name, bs in (("large-batch", large), ("small-batch", small)):
            runs[f"{lr_name}_{bs_name}"] = _mlp_run(
                dataset=dataset,
                lr=lr,
                batch_size=bs,
                epochs=epochs,
                seed=seed,
                device=device,
                **overrides,
            )
    return Study(
        name="lr-batch",
        runs=runs,
        description="high/low learning rate × large/small batch (Keskar et al. 2017)",
        measures=("surface", "hessian", "spread"),
        finish=_lr_batch_finish,
    )


def _interpolation_pairs(reports: list[RunReport]) -> list[tuple[str, RunReport, RunReport]]:
    """(label, small-batch run, large-batch run) for each learning rate of the grid."""
    by_name = {r.name: r for r in reports if not r.diverged}
    pairs = []
    for name, r in by_name.items():
        if name.endswith("_small-batch"):
            prefix = name[: -len("_small-batch")]
            other = by_name.get(prefix + "_large-batch")
            if other is not None:
                pairs.append((prefix, r, other))
    return pairs


def _lr_batch_finish(study: Study, reports: list[RunReport], root: Path) -> str:
    """Keskar et al.'s Fig. 3: the line from the small-batch to the large-batch
    minimum, ``(1−α)θ_small + αθ_large`` for α ∈ [−0.5, 1.5], at each learning rate;
    then whether the runs' ranking by sharpness holds for every direction seed."""
    from .. import plots

    text = ""
    for label, small, large in _interpolation_pairs(reports):
        obj = train_objective(small.model, small.data, small.config.device)
        surf = interpolate(
            obj,
            large.model,
            span=(-0.5, 1.5),
            steps=41,
            test=(small.data.x_test, small.data.y_test),
            path=root / f"interpolation_{label}.h5",
            attrs=own_file(
                root / f"interpolation_{label}.h5",
                study_key(
                    model_fingerprint(small.model, large.model),
                    objective_key(obj),
                    tensor_digest(small.data.x_test, small.data.y_test),
                ),
            ),
            labels=("small batch", "large batch"),
        )
        plots.plot_line(
            surf,
            root / "figures" / f"interpolation_{label}.png",
            title=f"{label}: small-batch (α=0) to large-batch (α=1) minimum",
        )
        inside = (surf.xcoordinates >= 0) & (surf.xcoordinates <= 1)
        ends = max(
            surf.train_loss[surf.xcoordinates == 0][0], surf.train_loss[surf.xcoordinates == 1][0]
        )
        barrier = float(surf.train_loss[inside].max() - ends)
        left = float(surf.train_loss[surf.xcoordinates == -0.5][0])
        right = float(surf.train_loss[surf.xcoordinates == 1.5][0])
        text += (
            f"\n**{label}**, interpolation small → large batch: train-loss barrier between them "
            f"{barrier:.4f}; at α = −0.5 (beyond the small-batch minimum) the train loss is "
            f"{left:.4f}, at α = 1.5 (beyond the large-batch one) {right:.4f}. "
            f"Figure: figures/interpolation_{label}.png.\n"
        )
    from ._spread import ranking_text

    text = (
        ("\n## Interpolation between minima (Keskar et al. 2017, Fig. 3)\n" + text) if text else ""
    )
    return text + ranking_text(reports, root)


def lr_batch_grid_study(
    *,
    dataset: str = "digits",
    epochs: int = 60,
    lrs: tuple[float, ...] = (0.5, 0.2, 0.1),
    batch_sizes: tuple[int, ...] = (16, 64, 512),
    seeds: tuple[int, ...] = (0, 1),
    seed: int = 0,
    device: str = "cpu",
    **overrides: Any,
) -> Study:
    """Learning rate × batch size × seed (default 3 × 3 × 2 = 18 runs): the pool over
    which every measure's rank correlation with the generalisation gap is computed
    (Jiang et al. 2019). ``seed`` offsets the seeds."""
    runs = {}
    for lr in lrs:
        for bs in batch_sizes:
            for s in seeds:
                runs[f"lr{lr:g}_b{bs}_s{seed + s}"] = _mlp_run(
                    dataset=dataset,
                    lr=lr,
                    batch_size=bs,
                    epochs=epochs,
                    seed=seed + s,
                    device=device,
                    **overrides,
                )
    return Study(
        name="lr-batch-grid",
        runs=runs,
        description="which sharpness measure predicts the generalisation gap",
        measure=MeasureConfig(grid_size=11),
        measures=("surface", "hessian", "suite"),
    )
