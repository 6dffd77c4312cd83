"""The Hessian as a linear operator, the symmetric-operator protocol, and sub-objectives.

:class:`HessianOperator` — ``v ↦ Hv`` (Pearlmutter 1994), reverse-over-reverse
(double backward) on the gradient graph of each data chunk, built once and kept
(within ``cache_bytes``) so a product costs one backward pass of the backward
graph. Several vectors at once: :meth:`HessianOperator.matmat`.

The estimators (Lanczos, Hutchinson, Hutch++, SLQ) need only a
:class:`SymmetricOperator`: ``n``, ``dtype``, ``device``, ``matvec`` and
``matmat``; a HessianOperator is one, and so is any symmetric matrix wrapped in
those five members (which is how the estimators are tested without a model).

Which product: measured on the shared 2-core CPU (MLP 784-256-128-10, 2,048
examples, float32; ms per product, minimum of repeated runs; machine quiet / busy with
1 thread / busy with 2 threads):

    reverse-over-reverse, gradient graph kept (the default)    11 / 33 / 23
    reverse-over-reverse, graph rebuilt per call of 8 vectors  13 / 60 / 106
    kept graph, 8 vectors vmapped (``batched=True``)           14 / 70 / 64
    forward-over-reverse ``jvp(grad(L))``                      31 / 81 / 121
    forward-over-reverse vmapped over 8 vectors                16 / 75 / 59
    ``torch.func.linearize(grad(L))`` after 0.4 s tracing      12 / 60 / 45

so products are reverse-over-reverse on the kept graph, one vector at a time.

In a process group (the Objective's ``dist``, outside :func:`basinscope._dist.local`)
both operators are data-parallel: each rank keeps the graphs of its contiguous data
shard alone (``shard_of``: memory divided by the ranks), and :meth:`matmat`
all-reduces the shards' float64 sums, ``H v = Σ_r Σ_{c ∈ shard r} (N_c/N) ∇²ℓ_c v``,
so every rank gets the same product (one process's to rounding) and the checks of a
product (finite, not identically zero, symmetric) see the whole of it. A failure
while building or multiplying on one rank is raised on every rank.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor

from .. import _dist
from ..errors import BasinscopeError
from ..objective import (
    Batches,
    Objective,
    double_backward_failure,
    refuse_if_asymmetric,
    shard_of,
    twice_differentiable,
)

if TYPE_CHECKING:
    from ._ggn import GGNOperator

# Gradient graphs kept between products (saved tensors, counted when built).
_CACHE_BYTES = 2**30


@runtime_checkable
class SymmetricOperator(Protocol):
    """What the estimators read of an operator: a symmetric ``n × n`` linear map.

    Attributes:
        n: the dimension. ``dtype``, ``device``: those of the vectors it takes.
    """

    n: int
    dtype: torch.dtype
    device: torch.device

    def matvec(self, v: Tensor) -> Tensor:
        """``[n] -> [n]``: ``A v``."""
        ...

    def matmat(self, vs: Tensor) -> Tensor:
        """``[k, n] -> [k, n]``: the rows ``A v_i``."""
        ...


# ------------------------------------------------------------------ operator
class _Products:
    """What the curvature operators share: the checked product loop, ``matvec``, ``@``,
    SciPy's view, and the one-time checks of the first dense product (not identically
    zero, symmetric). A subclass gives ``_sum_products(vs)`` and its two sentences."""

    n: int
    dtype: torch.dtype
    device: torch.device
    n_products: int
    _unchecked: bool
    _zero: str  # the sentence for a curvature that is identically zero
    _nonfinite: str  # the sentence for a product that is not finite
    _undefined: str  # what a random model's evaluation leaves undefined

    def _start(self, obj: Objective, theta: Tensor | None, batched: bool) -> None:
        """The Objective and the point θ, checked; in a process group (outside
        :func:`basinscope._dist.local`) the operator's data is this rank's shard."""
        if not isinstance(obj, Objective):
            raise BasinscopeError(f"expected a basinscope Objective, got {type(obj).__name__}")
        self.obj = obj
        self.n, self.dtype, self.device = obj.n, obj.dtype, obj.device
        self.batched = batched
        self.n_products = 0
        th = obj.theta0 if theta is None else torch.as_tensor(theta)
        if th.shape != (self.n,):
            raise BasinscopeError(f"theta must have shape ({self.n},), got {tuple(th.shape)}")
        self.theta = th.detach().to(self.device, self.dtype)
        self.dist = _dist.active(obj.dist)
        self._batches: Batches = (
            obj.batches if self.dist is None else shard_of(obj.batches, self.dist)
        )

    def _prepare(self, build: Any, cache_bytes: int, check: bool) -> None:
        """With ``check`` the model's evaluation must be deterministic (and the first
        dense product is checked later); then the chunks' graphs (:meth:`_keep`). A
        failure on one rank of a group is raised on every rank."""

        def prepare() -> tuple[list[Any], list[tuple[Any, Any]]]:
            if check:
                self.obj.check_determinism(
                    self.theta,
                    advice=f"its {self._undefined} is undefined: disable dropout and noise "
                    "layers in eval mode",
                )
            return self._keep(build, cache_bytes)

        self._graphs, self._rest = _dist.check(self.dist, prepare)
        self._unchecked = check  # until a dense vector has been multiplied

    def _keep(self, build: Any, cache_bytes: int) -> tuple[list[Any], list[tuple[Any, Any]]]:
        """Each chunk's graph ``build(x, y) -> (graph, bytes)`` kept while they fit in
        ``cache_bytes``; the chunks beyond are rebuilt at every product. In a group:
        the chunks of this rank's data shard alone."""
        graphs: list[Any] = []
        rest: list[tuple[Any, Any]] = []
        used = 0
        for x, y in self._batches.chunks():
            if used > cache_bytes:
                rest.append((x, y))
                continue
            graph, size = build(x, y)
            used += size
            if used <= cache_bytes:
                graphs.append(graph)
            else:
                rest.append((x, y))
        return graphs, rest

    @property
    def shape(self) -> tuple[int, int]:
        return (self.n, self.n)

    def _sum_products(self, vs: Tensor) -> Tensor:
        raise NotImplementedError

    def matmat(self, vs: Tensor) -> Tensor:
        """``[k, n] -> [k, n]``: the rows ``M v_i`` (k products)."""
        vs = torch.as_tensor(vs)
        if vs.ndim != 2 or vs.shape[1] != self.n:
            raise BasinscopeError(f"vectors must have shape (k, {self.n}), got {tuple(vs.shape)}")
        vs = vs.to(self.device, self.dtype)
        if self.dist is not None and _dist.active(self.dist) is None:
            raise BasinscopeError(
                "this curvature operator shares its products over the ranks of a process "
                "group, so it cannot be used inside one rank's share of point-parallel work"
            )
        # In a group: this rank's shard's sums, all-reduced (float64): every rank gets H v.
        out = _dist.reduce_sum(self.dist, lambda: (self._sum_products(vs),))[0]
        self.n_products += len(vs)
        if not torch.isfinite(out).all():
            raise BasinscopeError(self._nonfinite)
        if self._unchecked:
            self._check_curvature(vs, out)
        return out

    def matvec(self, v: Tensor) -> Tensor:
        """``[n] -> [n]``: ``M v`` (one product)."""
        return self.matmat(torch.as_tensor(v).reshape(1, -1))[0]

    def __matmul__(self, v: Tensor) -> Tensor:
        v = torch.as_tensor(v)
        return self.matvec(v) if v.ndim == 1 else self.matmat(v.T).T

    def as_linear_operator(self) -> Any:
        """A ``scipy.sparse.linalg.LinearOperator`` (float64 NumPy in and out)."""
        from scipy.sparse.linalg import LinearOperator

        def mv(x: np.ndarray) -> np.ndarray:
            v = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64).reshape(-1))
            return self.matvec(v).double().cpu().numpy()

        return LinearOperator((self.n, self.n), matvec=mv, dtype=np.float64)

    def _check_curvature(self, vs: Tensor, out: Tensor) -> None:
        dense = vs.ne(0).all(dim=1)
        if not dense.any():
            return
        self._unchecked = False
        if not out[dense].any(dim=1).all():
            raise BasinscopeError(self._zero)
        spent = self.n_products  # the check's two products are not the method's
        refuse_if_asymmetric(self.matmat, self.n, self.dtype, self.device)
        self.n_products = spent


