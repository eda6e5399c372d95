"""``affbench compare A B``: two result rows, or two grids row by row, on the same videos.

A side is a results store (``ablations/results/frozen_heads``: every row of it) or one row of
a store (``ablations/results/frozen_heads:gru``: the row whose run name, without its seed, is
that or holds ``+gru_``; or a run key). A row is all its seeds. For each pair of rows and each
measure their runs kept (``videos/<key>.npz``): both means, the difference A - B, its 95 %
interval and the p-value of the paired bootstrap (``lightning_modules/intervals.py``).
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from ablations.tables import read_results
from lightning_modules.intervals import N_BOOT, load, paired, stats_path

_SEED = re.compile(r"_s\d+(?=$|_)")


def row_label(run: str) -> str:
    """A run's name without its seed: ``m+gru_t16_r96_s2`` -> ``m+gru_t16_r96``."""
    return _SEED.sub("", run, count=1)


def _rows(folder: Path) -> dict[str, list[str]]:
    """A store's finished rows: label -> its runs' keys (its seeds)."""
    df = read_results(folder)
    out: dict[str, list[str]] = {}
    for run, key in zip(df["run"], df["key"], strict=True):
        out.setdefault(row_label(str(run)), []).append(str(key))
    return out


def _side(spec: str) -> tuple[Path, dict[str, list[str]]]:
    """``FOLDER`` or ``FOLDER:ROW`` -> (the store, label -> keys of the rows it names)."""
    folder, _, pick = spec.partition(":")
    if not Path(folder).is_dir() and Path(spec).is_dir():
        folder, pick = spec, ""
    rows = _rows(Path(folder))
    if not pick:
        return Path(folder), rows
    found = {
        label: keys
        for label, keys in rows.items()
        if pick == label or f"+{pick}_" in f"{label}_" or pick in keys
    }
    if len(found) != 1:
        what = "no row" if not found else f"{len(found)} rows ({', '.join(found)})"
        raise KeyError(
            f"{spec}: {what} matches {pick!r}; its rows are: {', '.join(rows) or 'none'}"
        )
    if pick in next(iter(found.values())):  # a key names one run, not the row's seeds
        return Path(folder), {next(iter(found)): [pick]}
    return Path(folder), found


def compare(a: str, b: str, stage: str = "val", n_boot: int | None = None) -> pd.DataFrame:
    """One line per (row pair, measure): A's and B's means, A - B, its interval, p. Two
    stores: their rows of the same label paired (the others named in an error when none
    pair); a row on either side: that row against each row of the other."""
    (fa, ra), (fb, rb) = _side(a), _side(b)
    if len(ra) == 1 or len(rb) == 1:
        pairs = [(la, lb) for la in ra for lb in rb]
    else:
        pairs = [(label, label) for label in ra if label in rb]
        if not pairs:
            raise KeyError(f"{a} and {b} have no row in common; {a}: {', '.join(ra)}")

    def runs(folder: Path, keys: list[str], label: str) -> list:
        paths = [stats_path(folder, k) for k in keys]
        for path in paths:
            if not path.is_file():
                raise FileNotFoundError(
                    f"{path}: row {label} of {folder} kept no per-video statistics (scored "
                    "before they were kept); run it again to compare it"
                )
        return [load(p, stage) for p in paths]

    kw = {"n_boot": n_boot} if n_boot else {}
    lines = []
    for la, lb in pairs:
        runs_a, runs_b = runs(fa, ra[la], la), runs(fb, rb[lb], lb)
        for name in runs_a[0].measures():
            d = paired(runs_a, runs_b, name, labels=(la, lb), **kw)
            mean_a = sum(float(r.measure(name)) for r in runs_a) / len(runs_a)
            lines.append(
                {
                    "a": la,
                    "b": lb,
                    "measure": f"{stage}/{name}",
                    "a_mean": mean_a,
                    "b_mean": mean_a - d.diff,
                    "diff": d.diff,
                    "ci95_low": d.low,
                    "ci95_high": d.high,
                    "p": d.p,
                    "a_seeds": len(runs_a),
                    "b_seeds": len(runs_b),
                    "videos": d.videos,
                }
            )
    return pd.DataFrame(lines)


def render_comparison(df: pd.DataFrame, fmt: str = "md") -> str:
    """The comparison as Markdown (3 decimals, p to 3 significant digits) or CSV."""
    if fmt == "csv":
        return df.to_csv(index=False)
    shown = pd.DataFrame(
        {
            "A": df["a"],
            "B": df["b"],
            "measure": df["measure"],
            "A mean": df["a_mean"].map("{:.3f}".format),
            "B mean": df["b_mean"].map("{:.3f}".format),
            "A - B [95 % CI]": [
                f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}]"
                for d, lo, hi in zip(df["diff"], df["ci95_low"], df["ci95_high"], strict=True)
            ],
            "p": df["p"].map("{:.3g}".format),
        }
    )
    seeds = f"{int(df['a_seeds'].max())} and {int(df['b_seeds'].max())} seeds"
    return shown.to_markdown(index=False) + (
        f"\n\nPaired bootstrap over the same {int(df['videos'].max())} videos ({seeds}, each "
        f"row's seeds drawn on their own, {N_BOOT:,} replicates); p: two-sided, at least "
        f"{2 / (N_BOOT + 1):.3g} with this many replicates.\n"
    )
