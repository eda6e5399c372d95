"""A trial's cost, measured once per architecture: parameters and MACs (``static_costs``'s disk
cache) and the CPU latency row of ``efficiency.profile``, cached per architecture, device and
thread count. Learning rates, dropout and seeds cost the same: they never re-measure."""

from __future__ import annotations

import hashlib
import json

import torch

from core.host import cpu_name
from lightning_modules.efficiency import ModelSpec, cache_path, cached_row, profile


def trial_cost(settings: dict) -> dict:
    """The ``efficiency.profile`` row (batch 1, 2 warm-up and 5 timed runs) of the settings'
    model, from the cache when this architecture was measured on this device before."""
    spec = ModelSpec.from_settings(settings.get("model", {}))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    where = torch.cuda.get_device_name() if device == "cuda" else cpu_name()
    conditions = {"arch": spec.key(), "device": where, "threads": torch.get_num_threads()}
    key = hashlib.sha1(json.dumps(conditions, sort_keys=True).encode()).hexdigest()

    def measure() -> dict:
        row = profile(spec, device=device, batch=1, warmup=2, runs=5)
        return {k: v for k, v in row.items() if k not in ("backbone", "head", "tasks")}

    return cached_row(cache_path().with_name("latency.json"), key, measure)
