"""Function-preserving reparametrisations, to test which measures are invariant.

A ReLU network computes the same function after one layer's weight and bias
are multiplied by ``α > 0`` and the next affine layer's weight is divided by
``α``, because what lies between them is positively homogeneous,
``σ(αz) = α·σ(z)`` (Dinh et al. 2017, "Sharp minima can generalize for deep
nets"). Such a rescaling can make the Hessian and any measure in a fixed
Euclidean ball arbitrarily large or small without changing a single
prediction. :func:`rescale` builds the rescaled network; :func:`compare_measures`
computes the sharpness suite (:func:`basinscope.sharpness.suite`) before and after
and reports which measures stayed put:

* adaptive worst-case and adaptive average-case sharpness (``T = |θ0|``, Kwon
  et al. 2021) and the loss along a filter-normalised direction (Li et al. 2018)
  are invariant: the rescaling multiplies θ0, the ball and the direction by the
  same diagonal matrix;
* L2 worst-case, plain average-case sharpness and λ_max of the Hessian are not.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import numbers
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from .. import sharpness
from .._checks import check_positive
from ..errors import BasinscopeError
from ..objective import Objective
from ..sharpness import SUITE_MEASURES, SuiteConfig

# Layers whose weight (and bias) is rescaled, and which may receive the division.
_AFFINE: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)

# Modules f with f(αz) = α f(z) for α > 0 (dropout too: a mask times 1/(1−p)).
_HOMOGENEOUS_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.LeakyReLU,
    nn.PReLU,
    nn.Identity,
    nn.Flatten,
    nn.Unflatten,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
)
_HOMOGENEOUS_FUNCTIONS = {
    torch.relu,
    F.relu,
    F.leaky_relu,
    torch.flatten,
    F.max_pool1d,
    F.max_pool2d,
    F.max_pool3d,
    F.avg_pool1d,
    F.avg_pool2d,
    F.avg_pool3d,
    F.adaptive_max_pool1d,
    F.adaptive_max_pool2d,
    F.adaptive_max_pool3d,
    F.adaptive_avg_pool1d,
    F.adaptive_avg_pool2d,
    F.adaptive_avg_pool3d,
    F.dropout,
}
_HOMOGENEOUS_METHODS = {"relu", "flatten", "view", "reshape", "contiguous", "unflatten"}
_SHAPE_READS = {"size", "dim"}  # methods that read the shape only

_ACCEPTED = "ReLU, LeakyReLU, PReLU, identity, max/average pooling, flatten/reshape or dropout"


def _describe(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    if node.op == "call_module":
        return f"{type(modules[node.target]).__name__} ({node.target})"
    if node.op == "output":
        return "the network's output"
    return getattr(node.target, "__name__", str(node.target))


def _reads_shape(node: fx.Node) -> bool:
    return (node.op == "call_method" and node.target in _SHAPE_READS) or (
        node.op == "call_function" and node.target is getattr and node.args[1:] == ("shape",)
    )


def _homogeneous(node: fx.Node, source: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return isinstance(modules[node.target], _HOMOGENEOUS_MODULES)
    if node.op == "call_function":
        ok = node.target in _HOMOGENEOUS_FUNCTIONS
    elif node.op == "call_method":
        ok = node.target in _HOMOGENEOUS_METHODS
    else:
        return False
    return ok and bool(node.args) and node.args[0] is source


def _next_layer(model: nn.Module, layer: str) -> str:
    """The module name of the affine layer that receives ``layer``'s (rescaled) output."""
    modules = dict(model.named_modules())
    names = [n for n, m in modules.items() if isinstance(m, _AFFINE)]
    if layer not in names:
        listed = ", ".join(names[:12]) or "none"
        raise BasinscopeError(
            f"layer {layer!r} is not a Linear or Conv module of this model; "
            f"layers by module name: {listed}"
        )
    try:
        graph = fx.symbolic_trace(model).graph
    except Exception as e:  # any tracing failure means the structure is unknown
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BasinscopeError(
            f"the model could not be traced with torch.fx ({first}); rescale supports "
            "models whose forward is a fixed chain of modules, such as nn.Sequential"
        ) from e
    calls = [n for n in graph.nodes if n.op == "call_module"]
    own = [n for n in calls if n.target == layer]
    if len(own) != 1:
        raise BasinscopeError(
            f"layer {layer!r} runs {len(own)} times in one forward pass; rescale needs it once"
        )
    node = own[0]
    while True:
        users = [u for u in node.users if not _reads_shape(u)]
        if len(users) != 1:
            what = "nothing" if not users else "several operations (a branch or a residual)"
            raise BasinscopeError(
                f"the output of layer {layer!r} feeds {what}; rescale needs a single chain "
                f"of {_ACCEPTED} up to the next Linear or Conv layer"
            )
        (user,) = users
        if user.op == "output":
            raise BasinscopeError(
                f"layer {layer!r} is the network's last affine layer; rescale needs a "
                "later Linear or Conv layer to divide by alpha"
            )
        if user.op == "call_module" and isinstance(modules[user.target], _AFFINE):
            if user.args[:1] != (node,) or sum(1 for n in calls if n.target == user.target) != 1:
                raise BasinscopeError(
                    f"layer {user.target!r} after {layer!r} is shared or takes other inputs; "
                    "rescale needs it to run once, on the rescaled output alone"
                )
            return str(user.target)
        if not _homogeneous(user, node, modules):
            raise BasinscopeError(
                f"layer {layer!r} is followed by {_describe(user, modules)}, which is not "
                f"positively homogeneous; only {_ACCEPTED} may lie between the two layers"
            )
        node = user


