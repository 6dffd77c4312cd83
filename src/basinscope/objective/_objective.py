"""The Objective: a model's loss as a function of a flat parameter vector.

Everything that measures geometry in basinscope takes an :class:`Objective`.
It holds a private copy of the user's model (in eval mode, on the chosen device
and dtype), the evaluation data as tensors, and a :class:`ParamSpace` that says
which parameters are the landscape's coordinates. It evaluates

    L(θ) = Σ_u ℓ_u(f(x; θ), y) / Σ_u c_u,      acc(θ) = Σ_u hit_u / Σ_u c'_u

over the loss's counted units u (examples of a classifier, valid tokens of a
language model, weighted targets; see ``_losses.py``) exactly (a ratio of
dataset sums, never a mean of batch means) for many points θ at once,
through ``torch.func.functional_call`` with parameter dicts built from flat
vectors. The user's model is never written to: evaluations run on the copy, so
the model is untouched even when an evaluation raises or is interrupted.

Points on lines, planes and rays, ``θ = θ0 + Σ_j c_j d_j``, are evaluated by the
engine :attr:`Objective.plan` chooses: the first-layer shortcut
(``_first_layer.py``), the batched chain executor (``_chain.py``) or the plain
per-point reference (``_engine.py``). Every engine reads only the Objective's
:class:`Batches`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .. import _dist
from .._checks import check_device, check_int
from ..errors import BasinscopeError
from . import _parallel
from ._autograd import hessian_products, refuse_if_asymmetric
from ._describe import describe_objective
from ._engine import Batches, Engine, PlainEngine
from ._inputs import _check_dtype, _model_device, prepare
from ._losses import Loss, MeanLoss, check_reduction
from ._plan import Plan, make_plan
from ._probes import (
    _check_finite_model,
    _describe_callable,
    _refuse_if_random,
    forward_failure,
)
from ._resolve import probe_mean, resolve_loss
from ._space import ParamSpace, match
from ._tree import Tree, describe, functional, leaves, length, select_output, take

LossFn = Callable[[Tensor, Any], Any]


class Objective:
    """A model's mean loss and accuracy over a dataset, as a function of θ ∈ ParamSpace.

    Args:
        model: any ``nn.Module``; a private deep copy is made, the original is
            never modified.
        loss_fn: the objective: a :class:`~basinscope.Loss` (``bs.CrossEntropy()``,
            ``bs.MSE()``), a function ``fn(outputs, targets) -> (sum, count)`` (a sum
            over counted units, see :mod:`basinscope.objective._losses`), or any
            batch-mean loss ``loss_fn(outputs, targets) -> scalar`` (every torch
            loss with ``reduction="mean"``, and ``nn.KLDivLoss(reduction="batchmean")``;
            its count is the batch's examples).
        data: ``(X, y)``, a ``Dataset`` (of ``(x, y)`` items) or a ``DataLoader``;
            inputs and targets may be tensors (or arrays), tuples or dicts of
            tensors (a tuple is passed as ``model(*x)``, a dict as
            ``model(**x)``). Dict items (HuggingFace-style) are split: the keys
            ``inputs`` names go to the model, the whole dict is the target (the
            loss reads its ``"labels"``). The Objective holds its own copy: changing the
            user's tensors afterwards changes nothing here, and nothing is ever
            written into them. A DataLoader is read in its dataset's order with
            every example (its shuffling and ``drop_last`` are not used, so the
            same numbers come out every time); a dataset whose items change
            between reads (random augmentation) is refused.
        space: the coordinates (default: all trainable parameters, or all
            matrices/filters when ``skip_bias_norm``).
        device, dtype: where and in what precision to evaluate (default: the
            model's device and dtype). ``dtype=torch.float64`` gives references.
        batch_size: examples per forward pass (bounds memory; results do not
            depend on it beyond floating-point summation order).
        subset: evaluate on a fixed random subset of this many examples, drawn
            with ``seed``.
        check_determinism: evaluate twice and refuse a model whose evaluation
            is random (dropout hard-wired on, noise layers).
        output: which part of the model's return value the loss reads: None (the
            tensor itself, or the ``"logits"`` field of a mapping such as
            HuggingFace's ``ModelOutput``), a field name, a position, or a function
            of the return value.
        inputs: for dict data, the keys passed to the model (default: every key
            but ``"labels"``).
        group: the ``torch.distributed`` process group the work is shared over
            (:mod:`basinscope._dist`): ``"auto"`` (default) uses the initialised default
            group, as under ``torchrun``; ``None`` works alone. Every rank must build
            the Objective from the same model and data and make the same calls. With
            ``device="cuda"`` each rank uses ``cuda:LOCAL_RANK``.

    Checked before any work, each refused with one sentence: NaN/inf in the
    model's weights or buffers (a diverged run), in the inputs or float
    targets; a model that fails on the data (wrong number of features, integer
    inputs to a layer that is not an Embedding) or returns no tensor; labels
    outside ``[0, C)`` for a cross-entropy/NLL loss with ``C`` outputs, targets
    ``[N, 1]`` for it; targets whose shape an elementwise loss would broadcast;
    a loss that fails on the outputs, returns no scalar, or sums over the batch
    (probed on three examples: a batch mean lies within the examples' losses,
    a sum equals their total, which lies outside them).
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        data: Any,
        *,
        space: ParamSpace | None = None,
        skip_bias_norm: bool = False,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        batch_size: int = 4096,
        subset: int | None = None,
        seed: int = 0,
        check_determinism: bool = True,
        output: str | int | Callable[[Any], Tensor] | None = None,
        inputs: Sequence[str] | None = None,
        group: Any = "auto",
    ):
        if not isinstance(model, nn.Module):
            raise BasinscopeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not callable(loss_fn):
            raise BasinscopeError(
                f"loss_fn must be a callable loss(outputs, targets), got {type(loss_fn).__name__}"
            )
        batch_size = check_int("batch_size", batch_size, minimum=1)
        if subset is not None:
            subset = check_int("subset", subset, minimum=1)
        seed = check_int("seed", seed)
        check_reduction(loss_fn)
        first = next(iter(model.parameters()), None)
        self.dist = _dist.resolve(group)
        self.device = (
            check_device(_parallel.rank_device(device, self.dist))
            if device is not None
            else _model_device(model)
        )
        self.dtype = (
            _check_dtype(dtype)
            if dtype is not None
            else (first.dtype if first is not None else torch.get_default_dtype())
        )
        self.model = copy.deepcopy(model).to(device=self.device, dtype=self.dtype).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        _check_finite_model(self.model)
        self.loss_fn = loss_fn
        self.output = output
        self.inputs = (inputs,) if isinstance(inputs, str) else inputs
        if self.inputs is not None:
            self.inputs = tuple(self.inputs)
            if not all(isinstance(k, str) for k in self.inputs) or not self.inputs:
                raise BasinscopeError(
                    f"inputs must name the data's keys the model takes, got {inputs!r}"
                )
        self.space = space or ParamSpace(model, skip_bias_norm=skip_bias_norm)
        self.theta0 = self.space.flatten(self.model).clone()
        self.batch_size = batch_size
        self.seed = seed
        self.x, self.y = self._prepare(data, subset, seed)
        self.criterion: Loss = self._resolve_loss()
        self._batches = self._make_batches()
        self._plan: tuple[Batches, Plan, bool] | None = None  # see plan; agreed by ranks
        self._probe(determinism=check_determinism)

    def _prepare(self, data: Any, subset: int | None, seed: int) -> tuple[Tree, Tree]:
        return prepare(data, subset, seed, self.dtype, self.device, inputs=self.inputs)

    def _make_batches(self) -> Batches:
        return Batches(
            self.model,
            self.space,
            self.criterion,
            self.theta0,
            self.x,
            self.y,
            batch_size=self.batch_size,
            device=self.device,
            dtype=self.dtype,
            output=self.output,
            loss_fn=self.loss_fn,
        )

    @property
    def batches(self) -> Batches:
        """What the engines read: the private model, space, loss, data chunks, reduction."""
        b = self._batches
        # A Batches is built for this Objective's space, θ0 and data; an Objective
        # whose attributes were replaced (code that copies one and sets space, θ0 or
        # data, as hessian.restrict did before Objective.restrict) gets a new one.
        same = b.space is self.space and b.theta0 is self.theta0
        if not (same and b.x is self.x and b.y is self.y):
            b = self._batches = self._make_batches()
        return b

    @property
    def plan(self) -> Plan:
        """Which engine :meth:`evaluate_affine` uses, and why faster ones were refused.

        Made on first use (the model is probed once, each candidate engine verified
        against the plain one) and kept for this Objective's data.
        """
        batches = self.batches
        if self._plan is None or self._plan[0] is not batches:
            self._plan = (batches, make_plan(batches), False)
        return self._plan[1]

    def _engine(self) -> Engine:
        """The plan's engine; in a process group, the one every rank agreed on (made at the
        first evaluation every rank makes, never by reading :attr:`plan`)."""
        plan, d = self.plan, _dist.active(self.dist)
        if d is not None and self._plan is not None and not self._plan[2]:
            plan = _parallel.agreed_plan(self.batches, d, plan)
            self._plan = (self.batches, plan, True)
        return plan.engine

    def with_data(self, data: Any, *, subset: int | None = None) -> Objective:
        """The same model, loss and space on other data (e.g. the test set).

        The data is checked as :class:`Objective` checks its own (finite values,
        labels, shapes, one probe forward).
        """
        other = self._on(*self._prepare(data, subset, self.seed))
        other._resolve_loss()  # the checks of the targets against the outputs and the loss
        other._probe(determinism=False)
        return other

    def _on(self, x: Tree, y: Tree) -> Objective:
        """This Objective on tensors already prepared (internal: no checks, no copy)."""
        return self._derive(x=x, y=y)

    def restrict(self, include: str | Sequence[str]) -> Objective:
        """The Objective on a block of its coordinates: parameter or module names or globs.

        The other parameters stay at ``θ0``; the Hessian of the result is the
        diagonal block ``H_BB`` of this one's. Cheap: model and data are shared
        (no copies), only the ParamSpace, ``θ0`` and the plan are new.
        """
        patterns = [include] if isinstance(include, str) else list(include)
        space = self.space
        if not patterns:
            raise BasinscopeError("include names no parameters; give a module or parameter name")
        for p in patterns:
            if not isinstance(p, str) or not any(match(n, p) for n in space.names):
                names = ", ".join(space.blocks[:8])
                raise BasinscopeError(
                    f"no parameter of the Objective matches {p!r}; modules are {names}"
                )
        sub_space = space.select([n for n in space.names if any(match(n, p) for p in patterns)])
        pieces = space.unflatten(self.theta0)
        theta0 = torch.cat([pieces[n].reshape(-1) for n in sub_space.names]).clone()
        return self._derive(space=sub_space, theta0=theta0)

    def _derive(
        self,
        *,
        space: ParamSpace | None = None,
        theta0: Tensor | None = None,
        x: Tree | None = None,
        y: Tree | None = None,
    ) -> Objective:
        """A new Objective sharing this one's private model, with another space or data
        (already checked); its Batches and plan are its own."""
        other = copy.copy(self)
        other.space = self.space if space is None else space
        other.theta0 = self.theta0 if theta0 is None else theta0
        other.x = self.x if x is None else x
        other.y = self.y if y is None else y
        other._batches = other._make_batches()
        if x is None and y is None:  # the same data: the same counts (no forward pass)
            other._batches._totals = self.batches._totals
        other._plan = None
        return other

    @property
    def n_examples(self) -> int:
        return length(self.x, "inputs")

    @property
    def count(self) -> float:
        """The loss's total count over the data: examples, valid tokens or weights."""
        return self.batches.totals[0]

    def part(self, start: int, stop: int) -> Objective:
        """This Objective on examples ``start … stop − 1`` (no copy, no checks)."""
        return self._on(take(self.x, slice(start, stop)), take(self.y, slice(start, stop)))

    @property
    def n(self) -> int:
        """Number of coordinates."""
        return self.space.n

    def _points(self, points: Tensor) -> Tensor:
        points = torch.as_tensor(points)
        if points.ndim == 1:
            points = points[None]
        if points.ndim != 2 or points.shape[1] != self.n:
            raise BasinscopeError(
                f"points must have shape (K, {self.n}), got {tuple(points.shape)}"
            )
        return points.to(device=self.device, dtype=self.dtype)

    def _vectors(self, v: Tensor) -> Tensor:
        v = torch.as_tensor(v)
        if v.shape[-1:] != (self.n,) or v.ndim not in (1, 2):
            raise BasinscopeError(
                f"v must have shape ({self.n},) or (k, {self.n}), got {tuple(v.shape)}"
            )
        return self._points(v)

    @torch.no_grad()
    def evaluate(self, points: Tensor, *, split: str = "auto") -> tuple[Tensor, Tensor]:
        """Exact dataset-mean loss and accuracy at each point.

        Args:
            points: ``[K, n]`` (or ``[n]``) flat parameter vectors.
            split: how a process group shares the points (see :meth:`evaluate_affine`).

        Returns:
            ``(loss[K], accuracy[K])`` in float64; accuracy is NaN when the
            outputs are not class scores.
        """
        d = _dist.active(self.dist)
        return _parallel.evaluate(self.batches, d, self._points(points), _split(split))

    @torch.no_grad()
    def evaluate_affine(
        self,
        coefficients: Tensor,
        directions: Tensor,
        origin: Tensor | None = None,
        *,
        shortcut: bool = True,
        split: str = "auto",
    ) -> tuple[Tensor, Tensor]:
        """Loss and accuracy at ``origin + Σ_j c[k, j] · directions[j]`` for each row ``k``.

        Args:
            coefficients: ``[K, m]``.
            directions: ``[m, n]``.
            origin: ``[n]``, default ``θ0``.
            shortcut: use the engine of :attr:`plan` (the first-layer shortcut or
                the batched chain, where they apply); False: the plain engine.
            split: in a process group, ``"auto"`` shares the points over the ranks
                (data-parallel when there are fewer points than ranks); ``"points"``
                always shares the points, ranks without one idle, so every value is
                bit-identical to one process's (how surfaces and rays are computed).

        Returns:
            ``(loss[K], accuracy[K])`` in float64, as :meth:`evaluate`.
        """
        split = _split(split)
        coefficients = torch.as_tensor(coefficients)
        if coefficients.ndim == 1:
            coefficients = coefficients[:, None]
        directions = self._points(directions)
        if coefficients.shape[1] != len(directions):
            raise BasinscopeError(
                f"{coefficients.shape[1]} coefficients per point but {len(directions)} directions"
            )
        origin = self.theta0 if origin is None else self._points(origin)[0]
        coefficients = coefficients.to(device=self.device, dtype=self.dtype)
        engine = self._engine() if shortcut and len(directions) else PlainEngine()
        return _parallel.evaluate_affine(
            self.batches, _dist.active(self.dist), engine, coefficients, directions, origin, split
        )

    def loss(self, theta: Tensor | None = None) -> float:
        """``L(θ)`` as a Python float (default θ = θ0); in a process group one rank
        computes it whole, so it has the bits of one process (what measures compare with)."""
        return float(self.evaluate(self.theta0 if theta is None else theta, split="points")[0][0])

    def describe(self) -> str:
        """What this Objective's numbers mean, in a few lines: the loss and the unit it
        averages over (with the count), the accuracy, the data, the engine, and what was
        verified. ``print(obj.describe())`` before trusting a measure."""
        return describe_objective(self)

    def fingerprint(self) -> dict[str, Any]:
        """What determines this Objective's numbers, as a key for resumable files.

        ``{weights, space, data, loss, dtype, device, batch_size, torch_version,
        threads}``: hashes of the private model's whole state (θ0, fixed
        parameters and buffers), of the coordinate names and of the evaluation
        tensors (after the subset), a description of the loss (its class or
        code and settings), and the arithmetic's environment. See
        :func:`basinscope._keys.check_key` for how two keys are compared.
        """
        from .._keys import environment, tensor_digest, value_digest

        state = self.model.state_dict()
        if torch.is_tensor(self.x) and torch.is_tensor(self.y):
            data = tensor_digest(self.x, self.y)
        else:
            data = value_digest(
                [
                    describe(self.x),
                    describe(self.y),
                    tensor_digest(*leaves(self.x), *leaves(self.y)),
                ]
            )
        loss = _describe_callable(self.loss_fn)
        if isinstance(self.loss_fn, Loss):  # its settings, tensors and functions in full
            kind = type(self.loss_fn)
            loss = {"loss": f"{kind.__module__}.{kind.__qualname__}"}
            loss["settings"] = _describe_callable(dict(vars(self.loss_fn)))
        if self.output is not None:
            loss = {"loss": loss, "output": _describe_callable(self.output)}
        return {
            "weights": value_digest([[k, tensor_digest(v)] for k, v in state.items()]),
            "space": value_digest(list(self.space.names)),
            "data": data,
            "loss": value_digest(loss),
            "batch_size": self.batch_size,
            **environment(self.device, self.dtype),
        }

    def grad(self, theta: Tensor | None = None) -> Tensor:
        """``∇L(θ)``, ``[n]``, exact over the whole evaluation set."""
        theta = (self.theta0 if theta is None else self._points(theta)[0]).detach()
        return _parallel.grad(self.batches, _dist.active(self.dist), theta)

    def hvp(self, v: Tensor, theta: Tensor | None = None) -> Tensor:
        """Hessian-vector product ``∇²L(θ) v`` for ``v`` of shape ``[n]`` or ``[k, n]``.

        Reverse-over-reverse (double backward), summed exactly over data chunks;
        attention runs on its math backend meanwhile (see ``_backends.py``).
        """
        theta = (self.theta0 if theta is None else self._points(theta)[0]).detach()
        b = self.batches
        if not b.cache.get("symmetric"):  # once per data: autograd's second derivatives
            refuse_if_asymmetric(
                lambda uv: hessian_products(b, self.theta0, uv), self.n, self.dtype, self.device
            )
            b.cache["symmetric"] = True
        total = _parallel.hvp(b, _dist.active(self.dist), theta, self._vectors(v))
        return total[0] if torch.as_tensor(v).ndim == 1 else total

    def _probe_data(self) -> tuple[Tree, Tree]:
        n = min(self.batch_size, 256, self.n_examples)
        return take(self.x, slice(0, n)), take(self.y, slice(0, n))

    def _raw_forward(self, params: dict[str, Tensor], x: Tree) -> Tensor:
        """The probe's forward: the model's output the loss reads, failures in one sentence."""
        try:
            out = functional(self.model, params, x)
        except Exception as err:
            raise BasinscopeError(forward_failure(self.model, x, err)) from err
        return select_output(out, self.output)

    def _resolve_loss(self) -> Loss:
        return resolve_loss(self)

    def _probe(self, determinism: bool) -> None:
        """Before any work: the totals count something; a batch-mean loss is a mean over
        examples; with ``determinism``, a second forward must agree exactly (a model
        whose evaluation is random is refused)."""
        x, _ = self._probe_data()
        params = self.space.unflatten(self.theta0)
        with torch.no_grad():
            out = self.batches.forward(params, x)
            self.batches.totals  # noqa: B018  (refuses data that counts nothing)
            if isinstance(self.criterion, MeanLoss):
                self._probe_mean(params, out)
            if determinism:
                _refuse_if_random(out, self.batches.forward(params, x))

    def _probe_mean(self, params: dict[str, Tensor], out: Tensor) -> None:
        probe_mean(self, params, out)

    def check_determinism(self, theta: Tensor | None = None, *, advice: str | None = None) -> None:
        """Refuse a model whose evaluation is random (dropout or noise active in eval mode).

        Two forwards at ``θ`` (default ``θ0``) on the first ``min(batch_size, 256)``
        examples must agree exactly (NaN equal to NaN). ``advice`` replaces the end
        of the refusal's sentence (what to do about it).
        """
        theta = self.theta0 if theta is None else self._points(theta)[0]
        x, _ = self._probe_data()
        params = self.space.unflatten(theta)
        with torch.no_grad():
            _refuse_if_random(
                self.batches.forward(params, x), self.batches.forward(params, x), advice
            )


def _split(split: Any) -> str:
    if split not in ("auto", "points"):
        raise BasinscopeError(f"split must be 'auto' or 'points', got {split!r}")
    return split
