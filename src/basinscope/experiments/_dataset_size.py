"""Basin volume against the amount of training data (Fan, Sandlund & Ko).

``dataset-size``: the same model trained on nested subsets of the data, each
minimum's basin volume on its own and on every other size's landscape, the
power-law fit of ``log V`` against ``log(size)``, and the plane through three minima.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .._io import atomic_write_json
from ..errors import BasinscopeError
from ._caches import model_fingerprint, objective_key, own_file, study_key
from ._common import VOLUME_NOTE, _ok, _step_runs
from ._measures import MeasureConfig, cached_volume, train_objective
from ._runner import Study
from ._summary import RunReport, _fmt

if TYPE_CHECKING:
    from ..landscape import Surface


def dataset_size_study(
    *,
    dataset: str = "digits",
    sizes: tuple[float, ...] = (0.05, 0.1, 0.3, 1.0),
    steps: int = 3000,
    lr: float = 0.1,
    batch_size: int = 32,
    seed: int = 0,
    device: str = "cpu",
    epochs: int | None = None,
    **overrides: Any,
) -> Study:
    """The same model trained on nested subsets of the data (Fan, Sandlund & Ko).

    Every run takes the same number of optimizer steps (so smaller sets are not
    under-trained), on nested seeded subsets (``data_seed`` is shared), without
    standardisation so that every landscape sees the same inputs. Each minimum's
    basin volume is measured on its own training data and on every other size's
    (the cross-landscape matrix), and ``log V`` is fitted against ``log(size)``.
    ``epochs`` is accepted for CLI symmetry and, if given, replaces ``steps``.
    """
    for f in sizes:
        count = isinstance(f, int | float) and f > 1 and float(f).is_integer()
        if not (count or (isinstance(f, int | float) and 0 < f <= 1)):
            raise BasinscopeError(
                f"dataset sizes must be fractions in (0, 1] or whole counts above 1, got {f}"
            )
    runs = _step_runs(
        {f"size-{f:g}": {"train_size": _train_size(f)} for f in sorted(sizes)},
        dataset=dataset,
        lr=lr,
        batch_size=batch_size,
        seed=seed,
        device=device,
        steps=steps,
        epochs=epochs,
        standardize=False,
        **overrides,
    )
    return Study(
        name="dataset-size",
        runs=runs,
        description="basin volume against training-set size (Fan, Sandlund & Ko)",
        measures=("volume",),
        finish=_dataset_size_finish,
        finish_settings=("grid_size",),  # the plane through three minima
    )


def _train_size(f: float) -> int | float | None:
    """A study size as a TrainConfig ``train_size``: all, a fraction, or a count."""
    return None if f == 1 else (int(f) if f > 1 else float(f))


def _dataset_size_finish(study: Study, reports: list[RunReport], root: Path) -> str:
    """Cross-landscape volume matrix, the power-law fit and their figures."""
    from scipy import stats

    from .. import plots

    fig = root / "figures"
    done = [r for r in reports if not r.diverged]
    for r in done:
        r.values["n_train"] = len(r.data.y_train)
    matrix = np.full((len(done), len(done)), np.nan)
    for i, r in enumerate(done):
        for j, other in enumerate(done):
            own = other is r  # the diagonal is the run's own volume.json
            path = root / r.name / ("volume.json" if own else f"volume_on_{other.name}.json")
            res = cached_volume(r.model, other.data, study.measure, path, r.config.device)
            matrix[i, j] = np.nan if res.get("log_volume") is None else res["log_volume"]
    names = [r.name for r in done]
    atomic_write_json(
        root / "cross_landscape.json", {"rows": names, "cols": names, "log_volume": matrix.tolist()}
    )
    text = (
        VOLUME_NOTE
        + "\n## Cross-landscape log volume\n\nrow: model trained on; column: landscape.\n\n"
    )
    text += "| model \\ landscape | " + " | ".join(names) + " |\n|---|" + "---|" * len(names) + "\n"
    for name, row in zip(names, matrix, strict=True):
        text += f"| {name} | " + " | ".join(_fmt(float(v), "{:.1f}") for v in row) + " |\n"
    if done:
        plots.plot_matrix(
            matrix,
            names,
            names,
            fig / "cross_landscape.png",
            title="log basin volume",
            label="log V",
            xlabel="landscape (training data)",
            ylabel="model trained on",
        )
    text += _fan_plane(done, study.measure, root)
    ok = _ok(done)
    if len(ok) >= 2:
        sizes = np.array([r.values["n_train"] for r in ok], dtype=np.float64)
        logv = np.array([r.values["log_volume"] for r in ok])
        fit = stats.linregress(np.log(sizes), logv)
        atomic_write_json(
            root / "fit.json",
            {
                "slope": fit.slope,
                "intercept": fit.intercept,
                "r2": fit.rvalue**2,
                "sizes": sizes.tolist(),
                "log_volume": logv.tolist(),
            },
        )
        plots.plot_xy(
            sizes,
            {"log V (own landscape)": logv},
            fig / "volume_vs_size.png",
            xlabel="training examples",
            ylabel="log basin volume",
            logx=True,
            fit=(fit.slope, fit.intercept),
        )
        plots.plot_xy(
            sizes,
            {"test accuracy": [r.final.get("test_acc") for r in ok]},
            fig / "test_acc_vs_size.png",
            xlabel="training examples",
            ylabel="test accuracy",
            logx=True,
        )
        text += (
            f"\nPower-law fit on the own landscapes: log V = {fit.intercept:.2f} + "
            f"{fit.slope:.2f}·log(size), R² = {fit.rvalue**2:.3f}.\n"
        )
    return text


def _fan_plane(done: list[RunReport], m: MeasureConfig, root: Path) -> str:
    """Fan, Sandlund & Ko's Fig. 1: the plane through the minima trained on the most,
    a middle and the least data, on the landscape of the least data and on that of
    the most, side by side on one colour scale.

    The plane is defined by the three models' weights alone, so both files hold the
    same marks, coordinates and grid; only the loss evaluated on them differs.
    ``plane_three_sizes.h5`` is the largest set's landscape,
    ``plane_three_sizes_smallest.h5`` the smallest set's, and
    ``plane_three_sizes.json`` the losses at the three minima on each, which of them
    are low (the volume threshold's basin) and the common colour range.
    """
    from .. import plots

    distinct = {r.values["n_train"]: r for r in done}  # one run per training-set size
    if len(distinct) < 3:
        return ""
    chosen = [distinct[k] for k in sorted(distinct, reverse=True)]
    models = (chosen[0], chosen[len(chosen) // 2], chosen[-1])
    big, small = models[0], models[-1]
    labels = tuple(f"{r.values['n_train']} ex." for r in models)
    try:
        surfs = {  # the largest set's first, as the study wrote it before
            "full": _plane_on(big, models, labels, m, root / "plane_three_sizes.h5"),
            "smallest": _plane_on(small, models, labels, m, root / "plane_three_sizes_smallest.h5"),
        }
    except BasinscopeError as exc:  # e.g. two sizes gave the same minimum
        return f"\nNo plane through three minima: {exc}.\n"
    full = "full" if big.config.train_size is None else "largest"
    titles = {"smallest": f"{labels[2]} (smallest)", "full": f"{labels[0]} ({full})"}
    panels = {f"landscape of {titles[k]}": surfs[k] for k in ("smallest", "full")}
    zrange = plots.common_zrange(panels.values(), "train_loss")
    plots.plot_grid(
        panels,
        root / "figures" / "plane_three_sizes.png",
        zrange=zrange,
        suptitle=f"train loss on the plane through the minima from {', '.join(labels)}",
    )
    losses = {
        k: [(lab, float(v)) for lab, v in surfs[k].attrs["mark_losses"]]
        for k in ("smallest", "full")
    }
    low = {k: _low(v, m) for k, v in losses.items()}
    pattern = len(low["smallest"]) == 3 and low["full"] == [labels[0]]
    atomic_write_json(
        root / "plane_three_sizes.json",
        {
            "labels": list(labels),
            "landscapes": {
                k: {"n_train": r.values["n_train"], "train_loss": losses[k], "low": low[k]}
                for k, r in (("smallest", small), ("full", big))
            },
            "threshold": m.volume_threshold,
            "rule": m.volume_rule,
            "zrange": list(zrange),
            "paper_pattern": pattern,
        },
    )
    return _fan_text(losses, low, labels, titles, pattern, m)


def _plane_on(
    landscape: RunReport,
    models: tuple[RunReport, RunReport, RunReport],
    labels: tuple[str, ...],
    m: MeasureConfig,
    path: Path,
) -> Surface:
    """The plane through ``models`` on ``landscape``'s training data, resumable in
    ``path`` (keyed by the three models' weights, that data's objective and the grid)."""
    from ..landscape import three_model_plane

    obj = train_objective(landscape.model, landscape.data, landscape.config.device)
    key = study_key(model_fingerprint(*(r.model for r in models)), objective_key(obj), m.grid_size)
    return three_model_plane(
        obj,
        tuple(r.model for r in models),
        labels=labels,
        steps=m.grid_size,
        path=path,
        attrs=own_file(path, key),
    )


def _low(losses: list[tuple[str, float]], m: MeasureConfig) -> list[str]:
    """The minima that lie in a basin by the study's volume rule: train loss ≤ τ
    (absolute), or within τ of the lowest of them (relative)."""
    floor = min(v for _, v in losses) if m.volume_rule == "relative" else 0.0
    return [lab for lab, v in losses if v - floor <= m.volume_threshold]


def _fan_text(
    losses: dict[str, list[tuple[str, float]]],
    low: dict[str, list[str]],
    labels: tuple[str, ...],
    titles: dict[str, str],
    pattern: bool,
    m: MeasureConfig,
) -> str:
    """The summary section: the losses at the three minima on each landscape and
    whether they show Fan et al.'s picture."""
    rule = (
        f"train loss ≤ τ = {m.volume_threshold:g}, the volume threshold"
        if m.volume_rule == "absolute"
        else f"train loss within τ = {m.volume_threshold:g} of the lowest of the three, "
        "the relative volume rule"
    )
    text = "\n## The plane through three minima (Fan et al., Fig. 1)\n\n"
    for k in ("smallest", "full"):
        text += (
            f"On the landscape of {titles[k]}, the train loss at the minima "
            + ", ".join(f"trained on {lab}: {v:.4f}" for lab, v in losses[k])
            + f"; low: {', '.join(low[k]) or 'none'} ({rule}).\n\n"
        )
    verdict = "show" if pattern else "do not show"
    return text + (
        f"These numbers {verdict} the paper's picture (all three minima low on the "
        f"smallest set's landscape, only the one trained on {labels[0]} on the "
        f"largest set's): {len(low['smallest'])} of 3 are low on the smallest set's "
        f"landscape and {len(low['full'])} of 3 on the largest set's. "
        "Figure: figures/plane_three_sizes.png (one colour scale for both panels).\n"
    )
