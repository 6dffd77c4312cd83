"""Which engine evaluates an Objective's lines, planes and rays: :func:`make_plan`.

The model is probed once (a forward with hooks): is its first parametrised layer
one the first-layer shortcut applies to, and is the rest of it a chain the
batched chain executor runs? Each candidate engine is then checked against the
plain engine by one verifier (:func:`_verify`) before it is chosen. Where the
chain is refused, the vmap engine (any model, points batched by
``torch.func.vmap``) is verified too and timed against the engine the plan would
otherwise choose, on the first examples: it is chosen only when clearly faster
(``_vmap.faster``). The result, ``obj.plan``, names the engine that runs and, for
each faster one refused, why. Timings differ between processes, so
``make_plan(batches, engine=name)`` uses the named engine when it verifies, untimed:
every process of a distributed run uses rank 0's choice.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import BasinscopeError
from ._chain import ChainEngine, _Chain, _chain_step, _Step
from ._engine import Batches, Engine, PlainEngine
from ._first_layer import _LINEAR_LAYERS, FirstLayerEngine, _FirstLayer
from ._losses import CrossEntropy
from ._probes import _error_line
from ._tree import call, functional, take, tree_map
from ._vmap import faster, vmap_engine

# The engines a plan considers, fastest first (vmap: when timed faster than the
# first-layer shortcut or the plain engine).
_CANDIDATES = ("chain", "vmap", "first_layer", "plain")


@dataclass(frozen=True)
class Plan:
    """The engine an Objective evaluates ``θ0 + Σ_j c_j d_j`` with, and why faster ones
    were refused.

    Attributes:
        engine: the :class:`~basinscope.objective.Engine` that runs.
        refused: for each faster engine not used, the reason (``"tied weights"``,
            ``"residual or custom forward ..."``, ``"loss is not a plain
            cross-entropy"``, ``"verified but not faster here (0.80× the
            first_layer engine)"``, ...), fastest first.
    """

    engine: Engine
    refused: Mapping[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The engine's name: ``"chain"``, ``"vmap"``, ``"first_layer"`` or ``"plain"``."""
        return self.engine.name

    def __str__(self) -> str:
        why = "".join(f"; not {k}: {v}" for k, v in self.refused.items())
        return f"engine {self.name}{why}"


def make_plan(batches: Batches, *, engine: str | None = None) -> Plan:
    """Probe the model once, verify each candidate engine, choose the fastest that holds.

    A model with a ``points_engine()`` method (:class:`basinscope.policy.Rollout`: all
    points' episodes stepped at once) gets that engine when it verifies, else the plain
    one. Otherwise the chain engine when it applies; else the vmap engine when it verifies and its
    timing shows it clearly faster than the first-layer shortcut (or, where that is
    refused, the plain engine); else that one. Where that one is too quick to time
    (under 50 ms for 8 points on a chunk), vmap is not tried against it and goes
    unmentioned: the plans of small models do not depend on a timing.

    Args:
        engine: ``"chain"``, ``"vmap"``, ``"first_layer"`` or ``"plain"``: that engine
            when it verifies, nothing timed (the faster ones are "not tried"); when it
            does not, the chain, the first-layer shortcut or the plain engine as
            usual (untimed: vmap only runs when timed or named), with its reason.
    """
    own = getattr(batches.model, "points_engine", None)
    if callable(own):  # a model that evaluates many points itself (a policy's rollout)
        mine = own()
        why = _verify(mine, batches) if engine in (None, mine.name) else "not tried"
        if why is None:
            return Plan(mine)
        if engine is None:
            return Plan(PlainEngine(), {mine.name: why})
    if engine is not None:
        return _asked(batches, engine)
    refused: dict[str, str] = {}
    usual = _untimed(batches, refused)
    if usual.name == "chain":
        return Plan(usual, refused)
    vm = vmap_engine(batches)
    if isinstance(vm, str):
        refused["vmap"] = vm
        return _ordered(usual, refused)
    why = _verify(vm, batches)
    if why is None:
        why = faster(vm, usual, batches, _verification(batches)[1])
        if why is None:
            return _ordered(vm, refused)
    if why:  # "": the usual engine is too quick to time, vmap is no faster one refused
        refused["vmap"] = why
    return _ordered(usual, refused)


def _ordered(engine: Engine, refused: dict[str, str]) -> Plan:
    """The plan of ``engine`` with the reasons of the candidates before it, fastest first."""
    before = _CANDIDATES[: _CANDIDATES.index(engine.name)]
    return Plan(engine, {k: refused[k] for k in before if k in refused})


def _asked(batches: Batches, engine: str) -> Plan:
    """The plan of the engine named ``engine`` when it applies and verifies (the faster
    ones "not tried"), else of the untimed choice with why the named one was refused."""
    if engine not in _CANDIDATES:
        raise BasinscopeError(
            f"engine must be one of {', '.join(map(repr, _CANDIDATES))}, got {engine!r}"
        )
    asked = f"not tried (engine={engine!r} was asked for)"
    before = {k: asked for k in _CANDIDATES[: _CANDIDATES.index(engine)]}
    if engine == "plain":
        return Plan(PlainEngine(), before)
    found: dict[str, str] = {}
    if engine == "vmap":
        vm = vmap_engine(batches)
        why = vm if isinstance(vm, str) else _verify(vm, batches)
        if not isinstance(vm, str) and why is None:
            return Plan(vm, before)
        usual = _untimed(batches, found)
        found = dict(_ordered(usual, found).refused) | {"vmap": why}
    else:  # the chain falls back to the shortcut, the shortcut to the plain engine
        usual = _untimed(batches, found, chain=engine == "chain")
        if usual.name == engine:
            return Plan(usual, before)
    return Plan(usual, {k: found[k] for k in _CANDIDATES if k in found})


def _untimed(batches: Batches, refused: dict[str, str], chain: bool = True) -> Engine:
    """The chain engine, else the first-layer shortcut, else the plain engine: the first
    that applies and verifies (nothing timed), with why not the others in ``refused``.
    ``chain=False``: the chain is not tried."""
    first = _find_first_layer(batches)
    if isinstance(first, str):
        refused.update(chain="needs the first-layer shortcut", first_layer=first)
        return PlainEngine()
    shortcut = FirstLayerEngine(first)
    wrong = _verify(shortcut, batches)
    if wrong is not None:
        refused.update(chain="needs the first-layer shortcut", first_layer=wrong)
        return PlainEngine()
    if not chain:
        return shortcut
    found = _find_chain(batches, first)
    if isinstance(found, str):
        refused["chain"] = found
        return shortcut
    wrong = _targets_fit(batches, found.classes)
    batched = ChainEngine(first, found)
    if wrong is None:
        wrong = _verify(batched, batches, classes=found.classes)
    if wrong is not None:
        refused["chain"] = wrong
        return shortcut
    return batched


def _verification(batches: Batches, classes: int | None = None) -> tuple[Batches, Tensor]:
    """The verification data (the first 64 examples; with ``classes`` the targets are
    ``0, 1, 2, ...``, so every class occurs) and two directions of a tenth of ``|θ0|``."""
    g = torch.Generator().manual_seed(12345)
    theta0 = batches.theta0
    d = torch.randn(2, batches.space.n, generator=g).to(batches.device, batches.dtype)
    d *= theta0.norm() / (d.norm(dim=1, keepdim=True) * 10 + 1e-12)
    n = min(64, batches.n_examples)
    x = take(batches.x, slice(0, n))
    y = take(batches.y, slice(0, n)) if classes is None else torch.arange(n) % classes
    y = tree_map(lambda t: t.to(batches.device), y)
    return batches.on(x, y), d


def _verify(engine: Engine, batches: Batches, classes: int | None = None) -> str | None:
    """``engine`` against the plain engine on 64 examples and three points near θ0; None
    when they agree (to 1e-4 in low precision and float32, 1e-9 in float64), else why not.

    With ``classes`` the targets are ``0, 1, 2, ...`` (every class occurs), else the
    examples' own.
    """
    coef = torch.tensor([[0.3, -0.7], [-0.5, 0.0], [0.0, 0.0]], dtype=batches.dtype)
    coef = coef.to(batches.device)
    try:
        sub, d = _verification(batches, classes)
        fast = engine.evaluate(sub, coef, d, batches.theta0)[0]
        plain = PlainEngine().evaluate(sub, coef, d, batches.theta0)[0]
    except Exception as err:
        return f"fails on the verification points ({_error_line(err)})"
    low = batches.dtype in (torch.float16, torch.bfloat16, torch.float32)
    tol = 1e-4 if low else 1e-9
    if not bool(torch.allclose(fast, plain, rtol=tol, atol=tol)):
        return "does not agree with the plain engine on the verification points"
    return None


def _find_first_layer(batches: Batches) -> _FirstLayer | str:
    """The first parametrised layer if the shortcut applies to it, else why not.

    It applies when: no tensor is tied; the layer is the first module with
    parameters that runs; it is a Linear/Conv/Embedding with only weight (and
    bias); it runs once per forward; and its input does not depend on any
    parameter. The plan then checks it numerically against the plain engine.
    """
    model = batches.model
    # Tied parameters (one tensor under several names) are one coordinate of the
    # space but act in several places: a precomputed part of the network would
    # freeze the copies it holds. No fast path for them.
    named_all = list(model.named_parameters(remove_duplicate=False))
    if len(named_all) != len(list(model.named_parameters())):
        return "tied weights"
    calls: list[tuple[str, nn.Module, bool]] = []
    handles = []
    for path, module in model.named_modules():
        if any(True for _ in module.parameters(recurse=False)):

            def hook(mod: nn.Module, args: tuple, path: str = path) -> None:
                dependent = any(torch.is_tensor(a) and a.requires_grad for a in args)
                calls.append((path, mod, dependent))

            handles.append(module.register_forward_pre_hook(hook))
    try:
        params = {k: v.clone().requires_grad_(True) for k, v in model.named_parameters()}
        with torch.enable_grad():
            functional(model, params, take(batches.x, slice(0, 2)))
    except Exception as err:
        return f"the probe forward fails ({_error_line(err)})"
    finally:
        for h in handles:
            h.remove()
    if not calls:
        return "no parametrised layer runs"
    path, module, dependent = calls[0]
    own = dict(module.named_parameters(recurse=False))
    if dependent:
        return "a parameter acts before the first layer"
    if type(module) not in _LINEAR_LAYERS:
        return f"first layer is not Linear/Conv/Embedding ({type(module).__name__})"
    if sum(1 for c in calls if c[0] == path) != 1:
        return "the first layer runs more than once"
    if not set(own) <= {"weight", "bias"} or getattr(module, "max_norm", None) is not None:
        return "the first layer has more than a weight and a bias (or an Embedding max_norm)"
    prefix = f"{path}." if path else ""
    return _FirstLayer(
        path=path,
        weight=prefix + "weight",
        bias=prefix + "bias" if own.get("bias") is not None else None,
    )


def _find_chain(batches: Batches, first: _FirstLayer) -> _Chain | str:
    """The modules after the first layer, if they form a chain the batched engine runs.

    Found by running the model once with a hook on every leaf module: each
    module after the first layer must take exactly the previous module's
    output (the same tensor object) and nothing else, run once, be one of
    the supported types, and the model must return the last module's
    output. Every parametrised module must be in the chain. Hooks of the
    user's own make the model a custom one: no chain. The plan then checks
    the chain numerically against the plain engine.
    """
    if not _plain_cross_entropy(batches.loss_fn):
        return "loss is not a plain cross-entropy"
    if batches.output is not None or not torch.is_tensor(batches.x):
        return "the inputs are not one tensor or an output is selected"
    if batches.dtype not in (torch.float32, torch.float64):
        return f"dtype {str(batches.dtype)[6:]} is not float32 or float64"
    model = batches.model
    hooks = torch.nn.modules.module
    if any(
        getattr(hooks, name, None)
        for name in ("_global_forward_hooks", "_global_forward_pre_hooks")
    ) or any(m._forward_hooks or m._forward_pre_hooks for m in model.modules()):
        return "the model has forward hooks"
    recorded = _record_leaf_calls(model, take(batches.x, slice(0, 2)))
    if isinstance(recorded, str):
        return recorded
    calls, result, version_in, version_out = recorded
    paths = [c[0] for c in calls]
    if paths.count(first.path) != 1 or len(set(paths)) != len(paths):
        return "a module runs more than once"
    start = paths.index(first.path)
    prev, prev_path = calls[start][4], first.path
    if not torch.is_tensor(prev):
        return "the first layer returns no tensor"
    width = prev[0].numel()
    steps: list[_Step] = []
    for path, module, args, kwargs, out in calls[start + 1 :]:
        if kwargs or len(args) != 1 or args[0] is not prev or not torch.is_tensor(out):
            return "residual or custom forward (a module's input is not the previous output)"
        if version_in.get(path) != version_out.get(prev_path):
            return "a tensor is changed in place between modules"
        prev_path = path
        step = _chain_step(path, module, args[0])
        if step is None:
            return f"module {path!r} ({type(module).__name__}) is not one the chain runs"
        steps.append(step)
        prev = out
        width = max(width, out[0].numel())
    linear = [i for i, st in enumerate(steps) if st.kind == "linear"]
    if result is not prev or result._version != version_out.get(prev_path):
        return "the model's output is not the last module's (changed after it)"
    if (
        prev.ndim != 2
        or prev.shape[1] < 2
        or not linear
        or any(st.kind == "flatten" for st in steps[linear[-1] :])
    ):
        return "the chain does not end in a Linear giving class scores"
    in_chain = {first.path} | {st.path for st in steps}
    for path, module in model.named_modules():
        if any(True for _ in module.parameters(recurse=False)) and path not in in_chain:
            return f"parametrised module {path!r} is outside the chain"
    return _Chain(steps=tuple(steps), classes=int(prev.shape[1]), width=int(width))


def _record_leaf_calls(
    model: nn.Module, x: Tensor
) -> tuple[list[tuple[str, nn.Module, tuple, dict, Any]], Any, dict, dict] | str:
    """Every leaf module's call in one forward on ``x``: ``(path, module, args, kwargs,
    out)``, the model's result, and the tensors' versions on entry and exit."""
    calls: list[tuple[str, nn.Module, tuple, dict, Any]] = []
    # Tensor versions on entry to and exit from each module: an in-place change
    # between two modules (or after the last) keeps the same tensor object, so
    # only its version shows it.
    version_in: dict[str, int] = {}
    version_out: dict[str, int] = {}
    handles = []
    for path, module in model.named_modules():
        if next(module.children(), None) is None:

            def pre(mod: nn.Module, args: tuple, path=path) -> None:
                if args and torch.is_tensor(args[0]):
                    version_in[path] = args[0]._version

            def hook(mod: nn.Module, args: tuple, kwargs: dict, out: Any, path=path) -> None:
                calls.append((path, mod, args, kwargs, out))
                if torch.is_tensor(out):
                    version_out[path] = out._version

            handles.append(module.register_forward_pre_hook(pre))
            handles.append(module.register_forward_hook(hook, with_kwargs=True))
    try:
        with torch.no_grad():
            result = call(model, x)
    except Exception as err:
        return f"the probe forward fails ({_error_line(err)})"
    finally:
        for h in handles:
            h.remove()
    return calls, result, version_in, version_out


def _targets_fit(batches: Batches, classes: int) -> str | None:
    """None when every target is a class index in ``[0, classes)`` the batched loss
    computes itself (no ignored targets), else why not."""
    y = batches.y
    ok = torch.is_tensor(y) and y.ndim == 1 and y.dtype == torch.long and len(y) > 0
    if ok:
        ignore = getattr(batches.loss_fn, "ignore_index", -100)
        ok = bool((y >= 0).all() and (y < classes).all() and (y != ignore).all())
    return None if ok else f"targets are not all class indices in [0, {classes}) (ignored ones?)"


def _plain_cross_entropy(loss_fn: Any) -> bool:
    """``loss_fn`` is the mean cross-entropy with nothing added (no weights, no smoothing)."""
    if loss_fn is F.cross_entropy:
        return True
    if type(loss_fn) is CrossEntropy:
        return (
            loss_fn.weight is None
            and loss_fn.label_smoothing == 0.0
            and loss_fn.target is None
            and loss_fn.mask is None
        )
    return (
        type(loss_fn) is nn.CrossEntropyLoss
        and loss_fn.weight is None
        and loss_fn.label_smoothing == 0.0
        and loss_fn.reduction == "mean"
        and not (loss_fn._forward_hooks or loss_fn._forward_pre_hooks)
    )
