"""``tcn``: dilated temporal convolutions (non-causal) over the pooled per-frame vectors."""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

from core.errors import ConfigError
from lightning_modules.backbone import FeatureSpec
from lightning_modules.heads import register_head


class TCNHead(nn.Module):
    """Linear to ``dim``, then residual blocks of a dilated conv (dilations 1, 2, 4, ...); the
    receptive field is 1 + (kernel - 1) * (2^levels - 1) frames (15 for the defaults)."""

    def __init__(
        self, spec: FeatureSpec, seq_len: int, dim: int = 256, levels: int = 3, kernel: int = 3
    ):
        super().__init__()
        if kernel % 2 == 0:
            raise ConfigError(f"tcn kernel must be odd to keep frames aligned, got {kernel}")
        self.proj = nn.Linear(spec.pooled_dim, dim)
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.Conv1d(dim, dim, kernel, dilation=2**i, padding=(kernel // 2) * 2**i),
                nn.BatchNorm1d(dim),
                nn.GELU(),
            )
            for i in range(levels)
        )
        self.out_dim = dim

    def forward(self, maps: list[torch.Tensor], pooled: torch.Tensor) -> torch.Tensor:
        """(B, T, C) -> (B, T, D)."""
        x = rearrange(self.proj(pooled), "b t d -> b d t")
        for block in self.blocks:
            x = x + block(x)
        return rearrange(x, "b d t -> b t d")


@register_head("tcn")
def tcn(spec: FeatureSpec, seq_len: int, **kw) -> nn.Module:
    return TCNHead(spec, seq_len, **kw)
