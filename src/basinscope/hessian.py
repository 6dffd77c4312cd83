"""Curvature of the loss: Hessian eigenvalues, trace and spectral density.

All measures are of the Hessian ``H = ∇²L(θ)`` of the Objective's exact mean
loss ``L(θ) = (1/N) Σ_i ℓ(f(x_i; θ), y_i)`` over its whole evaluation set, in
its :class:`~basinscope.ParamSpace` (all parameters, or one block: a module, a
list of modules, a pattern), reached only through Hessian-vector products:

* :class:`HessianOperator` — ``v ↦ Hv`` (Pearlmutter 1994), reverse-over-reverse
  (double backward) on the gradient graph of each data chunk, built once and
  kept (within ``cache_bytes``) so a product costs one backward pass of the
  backward graph. Several vectors at once: :meth:`HessianOperator.matmat`.
* :func:`eigenvalues`, :func:`extremes` — top-k and bottom-k eigenpairs by
  thick-restart Lanczos (Wu & Simon 2000) with full reorthogonalisation. Both
  ends of the spectrum come from one Krylov space; the smallest eigenvalue is
  found directly, not by shifting. A pair is accepted when its residual
  ``‖Hv − λv‖ ≤ tol·‖H‖``; a symmetric matrix then has an eigenvalue within
  ``‖Hv − λv‖`` of λ (Parlett, *The Symmetric Eigenvalue Problem*, Thm 4.5.1),
  and typically within ``‖Hv − λv‖²/gap``.
* :func:`trace` — Hutchinson (1989), ``tr H = E[zᵀHz]`` over Rademacher ``z``,
  or Hutch++ (Meyer, Musco, Musco & Woodruff 2021): the trace of ``H`` on a
  sketched dominant subspace exactly plus Hutchinson on the rest. Both report
  the standard error and stop when it is ≤ ``rtol·|tr H|``.
* :func:`density` — the eigenvalue density by stochastic Lanczos quadrature
  (Lin, Saad & Yang 2016; Ghorbani, Krishnan & Xiao 2019): for a random unit
  ``v``, ``vᵀ g(H) v ≈ Σ_j w_j g(τ_j)`` with ``τ_j`` the eigenvalues of the
  Lanczos matrix and ``w_j`` the squared first components of its
  eigenvectors; averaged over runs and broadened by Gaussians.
* :func:`summary` — λ_max, λ_min, top-k, trace ± SE, and per-layer λ_max and
  trace, as one printable dataclass.

Every random vector (Lanczos start, probe, sketch column, SLQ start) is drawn
from ``(seed, index)`` alone (see :mod:`basinscope._rng`), in a stream of its
own per purpose, so work can be split or resumed and give the same numbers.

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
"""

from __future__ import annotations

import copy
import fnmatch
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ._checks import check_int, check_number
from ._io import atomic_write
from ._partial import PartialResults, open_partial
from ._rng import item_generator
from .errors import BasinscopeError
from .objective import Objective

# Gradient graphs kept between products (saved tensors, counted when built).
_CACHE_BYTES = 2**30

# Random streams: each purpose draws vector i from (seed, stream · 2³² + i).
_LANCZOS, _PROBE, _SKETCH, _SLQ = 1, 2, 3, 4


def _generator(seed: int, stream: int, index: int) -> torch.Generator:
    return item_generator(seed, (stream << 32) + index)


