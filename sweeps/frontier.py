"""A study's efficiency frontier: its trials as a table, the Pareto front, a plot, a W&B run.

The front of a multi-objective study is Optuna's own (``study.best_trials``: no other finished
trial is at least as good on every objective and better on one). A single-objective study has
one objective; its front is computed on the two axes a reader cares about, the measure and
GMACs per frame, from the costs every trial stores in its user attributes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import optuna
import pandas as pd

from ablations.frontier import frontier_plot, pareto_mask
from ablations.latex import PLACEHOLDER, fixed, significant, tabular_latex
from ablations.significance import HIGH, LOW, P_BEST, TIED
from lightning_modules.experiment import PARAMS_M, measure_label, summary_run
from sweeps.space import COST, LATENCY

COLUMNS = {COST: "GMACs / frame", PARAMS_M: "Params (M)", LATENCY: "Latency (ms)"}
LATEX_COLUMNS = COLUMNS | {COST: "MACs (G)"}


def trials_frame(study: optuna.Study) -> pd.DataFrame:
    """One row per trial: number, state, the measure, costs, settings, run name and error."""
    metric = (study.metric_names or ["val/score"])[0]
    rows = []
    for t in study.get_trials(deepcopy=False):
        u = t.user_attrs
        row = {"trial": t.number, "state": t.state.name.lower(), "run": u.get("run", "")}
        row[metric] = t.values[0] if t.values else u.get(metric, np.nan)
        for k in (*COLUMNS, "device", "threads"):
            row[k] = u.get(k, np.nan)
        row.update(
            {k.removeprefix("model."): v for k, v in t.params.items()}
            | {"error": u.get("error") or "", "over_budget": bool(u.get("over_budget", False))}
        )
        rows.append(row)
    df = pd.DataFrame(rows)
    if len(df):
        df["front"] = df["trial"].isin(front_numbers(study, df, metric))
    return df


def shown_measure(study: optuna.Study) -> str:
    """The key that names the study's measure to a reader: the objective (``val/score``, the
    mean of the trained tasks' measures), or, when every trial trains one task, that task's own
    measure (``val/va_ccc``), which the score then equals."""
    from lightning_modules.scoring import MEASURE, metric_key

    metric = (study.metric_names or ["val/score"])[0]
    cfg = study.user_attrs.get("sweep") or {}
    tasks = (cfg.get("base") or {}).get("model", {}).get("tasks")
    if not metric.endswith("/score") or "model.tasks" in (cfg.get("space") or {}):
        return metric
    if isinstance(tasks, list) and len(tasks) == 1:
        tasks = tasks[0]
    if isinstance(tasks, str) and tasks in MEASURE:  # one task; "va,expr" and lists are not
        return metric_key(metric.split("/")[0], MEASURE[tasks])
    return metric


def front_intervals(study: optuna.Study, front: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The front's trials with their measure's 95 % interval (the video bootstrap of one run)
    and the paired bootstrap against the front's best trial: ``ci95_low``, ``ci95_high``,
    ``p_vs_best``, ``tied_with_best``; NaN for a trial whose per-video statistics are not on
    this machine (its ``videos`` user attribute names the file where it ran)."""
    from lightning_modules.intervals import interval, load, paired

    stage, _, name = metric.partition("/")
    attrs = {t.number: t.user_attrs for t in study.get_trials(deepcopy=False)}
    runs = {}
    for n in front["trial"]:
        path = attrs[int(n)].get("videos")
        runs[int(n)] = [load(path, stage)] if path and Path(path).is_file() else None
    best = int(front.loc[front[metric].idxmax(), "trial"])
    out = front.assign(**dict.fromkeys((LOW, HIGH, P_BEST, TIED), np.nan))
    for i, n in zip(front.index, front["trial"], strict=True):
        r = runs[int(n)]
        if r is None:
            continue
        iv = interval(r, name, labels=[f"trial {n}"])
        out.loc[i, [LOW, HIGH]] = iv.low, iv.high
        if runs[best] is not None:
            d = paired(r, runs[best], name, labels=(f"trial {n}", f"trial {best}"))
            out.loc[i, P_BEST] = 1.0 if int(n) == best else d.p
            out.loc[i, TIED] = float(int(n) == best or not d.distinguishable)
    return out


