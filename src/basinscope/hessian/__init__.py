"""Curvature of the loss: Hessian eigenvalues, trace and spectral density.

All measures are of the Hessian ``H = ∇²L(θ)`` of the Objective's exact mean
loss ``L(θ) = (1/N) Σ_i ℓ(f(x_i; θ), y_i)`` over its whole evaluation set, in
its :class:`~basinscope.ParamSpace` (all parameters, or one block: a module, a
list of modules, a pattern), reached only through Hessian-vector products:

* :class:`HessianOperator` (``_operator``) — ``v ↦ Hv`` (Pearlmutter 1994),
  reverse-over-reverse (double backward) on the gradient graph of each data
  chunk, built once and kept (within ``cache_bytes``) so a product costs one
  backward pass of the backward graph. Several vectors at once:
  :meth:`HessianOperator.matmat`. :func:`hvp` is the one Hessian-vector product.
* :class:`GGNOperator` (``_ggn``) — ``v ↦ Gv`` for the generalised Gauss–Newton
  matrix ``G = Σ_c J_cᵀ H_c J_c / Σ count`` (Schraudolph 2002; Martens 2020):
  ``J`` the Jacobian of the model's output, ``H_c`` the Hessian of the chunk's
  summed loss in that output; positive semi-definite for a loss convex in the
  output (cross-entropy, MSE). Every measure below takes ``curvature="ggn"``
  to run on it instead of the Hessian (``curvature="hessian"``, the default).
* :func:`eigenvalues`, :func:`extremes` (``_lanczos``) — top-k and bottom-k
  eigenpairs by thick-restart Lanczos (Wu & Simon 2000) with full
  reorthogonalisation; both ends of the spectrum from one Krylov space.
* :func:`trace` (``_trace``) — Hutchinson (1989) or Hutch++ (Meyer, Musco, Musco
  & Woodruff 2021), with the standard error and a stopping rule.
* :func:`density` (``_density``) — the eigenvalue density by stochastic Lanczos
  quadrature (Lin, Saad & Yang 2016; Ghorbani, Krishnan & Xiao 2019).
* :func:`summary` (``_summary``) — λ_max, λ_min, top-k, trace ± SE, and
  per-layer λ_max and trace, as one printable dataclass.

The estimators take any :class:`SymmetricOperator` (``n``, ``dtype``,
``device``, ``matvec``, ``matmat``): a HessianOperator, or a dense symmetric
matrix in a test. Every random vector (Lanczos start, probe, sketch column,
SLQ start) is drawn from ``(seed, index)`` alone (``_random``), in a stream of
its own per purpose, so work can be split or resumed and give the same numbers.

In a ``torch.distributed`` process group (an Objective's ``dist``; ``_split``):
the operators are **data-parallel** (each rank keeps the graphs of its data shard
only, a product is the all-reduced float64 sum of the shards' products, the same
on every rank), so Lanczos (:func:`summary`'s too) and a measure given an operator
run on every rank alike and agree with one process to rounding; :func:`trace`,
:func:`density` and :func:`summary`'s trace probes given an Objective are
**point-parallel** (probes, sketch rows and SLQ runs shared by global index over the
ranks, each computed on the whole data: bit-identical to one process, partial-results
files written by rank 0; :func:`summary`'s given the same Lanczos basis).
"""

from ._density import Density as Density
from ._density import density as density
from ._density import plot_density as plot_density
from ._ggn import GGNOperator as GGNOperator
from ._lanczos import Eigenpairs as Eigenpairs
from ._lanczos import eigenvalues as eigenvalues
from ._lanczos import extremes as extremes
from ._lanczos import top_directions as top_directions
from ._operator import CURVATURES as CURVATURES
from ._operator import Curvature as Curvature
from ._operator import HessianOperator as HessianOperator
from ._operator import SymmetricOperator as SymmetricOperator
from ._operator import hvp as hvp
from ._operator import operator as operator
from ._operator import restrict as restrict
from ._summary import HessianSummary as HessianSummary
from ._summary import LayerCurvature as LayerCurvature
from ._summary import summary as summary
from ._trace import TraceEstimate as TraceEstimate
from ._trace import trace as trace

__all__ = [
    "CURVATURES",
    "Curvature",
    "Density",
    "Eigenpairs",
    "GGNOperator",
    "HessianOperator",
    "HessianSummary",
    "LayerCurvature",
    "SymmetricOperator",
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
