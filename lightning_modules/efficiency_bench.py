"""``affbench bench-efficiency``: the cost tables of BENCHMARKS.md, measured in one run each.

* ``zoo``: backbones x heads x sizes x T: params, GMACs per frame, CPU frames/s, streaming cost;
* ``growth``: how mixer3's params and GMACs grow with T, beside its factorised token mixer, the
  GRU and the transformer;
* ``overhead``: our measurement path (``profile``) against timm's plain forward on the same
  backbone, timed side by side, alternating, in one process.
"""

from __future__ import annotations

import statistics
import time

import timm
import torch

from lightning_modules.efficiency import ModelSpec, profile, static_costs
from lightning_modules.experiment import GMACS_PER_FRAME, LATENCY_MS, PARAMS_M

ZOO_BACKBONES = (
    "mobilenetv4_conv_small",
    "mobilenetv4_conv_medium",
    "mobilenetv4_hybrid_medium",
    "resnet18",
    "efficientnet_b0",
    "mobilenetv3_large_100",
)
ZOO_HEADS = ("frame", "gru", "transformer", "mixer1", "mixer3")


def zoo(
    backbones=ZOO_BACKBONES, heads=ZOO_HEADS, sizes=(112, 224), seq_lens=(8, 32), threads=2, runs=5
) -> list[dict]:
    """Batch 1 clip: frames/s = T / clip latency; streaming = one new frame with the buffer kept."""
    rows = []
    for b in backbones:
        for size in sizes:
            for t in seq_lens:
                for h in heads:
                    r = profile(
                        ModelSpec(b, h, t, size), batch=1, threads=threads, warmup=2, runs=runs
                    )
                    rows.append(
                        {
                            k: r[k]
                            for k in (
                                "backbone",
                                "head",
                                "img_size",
                                "seq_len",
                                PARAMS_M,
                                GMACS_PER_FRAME,
                                "frames_per_s",
                                "stream_ms_per_new_frame",
                                "recompute_ms_per_new_frame",
                                "stream_gmacs_per_new_frame",
                                "threads",
                            )
                        }
                    )
    return rows


def growth(seq_lens=(8, 16, 32, 64), size=224, backbone="mobilenetv4_conv_small") -> list[dict]:
    variants = (
        ("mixer3", {}),
        ("mixer3", {"token_mixer": "factorized"}),
        ("gru", {}),
        ("transformer", {}),
    )
    rows = []
    for head, kw in variants:
        for t in seq_lens:
            c = static_costs(ModelSpec(backbone, head, t, size, head_kwargs=kw))
            name = head + ("+factorized" if kw else "")
            rows.append(
                {
                    "head": name,
                    "seq_len": t,
                    "img_size": size,
                    "params_head_m": c["params_head_m"],
                    PARAMS_M: c[PARAMS_M],
                    GMACS_PER_FRAME: c[GMACS_PER_FRAME],
                    "head_gmacs_per_clip": c["head_gmacs_per_clip"],
                }
            )
    return rows


def overhead(
    backbones=("mobilenetv4_conv_small", "resnet18"), size=224, threads=2, runs=30, rounds=3
) -> list[dict]:
    """Per-image latency of a bare timm model: a plain timed loop, then ``profile``, alternated."""
    torch.set_num_threads(threads)
    rows = []
    for b in backbones:
        model = timm.create_model(b, pretrained=False).eval()
        x = torch.randn(1, 3, size, size)
        plain, ours = [], []
        for _ in range(rounds):
            with torch.no_grad():
                for _ in range(3):
                    model(x)
                times = []
                for _ in range(runs):
                    t0 = time.perf_counter()
                    model(x)
                    times.append(time.perf_counter() - t0)
            plain.append(1e3 * statistics.median(times))
            r = profile(
                ModelSpec(b, "none", 1, size, classifier=1000),
                batch=1,
                threads=threads,
                warmup=3,
                runs=runs,
            )
            ours.append(r[LATENCY_MS])
        p, o = statistics.median(plain), statistics.median(ours)
        rows.append(
            {
                "backbone": b,
                "img_size": size,
                "timm_plain_ms": round(p, 3),
                "affbench_profile_ms": round(o, 3),
                "ratio": round(o / p, 3),
                "threads": threads,
                "runs": runs,
                "rounds": rounds,
            }
        )
    return rows
