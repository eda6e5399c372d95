"""``BENCHMARKS.md``, generated: one section per benchmark in a fixed order, its description,
then per machine the conditions and the figures of ``<results>/<benchmark>-<machine>.csv``
(written by :func:`core.conditions.write_results`). Nothing but the CSV files goes into the
figures, and the same files always give the same page."""

from __future__ import annotations

import csv
import difflib
import math
import re
from dataclasses import dataclass
from pathlib import Path

from core.conditions import CONDITIONS
from core.errors import DataError

PAGE = "BENCHMARKS.md"


@dataclass(frozen=True)
class Benchmark:
    """One section of the page. ``name`` starts its CSV files' names; ``split``, a column
    whose values each get a table of their own (rows of different kinds in one file)."""

    name: str
    title: str
    command: str
    about: str
    split: str | None = None

    @property
    def anchor(self) -> str:
        """The section's link target, as GitHub makes it from the heading."""
        return re.sub(r"[^a-z0-9 _-]", "", self.title.lower()).replace(" ", "-")


BENCHMARKS = (
    Benchmark(
        "index",
        "Frame index",
        "affbench data bench-index",
        "An annotation-only ABAW tree is written (no images; `--videos` videos of `--frames` "
        "frames, VA, EXPR and AU labels for every video, most of them in Train_Set), then both "
        "splits' frame index is built with an empty cache (cold: the annotation files parsed, "
        "the `.npz` written) and loaded again from the cache (warm), each in a fresh Python "
        "process, so that its peak resident memory (`ru_maxrss`) is its own; "
        "`rss_after_imports_mib` is that process before the index, numpy and pandas imported. "
        "The annotation files are in the page cache.",
    ),
    Benchmark(
        "loader",
        "Loader",
        "affbench data bench-loader",
        "`AbawDataModule`'s training loader over Train_Set windows of T frames (`seq_len`), "
        "without and with augmentation, with each number of worker processes in `--workers`, "
        "one torch thread per process, timed from its first batch on (worker start-up "
        "excluded); each figure is the best of its passes, because the machine's noise only "
        "ever slows a pass. The limit is plain PIL decoding of the same files in one process; "
        "`per_worker_vs_limit` is the loader's frames/s per worker (or per main process, "
        "without workers) over that limit.",
    ),
    Benchmark(
        "learning",
        "Learning",
        "affbench bench-learning",
        "Each head is trained with the same backbone from random weights, the same data, seed "
        "and budget (epochs), multi-task (VA, EXPR and AU at once) on the synthetic dataset; "
        "the last epoch's weights (no checkpoint selection: every head is read at the same "
        "step) are scored on Validation_Set and Test_Set with the official measures. `train_s` "
        "is the fit's wall clock. The data are synthetic faces: the figures say whether a head "
        "learns and uses time, nothing about real faces.",
    ),
    Benchmark(
        "stage1",
        "Stage 1",
        "affbench bench-stage1",
        "Stage 1 (the encoder trained on the synthetic still faces, written if absent, with "
        "the main job's stage-1 recipe at this grid's input size), then "
        "the grid's heads x seeds at the grid's own budget twice, from random weights and from "
        "the stage-1 encoder, all else equal: val VA CCC per head, mean and sample std over the "
        "seeds. The `(throughput)` rows give the training throughput (forward, backward and "
        "optimizer step, data wait excluded) of stage 1 in images/s beside the video side's in "
        "frames/s (the `frame` head) for the same backbone, and stage 1's own validation "
        "measures on the stills. The stills share the synthetic videos' renderer: the figures "
        "say nothing about AffectNet or Aff-Wild2.",
    ),
    Benchmark(
        "stage1-seeds",
        "Stage 1 over seeds",
        "affbench bench-stage1-seeds",
        "The main job's grid (`make demo`: stage 1 on the synthetic stills, its encoder frozen, "
        "the heads x seeds trained on its cached features) once per stage-1 seed, all else "
        "equal. `stage 1`: each encoder's validation measures on the stills; `stage 1 over "
        "seeds`: their mean and sample std. `grid`: each head's mean over its seeds, its 95 % "
        "interval (bootstrap over the validation videos and the seeds), the paired-bootstrap "
        "p against the best head of that grid and whether it is tied with it (p >= 0.05). "
        "`agreement`: per head, on how many encoders it is tied with the best; "
        "`same_verdict` says whether every encoder puts it on the same side.",
        split="part",
    ),
    Benchmark(
        "features",
        "Feature cache",
        "affbench bench-features",
        "What the feature cache of a frozen encoder buys, in one run: the training step "
        "(forward, backward and optimizer step, data wait excluded) and the epoch's wall clock "
        "of a head on cached features against the same head end to end with the same frozen "
        "encoder, on the same clips (same seed and windows, augmentation off); extraction "
        "frames/s (decoding, the encoder, fp16 writes) with each number of decoding workers "
        "against the encoder's plain forward on the same frames decoded beforehand, with the "
        "cache's size on disk; the cache's size per frame, pooled only and with the taps, "
        "computed from the encoder's shapes (`gb_for_2.6m_frames`: Aff-Wild2's cropped "
        "frames); and a sweep's trials per hour on a frozen encoder, the same queued trials "
        "with the cache off and on, each on a fresh study and cost cache. One table per "
        "measure.",
        split="measure",
    ),
    Benchmark(
        "efficiency-zoo",
        "Efficiency: zoo",
        "affbench bench-efficiency zoo",
        "Backbones x heads x input sizes x clip lengths T (VA output), fp32 on the CPU, batch "
        "1 clip, warm-up runs then timed runs, the median. `frames_per_s` is T over the clip's "
        "latency; `stream_ms_per_new_frame` is the cost of one new frame with the previous "
        "frames' encoder outputs kept in a ring buffer, beside `recompute_ms_per_new_frame`, "
        "the whole clip computed again. Parameters and GMACs per frame come from a real "
        "forward pass (`FlopCounterMode`, counted as timm counts its published figures).",
    ),
    Benchmark(
        "efficiency-growth",
        "Efficiency: growth",
        "affbench bench-efficiency growth",
        "How the heads' parameters and MACs grow with T at one input size: `mixer3` with its "
        "full token MLP (N x 4N weights per level, the N tokens growing with T) beside its "
        "factorised token mixer, the GRU and the transformer. Parameters and MACs only, no "
        "timing.",
    ),
    Benchmark(
        "efficiency-overhead",
        "Efficiency: overhead",
        "affbench bench-efficiency overhead",
        "The measurement path's own cost: the latency per image of a bare timm model at batch "
        "1, timed by a plain loop around timm's forward and by `affbench profile` on the same "
        "model, alternated over rounds, medians; `ratio` is the second over the first.",
    ),
    Benchmark(
        "grid",
        "Grid engine",
        "affbench bench-grid",
        "A grid's wall clock (`--config`, W&B offline) with 1 and 2 workers, each on a fresh "
        "results folder, study and cost cache, so that both do the same work; then the "
        "engine's overhead per combination: seeds of one combination trained by "
        "`train_and_score` alone against the same combinations run as a grid by `run_grid` "
        "(checks, study, lock, heartbeat thread, results store, tables, plot, summary run), "
        "alternated over rounds with the cost cache warm for both, and the seconds each "
        "combination spends outside `train_and_score`, measured inside the same grid runs.",
    ),
    Benchmark(
        "sweep",
        "Sweep engine",
        "affbench bench-sweep",
        "Trials per hour with 1 and 2 workers: the same trials (drawn once from the sweep "
        "file's space with a seeded random sampler and queued in each study) on a fresh SQLite "
        "study and cost cache each, so that both do the same work; then the sweep machinery's "
        "overhead per trial: one architecture trained by `train_and_score` alone (its cost "
        "cached, W&B offline) against identical queued trials through `run_sweep` (study, "
        "lock, stale-trial check, ask, suggest, heartbeat thread, user attributes, tell), "
        "alternated over rounds, and the seconds each trial spends outside `train_and_score`, "
        "measured inside the same swept runs.",
    ),
)

