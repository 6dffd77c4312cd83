"""Grokking: sharpness and basin volume along a run that memorises, then generalises.

``grokking`` trains the causal transformer (GPT-2's pre-norm decoder, one block) on
modular addition ``a + b ≡ c (mod p)`` with AdamW's decoupled weight decay, full batch,
well past memorisation (Power et al. 2022; Nanda et al. 2023), keeps weight snapshots
along the run and measures at each one (:func:`~basinscope.experiments.measure_along`)
train/test accuracy, ``λ_max(∇²L)``, ``tr ∇²L``, ε-sharpness and the basin volume
(Fan, Sandlund & Ko connect basin volume to grokking). The summary gives each measure
at memorisation (the first snapshot with train accuracy ``≥ 0.99``), at the jump of
the test accuracy (:func:`basinscope.plots.accuracy_jump`) and at the end.

The default modulus is ``p = 31`` with half of the table for training
(``modular-add:p=31,train_fraction=0.5``): at the dataset's own default, ``p = 97`` and
30 %, one step of the transformer takes about 0.4 s on a 2-core CPU and grokking needs
~10⁴ steps.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any

from .._io import atomic_write_json
from ..errors import BasinscopeError
from ..training import TrainConfig
from ._along import AlongSettings, AlongTraining, LambdaMaxSettings, TraceSettings, measure_along
from ._runner import Study
from ._summary import RunReport

MEMORISED = 0.99
"""Train accuracy from which a run counts as having memorised its training set."""

# series of AlongTraining -> its label in the summary (what moves, and how it is read)
GROKKING_SERIES = {
    "train_acc": "train accuracy",
    "test_acc": "test accuracy",
    "train_loss": "train loss",
    "test_loss": "test loss",
    "lambda_max": "λ_max",
    "hessian_trace": "tr H",
    "epsilon_sharpness": "ε-sharpness",
    "log_volume": "log volume",
}
ALONG_SETTINGS = AlongSettings(
    lambda_max=LambdaMaxSettings(tol=1e-3, max_products=200),
    hessian_trace=TraceSettings(rtol=0.1, min_probes=10, max_products=30),
)
"""The measures' settings of the study: Lanczos to a relative 10⁻³, Hutchinson to 10 %."""