def front_numbers(study: optuna.Study, df: pd.DataFrame, metric: str) -> set[int]:
    if len(study.directions) > 1:
        return {t.number for t in study.best_trials}
    done = df[df["state"] == "complete"].dropna(subset=[metric, COST])
    return set(done["trial"][pareto_mask(done[COST], done[metric])])


def frontier_table(study: optuna.Study, fmt: str = "md") -> str:
    """The Pareto front, cheapest first: measure, GMACs per frame, params, latency, settings."""
    df = trials_frame(study)
    metric = (study.metric_names or ["val/score"])[0]
    if not len(df) or not df["front"].any():
        return f"study {study.study_name!r}: no finished trial yet"
    front = df[df["front"]].sort_values([COST, metric], ascending=[True, False])
    front = front_intervals(study, front, metric)
    ci = front[LOW].notna().all()
    extra = [LOW, HIGH, P_BEST, TIED]
    settings = [c for c in df.columns if c not in {*COLUMNS, metric, "trial", "state", "run"}]
    settings = [c for c in settings if c not in ("error", "over_budget", "front")]
    settings = [c for c in settings if c not in ("device", "threads")]
    table = front[["trial", metric, *extra, *COLUMNS, *settings]].rename(columns=COLUMNS)
    table = table.dropna(axis=1, how="all").set_index("trial")
    if fmt == "csv":
        return table.to_csv()
    if fmt == "md":  # a setting that a trial's head does not have is blank, not nan
        table = table.astype(object).where(table.notna(), None)
        shown = measure_label(shown_measure(study))
        if ci:  # "0.612 [0.571, 0.650]", † where not distinguishable from the front's best
            table[metric] = [
                f"{fixed(v, 3)} [{fixed(lo, 3)}, {fixed(hi, 3)}]" + (" †" if t and p < 1 else "")
                for v, lo, hi, p, t in zip(*(front[c] for c in (metric, *extra)), strict=True)
            ]
            shown += " [95 % CI]"
        else:
            table[metric] = [fixed(v, 4) for v in table[metric]]  # not -2.699e-05
        table = table.drop(columns=[c for c in extra if c in table])
        md = table.rename(columns={metric: shown}).to_markdown(floatfmt=".4g")
        if ci:
            md += "\n\n95 % intervals: bootstrap over the validation videos (one run per trial)"
            marked = ((front[TIED] == 1) & (front[P_BEST] < 1)).any()
            md += (
                "; †: not distinguishable from the front's best trial (paired bootstrap over the "
                "same videos, p ≥ 0.05)."
                if marked
                else "; every other trial of the front differs from its best (paired bootstrap "
                "over the same videos, p < 0.05)."
            )
        return md
    if fmt == "latex":
        n = len(df[df["state"] == "complete"])
        measure = measure_label(shown_measure(study)).removeprefix("val ")
        caption = (
            f"Pareto front of sweep {study.study_name} ({len(table)} of {n} finished trials): "
            f"validation {measure} against cost, cheapest "
            "first. MACs are multiply-accumulates (1 MAC = 2 FLOPs) per frame."
        )
        if LATENCY in front and front[LATENCY].notna().any():
            where = sorted({f"{d} ({t:g} threads)" for d, t in zip(front["device"],
                            front["threads"], strict=True) if isinstance(d, str)})  # fmt: skip
            caption += " Latency: median per clip at batch 1" + (
                f", on {', '.join(where)}." if where else "."
            )
        if ci:
            caption += (
                " In brackets the 95 % interval (bootstrap over the validation videos); †: not "
                "distinguishable from the front's best trial (paired bootstrap, p ≥ 0.05)."
            )
        caption += " The trials' training settings are in the CSV."
        label = f"tab:{study.study_name}-front"
        return _front_latex(front, metric, shown_measure(study), caption, label, ci)
    raise ValueError(f"format must be md, latex or csv, got {fmt!r}")


ARCHITECTURE = ("backbone", "head", "seq_len", "img_size")  # trial params a paper's table shows


