"""``transformer``: a small pre-norm transformer encoder over the pooled per-frame vectors."""

from __future__ import annotations

import math

import torch
from torch import nn

from core.errors import ConfigError
from lightning_modules.backbone import FeatureSpec
from lightning_modules.heads import register_head


def sinusoidal_positions(t: int, dim: int, device=None) -> torch.Tensor:
    """(T, D) fixed sine/cosine positions (any T, nothing learned)."""
    pos = torch.arange(t, device=device, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, device=device) * (-math.log(10000.0) / dim))
    pe = torch.zeros(t, dim, device=device)
    pe[:, 0::2], pe[:, 1::2] = torch.sin(pos * freq), torch.cos(pos * freq)
    return pe


class TransformerHead(nn.Module):
    """Linear to ``dim``, plus sinusoidal positions, then ``depth`` encoder layers (bidirectional
    attention over the clip); D = dim."""

    def __init__(
        self,
        spec: FeatureSpec,
        seq_len: int,
        dim: int = 256,
        depth: int = 2,
        heads: int = 4,
        mlp_ratio: float = 2.0,
        attn_dropout: float = 0.1,
    ):
        super().__init__()
        if dim % heads:
            raise ConfigError(f"transformer dim {dim} is not divisible by heads {heads}")
        self.proj = nn.Linear(spec.pooled_dim, dim)
        layer = nn.TransformerEncoderLayer(
            dim,
            heads,
            int(dim * mlp_ratio),
            attn_dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(
            layer, depth, norm=nn.LayerNorm(dim), enable_nested_tensor=False
        )
        self.out_dim = dim

    def forward(self, maps: list[torch.Tensor], pooled: torch.Tensor) -> torch.Tensor:
        """(B, T, C) -> (B, T, D)."""
        x = self.proj(pooled)
        return self.encoder(x + sinusoidal_positions(x.shape[1], x.shape[2], x.device).to(x.dtype))


@register_head("transformer")
def transformer(spec: FeatureSpec, seq_len: int, **kw) -> nn.Module:
    return TransformerHead(spec, seq_len, **kw)
