"""Sharpness-aware minimisation (SAM, ASAM) as a wrapper around any torch optimizer.

SAM (Foret et al. 2021, "Sharpness-Aware Minimization for Efficiently Improving
Generalization") minimises ``max_{‖ε‖₂ ≤ ρ} L(w + ε)``. One step approximates
the inner maximum to first order and costs two forward/backward passes:

1. ``g = ∇L(w)`` (first pass), ``ε̂ = ρ g / ‖g‖₂``;
2. ``g_SAM = ∇L(w + ε̂)`` (second pass, at the perturbed weights);
3. restore ``w`` and let the base optimizer step with ``g_SAM``.

ASAM (Kwon et al. 2021, "ASAM: Adaptive Sharpness-Aware Minimization for
Scale-Invariant Learning of Deep Neural Networks") measures the neighbourhood in
the normalised coordinates ``T⁻¹w`` with ``T = diag(|w| + η)``, which makes the
step invariant to rescaling the weights: ``ε̂ = ρ T² g / ‖T g‖₂``.

Usage, either with a closure (two calls per step)::

    base = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sam = SAM(base, rho=0.05, model=model)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(base, T_max=100)  # the base!

    def closure():
        loss = loss_fn(model(x), y)
        loss.backward()
        return loss

    loss = sam.step(closure)
    sched.step()

or by hand: ``loss.backward(); sam.first_step(zero_grad=True)``, then a second
forward/backward inside :func:`frozen_running_stats`, then ``sam.second_step()``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
from torch import nn

from ..errors import BasinscopeError
from ._config import F32_MAX, _is_float32, _is_number

SAM_RHO, ASAM_RHO, ASAM_ETA = 0.05, 0.5, 0.01
"""Default radii of SAM (Foret et al. 2021) and ASAM (Kwon et al. 2021), and ASAM's η."""


