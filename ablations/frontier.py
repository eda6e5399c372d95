"""The efficiency frontier: which models no other model beats on both accuracy and cost, drawn
so that a paper can print it at a column's width.

Each model is a point, coloured by its head and shaped by its backbone (two legends beside the
axes, so no legend hides a point); the Pareto front is a dashed black line through ringed
points; labels are short (the head, or backbone + head) and placed where they overlap neither
each other nor a point nor the axes' edge. Saved as PNG and PDF.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no screen
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.text import Text  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullLocator  # noqa: E402

from lightning_modules.experiment import (  # noqa: E402
    GMACS_PER_FRAME,
    LATENCY_MS,
    PARAMS_M,
    measure_label,
)

# The cost axes a frontier is drawn against, and how each is named on its axis.
COST_AXES = {
    GMACS_PER_FRAME: "GMACs per frame",
    LATENCY_MS: "latency per clip (ms, median, batch 1)",
    PARAMS_M: "parameters (M)",
}
MARKERS = "os^DvPX*<>"
# label offsets tried in order, in points: close first (right, above, left, below, diagonals),
# then rings further out (joined to their point by a thin line)
_DIRECTIONS = [(1, 0.3), (1, -1), (-1, 0.3), (-1, -1), (0, 1), (0, -1.6), (1, 1), (-1, 1),
               (1, 2), (1, -2), (-1, 2), (-1, -2), (2, 1), (2, -1), (-2, 1), (-2, -1)]  # fmt: skip
_OFFSETS = [(r * dx, r * dy) for r in (6, 12, 20, 30, 42, 56, 72) for dx, dy in _DIRECTIONS]


def pareto_mask(cost: np.ndarray, score: np.ndarray) -> np.ndarray:
    """(N,) True where no other point has cost <= and score >= with one of them strict."""
    cost, score = np.asarray(cost, float), np.asarray(score, float)
    le = cost[None, :] <= cost[:, None]
    ge = score[None, :] >= score[:, None]
    strict = (cost[None, :] < cost[:, None]) | (score[None, :] > score[:, None])
    return ~(le & ge & strict).any(axis=1)


def _log_ticks(ax, values: np.ndarray) -> None:
    """A log axis with enough labelled ticks where the data span less than a decade."""
    lo, hi = float(np.nanmin(values)), float(np.nanmax(values))
    if hi <= 0 or hi / max(lo, 1e-12) >= 10:
        return
    if hi / max(lo, 1e-12) < 3:  # within a factor of 3 the 1-1.5-2-3 ticks leave 1 or 2: even steps
        ax.xaxis.set_major_locator(MaxNLocator(nbins=6))
        ax.xaxis.set_minor_locator(NullLocator())
    else:
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 7.0)))
        ax.xaxis.set_minor_locator(LogLocator(subs="all", numticks=50))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g}"))
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))


def _merge_coincident(pts: np.ndarray, texts: list[str], within: float) -> list[list[int]]:
    """Groups of points (indices) whose markers lie within ``within`` pixels of the group's
    first: models with nearly the same cost and measure share one label."""
    groups: list[list[int]] = []
    for k in range(len(pts)):
        for g in groups:
            if np.hypot(*(pts[k] - pts[g[0]])) <= within and texts[k] not in [texts[j] for j in g]:
                g.append(k)
                break
        else:
            groups.append([k])
    return groups


def _crosses(box, segments: np.ndarray) -> int:
    """How many axis-parallel segments ((N, 2, 2) in pixels: the front's steps) cross ``box``."""
    n = 0
    for (xa, ya), (xb, yb) in segments:
        x0, x1, y0, y1 = min(xa, xb), max(xa, xb), min(ya, yb), max(ya, yb)
        n += x0 <= box.x1 and x1 >= box.x0 and y0 <= box.y1 and y1 >= box.y0
    return n


def _place_labels(fig, ax, xs, ys, texts: list[str], line: tuple | None = None) -> list:
    """Annotate each point with its text at the first offset whose box overlaps no box placed
    so far, no point's marker, not the front's line (``line``: its x and y, drawn as steps) and
    stays inside the axes; the least crowded offset otherwise. Points drawn on top of each other
    get one label naming them all, a line each."""
    fig.canvas.draw()  # the constrained layout, once: then frozen, so no label moves after
    fig.set_layout_engine("none")
    renderer = fig.canvas.get_renderer()
    axes_box = ax.get_window_extent(renderer)
    pts = ax.transData.transform(np.column_stack([xs, ys])) if len(xs) else np.zeros((0, 2))
    segments = np.zeros((0, 2, 2))
    if line is not None and len(line[0]) > 1:  # steps "post": across at y_i, then up to y_i+1
        lx, ly = (np.asarray(v, float) for v in line)
        corners = np.column_stack([np.repeat(lx, 2)[1:], np.repeat(ly, 2)[:-1]])
        corners = ax.transData.transform(corners)
        segments = np.stack([corners[:-1], corners[1:]], axis=1)
    placed, artists = [], []
    radius = 0.09 * fig.dpi  # pixels around a marker centre (the front ring) a label must not cover
    groups = _merge_coincident(pts, texts, within=0.05 * fig.dpi)
    groups = [sorted(g, key=lambda j: -pts[j][1]) for g in groups]  # lines top-down as points
    xs, ys = [xs[g[0]] for g in groups], [ys[g[0]] for g in groups]
    texts = ["\n".join(texts[j] for j in g) for g in groups]  # one line each, stacked
    owners = [set(g) for g in groups]
    for k, ((x, y), text) in enumerate(zip(zip(xs, ys, strict=True), texts, strict=True)):
        best, best_bad = None, None
        for dx, dy in _OFFSETS:
            far = abs(dx) + abs(dy) > 24
            a = ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points",
                            fontsize=7, ha="left" if dx > 0 else "right" if dx < 0 else "center",
                            va="center",
                            arrowprops={"arrowstyle": "-", "color": "0.35", "lw": 0.6,
                                        "shrinkA": 1, "shrinkB": 3} if far else None)  # fmt: skip
            # the text's own box (an Annotation's extent would include its leader line)
            a.update_positions(renderer)
            box = Text.get_window_extent(a, renderer).expanded(1.05, 1.1)
            bad = 5 * sum(box.overlaps(b) for b in placed)  # worse than covering a point
            bad += sum(
                box.x0 - radius < qx < box.x1 + radius and box.y0 - radius < qy < box.y1 + radius
                for j, (qx, qy) in enumerate(pts)
                if j not in owners[k]  # its own points: the label sits beside them
            )
            bad += _crosses(box, segments)
            inside = (box.x0 >= axes_box.x0 and box.x1 <= axes_box.x1
                      and box.y0 >= axes_box.y0 and box.y1 <= axes_box.y1)  # fmt: skip
            bad += 0 if inside else 10
            if best_bad is None or bad < best_bad:
                if best is not None:
                    best[0].remove()
                best, best_bad = (a, box), bad
            else:
                a.remove()
            if bad == 0:
                break
        placed.append(best[1])
        artists.append(best[0])
    return artists


