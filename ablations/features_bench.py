"""``affbench bench-features``: what the feature cache buys, measured side by side in one run.

* Training step, head on cached features against the same head end to end with the same frozen
  encoder, on the same clips (same seed, same windows, augmentation off for both): the seconds
  of forward, backward and optimizer step (data wait excluded, ``_Throughput``), and the wall
  clock of the whole epoch (decoding JPEGs against reading the memory-mapped cache).
* Extraction frames/s (decoding, the encoder, fp16 writes) against the encoder's plain forward
  on the same frames already decoded and in memory, at the same batch size.
* Cache size per 1,000 frames, pooled only and with the taps, at 112 and 224 px (computed from
  the encoder's shapes; at the measured size also read back from disk).
* Trials per hour of a sweep on a frozen encoder (default: ``sweeps/configs/frozen_heads.yaml``,
  its stage 1 run or found first): the same queued trials with ``data.features: off`` (the
  frozen encoder runs on decoded frames) and ``auto`` (the cache, filled beforehand), each on a
  fresh study and a fresh cost cache.
"""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
import time
from pathlib import Path

import lightning as L
import torch

from datamodules.features import encoder_layout, parts_for
from datamodules.tasks import SPLITS

BACKBONE = "mobilenetv4_conv_small"


def _settings(root: str, head: str, img_size: int, features: str, batches: int) -> dict:
    return {
        "model": {"backbone": BACKBONE, "head": head, "seq_len": 16, "img_size": img_size,
                  "freeze": "all", "dropout": 0.0},
        "data": {"root": root, "batch_size": 8, "num_workers": 0, "augment": False,
                 "features": features},
        "trainer": {"max_epochs": 1, "limit_train_batches": batches},
        "seed": 0,
    }  # fmt: skip


def _fit(settings: dict) -> dict:
    """One epoch of ``batches`` steps: step seconds (data excluded) and the epoch's wall clock."""
    from lightning_modules.experiment import _Throughput, build, trainer_kwargs

    L.seed_everything(settings["seed"])
    model, data = build(settings)
    data.prepare_data()  # the index, and the features where cached: not part of the epoch
    speed = _Throughput()
    kw = trainer_kwargs(settings, logger=False, enable_checkpointing=False, limit_val_batches=0)
    trainer = L.Trainer(callbacks=[speed], **kw)
    t0 = time.perf_counter()
    trainer.fit(model, data)
    return {
        "steps": trainer.global_step,
        "step_ms": 1e3 * speed.seconds / max(trainer.global_step, 1),
        "epoch_s": time.perf_counter() - t0,
    }


def bench_steps(root: str, heads: tuple[str, ...], img_size: int, batches: int) -> list[dict]:
    rows = []
    for head in heads:
        # the cache first (not timed), so both sides see the same clips from here on
        _fit(_settings(root, head, img_size, "auto", 1))
        full = _fit(_settings(root, head, img_size, "off", batches))
        cached = _fit(_settings(root, head, img_size, "auto", batches))
        rows.append(
            {
                "measure": "training step",
                "head": head,
                "img_size": img_size,
                "steps": cached["steps"],
                "end_to_end_step_ms": round(full["step_ms"], 2),
                "cached_step_ms": round(cached["step_ms"], 2),
                "step_speedup": round(full["step_ms"] / cached["step_ms"], 1),
                "end_to_end_epoch_s": round(full["epoch_s"], 2),
                "cached_epoch_s": round(cached["epoch_s"], 2),
                "epoch_speedup": round(full["epoch_s"] / cached["epoch_s"], 1),
            }
        )
    return rows


