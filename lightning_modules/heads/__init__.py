"""Temporal heads: a registry of names, one small file each.

A head takes what the frame encoder gives, the per-tap maps [(B, T, C_i, h_i, w_i)] and the
pooled per-frame vectors (B, T, C), and returns one feature vector per frame (B, T, D), D being
its ``out_dim``. The LightningModule puts dropout and one linear layer per task on top. A head
reading the maps says how many of the last taps it reads in ``maps_used`` (a feature cache keeps
those; the others get None there); without it, it reads the pooled vectors only.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from core.errors import ConfigError
from lightning_modules.backbone import FeatureSpec

_HEADS: dict[str, Callable[..., nn.Module]] = {}


def register_head(name: str):
    def add(fn):
        if name in _HEADS:
            raise ValueError(f"head {name!r} is already registered")
        _HEADS[name] = fn
        return fn

    return add


def list_heads() -> list[str]:
    return list(_HEADS)


def create_head(name: str, spec: FeatureSpec, seq_len: int, **settings) -> nn.Module:
    """Build a registered head; an unknown name is an error listing the names that exist, an
    unknown setting (``head_kwargs``) one naming it."""
    if name not in _HEADS:
        raise ConfigError(f"unknown head {name!r}; heads are: {', '.join(_HEADS)}")
    try:
        return _HEADS[name](spec, seq_len, **settings)
    except TypeError as e:
        if "unexpected keyword argument" not in str(e):
            raise
        raise ConfigError(f"head {name!r} has no such setting: {e}") from None


# importing the modules registers their heads, in this order
from lightning_modules.heads import frame, gru, mixer, tcn, transformer  # noqa: E402, F401
