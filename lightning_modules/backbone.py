"""The frame encoder: any timm model, run on the frames of a clip folded into the batch.

It exposes the multi-level feature maps of timm's ``features_only`` mode (the taps the Mixer heads
read) and a pooled per-frame vector (global average of the last tap) for the other heads.
Weights are never downloaded: ``pretrained`` is None (random init) or a local checkpoint file.
"""

from __future__ import annotations

import pickle
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from einops import rearrange
from torch import nn

from core.errors import ConfigError

FREEZE_MODES = ("none", "stem", "all_but_last", "all")
_UNGROUPED = 99999  # timm gives parameters after the last stage (a conv head) this group id


@dataclass(frozen=True)
class FeatureSpec:
    """What the encoder hands a temporal head: per tap, channels and spatial size (h, w) at the
    configured input size, and the width of the pooled vector."""

    channels: tuple[int, ...]
    sizes: tuple[tuple[int, int], ...]
    reductions: tuple[int, ...]
    pooled_dim: int


# The backbones the suite names (README, grids, sweeps, tests), by timm's own names: the seed
# paper's MobileNetV4 family and the lightweight baselines. Any other timm model works too.
BACKBONES = (
    "mobilenetv4_conv_small",
    "mobilenetv4_conv_medium",
    "mobilenetv4_conv_large",
    "mobilenetv4_hybrid_medium",
    "mobilenetv4_hybrid_large",
    "mobilenetv4_conv_small_035",  # the tests' and the quick sweep's narrow Conv-S
    "mobilenetv4_conv_small_050",
    "resnet18",
    "efficientnet_b0",
    "mobilenetv3_large_100",
    "mobilenetv3_small_100",
)


def list_backbones() -> list[str]:
    """The backbones the suite names (README, grid and sweep files); any timm model name works."""
    return list(BACKBONES)


def is_backbone(name: object) -> bool:
    """Whether ``name`` is a timm model name (what ``backbone`` takes)."""
    return isinstance(name, str) and timm.is_model(name)


def check_backbone(name: str) -> None:
    """Raise a ConfigError naming similar timm models if ``name`` is not a timm model name."""
    if not is_backbone(name):
        close = timm.list_models(f"*{str(name).split('_')[0]}*")[:12]
        hint = f"; similar: {', '.join(close)}" if close else ""
        raise ConfigError(
            f"unknown backbone {name!r}: any timm model name works "
            f"(affbench lists them with timm.list_models()){hint}"
        )


def backbone_norm(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) of the backbone's own timm config, read without building the model."""
    check_backbone(name)
    cfg = timm.models.get_pretrained_cfg(name) or {}
    cfg = cfg if isinstance(cfg, dict) else cfg.to_dict()
    return tuple(cfg.get("mean", (0.485, 0.456, 0.406))), tuple(
        cfg.get("std", (0.229, 0.224, 0.225))
    )