def rescale(model: nn.Module, layer: str, alpha: float) -> nn.Module:
    """A copy of ``model`` with ``layer`` scaled by α and the next affine layer by 1/α.

    ``W_l ← α W_l``, ``b_l ← α b_l``, ``W_{next} ← W_{next}/α`` (``b_{next}``
    unchanged). The network's function is unchanged when every operation
    between the two layers is positively homogeneous (ReLU, LeakyReLU, PReLU,
    identity, max/average pooling, flatten/reshape, dropout), which is checked
    on the model's ``torch.fx`` graph: ``layer``'s output must flow through a
    single chain of such operations into exactly one Linear/Conv layer. Works
    for ``nn.Sequential`` networks and the built-in :class:`~basinscope.training.MLP`
    and :class:`~basinscope.training.SmallCNN` (e.g. ``layer="net.1"``).

    Args:
        model: the network; it is deep-copied and never modified.
        layer: the module name of an ``nn.Linear`` or ``nn.Conv1d/2d/3d``, as in
            ``model.named_modules()``.
        alpha: the factor, a positive finite number.

    Returns:
        The rescaled copy (same mode, device and dtype).

    Raises:
        BasinscopeError: unknown layer, last layer, a non-homogeneous operation
            (tanh, sigmoid, GELU, BatchNorm, ...) or a branch after it, or a bad α.
    """
    if (
        isinstance(alpha, bool)
        or not isinstance(alpha, numbers.Real)
        or not math.isfinite(alpha)
        or alpha <= 0
    ):
        raise BasinscopeError(f"alpha must be a positive finite number, got {alpha!r}")
    if not isinstance(model, nn.Module):
        raise BasinscopeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    following = _next_layer(model, layer)
    out = copy.deepcopy(model)
    first, second = out.get_submodule(layer), out.get_submodule(following)
    with torch.no_grad():
        first.weight.mul_(alpha)
        if first.bias is not None:
            first.bias.mul_(alpha)
        second.weight.div_(alpha)
    _check_rescaled(model, out, layer, following, alpha)
    return out


def _check_rescaled(model: nn.Module, out: nn.Module, layer: str, following: str, alpha: float):
    """Refuse an α whose rescaled weights overflow (α·W to ±inf) or underflow (W/α to 0)
    in their dtype: the copy would no longer compute the same function."""
    for name, scaled in ((layer, "·α"), (following, "/α")):
        before, after = model.get_submodule(name), out.get_submodule(name)
        for p_name, p in after.named_parameters(recurse=False):
            old = getattr(before, p_name)
            overflow = not bool(torch.isfinite(p).all()) and bool(torch.isfinite(old).all())
            underflow = bool(((p == 0) & (old != 0)).any())
            if overflow or underflow:
                kind = "overflows to ±inf" if overflow else "underflows to 0"
                raise BasinscopeError(
                    f"alpha = {alpha:g} is too {'large' if (scaled == '·α') == overflow else 'small'}"
                    f": {name}.{p_name}{scaled} {kind} in {str(p.dtype).removeprefix('torch.')}; "
                    "choose an alpha nearer 1"
                )


# ------------------------------------------------------------ invariance check
@dataclass(frozen=True)
class MeasureChange:
    """One measure before and after a reparametrisation.

    ``rel_change = |after − before| / max(|before|, |after|)`` (0 when both are 0);
    ``invariant`` when it is at most the tolerance.
    """

    before: float
    after: float
    rel_change: float
    invariant: bool


