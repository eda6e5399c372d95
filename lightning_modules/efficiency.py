"""What a model costs: parameters, MACs and FLOPs, latency, throughput, streaming, memory.

MACs are counted by PyTorch's operator-level ``FlopCounterMode`` on a real forward pass: every
convolution, matrix product and attention call (``scaled_dot_product_attention`` on the CPU too,
which the stock counter skips), divided by two. Normalisation layers and average pooling are
added as fvcore counts them (a BatchNorm in eval mode 2 per element, a LayerNorm/GroupNorm 5, an
adaptive average pool 1), which is how timm's published GMACs are made: the test against
``shared/reference/backbones.csv`` holds us to those. FLOPs = 2 x MACs, always.

One flat row per model and conditions, units in the column names.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import statistics
import time
from collections import deque
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import timm
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from core.host import device_name
from core.paths import cache_root
from lightning_modules.experiment import GMACS_PER_FRAME, LATENCY_MS, PARAMS_M

aten = torch.ops.aten


def _prod(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


# Extra formulas, in FLOPs (the counter's unit; MACs are half). Each receives shapes.
def _cpu_sdpa(query, key, value, *args, out_shape=None, **kw) -> int:
    return sdpa_flop_count(query, key, value)


def _batch_norm(x, weight, bias, *args, out_shape=None, **kw) -> int:
    training = next((a for a in args if isinstance(a, bool)), False)
    return 2 * _prod(x) * (5 if training else 2 if weight is not None else 1)


def _batch_norm_eval(x, weight, bias, *args, out_shape=None, **kw) -> int:
    return 2 * _prod(x) * (2 if weight is not None else 1)


def _group_or_layer_norm(x, *args, out_shape=None, **kw) -> int:
    return 2 * _prod(x) * 5


def _adaptive_avg_pool(x, *args, out_shape=None, **kw) -> int:
    return 2 * _prod(x)


EXTRA_FORMULAS = {
    aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa,
    aten.native_batch_norm: _batch_norm,
    aten._native_batch_norm_legit: _batch_norm,
    aten._native_batch_norm_legit_no_training: _batch_norm_eval,
    aten.native_layer_norm: _group_or_layer_norm,
    aten.native_group_norm: _group_or_layer_norm,
    aten._adaptive_avg_pool2d: _adaptive_avg_pool,
}


def count_macs(model: nn.Module, *inputs: torch.Tensor) -> int:
    """Multiply-accumulates of one forward pass of ``model`` on ``inputs`` (eval, no grad)."""
    was_training = model.training
    model.eval()
    # the fused multi-head-attention fast path is one opaque op: unfused, every matmul counts
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with (
            FlopCounterMode(display=False, custom_mapping=EXTRA_FORMULAS) as counter,
            torch.no_grad(),
        ):
            model(*inputs)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        model.train(was_training)
    return counter.get_total_flops() // 2


@dataclass(frozen=True)
class ModelSpec:
    """An architecture: what its cost depends on (and nothing else). ``head="none"`` is the bare
    timm model with a ``classifier`` of that many classes (0: no classifier)."""

    backbone: str = "mobilenetv4_conv_small"
    head: str = "mixer3"
    seq_len: int = 32
    img_size: int = 112
    tasks: str = "va"
    head_kwargs: dict = field(default_factory=dict)
    classifier: int = 0

    @classmethod
    def from_settings(cls, model: dict) -> ModelSpec:
        """The architecture of an ablation's (or a sweep trial's) model settings."""
        names = ("backbone", "head", "seq_len", "img_size", "tasks")
        return cls(
            **{k: model[k] for k in names if k in model}, head_kwargs=model.get("head_kwargs") or {}
        )

    def key(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    def build(self) -> nn.Module:
        if self.head == "none":
            return timm.create_model(self.backbone, pretrained=False, num_classes=self.classifier)
        from lightning_modules.module import AffectModule

        return AffectModule(
            backbone=self.backbone,
            head=self.head,
            head_kwargs=dict(self.head_kwargs),
            tasks=self.tasks,
            seq_len=self.seq_len,
            img_size=self.img_size,
        )

    def example(self, batch: int = 1) -> torch.Tensor:
        if self.head == "none":
            return torch.randn(batch, 3, self.img_size, self.img_size)
        return torch.randn(batch, self.seq_len, 3, self.img_size, self.img_size)

    @property
    def frames_per_clip(self) -> int:
        return 1 if self.head == "none" else self.seq_len


def cache_path() -> Path:
    return (
        cache_root()
        / "costs"
        / f"timm-{timm.__version__}-torch-{torch.__version__.split('+')[0]}.json"
    )


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def cached_row(path: Path, key: str, compute: Callable[[], dict]) -> dict:
    """A JSON file of ``{key: row}`` shared by processes: the row of ``key``, or ``compute()``
    written in (read afresh first, so another process's rows are kept; replaced atomically)."""
    row = _read_json(path).get(key)
    if row is not None:
        return row
    row = compute()
    cache = {**_read_json(path), key: row}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(cache))
    os.replace(tmp, path)
    return row