# ------------------------------------------------------------------ operator
class HessianOperator:
    """The Hessian of an Objective's mean loss at θ, as a linear operator on ``[n]`` vectors.

    ``H v = Σ_c (N_c/N) ∇_θ (∇_θ ℓ_c(θ) · v)`` over data chunks ``c`` of the
    Objective (``ℓ_c`` the chunk's batch-mean loss), by double backward. The
    gradient graph of a chunk is built once and kept while the tensors it saves
    fit in ``cache_bytes``; further chunks are recomputed for each call.

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
        if not isinstance(obj, Objective):
            raise BasinscopeError(f"expected a basinscope Objective, got {type(obj).__name__}")
        self.obj = obj
        self.n = obj.n
        self.dtype = obj.dtype
        self.device = obj.device
        self.batched = batched
        self.n_products = 0
        th = obj.theta0 if theta is None else torch.as_tensor(theta)
        if th.shape != (self.n,):
            raise BasinscopeError(f"theta must have shape ({self.n},), got {tuple(th.shape)}")
        self.theta = th.detach().to(self.device, self.dtype)
        if check:
            self._check_deterministic()
        self._graphs: list[tuple[Tensor, Tensor]] = []  # (θ leaf, weighted gradient)
        self._rest: list[tuple[Tensor, Tensor]] = []  # chunks recomputed per call
        used = 0
        for x, y in obj._chunks():
            if used > cache_bytes:
                self._rest.append((x, y))
                continue
            leaf, g, size = self._gradient(x, y, count=True)
            used += size
            if used <= cache_bytes:
                self._graphs.append((leaf, g))
            else:
                self._rest.append((x, y))
        self._unchecked = check  # until a dense vector has been multiplied

    def __repr__(self) -> str:
        return f"HessianOperator(n={self.n}, products={self.n_products})"

    @property
    def shape(self) -> tuple[int, int]:
        return (self.n, self.n)

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

    def _chunk_gradient(self, leaf: Tensor, x: Tensor, y: Tensor) -> Tensor:
        obj = self.obj
        loss = obj.loss_fn(obj._forward(obj.space.unflatten(leaf), x), y)
        loss = loss * (len(y) / obj.n_examples)
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
            raise BasinscopeError(
                f"the loss is not twice differentiable by autograd ({_first_line(e)})"
            ) from e

    def matmat(self, vs: Tensor) -> Tensor:
        """``[k, n] -> [k, n]``: the rows ``H v_i`` (k products)."""
        vs = torch.as_tensor(vs)
        if vs.ndim != 2 or vs.shape[1] != self.n:
            raise BasinscopeError(f"vectors must have shape (k, {self.n}), got {tuple(vs.shape)}")
        vs = vs.to(self.device, self.dtype)
        out = torch.zeros_like(vs)
        for leaf, g in self._graphs:
            out += self._double_backward(leaf, g, vs, keep=True)
        for x, y in self._rest:
            leaf, g, _ = self._gradient(x, y)
            out += self._double_backward(leaf, g, vs, keep=False)
        self.n_products += len(vs)
        if not torch.isfinite(out).all():
            raise BasinscopeError(
                "the Hessian-vector product is not finite at θ (NaN or inf); "
                "the loss is not twice differentiable there"
            )
        if self._unchecked:
            self._check_curvature(vs, out)
        return out

    def matvec(self, v: Tensor) -> Tensor:
        """``[n] -> [n]``: ``H v`` (one product)."""
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

    # ----------------------------------------------------------------- checks
    def _check_deterministic(self) -> None:
        obj = self.obj
        x = obj.x[: min(obj.batch_size, 256)]
        params = obj.space.unflatten(self.theta)
        with torch.no_grad():
            a, b = obj._forward(params, x), obj._forward(params, x)
        if not torch.equal(a, b):
            raise BasinscopeError(
                "the model is not deterministic (two evaluations of the same weights differ "
                f"by up to {(a - b).abs().max().item():.3g}), so its Hessian is undefined; "
                "disable dropout and noise layers in eval mode"
            )

    def _check_curvature(self, vs: Tensor, out: Tensor) -> None:
        dense = vs.ne(0).all(dim=1)
        if not dense.any():
            return
        self._unchecked = False
        if not out[dense].any(dim=1).all():
            raise BasinscopeError(
                "the Hessian of the loss in this parameter space is identically zero at θ "
                "(a loss piecewise linear in these parameters, or a backward that autograd "
                "cannot differentiate), so there is no curvature to measure"
            )


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


Curvature = Objective | HessianOperator


def operator(obj: Curvature, theta: Tensor | None = None, **kwargs: Any) -> HessianOperator:
    """The :class:`HessianOperator` of an Objective (an operator is returned as is).

    Pass the operator to several measures to build the gradient graph once.
    """
    if isinstance(obj, HessianOperator):
        if theta is not None:
            raise BasinscopeError("theta applies to an Objective, not to a HessianOperator")
        return obj
    return HessianOperator(obj, theta, **kwargs)


def hvp(obj: Objective, v: Tensor, theta: Tensor | None = None) -> Tensor:
    """``H v`` for ``v`` of shape ``[n]`` or ``[k, n]``, exact over the data (see HessianOperator)."""
    op = HessianOperator(obj, theta, check=False)
    v = torch.as_tensor(v)
    return op.matvec(v) if v.ndim == 1 else op.matmat(v)


# ------------------------------------------------------------ sub-objectives
def _matches(name: str, pattern: str) -> bool:
    return name == pattern or name.startswith(pattern + ".") or fnmatch.fnmatchcase(name, pattern)


def restrict(obj: Objective, include: str | Sequence[str]) -> Objective:
    """The Objective on a block of its coordinates: parameter or module names or globs.

    The other parameters stay at ``θ0``; the Hessian of the result is the
    diagonal block ``H_BB`` of ``obj``'s. Cheap: model and data are shared
    (no copies), only the ParamSpace and ``θ0`` are new.
    """
    patterns = [include] if isinstance(include, str) else list(include)
    space = obj.space
    if not patterns:
        raise BasinscopeError("include names no parameters; give a module or parameter name")
    for p in patterns:
        if not isinstance(p, str) or not any(_matches(n, p) for n in space.names):
            names = ", ".join(_blocks(space.names)[:8])
            raise BasinscopeError(
                f"no parameter of the Objective matches {p!r}; modules are {names}"
            )
    sub_space = space.select([n for n in space.names if any(_matches(n, p) for p in patterns)])
    pieces = space.unflatten(obj.theta0)
    sub = copy.copy(obj)
    sub.space = sub_space
    sub.theta0 = torch.cat([pieces[n].reshape(-1) for n in sub_space.names]).clone()
    # The first-layer shortcut of evaluate_affine is found per space.
    if hasattr(sub, "_first"):
        sub._first = False
    if hasattr(sub, "_first_cache"):
        sub._first_cache = None
    return sub


def _blocks(names: Sequence[str]) -> list[str]:
    """Module paths of parameter names in order (``fc1.weight`` -> ``fc1``)."""
    out: list[str] = []
    for n in names:
        block = n.rsplit(".", 1)[0] if "." in n else n
        if block not in out:
            out.append(block)
    return out


# ------------------------------------------------------------------- Lanczos
@dataclass(frozen=True)
class Eigenpairs:
    """Extreme eigenpairs of ``H``.

    Attributes:
        values: ``[k]`` eigenvalues, most extreme first (descending for
            ``"top"``, ascending for ``"bottom"``).
        vectors: ``[k, n]`` unit eigenvectors in the Objective's space (dtype
            and device of the Objective), sign fixed so the largest-magnitude
            entry is positive.
        residuals: ``[k]`` ``‖H v_i − λ_i v_i‖``, recomputed from stored products.
        which: ``"top"`` or ``"bottom"``.
        tol: the requested relative tolerance: accepted when every residual
            ``≤ tol·scale``.
        scale: ``‖H‖`` as estimated by the largest ``|Ritz value|``.
        n_products: Hessian-vector products used (by the whole Lanczos run).
        converged: whether all residuals met the tolerance.
        n: the dimension.
    """

    values: np.ndarray
    vectors: Tensor
    residuals: np.ndarray
    which: str
    tol: float
    scale: float
    n_products: int
    converged: bool
    n: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (without the eigenvectors)."""
        return {
            "which": self.which,
            "values": [float(v) for v in self.values],
            "residuals": [float(r) for r in self.residuals],
            "tol": self.tol,
            "scale": self.scale,
            "n_products": self.n_products,
            "converged": self.converged,
            "n": self.n,
        }