def frontier_plot(
    df: pd.DataFrame,
    metric: str,
    out: str | Path,
    cost: str = GMACS_PER_FRAME,
    label: str = "label",
    title: str = "",
    front: str | None = None,
    label_front_only: bool = False,
    shown: str | None = None,
) -> plt.Figure:
    """Each model a point (the measure against ``cost``, log x), coloured by its ``head`` and
    shaped by its ``backbone`` where those columns exist, the Pareto front dashed and ringed,
    labels from ``label`` placed without overlaps; saved at ``out`` (PNG) and beside it as PDF.
    Returns the figure (its first collection holds one point per model). ``front`` names a
    boolean column marking the front (else it is computed on these two axes);
    ``label_front_only`` labels only its points (a sweep's hundreds of trials); ``shown`` names
    the measure on the axis where it differs from ``metric`` (a one-task sweep's score)."""
    d = df.dropna(subset=[metric, cost]).reset_index(drop=True)
    front = d[front].to_numpy(bool) if front else pareto_mask(d[cost], d[metric])
    heads = list(dict.fromkeys(d["head"].astype(str))) if "head" in d else []
    backbones = list(dict.fromkeys(d["backbone"].astype(str))) if "backbone" in d else []
    colours = plt.get_cmap("tab10" if len(heads) <= 10 else "tab20")
    colour = [colours(heads.index(str(h))) for h in d["head"]] if heads else ["tab:blue"] * len(d)
    marker = [MARKERS[backbones.index(str(b)) % len(MARKERS)] for b in d["backbone"]] if (
        backbones) else ["o"] * len(d)  # fmt: skip

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=150, layout="constrained")
    # one collection holding every point first (callers count them), then the markers' shapes
    ax.scatter(d[cost], d[metric], s=0, zorder=1)
    for m in dict.fromkeys(marker):
        sel = np.array([k == m for k in marker])
        ax.scatter(
            d[cost][sel],
            d[metric][sel],
            c=[c for c, s in zip(colour, sel, strict=True) if s],
            marker=m,
            s=36,
            zorder=3,
            edgecolors="white",
            linewidths=0.5,
            alpha=0.85,
        )  # fmt: skip  (a white rim: a point over another leaves it seen)
    f = d[front].sort_values(cost)
    ax.scatter(f[cost], f[metric], s=110, facecolors="none", edgecolors="black", linewidths=1.0,
               zorder=4)  # fmt: skip
    ax.step(f[cost], f[metric], where="post", color="black", linestyle="--", linewidth=1.0,
            zorder=2)  # fmt: skip
    ax.set_xscale("log")
    _log_ticks(ax, d[cost].to_numpy(float))
    ax.margins(x=0.22, y=0.15)  # room for the labels of the outermost points
    ax.set_xlabel(f"{COST_AXES.get(cost, cost)} (log scale)")
    ax.set_ylabel(measure_label(shown or metric))
    title = title or f"{measure_label(shown or metric)} against {COST_AXES.get(cost, cost)}"
    ax.set_title(textwrap.fill(title, 60), fontsize=9)  # beside the legend: short lines
    ax.grid(alpha=0.3, which="major")

    handles = [Line2D([], [], color="black", linestyle="--", marker="o", markerfacecolor="none",
                      markersize=8, label="Pareto front")]  # fmt: skip
    handles += [Line2D([], [], linestyle="", marker="o", color=colours(i), label=h)
                for i, h in enumerate(heads)]  # fmt: skip
    handles += [Line2D([], [], linestyle="", marker=MARKERS[i % len(MARKERS)], color="0.4",
                       label=b) for i, b in enumerate(backbones) if len(backbones) > 1]  # fmt: skip
    fig.legend(handles=handles, loc="outside right upper", fontsize=7, frameon=False)

    named = d[front] if label_front_only else d
    _place_labels(fig, ax, named[cost].to_numpy(float), named[metric].to_numpy(float),
                  [str(v) for v in named.get(label, pd.Series([""] * len(named)))],
                  line=(f[cost].to_numpy(float), f[metric].to_numpy(float)))  # fmt: skip
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    fig.savefig(out.with_suffix(".pdf"))
    return fig


def short_label(row: pd.Series, several_backbones: bool) -> str:
    """The head, or backbone + head where a plot holds several backbones (timm's long names
    shortened: ``mobilenetv4_conv_small`` -> ``MNv4-Conv-S``)."""
    head = str(row.get("head", ""))
    if not several_backbones:
        return head
    return f"{short_backbone(str(row.get('backbone', '')))} {head}".strip()


def short_backbone(name: str) -> str:
    """``mobilenetv4_conv_small_035`` -> ``MNv4-Conv-S-0.35``; other names unchanged."""
    parts = {"mobilenetv4": "MNv4", "mobilenetv3": "MNv3", "conv": "Conv", "hybrid": "Hybrid",
             "small": "S", "medium": "M", "large": "L", "efficientnet": "EffNet"}  # fmt: skip
    out = []
    for p in name.split("_"):
        if p == "100":  # the default width: timm's mobilenetv3_large_100 is MNv3-L
            continue
        if p.isdigit() and len(p) == 3:
            out.append(f"{int(p) / 100:g}")
        else:
            out.append(parts.get(p, p))
    return "-".join(out)
