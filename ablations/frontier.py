"""The efficiency frontier: which models no other model beats on both accuracy and cost."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no screen
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from lightning_modules.experiment import GMACS_PER_FRAME  # noqa: E402


def pareto_mask(cost: np.ndarray, score: np.ndarray) -> np.ndarray:
    """(N,) True where no other point has cost <= and score >= with one of them strict."""
    cost, score = np.asarray(cost, float), np.asarray(score, float)
    le = cost[None, :] <= cost[:, None]
    ge = score[None, :] >= score[:, None]
    strict = (cost[None, :] < cost[:, None]) | (score[None, :] > score[:, None])
    return ~(le & ge & strict).any(axis=1)


def frontier_plot(
    df: pd.DataFrame,
    metric: str,
    out: str | Path,
    cost: str = GMACS_PER_FRAME,
    label: str = "label",
    title: str = "",
    front: str | None = None,
    label_front_only: bool = False,
) -> plt.Figure:
    """Each model a labelled point (measure against cost, log x), the Pareto front drawn; saved
    as PNG at ``out``. Returns the figure (its first collection holds one point per model).
    ``front`` names a boolean column that marks the front (else it is computed on these two
    axes); ``label_front_only`` labels only its points (a sweep's hundreds of trials)."""
    d = df.dropna(subset=[metric, cost]).reset_index(drop=True)
    front = d[front].to_numpy(bool) if front else pareto_mask(d[cost], d[metric])
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    ax.scatter(d[cost], d[metric], c=np.where(front, "tab:red", "tab:blue"), zorder=3)
    f = d[front].sort_values(cost)
    ax.step(f[cost], f[metric], where="post", color="tab:red", alpha=0.6, label="Pareto front")
    for _, r in (d[front] if label_front_only else d).iterrows():
        ax.annotate(
            str(r.get(label, "")),
            (r[cost], r[metric]),
            fontsize=7,
            xytext=(3, 3),
            textcoords="offset points",
        )
    ax.set_xscale("log")
    ax.set_xlabel("GMACs per frame (log)" if cost == GMACS_PER_FRAME else cost)
    ax.set_ylabel(metric)
    ax.set_title(title or f"{metric} against {cost}")
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="lower right")
    fig.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    return fig