@contextmanager
def frozen_running_stats(model: nn.Module) -> Iterator[None]:
    """Run forward passes whose side effects on ``model``'s buffers are undone on exit.

    SAM's second pass runs the network at the perturbed weights ``w + ε̂``; in
    train mode BatchNorm would fold those activations into ``running_mean`` and
    ``running_var`` and count the batch twice in ``num_batches_tracked``. Inside
    this context every buffer of ``model`` (BatchNorm's running statistics and
    counter, and any other running statistic a module keeps) is copied on entry
    and copied back on exit, also on an exception. Normalisation layers still
    use the batch's own statistics in the pass itself, as in the first pass.

    Why restore rather than set ``momentum = 0``: ``momentum = 0`` still
    increments ``num_batches_tracked``, changes the cumulative average that
    ``momentum=None`` layers use, covers ``_BatchNorm`` only, and
    ``1·r + 0·b`` is not ``r`` when the batch statistic ``b`` is inf/NaN. The
    copy restores the buffers bit for bit at the cost of one copy of them.
    """
    saved = [(b, b.detach().clone()) for b in model.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, old in saved:
                b.copy_(old)


class SAM(torch.optim.Optimizer):
    """Sharpness-aware minimisation around a base optimizer (SAM, or ASAM with ``adaptive``).

    One step is ``w ← base_step(w, ∇L(w + ε̂))`` with

    * SAM (Foret et al. 2021): ``ε̂ = ρ g / ‖g‖₂``,
    * ASAM (Kwon et al. 2021): ``ε̂ = ρ T² g / ‖T g‖₂``, ``T = |w| + η`` elementwise,

    where ``g = ∇L(w)`` is the gradient the first backward pass left in
    ``p.grad``, and the norm runs over all parameters that have a gradient
    (one global norm, as in both papers; ``T`` is applied to every parameter,
    biases included). A zero gradient gives ``ε̂ = 0``. The base optimizer's
    own weight decay is applied in its step, not in ``ε̂``.

    The base optimizer keeps its hyperparameters: ``self.param_groups`` *is*
    ``base_optimizer.param_groups`` (the same list), so ``lr`` set by a
    ``torch.optim.lr_scheduler`` attached to ``base_optimizer`` is the rate the
    step uses. Attach schedulers to the base optimizer: it is the one whose
    ``step()`` runs once per SAM step.

    Weights are restored after the second pass by copying the saved ``w`` back
    (bit for bit, not ``w + ε̂ − ε̂``).

    Args:
        base_optimizer: any ``torch.optim.Optimizer`` over the model's parameters.
        rho: neighbourhood radius ``ρ > 0``; ``None`` gives 0.05 (SAM) or 0.5 (ASAM),
            the papers' defaults.
        adaptive: ASAM instead of SAM.
        eta: ASAM's ``η ≥ 0`` in ``T = |w| + η`` (ignored without ``adaptive``).
        model: if given, :meth:`step` runs the second pass inside
            :func:`frozen_running_stats` (BatchNorm statistics updated once per step,
            by the first pass at ``w``). Without it, the second pass updates them too.

    Raises:
        BasinscopeError: an invalid base optimizer, ``rho`` or ``eta``.
    """

    def __init__(
        self,
        base_optimizer: torch.optim.Optimizer,
        rho: float | None = None,
        *,
        adaptive: bool = False,
        eta: float = ASAM_ETA,
        model: nn.Module | None = None,
    ) -> None:
        if not isinstance(base_optimizer, torch.optim.Optimizer) or isinstance(base_optimizer, SAM):
            raise BasinscopeError(
                f"base_optimizer {type(base_optimizer).__name__} is not valid; "
                "give a torch.optim.Optimizer such as torch.optim.SGD (not a SAM)."
            )
        if not isinstance(adaptive, bool):
            raise BasinscopeError(f"adaptive {adaptive!r} is not valid; give True or False.")
        if rho is None:
            rho = ASAM_RHO if adaptive else SAM_RHO
        _check_rho(rho)
        _check_eta(eta)
        if model is not None and not isinstance(model, nn.Module):
            raise BasinscopeError(
                f"model {type(model).__name__} is not valid; give the torch.nn.Module being "
                "trained, or None."
            )
        self.base_optimizer = base_optimizer
        self.rho, self.adaptive, self.eta, self.model = float(rho), adaptive, float(eta), model
        params = [p for g in base_optimizer.param_groups for p in g["params"]]
        super().__init__(params, {"rho": self.rho, "adaptive": adaptive, "eta": self.eta})
        self.param_groups = base_optimizer.param_groups  # shared: schedulers see one lr
        self._perturbed = False

    def _sync(self) -> None:
        # base_optimizer.load_state_dict replaces its param_groups list: follow it.
        self.param_groups = self.base_optimizer.param_groups

    @torch.no_grad()
    def first_step(self, zero_grad: bool = False) -> None:
        """Move to ``w + ε̂`` using the gradients in ``p.grad``; save ``w``.

        Args:
            zero_grad: clear the gradients afterwards, ready for the second pass.

        Raises:
            RuntimeError: called twice without :meth:`second_step` in between.
        """
        if self._perturbed:
            raise RuntimeError("SAM.first_step called twice; call second_step in between.")
        self._sync()
        params = [p for g in self.param_groups for p in g["params"] if p.grad is not None]
        if params:
            device = params[0].device
            # ‖g‖₂ (SAM) or ‖T g‖₂ (ASAM), one norm over all parameters.
            scaled = [self._t(p) * p.grad if self.adaptive else p.grad for p in params]
            norm = torch.linalg.vector_norm(
                torch.stack([torch.linalg.vector_norm(s).to(device) for s in scaled])
            )
            scale = torch.where(norm > 0, self.rho / norm, torch.zeros_like(norm))
            for p, s in zip(params, scaled, strict=True):
                # ε̂ = ρ g/‖g‖ (SAM) or ρ T (T g)/‖T g‖ (ASAM)
                e = (self._t(p) * s if self.adaptive else s) * scale.to(p.device)
                self.state[p]["w"] = p.detach().clone()
                p.add_(e)
        self._perturbed = True
        if zero_grad:
            self.zero_grad(set_to_none=True)

    def _t(self, p: torch.Tensor) -> torch.Tensor:
        return p.detach().abs() + self.eta

    @torch.no_grad()
    def second_step(self, zero_grad: bool = False) -> None:
        """Restore ``w`` (bit for bit) and take the base optimizer's step with ``∇L(w + ε̂)``.

        Args:
            zero_grad: clear the gradients after the step.

        Raises:
            RuntimeError: called without a preceding :meth:`first_step`.
        """
        if not self._perturbed:
            raise RuntimeError("SAM.second_step called without first_step.")
        self._restore()
        self.base_optimizer.step()
        if zero_grad:
            self.zero_grad(set_to_none=True)

    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """One SAM step: two calls of ``closure``, which computes the loss and calls ``backward``.

        Gradients are zeroed before each call, so the closure need not do it.
        The second call runs inside :func:`frozen_running_stats` when the SAM was
        built with ``model``.

        Returns:
            What the first call returned (the loss at the unperturbed ``w``).

        Raises:
            RuntimeError: no closure given.
        """
        if closure is None:
            raise RuntimeError(
                "SAM.step needs a closure that computes the loss and calls backward; "
                "or call first_step and second_step yourself."
            )
        closure = torch.enable_grad()(closure)
        self.zero_grad(set_to_none=True)
        loss = closure()
        self.first_step(zero_grad=True)
        try:
            with frozen_running_stats(self.model) if self.model is not None else nullcontext():
                closure()
        except BaseException:
            self._restore()
            raise
        self.second_step()
        return loss

    @torch.no_grad()
    def _restore(self) -> None:
        """Undo a pending perturbation without stepping."""
        for group in self.param_groups:
            for p in group["params"]:
                saved = self.state.get(p, {}).pop("w", None)
                if saved is not None:
                    p.copy_(saved)
        self.state.clear()
        self._perturbed = False

    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        """``{"base": base_optimizer.state_dict(), "rho", "adaptive", "eta"}``.

        Raises:
            RuntimeError: the weights are perturbed (between first and second step).
        """
        if self._perturbed:
            raise RuntimeError(
                "SAM.state_dict called between first_step and second_step; the weights are "
                "perturbed: call second_step first."
            )
        return {
            "base": self.base_optimizer.state_dict(),
            "rho": self.rho,
            "adaptive": self.adaptive,
            "eta": self.eta,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # type: ignore[override]
        """Restore the base optimizer's state and SAM's hyperparameters from :meth:`state_dict`.

        Raises:
            BasinscopeError: not a SAM state dict.
        """
        keys = {"base", "rho", "adaptive", "eta"}
        if not isinstance(state_dict, dict) or set(state_dict) != keys:
            found = sorted(state_dict) if isinstance(state_dict, dict) else type(state_dict)
            raise BasinscopeError(
                f"SAM state dict with keys {found} is not valid; give what SAM.state_dict "
                "returned (keys adaptive, base, eta, rho)."
            )
        _check_rho(state_dict["rho"])
        _check_eta(state_dict["eta"])
        self.base_optimizer.load_state_dict(state_dict["base"])
        self.rho, self.adaptive, self.eta = (
            float(state_dict["rho"]),
            bool(state_dict["adaptive"]),
            float(state_dict["eta"]),
        )
        self.defaults.update(rho=self.rho, adaptive=self.adaptive, eta=self.eta)
        self._restore()
        self._sync()

    def __getstate__(self) -> dict[str, Any]:
        # Optimizer pickles defaults/state/param_groups only; keep the wrapper whole.
        return {**super().__getstate__(), **{k: self.__dict__[k] for k in _EXTRA}}

    def __repr__(self) -> str:
        kind = "ASAM" if self.adaptive else "SAM"
        eta = f", eta={self.eta:g}" if self.adaptive else ""
        return f"{kind}(rho={self.rho:g}{eta}, base={self.base_optimizer!r})"


_EXTRA = ("base_optimizer", "rho", "adaptive", "eta", "model", "_perturbed")


def _check_rho(rho: Any) -> None:
    if not (_is_number(rho) and rho > 0):
        raise BasinscopeError(
            f"rho {rho!r} is not valid; give a positive radius, e.g. 0.05 (SAM) or 0.5 (ASAM)."
        )
    if not _is_float32(rho):  # ε̂ = ρ g/‖g‖ is computed in float32
        raise BasinscopeError(
            f"rho {rho!r} is not valid; give a positive radius no larger than {F32_MAX:.3g}."
        )


def _check_eta(eta: Any) -> None:
    if not (_is_number(eta) and eta >= 0):
        raise BasinscopeError(f"eta {eta!r} is not valid; give a non-negative number, e.g. 0.01.")
    if not _is_float32(eta):  # |w| + η is computed in float32
        raise BasinscopeError(
            f"eta {eta!r} is not valid; give a non-negative number no larger than {F32_MAX:.3g}."
        )
