"""``mixer1``, ``mixer3``, ``mixer3_frame``: the 3D MLP-Mixer temporal aggregation of the paper
(arXiv 2503.10530).

One Mixer per encoder tap. Each cuts its feature volume (T, C, h, w) into tubelets of
``tubelet_t`` frames x ph x pw pixels, the pixel sizes chosen so that every level ends on the
SAME spatial token grid (at 224 px with MobileNetV4-Conv-S: taps 28/14/7, grid 7x7, tubelets
4x4x4, 4x2x2, 4x1x1, as in the paper). Tubelets are embedded linearly to ``dim``, mixed by
``depth`` Mixer blocks, normalised and averaged; the levels' vectors are concatenated.

The grid is derived from the taps actually produced: by default it is the smallest tap's size,
and a larger tap that is not a multiple of it is zero-padded (evenly on both sides) up to the
next multiple. At 112 px the taps are 14/7/4: grid 4x4, taps padded to 16/8/4, tubelets 4x4x4,
4x2x2, 4x1x1, the paper's tubelets on a smaller grid. ``grid=`` asks for another grid and fails
clearly where a tap is smaller than it.

Token mixing ``full`` is the paper's: one MLP across all N tokens (N x rN weights, so the cost
grows with T squared); ``factorized`` mixes along time and along space with two small MLPs.
"""

from __future__ import annotations

import torch
from einops import rearrange, reduce
from timm.layers import Mlp
from torch import nn
from torch.nn import functional as F

from core.errors import ConfigError
from lightning_modules.backbone import FeatureSpec
from lightning_modules.heads import register_head


def token_grid(sizes: list[tuple[int, int]], grid: int | None = None) -> tuple[int, int]:
    """The common (gh, gw) token grid of the taps: the smallest tap's size, or ``grid`` x
    ``grid``; every tap must be at least that large (it is padded up to a multiple)."""
    g = (min(h for h, _ in sizes), min(w for _, w in sizes)) if grid is None else (grid, grid)
    small = [f"{h}x{w}" for h, w in sizes if h < g[0] or w < g[1]]
    if small:
        raise ConfigError(
            f"no {g[0]}x{g[1]} token grid for taps of {', '.join(f'{h}x{w}' for h, w in sizes)}: "
            f"{', '.join(small)} is smaller; use a grid of at most {min(min(s) for s in sizes)}"
        )
    return g


