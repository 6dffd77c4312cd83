"""Measures along training: accuracy, loss and each measure against the optimizer step.

:func:`plot_training` draws the curves of a run's snapshots (one panel for the
train/test accuracy with the loss on a twin axis, one panel per measure below,
all on one shared step axis) and marks the step where the test accuracy jumps,
:func:`accuracy_jump`: the first snapshot from which on the accuracy stays at
or above halfway between its first and its last value (Power et al. 2022 call
the late jump of the test accuracy, long after the training accuracy, grokking).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ..errors import BasinscopeError
from ._style import _figure, _finite, _save, choose_log_scale

JUMP_MIN_RISE = 0.1
"""The smallest rise of accuracy (last − first) that :func:`accuracy_jump` calls a jump."""


def _floats(values: Sequence[float | None], what: str) -> np.ndarray:
    """``values`` as a float64 array, ``None`` (not measured) as NaN."""
    try:
        return np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)
    except (TypeError, ValueError):
        raise BasinscopeError(f"{what} must be a sequence of numbers (or None)") from None


def _steps(steps: Sequence[float], n: int | None = None, what: str = "the values") -> np.ndarray:
    """The step axis, checked: finite, increasing, ``n`` long when given."""
    s = _floats(steps, "steps")
    if s.ndim != 1 or not np.isfinite(s).all():
        raise BasinscopeError("steps must be a 1-D sequence of finite numbers")
    if len(s) > 1 and not (np.diff(s) > 0).all():
        raise BasinscopeError("steps must increase from one snapshot to the next")
    if n is not None and len(s) != n:
        raise BasinscopeError(f"there are {len(s)} steps but {n} values of {what}")
    return s


def accuracy_jump(
    steps: Sequence[float], acc: Sequence[float | None], *, min_rise: float = JUMP_MIN_RISE
) -> float | int | None:
    """The step at which the accuracy jumps, or ``None`` when it does not rise.

    With ``a_0`` and ``a_T`` the first and last finite accuracies, the jump is at
    the first snapshot ``i`` with ``a_j ≥ (a_0 + a_T) / 2`` for every ``j ≥ i``:
    the midpoint of the rise, crossed for good (a transient spike before the real
    rise does not count, nor does noise after it). No jump (``None``) when fewer
    than two snapshots have a finite accuracy or ``a_T − a_0 < min_rise``.

    Args:
        steps: ``[k]`` increasing steps (or epochs) of the snapshots.
        acc: ``[k]`` accuracies in [0, 1]; ``None`` or NaN entries are skipped.
        min_rise: the smallest rise that counts as a jump (default 0.1, ten points).

    Returns:
        The element of ``steps`` at the jump (an ``int`` for integer steps).
    """
    a = _floats(acc, "acc")
    _steps(steps, len(a), "acc")  # checked: finite, increasing, one per accuracy
    keep = np.isfinite(a)
    s_kept, a = np.asarray(steps, dtype=object)[keep], a[keep]
    if len(a) < 2 or a[-1] - a[0] < min_rise:
        return None
    level = 0.5 * (a[0] + a[-1])
    below = np.flatnonzero(a < level)  # the last point below the midpoint, if any
    first = int(below[-1]) + 1 if below.size else 0
    value = s_kept[first]
    return value.item() if isinstance(value, np.generic) else value


def _draw_top(ax, x, accuracy, loss) -> list:
    """Accuracy on ``ax`` (left axis, [0, 1]) and loss on a twin axis; their handles."""
    handles = []
    for i, (name, values) in enumerate(accuracy.items()):
        (h,) = ax.plot(x, _floats(values, name), "o-", ms=3, color=f"C{i}", label=f"{name} acc")
        handles.append(h)
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.02, 1.02)
    if loss:
        twin = ax.twinx()
        curves = [_floats(v, k) for k, v in loss.items()]
        log = choose_log_scale(np.concatenate(curves))
        for i, (name, values) in enumerate(zip(loss, curves, strict=True)):
            (h,) = twin.plot(
                x, values, "s--", ms=3, lw=1, color=f"C{i}", alpha=0.6, label=f"{name} loss"
            )
            handles.append(h)
        if log:
            twin.set_yscale("log")
        twin.set_ylabel("loss (log scale)" if log else "loss")
    return handles


def _draw_measure(ax, x, name: str, values: np.ndarray, errors: np.ndarray | None) -> None:
    """One measure's curve on its own panel; a log scale when it spans decades."""
    log = choose_log_scale(values)
    if not _finite(values).size:
        ax.text(0.5, 0.5, "n/a (not computed)", ha="center", va="center", transform=ax.transAxes)
    elif errors is not None:
        ax.errorbar(x, values, yerr=np.abs(errors), fmt="o-", ms=3, capsize=2, color="C2")
    else:
        ax.plot(x, values, "o-", ms=3, color="C2")
    if log:
        ax.set_yscale("log")
    ax.set_ylabel(f"{name}\n(log scale)" if log else name, fontsize="small")


