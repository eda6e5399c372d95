"""Ablation grids: a YAML file of base settings and grid axes, expanded into runs.

```yaml
name: temporal_heads
base:                       # AffectModule / AbawDataModule / Trainer settings, and the seed
  model: {backbone: mobilenetv4_conv_small, tasks: va, seq_len: 16, img_size: 112}
  data: {root: data/synthetic, batch_size: 8}
  trainer: {max_epochs: 3}
  seed: 0
grid:                       # dotted paths into base; every combination is one run
  model.head: [frame, gru, mixer3]
  seed: [0, 1, 2]
```
Each run has a key, a hash of its settings, so a results store can tell runs apart and resume.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
from pathlib import Path

import yaml

from affbench.errors import ConfigError


def load_grid(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ablation config {path} does not exist")
    try:
        cfg = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:  # PyYAML's message holds the line and column
        raise ConfigError(f"{path}: not valid YAML: {e}".replace("\n", " ")) from None
    unknown = set(cfg) - {"name", "description", "base", "grid"}
    if unknown or "base" not in cfg:
        raise ConfigError(f"{path}: expected keys name, description, base, grid; got {sorted(cfg)}")
    cfg.setdefault("name", path.stem)
    cfg.setdefault("grid", {})
    for axis, values in cfg["grid"].items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{path}: grid axis {axis!r} must be a non-empty list")
    return cfg


def set_path(tree: dict, dotted: str, value) -> None:
    """``tree["model"]["head_kwargs"]["hidden"] = value`` for ``"model.head_kwargs.hidden"``."""
    *parents, leaf = dotted.split(".")
    for p in parents:
        tree = tree.setdefault(p, {})
    tree[leaf] = value


def run_key(settings: dict) -> str:
    return hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


def expand(cfg: dict) -> list[dict]:
    """Every combination of the grid axes applied to ``base``, in axis order: a list of
    ``{"key", "settings", "axes"}``; ``axes`` holds only the varied values."""
    axes = list(cfg.get("grid", {}).items())
    runs = []
    for values in itertools.product(*(v for _, v in axes)):
        settings = copy.deepcopy(cfg["base"])
        chosen = {}
        for (axis, _), value in zip(axes, values, strict=True):
            set_path(settings, axis, value)
            chosen[axis] = value
        runs.append({"key": run_key(settings), "settings": settings, "axes": chosen})
    return runs
