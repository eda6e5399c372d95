"""Benchmarks of the data path (``affbench data bench-index`` / ``bench-loader``).

Each measurement runs in a fresh Python process, so its peak memory (``ru_maxrss``) is its own.
Results are flat rows with units in the column names; the command adds the machine's conditions
(``core.conditions``) when it writes them.
"""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from datamodules.index import ANNOTATIONS_DIR
from datamodules.tasks import SPLITS, get_task


def write_annotation_tree(root: Path, videos: int = 600, frames: int = 5000, seed: int = 0) -> None:
    """An annotation-only ABAW tree (no images): every video annotated for VA, EXPR and AU, 80%
    in Train_Set. Labels are random but valid, with unannotated runs."""
    rng = np.random.default_rng(seed)
    done = root / ".complete"
    if done.exists() and done.read_text() == f"{videos}x{frames}x{seed}":
        return
    shutil.rmtree(root, ignore_errors=True)
    for v in range(videos):
        split = SPLITS[0] if v < int(videos * 0.8) else SPLITS[1]
        name = f"{v}-30-640x480"
        n = frames
        unannotated = np.zeros(n, bool)
        s = int(rng.integers(0, n))
        unannotated[s : s + 200] = True
        va = np.round(rng.uniform(-1, 1, (n, 2)), 3)
        va[unannotated] = -5
        expr = rng.integers(0, 8, n)
        expr[unannotated] = -1
        au = rng.integers(0, 2, (n, 12))
        au[unannotated] = -1
        bodies = {
            "va": "\n".join(f"{a:.3f},{b:.3f}" for a, b in va.tolist()),
            "expr": "\n".join(map(str, expr.tolist())),
            "au": "\n".join(",".join(map(str, r)) for r in au.tolist()),
        }
        for task, body in bodies.items():
            out = root / ANNOTATIONS_DIR / get_task(task).challenge / split / f"{name}.txt"
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(get_task(task).header + "\n" + body + "\n")
    done.write_text(f"{videos}x{frames}x{seed}")


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def index_child(root: str, cache_dir: str) -> None:
    """Run in a fresh process: load both splits' indexes, print timing and memory as JSON."""
    from datamodules.index import load_index

    base = _rss_mib()
    t0 = time.perf_counter()
    frames = sum(len(load_index(root, s, cache_dir=cache_dir)) for s in SPLITS)
    seconds = time.perf_counter() - t0
    print(
        json.dumps(
            {
                "seconds": seconds,
                "frames": frames,
                "peak_rss_mib": _rss_mib(),
                "rss_before_mib": base,
            }
        )
    )


def _child(code: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_index(root: Path, videos: int, frames: int) -> list[dict]:
    """Cold build (empty cache) and warm load (cached) of both splits, each in its own process."""
    t0 = time.perf_counter()
    write_annotation_tree(root, videos, frames)
    written = time.perf_counter() - t0
    cache = root / ".bench_cache"
    shutil.rmtree(cache, ignore_errors=True)
    code = f"from datamodules.bench import index_child; index_child({str(root)!r}, {str(cache)!r})"
    rows = []
    for mode in ("cold", "warm"):
        r = _child(code)
        rows.append(
            {
                "mode": mode,
                "videos": videos,
                "frames": r["frames"],
                "seconds": round(r["seconds"], 3),
                "peak_rss_mib": round(r["peak_rss_mib"], 1),
                "rss_after_imports_mib": round(r["rss_before_mib"], 1),
                "tree_written_s": round(written, 1),
            }
        )
    return rows


def bench_loader(
    root: Path,
    img_size: int,
    seq_len: int,
    batch_size: int,
    workers: list[int],
    max_frames: int,
    repeats: int = 3,
) -> list[dict]:
    """Loader frames/s (0, 1, 2 ... workers) against plain PIL decoding of the same files in one
    process. The loader is timed from its first batch on (worker start-up excluded), over
    ``max_frames`` frames of Train_Set windows, without augmentation and then with it; each
    figure is the best of ``repeats`` passes (the machine's noise only ever slows a pass)."""
    import torch
    from PIL import Image

    from datamodules.abaw import AbawDataModule
    from datamodules.dataset import collate_clips

    torch.set_num_threads(1)
    rows = []
    for augment in (False, True):
        dm = AbawDataModule(
            root=str(root),
            tasks="va,expr,au",
            seq_len=seq_len,
            img_size=img_size,
            batch_size=batch_size,
            num_workers=0,
            augment=augment,
        )
        dm.setup("fit")
        ds = dm.datasets["train"]
        n_clips = min(len(ds), max_frames // seq_len)
        subset = torch.utils.data.Subset(ds, range(n_clips))
        if not augment:  # the limit: the same files, decoded by PIL in one process
            from datamodules.clips import window_rows

            paths = []
            for v, o in ds.windows[:n_clips]:
                rows_, _ = window_rows(ds.index, int(v), int(o), seq_len)
                paths += [ds._path(int(ds.source[r])) for r in rows_ if ds.source[r] >= 0]
            pil_fps = 0.0
            for _ in range(repeats + 1):  # the first pass also warms the page cache for both
                t0 = time.perf_counter()
                for p in paths:
                    np.asarray(Image.open(p).convert("RGB"))
                pil_fps = max(pil_fps, len(paths) / (time.perf_counter() - t0))
            rows.append(
                {
                    "reader": "PIL decode, 1 process (limit)",
                    "augment": False,
                    "workers": 0,
                    "frames_per_s": round(pil_fps),
                    "per_worker_vs_limit": 1.0,
                }
            )
        for w in workers:
            loader = torch.utils.data.DataLoader(
                subset,
                batch_size=batch_size,
                num_workers=w,
                collate_fn=collate_clips,
            )
            fps = 0.0
            for _ in range(repeats):
                it = iter(loader)
                next(it)  # worker start-up is not throughput
                t0, n = time.perf_counter(), 0
                for b in it:
                    n += b["frames"].shape[0] * b["frames"].shape[1]
                fps = max(fps, n / (time.perf_counter() - t0))
            rows.append(
                {
                    "reader": "AbawDataModule loader",
                    "augment": augment,
                    "workers": w,
                    "frames_per_s": round(fps),
                    "per_worker_vs_limit": round(fps / max(w, 1) / pil_fps, 2),
                }
            )
    cond = {
        "img_size": img_size,
        "seq_len": seq_len,
        "batch_size": batch_size,
        "threads_per_process": 1,
        "frames": n_clips * seq_len,
        "best_of": repeats,
    }
    return [{**r, **cond} for r in rows]