def _architecture(columns) -> list[str]:
    """The front's architecture columns: backbone, head, clip length, input size and the heads'
    own settings (space entries named ``<head>.<setting>``); the optimiser's and the data's
    settings (lr, weight decay, dropout, ``data.*``) belong to the CSV, not to the paper."""
    named = [c for c in ARCHITECTURE if c in columns]
    own = [c for c in columns if "." in c and not c.startswith(("val/", "test/", "data."))]
    return named + own


def _front_latex(
    front: pd.DataFrame, metric: str, shown: str, caption: str, label: str, ci: bool = False
) -> str:
    """The front as a paper shows it: trial, architecture, the measure to three decimals, the
    costs to three significant digits (never ``-2.7e-05`` or ``12.3456``)."""
    arch = [c for c in _architecture(front.columns) if front[c].notna().any()]
    costs = [c for c in COLUMNS if c in front and front[c].notna().any()]
    names = {"seq_len": "T", "img_size": "px"}
    header = ["Trial", *(names.get(c, c.replace(".", " ")) for c in arch)]
    header += [measure_label(shown).removeprefix("val ")]
    header += [*(["95 % CI"] if ci else []), *(LATEX_COLUMNS[c] for c in costs)]

    def setting(v) -> str:
        if v is None or (isinstance(v, float) and np.isnan(v)):
            return PLACEHOLDER  # a setting this trial's head does not have
        return f"{v:g}" if isinstance(v, float) else str(v)

    def measure(r: pd.Series) -> list[str]:
        if not ci:
            return [fixed(r[metric])]
        tied = " †" if r["tied_with_best"] == 1 and r["p_vs_best"] < 1 else ""
        return [fixed(r[metric]) + tied, f"[{fixed(r['ci95_low'])}, {fixed(r['ci95_high'])}]"]

    rows = [
        [str(r["trial"]), *(setting(r[c]) for c in arch), *measure(r)]
        + [significant(r[c]) for c in costs]
        for _, r in front.iterrows()
    ]
    return tabular_latex(header, rows, caption=caption, label=label)


def _settings_label(row: pd.Series) -> str:
    """A front point's label: ``#12 gru T8 hidden 64`` (the trial, its head, clip length and the
    head's own settings; the rest are in the frontier table)."""
    parts = [f"#{row['trial']}", str(row.get("head", "") or "")]
    if pd.notna(row.get("seq_len", np.nan)):
        parts.append(f"T{int(row['seq_len'])}")
    for k, v in row.items():
        # head settings are the space entries named <head>.<setting> (gru.hidden, mixer.levels)
        if "." in str(k) and not str(k).startswith(("val/", "test/", "data.")) and pd.notna(v):
            parts.append(f"{str(k).split('.')[-1]} {v:g}" if isinstance(v, float) else
                         f"{str(k).split('.')[-1]} {v}")  # fmt: skip
    return " ".join(p for p in parts if p)


def write_frontier(
    study: optuna.Study,
    out: str | Path,
    wandb_mode: str = "disabled",
    wandb_dir: Path | None = None,
) -> Path:
    """The frontier plot (every finished trial, the front highlighted and labelled) as PNG at
    ``out``; unless ``wandb_mode`` is disabled, a W&B run with the trials Table and a scatter."""
    df = trials_frame(study)
    metric = (study.metric_names or ["val/score"])[0]
    done = df[df["state"] == "complete"].copy() if len(df) else df
    done["label"] = [_settings_label(r) for _, r in done.iterrows()] if len(done) else []
    frontier_plot(
        done,
        metric,
        out,
        title=f"{study.study_name}: {measure_label(shown_measure(study))} against GMACs per frame",
        front="front",
        label_front_only=True,
        shown=shown_measure(study),
    )
    summary_run(
        done.drop(columns=["label"]).astype({"front": int}),
        group=study.study_name,
        name=f"{study.study_name}-frontier",
        job_type="frontier",
        folder=wandb_dir or Path(out).parent,
        mode=wandb_mode,
        metric=metric,
        summary={
            "front_size": int(done["front"].sum()),
            "finished_trials": len(done),
            f"best_{metric}": float(done[metric].max()),
        },
    )
    return Path(out)
