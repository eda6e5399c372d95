"""95 % intervals and paired comparisons of the measures, by a bootstrap over videos and seeds.

The method, in one paragraph a paper can cite: *In Aff-Wild2 the sampled unit is the video (the
frames of one video are not independent), so intervals come from a two-level percentile
bootstrap. Each of B = 2,000 replicates draws the validation videos with replacement (one draw
shared by all runs, since every run was scored on the same videos) and, independently for each
row, that row's seeds with replacement; each drawn run's measure is computed on the drawn videos
exactly as the challenge computes it on frames pooled over videos (from per-video sums of the
measure's statistics), and the row's replicate is the mean over its drawn seeds. The 95 %
interval is the 2.5th to 97.5th percentile of the replicates. Two rows are compared by the same
replicates of their difference (a paired bootstrap: the same videos for both); the two-sided
p-value is twice the smaller share of replicates on either side of zero (with the usual + 1
correction), and rows whose difference from the best row has p >= 0.05 are not distinguishable
from it.* With one seed the interval is the video bootstrap alone; with few seeds the spread
over seeds is under-stated by a factor of about sqrt((n - 1) / n).

What is kept of a run, to compute all this afterwards: per video and task, the sums of the
task's statistics (``Task.frame_stats``: 12 numbers for VA, 64 for EXPR, 36 for AU), float64,
in ``<results>/videos/<key>.npz`` (for Aff-Wild2's 70-odd validation videos of a task, a few KB
per run).
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.errors import DataError
from datamodules.tasks import get_task

N_BOOT = 2000
LEVEL = 0.95
SCORE = "score"  # the mean of the trained tasks' main measures (scoring.SCORE)
VIDEO_SPAN = 1 << 22  # scoring.FRAME_SPAN: a frame key is video id * span + frame number


@dataclass
class VideoStats:
    """One run's scored split: ``ids`` (V,) the videos' 40-bit ids (stable across runs and
    ranks), ``names`` (V,) their names where known, ``sums`` task -> (V, S) summed statistics
    (a video without annotated frames of a task: zeros)."""

    ids: np.ndarray
    names: np.ndarray
    sums: dict[str, np.ndarray]

    def measures(self, counts: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """The measures with each video counted ``counts`` (..., V) times (None: once each)."""
        out: dict[str, np.ndarray] = {}
        for task, sums in self.sums.items():
            pooled = sums.sum(0) if counts is None else counts @ sums
            out.update(get_task(task).measures_from_stats(pooled))
        main = [out[get_task(t).measure] for t in self.sums]
        out[SCORE] = sum(main) / len(main)
        return out

    def measure(self, name: str, counts: np.ndarray | None = None) -> np.ndarray:
        values = self.measures(counts)
        if name not in values:
            raise KeyError(f"no measure {name!r} in these runs; they have {', '.join(values)}")
        return values[name]


def video_stats(merged: dict, video_names: dict[int, str] | None = None) -> VideoStats:
    """``FramePredictions.compute()``'s task -> (keys, predictions, targets) -> per-video sums
    (a per-video task's frames first averaged into one row per video, as it is scored)."""
    from lightning_modules.scoring import merge_by_key

    per_task = {}
    for task, (keys, pred, target) in merged.items():
        spec = get_task(task)
        if spec.per_video:
            keys, pred, target = merge_by_key(keys // VIDEO_SPAN, pred, target)
            keys = keys * VIDEO_SPAN
        per_task[task] = ((keys // VIDEO_SPAN).cpu().numpy(), spec.frame_stats(pred, target))
    ids = np.unique(np.concatenate([v for v, _ in per_task.values()] or [np.zeros(0, np.int64)]))
    sums = {}
    for task, (vid, rows) in per_task.items():
        out = np.zeros((len(ids), rows.shape[1]))
        np.add.at(out, np.searchsorted(ids, vid), rows)
        sums[task] = out
    names = np.array([(video_names or {}).get(int(i), f"id {int(i):#012x}") for i in ids])
    return VideoStats(ids.astype(np.int64), names, sums)


def stats_path(folder: str | Path, key: str) -> Path:
    """Where the run ``key`` of a results folder keeps its per-video statistics."""
    return Path(folder) / "videos" / f"{key}.npz"


def save(path: str | Path, stats: dict[str, VideoStats]) -> Path:
    """stage (val, test) -> its VideoStats, into one ``.npz`` (written atomically)."""
    arrays = {}
    for stage, s in stats.items():
        arrays[f"{stage}/ids"], arrays[f"{stage}/names"] = s.ids, s.names
        arrays.update({f"{stage}/{task}": v for task, v in s.sums.items()})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)
    os.replace(tmp, path)
    return path


def load(path: str | Path, stage: str = "val") -> VideoStats:
    """A run's ``.npz`` -> the VideoStats of ``stage``; FileNotFoundError or KeyError naming the
    file when it has none, DataError naming it when it is damaged."""
    try:
        z = np.load(path)
    except FileNotFoundError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile) as e:  # truncated, overwritten
        raise DataError(f"{path}: damaged per-video statistics ({e}); score the run again") from e
    with z:
        if f"{stage}/ids" not in z:
            raise KeyError(f"{path} holds no {stage} predictions ({', '.join(z.files)})")
        try:
            sums = {
                k.split("/", 1)[1]: z[k]
                for k in z.files
                if k.startswith(f"{stage}/") and k.split("/", 1)[1] not in ("ids", "names")
            }
            return VideoStats(z[f"{stage}/ids"], z[f"{stage}/names"], sums)
        except (OSError, ValueError, zipfile.BadZipFile) as e:
            raise DataError(f"{path}: damaged per-video statistics ({e})") from e


def _check_same_videos(runs: list[VideoStats], labels: list[str]) -> None:
    """Every run scored on the same videos, or a ValueError that names the first that was not."""
    first = runs[0]
    for run, label in zip(runs[1:], labels[1:], strict=True):
        if len(run.ids) != len(first.ids) or not np.array_equal(run.ids, first.ids):
            only = sorted(set(run.names) ^ set(first.names))
            raise ValueError(
                f"{label} was scored on other videos than {labels[0]} "
                f"({len(run.ids)} against {len(first.ids)}; e.g. {', '.join(only[:3])}): "
                "a paired bootstrap needs the same videos"
            )


def _video_draws(n_videos: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(B, V) how often each video is drawn in each replicate."""
    return rng.multinomial(n_videos, np.full(n_videos, 1 / n_videos), size=n_boot).astype(float)


def _row_replicates(
    runs: list[VideoStats], name: str, videos: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """(B,) the row's replicates: the mean over its seeds, drawn with replacement, of each
    drawn seed's measure on the drawn ``videos`` (B, V)."""
    per_run = np.stack([r.measure(name, videos) for r in runs], 1)  # (B, R)
    n = len(runs)
    seeds = rng.multinomial(n, np.full(n, 1 / n), size=len(videos))  # (B, R)
    return (per_run * seeds).sum(1) / n


def _percentiles(values: np.ndarray, level: float) -> tuple[float, float]:
    tail = 100 * (1 - level) / 2
    lo, hi = np.nanpercentile(values, [tail, 100 - tail])
    return float(lo), float(hi)


@dataclass
class Interval:
    """A row's measure: the mean over its runs, its interval, the runs and videos it rests on."""

    mean: float
    low: float
    high: float
    runs: int
    videos: int


def interval(
    runs: list[VideoStats],
    name: str,
    *,
    labels: list[str] | None = None,
    n_boot: int = N_BOOT,
    level: float = LEVEL,
    seed: int = 0,
) -> Interval:
    """The mean of measure ``name`` over ``runs`` (one row's seeds) and its ``level`` interval
    (the bootstrap of the module docstring; fixed ``seed``: the same table every time)."""
    _check_same_videos(runs, labels or [f"run {i}" for i in range(len(runs))])
    rng = np.random.default_rng(seed)
    mean = float(np.mean([r.measure(name) for r in runs]))
    if len(runs[0].ids) < 2:  # one video (stills are one "video" per split): nothing to draw
        return Interval(mean, float("nan"), float("nan"), len(runs), len(runs[0].ids))
    videos = _video_draws(len(runs[0].ids), n_boot, rng)
    low, high = _percentiles(_row_replicates(runs, name, videos, rng), level)
    return Interval(mean, low, high, len(runs), len(runs[0].ids))


@dataclass
class Difference:
    """Row a minus row b: the difference of their means, its interval and two-sided p-value."""

    diff: float
    low: float
    high: float
    p: float
    videos: int

    @property
    def distinguishable(self) -> bool:
        return self.p < 1 - LEVEL


def paired(
    a: list[VideoStats],
    b: list[VideoStats],
    name: str,
    *,
    labels: tuple[str, str] = ("a", "b"),
    n_boot: int = N_BOOT,
    level: float = LEVEL,
    seed: int = 0,
) -> Difference:
    """Row ``a`` (its seeds' runs) minus row ``b``, by the paired bootstrap of the module
    docstring: the same video draws for both rows, each row's seeds drawn on their own."""
    _check_same_videos([a[0], *a[1:], *b], [labels[0]] * len(a) + [labels[1]] * len(b))
    rng = np.random.default_rng(seed)
    diff = float(np.mean([r.measure(name) for r in a]) - np.mean([r.measure(name) for r in b]))
    if len(a[0].ids) < 2:
        return Difference(diff, float("nan"), float("nan"), float("nan"), len(a[0].ids))
    videos = _video_draws(len(a[0].ids), n_boot, rng)
    reps = _row_replicates(a, name, videos, rng) - _row_replicates(b, name, videos, rng)
    reps = reps[np.isfinite(reps)]
    low, high = _percentiles(reps, level)
    tail = min(int((reps <= 0).sum()), int((reps >= 0).sum()))
    p = min(1.0, 2 * (tail + 1) / (len(reps) + 1))
    return Difference(diff, low, high, p, len(a[0].ids))
