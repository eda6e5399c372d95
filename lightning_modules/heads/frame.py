"""``frame`` and ``mean``: the two floors every temporal head has to beat."""

from __future__ import annotations

import torch
from torch import nn

from lightning_modules.backbone import FeatureSpec
from lightning_modules.heads import register_head


class FrameHead(nn.Module):
    """Each frame alone: LayerNorm, linear, GELU on its pooled vector. ``mean=True`` averages
    the projected frames over the clip and gives every frame that mean."""

    def __init__(self, spec: FeatureSpec, seq_len: int, dim: int = 256, mean: bool = False):
        super().__init__()
        self.proj = nn.Sequential(
            nn.LayerNorm(spec.pooled_dim), nn.Linear(spec.pooled_dim, dim), nn.GELU()
        )
        self.mean, self.out_dim = mean, dim

    def forward(self, maps: list[torch.Tensor], pooled: torch.Tensor) -> torch.Tensor:
        """(B, T, C) -> (B, T, D)."""
        x = self.proj(pooled)
        return x.mean(dim=1, keepdim=True).expand_as(x) if self.mean else x


@register_head("frame")
def frame(spec: FeatureSpec, seq_len: int, **kw) -> nn.Module:
    return FrameHead(spec, seq_len, **kw)


@register_head("mean")
def mean(spec: FeatureSpec, seq_len: int, **kw) -> nn.Module:
    return FrameHead(spec, seq_len, mean=True, **kw)
