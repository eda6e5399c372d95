"""Paper tables from a results store: mean +- std over seeds, the best of each column in bold,
params and GMACs beside the measure, units in the header, a caption that states the conditions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ablations.latex import PAGE_PT, tabular_latex, width_pt
from lightning_modules.experiment import GMACS_PER_FRAME, PARAMS_M

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


def summarise(df: pd.DataFrame, rows: str, cols: str, metric: str) -> pd.DataFrame:
    """One line per (rows, cols) pair: the measure's mean, std and seed count, params, GMACs."""
    for c in (rows, cols, metric):
        if c not in df.columns:
            raise KeyError(f"results have no column {c!r}; they have: {', '.join(df.columns)}")
    g = df.groupby([rows, cols], sort=False)
    out = g[metric].agg(["mean", "std", "count"]).reset_index()
    out["std"] = out["std"].fillna(0.0)
    for c in (PARAMS_M, GMACS_PER_FRAME):
        if c in df.columns:
            out[c] = g[c].first().to_numpy()
    return out


def table_frame(
    df: pd.DataFrame, rows: str, cols: str, metric: str
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(cells as text, a boolean frame marking the best cell of each measure column)."""
    s = summarise(df, rows, cols, metric)
    label = _label(metric)
    row_order = list(dict.fromkeys(s[rows]))
    col_order = list(dict.fromkeys(s[cols]))
    text, best = {}, {}
    lower = any(w in metric for w in LOWER_IS_BETTER)
    seeds = int(s["count"].max()) if len(s) else 0
    for c in col_order:
        part = s[s[cols] == c].set_index(rows).reindex(row_order)
        # one seed has no spread to show: the count says so instead of a "± 0.000"
        name = (str(c), f"{label} (mean ± std)" if seeds > 1 else f"{label} (1 seed)")
        text[name] = [
            "" if np.isnan(m) else f"{m:.3f} ± {sd:.3f}" if n > 1 else f"{m:.3f}"
            for m, sd, n in zip(part["mean"], part["std"], part["count"], strict=True)
        ]
        target = part["mean"].min() if lower else part["mean"].max()
        best[name] = list(part["mean"] == target)
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


def caption(df: pd.DataFrame, metric: str) -> str:
    seeds = int(df["seed"].nunique()) if "seed" in df else 1
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


def render(df: pd.DataFrame, rows: str, cols: str, metric: str, fmt: str = "md") -> str:
    """The table as Markdown, LaTeX (a ``table`` environment, via pandas' Styler) or CSV."""
    text, best = table_frame(df, rows, cols, metric)
    cap = caption(df, metric)
    if fmt == "csv":
        flat = text.copy()
        flat.columns = [" ".join(c).strip() for c in flat.columns]
        return flat.to_csv()
    if fmt == "md":
        bold = text.where(~best, "**" + text + "**")
        bold.columns = [" ".join(c).strip() for c in bold.columns]
        return bold.to_markdown() + f"\n\n{cap}\n"
    if fmt == "latex":
        return _latex(text, best, rows, cols, metric, cap)
    raise ValueError(f"format must be md, latex or csv, got {fmt!r}")