MEASURES = SUITE_MEASURES
"""The measures :func:`compare_measures` reports, in order: the whole sharpness suite
(:data:`basinscope.sharpness.SUITE_MEASURES`, its one key vocabulary)."""

# How the keyword settings of measure_suite/compare_measures map onto SuiteConfig.
# ``samples`` is both the noise draws and the PAC-Bayes draws, and the L∞ ball is
# ``radius / 100`` unless ``linf_radius`` is given, as these settings always meant.
_SETTINGS = frozenset(f.name for f in dataclasses.fields(SuiteConfig))


def suite_config(**settings: Any) -> SuiteConfig:
    """The :class:`~basinscope.sharpness.SuiteConfig` of :func:`measure_suite`'s keyword
    settings (``radius``, ``adaptive_radius``, ``sigma``, ``adaptive_sigma``,
    ``samples``, ``steps``, ``restarts``, ``line_steps``, ``seed``, and any other field
    of the config): ``linf_radius`` defaults to ``radius / 100`` and ``pac_samples``
    to ``samples``."""
    unknown = sorted(set(settings) - _SETTINGS)
    if unknown:
        raise BasinscopeError(
            f"unknown suite setting {unknown[0]!r}; use one of {', '.join(sorted(_SETTINGS))}"
        )
    derived = {}
    if "radius" in settings and "linf_radius" not in settings:
        derived["linf_radius"] = settings["radius"] / 100
    if "samples" in settings and "pac_samples" not in settings:
        derived["pac_samples"] = settings["samples"]
    return SuiteConfig(**{**derived, **settings})


def measure_suite(
    obj: Objective, config: SuiteConfig | None = None, **settings: Any
) -> dict[str, float]:
    """The headline numbers of :func:`basinscope.sharpness.suite` at ``obj``'s θ0.

    ``config`` or the keyword ``settings`` of :func:`suite_config` (not both); the
    defaults are :class:`~basinscope.sharpness.SuiteConfig`'s. Keys are
    :data:`MEASURES`: ``worst_case_l2``, ``worst_case_linf`` (L∞ ball of ``radius /
    100``), ``worst_case_adaptive`` (``T = |θ0|``), ``average_case``,
    ``average_case_adaptive``, ``keskar`` (ε = 1e-3), ``pac_bayes`` and
    ``pac_bayes_mag`` (Jiang et al.'s σ', plain and magnitude-aware; the latter is
    invariant up to its ε² floor and Monte-Carlo ties), ``lambda_max``,
    ``hessian_trace`` and ``filter_line`` (``max_t L(θ0 + t d) − L(θ0)`` along a
    filter-normalised random direction, Li et al. 2018). A non-finite loss at θ0 is
    refused before the first measure.
    """
    if config is not None and settings:
        raise BasinscopeError("give the suite's settings as a SuiteConfig or as keywords, not both")
    config = suite_config(**settings) if config is None else config
    return sharpness.suite_values(sharpness.suite(obj, config))


def compare_measures(
    before: Objective,
    after: Objective,
    *,
    rtol: float = 1e-3,
    config: SuiteConfig | None = None,
    **settings: Any,
) -> dict[str, MeasureChange]:
    """:func:`measure_suite` at two Objectives, and which measures did not change.

    Typical use, for the CLI's ``basinscope sharpness --rescale LAYER ALPHA``::

        a = bs.Objective(model, loss_fn, data)
        b = bs.Objective(rescale(model, "net.1", 10.0), loss_fn, data)
        table = compare_measures(a, b)   # {"lambda_max": MeasureChange(...), ...}

    Args:
        before, after: the Objectives (same loss, data and parameter names).
        rtol: the largest relative change still called invariant (> 0; float32
            networks round to ~1e-6, and the ascent may take a different step
            when two candidates tie to rounding).
        config: the suite's settings (:class:`~basinscope.sharpness.SuiteConfig`), or
        **settings: passed to :func:`measure_suite` (``radius``, ``sigma``, ``seed``...).
    """
    rtol = check_positive("rtol", rtol)
    a = measure_suite(before, config, **settings)
    b = measure_suite(after, config, **settings)
    out = {}
    for name in MEASURES:
        scale = max(abs(a[name]), abs(b[name]))
        rel = abs(b[name] - a[name]) / scale if scale > 0 else 0.0
        out[name] = MeasureChange(
            before=a[name], after=b[name], rel_change=rel, invariant=rel <= rtol
        )
    return out