class HessianOperator(_Products):
    """The Hessian of an Objective's mean loss at θ, as a linear operator on ``[n]`` vectors.

    ``H v = Σ_c (N_c/N) ∇_θ (∇_θ ℓ_c(θ) · v)`` over data chunks ``c`` of the
    Objective (``ℓ_c`` the chunk's batch-mean loss), by double backward. The
    gradient graph of a chunk is built once and kept while the tensors it saves
    fit in ``cache_bytes``; further chunks are recomputed for each call. In a
    process group each rank keeps its data shard's chunks only, and the products
    are summed over the ranks (see the module docstring).

    Args:
        obj: the Objective (its ParamSpace chooses the block of ``H``).
        theta: the point, ``[n]`` (default ``obj.theta0``).
        cache_bytes: budget for kept gradient graphs.
        batched: multiply several vectors in one vmapped double backward
            (``torch.autograd.grad(..., is_grads_batched=True)``) instead of a
            loop; on CPU the loop measured faster.
        check: verify that the model is deterministic (on construction: two
            forward passes) and that the Hessian is not identically zero (on the
            first product with a dense vector, such as every random start or
            probe: ``Hv = 0`` exactly for such a ``v`` means autograd sees no
            second derivative). Products are always checked to be finite.

    Attributes:
        n: the dimension. ``n_products``: Hessian-vector products so far.
    """

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

        def build(x: Any, y: Any) -> tuple[tuple[Tensor, Tensor], int]:
            leaf, g, size = self._gradient(x, y, count=True)
            return (leaf, g), size

        # (θ leaf, weighted gradient) per kept chunk; the others recomputed per call
        self._prepare(build, cache_bytes, check)

    def __repr__(self) -> str:
        return f"HessianOperator(n={self.n}, products={self.n_products})"

    def _gradient(self, x: Tensor, y: Tensor, count: bool = False) -> tuple[Tensor, Tensor, int]:
        """``(θ leaf, (N_c/N) ∇ℓ_c with its graph, bytes saved by the graph)``."""
        size = 0

        def pack(t: Tensor) -> Tensor:
            nonlocal size
            size += t.numel() * t.element_size()
            return t

        leaf = self.theta.clone().requires_grad_(True)
        with torch.enable_grad():
            if count:
                with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                    g = self._chunk_gradient(leaf, x, y)
            else:
                g = self._chunk_gradient(leaf, x, y)
        return leaf, g, size

    def _chunk_gradient(self, leaf: Tensor, x: Any, y: Any) -> Tensor:
        batches = self._batches  # in a group: the shard's (the whole data's totals)
        # Attention's fused kernels have no second derivative; the graph is recorded
        # on its math backend (the user's setting is restored on exit).
        with twice_differentiable():
            loss = batches.chunk_loss(batches.space.unflatten(leaf), x, y)
        if not bool(torch.isfinite(loss.detach()).all()):
            raise BasinscopeError(
                f"the loss at θ is {float(loss.detach().sum())} (not finite) on the evaluation "
                "data, so its Hessian is undefined; check the model (did training diverge?) "
                "and the data"
            )
        try:
            (g,) = torch.autograd.grad(loss, leaf, create_graph=True)
        except torch.OutOfMemoryError:
            raise
        except RuntimeError as e:
            raise BasinscopeError(
                f"the loss is not differentiable by autograd at θ ({_first_line(e)})"
            ) from e
        if g.grad_fn is None:
            raise BasinscopeError(
                "the loss is not twice differentiable by autograd: its gradient does not "
                "depend on the parameters in autograd's graph (a custom autograd Function "
                "whose backward is once-differentiable, or a loss linear in them)"
            )
        return g

    def _double_backward(self, leaf: Tensor, g: Tensor, vs: Tensor, keep: bool) -> Tensor:
        try:
            if self.batched and len(vs) > 1:
                (hv,) = torch.autograd.grad(g, leaf, vs, retain_graph=keep, is_grads_batched=True)
                return hv
            return torch.stack(
                [
                    torch.autograd.grad(g, leaf, v, retain_graph=keep or i < len(vs) - 1)[0]
                    for i, v in enumerate(vs)
                ]
            )
        except torch.OutOfMemoryError:
            raise
        except RuntimeError as e:
            raise BasinscopeError(double_backward_failure(e)) from e

    _undefined = "Hessian"
    _zero = (
        "the Hessian of the loss in this parameter space is identically zero at θ "
        "(a loss piecewise linear in these parameters, or a backward that autograd "
        "cannot differentiate), so there is no curvature to measure"
    )
    _nonfinite = (
        "the Hessian-vector product is not finite at θ (NaN or inf); "
        "the loss is not twice differentiable there"
    )

    def _sum_products(self, vs: Tensor) -> Tensor:
        out = torch.zeros_like(vs)
        for leaf, g in self._graphs:
            out += self._double_backward(leaf, g, vs, keep=True)
        for x, y in self._rest:
            leaf, g, _ = self._gradient(x, y)
            out += self._double_backward(leaf, g, vs, keep=False)
        return out


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


