"""Which parameters are a landscape's coordinates (:class:`ParamSpace`), and the one
glob matcher (:func:`match`) every part of basinscope selects parameters with."""

from __future__ import annotations

import copy
import fnmatch
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor, nn

from ..errors import BasinscopeError

Include = Sequence[str] | Callable[[str, Tensor], bool] | None


class ParamSpace:
    """Which parameters are the landscape's coordinates, and their flat layout.

    Args:
        model: the network whose ``named_parameters()`` define the space.
        include: ``None`` for all trainable parameters; a list of parameter or
            module names or glob patterns (``"fc1"``, ``"layer2.*"``,
            ``"*.weight"``); or a predicate ``(name, param) -> bool``.
        skip_bias_norm: leave every parameter with ``ndim <= 1`` (biases and
            normalisation scales/shifts) fixed, as Li et al. (2018) do for
            their surfaces.

    Coordinates are the selected parameters concatenated in ``named_parameters``
    order; ``offsets[i]:offsets[i]+numels[i]`` is parameter ``names[i]``.
    """

    def __init__(self, model: nn.Module, *, include: Include = None, skip_bias_norm: bool = False):
        named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
        if not named:
            raise BasinscopeError("the model has no trainable parameters to span a landscape")
        chosen = [(n, p) for n, p in named if _selected(n, p, include)]
        if skip_bias_norm:
            chosen = [(n, p) for n, p in chosen if p.ndim > 1]
        if include is not None and not callable(include):
            for pattern in include:
                if not any(match(n, pattern) for n, _ in named):
                    names = ", ".join(n for n, _ in named[:8])
                    raise BasinscopeError(
                        f"no parameter matches {pattern!r}; parameter names look like {names}"
                    )
        if not chosen:
            raise BasinscopeError("the parameter selection is empty; include at least one tensor")
        self.names: list[str] = [n for n, _ in chosen]
        self.shapes: list[torch.Size] = [p.shape for _, p in chosen]
        self.numels: list[int] = [p.numel() for _, p in chosen]
        self.offsets: list[int] = []
        offset = 0
        for k in self.numels:
            self.offsets.append(offset)
            offset += k
        self.n: int = offset
        self.skip_bias_norm = skip_bias_norm

    def __len__(self) -> int:
        return self.n

    def __repr__(self) -> str:
        return f"ParamSpace(n={self.n}, tensors={len(self.names)})"

    def flatten(self, source: nn.Module | dict[str, Tensor]) -> Tensor:
        """Concatenate the selected parameters of a model (or a name->tensor dict): ``[n]``."""
        params = dict(source.named_parameters()) if isinstance(source, nn.Module) else source
        missing = [n for n in self.names if n not in params]
        if missing:
            raise BasinscopeError(
                f"parameters {missing[:3]} of this space are missing from the model"
            )
        return torch.cat([params[n].detach().reshape(-1) for n in self.names])

    def unflatten(self, vec: Tensor) -> dict[str, Tensor]:
        """Split a flat ``[n]`` vector into a name->tensor dict of views (no copies)."""
        if vec.shape != (self.n,):
            raise BasinscopeError(f"a point must have shape ({self.n},), got {tuple(vec.shape)}")
        return {
            name: vec[o : o + k].view(shape)
            for name, o, k, shape in zip(
                self.names, self.offsets, self.numels, self.shapes, strict=True
            )
        }

    @property
    def blocks(self) -> list[str]:
        """Module paths of the coordinates' parameters, in order (``fc1.weight`` -> ``fc1``):
        the blocks of a per-layer analysis."""
        out: list[str] = []
        for n in self.names:
            block = n.rsplit(".", 1)[0] if "." in n else n
            if block not in out:
                out.append(block)
        return out

    def pieces(self, vec: Tensor) -> Iterator[tuple[str, Tensor]]:
        """``(name, view)`` for each parameter tensor of a flat vector."""
        yield from self.unflatten(vec).items()

    def select(self, names: Sequence[str]) -> ParamSpace:
        """The sub-space of the named parameters, in this space's order (a block of θ)."""
        unknown = [n for n in names if n not in self.names]
        if unknown or not names:
            raise BasinscopeError(
                f"parameter {unknown[0] if unknown else None!r} is not in this space; "
                f"its parameters are {', '.join(self.names[:8])}"
            )
        sub = copy.copy(self)
        keep = [i for i, n in enumerate(self.names) if n in set(names)]
        sub.names = [self.names[i] for i in keep]
        sub.shapes = [self.shapes[i] for i in keep]
        sub.numels = [self.numels[i] for i in keep]
        sub.offsets = [sum(sub.numels[:i]) for i in range(len(keep))]
        sub.n = sum(sub.numels)
        return sub


def match(name: str, pattern: str) -> bool:
    """Whether parameter ``name`` is selected by ``pattern``: the name itself, a module
    that holds it (``"fc1"`` selects ``"fc1.weight"``), or a glob (``"layer2.*"``)."""
    return name == pattern or name.startswith(pattern + ".") or fnmatch.fnmatchcase(name, pattern)


def _selected(name: str, p: Tensor, include: Include) -> bool:
    if include is None:
        return True
    if callable(include):
        return bool(include(name, p))
    return any(match(name, pattern) for pattern in include)