@dataclass
class _Krylov:
    """The final state of a Lanczos run: wanted Ritz pairs and the basis with its products."""

    top: tuple[np.ndarray, Tensor, np.ndarray]
    bottom: tuple[np.ndarray, Tensor, np.ndarray]
    basis: Tensor  # [j, n] orthonormal rows
    products: Tensor  # [j, n] H @ basis rows
    scale: float
    n_products: int
    converged: bool


def _check_tol(tol: float, dtype: torch.dtype) -> float:
    if not (isinstance(tol, int | float) and math.isfinite(tol) and 0 < tol < 1):
        raise BasinscopeError(f"tol must be a relative tolerance in (0, 1), got {tol}")
    floor = 10 * torch.finfo(dtype).eps
    if tol < floor:
        raise BasinscopeError(
            f"tol={tol:g} is below what {dtype} products can reach (about {floor:.0e}); "
            "build the Objective with dtype=torch.float64 for tighter tolerances"
        )
    return float(tol)


def _check_k(k: int, n: int, what: str = "k") -> int:
    if not isinstance(k, int | np.integer) or isinstance(k, bool) or k < 0:
        raise BasinscopeError(f"{what} must be a non-negative integer, got {k!r}")
    if k > n:
        raise BasinscopeError(
            f"{what}={k} is larger than the dimension of the parameter space (n={n}); "
            f"ask for at most {n} eigenvalues"
        )
    return int(k)


