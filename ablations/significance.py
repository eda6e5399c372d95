"""A results store's rows with their 95 % intervals and whether each differs from the best row.

A row of a table is a group of runs (its seeds); each run's per-video statistics lie in
``<results>/videos/<key>.npz`` (written when it was scored). The intervals and the paired
bootstrap are those of ``lightning_modules/intervals.py``, whose docstring states the method.
Runs scored before these files existed have none: their rows keep the mean and the std only.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from core.errors import DataError
from lightning_modules.intervals import interval as row_interval
from lightning_modules.intervals import load, paired, stats_path

log = logging.getLogger(__name__)

LOW, HIGH, P_BEST, TIED = "ci95_low", "ci95_high", "p_vs_best", "tied_with_best"
COLUMNS = (LOW, HIGH, P_BEST, TIED)
VIDEOS = "videos"  # how many videos the interval rests on


def _runs(folder: Path, keys: list[str], stage: str) -> list | None:
    """The runs' statistics, or None when any run has no file (an older store)."""
    paths = [stats_path(folder, k) for k in keys]
    if not all(p.is_file() for p in paths):
        return None
    try:
        return [load(p, stage) for p in paths]
    except (DataError, KeyError) as e:  # a damaged file: that row without its interval
        log.warning("%s", str(e).strip("'"))
        return None


def intervals(
    df: pd.DataFrame,
    folder: str | Path,
    by: list[str],
    metric: str,
    lower_is_better: bool = False,
) -> pd.DataFrame:
    """One line per group of ``by`` (in order of appearance): ``ci95_low``, ``ci95_high`` of
    ``metric`` (``val/va_ccc``: stage and measure), and, against the group with the best mean
    among those sharing its last ``by`` value (its column of the table, e.g. its backbone),
    ``p_vs_best`` and ``tied_with_best`` (p >= 0.05: not distinguishable from the best; the
    best itself is tied). NaN where the statistics are missing."""
    stage, _, name = metric.partition("/")
    folder = Path(folder)
    groups = list(df.groupby(by, sort=False))
    runs, label = {}, {}
    for values, part in groups:
        values = values if isinstance(values, tuple) else (values,)
        runs[values] = _runs(folder, list(part["key"]), stage)
        label[values] = " ".join(str(v) for v in values)
    out = []
    for col in dict.fromkeys(v[-1] for v in runs):
        mine = {v: r for v, r in runs.items() if v[-1] == col}
        means = {v: float(df.loc[_mask(df, by, v), metric].mean()) for v in mine}
        pick = min if lower_is_better else max
        best = pick(means, key=means.get)
        for v, r in mine.items():
            row = dict(zip(by, v, strict=True)) | dict.fromkeys((*COLUMNS, VIDEOS), np.nan)
            if r is not None:
                iv = row_interval(r, name, labels=[label[v]] * len(r))
                row[LOW], row[HIGH], row[VIDEOS] = iv.low, iv.high, iv.videos
                if mine[best] is not None:
                    d = paired(r, mine[best], name, labels=(label[v], label[best]))
                    row[P_BEST] = 1.0 if v == best else d.p
                    row[TIED] = bool(v == best or not d.distinguishable)
            out.append(row)
    return pd.DataFrame(out, columns=[*by, *COLUMNS, VIDEOS])


def _mask(df: pd.DataFrame, by: list[str], values: tuple) -> pd.Series:
    mask = pd.Series(True, index=df.index)
    for c, v in zip(by, values, strict=True):
        mask &= df[c] == v
    return mask


def with_intervals(
    df: pd.DataFrame, folder: str | Path, by: list[str], metric: str, lower: bool = False
) -> pd.DataFrame:
    """``df`` (one line per run) with its group's interval and comparison with the best as
    columns ``{metric}_ci95_low`` ... (the same on every seed of a group): results.csv."""
    done = df[df["status"] == "done"] if "status" in df else df
    if not len(done) or metric not in done or not set(by) <= set(done.columns):
        return df  # nothing to group (the table says the same)
    names = {c: f"{metric}_{c}" for c in (*COLUMNS, VIDEOS)}
    iv = intervals(done, folder, by, metric, lower).rename(columns=names)
    return df.drop(columns=list(names.values()), errors="ignore").merge(iv, on=by, how="left")
