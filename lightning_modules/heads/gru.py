"""``gru``: a (bi)GRU over the pooled per-frame vectors."""

from __future__ import annotations

import torch
from torch import nn

from lightning_modules.backbone import FeatureSpec
from lightning_modules.heads import register_head


class GRUHead(nn.Module):
    """LayerNorm, then a GRU over time; D = hidden (x2 when bidirectional)."""

    def __init__(
        self,
        spec: FeatureSpec,
        seq_len: int,
        hidden: int = 128,
        layers: int = 1,
        bidirectional: bool = True,
    ):
        super().__init__()
        self.norm = nn.LayerNorm(spec.pooled_dim)
        self.gru = nn.GRU(
            spec.pooled_dim, hidden, layers, batch_first=True, bidirectional=bidirectional
        )
        self.out_dim = hidden * (2 if bidirectional else 1)

    def forward(self, maps: list[torch.Tensor], pooled: torch.Tensor) -> torch.Tensor:
        """(B, T, C) -> (B, T, D)."""
        return self.gru(self.norm(pooled))[0]


@register_head("gru")
def gru(spec: FeatureSpec, seq_len: int, **kw) -> nn.Module:
    return GRUHead(spec, seq_len, **kw)
