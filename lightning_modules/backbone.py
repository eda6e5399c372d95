"""The frame encoder: any timm model, run on the frames of a clip folded into the batch.

It exposes the multi-level feature maps of timm's ``features_only`` mode (the taps the Mixer heads
read) and a pooled per-frame vector (global average of the last tap) for the other heads.

``pretrained`` is None (random init), ``timm`` (timm's published weights of the backbone's default
tag) or a timm tag (``mobilenetv4_conv_small.e2400_r224_in1k``), loaded through timm and the
Hugging Face hub cache (downloaded when online, read from the cache when ``HF_HUB_OFFLINE=1``), or
a local checkpoint file (a timm/ImageNet state dict, an AffectNet one, a stage-1 or any checkpoint
of this project). The normalisation follows the weights: a tag's own mean and std.
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


TIMM = "timm"  # ``pretrained: timm``: timm's published weights of the backbone's default tag


def timm_tag(name: str, pretrained: str | bool | None) -> str | None:
    """The timm weights ``pretrained`` asks for, as ``arch.tag``; None when it names none (random
    init, or a local file). ``timm`` (or true) is the backbone's default tag; a tag must be of
    this backbone and one timm publishes weights for."""
    if pretrained is True or str(pretrained).lower() in (TIMM, "true"):
        cfg = timm.models.get_pretrained_cfg(name)
        if cfg is None or not (cfg.hf_hub_id or cfg.url or cfg.file):
            tags = timm.list_pretrained(f"{name}.*")
            raise ConfigError(
                f"timm publishes no weights for {name}"
                + (f"; its tags: {', '.join(tags)}" if tags else "; pick a backbone that has some")
            )
        return f"{name}.{cfg.tag}"
    if not isinstance(pretrained, str) or "." not in pretrained or Path(pretrained).exists():
        return None
    if pretrained not in timm.list_pretrained(pretrained):
        return None  # a path with a dot in it: the file reader says it does not exist
    if pretrained.split(".")[0] != name:
        raise ConfigError(f"pretrained {pretrained} are weights of another backbone than {name}")
    return pretrained


def backbone_norm(
    name: str, pretrained: str | bool | None = None
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) of the weights' own timm config (a tag's, else the backbone's default one),
    as timm resolves it, read without building the model."""
    check_backbone(name)
    tag = timm_tag(name, pretrained)
    for _ in range(4):  # a checkpoint made from a tag's weights (stage 1, say) says which
        if tag is not None or not (isinstance(pretrained, str) and Path(pretrained).is_file()):
            break
        pretrained = _weights_origin(pretrained)
        tag = timm_tag(name, pretrained) if pretrained else None
    cfg = timm.models.get_pretrained_cfg(tag or name)
    data = timm.data.resolve_data_config(pretrained_cfg=cfg.to_dict() if cfg else {})
    return tuple(data["mean"]), tuple(data["std"])


def _weights_origin(path: str) -> str | None:
    """The initial weights a checkpoint of this project records (``pretrained`` or
    ``init_from``: a tag, a file, or None); None for any other file."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # not a checkpoint: the weights' reader says so, in its own words
        return None
    hp = obj.get("hyper_parameters") if isinstance(obj, dict) else None
    return (hp.get("pretrained") or hp.get("init_from")) if isinstance(hp, dict) else None


def hub_cache() -> str:
    """The Hugging Face hub cache timm reads weights from (``HF_HOME``/hub, or ``HF_HUB_CACHE``)."""
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def create_timm_features(tag: str, taps: tuple[int, ...]) -> nn.Module:
    """timm's ``features_only`` model of ``tag`` with its published weights, through the hub
    cache; a one-line error naming the weights and the cache when they are in neither the cache
    nor reachable (offline)."""
    try:
        return timm.create_model(tag, pretrained=True, features_only=True, out_indices=taps)
    except Exception as e:  # hub errors differ by version and transport (httpx, offline, HTTP)
        reason = (str(e).strip().splitlines() or [""])[0][:160]
        raise ConfigError(
            f"timm weights {tag} are not in the Hugging Face cache {hub_cache()} and could not be "
            f"downloaded ({type(e).__name__}: {reason}); run once online, or set HF_HOME to a "
            f"cache holding models--timm--{tag}"
        ) from None


def load_file(path: str | Path, what: str = "checkpoint") -> object:
    """``torch.load`` (weights only, on the CPU) or safetensors' loader of a local file; a file
    that is missing or neither (a text file, a truncated download, a pickled Python object) is
    an error of one line naming it. ``what`` names the setting in the message."""
    path = Path(path)
    if not path.is_file():
        hint = (
            " (nor timm weights: 'timm', or a tag such as mobilenetv4_conv_small.e2400_r224_in1k)"
        )
        raise FileNotFoundError(
            f"{what} {path} does not exist" + (hint if what == "pretrained" else "")
        )
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
            8, 16 and 32, the paper's (arXiv 2503.10530) three taps.
        img_size: input size, used to work out each tap's spatial size.
        pretrained: None, ``timm``, a timm tag, or a local checkpoint (timm/ImageNet, AffectNet,
            stage 1, or this project's).
        freeze: ``none``, ``stem``, ``all_but_last`` (train only the last stage) or ``all``;
            None: ``stem`` with weights, ``none`` without (a random stem is never frozen).
    """

    def __init__(
        self,
        name: str,
        taps: tuple[int, ...] = (2, 3, 4),
        img_size: int = 112,
        pretrained: str | bool | None = None,
        freeze: str | None = None,
    ):
        super().__init__()
        check_backbone(name)
        if pretrained is False or pretrained in ("", "none", "false"):
            pretrained = None
        freeze = freeze or ("stem" if pretrained else "none")
        if freeze not in FREEZE_MODES:
            raise ConfigError(f"freeze must be one of {FREEZE_MODES}, got {freeze!r}")
        self.name, self.freeze, self.taps, self.img_size = name, freeze, tuple(taps), img_size
        tag = timm_tag(name, pretrained) if pretrained else None
        self.unused_checkpoint_keys: list[str] = []
        if tag:
            self.model = create_timm_features(tag, taps)
        else:
            self.model = timm.create_model(
                name, pretrained=False, features_only=True, out_indices=taps
            )
        if pretrained and not tag:
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
        # frozen stages' BatchNorm in eval mode from the start: Lightning keeps the modes it
        # finds (it never calls .train() at fit start), so a fresh module must already be right
        self.train()

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
