"""A benchmark's figures with the conditions they were measured under, as one CSV file per
benchmark and machine: ``<results>/<benchmark>-<machine>.csv``. Every command that measures
something writes through :func:`write_results`; ``affbench bench-page`` reads the files back
into ``BENCHMARKS.md``."""

from __future__ import annotations

import csv
import os
import platform
import re
import shlex
import sys
import tempfile
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from core.host import cpu_flags, cpu_name, gpu_name

# The conditions columns, after a row's own, in this order on every row.
CONDITIONS = (
    "machine",
    "cpu",
    "cpu_flags",
    "logical_cores",
    "torch_threads",
    "gpu",
    "python",
    "torch",
    "timm",
    "optuna",
    "lightning",
    "numpy",
    "pandas",
    "date_utc",
    "command",
)
_NAME = re.compile(r"[a-z0-9]+(-[a-z0-9]+)*")
_NOISE = re.compile(
    r"\((r|tm)\)|@.*$|\b\d+-core\b|\b(cpu|processor|with|graphics|\d+gb|hbm\d*[a-z]?|pcie|sxm\d*)\b"
)


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return ""


def machine_slug(cpu: str, cores: int, gpu: str = "") -> str:
    """A short name for a machine, for file names: the GPU's name where there is one, else the
    CPU's, without trademarks, clock, memory size or form factor, then the logical cores
    (``amd-epyc-2c``, ``intel-xeon-platinum-8480-32c``, ``nvidia-h100-16c``)."""
    name = re.sub(r"^(\d+) x ", r"\1x ", (gpu or cpu).lower())
    words = [w for w in re.split(r"[^a-z0-9]+", _NOISE.sub(" ", name)) if w][:5]
    return "-".join([*words, f"{cores}c"]) if words else f"unknown-{cores}c"


def conditions(command: str | None = None) -> dict:
    """This machine and process now: the CPU's model and instruction-set flags, logical cores,
    torch's thread count (as it stands when called: after a benchmark, the count it set for
    itself), the GPU (empty without one), the versions that decide the figures, the UTC date and
    ``command`` (default: this process's own command line, the program's name without its
    folder)."""
    import torch

    cores = os.cpu_count() or 1
    cpu, gpu = cpu_name(), gpu_name()
    if command is None:
        command = shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]])
    return {
        "machine": machine_slug(cpu, cores, gpu),
        "cpu": cpu,
        "cpu_flags": " ".join(cpu_flags()),
        "logical_cores": cores,
        "torch_threads": torch.get_num_threads(),
        "gpu": gpu,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": _version("timm"),
        "optuna": _version("optuna"),
        "lightning": _version("lightning"),
        "numpy": _version("numpy"),
        "pandas": _version("pandas"),
        "date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": command,
    }


def write_results(
    rows: list[dict], benchmark: str, results_dir: str | Path, command: str | None = None
) -> Path:
    """Write ``rows`` (their own columns in order of first appearance, a cell left empty where a
    row lacks a column) with :func:`conditions` on every row to
    ``<results_dir>/<benchmark>-<machine>.csv``, replacing that file whole (written beside it,
    then renamed) and leaving other machines' files alone; returns the path. A row column named
    like a condition is an error rather than a silent overwrite."""
    if not _NAME.fullmatch(benchmark):
        raise ValueError(f"benchmark name {benchmark!r}: lower-case words joined by '-'")
    if not rows:
        raise ValueError(f"{benchmark}: no rows to write")
    columns = list(dict.fromkeys(k for r in rows for k in r))
    clash = [c for c in columns if c in CONDITIONS]
    if clash:
        raise ValueError(f"{benchmark}: row columns {clash} are conditions columns")
    cond = conditions(command)
    folder = Path(results_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{benchmark}-{cond['machine']}.csv"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w", newline="") as f:
            out = csv.DictWriter(f, [*columns, *CONDITIONS], restval="", lineterminator="\n")
            out.writeheader()
            out.writerows({**r, **cond} for r in rows)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