_INTRO = """\
# Benchmarks

Generated by `affbench bench-page` (`make bench-page`) from the CSV files under `results/`; do
not edit it by hand: `make bench` runs every benchmark and generates it again. Each benchmark
writes one file per machine, `results/<benchmark>-<machine>.csv`, every row with the conditions
it was measured under (CPU model and instruction-set flags, logical cores, torch threads, GPU,
versions, date, command). Figures from different machines are not the same (instruction sets,
GPUs, thread counts and library versions change them), so each table stands under the machine it
came from.
"""
_INT = re.compile(r"-?\d+")


def _files(results_dir: Path) -> dict[str, list[Path]]:
    """Each benchmark's CSV files, sorted by name; a CSV that names no benchmark is an error."""
    found: dict[str, list[Path]] = {b.name: [] for b in BENCHMARKS}
    by_length = sorted(found, key=len, reverse=True)  # efficiency-zoo before a shorter name
    for path in sorted(results_dir.glob("*.csv")):
        name = next((n for n in by_length if path.stem.startswith(n + "-")), None)
        if name is None:
            raise DataError(
                f"{path}: not <benchmark>-<machine>.csv for any benchmark of the page "
                f"({', '.join(found)})"
            )
        found[name].append(path)
    return found


def _read(path: Path) -> tuple[list[str], list[dict]]:
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        columns = list(reader.fieldnames or [])
    if not rows:
        raise DataError(f"{path}: no rows")
    missing = [c for c in CONDITIONS if c not in columns]
    if missing:
        raise DataError(f"{path}: no conditions columns {missing}")
    return [c for c in columns if c not in CONDITIONS], rows


