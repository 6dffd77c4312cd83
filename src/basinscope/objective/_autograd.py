"""Gradients and Hessian-vector products of an Objective's loss, exact over its data.

Both are sums over data chunks of the chunk's share ``Σ value(chunk) / Σ count``
(see :class:`~basinscope.objective.Batches`), so they do not depend on the
chunking. The Hessian-vector product is reverse over reverse (Pearlmutter 1994):
``H v = ∇_θ (∇_θ L(θ) · v)``; attention runs on its math backend meanwhile, whose
second derivative autograd forms (``_backends.py``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ..errors import BasinscopeError
from ._backends import double_backward_failure, twice_differentiable
from ._engine import Batches


def gradient(batches: Batches, theta: Tensor) -> Tensor:
    """``∇L(θ)``, ``[n]``."""
    total = torch.zeros_like(theta)
    for x, y in batches.chunks():
        t = theta.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(batches.chunk_loss(batches.space.unflatten(t), x, y), t)
        total += g
    return total


def hessian_products(batches: Batches, theta: Tensor, vs: Tensor) -> Tensor:
    """``[∇²L(θ) v_k]_k`` for the rows of ``vs[k, n]``."""
    total = torch.zeros_like(vs)
    with twice_differentiable():
        for x, y in batches.chunks():
            t = theta.clone().requires_grad_(True)
            loss = batches.chunk_loss(batches.space.unflatten(t), x, y)
            (g,) = torch.autograd.grad(loss, t, create_graph=True)
            if g.grad_fn is None:  # a once-differentiable Function (or a loss linear in θ)
                raise BasinscopeError(
                    double_backward_failure(RuntimeError("does not require grad"))
                )
            for k in range(len(vs)):
                try:
                    (hv,) = torch.autograd.grad(g @ vs[k], t, retain_graph=k < len(vs) - 1)
                except RuntimeError as err:
                    raise BasinscopeError(double_backward_failure(err)) from err
                total[k] += hv
    return total


def refuse_if_asymmetric(
    products: Callable[[Tensor], Tensor], n: int, dtype: torch.dtype, device: torch.device
) -> None:
    """Refuse a curvature whose products are not symmetric: ``u·(Hv) = v·(Hu)``.

    Autograd returns wrong second derivatives without an error through a custom
    ``autograd.Function`` whose backward is ``@once_differentiable`` (or is not
    differentiable as written); the products then break the symmetry every
    Hessian and Gauss–Newton matrix has. Two products with fixed random vectors
    (their own generator) test it; rounding stays far below the tolerance
    (relative to ``|u||Hv| + |v||Hu|``: 1e-4 in float32 and lower precisions, 1e-10
    in float64).
    """
    g = torch.Generator().manual_seed(0x5EED)
    uv = torch.randn(2, n, generator=g, dtype=torch.float64).to(device, dtype)
    hu, hv = products(uv).to(torch.float64)
    u, v = uv.to(torch.float64)
    gap = float((u @ hv - v @ hu).abs())
    scale = float(u.norm() * hv.norm() + v.norm() * hu.norm())
    tol = 1e-10 if dtype == torch.float64 else 1e-4
    if gap > tol * scale:
        raise BasinscopeError(
            "the loss's second derivatives from autograd are not symmetric "
            f"(u·Hv − v·Hu = {gap:.3g} for random u, v), so they are wrong: the model uses "
            "an operation whose backward autograd cannot differentiate correctly (a custom "
            "autograd.Function with a @once_differentiable backward?); replace it by a "
            "plain-PyTorch equivalent in the model's forward"
        )