def plot_training(
    steps: Sequence[float],
    path: str | Path,
    *,
    accuracy: Mapping[str, Sequence[float | None]],
    loss: Mapping[str, Sequence[float | None]] | None = None,
    measures: Mapping[str, Sequence[float | None]] | None = None,
    errors: Mapping[str, Sequence[float | None]] | None = None,
    xlabel: str = "step",
    jump: float | None = None,
    title: str | None = None,
) -> Path:
    """Accuracy, loss and measures of a run's snapshots against the step, in stacked panels.

    The top panel holds ``accuracy`` (e.g. ``{"train": [...], "test": [...]}``, in
    [0, 1]) and, on a twin axis, ``loss``; each entry of ``measures`` (label ->
    values, ``None`` or NaN where not computed) gets a panel below, on a log scale
    labelled as such when its values are positive and span more than two decades
    (:func:`~basinscope.plots.choose_log_scale`); ``errors`` (label -> standard
    errors) adds error bars to those measures. ``jump`` (a step, see
    :func:`accuracy_jump`) is marked by a dotted vertical line on every panel.

    Returns:
        The path written.
    """
    measures = dict(measures or {})
    if not accuracy and not measures:
        raise BasinscopeError("plot_training got nothing to draw: give accuracy or measures")
    x = _steps(steps)
    for name, values in [*accuracy.items(), *(loss or {}).items(), *measures.items()]:
        if len(values) != len(x):
            raise BasinscopeError(f"there are {len(x)} steps but {len(values)} values of {name}")
    unknown = sorted(set(errors or {}) - set(measures))
    if unknown:
        raise BasinscopeError(f"errors names {unknown}, which are not among the measures")
    panels = int(bool(accuracy)) + len(measures)
    fig = _figure((6.4, 1.0 + 2.0 * panels))
    axes = fig.subplots(panels, 1, sharex=True, squeeze=False)[:, 0]
    handles = _draw_top(axes[0], x, accuracy, loss) if accuracy else []
    for ax, (name, values) in zip(axes[int(bool(accuracy)) :], measures.items(), strict=True):
        err = (errors or {}).get(name)
        _draw_measure(
            ax, x, name, _floats(values, name), None if err is None else _floats(err, name)
        )
    if jump is not None:
        for ax in axes:
            line = ax.axvline(float(jump), color="black", ls=":", lw=1)
        line.set_label(f"test accuracy jump ({xlabel} {jump:g})")
        handles.append(line)
    if handles:
        axes[0].legend(handles=handles, fontsize="x-small", loc="best")
    axes[-1].set_xlabel(xlabel)
    axes[0].set_title(title or f"along training ({len(x)} snapshots)")
    return _save(fig, path)


_MEASURE_LABELS = {
    "lambda_max": "λ_max",
    "hessian_trace": "tr H (Hutchinson)",
    "epsilon_sharpness": "ε-sharpness",
    "log_volume": "log basin volume",
}


def plot_along(record: Mapping, path: str | Path, *, title: str | None = None) -> Path:
    """Draw the measures of a run along training: ``record`` is
    :meth:`basinscope.experiments.AlongTraining.to_dict` (or the ``along.json`` it is
    written to). Accuracy and loss on top, one panel per measure (``tr H`` with its
    standard error), the test-accuracy jump marked (:func:`plot_training`)."""
    try:
        s, settings, steps = dict(record["series"]), record.get("settings", {}), record["steps"]
    except (KeyError, TypeError):
        raise BasinscopeError("plot_along needs a record with steps and series") from None
    labels = dict(_MEASURE_LABELS)
    if "epsilon" in settings:
        labels["epsilon_sharpness"] = f"ε-sharpness (ε = {settings['epsilon']['radius']:g})"
    if "volume" in settings:
        v = settings["volume"]
        labels["log_volume"] = f"log volume ({v['rule']} τ = {v['threshold']:g})"
    measured = [k for k in _MEASURE_LABELS if k in s]

    def curves(kind: str) -> dict[str, Sequence[float | None]]:
        found = {k: s.get(f"{k}_{kind}") for k in ("train", "test")}
        return {k: v for k, v in found.items() if v is not None and any(x is not None for x in v)}

    return plot_training(
        steps,
        path,
        accuracy=curves("acc"),
        loss=curves("loss"),
        measures={labels[k]: s[k] for k in measured},
        errors={labels["hessian_trace"]: s["hessian_trace_se"]} if "hessian_trace" in s else None,
        xlabel=record.get("x_unit", "step"),
        jump=record.get("jump"),
        title=title or f"{Path(str(record.get('run_dir', 'run'))).name}: measures along training",
    )
