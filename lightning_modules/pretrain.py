"""Stage 1: the frame encoder pretrained on still faces, as the paper (arXiv 2503.10530) does on
AffectNet.

Still images are clips of one frame: ``AffectModule`` with the ``frame`` head trains the encoder
with an EXPR and a VA output layer, with the same losses, measures (``val/expr_f1``,
``val/va_ccc``), augmentation, precision and W&B run as a video experiment
(:func:`~lightning_modules.experiment.train_and_score` with ``stills=True``). What it leaves is
``encoder.ckpt``: the encoder's weights alone (the still-image layers dropped) and where they
came from, which ``--model.pretrained`` reads.

A stage 1 is named by a hash of its full settings: the same settings find the finished one (its
``stage1.json``) and never train twice.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import torch

from core.keys import settings_key

# What stage 1 is unless its settings say otherwise: stills are clips of one frame, scored on
# the two tasks AffectNet labels.
STAGE1 = {
    "model": {"head": "frame", "seq_len": 1, "tasks": "va,expr"},
    "data": {"root": "data/affectnet_synth", "batch_size": 32},
    "trainer": {"max_epochs": 5},
    "seed": 0,
}
ENCODER = "encoder.ckpt"
PREFIX = "encoder.model."  # where AffectModule keeps the timm model's weights


def merge(base: dict, over: dict) -> dict:
    """``over`` laid over a copy of ``base``, section by section (model, data, trainer)."""
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        out[k] = {**out.get(k, {}), **v} if isinstance(v, dict) else v
    return out


def stage1_settings(settings: dict) -> dict:
    """The stage-1 defaults with ``settings`` over them."""
    return merge(STAGE1, settings)


def grid_stage1(cfg: dict) -> dict:
    """A two-stage grid's stage 1: its ``pretrain`` settings over the base's backbone and input
    size, over the stage-1 defaults (what ``affbench pretrain GRID.yaml`` runs as well)."""
    base = (cfg.get("base") or {}).get("model") or {}
    arch = {k: base[k] for k in ("backbone", "img_size") if k in base}
    return stage1_settings(merge({"model": arch}, cfg.get("pretrain") or {}))


def encoder_path(settings: dict, folder: str | Path) -> Path:
    """Where the stage 1 of ``settings`` writes its encoder, under ``folder``."""
    return Path(folder) / settings_key(stage1_settings(settings)) / ENCODER


def write_encoder(checkpoint: str | Path, out: str | Path) -> Path:
    """A Lightning checkpoint of AffectModule -> ``out``: its encoder's weights (keys as timm
    names them) and the settings they go with, written atomically."""
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    hp = dict(ckpt.get("hyper_parameters") or {})
    state = {k[len(PREFIX) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(PREFIX)}
    if not state:
        raise ValueError(f"{checkpoint} holds no encoder weights ({PREFIX}*)")
    keep = ("backbone", "img_size", "tasks", "init_from")
    out = Path(out)
    tmp = out.with_suffix(".tmp")
    torch.save(
        {"state_dict": state, "hyper_parameters": {k: hp.get(k) for k in keep}, "stage": 1}, tmp
    )
    os.replace(tmp, out)
    return out


def pretrain(settings: dict, folder: str | Path, mode: str = "offline") -> dict:
    """Run stage 1 (or find it finished) under ``folder/<key>/``: returns its results row with
    ``encoder``, the file ``--model.pretrained`` takes."""
    from lightning_modules.experiment import run_name, train_and_score

    full = stage1_settings(settings)
    key = settings_key(full)
    out = Path(folder) / key
    done = out / "stage1.json"
    if done.exists():
        row = json.loads(done.read_text())
        if Path(row.get("encoder", "")).exists():
            return row
    row = train_and_score(
        full, out, "pretrain", mode, key, name=f"stage1_{run_name(full)}", stills=True
    )
    row = {k: v for k, v in row.items() if not isinstance(v, torch.Tensor)}
    row.update(key=key, settings=full, encoder=str(write_encoder(row["checkpoint"], out / ENCODER)))
    tmp = done.with_suffix(".tmp")
    tmp.write_text(json.dumps(row, indent=1, default=str))
    os.replace(tmp, done)
    return row