def load_file(path: str | Path, what: str = "checkpoint") -> object:
    """``torch.load`` (weights only, on the CPU) or safetensors' loader of a local file; a file
    that is missing or neither (a text file, a truncated download, a pickled Python object) is
    an error of one line naming it. ``what`` names the setting in the message."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist (weights are never downloaded)")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file as load_safetensors

            return load_safetensors(str(path))
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch and safetensors fail in a dozen ways (KeyError, EOFError...)
        if isinstance(e, pickle.UnpicklingError) and "Unsupported global" in str(e):
            raise ConfigError(
                f"{what} {path} holds pickled Python objects, not only tensors: save its "
                "state_dict (torch.save(model.state_dict(), ...)) and pass that"
            ) from None
        # the weights-only unpickler's own text is a page of advice: its type says enough
        lines = [] if isinstance(e, pickle.UnpicklingError) else str(e).strip().splitlines()
        reason = lines[0][:120] if lines else ""
        raise ConfigError(
            f"{what} {path} is not a PyTorch or safetensors file "
            f"({type(e).__name__}{': ' + reason if reason else ''})"
        ) from None


def read_state_dict(path: str | Path, what: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Tensors of a local checkpoint: a plain state dict, or one nested under ``state_dict`` /
    ``model`` / ``state_dict_ema`` (Lightning, timm training scripts), safetensors included."""
    path = Path(path)
    obj = load_file(path, what)
    for key in ("state_dict", "model", "state_dict_ema", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ConfigError(f"{what} {path} is not a state dict of tensors")
    return obj


def match_state_dict(state: dict[str, torch.Tensor], target: dict[str, torch.Tensor], path: str):
    """Find where ``target``'s keys sit in ``state`` (a common prefix such as ``module.`` or
    ``encoder.model.`` is found and removed) and check every key and shape.

    Returns the matched state dict and the keys of ``state`` left unused (a classifier, say)."""
    prefixes = Counter()
    for k in state:
        for t in target:
            if k.endswith(t) and (len(k) == len(t) or k[-len(t) - 1] == "."):
                prefixes[k[: len(k) - len(t)]] += 1
                break
    prefix = prefixes.most_common(1)[0][0] if prefixes else ""
    matched = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    missing = [k for k in target if k not in matched]
    wrong = [
        f"{k} {tuple(matched[k].shape)} != {tuple(v.shape)}"
        for k, v in target.items()
        if k in matched and matched[k].shape != v.shape
    ]
    if missing or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys: {', '.join(missing[:8])}")
        if wrong:
            parts.append(f"{len(wrong)} keys of another shape: {'; '.join(wrong[:8])}")
        raise ConfigError(f"checkpoint {path} does not fit the backbone: " + "; ".join(parts))
    unused = [k for k in state if not k.startswith(prefix) or k[len(prefix) :] not in target]
    return {k: matched[k] for k in target}, unused


class FrameEncoder(nn.Module):
    """(B, T, 3, H, W) -> per-tap feature maps (B, T, C_i, h_i, w_i) and pooled (B, T, C_last).

    Args:
        name: a timm model name, e.g. ``mobilenetv4_conv_small``.
        taps: feature levels to expose (timm ``out_indices``); the default (2, 3, 4) is strides
            8, 16 and 32, the seed paper's three taps.
        img_size: input size, used to work out each tap's spatial size.
        pretrained: None, or a local checkpoint (timm/ImageNet, AffectNet, or this project's).
        freeze: ``none``, ``stem``, ``all_but_last`` (train only the last stage) or ``all``.
    """

    def __init__(
        self,
        name: str,
        taps: tuple[int, ...] = (2, 3, 4),
        img_size: int = 112,
        pretrained: str | None = None,
        freeze: str = "stem",
    ):
        super().__init__()
        check_backbone(name)
        if freeze not in FREEZE_MODES:
            raise ConfigError(f"freeze must be one of {FREEZE_MODES}, got {freeze!r}")
        self.name = name
        self.model = timm.create_model(name, pretrained=False, features_only=True, out_indices=taps)
        self.unused_checkpoint_keys: list[str] = []
        if pretrained:
            state, self.unused_checkpoint_keys = match_state_dict(
                read_state_dict(pretrained, "pretrained"), self.model.state_dict(), str(pretrained)
            )
            self.model.load_state_dict(state)
        self.frozen = self._freeze(freeze)
        with torch.no_grad():
            was_training = self.model.training
            shapes = [f.shape for f in self.model.eval()(torch.zeros(1, 3, img_size, img_size))]
            self.model.train(was_training)
        info = self.model.feature_info
        self.spec = FeatureSpec(
            channels=tuple(info.channels()),
            sizes=tuple((s[-2], s[-1]) for s in shapes),
            reductions=tuple(info.reduction()),
            pooled_dim=info.channels()[-1],
        )

    def _freeze(self, mode: str) -> list[str]:
        """Stop gradients into the chosen stages (timm's own stage grouping); returns the names
        of the frozen parameters."""
        if mode == "none":
            return []
        if mode == "all":
            frozen = [n for n, _ in self.model.named_parameters()]
        else:
            with torch.device("meta"):  # the full model only for its group matcher: no memory
                matcher = timm.create_model(self.name, pretrained=False).group_matcher(coarse=True)
            groups = timm.models.group_parameters(self.model, matcher)
            stages = sorted(g for g in groups if g < _UNGROUPED)  # 0 is the stem
            chosen = stages[:1] if mode == "stem" else stages[:-1]
            frozen = [n for g in chosen for n in groups[g]]
        for n, p in self.model.named_parameters():
            if n in frozen:
                p.requires_grad_(False)
        return frozen

    def train(self, mode: bool = True) -> FrameEncoder:
        """Frozen stages keep their BatchNorm statistics: their BN layers stay in eval mode."""
        super().train(mode)
        frozen = set(self.frozen)
        for name, m in self.model.named_modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and f"{name}.weight" in frozen:
                m.eval()
        return self

    def forward(self, frames: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """(B, T, 3, H, W) -> ([(B, T, C_i, h_i, w_i) per tap], (B, T, C_last))."""
        b = frames.shape[0]
        maps = self.model(rearrange(frames, "b t c h w -> (b t) c h w"))
        maps = [rearrange(m, "(b t) c h w -> b t c h w", b=b) for m in maps]
        return maps, maps[-1].mean(dim=(-2, -1))
