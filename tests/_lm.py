"""A small causal language model on ``nn.TransformerEncoder`` (fused attention) and padded
token data: the shared case of the tests of token-level losses and attention curvature."""

from __future__ import annotations

import torch
from torch import nn

V, T, D = 11, 6, 16


class LM(nn.Module):
    """A causal language model on nn.TransformerEncoder (fused attention, 2 layers)."""

    def __init__(self, seed: int = 0, d: int = D, layers: int = 2):
        super().__init__()
        torch.manual_seed(seed)
        self.emb = nn.Embedding(V, d)
        self.pos = nn.Parameter(torch.randn(T, d) * 0.1)
        layer = nn.TransformerEncoderLayer(
            d, 2, 2 * d, dropout=0.0, batch_first=True, norm_first=True
        )
        self.enc = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d, V)

    def forward(self, x):
        h = self.emb(x) + self.pos[: x.shape[1]]
        mask = nn.Transformer.generate_square_subsequent_mask(x.shape[1])
        return self.head(self.enc(h, mask=mask, is_causal=True))


def padded(n: int = 13, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids ``[n, T]`` and next-token targets with a random padded tail (-100)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, V, (n, T), generator=g)
    y = torch.randint(0, V, (n, T), generator=g)
    lengths = torch.randint(1, T + 1, (n,), generator=g)
    for i in range(n):
        y[i, lengths[i] :] = -100
    return x, y
