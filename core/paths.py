"""Where the suite keeps things: caches under ``$AFFBENCH_CACHE`` (default
``~/.cache/affbench``), ablation results, sweep studies and benchmark figures under the working
directory."""

from __future__ import annotations

import os
from pathlib import Path

RESULTS = "ablations/results"  # one folder per grid: results.csv, tables, plot, W&B runs
STUDIES = "sweeps/studies"  # SQLite studies, W&B runs and checkpoints of sweeps
BENCH_RESULTS = "results"  # <benchmark>-<machine>.csv: the figures of BENCHMARKS.md


def cache_root() -> Path:
    """``$AFFBENCH_CACHE``, else ``~/.cache/affbench``: frame indexes, model costs."""
    return Path(os.environ.get("AFFBENCH_CACHE", Path.home() / ".cache" / "affbench"))