def _number(text: str) -> str | None:
    """A cell's number as shown (whole numbers as they are, others to 3 significant digits,
    trailing zeros kept, and to the unit from 100 up), or None where the cell is not a number."""
    if _INT.fullmatch(text):
        return text
    try:
        x = float(text)
    except ValueError:
        return None
    if math.isnan(x):
        return ""
    if math.isinf(x) or abs(x) < 100:
        return f"{x:#.3g}".rstrip(".")  # 99.96 -> '100.' -> '100'
    return f"{x:.0f}"


def _cell(text: str) -> str:
    shown = _number(text)
    return (text if shown is None else shown).replace("|", "\\|").replace("\n", " ")


def _table(columns: list[str], rows: list[dict]) -> str:
    columns = [c for c in columns if any(r.get(c) for r in rows)]
    numeric = [
        all(_number(r[c]) is not None for r in rows if r.get(c)) for c in columns
    ]  # right-aligned
    lines = [
        "| " + " | ".join(columns) + " |",
        "|" + "|".join("---:" if n else "---" for n in numeric) + "|",
    ]
    lines += ["| " + " | ".join(_cell(r.get(c) or "") for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def _value(rows: list[dict], column: str) -> str:
    return " / ".join(dict.fromkeys(r[column] for r in rows if r.get(column)))


def _conditions(rows: list[dict]) -> str:
    """The conditions of one file's rows as one sentence (several values joined by ' / ')."""
    v = {c: _value(rows, c) for c in CONDITIONS}
    flags = f" (flags: {v['cpu_flags'].replace(' ', ', ')})" if v["cpu_flags"] else ""
    versions = ", ".join(
        f"{name} {v[c]}"
        for name, c in (
            ("Python", "python"),
            ("torch", "torch"),
            ("timm", "timm"),
            ("Optuna", "optuna"),
            ("Lightning", "lightning"),
            ("numpy", "numpy"),
            ("pandas", "pandas"),
        )
        if v[c]
    )
    return (
        f"**Conditions**: CPU {v['cpu'] or 'unknown'}{flags}; logical cores "
        f"{v['logical_cores']}; torch threads {v['torch_threads']}; "
        f"{'GPU ' + v['gpu'] if v['gpu'] else 'no GPU'}; {versions}; measured "
        f"{v['date_utc']} by `{v['command']}`."
    )


def _section(bench: Benchmark, files: list[Path], results_dir: Path) -> str:
    out = [f"## {bench.title}", "", f"Command: `{bench.command}`.", "", bench.about, ""]
    if not files:
        out += [
            f"No figures yet: `{bench.command}` writes them to "
            f"`{results_dir.name}/{bench.name}-<machine>.csv`.",
            "",
        ]
    for path in files:
        columns, rows = _read(path)
        machine = path.stem[len(bench.name) + 1 :]
        source = f"{results_dir.name}/{path.name}"
        out += [f"### {machine}", "", f"{_conditions(rows)} From [`{source}`]({source}).", ""]
        if bench.split and bench.split in columns:
            groups: dict[str, list[dict]] = {}
            for r in rows:
                groups.setdefault(r[bench.split], []).append(r)
            kept = [c for c in columns if c != bench.split]
            for key, group in groups.items():
                out += [f"**{key}**", "", _table(kept, group), ""]
        else:
            out += [_table(columns, rows), ""]
    return "\n".join(out)


def render_page(results_dir: str | Path) -> str:
    """The page for the CSV files under ``results_dir`` (none at all gives every section's
    'no figures yet')."""
    results_dir = Path(results_dir)
    files = _files(results_dir) if results_dir.is_dir() else {b.name: [] for b in BENCHMARKS}
    contents = " · ".join(f"[{b.title}](#{b.anchor})" for b in BENCHMARKS)
    parts = [_INTRO, contents + "\n"]
    parts += [_section(b, files[b.name], results_dir) for b in BENCHMARKS]
    return "\n".join(parts).rstrip("\n") + "\n"


def page_difference(current: str, expected: str, name: str = PAGE, lines: int = 40) -> str:
    """A unified diff from the page as it is to the page the CSV files give (its first
    ``lines`` lines), empty when they are the same."""
    diff = difflib.unified_diff(
        current.splitlines(),
        expected.splitlines(),
        f"{name} (as it is)",
        f"{name} (from the CSV files)",
        lineterm="",
    )
    return "\n".join(list(diff)[:lines])