def grokking_study(
    *,
    p: int = 31,
    train_fraction: float = 0.5,
    steps: int = 900,
    snapshot_every: int = 50,
    lr: float = 3e-3,
    weight_decay: float = 1.0,
    d_model: int = 64,
    n_heads: int = 4,
    seed: int = 0,
    device: str = "cpu",
    dataset: str | None = None,
    data_dir: str | None = None,
    epochs: int | None = None,
    settings: AlongSettings = ALONG_SETTINGS,
    **overrides: Any,
) -> Study:
    """Modular addition mod ``p`` with a one-block transformer and AdamW, full batch.

    Every optimizer step is one epoch (the batch is the whole training set), so
    ``steps`` (or ``epochs``) is the run length and a snapshot is kept every
    ``snapshot_every`` steps. ``dataset`` replaces the written table (e.g.
    ``modular-add``: ``p = 97``, 30 %); ``settings`` are those of the measures.
    """
    for name, v in (("steps", steps), ("snapshot_every", snapshot_every), ("d_model", d_model)):
        if not (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
            raise BasinscopeError(f"the grokking {name} must be a positive integer, got {v!r}")
    if dataset is None:
        dataset = f"modular-add:p={p},train_fraction={train_fraction}"
    cfg = TrainConfig(
        dataset=dataset,
        data_dir=data_dir,
        standardize=False,  # token ids, not measurements
        model="transformer",
        model_kwargs={"d_model": d_model, "n_heads": n_heads, "n_layers": 1},
        optimizer="adamw",
        lr=lr,
        weight_decay=weight_decay,
        batch_size=10**6,  # the whole training set: one step per epoch
        epochs=epochs or steps,
        snapshot_every=snapshot_every,
        eval_every_epoch=False,
        seed=seed,
        device=device,
        **overrides,
    )
    return Study(
        name="grokking",
        runs={"grokking": cfg},
        description="sharpness and basin volume along a run that groks (Power et al. 2022)",
        measures=(),
        finish=functools.partial(_grokking_finish, settings=settings),
    )


def _grokking_finish(
    study: Study, reports: list[RunReport], root: Path, *, settings: AlongSettings
) -> str:
    """Measure along the run, draw the figure, write ``grokking.json``; the summary text."""
    from .. import plots

    report = reports[0]
    if report.diverged:
        return f"\nThe run diverged ({report.message}); nothing was measured along it.\n"
    along = measure_along(
        root / report.name,
        out=root / report.name / "along",
        settings=settings,
        device=report.config.device,
    )
    plots.plot_along(
        along.to_dict(),
        root / "figures" / "grokking.png",
        title="grokking: measures along training",
    )
    events = grokking_events(along)
    atomic_write_json(root / "grokking.json", events)
    return grokking_markdown(events)


def _first_at_least(steps: tuple[int, ...], values: list[Any], level: float) -> int | None:
    """The first step whose value is ``≥ level`` (``None`` if none is)."""
    return next(
        (s for s, v in zip(steps, values, strict=True) if v is not None and v >= level), None
    )


def grokking_events(along: AlongTraining) -> dict[str, Any]:
    """Each measure at memorisation, at the test-accuracy jump and at the end.

    Memorisation is the first snapshot with train accuracy ``≥`` :data:`MEMORISED`;
    the jump is ``along.jump`` (:func:`basinscope.plots.accuracy_jump` of the test
    accuracy). ``direction`` compares the value at the jump with that at memorisation
    and the end with the jump (``up``, ``down``; ``flat`` within 5 % of the larger).
    """
    steps = along.steps
    at = {
        "memorised": _first_at_least(steps, along.series["train_acc"], MEMORISED),
        "jump": along.jump,
        "end": steps[-1],
    }
    values: dict[str, dict[str, Any]] = {}
    for key in GROKKING_SERIES:
        if key not in along.series:
            continue
        series = dict(zip(steps, along.series[key], strict=True))
        v = {name: (None if s is None else series.get(s)) for name, s in at.items()}
        v["direction"] = [
            _direction(v["memorised"], v["jump"]),
            _direction(v["jump"], v["end"]),
        ]
        values[key] = v
    return {"steps": at, "delay": _delay(at), "values": values}


def _delay(at: dict[str, Any]) -> int | None:
    return at["jump"] - at["memorised"] if None not in (at["jump"], at["memorised"]) else None


def _direction(a: Any, b: Any) -> str | None:
    if a is None or b is None or not (math.isfinite(a) and math.isfinite(b)):
        return None
    if abs(b - a) <= 0.05 * max(abs(a), abs(b)):
        return "flat"
    return "up" if b > a else "down"


def grokking_markdown(events: dict[str, Any]) -> str:
    """The summary's grokking section: when it memorised and jumped, and each measure then."""
    at = events["steps"]
    if at["jump"] is None:
        head = (
            f"Memorised (train accuracy ≥ {MEMORISED}) at step {at['memorised']}; the test "
            f"accuracy did not jump by step {at['end']} (no grokking: train longer).\n"
        )
    else:
        head = (
            f"Memorised (train accuracy ≥ {MEMORISED}) at step {at['memorised']}; test "
            f"accuracy jumped at step {at['jump']} ({events['delay']} steps later); end at "
            f"step {at['end']}.\n"
        )
    lines = [
        "\n## Grokking: what moves before, at and after the jump\n",
        head,
        "| measure | at memorisation | at the jump | at the end | memorised → jump | jump → end |",
        "|---|---|---|---|---|---|",
    ]
    for key, v in events["values"].items():
        cells = [_num(v[k]) for k in ("memorised", "jump", "end")]
        arrows = [d or "n/a" for d in v["direction"]]
        lines.append(f"| {GROKKING_SERIES[key]} | " + " | ".join(cells + arrows) + " |")
    lines.append(
        "\nFigure: figures/grokking.png (accuracy, loss and every measure against the step, "
        "the jump dotted). ε-sharpness: ε = 0.25 on a filter-normalised plane; log volume: "
        "the relative basin L − L(θ) ≤ 0.1. Direction: flat within 5 %.\n"
    )
    return "\n".join(lines)


def _num(v: Any) -> str:
    return "n/a" if v is None else f"{v:.4g}"
