"""``affbench features extract|info``: fill the feature cache for a grid's or a sweep's frozen
encoders before they train, and list what is cached.

A grid's combinations (or a sweep's base and the heads its space names) are grouped by encoder:
backbone, input size and weights (with random weights, the seed too: each seed draws another
encoder). Each group with ``freeze: all`` is built exactly as its runs build it (same seed, same
stage-1 file), and its features are cached with the taps its heads read.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

from core.errors import ConfigError
from datamodules.features import default_features_dir, size_line
from datamodules.tasks import SPLITS, TEST_SPLIT


def _maps_used(model: dict, spec) -> int:
    from lightning_modules.heads import create_head

    head = create_head(model.get("head", "mixer3"), spec, model.get("seq_len", 32),
                       **(model.get("head_kwargs") or {}))  # fmt: skip
    return int(getattr(head, "maps_used", 0))


def frozen_groups(runs: list[dict]) -> list[tuple[dict, list[dict]]]:
    """(settings of the first run, all runs) per frozen encoder among ``runs`` (settings dicts);
    runs that train their encoder are left out (they read frames)."""
    groups: dict[str, tuple[dict, list[dict]]] = {}
    for s in runs:
        m = s.get("model", {})
        if m.get("freeze") != "all" or s.get("data", {}).get("features", "auto") == "off":
            continue
        ident = [m.get("backbone", "mobilenetv4_conv_small"), m.get("img_size", 112),
                 m.get("pretrained"), s.get("data", {}).get("root")]  # fmt: skip
        if not m.get("pretrained"):
            ident.append(s.get("seed", 0))  # random weights: each seed is another encoder
        key = json.dumps(ident, default=str)
        groups.setdefault(key, (s, []))[1].append(s)
    return list(groups.values())


def config_runs(cfg: dict) -> list[dict]:
    """A grid's combinations, or a sweep's base once per head its space can choose."""
    if "space" not in cfg:
        from ablations.grid import expand

        return [r["settings"] for r in expand(cfg)]
    heads = (cfg["space"].get("model.head") or {}).get("choices") or [None]
    out = []
    for head in heads:
        s = copy.deepcopy(cfg["base"])
        if head is not None:
            s.setdefault("model", {})["head"] = head
            # the largest tap count a head's settings may ask for (mixer levels)
            for name, spec in cfg["space"].items():
                path = spec.get("path", name)
                when = spec.get("when") or {}
                if path.endswith(".levels") and when.get("model.head") in (None, head):
                    hi = max(spec.get("int") or spec.get("choices") or [0])
                    s["model"].setdefault("head_kwargs", {})["levels"] = hi
        out.append(s)
    return out


def extract_config(cfg: dict, progress: bool = True, say=print) -> list[dict]:
    """Extract (what is missing of) the features of every frozen encoder of ``cfg`` (a grid or
    a sweep, stage 1 resolved). Returns one row per encoder and split."""
    import lightning as L

    from lightning_modules.experiment import build

    groups = frozen_groups(config_runs(cfg))
    if not groups:
        raise ConfigError(
            f"{cfg.get('name', 'this config')}: no run freezes its encoder (model.freeze: all), "
            "so no run reads cached features"
        )
    rows = []
    for first, runs in groups:
        L.seed_everything(first.get("seed", 0), workers=True)  # as train_and_score builds it
        model, data = build(first)
        maps = max(_maps_used(r["model"], model.encoder.spec) for r in runs)
        data.attach_encoder(model.encoder, maps)
        cache, parts = data.feature_cache()
        splits = [*SPLITS, *([TEST_SPLIT] if data.test_list_file() else [])]
        frames = sum(int(data._index(split).has_image.sum()) for split in splits)
        m = first["model"]
        say(
            f"{m.get('backbone')} {m.get('img_size', 112)}px, weights "
            f"{m.get('pretrained') or 'random (seed ' + str(first.get('seed', 0)) + ')'}: "
            f"{size_line(cache.layout, parts, frames)}\n  -> {cache.folder}"
        )
        for split in splits:
            t0 = time.perf_counter()
            got = data.ensure_features(data._index(split), progress=progress)
            row = {
                "backbone": m.get("backbone"),
                "img_size": m.get("img_size", 112),
                "split": split,
                "parts": ",".join(parts),
                "frames_extracted": got["frames"] if got else 0,
                "seconds": round(time.perf_counter() - t0, 2),
                "frames_per_s": got["frames_per_s"] if got else None,
                "cache": str(cache.folder),
            }
            rows.append(row)
            say(
                f"  {split}: "
                + (f"{row['frames_extracted']:,} frames in {row['seconds']} s "
                   f"({row['frames_per_s']} frames/s)" if got else "cached already")
            )  # fmt: skip
    return rows


def prepare_features(cfg: dict) -> None:
    """Before a grid's or a sweep's workers start: cache what is missing of the features of its
    frozen encoders (every tap its heads read), here, once, with one progress bar per split,
    rather than in the first run of each head, where two workers would take turns at the lock
    and their bars would interleave with the run lines. Nothing is said when all is cached; a
    config without a frozen encoder does nothing."""
    from lightning_modules.experiment import quiet_libraries

    if not frozen_groups(config_runs(cfg)):
        return
    quiet_libraries()  # no "Seed set" line: the grid's own lines follow
    extract_config(cfg, say=lambda *_: None)  # the datamodule says what it extracts


def cache_info(root: str | Path | None = None) -> list[dict]:
    """One row per cached encoder under ``root``: what it is, its parts, videos, frames, size."""
    root = Path(root or default_features_dir())
    rows = []
    for enc in sorted(root.glob("*/encoder.json")):
        meta = json.loads(enc.read_text())
        videos = [json.loads(p.read_text()) for p in enc.parent.glob("*/video.json")]
        parts = sorted({p for v in videos for p in v.get("parts", [])})
        size = sum(p.stat().st_size for p in enc.parent.rglob("*.npy"))
        rows.append(
            {
                "folder": enc.parent.name,
                "backbone": meta["backbone"],
                "img_size": meta["img_size"],
                "weights_sha256": meta["weights_sha256"][:12],
                "parts": ",".join(parts),
                "videos": len(videos),
                "frames": sum(v.get("frames", 0) for v in videos),
                "size_gb": round(size / 1e9, 3),
            }
        )
    return rows