Curvature = Objective | HessianOperator

CURVATURES = ("hessian", "ggn")
"""The curvature matrices the measures take (``curvature=``): the Hessian ``∇²L`` or the
generalised Gauss–Newton matrix ``Jᵀ H_out J`` (:class:`~basinscope.hessian.GGNOperator`)."""


def check_curvature(curvature: Any) -> str:
    """``curvature`` if it is one of :data:`CURVATURES`; otherwise one sentence."""
    if not isinstance(curvature, str) or curvature not in CURVATURES:
        raise BasinscopeError(
            f"curvature must be 'hessian' or 'ggn' (the generalised Gauss–Newton matrix), "
            f"got {curvature!r}"
        )
    return curvature


def operator(
    obj: Curvature, theta: Tensor | None = None, *, curvature: str = "hessian", **kwargs: Any
) -> HessianOperator | GGNOperator:
    """The curvature operator of an Objective (an operator is returned as is).

    ``curvature="hessian"`` gives the :class:`HessianOperator`, ``"ggn"`` the
    :class:`~basinscope.hessian.GGNOperator` (the generalised Gauss–Newton matrix).
    Pass the operator to several measures to build its graphs once. Any
    :class:`SymmetricOperator` (a dense matrix wrapped in ``n``, ``dtype``,
    ``device``, ``matvec``, ``matmat``) is returned as is too, so the estimators
    run on it; ``curvature="ggn"`` with an operator that is not a GGNOperator is
    refused (an operator's matrix is already chosen).
    """
    from ._ggn import GGNOperator  # _ggn builds on this module: imported when called

    check_curvature(curvature)
    if isinstance(obj, HessianOperator | GGNOperator) or (
        not isinstance(obj, Objective) and isinstance(obj, SymmetricOperator)
    ):
        if theta is not None:
            raise BasinscopeError("theta applies to an Objective, not to a HessianOperator")
        if curvature == "ggn" and not isinstance(obj, GGNOperator):
            raise BasinscopeError(
                f"curvature='ggn' applies to an Objective; this {type(obj).__name__} is "
                "already a curvature matrix: pass the Objective, or a GGNOperator"
            )
        return obj
    if curvature == "ggn":
        return GGNOperator(obj, theta, **kwargs)
    return HessianOperator(obj, theta, **kwargs)


