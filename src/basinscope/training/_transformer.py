"""A small causal transformer over token ids: :class:`Transformer` (registered as ``"transformer"``).

The layout is GPT-2's pre-norm decoder (Radford et al. 2019), itself the decoder of
Vaswani et al. (2017) with each sub-layer's LayerNorm moved to its input; nanoGPT's
``model.py`` (Karpathy) is the reference layout this follows in its own words:

    h_0 = E[x_t] + P[t]                                  token + learned position embedding
    a_l = h_{l-1} + Attn_l(LN(h_{l-1}))                  causal multi-head self-attention
    h_l = a_l + W2 GELU(W1 LN(a_l) + b1) + b2            MLP, d_model -> d_mlp -> d_model
    logits_t = W_head LN(h_L)_t                          W_head = E with tie_weights

Attention is ``torch.nn.functional.scaled_dot_product_attention(..., is_causal=True)``:
position ``t`` attends to positions ``<= t`` only, so no logit at a position before
``t`` depends on token ``t``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import BasinscopeError

READOUTS = ("sequence", "last")
"""Accepted values of :class:`Transformer`'s ``readout``."""
_INIT_STD = 0.02  # GPT-2's initialisation scale


def _transformer_params(
    vocab: int, block: int, d: int, layers: int, d_mlp: int, n_out: int, tied: bool
) -> int:
    """The parameter count of :class:`Transformer` (mirrors its layers; a tied head adds none)."""
    per_layer = 2 * d + (3 * d * d + 3 * d) + (d * d + d) + 2 * d + (d * d_mlp + d_mlp)
    per_layer += d_mlp * d + d
    head = 0 if tied else d * n_out
    return vocab * d + block * d + layers * per_layer + 2 * d + head