def _eigh(T: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenpairs of a small symmetric matrix, ascending. Through torch, not NumPy: NumPy's
    BLAS threads ignore ``torch.set_num_threads`` and on a busy 2-core machine were
    measured 400× slower (0.4 s vs 1 ms for 132×132)."""
    theta, S = torch.linalg.eigh(torch.from_numpy(np.ascontiguousarray(T, dtype=np.float64)))
    return theta.numpy(), S.numpy()


def _wanted(j: int, n_top: int, n_bottom: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices into ascending Ritz values: top descending, bottom ascending."""
    top = np.arange(j - 1, j - 1 - min(n_top, j), -1)
    bottom = np.arange(min(n_bottom, j))
    return top, bottom


def _keep(j: int, n_top: int, n_bottom: int) -> np.ndarray:
    """Ritz vectors kept at a thick restart: the wanted ones and about half the rest nearby."""
    want = n_top + n_bottom
    extra = (j - want) // 2
    if n_bottom == 0:
        top_extra = extra
    elif n_top == 0:
        top_extra = 0
    else:
        top_extra = extra * n_top // want
    bottom_extra = extra - top_extra if n_bottom else 0
    bottom = np.arange(n_bottom + bottom_extra)
    top = np.arange(j - n_top - top_extra, j)
    return np.union1d(bottom, top)


def _lanczos(
    op: HessianOperator,
    n_top: int,
    n_bottom: int,
    *,
    tol: float,
    seed: int,
    max_products: int,
    max_basis: int | None,
) -> _Krylov:
    """Thick-restart Lanczos (Wu & Simon 2000) for both ends of the spectrum at once.

    Full reorthogonalisation (classical Gram–Schmidt, twice), the Rayleigh
    quotient ``T = Vᵀ(HV)`` formed from the stored products, and a thick
    restart onto the wanted Ritz vectors plus about half the others when the
    basis is full. Stops when every wanted pair has ``‖Hy − θy‖ ≤ tol·max|θ|``,
    first by the estimate ``β_j |s_j|``, then checked on ``HY = (HV)S``.

    Written here rather than calling ``scipy.sparse.linalg.eigsh`` because one
    run gives both ends (``λ_max`` and ``λ_min`` for the price of one), the
    basis and its products are kept for deflated trace estimation, and the
    residuals are those of the returned vectors; on the benchmark MLP it also
    needs fewer products than ``eigsh`` for the same residual tolerance.
    """
    n = op.n
    want = n_top + n_bottom
    m = min(n, max_basis if max_basis is not None else max(2 * want + 16, 32))
    if m < n and m < want + 2:
        raise BasinscopeError(
            f"max_basis={max_basis} is too small for {want} eigenpairs; use at least {want + 2}"
        )
    dt, dev = op.dtype, op.device
    gen = _generator(seed, _LANCZOS, 0)
    V = torch.empty(m + 1, n, dtype=dt, device=dev)  # rows ≥ j are never read
    W = torch.empty(m, n, dtype=dt, device=dev)
    T = np.zeros((m, m))
    v = torch.randn(n, generator=gen, dtype=torch.float64).to(dev, dt)
    V[0] = v / v.norm()
    j = 0
    used = 0
    while True:
        w = op.matvec(V[j])
        used += 1
        W[j] = w
        basis = V[: j + 1]
        h = basis @ w
        T[: j + 1, j] = T[j, : j + 1] = h.double().cpu().numpy()
        f = w - h @ basis
        f -= (basis @ f) @ basis
        beta = float(f.norm())
        j += 1
        theta, S = _eigh(T[:j, :j])
        scale = max(abs(theta[0]), abs(theta[-1]), np.finfo(np.float64).tiny)
        top, bottom = _wanted(j, n_top, n_bottom)
        idx = np.concatenate([top, bottom])
        est = beta * np.abs(S[-1, idx])
        full = j == n
        if full or (j >= want and np.all(est <= tol * scale)) or used >= max_products:
            res = _residuals(V[:j], W[:j], theta[idx], S[:, idx])
            if full or np.all(res <= tol * scale) or used >= max_products:
                converged = bool(full or np.all(res <= tol * scale))
                return _finish(V[:j], W[:j], theta, S, top, bottom, scale, used, converged)
        if beta <= 100 * torch.finfo(dt).eps * float(w.norm()):
            # An invariant subspace: its Ritz pairs are exact; continue from a fresh
            # random vector orthogonal to it (coupling zero).
            f = torch.randn(n, generator=gen, dtype=torch.float64).to(dev, dt)
            for _ in range(2):
                f -= (V[:j] @ f) @ V[:j]
            beta = float(f.norm())
        V[j] = f / beta
        if j == m:
            keep = _keep(j, n_top, n_bottom)
            Sk = torch.from_numpy(np.ascontiguousarray(S[:, keep].T)).to(dev, dt)
            nxt = V[j].clone()
            l = len(keep)
            V[:l] = Sk @ V[:j]
            W[:l] = Sk @ W[:j]
            V[l] = nxt
            T[:] = 0.0
            T[np.arange(l), np.arange(l)] = theta[keep]
            j = l


def _residuals(V: Tensor, W: Tensor, theta: np.ndarray, S: np.ndarray) -> np.ndarray:
    """``‖HY − θY‖`` per Ritz pair, with ``Y = SᵀV`` and ``HY = SᵀW`` (no products)."""
    if S.shape[1] == 0:
        return np.zeros(0)
    St = torch.from_numpy(np.ascontiguousarray(S.T)).to(V.device, V.dtype)
    Y, HY = St @ V, St @ W
    th = torch.from_numpy(theta).to(V.device, V.dtype)[:, None]
    return (HY - th * Y).norm(dim=1).double().cpu().numpy()


def _finish(
    V: Tensor,
    W: Tensor,
    theta: np.ndarray,
    S: np.ndarray,
    top: np.ndarray,
    bottom: np.ndarray,
    scale: float,
    used: int,
    converged: bool,
) -> _Krylov:
    def pairs(idx: np.ndarray) -> tuple[np.ndarray, Tensor, np.ndarray]:
        St = torch.from_numpy(np.ascontiguousarray(S[:, idx].T)).to(V.device, V.dtype)
        Y = St @ V
        Y = Y / Y.norm(dim=1, keepdim=True)
        pivot = Y.abs().argmax(dim=1, keepdim=True)
        Y = Y * torch.sign(Y.gather(1, pivot))
        return theta[idx].copy(), Y, _residuals(V, W, theta[idx], S[:, idx])

    return _Krylov(
        top=pairs(top),
        bottom=pairs(bottom),
        basis=V,
        products=W,
        scale=float(scale),
        n_products=used,
        converged=converged,
    )


def extremes(
    obj: Curvature,
    top: int = 1,
    bottom: int = 1,
    *,
    tol: float = 1e-4,
    seed: int = 0,
    max_products: int = 2000,
    max_basis: int | None = None,
) -> tuple[Eigenpairs, Eigenpairs]:
    """The ``top`` largest and ``bottom`` smallest eigenpairs of ``H``, from one Lanczos run.

    Args:
        obj: an Objective (its ParamSpace is the block of ``H``) or a HessianOperator.
        top, bottom: how many at each end (``top + bottom ≥ 1``, each ``≤ n``).
        tol: relative tolerance: each pair is accepted when ``‖Hv − λv‖ ≤
            tol·‖H‖`` (``‖H‖`` estimated by the largest ``|λ|`` found), which
            puts λ within ``tol·‖H‖`` of an eigenvalue, and usually far closer.
        seed: the start vector is ``N(0, I)`` from ``(seed, 0)``.
        max_products: stop there (``converged=False``) if not converged.
        max_basis: Lanczos vectors kept (memory ``2·max_basis·n`` numbers);
            default ``max(2(top + bottom) + 16, 32)``.

    Returns:
        ``(top pairs, bottom pairs)``; both report the run's total products.
    """
    top, bottom = _check_k(top, obj.n, "top"), _check_k(bottom, obj.n, "bottom")
    if top + bottom == 0:
        raise BasinscopeError("ask for at least one eigenvalue (top + bottom ≥ 1)")
    max_products = check_int("max_products", max_products, minimum=1)
    if max_basis is not None:
        max_basis = check_int("max_basis", max_basis, minimum=1)
    seed = check_int("seed", seed, minimum=0)
    tol = _check_tol(tol, obj.dtype)
    op = operator(obj)
    kr = _lanczos(
        op,
        top,
        bottom,
        tol=tol,
        seed=seed,
        max_products=max_products,
        max_basis=max_basis,
    )
    return _pairs(kr, "top", tol, op.n), _pairs(kr, "bottom", tol, op.n)


def _pairs(kr: _Krylov, which: str, tol: float, n: int) -> Eigenpairs:
    values, vectors, residuals = kr.top if which == "top" else kr.bottom
    return Eigenpairs(
        values=values,
        vectors=vectors,
        residuals=residuals,
        which=which,
        tol=float(tol),
        scale=kr.scale,
        n_products=kr.n_products,
        converged=kr.converged,
        n=n,
    )


def eigenvalues(
    obj: Curvature,
    k: int = 1,
    *,
    which: str = "top",
    tol: float = 1e-4,
    seed: int = 0,
    max_products: int = 2000,
    max_basis: int | None = None,
) -> Eigenpairs:
    """The ``k`` largest (``which="top"``) or smallest (``"bottom"``) eigenpairs of ``H``.

    Thick-restart Lanczos; see :func:`extremes` for the arguments. The smallest
    eigenvalues are found directly (the low end of the same Krylov space), not
    by shifting ``H − λ_max I``. For an indefinite ``H`` (a saddle)
    ``eigenvalues(obj, 1, which="bottom").values[0] < 0``.
    """
    if which not in ("top", "bottom"):
        raise BasinscopeError(f"which must be 'top' or 'bottom', got {which!r}")
    if _check_k(k, obj.n) < 1:
        raise BasinscopeError(f"k must be a positive integer, got {k}")
    n_top, n_bottom = (k, 0) if which == "top" else (0, k)
    t, b = extremes(
        obj,
        n_top,
        n_bottom,
        tol=tol,
        seed=seed,
        max_products=max_products,
        max_basis=max_basis,
    )
    return t if which == "top" else b


def top_directions(obj: Curvature, k: int = 2, *, tol: float = 1e-4, seed: int = 0) -> Tensor:
    """The top-``k`` Hessian eigenvectors as ``[k, n]`` unit directions for :func:`basinscope.plane`.

    ``bs.plane(obj, *hessian.top_directions(obj), span=(-1, 1), steps=31)``
    draws the loss in the plane of the two sharpest directions (unit length,
    not filter-normalised; scale the span accordingly).
    """
    return eigenvalues(obj, k, which="top", tol=tol, seed=seed).vectors


# --------------------------------------------------------------------- trace
@dataclass(frozen=True)
class TraceEstimate:
    """``tr H`` estimated from random probes.

    Attributes:
        value: the estimate, ``exact + mean(samples)``.
        stderr: its standard error, ``std(samples)/√S`` (ddof = 1).
        method: ``"hutchinson"``, ``"hutch++"`` or ``"deflated"`` (Hutchinson
            on the complement of a Lanczos basis).
        exact: the trace on the deflated subspace (0 for Hutchinson).
        rank: dimension of that subspace.
        samples: ``[S]`` the probe values ``zᵀ(PHP)z``.
        n_products: Hessian-vector products used.
        rtol, atol: the stopping rule, ``stderr ≤ max(rtol·|value|, atol)``.
        converged: whether the rule was met within the product budget.
        seed: the probes' seed.
    """

    value: float
    stderr: float
    method: str
    exact: float
    rank: int
    samples: np.ndarray
    n_products: int
    rtol: float
    atol: float
    converged: bool
    seed: int

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["samples"] = [float(s) for s in self.samples]
        d["n_probes"] = len(self.samples)
        return d


def _rademacher(n: int, seed: int, stream: int, index: int) -> Tensor:
    g = _generator(seed, stream, index)
    return (torch.randint(0, 2, (n,), generator=g, dtype=torch.int8) * 2 - 1).to(torch.float64)


def _check_positive(name: str, value: float, zero: bool = False) -> float:
    ok = (
        isinstance(value, int | float)
        and math.isfinite(value)
        and (value >= 0 if zero else value > 0)
    )
    if not ok:
        raise BasinscopeError(
            f"{name} must be a {'non-negative' if zero else 'positive'} number, got {value}"
        )
    return float(value)


def _hutchinson(
    op: HessianOperator,
    Q: Tensor | None,
    exact: float,
    *,
    method: str,
    rtol: float,
    atol: float,
    min_probes: int,
    max_probes: int,
    seed: int,
    spent: int,
    done: PartialResults | None = None,
) -> TraceEstimate:
    """``exact`` + Hutchinson on ``PHP`` (``P = I − QᵀQ``, ``Q`` orthonormal rows).

    Probe ``i`` is the Rademacher ``z(seed, i)``, projected by ``P``; probes are
    added until ``SE ≤ max(rtol·|value|, atol)`` (checked after every probe, so
    the result does not depend on how many products a call makes). Probe values
    already in ``done`` are reused (and counted in ``n_products``, the products
    the estimate is made of); new ones are stored there.
    """
    start = op.n_products
    reused = 0
    done = done if done is not None else PartialResults(None, {}, "trace probes", {})
    rank = 0 if Q is None else len(Q)
    samples: list[float] = []
    converged = rank == op.n
    block = 8 if op.batched else 1
    while not converged and len(samples) < max_probes:
        first = len(samples)
        count = min(block, max_probes - first)
        idx = range(first, first + count)
        if done.missing(idx):
            Z = torch.stack([_rademacher(op.n, seed, _PROBE, i) for i in idx])
            Z = Z.to(op.device, op.dtype)
            if rank:
                Z = Z - (Z @ Q.T) @ Q
            values = (Z * op.matmat(Z)).sum(dim=1).double().cpu().tolist()
            done.update(dict(zip(idx, values, strict=True)))
        else:
            values = [float(done.get(i)) for i in idx]
            reused += count
        for value in values:
            samples.append(value)
            s = len(samples)
            if s >= min_probes:
                arr = np.asarray(samples)
                se = arr.std(ddof=1) / math.sqrt(s)
                if se <= max(rtol * abs(exact + arr.mean()), atol):
                    converged = True
                    break
    arr = np.asarray(samples, dtype=np.float64)
    s = len(arr)
    return TraceEstimate(
        value=exact + (float(arr.mean()) if s else 0.0),
        stderr=float(arr.std(ddof=1) / math.sqrt(s))
        if s > 1
        else (0.0 if rank == op.n else math.inf),
        method=method,
        exact=exact,
        rank=rank,
        samples=arr,
        n_products=spent + op.n_products - start + reused,
        rtol=rtol,
        atol=atol,
        converged=converged,
        seed=seed,
    )


def trace(
    obj: Curvature,
    *,
    method: str = "hutchinson",
    rtol: float = 1e-2,
    atol: float = 0.0,
    min_probes: int = 10,
    max_products: int = 1000,
    sketch: int = 16,
    seed: int = 0,
    path: str | Path | None = None,
) -> TraceEstimate:
    """``tr H`` by Hutchinson or Hutch++, with its standard error and a stopping rule.

    * ``"hutchinson"`` (Hutchinson 1989; Avron & Toledo 2011):
      ``tr H ≈ (1/S) Σ_i z_iᵀ H z_i``, Rademacher ``z_i``; the variance of one
      sample is ``2(‖H‖_F² − Σ_i H_ii²)``.
    * ``"hutch++"`` (Meyer, Musco, Musco & Woodruff 2021): ``Q = orth(HS)``
      for a Rademacher ``n×sketch`` sketch ``S``; ``tr H = tr(QᵀHQ) + tr(PHP)``,
      ``P = I − QQᵀ``, the first exact, the second by Hutchinson on ``Pz``.
      Costs ``2·sketch`` products up front and removes the variance of the
      few dominant eigenvalues of a trained network (Papyan 2019).

    Which is cheaper depends on the spectrum. Hutch++ wins when a few
    eigenvalues carry most of ``tr H`` (small or heavily overfit models); when
    the bulk carries it, Hutchinson's relative variance is already small (on
    the benchmark MLP, n = 235k: 11 products to 1% for Hutchinson, 42 for
    Hutch++), hence the default. :func:`summary` gets both: it deflates by
    its Lanczos basis, whose products it already has.

    Probes are added one at a time until ``stderr ≤ max(rtol·|value|, atol)``
    (after at least ``min_probes``) or ``max_products`` is spent
    (``converged=False``). Probe ``i`` is drawn from ``(seed, i)``, sketch
    column ``i`` from ``(seed, i)`` in a stream of its own.

    With ``path`` (a JSON file of partial results, :mod:`basinscope._partial`)
    each probe's value ``zᵀ(PHP)z`` is stored as it finishes and a rerun reuses
    them, giving the same estimate bit for bit; Hutch++'s sketch (``2·sketch``
    products) is recomputed, since storing it would take ``sketch·n`` numbers.
    Keyed by the Objective's fingerprint, θ, ``method``, ``sketch``, ``seed``
    and the operator's ``batched`` (not the stopping rule: a rerun with a
    tighter ``rtol`` continues from the stored probes).
    """
    rtol, atol = _check_positive("rtol", rtol), _check_positive("atol", atol, zero=True)
    if method not in ("hutchinson", "hutch++"):
        raise BasinscopeError(f"method must be 'hutchinson' or 'hutch++', got {method!r}")
    min_probes = check_int("min_probes", min_probes, minimum=2)
    sketch = check_int("sketch", sketch, minimum=1)
    max_products = check_int("max_products", max_products, minimum=1)
    seed = check_int("seed", seed, minimum=0)
    sketch = min(sketch, obj.n) if method == "hutch++" else 0
    if 2 * sketch + min_probes > max_products:
        raise BasinscopeError(
            f"max_products={max_products} is too small for {2 * sketch} sketch products "
            f"and {min_probes} probes"
        )
    op = operator(obj)
    key = _key(op, method=method, sketch=sketch, seed=seed) if path is not None else {}
    with open_partial(path, key, what="Hessian trace probes") as done:
        Q, exact = None, 0.0
        if sketch:
            S = torch.stack([_rademacher(op.n, seed, _SKETCH, i) for i in range(sketch)])
            Y = op.matmat(S.to(op.device, op.dtype))
            Q = torch.linalg.qr(Y.T.double()).Q.T.to(op.dtype)  # [sketch, n], orthonormal rows
            exact = float((Q * op.matmat(Q)).sum(dtype=torch.float64))
        return _hutchinson(
            op,
            Q,
            exact,
            method=method,
            rtol=rtol,
            atol=atol,
            min_probes=min_probes,
            max_probes=max_products - 2 * sketch,
            seed=seed,
            spent=2 * sketch,
            done=done,
        )


def _key(op: HessianOperator, **settings: Any) -> dict[str, Any]:
    """The partial-results key of a measure of ``op``: what its products depend on."""
    from ._keys import tensor_digest

    return {
        **op.obj.fingerprint(),
        "theta": tensor_digest(op.theta),
        "batched": op.batched,
        **settings,
    }


# ------------------------------------------------------------------- density
@dataclass(frozen=True)
class Density:
    """Eigenvalue density of ``H`` by stochastic Lanczos quadrature.

    Attributes:
        nodes: ``[runs, steps]`` Ritz values ``τ_j`` of each run (NaN-padded
            where a run ended early on an invariant subspace).
        weights: ``[runs, steps]`` quadrature weights ``w_j`` (sum 1 per run).
        grid: ``[points]`` eigenvalue axis.
        density: ``[points]`` ``φ(t) = (1/R) Σ_r Σ_j w_rj 𝒩(t; τ_rj, σ²)``;
            integrates to 1.
        sigma: the Gaussian broadening σ.
        negative_mass: estimated fraction of negative eigenvalues,
            ``(1/R) Σ_r Σ_{τ_rj<−zero_tol·max|τ|} w_rj``; ``negative_mass_se``
            its SE over runs.
        n: the dimension; ``n_products``: products used; ``seed``.
    """

    nodes: np.ndarray
    weights: np.ndarray
    grid: np.ndarray
    density: np.ndarray
    sigma: float
    negative_mass: float
    negative_mass_se: float
    n: int
    n_products: int
    seed: int

    def moment(self, p: int) -> float:
        """``(1/R) Σ_r Σ_j w_rj τ_rj^p``, an unbiased estimate of ``tr(Hᵖ)/n`` (before broadening)."""
        return float(np.mean(self._run_moments(p)))

    def moment_se(self, p: int) -> float:
        """Standard error over runs of :meth:`moment` (``inf`` for one run)."""
        m = self._run_moments(p)
        return float(m.std(ddof=1) / math.sqrt(len(m))) if len(m) > 1 else math.inf

    def _run_moments(self, p: int) -> np.ndarray:
        return np.nansum(self.weights * self.nodes.astype(np.float64) ** p, axis=1)

    def to_dict(self) -> dict[str, Any]:
        return {
            "nodes": [[float(t) for t in row if not np.isnan(t)] for row in self.nodes],
            "weights": [
                [float(w) for w, t in zip(wr, tr, strict=True) if not np.isnan(t)]
                for wr, tr in zip(self.weights, self.nodes, strict=True)
            ],
            "grid": self.grid.tolist(),
            "density": self.density.tolist(),
            "sigma": self.sigma,
            "negative_mass": self.negative_mass,
            "negative_mass_se": self.negative_mass_se,
            "trace_estimate": self.n * self.moment(1),
            "n": self.n,
            "n_products": self.n_products,
            "seed": self.seed,
        }


def _slq_run(op: HessianOperator, steps: int, v: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """One Lanczos quadrature: nodes and weights from ``steps`` products starting at unit ``v``."""
    n = op.n
    m = min(steps, n)
    V = torch.zeros(m, n, dtype=op.dtype, device=op.device)
    V[0] = v / v.norm()
    alpha, beta = np.zeros(m), np.zeros(m)
    j = 0
    while True:
        w = op.matvec(V[j])
        w_norm = float(w.norm())
        alpha[j] = float(V[j] @ w)
        w = w - alpha[j] * V[j] - (beta[j - 1] * V[j - 1] if j else 0)
        for _ in range(2):  # full reorthogonalisation, as Ghorbani et al.
            w -= (V[: j + 1] @ w) @ V[: j + 1]
        j += 1
        if j == m:
            break
        b = float(w.norm())
        if b <= 100 * torch.finfo(op.dtype).eps * w_norm:
            break  # invariant subspace: the quadrature is exact
        beta[j - 1] = b
        V[j] = w / b
    Tm = np.diag(alpha[:j]) + np.diag(beta[: j - 1], 1) + np.diag(beta[: j - 1], -1)
    tau, U = _eigh(Tm)
    return tau, U[0] ** 2


def density(
    obj: Curvature,
    *,
    runs: int = 4,
    steps: int = 64,
    sigma: float | None = None,
    points: int = 4001,
    zero_tol: float = 1e-5,
    seed: int = 0,
    path: str | Path | None = None,
) -> Density:
    """Eigenvalue spectral density by stochastic Lanczos quadrature (Ghorbani et al. 2019).

    Run ``r`` starts from the Rademacher vector ``(seed, r)`` normalised to unit
    length and takes ``steps`` Lanczos steps with full reorthogonalisation; the
    eigenvalues ``τ_j`` and squared first eigenvector components ``w_j`` of the
    tridiagonal ``T`` satisfy ``Σ_j w_j τ_j^p = vᵀHᵖv`` for ``p < 2·steps``, so
    ``n·Σ_j w_j τ_j^p`` is a Hutchinson estimate of ``tr(Hᵖ)``. The density is
    ``φ(t) = (1/R) Σ_r Σ_j w_rj 𝒩(t; τ_rj, σ²)`` on ``points`` values spanning
    the nodes ± 6σ (default ``σ = (τ_max − τ_min)/400``).

    The negative spectral mass counts the weight of nodes below
    ``−zero_tol·max|τ|``, so that zero eigenvalues (dead units, symmetries),
    which rounding puts on either side of 0, do not count as negative. It is a
    quadrature estimate: with fewer steps than distinct eigenvalues a node may
    merge eigenvalues on both sides of 0.

    With ``path`` (a JSON file of partial results, :mod:`basinscope._partial`)
    each run's nodes and weights are stored as it finishes and a rerun computes
    only the missing runs, giving the same density bit for bit. Keyed by the
    Objective's fingerprint, θ, ``steps``, ``seed`` and the operator's
    ``batched`` (not ``runs``: a rerun with more runs reuses the stored ones).

    Returns:
        A :class:`Density` (``runs·steps`` products at most; stored runs count
        with the products they took).
    """
    runs = check_int("runs", runs, minimum=1)
    steps = check_int("steps", steps, minimum=1)
    points = check_int("points", points, minimum=1)
    seed = check_int("seed", seed, minimum=0)
    if sigma is not None:
        sigma = check_number("sigma", sigma, positive=True)
    zero_tol = _check_positive("zero_tol", zero_tol, zero=True)
    op = operator(obj)
    start = op.n_products
    m = min(steps, op.n)
    nodes = np.full((runs, m), np.nan)
    weights = np.zeros((runs, m))
    reused = 0
    key = _key(op, steps=m, seed=seed) if path is not None else {}
    with open_partial(path, key, what="spectral-density Lanczos runs") as done:
        for r in range(runs):
            if r in done:
                tau, w = (np.asarray(a, dtype=np.float64) for a in done.get(r))
                reused += len(tau)  # one product per Lanczos step
            else:
                v = _rademacher(op.n, seed, _SLQ, r).to(op.device, op.dtype)
                tau, w = _slq_run(op, m, v)
                done.update({r: [tau.tolist(), w.tolist()]})
            nodes[r, : len(tau)], weights[r, : len(w)] = tau, w
    lo, hi = float(np.nanmin(nodes)), float(np.nanmax(nodes))
    if sigma is None:
        sigma = (hi - lo) / 400 if hi > lo else max(abs(hi), 1.0) * 1e-3
    grid = np.linspace(lo - 6 * sigma, hi + 6 * sigma, points)
    dens = np.zeros(points)
    for tau_r, w_r in zip(nodes, weights, strict=True):
        ok = ~np.isnan(tau_r)
        z = (grid[:, None] - tau_r[None, ok]) / sigma
        dens += (np.exp(-0.5 * z**2) * w_r[None, ok]).sum(axis=1)
    dens /= runs * sigma * math.sqrt(2 * math.pi)
    cut = -zero_tol * float(np.nanmax(np.abs(nodes)))
    neg = np.where(nodes < cut, weights, 0.0).sum(axis=1)
    return Density(
        nodes=nodes,
        weights=weights,
        grid=grid,
        density=dens,
        sigma=float(sigma),
        negative_mass=float(neg.mean()),
        negative_mass_se=float(neg.std(ddof=1) / math.sqrt(runs)) if runs > 1 else math.inf,
        n=op.n,
        n_products=op.n_products - start + reused,
        seed=seed,
    )


def plot_density(result: Density, path: str | Path, *, title: str | None = None) -> Path:
    """Draw the density on a log scale, as PyHessian does, and write a PNG atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.semilogy(result.grid, result.density + 1e-7, lw=1.2)  # floor as PyHessian: log of 0
    ax.set_xlabel("Eigenvalue")
    ax.set_ylabel("Density (log scale)")
    ax.set_title(
        title
        or f"Hessian spectrum (SLQ, {len(result.nodes)} runs); "
        f"negative mass {result.negative_mass:.3g}"
    )
    return atomic_write(path, lambda p: fig.savefig(p, format="png"))


# ------------------------------------------------------------------- summary
@dataclass(frozen=True)
class LayerCurvature:
    """λ_max and trace of one diagonal block ``H_BB`` (a module or parameter pattern)."""

    name: str
    n: int
    lambda_max: float
    lambda_min: float | None
    trace: float
    trace_se: float
    n_products: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class HessianSummary:
    """Curvature at a point, for a table: ``λ_max``, ``λ_min``, top-k, trace ± SE, per layer.

    ``top`` / ``bottom`` hold the full :class:`Eigenpairs` (vectors included;
    ``bottom`` is empty and ``lambda_min`` None when not asked for);
    ``trace`` the :class:`TraceEstimate` (Hutchinson deflated by the Lanczos
    basis, i.e. Hutch++ with a Krylov sketch).
    """

    lambda_max: float
    lambda_min: float | None
    top: Eigenpairs
    bottom: Eigenpairs
    trace: TraceEstimate
    n: int
    n_products: int
    per_layer: dict[str, LayerCurvature] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "lambda_max": self.lambda_max,
            "lambda_min": self.lambda_min,
            "top_k": [float(v) for v in self.top.values],
            "top_residuals": [float(r) for r in self.top.residuals],
            "lambda_min_residual": (
                float(self.bottom.residuals[0]) if len(self.bottom.residuals) else None
            ),
            "converged": self.top.converged,
            "tol": self.top.tol,
            "trace": self.trace.value,
            "trace_se": self.trace.stderr,
            "trace_probes": len(self.trace.samples),
            "trace_converged": self.trace.converged,
            "n": self.n,
            "n_products": self.n_products,
            "per_layer": {k: v.to_dict() for k, v in self.per_layer.items()},
        }


def _measure(
    obj: Curvature,
    k: int,
    bottom: int,
    *,
    tol: float,
    trace_rtol: float,
    seed: int,
    max_products: int,
) -> tuple[Eigenpairs, Eigenpairs, TraceEstimate, int]:
    op = operator(obj)
    start = op.n_products
    k = _check_k(k, op.n)
    if k < 1:
        raise BasinscopeError(f"k must be a positive integer, got {k}")
    kr = _lanczos(
        op,
        k,
        bottom,
        tol=_check_tol(tol, op.dtype),
        seed=seed,
        max_products=max_products,
        max_basis=None,
    )
    # Hutch++ with the Lanczos basis as its sketch: tr(VHVᵀ) from the stored products.
    V, HV = kr.basis, kr.products
    rtol = _check_positive("trace_rtol", trace_rtol)
    tr = _hutchinson(
        op,
        V,
        float((V * HV).sum(dtype=torch.float64)),
        method="deflated",
        rtol=rtol,
        atol=rtol * kr.scale,
        min_probes=10,
        max_probes=max_products,
        seed=seed,
        spent=0,
    )
    top, bottom = _pairs(kr, "top", tol, op.n), _pairs(kr, "bottom", tol, op.n)
    return top, bottom, tr, op.n_products - start


def summary(
    obj: Objective,
    k: int = 5,
    *,
    tol: float = 1e-4,
    trace_rtol: float = 1e-2,
    per_layer: bool | Sequence[str] = False,
    lambda_min: bool = True,
    seed: int = 0,
    max_products: int = 2000,
) -> HessianSummary:
    """λ_max, λ_min, the top ``k`` eigenvalues and ``tr H ± SE``, optionally per layer.

    One thick-restart Lanczos run gives the top ``k`` and the smallest
    eigenpair (tolerance ``tol``, see :func:`extremes`); its basis ``V`` and
    products ``HV`` then deflate the trace: ``tr H = tr(VHVᵀ) + tr(PHP)``
    with the first exact from stored products and the second by Hutchinson to
    ``SE ≤ trace_rtol·max(|tr H|, ‖H‖)`` (Hutch++ with a Krylov sketch; no
    extra products for the sketch; the ``‖H‖`` floor stops blocks whose
    trace is near 0 from probing forever).

    Args:
        per_layer: ``True`` for one diagonal block per module (parameters
            grouped by their module path, e.g. ``fc1.weight`` + ``fc1.bias``),
            or a list of names/patterns, one block each; every block gets its
            own λ_max, λ_min and trace (same tolerances).
        lambda_min: also find the smallest eigenvalue. It converges more slowly
            than the top (it sits at the edge of the bulk near 0: 65 products
            instead of 24 for top-5 on the benchmark MLP); a study that only
            needs λ_max and the trace passes ``False``.
    """
    if not isinstance(obj, Objective):
        raise BasinscopeError(f"summary needs a basinscope Objective, got {type(obj).__name__}")
    if _check_k(k, obj.n) < 1:
        raise BasinscopeError(f"k must be a positive integer, got {k}")
    _check_tol(tol, obj.dtype)
    _check_positive("trace_rtol", trace_rtol)
    max_products = check_int("max_products", max_products, minimum=1)
    seed = check_int("seed", seed, minimum=0)
    opts = dict(tol=tol, trace_rtol=trace_rtol, seed=seed, max_products=max_products)
    if per_layer is False:
        blocks = []
    elif per_layer is True:
        blocks = _blocks(obj.space.names)
    elif isinstance(per_layer, str):
        blocks = [per_layer]
    else:
        blocks = list(per_layer)
    subs = {name: restrict(obj, name) for name in blocks}  # bad names fail before any work
    op = HessianOperator(obj)
    n_bottom = 1 if lambda_min else 0
    top, bottom, tr, used = _measure(op, k, n_bottom, **opts)
    layers: dict[str, LayerCurvature] = {}
    for name, sub in subs.items():
        t, b, s, u = _measure(HessianOperator(sub), 1, n_bottom, **opts)
        layers[name] = LayerCurvature(
            name=name,
            n=sub.n,
            lambda_max=float(t.values[0]),
            lambda_min=float(b.values[0]) if n_bottom else None,
            trace=s.value,
            trace_se=s.stderr,
            n_products=u,
        )
    return HessianSummary(
        lambda_max=float(top.values[0]),
        lambda_min=float(bottom.values[0]) if n_bottom else None,
        top=top,
        bottom=bottom,
        trace=tr,
        n=op.n,
        n_products=used,
        per_layer=layers,
    )


__all__ = [
    "Density",
    "Eigenpairs",
    "HessianOperator",
    "HessianSummary",
    "LayerCurvature",
    "TraceEstimate",
    "density",
    "eigenvalues",
    "extremes",
    "hvp",
    "operator",
    "plot_density",
    "restrict",
    "summary",
    "top_directions",
    "trace",
]