def hvp(obj: Objective, v: Tensor, theta: Tensor | None = None) -> Tensor:
    """``H v`` for ``v`` of shape ``[n]`` or ``[k, n]``, exact over the data (see HessianOperator)."""
    op = HessianOperator(obj, theta, check=False)
    v = torch.as_tensor(v)
    return op.matvec(v) if v.ndim == 1 else op.matmat(v)


def _key(op: HessianOperator | GGNOperator, **settings: Any) -> dict[str, Any]:
    """The partial-results key of a measure of ``op``: what its products depend on."""
    from .._keys import tensor_digest
    from ._ggn import GGNOperator

    if not isinstance(op, HessianOperator | GGNOperator):
        raise BasinscopeError(
            "path (resumable partial results) needs an Objective, a HessianOperator or a "
            f"GGNOperator, whose fingerprint keys the file; got {type(op).__name__}"
        )
    # The GGN's files carry its name; the Hessian's keys stay as they were (no key added).
    matrix = {"curvature": "ggn"} if isinstance(op, GGNOperator) else {}
    return {
        **op.obj.fingerprint(),
        "theta": tensor_digest(op.theta),
        "batched": op.batched,
        **matrix,
        **settings,
    }


# ------------------------------------------------------------ sub-objectives
def restrict(obj: Objective, include: str | Sequence[str]) -> Objective:
    """The Objective on a block of its coordinates: parameter or module names or globs.

    The other parameters stay at ``θ0``; the Hessian of the result is the
    diagonal block ``H_BB`` of ``obj``'s. Cheap: model and data are shared
    (no copies), only the ParamSpace and ``θ0`` are new. The same as
    :meth:`Objective.restrict`, which builds it.
    """
    return obj.restrict(include)
