"""The ``policy`` study: are sharp policy optima fragile when the environment changes?

The seed's claim: "sharp policy optima can cause fragile policies that collapse when
the environment changes slightly — PPO's trust region implicitly favours flatter
optima". REINFORCE (with a baseline) and PPO train the same MLP on CartPole-v1 over
several seeds (:func:`basinscope.policy.train_policy`). Each trained policy is then
measured on the negative return over fixed evaluation episodes
(:func:`basinscope.policy.return_objective`, common random numbers):

* its filter-normalised return surface (Li et al. 2018; ``surface.h5``) and the
  ε-sharpness read off it (the largest return drop within ε);
* the noise sharpness of the return ``E[G(θ) − G(θ + σz)]`` ± SE;
* the basin volume ``{θ : G(θ0) − G(θ) ≤ τ}`` (relative rule, Fan et al.);
* its robustness: the mean return when the pole length, the pole mass and gravity
  are each scaled by 0.5 … 2 (:data:`PERTURBATIONS`; Sullivan et al. 2022 draw
  reward surfaces of such policies).

Kendall's τ between each flatness measure and the robustness across the runs, and
the algorithms' means, answer the claim in ``summary.md`` — whatever the numbers say.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .._io import atomic_write_json, atomic_write_text
from .._results import to_json
from ..errors import BasinscopeError
from ..landscape import basin_volume, plane, random_directions
from ._caches import _cached_json, model_fingerprint, own_file, study_key
from ._measures import MeasureConfig, _quiet_coarse
from ._runner import Study

PERTURBATIONS = {
    "length": (0.5, 0.75, 1.5, 2.0),
    "masspole": (0.5, 2.0, 5.0),
    "gravity": (0.5, 1.5, 2.0),
}
"""CartPole parameters scaled (×) for the robustness test; the nominal run is ×1."""

EVAL_SEED = 10_000  # evaluation episodes start at reset(seed=10000 + i): unseen in training


def policy_study(
    *,
    seeds: tuple[int, ...] = (0, 1, 2),
    iterations: int = 30,
    episodes: int = 16,
    seed: int = 0,
    device: str = "cpu",
    epochs: int | None = None,
    **unused: Any,
) -> Study:
    """REINFORCE against PPO on CartPole over ``seeds`` (offset by ``seed``).

    ``iterations`` of 16 training episodes each (``epochs``, the CLI's ``--epochs``,
    replaces it when given); each trained policy is measured on ``episodes`` fixed
    evaluation episodes. ``device`` is accepted for CLI symmetry (the study runs on
    the CPU: its networks are tiny).
    """
    if unused:
        raise BasinscopeError(
            f"the policy study takes no {', '.join(sorted(unused))} (it trains on CartPole)"
        )
    iterations = epochs if epochs is not None else iterations
    runs = {
        f"{algo}_s{seed + s}": {"algorithm": algo, "seed": seed + s, "iterations": iterations}
        for algo in ("reinforce", "ppo")
        for s in seeds
    }
    study = Study(
        name="policy",
        runs={},
        measure=MeasureConfig(grid_size=21, sigma=0.1, radius=0.25, volume_threshold=50.0,
                              volume_rule="relative", volume_directions=16, noise_samples=16),
        description="REINFORCE against PPO on CartPole: are sharp policy optima fragile?",
        finish_settings=("grid_size", "span", "radius", "sigma", "noise_samples",
                         "volume_threshold", "volume_directions", "direction_seed"),
    )  # fmt: skip
    study.extra = {"runs": runs, "episodes": episodes}
    study.run = _run_policy_study
    return study


def _policy_net(seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    net = nn.Sequential(nn.Linear(4, 32), nn.Tanh(), nn.Linear(32, 2))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.empty_like(p).uniform_(-0.5, 0.5, generator=g) / math.sqrt(p.shape[-1]))
    return net


def _run_policy_study(study: Study, root: Path, progress: bool) -> list[dict[str, Any]]:
    """Train, measure and report every run (each step cached or resumable)."""
    from ..policy import CartPole

    atomic_write_json(root / "study.json", {**study.to_dict(), "runs": study.extra["runs"]})
    rows = []
    for name, spec in study.extra["runs"].items():
        if progress:
            print(f"[policy] {name}: training", flush=True)
        rows.append(_one_policy(study, root / name, name, spec, CartPole, progress))
    _report(study, rows, root)
    return rows


def _one_policy(
    study: Study, out: Path, name: str, spec: dict, env_cls: Any, progress: bool
) -> dict:
    from .. import sharpness
    from ..policy import CartPoleParams, return_objective, return_stats, train_policy

    run = train_policy(
        _policy_net(spec["seed"]), env_cls(), algorithm=spec["algorithm"],
        iterations=spec["iterations"], lr=1e-2, seed=spec["seed"], out_dir=out,
    )  # fmt: skip
    m, e = study.measure, study.extra["episodes"]
    obj = return_objective(run.policy, env_cls(), episodes=e, seed=EVAL_SEED)
    mean, se = return_stats(obj, obj.theta0)
    digest = study_key(model_fingerprint(run.policy), e, m.grid_size, m.span, m.direction_seed)
    d = random_directions(obj, 2, norm="filter", seed=m.direction_seed)
    surf = plane(obj, d[0], d[1], span=m.span, steps=m.grid_size, path=out / "surface.h5",
                 attrs={"quantity": "negative return", **own_file(out / "surface.h5", digest)},
                 progress=progress)  # fmt: skip
    settings = {k: getattr(m, k) for k in study.finish_settings} | {"key": digest}

    def compute() -> dict[str, Any]:
        noise = sharpness.average_case(obj, m.sigma, samples=m.noise_samples, seed=m.noise_seed)
        eps = _quiet_coarse(lambda: to_json(sharpness.from_surface(surf, m.radius)))
        try:
            vol = basin_volume(obj, m.volume_threshold, n_directions=m.volume_directions,
                               rule="relative", seed=m.direction_seed).to_dict()  # fmt: skip
        except BasinscopeError as exc:
            vol = {"log_volume": None, "reason": str(exc)}
        robust = {}
        for field, scales in PERTURBATIONS.items():
            for k in scales:
                base = getattr(CartPoleParams(), field)
                params = dataclasses.replace(CartPoleParams(), **{field: base * k})
                changed = return_objective(run.policy, env_cls(params), episodes=e, seed=EVAL_SEED)
                robust[f"{field}×{k:g}"] = -changed.loss()
        return {"noise": noise.value, "noise_se": noise.stderr, "eps": eps["value"], "eps_coarse": eps["coarse"],
                "log_volume": vol.get("log_volume"), "robust": robust}  # fmt: skip

    got = _cached_json(out / "measures.json", settings, compute)
    return {
        "run": name, "algorithm": spec["algorithm"], "seed": spec["seed"],
        "train_return": run.final_return, "return": float(mean[0]), "return_se": float(se[0]),
        "noise_sharpness": got["noise"], "noise_sharpness_se": got["noise_se"],
        "eps_sharpness": got["eps"], "log_volume": got["log_volume"],
        "robustness": float(np.mean(list(got["robust"].values()))), "robust": got["robust"],
        "surface": surf,
    }  # fmt: skip


_FLATNESS = {  # measure, and whether a larger value means flatter
    "noise_sharpness": ("noise sharpness (return drop under σ-noise)", False),
    "eps_sharpness": ("ε-sharpness (largest return drop within ε)", False),
    "log_volume": ("log basin volume (return drop ≤ τ)", True),
}


def _report(study: Study, rows: list[dict], root: Path) -> None:
    """summary.csv/md, the figures, report.html; Kendall's τ of flatness vs robustness."""
    from scipy import stats

    from .. import plots
    from ._report import html_report

    cols = ["run", "algorithm", "seed", "train_return", "return", "return_se", "noise_sharpness",
            "noise_sharpness_se", "eps_sharpness", "log_volume", "robustness"]  # fmt: skip
    csv = (
        ",".join(cols)
        + "\n"
        + "".join(",".join("" if r[c] is None else str(r[c]) for c in cols) + "\n" for r in rows)
    )
    atomic_write_text(root / "summary.csv", csv)
    fmt = lambda v: "n/a" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))  # noqa: E731
    text = (
        "| " + " | ".join(c.replace("_", " ") for c in cols) + " |\n|" + "---|" * len(cols) + "\n"
    )
    text += "".join("| " + " | ".join(fmt(r[c]) for c in cols) + " |\n" for r in rows)
    m = study.measure
    text += (
        f"\nReturn: mean undiscounted return of the greedy policy over {study.extra['episodes']} "
        f"evaluation episodes (± SE). Noise sharpness: mean return drop under weight noise "
        f"σ = {m.sigma} ({m.noise_samples} samples); ε-sharpness: the largest return drop "
        f"within ε = {m.radius} on the filter-normalised plane; log volume: return drop ≤ "
        f"{m.volume_threshold:g}; robustness: the mean return over CartPole with "
        + "; ".join(f"{k} ×{', ×'.join(f'{s:g}' for s in v)}" for k, v in PERTURBATIONS.items())
        + ".\n\n## Is flatness robustness?\n\n| measure | Kendall τ with robustness | p | runs |\n|---|---|---|---|\n"
    )
    verdicts, taus = [], {}
    for key, (label, flat_large) in _FLATNESS.items():
        pairs = [(r[key], r["robustness"]) for r in rows if r[key] is not None]
        if len(pairs) >= 3:
            tau, p = stats.kendalltau(*zip(*pairs, strict=True))
            taus[key] = (float(tau), float(p))
            text += f"| {label} | {tau:+.2f} | {p:.2g} | {len(pairs)} |\n"
            holds = (tau > 0) == flat_large if math.isfinite(tau) else None
            verdicts.append(
                f"{label}: {'flatter went with more robust' if holds else 'no support' if holds is None else 'flatter went with LESS robust'} (τ = {tau:+.2f}, p = {p:.2g})"
            )
    by = {a: [r for r in rows if r["algorithm"] == a] for a in ("reinforce", "ppo")}
    mean = lambda a, k: float(np.mean([r[k] for r in by[a] if r[k] is not None]))  # noqa: E731
    text += (
        "\n**Measured answer.** "
        + "; ".join(verdicts)
        + f". PPO against REINFORCE (mean over seeds): noise sharpness {mean('ppo', 'noise_sharpness'):.3g} "
        f"vs {mean('reinforce', 'noise_sharpness'):.3g}, robustness {mean('ppo', 'robustness'):.1f} "
        f"vs {mean('reinforce', 'robustness'):.1f}, nominal return {mean('ppo', 'return'):.1f} vs "
        f"{mean('reinforce', 'return'):.1f}. With {len(rows)} runs the τ's p-values say how much "
        "weight the answer can bear.\n"
    )
    atomic_write_text(root / "summary.md", text)
    atomic_write_json(
        root / "robustness.json", {r["run"]: r["robust"] for r in rows} | {"kendall": taus}
    )
    fig = root / "figures"
    surfaces = {r["run"]: r["surface"] for r in rows}
    zr = plots.common_zrange(surfaces.values())
    plots.plot_grid(surfaces, fig / "grid_contour.png", zrange=zr, ncols=len(rows) // 2,
                    suptitle="negative return (lower is better) on each policy's plane")  # fmt: skip
    plots.plot_bars({r["run"]: r["noise_sharpness"] for r in rows}, fig / "sharpness_noise.png",
                    errors={r["run"]: r["noise_sharpness_se"] for r in rows},
                    ylabel=f"mean return drop (σ = {m.sigma})", title="noise sharpness of the return")  # fmt: skip
    plots.plot_bars({r["run"]: r["robustness"] for r in rows}, fig / "robustness.png",
                    ylabel="mean return, changed physics", title="robustness (higher = more robust)")  # fmt: skip
    html_report(root)
