"""The batched chain executor engine.

When the network after the first layer is a plain chain of modules (Linear,
Flatten, elementwise activations; an ``nn.Sequential`` MLP or CNN head) and the
loss is a plain ``CrossEntropyLoss``, the chain runs for a fixed block of points
at once, each Linear as one batched matrix product, instead of point by point.
A point's value never depends on how many points are evaluated at once or on
its place among them. The plan finds the chain (``_plan._find_chain``) and
verifies the engine against the plain one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._engine import Batches
from ._first_layer import _combine_rows, _FirstLayer, first_outputs

# Points per block of the batched tail (fixed, so that no point's value depends on
# how many are evaluated at once), and the most numbers in one block's activation
# (2**23: 32 MB in float32); data chunks are split into rows to stay below it.
_BLOCK = 8
_BLOCK_ELEMENTS = 2**23

# Parameter-free modules applied elementwise: exactly rounded ones run on a whole
# block at once, the others (transcendental, whose vector and scalar code paths may
# round differently) slab by slab.
_EXACT = (nn.ReLU, nn.LeakyReLU, nn.Identity, nn.Dropout)
_POINTWISE = (nn.Tanh, nn.Sigmoid, nn.GELU, nn.SiLU, nn.ELU, nn.Softplus)

# Numbers per call of a transcendental function in the loss (see _by_pieces); below
# the size at which torch splits such a call between threads.
_PIECE = 2048

# ATen's fused relu(a + alpha·b) (what TorchScript fuses `add` + `relu` into): one
# pass over memory instead of two, measurably faster on these memory-bound stacks.
# Private, so looked up defensively; the fallback computes the same values.
_FUSED_ADD_RELU = getattr(torch.ops.aten, "_add_relu", None)
_FUSED_ADD_RELU_ = getattr(torch.ops.aten, "_add_relu_", None)


@dataclass(frozen=True)
class _Step:
    """One module of the chain after the first layer (see :class:`_Chain`)."""

    kind: str  # "linear", "flatten", "exact" (ReLU-like, any layout), "pointwise"
    path: str
    relu: bool = False  # an nn.ReLU (fused with the addition before it)
    weight: str = ""  # full parameter names of a Linear
    bias: str | None = None
    shape: tuple[int, int] = (0, 0)  # a Linear's (out, in)


@dataclass(frozen=True)
class _Chain:
    """The network after the first layer when it is a plain chain of modules.

    Every module's only input is the previous module's output, the model returns
    the last one's, and each is a Linear, a Flatten or a parameter-free
    elementwise activation; then many points can run at once as batched matrix
    products (see :class:`ChainEngine`).
    """

    steps: tuple[_Step, ...]
    classes: int  # width of the output (class scores)
    width: int  # largest per-example activation size along the chain


class ChainEngine:
    """The first-layer shortcut with the rest of the network run for ``_BLOCK`` points at once."""

    name = "chain"

    def __init__(self, first: _FirstLayer, chain: _Chain):
        self.first, self.chain = first, chain

    def __repr__(self) -> str:
        return f"ChainEngine({self.first.path!r}, {len(self.chain.steps)} steps)"

    @torch.no_grad()
    def evaluate(
        self, batches: Batches, coef: Tensor, dirs: Tensor, origin: Tensor
    ) -> tuple[Tensor, Tensor]:
        """The fast path with the rest of the network run for ``_BLOCK`` points at once.

        Per point and data chunk the first layer's output is formed as in
        :class:`FirstLayerEngine`; then the chain runs on ``[_BLOCK, rows, ...]``
        stacks, each Linear as one batched matrix product (one kernel call for
        all points instead of one per point, and faster per point: the lone
        ``2048×256 @ 256×128`` of an MLP's second layer is far from peak).

        A point's value does not depend on which points share its block or where
        it sits in it: blocks always hold ``_BLOCK`` points (the last is padded
        with copies), every point's slab in each stacked tensor has the same
        alignment, elementwise ops that are exactly rounded (add, multiply, max,
        ReLU) run on the whole stack and the others (exp, log, tanh, ...) slab
        by slab, and reductions run within a slab. The loss runs on the scores
        of several blocks at once (fewer, larger operations).
        """
        first, chain = self.first, self.chain
        layer = batches.model.get_submodule(first.path)
        rows = coef.tolist()
        padded = rows + [rows[-1]] * (-len(rows) % _BLOCK)
        params = _BlockParams(batches, chain, origin, dirs, padded)
        # A leading ReLU is applied while forming the first layer's output (one pass).
        relu = chain.steps[0].relu
        loss = torch.zeros(len(padded), dtype=torch.float64, device=batches.device)
        correct = torch.zeros_like(loss)
        for _, y, base, outs in first_outputs(batches, first, layer, origin, dirs):
            # Bound memory: a block's widest activation holds _BLOCK × step × width numbers.
            step = max(1, min(len(y), _BLOCK_ELEMENTS // (_BLOCK * chain.width)))
            for r0 in range(0, len(y), step):
                part = slice(r0, r0 + step)
                fill = _Combiner(base[part], [o[part] for o in outs])
                used = len(y[part])
                # Rows padded to a multiple of 32 so every point's slab starts 128-byte
                # aligned (a matrix kernel may round differently on other alignments).
                pad = -used % 32
                h = base.new_empty((_BLOCK, used + pad, *base.shape[1:]))
                target = F.pad(y[part], (0, pad))
                # 0 where a class index is below the target, -inf elsewhere (see _cross_entropy)
                classes = torch.arange(chain.classes, device=y.device)[:, None]
                below = base.new_zeros((chain.classes, len(target)))
                below.masked_fill_(classes >= target, -math.inf)
                # Scores of up to `group` points, then their loss in one go.
                group = _BLOCK * max(
                    1, min(len(padded), _BLOCK_ELEMENTS // (chain.classes * len(target))) // _BLOCK
                )
                scores = base.new_empty((min(group, len(padded)), chain.classes, len(target)))
                for s in range(0, len(padded), _BLOCK):
                    block = padded[s : s + _BLOCK]
                    if pad:
                        h[:, used:].zero_()  # an activation may have written there
                    for k, c in enumerate(block):
                        fill.into(h[k, :used], c, relu=relu)
                    g = s % group
                    _run_chain(
                        batches.model, chain, h, params.block(s), scores[g : g + _BLOCK], relu
                    )
                    if g + _BLOCK == len(scores) or s + _BLOCK == len(padded):
                        dl, dc = _cross_entropy(scores[: g + _BLOCK], target, below, used)
                        loss[s - g : s + _BLOCK] += dl
                        correct[s - g : s + _BLOCK] += dc
        n = len(rows)
        return batches.reduce(loss[:n], correct[:n])


def _run_chain(
    model: nn.Module,
    chain: _Chain,
    h: Tensor,
    params: dict[str, Tensor],
    scores: Tensor,
    skip_first: bool = False,
) -> None:
    """Run the chain on ``h[K, rows, ...]``, writing the class scores into ``scores[K, C, rows]``.

    The last Linear writes its output transposed (``W @ xᵀ``): the loss then
    reduces over the short class axis with the long example axis contiguous.
    A Linear's bias and a ReLU after it are applied in one pass.
    """
    steps = chain.steps[1:] if skip_first else chain.steps
    last = max(i for i, st in enumerate(steps) if st.kind == "linear")
    x = h
    skip = False
    for i, st in enumerate(steps):
        if skip:
            skip = False
            continue
        if st.kind == "linear":
            w = params[st.weight]
            b = params[st.bias] if st.bias is not None else None
            x = x.reshape(x.shape[0], x.shape[1], st.shape[1])
            if i == last:  # w is [K, out, in]
                x = torch.bmm(w, x.transpose(1, 2), out=scores)
                if b is not None:
                    x.add_(b.unsqueeze(2))
                continue
            x = torch.bmm(x, w)  # w is [K, in, out]
            skip = i + 1 < len(steps) and steps[i + 1].relu
            if b is None:
                if skip:
                    x.relu_()
            elif skip:
                _add_relu_(x, b.unsqueeze(1))
            else:
                x.add_(b.unsqueeze(1))
        elif st.kind == "flatten":
            x = x.flatten(2)
        else:
            module = model.get_submodule(st.path)
            if st.kind == "exact":
                _exact_inplace(module, x)
            else:
                for k in range(len(x)):
                    x[k] = module(x[k])


def _chain_step(path: str, module: nn.Module, x: Tensor) -> _Step | None:
    """The batched tail's step for ``module`` (given its input ``x``), or None if unsupported."""
    kind = type(module)  # exact types: a subclass may change forward
    if kind is nn.Linear:
        if x.ndim != 2:
            return None
        prefix = f"{path}." if path else ""
        return _Step(
            kind="linear",
            path=path,
            weight=prefix + "weight",
            bias=prefix + "bias" if module.bias is not None else None,
            shape=(module.out_features, module.in_features),
        )
    if kind is nn.Flatten:
        return _Step("flatten", path) if (module.start_dim, module.end_dim) == (1, -1) else None
    if kind in _EXACT and not (kind is nn.Dropout and module.training):
        return _Step("exact", path, relu=kind is nn.ReLU)
    if kind in _POINTWISE:
        return _Step("pointwise", path)
    return None


def _exact_inplace(module: nn.Module, x: Tensor) -> None:
    """Apply an exactly rounded elementwise module (``_EXACT``) to ``x`` in place."""
    if type(module) is nn.ReLU:
        x.relu_()
    elif type(module) is nn.LeakyReLU:
        F.leaky_relu_(x, module.negative_slope)
    # Identity, Dropout in eval mode: nothing to do.


def _cross_entropy(
    scores: Tensor, target: Tensor, below: Tensor, used: int
) -> tuple[Tensor, Tensor]:
    """Per point: summed cross-entropy (float64) and number correct, over the first ``used`` rows.

    ``scores`` is ``[K, C, rows]``; ``target`` ``[rows]``; ``below[c, i]`` is 0 if
    ``c < target[i]``, else -inf. Per example ``ℓ = log Σ_c exp(s_c − m) − (s_y − m)`` with
    ``m = max_c s_c`` (what ``cross_entropy`` computes); an example is correct
    when ``s_y`` is the maximum and no lower class index reaches it (``argmax``
    returns the first maximum). Points with a non-finite loss (NaN scores) take
    their count from ``argmax`` itself.
    """
    shifted = scores - scores.amax(1, keepdim=True)
    at_y = shifted.gather(1, target.expand(len(scores), 1, -1)).squeeze(1)
    ties_below = (shifted + below).amax(1) == 0  # a lower class reaches the maximum
    hits = (at_y == 0) & ~ties_below
    # Terms below exp(floor) are too small to change a sum that holds exp(0) = 1, and
    # computing them as subnormal numbers is ~40x slower: raise them to the floor.
    shifted.clamp_min_(math.log(torch.finfo(shifted.dtype).tiny) + 1)
    _by_pieces(shifted, torch.Tensor.exp_)
    total = shifted.sum(1)
    _by_pieces(total, torch.Tensor.log_)
    loss = (total - at_y)[:, :used].to(torch.float64).sum(1)
    correct = hits[:, :used].sum(1).to(torch.float64)
    if not math.isfinite(float(loss.sum())):
        for k in torch.nonzero(~torch.isfinite(loss)).flatten().tolist():
            correct[k] = (scores[k, :, :used].argmax(0) == target[:used]).sum()
    return loss, correct


def _by_pieces(x: Tensor, op: Callable[[Tensor], Any]) -> None:
    """Apply the in-place elementwise ``op`` to each point's slab of ``x[K, ...]``, in
    pieces of ``_PIECE`` numbers.

    One operation over the whole stack may split a slab between threads, and the
    kernels of transcendental functions (vectorised, with special code for the
    ends of an array and for its alignment) may round the numbers near such a
    split differently. Here every piece is its own single-threaded call, at the
    same offset and alignment in every slab, so no value depends on where its
    point sits in the stack.
    """
    for slab in x.view(len(x), -1):
        for piece in slab.split(_PIECE):
            op(piece)


def _add_relu(a: Tensor, b: Tensor, alpha: float, out: Tensor) -> None:
    """``out = relu(a + alpha·b)`` in one pass where torch has the fused kernel."""
    if _FUSED_ADD_RELU is not None and a.device.type == "cpu":
        _FUSED_ADD_RELU.out(a, b, alpha=alpha, out=out)
    else:
        torch.add(a, b, alpha=alpha, out=out).relu_()


def _add_relu_(a: Tensor, b: Tensor) -> None:
    """``a = relu(a + b)`` in place, in one pass where torch has the fused kernel."""
    if _FUSED_ADD_RELU_ is not None and a.device.type == "cpu":
        _FUSED_ADD_RELU_(a, b)
    else:
        a.add_(b).relu_()


class _Combiner:
    """Writes ``base + Σ_j c_j rows[j]`` into a given tensor, with :func:`_combine_rows`'s
    arithmetic, keeping the sum of all but the last nonzero term for the next point:
    the points of a plane's row share their first coefficient, so each then costs
    one fused multiply-add instead of two."""

    def __init__(self, base: Tensor, rows: Sequence[Tensor] | Tensor):
        self.base, self.rows = base, rows
        self.key: tuple | None = None
        self.partial = base

    def into(self, out: Tensor, c: Sequence[float], relu: bool = False) -> None:
        """``out = base + Σ_j c_j rows[j]``, or its ReLU with the last addition fused."""
        nonzero = [j for j, cj in enumerate(c) if cj != 0]
        if not nonzero:
            out.copy_(self.base)
            if relu:
                out.relu_()
            return
        *head, last = nonzero
        key = tuple((j, c[j]) for j in head)
        if key != self.key:
            coefficients = [c[j] if j in head else 0.0 for j in range(len(c))]
            self.partial = _combine_rows(self.base, self.rows, coefficients) if head else self.base
            self.key = key
        if relu:
            _add_relu(self.partial, self.rows[last], c[last], out)
        else:
            torch.add(self.partial, self.rows[last], alpha=c[last], out=out)


class _BlockParams:
    """Per-point parameters of the chain's Linears, for blocks of ``points``.

    The chain's parameters that are coordinates are formed per point into rows of
    one ``[G, S]`` buffer (a group of up to G points, several blocks) whose row
    length is a multiple of 64 numbers (so each point's matrices share one
    alignment); those outside the space are copied once into every row. Weights
    of all Linears but the last are stored transposed (``[in, out]``, what the
    batched product reads fastest).
    """

    def __init__(
        self,
        batches: Batches,
        chain: _Chain,
        origin: Tensor,
        dirs: Tensor,
        points: Sequence[Sequence[float]],
    ):
        at_origin = batches.space.unflatten(origin)
        along = [batches.space.unflatten(d) for d in dirs]
        last = [st for st in chain.steps if st.kind == "linear"][-1]
        varying: list[tuple[str, Callable[[Tensor], Tensor]]] = []
        fixed: list[tuple[str, Tensor]] = []
        shapes: dict[str, tuple[int, ...]] = {}
        for st in chain.steps:
            if st.kind != "linear":
                continue
            module = batches.model.get_submodule(st.path)
            out, inp = st.shape
            prep = (lambda t: t) if st is last else (lambda t: t.t())  # noqa: E731
            shapes[st.weight] = (out, inp) if st is last else (inp, out)
            parts = [(st.weight, module.weight, prep)]
            if st.bias is not None:
                shapes[st.bias] = (out,)
                parts.append((st.bias, module.bias, lambda t: t))
            for name, value, fn in parts:
                if name in at_origin:
                    varying.append((name, fn))
                else:
                    fixed.append((name, fn(value.detach())))
        flat = lambda pieces: torch.cat(  # noqa: E731
            [fn(pieces[name]).reshape(-1) for name, fn in varying]
        )
        self.n_tail = sum(math.prod(shapes[name]) for name, _ in varying)
        self.origin = flat(at_origin) if varying else origin[:0]
        self.dirs = [flat(d) for d in along] if varying else []
        # Whether all directions are finite: one sum tells (it can overflow when they
        # are, which only costs time; see _form).
        self.finite = all(math.isfinite(float(d.sum())) for d in self.dirs)
        used = self.n_tail + sum(v.numel() for _, v in fixed)
        row = used + (-used % 64)
        self.points = points
        self.group = min(len(points), max(1, _BLOCK_ELEMENTS // row // _BLOCK) * _BLOCK)
        self.start: int | None = None  # first point of the group in the buffer
        self.buffer = torch.empty((self.group, row), dtype=origin.dtype, device=origin.device)
        offsets: dict[str, int] = {}
        offset = 0
        for name, _ in varying:
            offsets[name] = offset
            offset += math.prod(shapes[name])
        for name, value in fixed:
            offsets[name] = offset
            self.buffer[:, offset : offset + value.numel()] = value.reshape(-1)
            offset += value.numel()
        self.views = {
            name: self.buffer[:, o : o + math.prod(shapes[name])].view(-1, *shapes[name])
            for name, o in offsets.items()
        }

    def block(self, s: int) -> dict[str, Tensor]:
        """The parameters of points ``s, ..., s + _BLOCK - 1`` (``s`` a multiple of ``_BLOCK``)."""
        start = s - s % self.group
        if start != self.start:
            self._form(self.points[start : start + self.group])
            self.start = start
        r = s - start
        return {name: view[r : r + _BLOCK] for name, view in self.views.items()}

    def _form(self, points: Sequence[Sequence[float]]) -> None:
        """Rows ``origin + Σ_j c[k, j] dirs[j]`` for ``points``.

        Each row is ``c[k, j1]·dirs[j1] + origin + c[k, j2]·dirs[j2] + ...`` over the
        nonzero coefficients in order, with separate (exactly rounded) multiplies
        and adds. For a plane all rows are formed at once, direction by direction
        (four operations for the group: adding ``0·dirs[j]`` to a row changes
        nothing); for rays (one nonzero coefficient per point) row by row. Either
        way a row's numbers do not depend on the other rows.
        """
        if not self.n_tail:
            return
        tail = self.buffer[: len(points), : self.n_tail]
        columns = [j for j in range(len(self.dirs)) if any(c[j] != 0 for c in points)]
        terms = sum(1 for c in points for cj in c if cj != 0)
        # Direction by direction while at least half the coefficients are nonzero; and
        # never with non-finite directions (0·inf is NaN: zero coefficients are skipped).
        if self.finite and 2 * terms >= len(columns) * len(points):
            if not columns:
                tail.copy_(self.origin)
            for i, j in enumerate(columns):
                c = torch.tensor([p[j] for p in points], dtype=tail.dtype).to(tail.device)
                if i:
                    tail.add_(c[:, None] * self.dirs[j])
                else:
                    torch.mul(c[:, None], self.dirs[j], out=tail)
                    tail.add_(self.origin)
            return
        for row, c in zip(tail, points, strict=True):
            nonzero = [j for j, cj in enumerate(c) if cj != 0]
            if not nonzero:
                row.copy_(self.origin)
            for i, j in enumerate(nonzero):
                if i:
                    row.add_(self.dirs[j] * c[j])
                else:
                    torch.mul(self.dirs[j], c[j], out=row)
                    row.add_(self.origin)