def cost_key(spec: ModelSpec, **conditions) -> str:
    """The cost cache's one key scheme: the architecture and what the row was measured under
    (nothing for parameters and MACs; device, threads, batch, precision, runs for timings)."""
    what = {"arch": json.loads(spec.key()), **conditions}
    return hashlib.sha1(json.dumps(what, sort_keys=True).encode()).hexdigest()


def static_costs(spec: ModelSpec, model: nn.Module | None = None) -> dict:
    """Parameters and MACs of an architecture, cached on disk per architecture (a sweep counts
    each architecture once, whatever its learning rate)."""
    return cached_row(cache_path(), cost_key(spec), lambda: _count(spec, model or spec.build()))


def _count(spec: ModelSpec, model: nn.Module) -> dict:
    params = lambda m: sum(p.numel() for p in m.parameters()) / 1e6  # noqa: E731
    if spec.head == "none":
        backbone_m, head_m = params(model), 0.0
    else:
        backbone_m = params(model.encoder)
        head_m = params(model.head) + params(model.outputs)
    macs = count_macs(model, spec.example(1))
    row = {
        "params_backbone_m": round(backbone_m, 4),
        "params_head_m": round(head_m, 4),
        PARAMS_M: round(params(model), 4),
        "params_trainable_m": round(
            sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6, 4
        ),
        "gmacs_per_clip": round(macs / 1e9, 5),
        GMACS_PER_FRAME: round(macs / 1e9 / spec.frames_per_clip, 5),
        "gflops_per_clip": round(2 * macs / 1e9, 5),
        "gflops_per_frame": round(2 * macs / 1e9 / spec.frames_per_clip, 5),
    }
    if spec.head != "none":
        enc = count_macs(model.encoder, spec.example(1)[:, :1])
        head = macs - count_macs(model.encoder, spec.example(1))
        row["head_gmacs_per_clip"] = round(head / 1e9, 5)
        row["stream_gmacs_per_new_frame"] = round((enc + head) / 1e9, 5)
    return row


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device, warmup: int, runs: int) -> list[float]:
    """Seconds per call of ``fn``: ``warmup`` untimed calls, then ``runs`` timed ones."""
    for _ in range(warmup):
        fn()
    _sync(device)
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        out.append(time.perf_counter() - t0)
    return out


