"""Second derivatives through fused kernels: the math attention backend while curvature runs.

PyTorch's fused attention kernels (``scaled_dot_product_attention``'s flash and
memory-efficient backends, on CPU and GPU) have a first but no second derivative,
so a Hessian-vector product (reverse over reverse) through attention fails inside
them. Their reference, the math backend, is a composition of matmuls and a softmax
that autograd differentiates any number of times and computes the same function.
:func:`twice_differentiable` selects it for the duration of a curvature computation
and restores the user's backend settings afterwards (``torch.nn.attention.sdpa_kernel``
saves and restores them). :func:`double_backward_failure` names the operation when
one still blocks a second derivative.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

from torch.nn.attention import SDPBackend, sdpa_kernel


@contextlib.contextmanager
def twice_differentiable() -> Iterator[None]:
    """Run the body with ``scaled_dot_product_attention`` on its math backend only."""
    with sdpa_kernel([SDPBackend.MATH]):
        yield


_NOT_IMPLEMENTED = re.compile(r"derivative for '?([^'\s]+?)'? is not implemented")


def double_backward_failure(err: BaseException) -> str:
    """The sentence for a loss whose second derivative autograd cannot form."""
    text = str(err)
    found = _NOT_IMPLEMENTED.search(text)
    if found:
        op = found.group(1)
        return (
            f"the loss is not twice differentiable by autograd: PyTorch has no second "
            f"derivative for the operation {op} in the model (basinscope already runs "
            "attention on its math backend for curvature); replace that operation by a "
            "plain-PyTorch equivalent in the model's forward"
        )
    if "does not require grad" in text:  # the gradient has no graph
        return (
            "the loss is not twice differentiable by autograd: its gradient does not depend "
            "on the parameters in autograd's graph (a custom autograd Function whose "
            "backward is once-differentiable, or a loss linear in them)"
        )
    lines = text.strip().splitlines()
    first = lines[0] if lines else type(err).__name__
    return f"the loss is not twice differentiable by autograd ({first})"
