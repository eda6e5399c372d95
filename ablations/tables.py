"""Paper tables from a results store: the mean over seeds with its 95 % interval (a bootstrap
over the validation videos and the seeds), the best of each column in bold and a mark on the rows
not distinguishable from it, params and GMACs beside the measure, units in the header, a caption
that states the conditions and the method. Runs without per-video statistics (scored before
they were kept) show mean +- std instead.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ablations.latex import PAGE_PT, tabular_latex, width_pt
from ablations.significance import COLUMNS, HIGH, LOW, TIED, VIDEOS, intervals
from lightning_modules.experiment import GMACS_PER_FRAME, PARAMS_M
from lightning_modules.intervals import N_BOOT

GMACS_LABEL = "GMACs / frame"
LOWER_IS_BETTER = ("loss",)  # a measure whose name holds one of these is minimised


def read_results(path: str | Path) -> pd.DataFrame:
    """A results store (its folder or its results.csv) as a DataFrame of the finished runs."""
    path = Path(path)
    if path.is_dir():
        path = path / "results.csv"
    if not path.is_file():
        raise FileNotFoundError(f"no results store at {path}")
    df = pd.read_csv(path)
    return df[df["status"] == "done"].reset_index(drop=True)


def _label(metric: str) -> str:
    """The measure as the challenge names it: ``val/va_ccc`` -> ``VA CCC``."""
    from lightning_modules.experiment import MEASURE_NAMES

    name = metric.split("/", 1)[-1]
    return MEASURE_NAMES.get(name, name)


def summarise(
    df: pd.DataFrame, rows: str, cols: str, metric: str, folder: str | Path | None = None
) -> pd.DataFrame:
    """One line per (rows, cols) pair: the measure's mean, std and seed count, params, GMACs;
    with ``folder`` (the results store holding the runs' per-video statistics) its 95 %
    interval and its paired comparison with the best line of its column
    (:mod:`ablations.significance`)."""
    for c in (rows, cols, metric):
        if c not in df.columns:
            raise KeyError(f"results have no column {c!r}; they have: {', '.join(df.columns)}")
    g = df.groupby([rows, cols], sort=False)
    out = g[metric].agg(["mean", "std", "count"]).reset_index()
    out["std"] = out["std"].fillna(0.0)
    for c in (PARAMS_M, GMACS_PER_FRAME):
        if c in df.columns:
            out[c] = g[c].first().to_numpy()
    if folder is not None and "key" in df:
        lower = any(w in metric for w in LOWER_IS_BETTER)
        out = out.merge(intervals(df, folder, [rows, cols], metric, lower), on=[rows, cols])
    else:
        out = out.assign(**dict.fromkeys((*COLUMNS, VIDEOS), np.nan))
    return out


def _cell(m: float, sd: float, n: int, low: float, high: float, tied: object, best: bool) -> str:
    """``0.612 [0.571, 0.650] †`` (the interval, and † where not distinguishable from the best
    line), or ``0.612 ± 0.021`` where the runs kept no per-video statistics."""
    if np.isnan(m):
        return ""
    if not np.isnan(low):
        mark = " †" if tied is True and not best else ""
        return f"{m:.3f} [{low:.3f}, {high:.3f}]{mark}"
    return f"{m:.3f} ± {sd:.3f}" if n > 1 else f"{m:.3f}"


def table_frame(
    s: pd.DataFrame, rows: str, cols: str, metric: str, interval_column: bool = False
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A :func:`summarise` frame -> (cells as text, a boolean frame marking the best cell of
    each measure column). ``interval_column``: the interval in a column of its own beside the
    mean (LaTeX, where the mean is aligned on its point)."""
    label = _label(metric)
    row_order = list(dict.fromkeys(s[rows]))
    col_order = list(dict.fromkeys(s[cols]))
    text, best = {}, {}
    lower = any(w in metric for w in LOWER_IS_BETTER)
    seeds = int(s["count"].max()) if len(s) else 0
    ci = bool(len(s)) and s[LOW].notna().all()
    for c in col_order:
        part = s[s[cols] == c].set_index(rows).reindex(row_order)
        target = part["mean"].min() if lower else part["mean"].max()
        is_best = list(part["mean"] == target)
        # one seed has no spread to show: the count says so instead of a "± 0.000"
        kind = "95 % CI" if ci else "mean ± std" if seeds > 1 else "1 seed"
        name = (str(c), f"{label} ({kind})" if not interval_column or not ci else label)
        # intervals for every line or for none: a table does not mix two kinds of spread
        low, high = (part[LOW], part[HIGH]) if ci else ([np.nan] * len(part),) * 2
        cols_ = (part["mean"], part["std"], part["count"], low, high, part[TIED], is_best)
        cells = [_cell(*v) for v in zip(*cols_, strict=True)]
        best[name] = is_best  # in the order of the text's columns
        if interval_column and ci:  # "0.612 [0.571, 0.650] †" -> "0.612 †" and "[0.571, 0.650]"
            text[name] = [x.split(" [")[0] + (" †" if x.endswith("†") else "") for x in cells]
            text[(str(c), "95 % CI")] = ["[" + x.split(" [")[1].split("]")[0] + "]" if x else ""
                                         for x in cells]  # fmt: skip
            best[(str(c), "95 % CI")] = [False] * len(part)
        else:
            text[name] = cells
        if PARAMS_M in part:
            text[(str(c), "Params (M)")] = [f"{v:.2f}" if v == v else "" for v in part[PARAMS_M]]
            best[(str(c), "Params (M)")] = [False] * len(part)
        if GMACS_PER_FRAME in part:
            text[(str(c), GMACS_LABEL)] = [
                f"{v:.3f}" if v == v else "" for v in part[GMACS_PER_FRAME]
            ]
            best[(str(c), GMACS_LABEL)] = [False] * len(part)
    index = pd.Index([str(r) for r in row_order], name=rows.split(".")[-1])
    columns = pd.MultiIndex.from_tuples(list(text), names=[cols.split(".")[-1], ""])
    return (
        pd.DataFrame(list(zip(*text.values(), strict=True)), index=index, columns=columns),
        pd.DataFrame(list(zip(*best.values(), strict=True)), index=index, columns=columns),
    )


def _values(df: pd.DataFrame, column: str) -> str:
    """The distinct numbers of a column, '112, 224' (CSV round trips make ints floats)."""
    return ", ".join(f"{v:g}" for v in sorted(set(df.get(column, pd.Series(dtype=float)).dropna())))


def caption(df: pd.DataFrame, metric: str, s: pd.DataFrame | None = None) -> str:
    """What the table shows and how: seeds, the interval's method (where the summary ``s``
    has intervals), the marks, what the MACs count."""
    seeds = int(df["seed"].nunique()) if "seed" in df else 1
    ci = s is not None and len(s) and s[LOW].notna().all()
    if ci:
        videos = int(s["videos"].max())
        over = f"mean over {seeds} seeds" if seeds > 1 else "one seed"
        parts = [
            f"{_label(metric)}: {over}, in brackets its 95 % interval (percentile bootstrap "
            f"over the {videos} validation videos"
            + (" and the seeds" if seeds > 1 else "")
            + f", {N_BOOT:,} replicates). Bold: the best of each column; †: not "
            "distinguishable from it (paired bootstrap over the same videos, p ≥ 0.05)."
        ]
    else:
        parts = [
            f"{_label(metric)}: mean ± std over {seeds} seeds."
            if seeds > 1
            else f"{_label(metric)}: one seed."
        ]
    if GMACS_PER_FRAME in df:
        size = _values(df, "img_size")
        t = _values(df, "seq_len")
        parts.append(
            f"MACs are multiply-accumulates (1 MAC = 2 FLOPs), per frame, at {size} px "
            f"with clips of T = {t}."
        )
    return " ".join(parts)  # (no latency sentence: the table has no latency column)


def _latex(
    text: pd.DataFrame, best: pd.DataFrame, rows: str, cols: str, metric: str, cap: str
) -> str:
    """The table in LaTeX: a column group per value of ``cols`` (backbones by their short
    names), or, where groups side by side would be wider than a page, one block of rows per
    value, stacked; headers without the seed note (the caption has it), numbers aligned on the
    point, MACs in G."""
    from ablations.frontier import short_backbone

    names = {GMACS_LABEL: "MACs (G)"}
    header = [rows.split(".")[-1]]
    groups: list[tuple[str, int]] = []
    for group, name in text.columns:
        header.append(_label(metric) if name.startswith(_label(metric)) else names.get(name, name))
        if groups and groups[-1][0] == group:
            groups[-1] = (group, groups[-1][1] + 1)
        else:
            groups.append((group, 1))
    if cols.endswith("backbone"):
        groups = [(short_backbone(g), n) for g, n in groups]
    cells = [[str(i), *r] for i, r in zip(text.index, text.itertuples(index=False), strict=True)]
    marks = [[False, *r] for r in best.itertuples(index=False)]
    label = f"tab:{metric.replace('/', '-')}"
    if len(groups) == 1 or width_pt(header, cells) <= PAGE_PT:
        return tabular_latex(header, cells, bold=marks, groups=groups, caption=cap, label=label)
    # stacked: every group has the same columns (measure, params, MACs); its rows one block
    span = groups[0][1]
    stacked, stacked_marks, blocks = [], [], []
    for g, (name, _) in enumerate(groups):
        part = slice(1 + g * span, 1 + (g + 1) * span)
        kept = [i for i, r in enumerate(cells) if any(r[part])]  # a head absent here: no row
        stacked += [[cells[i][0], *cells[i][part]] for i in kept]
        stacked_marks += [[False, *marks[i][part]] for i in kept]
        blocks.append((name, len(kept)))
    header = header[: 1 + span]
    return tabular_latex(
        header, stacked, bold=stacked_marks, blocks=blocks, caption=cap, label=label
    )


def render(
    df: pd.DataFrame,
    rows: str,
    cols: str,
    metric: str,
    fmt: str = "md",
    folder: str | Path | None = None,
) -> str:
    """The table as Markdown, LaTeX or CSV. ``folder``: the results store whose ``videos/``
    hold the runs' per-video statistics, for the intervals and the marks; the CSV has the
    summary's numbers (mean, std, seeds, interval, p against the best) as they are."""
    s = summarise(df, rows, cols, metric, folder)
    if fmt == "csv":
        return s.rename(columns={"count": "seeds"}).to_csv(index=False)
    text, best = table_frame(s, rows, cols, metric, interval_column=fmt == "latex")
    cap = caption(df, metric, s)
    if fmt == "md":
        bold = text.where(~best, "**" + text + "**")
        bold.columns = [" ".join(c).strip() for c in bold.columns]
        return bold.to_markdown() + f"\n\n{cap}\n"
    if fmt == "latex":
        return _latex(text, best, rows, cols, metric, cap)
    raise ValueError(f"format must be md, latex or csv, got {fmt!r}")