class Streamer:
    """Per-frame inference with a ring buffer of the last T frames' encoder outputs: each new
    frame costs one encoder pass plus one head pass over the buffer (not T encoder passes)."""

    def __init__(self, model: nn.Module, seq_len: int):
        self.model, self.maps, self.pooled = model, deque(maxlen=seq_len), deque(maxlen=seq_len)

    @torch.no_grad()
    def step(self, frame: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, 3, H, W) -> {task: (B, K)}, the newest frame's outputs."""
        maps, pooled = self.model.encoder(frame[:, None])
        self.maps.append(maps)
        self.pooled.append(pooled)
        while len(self.pooled) < self.pooled.maxlen:  # warm start: repeat the first frame
            self.maps.appendleft(maps)
            self.pooled.appendleft(pooled)
        taps = [torch.cat([m[i] for m in self.maps], 1) for i in range(len(maps))]
        x = self.model.head(taps, torch.cat(list(self.pooled), 1))
        return {t: layer(x[:, -1]) for t, layer in self.model.outputs.items()}


def peak_rss_reset() -> float:
    """Reset the kernel's peak-RSS mark (Linux) and return the current RSS in MiB."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return proc_status("VmRSS")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def proc_status(field_name: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def profile(
    spec: ModelSpec,
    device: str = "cpu",
    batch: int = 8,
    precision: str = "32",
    threads: int | None = None,
    warmup: int = 3,
    runs: int = 10,
    timing: bool = True,
    cached: bool = False,
) -> dict:
    """One flat row: the architecture's static costs and, with ``timing``, its latency per clip
    (batch 1: median and p90), frames/s at ``batch``, streaming cost per new frame side by side
    with recomputing the clip, and peak memory, plus the conditions they were measured under.
    ``cached``: the row from the cost cache when this architecture was measured under these
    conditions (device, threads, batch, precision, runs) before."""
    if threads:
        torch.set_num_threads(threads)
    dev = torch.device(device)
    if cached:
        conditions = dict(
            device=device_name(device),
            threads=torch.get_num_threads(),
            batch=batch,
            precision=precision,
            warmup=warmup,
            runs=runs,
            timing=timing,
        )
        return cached_row(
            cache_path(),
            cost_key(spec, **conditions),
            lambda: profile(spec, device, batch, precision, None, warmup, runs, timing),
        )
    model = spec.build()
    row = {
        "backbone": spec.backbone,
        "head": spec.head,
        "tasks": spec.tasks if spec.head != "none" else "",
        "seq_len": spec.frames_per_clip,
        "img_size": spec.img_size,
        **static_costs(spec, model),
    }
    if timing:
        model = model.to(dev).eval()
        autocast = (
            torch.autocast(dev.type, dtype=torch.bfloat16)
            if precision in ("bf16", "bf16-mixed")
            else nullcontext()
        )
        one, many = spec.example(1).to(dev), spec.example(batch).to(dev)
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
            base = torch.cuda.memory_allocated(dev) / 2**20
        else:
            base = peak_rss_reset()  # growth from here, weights already resident
        with torch.no_grad(), autocast:
            lat = _timed(lambda: model(one), dev, warmup, runs)
            thr = _timed(lambda: model(many), dev, max(1, warmup // 2), max(3, runs // 2))
            peak = (
                torch.cuda.max_memory_allocated(dev) / 2**20
                if dev.type == "cuda"
                else proc_status("VmHWM")
            )
            row.update(
                **{LATENCY_MS: round(1e3 * statistics.median(lat), 3)},
                latency_ms_p90=round(1e3 * sorted(lat)[min(len(lat) - 1, int(0.9 * len(lat)))], 3),
                frames_per_s=round(batch * spec.frames_per_clip / statistics.median(thr), 1),
                peak_mem_mib=round(peak - base, 1),
            )
            if spec.head != "none":
                streamer = Streamer(model, spec.seq_len)
                frame = one[:, 0]
                stream = _timed(lambda: streamer.step(frame), dev, warmup, runs * 2)
                row.update(
                    stream_ms_per_new_frame=round(1e3 * statistics.median(stream), 3),
                    recompute_ms_per_new_frame=row[LATENCY_MS],
                )
    row.update(
        device=device_name(device),
        torch=torch.__version__,
        threads=torch.get_num_threads(),
        batch=batch,
        precision=precision,
    )
    return row
