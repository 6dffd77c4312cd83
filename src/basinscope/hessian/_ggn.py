"""The generalised Gauss–Newton matrix as a linear operator: ``v ↦ Jᵀ H_out J v``.

:class:`GGNOperator` — the generalised Gauss–Newton (GGN) matrix of an Objective's
loss (Schraudolph 2002, "Fast curvature matrix-vector products for second-order
gradient descent"; Martens 2010, "Deep learning via Hessian-free optimization";
Martens 2020, "New insights and perspectives on the natural gradient method")

    G = Σ_c J_cᵀ H_c J_c / Σ_c count_c,

where, on data chunk ``c``, ``J_c = ∂f/∂θ`` is the Jacobian of the model's selected
output ``f`` (:meth:`Batches.forward`) with respect to the ParamSpace's coordinates
and ``H_c = ∂²ℓ_c/∂f²`` the Hessian of the chunk's loss SUM ``ℓ_c =
Batches.loss(f, y)[0]`` with respect to that output. The Hessian itself is
``H = G + Σ_c Σ_u (∂ℓ_c/∂f_u) ∇²_θ f_u / Σ count``: the GGN drops the term with the
model's second derivatives. So the GGN equals the Hessian whenever the output is
linear in θ (MSE linear regression) or the loss's gradient in the output vanishes
(a perfect fit), and it is **positive semi-definite whenever the loss is convex in
the output** (cross-entropy on logits, squared error), at every θ, even at a saddle
of the loss. For cross-entropy on logits it is the Fisher information matrix
(Martens 2020, sec. 9.2).

A product is three automatic-differentiation passes on graphs built once per chunk
and kept (within ``cache_bytes``), nothing dense ever formed:

1. ``u = J v`` by the double-vjp trick: with a dummy ``w`` of the output's shape,
   ``Jᵀw = ∇_θ(f · w)`` is built with its graph once; ``J v = ∇_w (Jᵀw · v)``.
2. ``H_c u`` by double backward of the loss as a function of the output alone
   (a detached copy of ``f``; for cross-entropy a softmax, cheap).
3. ``Jᵀ(H_c u)`` by a vjp through the kept forward graph.

In a process group the chunks are those of the rank's data shard and the products
are summed over the ranks, as :class:`~basinscope.hessian.HessianOperator`'s
(``Σ_r Σ_{c ∈ shard r} J_cᵀ H_c J_c v / Σ count``, the whole data's count).

Reverse-over-reverse for ``J v`` rather than ``torch.func.jvp``: the graphs are
kept between products as :class:`~basinscope.hessian.HessianOperator` keeps its
gradient graphs, so no forward pass is repeated. Attention runs on its math
backend while the graphs are built (``twice_differentiable``), since step 1
differentiates a backward pass.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..errors import BasinscopeError
from ..objective import (
    Objective,
    double_backward_failure,
    twice_differentiable,
)
from ._operator import _CACHE_BYTES, _Products


class _Chunk:
    """The graphs of one chunk: θ leaf -> output ``f``, dummy ``w`` -> ``Jᵀw``, and
    the output leaf ``o`` -> ``∂ℓ/∂o`` (None: the loss is linear in the output)."""

    __slots__ = ("leaf", "out", "w", "jtw", "o", "dlo")

    def __init__(self, leaf: Tensor, out: Tensor, w: Tensor, jtw: Tensor, o: Tensor, dlo: Any):
        self.leaf, self.out, self.w, self.jtw, self.o, self.dlo = leaf, out, w, jtw, o, dlo


class GGNOperator(_Products):
    """The generalised Gauss–Newton matrix of an Objective's mean loss at θ, on ``[n]`` vectors.

    ``G v = Σ_c J_cᵀ H_c J_c v / Σ_c count_c`` (see the module docstring): ``J_c``
    the Jacobian of the model's selected output on chunk ``c``, ``H_c`` the Hessian
    of the chunk's summed loss in that output. Positive semi-definite for a loss
    convex in the output (cross-entropy, MSE); equal to the Hessian for a model
    linear in θ under MSE. Implements the same :class:`SymmetricOperator` protocol as
    :class:`HessianOperator` (``n``, ``dtype``, ``device``, ``shape``, ``matvec``,
    ``matmat``, ``n_products``), so every estimator runs on it, and the chunking
    does not change it beyond rounding.

    Args:
        obj: the Objective (its ParamSpace chooses the block of ``G``: the GGN of a
            block ``B`` is ``J_Bᵀ H J_B``, the diagonal block of ``G``).
        theta: the point, ``[n]`` (default ``obj.theta0``).
        cache_bytes: budget for kept graphs; further chunks are rebuilt per call.
        batched: multiply several vectors in one vmapped pass
            (``is_grads_batched=True``) instead of a loop.
        check: verify that the model is deterministic (two forward passes) and that
            ``G`` is not identically zero (on the first dense vector). Products are
            always checked to be finite.

    Attributes:
        n: the dimension. ``n_products``: GGN-vector products so far.
        curvature: ``"ggn"``.
    """

    curvature = "ggn"

    def __init__(
        self,
        obj: Objective,
        theta: Tensor | None = None,
        *,
        cache_bytes: int = _CACHE_BYTES,
        batched: bool = False,
        check: bool = True,
    ):
        self._start(obj, theta, batched)
        self._total = obj.batches.totals[0]  # the whole data's, in a group too
        # the kept chunks' graphs (a group: of this rank's shard); the others rebuilt per call
        self._prepare(lambda x, y: self._build(x, y, count=True), cache_bytes, check)

    def __repr__(self) -> str:
        return f"GGNOperator(n={self.n}, products={self.n_products})"

    # ------------------------------------------------------------------ graphs
    def _build(self, x: Any, y: Any, count: bool = False) -> tuple[_Chunk, int]:
        """The chunk's graphs and the bytes of the tensors they save."""
        size = 0

        def pack(t: Tensor) -> Tensor:
            nonlocal size
            size += t.numel() * t.element_size()
            return t

        hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
        with torch.enable_grad(), twice_differentiable():
            if count:
                with hooks:
                    chunk = self._graphs_of(x, y)
            else:
                chunk = self._graphs_of(x, y)
        return chunk, size

    def _graphs_of(self, x: Any, y: Any) -> _Chunk:
        batches = self._batches
        leaf = self.theta.clone().requires_grad_(True)
        out = batches.forward(batches.space.unflatten(leaf), x)
        o = out.detach().requires_grad_(True)
        total = batches.loss(o, y)[0]
        if not bool(torch.isfinite(total.detach()).all()):
            raise BasinscopeError(
                f"the loss at θ is {float(total.detach().sum()) / self._total} (not finite) on "
                "the evaluation data, so its curvature is undefined; check the model (did "
                "training diverge?) and the data"
            )
        if not out.requires_grad:
            raise BasinscopeError(
                "the model's output does not depend on the parameters of the ParamSpace in "
                "autograd's graph, so its Gauss–Newton matrix is zero"
            )
        w = torch.zeros_like(out, requires_grad=True)
        try:
            (jtw,) = torch.autograd.grad(out, leaf, w, create_graph=True, materialize_grads=True)
            (dlo,) = torch.autograd.grad(total, o, create_graph=True, materialize_grads=True)
        except torch.OutOfMemoryError:
            raise
        except RuntimeError as e:
            raise BasinscopeError(double_backward_failure(e)) from e
        # ∂ℓ/∂o without a graph: the loss is linear in the output, H_out = 0.
        return _Chunk(leaf, out, w, jtw, o, dlo if dlo.grad_fn is not None else None)

    # ---------------------------------------------------------------- products
    def _grad(self, y: Tensor, x: Tensor, v: Tensor, keep: bool) -> Tensor:
        """``∇_x (y · v)`` for one ``v`` (``[k, …]`` batched when ``self.batched``)."""
        batched = self.batched and v.shape[0] > 1 and v.ndim == y.ndim + 1
        try:
            (g,) = torch.autograd.grad(
                y, x, v, retain_graph=keep, is_grads_batched=batched, materialize_grads=True
            )
        except torch.OutOfMemoryError:
            raise
        except RuntimeError as e:
            raise BasinscopeError(double_backward_failure(e)) from e
        return g

    def _products(self, c: _Chunk, vs: Tensor, keep: bool) -> Tensor:
        """``[J_cᵀ H_c J_c v_i]_i`` (unnormalised) for the rows of ``vs``."""
        if c.dlo is None:
            return torch.zeros_like(vs)
        if self.batched and len(vs) > 1:
            jv = self._grad(c.jtw, c.w, vs, keep=True)
            hjv = self._grad(c.dlo, c.o, jv.to(c.o.dtype), keep=True)
            return self._grad(c.out, c.leaf, hjv.to(c.out.dtype), keep=keep)
        rows = []
        for i, v in enumerate(vs):
            last = not keep and i == len(vs) - 1
            jv = self._grad(c.jtw, c.w, v, keep=True)
            hjv = self._grad(c.dlo, c.o, jv.to(c.o.dtype), keep=not last)
            rows.append(self._grad(c.out, c.leaf, hjv.to(c.out.dtype), keep=not last))
        return torch.stack(rows)

    _undefined = "curvature"
    _zero = (
        "the Gauss–Newton matrix of the loss in this parameter space is identically "
        "zero at θ (a loss linear in the model's output, or an output that does not "
        "depend on these parameters), so there is no curvature to measure"
    )
    _nonfinite = (
        "the Gauss–Newton-vector product is not finite at θ (NaN or inf); the loss "
        "is not twice differentiable in the model's output there"
    )

    def _sum_products(self, vs: Tensor) -> Tensor:
        out = torch.zeros_like(vs)
        for c in self._graphs:
            out += self._products(c, vs, keep=True)
        for x, y in self._rest:
            chunk, _ = self._build(x, y)
            out += self._products(chunk, vs, keep=False)
        return out / self._total