class MixerBlock(nn.Module):
    """Token mixing then channel mixing, each pre-norm with a residual: (B, N, E) -> (B, N, E)."""

    def __init__(
        self,
        n_time: int,
        n_space: int,
        dim: int,
        token_expansion: float = 4.0,
        channel_expansion: float = 0.5,
        token_mixer: str = "full",
    ):
        super().__init__()
        if token_mixer not in ("full", "factorized"):
            raise ConfigError(f"token_mixer must be 'full' or 'factorized', got {token_mixer!r}")
        self.n_time, self.factorized = n_time, token_mixer == "factorized"
        n = n_time * n_space
        self.norm1 = nn.LayerNorm(dim)
        if self.factorized:
            self.time_mlp = Mlp(n_time, int(n_time * token_expansion))
            self.space_mlp = Mlp(n_space, int(n_space * token_expansion))
        else:
            self.token_mlp = Mlp(n, int(n * token_expansion))
        self.norm2 = nn.LayerNorm(dim)
        self.channel_mlp = Mlp(dim, int(dim * channel_expansion))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, E) -> (B, N, E), N = n_time * n_space tokens in (time, space) order."""
        y = self.norm1(x)
        if self.factorized:
            y = rearrange(y, "b (t s) e -> b e s t", t=self.n_time)
            y = self.time_mlp(y)
            y = rearrange(
                self.space_mlp(rearrange(y, "b e s t -> b e t s")), "b e t s -> b (t s) e"
            )
        else:
            y = rearrange(self.token_mlp(rearrange(y, "b n e -> b e n")), "b e n -> b n e")
        x = x + y
        return x + self.channel_mlp(self.norm2(x))


class MixerLevel(nn.Module):
    """One tap: (B, T, C, h, w) -> tubelet tokens -> Mixer -> (B, E), or (B, T/pt, E) with
    ``keep_time`` (mean over space only)."""

    def __init__(
        self,
        channels: int,
        size: tuple[int, int],
        grid: tuple[int, int],
        seq_len: int,
        tubelet_t: int,
        dim: int,
        depth: int,
        **block,
    ):
        super().__init__()
        self.pt, self.ph, self.pw = tubelet_t, -(-size[0] // grid[0]), -(-size[1] // grid[1])
        pad_h, pad_w = self.ph * grid[0] - size[0], self.pw * grid[1] - size[1]
        self.pad = (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2)  # F.pad order
        self.n_time, n_space = seq_len // tubelet_t, grid[0] * grid[1]
        self.embed = nn.Linear(tubelet_t * self.ph * self.pw * channels, dim)
        self.blocks = nn.Sequential(
            *(MixerBlock(self.n_time, n_space, dim, **block) for _ in range(depth))
        )
        self.norm = nn.LayerNorm(dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, keep_time: bool = False) -> torch.Tensor:
        """(B, T, C, h, w) -> (B, E), or (B, T / tubelet_t, E) when ``keep_time``."""
        if any(self.pad):
            x = F.pad(x, self.pad)
        x = rearrange(
            x,
            "b (nt pt) c (gh ph) (gw pw) -> b (nt gh gw) (pt ph pw c)",
            pt=self.pt,
            ph=self.ph,
            pw=self.pw,
        )
        x = self.norm(self.blocks(self.embed(x)))
        x = (
            reduce(x, "b (nt s) e -> b nt e", "mean", nt=self.n_time)
            if keep_time
            else x.mean(dim=1)
        )
        return self.proj(x)


class MixerHead(nn.Module):
    """The last ``levels`` taps, one MixerLevel each, concatenated: D = levels * dim.

    ``frame_resolved=False`` (the paper): one vector per clip, copied to its T frames.
    ``frame_resolved=True``: space is pooled, time kept; each frame takes its time token.
    """

    def __init__(
        self,
        spec: FeatureSpec,
        seq_len: int,
        levels: int = 3,
        dim: int = 256,
        depth: int = 1,
        tubelet_t: int = 4,
        token_expansion: float = 4.0,
        channel_expansion: float = 0.5,
        token_mixer: str = "full",
        grid: int | None = None,
        frame_resolved: bool = False,
    ):
        super().__init__()
        if not 1 <= levels <= len(spec.channels):
            raise ConfigError(
                f"levels must be in 1..{len(spec.channels)} (the encoder's taps), got {levels}"
            )
        if seq_len % tubelet_t:
            below = seq_len // tubelet_t * tubelet_t
            near = " or ".join(str(n) for n in (below, below + tubelet_t) if n)
            raise ConfigError(
                f"seq_len (T) = {seq_len} is not divisible by the tubelet length {tubelet_t}: "
                f"use a multiple of {tubelet_t} ({near}) or another tubelet_t"
            )
        sizes = list(spec.sizes[-levels:])
        g = token_grid(sizes, grid)
        block = dict(
            token_expansion=token_expansion,
            channel_expansion=channel_expansion,
            token_mixer=token_mixer,
        )
        self.levels = nn.ModuleList(
            MixerLevel(c, s, g, seq_len, tubelet_t, dim, depth, **block)
            for c, s in zip(spec.channels[-levels:], sizes, strict=True)
        )
        self.grid, self.tubelet_t, self.frame_resolved = g, tubelet_t, frame_resolved
        self.out_dim = levels * dim
        self.maps_used = levels  # the last taps it reads (a feature cache keeps them)

    def forward(self, maps: list[torch.Tensor], pooled: torch.Tensor) -> torch.Tensor:
        """[(B, T, C_i, h_i, w_i)] -> (B, T, levels * dim)."""
        t = maps[-1].shape[1]
        taps = maps[-len(self.levels) :]
        x = torch.cat(
            [
                lvl(m, keep_time=self.frame_resolved)
                for lvl, m in zip(self.levels, taps, strict=True)
            ],
            -1,
        )
        if self.frame_resolved:  # (B, T/pt, D): each frame takes its tubelet's token
            return x.repeat_interleave(self.tubelet_t, dim=1)
        return x[:, None].expand(-1, t, -1)


@register_head("mixer1")
def mixer1(spec: FeatureSpec, seq_len: int, **kw) -> nn.Module:
    return MixerHead(spec, seq_len, **{"levels": 1, **kw})


@register_head("mixer3")
def mixer3(spec: FeatureSpec, seq_len: int, **kw) -> nn.Module:
    return MixerHead(spec, seq_len, **{"levels": 3, **kw})


@register_head("mixer3_frame")
def mixer3_frame(spec: FeatureSpec, seq_len: int, **kw) -> nn.Module:
    # one token per frame (tubelet_t=1); factorised mixing keeps that affordable at 224 px
    return MixerHead(
        spec,
        seq_len,
        **{"levels": 3, "tubelet_t": 1, "token_mixer": "factorized", **kw, "frame_resolved": True},
    )
