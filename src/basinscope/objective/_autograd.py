"""Gradients and Hessian-vector products of an Objective's loss, exact over its data.

Both are sums over data chunks of the chunk's share ``Σ value(chunk) / Σ count``
(see :class:`~basinscope.objective.Batches`), so they do not depend on the
chunking. The Hessian-vector product is reverse over reverse (Pearlmutter 1994):
``H v = ∇_θ (∇_θ L(θ) · v)``; attention runs on its math backend meanwhile, whose
second derivative autograd forms (``_backends.py``).
"""

from __future__ import annotations

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