class _CausalSelfAttention(nn.Module):
    """Multi-head self-attention in which position ``t`` sees positions ``<= t`` only."""

    def __init__(self, d_model: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.drop = nn.Dropout(dropout)
        self.n_heads, self.dropout = n_heads, dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, T, d_model] -> [B, T, d_model]``."""
        b, t, d = x.shape
        # [B, T, 3d] -> three [B, heads, T, d / heads]
        q, k, v = (
            z.reshape(b, t, self.n_heads, d // self.n_heads).transpose(1, 2)
            for z in self.qkv(x).split(d, dim=2)
        )
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
        return self.drop(self.proj(y.transpose(1, 2).reshape(b, t, d)))


class _Block(nn.Module):
    """One pre-norm decoder block: ``x + Attn(LN(x))``, then ``x + MLP(LN(x))``."""

    def __init__(self, d_model: int, n_heads: int, d_mlp: int, dropout: float) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = _CausalSelfAttention(d_model, n_heads, dropout)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, d_mlp), nn.GELU(), nn.Linear(d_mlp, d_model), nn.Dropout(dropout)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


def _checked_options(
    shape: tuple[int, ...], n_classes: int, vocab_size: Any, options: dict[str, Any]
) -> tuple[int, int, int]:
    """Refuse bad options in one sentence; return ``(vocab_size, block_size, d_mlp)``."""
    from ._models import _check_choice, _check_common, _check_flag, _positive_int

    if len(shape) != 1:
        raise BasinscopeError(
            f"input_shape {shape} is not valid for the transformer model; give (T,), the "
            "sequence length of the token ids."
        )
    _check_common(n_classes, options["dropout"])
    _check_choice("readout", options["readout"], READOUTS)
    _check_flag("tie_weights", options["tie_weights"])
    if vocab_size is None and options["readout"] == "last":
        raise BasinscopeError(
            "vocab_size None is not valid with readout 'last'; give the number of token ids."
        )
    vocab_size = n_classes if vocab_size is None else vocab_size
    block = shape[0] if options["block_size"] is None else options["block_size"]
    d_mlp = 4 * options["d_model"] if options["d_mlp"] is None else options["d_mlp"]
    for name, v in (("vocab_size", vocab_size), ("d_model", options["d_model"])):
        if not _positive_int(v):
            raise BasinscopeError(f"{name} {v!r} is not valid; give a positive integer.")
    for name, v in (("n_heads", options["n_heads"]), ("block_size", block), ("d_mlp", d_mlp)):
        if not _positive_int(v):
            raise BasinscopeError(f"{name} {v!r} is not valid; give a positive integer.")
    n_layers = options["n_layers"]
    if not (isinstance(n_layers, int) and not isinstance(n_layers, bool) and n_layers >= 0):
        raise BasinscopeError(f"n_layers {n_layers!r} is not valid; give an integer >= 0.")
    if options["d_model"] % options["n_heads"]:
        raise BasinscopeError(
            f"d_model {options['d_model']} is not valid with n_heads {options['n_heads']}; "
            "give a d_model divisible by n_heads."
        )
    if block < shape[0]:
        raise BasinscopeError(
            f"block_size {block} is not valid for sequences of length {shape[0]}; give a "
            f"block_size of at least {shape[0]}."
        )
    if options["tie_weights"] and n_classes != vocab_size:
        raise BasinscopeError(
            f"tie_weights True is not valid with n_classes {n_classes} and vocab_size "
            f"{vocab_size}; tying shares the embedding as the head, so both must be equal."
        )
    return vocab_size, block, d_mlp


class Transformer(nn.Module):
    """A small causal transformer: GPT-2's pre-norm decoder (Radford et al. 2019).

    ``E[x] + P[t]`` embeds int64 token ids ``[B, T]``; ``n_layers`` pre-norm blocks
    (Vaswani et al. 2017, with LayerNorm at each sub-layer's input) of causal
    multi-head self-attention and a GELU MLP follow, each added to its input; a final
    LayerNorm and a linear head give the logits. Weights are initialised as GPT-2's
    (normal, std 0.02; the projections into the residual stream scaled by
    ``1/√(2·n_layers)``; biases 0), drawn from the global torch RNG.

    Output: with ``readout="sequence"`` the logits of every position ``[B, T, n_classes]``
    (a language model: ``n_classes`` is the vocabulary); with ``readout="last"`` those
    of the last position ``[B, n_classes]`` (a sequence classifier, e.g. modular
    arithmetic ``a ∘ b =`` -> ``c``).

    Args:
        input_shape: ``(T,)``, the sequence length.
        n_classes: outputs of the head (the vocabulary for a language model).
        vocab_size: number of token ids; ``None`` means ``n_classes`` (``readout="sequence"`` only).
        d_model: width of the residual stream.
        n_heads: attention heads; ``d_model`` must be divisible by it.
        n_layers: number of blocks (0: embeddings, LayerNorm and head only).
        block_size: the longest sequence accepted (positions embedded); default ``T``.
        d_mlp: hidden width of the MLP; default ``4 · d_model``.
        dropout: dropout on the embeddings, attention weights and each residual branch.
        tie_weights: the head's weight is the token embedding (one tensor, Press & Wolf
            2017); needs ``n_classes == vocab_size``.
        readout: ``"sequence"`` or ``"last"``.
    """

    def __init__(
        self,
        input_shape: int | Sequence[int],
        n_classes: int,
        vocab_size: int | None = None,
        d_model: int = 64,
        n_heads: int = 4,
        n_layers: int = 2,
        block_size: int | None = None,
        d_mlp: int | None = None,
        dropout: float = 0.0,
        tie_weights: bool = False,
        readout: str = "sequence",
    ) -> None:
        super().__init__()
        from ._models import _check_fits, _shape

        shape = _shape(input_shape)
        options = dict(d_model=d_model, n_heads=n_heads, n_layers=n_layers, block_size=block_size)
        options.update(d_mlp=d_mlp, dropout=dropout, tie_weights=tie_weights, readout=readout)
        vocab, block, d_mlp = _checked_options(shape, n_classes, vocab_size, options)
        _check_fits(
            "transformer",
            _transformer_params(vocab, block, d_model, n_layers, d_mlp, n_classes, tie_weights),
            f"vocab_size {vocab}, block_size {block}, d_model {d_model}, n_layers {n_layers}, "
            f"d_mlp {d_mlp} and n_classes {n_classes}",
        )
        self.vocab_size, self.block_size, self.readout = vocab, block, readout
        self.tok_emb = nn.Embedding(vocab, d_model)
        self.pos_emb = nn.Embedding(block, d_model)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            _Block(d_model, n_heads, d_mlp, dropout) for _ in range(n_layers)
        )
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, n_classes, bias=False)
        self._init_weights(n_layers)
        if tie_weights:
            self.head.weight = self.tok_emb.weight

    def _init_weights(self, n_layers: int) -> None:
        """GPT-2's initialisation (LayerNorms keep PyTorch's 1 and 0)."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=_INIT_STD)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        # The residual stream grows with depth: scale what each block adds (GPT-2, sec. 2.3).
        for block in self.blocks:
            for proj in (block.attn.proj, block.mlp[2]):
                nn.init.normal_(proj.weight, mean=0.0, std=_INIT_STD / math.sqrt(2 * n_layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, T, n_classes]`` (``readout="sequence"``) or ``[B, n_classes]`` (``"last"``)
        for int64 token ids ``x [B, T]`` with ``T <= block_size``."""
        if x.is_floating_point() or x.ndim != 2:
            raise BasinscopeError(
                f"the transformer got inputs of shape {tuple(x.shape)} and dtype {x.dtype}; "
                "give int64 token ids [B, T]."
            )
        t = x.shape[1]
        if t > self.block_size:
            raise BasinscopeError(
                f"the transformer got sequences of length {t}; give at most block_size "
                f"{self.block_size} tokens."
            )
        positions = torch.arange(t, device=x.device)
        h = self.drop(self.tok_emb(x) + self.pos_emb(positions))
        for block in self.blocks:
            h = block(h)
        if self.readout == "last":
            h = h[:, -1]
        return self.head(self.ln_f(h))