def bench_extraction(
    root: str, img_size: int, frames: int, workers: tuple[int, ...] = (0, 1, 2)
) -> list[dict]:
    """Extraction of the first ``frames`` frames of the training split (pooled and all taps)
    into a fresh cache with each number of decoding ``workers``, against the encoder's plain
    forward on the same frames, decoded beforehand and in memory."""
    from datamodules.abaw import AbawDataModule
    from datamodules.augment import ClipTransform, normalize_frames
    from datamodules.dataset import decode_frame
    from datamodules.features import FeatureCache, extract
    from lightning_modules.backbone import FrameEncoder

    torch.manual_seed(0)
    encoder = FrameEncoder(BACKBONE, img_size=img_size, freeze="all").eval()
    dm = AbawDataModule(root=root, img_size=img_size, num_workers=0)
    index = dm._index(SPLITS[0])
    todo, n = {}, 0
    n_taps = len(encoder.spec.channels)
    for v in range(len(index.videos)):
        lo, hi = int(index.start[v]), int(index.start[v + 1])
        if index.has_image[lo:hi].any():
            todo[v] = parts_for(n_taps, n_taps)
            n += int(index.has_image[lo:hi].sum())
        if n >= frames:
            break
    with torch.no_grad():  # both sides timed warm: the first batches build oneDNN's kernels
        encoder(torch.zeros(64, 1, 3, img_size, img_size))
    folder = Path("bench/features")
    extracted = {}
    for w in workers:
        shutil.rmtree(folder, ignore_errors=True)
        cache = FeatureCache.of(encoder, dm.hparams.mean, dm.hparams.std, folder)
        extracted[w] = extract(cache, encoder, index, todo, batch_size=64, num_workers=w,
                               progress=False)  # fmt: skip
    # the plain forward: the same frames, decoded and resized beforehand, batch 64
    rows = [r for v in todo for r in range(int(index.start[v]), int(index.start[v + 1]))
            if index.has_image[r]]  # fmt: skip
    resize = ClipTransform(img_size)
    pixels = torch.cat([resize(decode_frame(index.image_path(r))[None]) for r in rows])
    batches = [normalize_frames(pixels[i : i + 64], dm.hparams.mean, dm.hparams.std)[:, None]
               for i in range(0, len(pixels), 64)]  # fmt: skip
    with torch.no_grad():
        encoder(batches[0][:8])  # warm-up
        t0 = time.perf_counter()
        for b in batches:
            encoder(b)
        plain = len(pixels) / (time.perf_counter() - t0)
    on_disk = cache.size_bytes()
    shutil.rmtree(folder, ignore_errors=True)
    return [
        {
            "measure": "extraction",
            "img_size": img_size,
            "decoding_workers": w,
            "frames": got["frames"],
            "extract_frames_per_s": got["frames_per_s"],
            "plain_forward_frames_per_s": round(plain, 1),
            "ratio": round(got["frames_per_s"] / plain, 2),
            "disk_mb_per_1000_frames": round(on_disk / got["frames"] * 1e3 / 1e6, 1),
        }
        for w, got in extracted.items()
    ]


def cache_sizes(sizes: tuple[int, ...] = (112, 224)) -> list[dict]:
    from lightning_modules.backbone import FrameEncoder

    rows = []
    for img in sizes:
        layout = encoder_layout(FrameEncoder(BACKBONE, img_size=img))
        n = len(layout.maps)
        for what, parts in (("pooled", parts_for(0, n)), ("pooled + 3 taps", parts_for(n, n))):
            b = layout.bytes_per_frame(parts)
            rows.append(
                {
                    "measure": "cache size",
                    "backbone": BACKBONE,
                    "img_size": img,
                    "parts": what,
                    "kb_per_frame": round(b / 1e3, 2),
                    "gb_per_1000_frames": round(b * 1e3 / 1e9, 4),
                    # Aff-Wild2's cropped_aligned frames, about 2.6 million (ABAW 8th)
                    "gb_for_2.6m_frames": round(b * 2.6e6 / 1e9, 1),
                }
            )
    return rows


def bench_sweep_trials(config: str, trials: int, results: str) -> list[dict]:
    from ablations.features import extract_config
    from ablations.runner import with_stage1
    from lightning_modules.pretrain import pretrain
    from sweeps.bench import _draw, _run, fresh_cost_cache, throughput_row
    from sweeps.space import load_sweep

    cfg = load_sweep(config)
    if "pretrain" in cfg:
        cfg, stage1, _ = with_stage1(cfg, results)
        pretrain(stage1, Path(results) / "pretrain", "disabled")
    params = _draw(cfg, trials)
    warm = tempfile.mkdtemp(prefix="affbench-bench-features-")
    rows = []
    try:
        for features in ("off", "auto"):
            c = copy.deepcopy(cfg)
            c["base"].setdefault("data", {}).update(features=features, features_dir=warm)
            if features == "auto":
                extract_config(c, progress=False, say=lambda *a: None)
            with fresh_cost_cache():
                seconds, _ = _run(c, Path("bench/sweep"), f"features-{features}", params, 1)
            row = throughput_row("trials", trials, seconds, 1)
            row.update(measure="sweep trials per hour", features=features,
                       config=Path(config).name)  # fmt: skip
            rows.append(row)
    finally:
        shutil.rmtree(warm, ignore_errors=True)
    rows[-1]["speedup"] = round(rows[0]["wall_s"] / rows[-1]["wall_s"], 1)
    return rows


def bench_features(
    root: str = "data/synthetic",
    heads: tuple[str, ...] = ("gru", "mixer3"),
    img_sizes: tuple[int, ...] = (112,),
    batches: int = 20,
    frames: int = 2000,
    sweep: str | None = "sweeps/configs/frozen_heads.yaml",
    trials: int = 4,
    results: str = "ablations/results",
) -> list[dict]:
    """All four, in one run, on this machine's threads (``torch.get_num_threads()``): the
    training steps and the extraction at each of ``img_sizes``, the cache sizes and the sweep
    (unless ``sweep`` is None) once."""
    os.environ.setdefault("WANDB_MODE", "disabled")
    rows = [r for size in img_sizes for r in bench_steps(root, heads, size, batches)]
    rows += [r for size in img_sizes for r in bench_extraction(root, size, frames)]
    rows += cache_sizes()
    if sweep:
        rows += bench_sweep_trials(sweep, trials, results)
    return rows
