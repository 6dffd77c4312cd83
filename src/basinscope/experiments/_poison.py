"""Basin volume, sharpness and test accuracy against label poisoning (Huang et al. 2020)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import BasinscopeError
from ._common import VOLUME_NOTE, _ok, _step_runs
from ._measures import MeasureConfig
from ._runner import Study
from ._summary import RunReport


def poison_study(
    *,
    dataset: str = "digits",
    fractions: tuple[float, ...] = (0.0, 0.1, 0.2, 0.4),
    steps: int = 3000,
    lr: float = 0.1,
    batch_size: int = 32,
    seed: int = 0,
    device: str = "cpu",
    epochs: int | None = None,
    **overrides: Any,
) -> Study:
    """Clean data against growing fractions of deliberately mislabelled examples.

    Poisoning as in Huang et al. (2020): each poisoned label is a wrong class.
    Reports per fraction the basin volume on the (poisoned) training data, the
    sharpness measures and test accuracy on clean test data.
    """
    for f in fractions:
        if not (isinstance(f, int | float) and 0 <= f < 1):
            raise BasinscopeError(f"poison fractions must lie in [0, 1), got {f}")
    runs = _step_runs(
        {f"poison-{f:g}": {"label_noise": float(f)} for f in sorted(fractions)},
        dataset=dataset,
        lr=lr,
        batch_size=batch_size,
        seed=seed,
        device=device,
        steps=steps,
        epochs=epochs,
        **overrides,
    )
    return Study(
        name="poison",
        runs=runs,
        description="basin volume, sharpness and test accuracy against label poisoning",
        # Poisoned runs do not reach a near-zero loss in the same budget, so the
        # basin is measured relative to each run's own minimum.
        measure=MeasureConfig(volume_rule="relative"),
        measures=("volume", "surface"),
        finish=_poison_finish,
    )


def _poison_finish(study: Study, reports: list[RunReport], root: Path) -> str:
    """Volume and test accuracy against the poisoned fraction."""
    from .. import plots

    ok = _ok(reports)
    for r in reports:
        r.values["label_noise"] = r.config.label_noise
    if len(ok) >= 2:
        x = [r.config.label_noise for r in ok]
        plots.plot_xy(
            x,
            {"log V": [r.values["log_volume"] for r in ok]},
            root / "figures" / "volume_vs_poison.png",
            xlabel="fraction of mislabelled training examples",
            ylabel="log basin volume",
        )
        plots.plot_xy(
            x,
            {"test accuracy": [r.final.get("test_acc") for r in ok]},
            root / "figures" / "test_acc_vs_poison.png",
            xlabel="fraction of mislabelled training examples",
            ylabel="test accuracy",
        )
    return VOLUME_NOTE
