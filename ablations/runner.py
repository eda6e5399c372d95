"""Run an ablation grid: train, score, profile and record every combination, resumably.

The results store is ``<results>/<name>/results.csv``, one row per combination key, rewritten
atomically after each combination: a finished key is skipped on the next run; an interrupted one
(never written) runs again; a failing one (exception, NaN loss, out of memory) is written with
its error and the grid goes on (``retry_failed`` runs it again next time). Each combination is
one W&B run (offline unless you are logged in or set WANDB_MODE), grouped by the ablation's
name and finished before the next starts.
"""

from __future__ import annotations

import contextlib
import json
import logging
import netrc
import os
import time
import traceback
from pathlib import Path

import lightning as L
import pandas as pd
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from tqdm.auto import tqdm

from ablations.frontier import frontier_plot
from ablations.grid import expand
from ablations.tables import render
from lightning_modules.efficiency import ModelSpec, peak_rss_reset, proc_status, profile
from lightning_modules.scoring import MONITOR

log = logging.getLogger(__name__)
PROJECT = "affbench"


def run_name(settings: dict) -> str:
    """``{backbone}+{head}_t{T}_r{res}_s{seed}`` (plus head settings and tasks where given)."""
    m = settings.get("model", {})
    name = f"{m.get('backbone', 'mobilenetv4_conv_small')}+{m.get('head', 'mixer3')}"
    for k, v in sorted((m.get("head_kwargs") or {}).items()):
        name += f"-{k}{v}"
    name += f"_t{m.get('seq_len', 32)}_r{m.get('img_size', 112)}_s{settings.get('seed', 0)}"
    tasks = m.get("tasks", "va")
    return name if tasks == "va" else f"{name}_{str(tasks).replace(',', '-')}"


def wandb_mode(disabled: bool = False) -> str:
    """disabled, the user's WANDB_MODE, online when logged in, else offline (real run files)."""
    if disabled:
        return "disabled"
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    logged_in = bool(os.environ.get("WANDB_API_KEY"))
    with contextlib.suppress(OSError, netrc.NetrcParseError):
        logged_in = logged_in or netrc.netrc().authenticators("api.wandb.ai") is not None
    return "online" if logged_in else "offline"


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and k != "head_kwargs":
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = json.dumps(v) if isinstance(v, dict | list) else v
    return out


class ResultsStore:
    """results.csv under one folder, one row per combination key."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.path = self.folder / "results.csv"

    def read(self) -> pd.DataFrame:
        return (
            pd.read_csv(self.path)
            if self.path.exists()
            else pd.DataFrame(columns=["key", "status"])
        )

    def status(self) -> dict[str, str]:
        df = self.read()
        return dict(zip(df["key"], df["status"], strict=True))

    def put(self, row: dict) -> None:
        df = self.read()
        df = pd.concat([df[df["key"] != row["key"]], pd.DataFrame([row])], ignore_index=True)
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".results.{os.getpid()}.csv")
        df.to_csv(tmp, index=False)
        os.replace(tmp, self.path)


def _peak_memory_reset() -> float:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated() / 2**20
    return peak_rss_reset()


def _peak_memory() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return proc_status("VmHWM")


def train_and_score(
    settings: dict,
    folder: Path,
    group: str,
    mode: str,
    key: str,
    *,
    name: str | None = None,
    config: dict | None = None,
    callbacks: list | None = None,
    cost: dict | None = None,
) -> dict:
    """One combination (or sweep trial): fit, score the best checkpoint on val (and test when
    labelled), profile; returns the results row. Runs one W&B run, named ``name`` (default
    :func:`run_name`) with ``config`` (default: the flattened settings), finished before
    returning. ``callbacks`` join the checkpoint callback (a sweep's pruner); ``cost``, a row
    already measured by ``efficiency.profile``, replaces the profiling step."""
    from lightning.pytorch.loggers import WandbLogger

    from datamodules.abaw import AbawDataModule
    from lightning_modules.module import AffectModule

    L.seed_everything(settings.get("seed", 0), workers=True)
    model_kw, data_kw = dict(settings.get("model", {})), dict(settings.get("data", {}))
    model = AffectModule(**model_kw)
    hp = model.hparams
    data = AbawDataModule(
        **{
            **data_kw,
            "tasks": hp.tasks,
            "seq_len": hp.seq_len,
            "img_size": hp.img_size,
            "mean": model.mean,
            "std": model.std,
        }
    )
    logger = WandbLogger(
        project=PROJECT,
        group=group,
        name=name or run_name(settings),
        save_dir=str(folder),
        mode=mode,
        config={**(config if config is not None else _flat(settings)), "key": key},
        job_type="train",
    )
    ckpt = ModelCheckpoint(
        dirpath=folder / "checkpoints" / key, monitor=MONITOR, mode="max", save_top_k=1
    )
    trainer_kw = {
        "max_epochs": 3,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        "gradient_clip_val": 1.0,
        "precision": "bf16-mixed" if torch.cuda.is_available() else "32-true",
        **settings.get("trainer", {}),
    }
    trainer = L.Trainer(
        logger=logger, callbacks=[ckpt, *(callbacks or [])], default_root_dir=folder, **trainer_kw
    )
    try:
        base = _peak_memory_reset()
        t0 = time.perf_counter()
        trainer.fit(model, data)
        train_s = time.perf_counter() - t0
        peak = _peak_memory() - base
        best = ckpt.best_model_path or None
        row = dict(trainer.validate(model, data, ckpt_path=best, verbose=False)[0])
        if _test_is_labelled(data):
            row.update(trainer.test(model, data, ckpt_path=best, verbose=False)[0])
        if cost is None:
            cost = profile(ModelSpec.from_settings(dict(hp)), batch=1, warmup=2, runs=5)
        row.update({k: v for k, v in cost.items() if k not in ("backbone", "head", "tasks")})
        row.update(
            train_s=round(train_s, 1),
            train_peak_mem_mib=round(peak, 1),
            checkpoint=best,
            wandb_run_id=logger.experiment.id,
            epochs=trainer.current_epoch,
        )
        logger.experiment.summary.update(
            {k: v for k, v in row.items() if isinstance(v, int | float)}
        )
        return row
    finally:
        logger.experiment.finish()  # one run per combination, closed before the next


def _test_is_labelled(data) -> bool:
    try:
        data.setup("test")
    except (FileNotFoundError, ValueError):
        return False
    ds = data.datasets.get("test")
    return bool(
        ds is not None and any(ds.index.valid[t].any() for t in data.tasks if t in ds.index.valid)
    )


def run_grid(
    cfg: dict,
    results_root: str | Path = "ablations/results",
    wandb_disabled: bool = False,
    dry_run: bool = False,
    max_runs: int | None = None,
    retry_failed: bool = False,
) -> pd.DataFrame:
    """Run every combination not yet in the store (and the failed ones with ``retry_failed``);
    returns the store. ``max_runs`` stops after that many combinations (the rest run on the
    next call)."""
    runs = expand(cfg)
    folder = Path(results_root) / cfg["name"]
    store = ResultsStore(folder)
    if dry_run:
        rows = []
        for r in runs:
            spec = ModelSpec.from_settings(r["settings"].get("model", {}))
            cost = profile(spec, timing=False)
            rows.append(
                {
                    "key": r["key"],
                    "run": run_name(r["settings"]),
                    "status": store.status().get(r["key"], "todo"),
                    "params_total_m": cost["params_total_m"],
                    "gmacs_per_frame": cost["gmacs_per_frame"],
                }
            )
        return pd.DataFrame(rows)
    mode = wandb_mode(wandb_disabled)
    os.environ.setdefault("WANDB_SILENT", "true")  # the grid's own bar and summary say enough
    status = store.status()
    skip = ("done",) if retry_failed else ("done", "failed")
    todo = [r for r in runs if status.get(r["key"]) not in skip]
    done = sum(status.get(r["key"]) == "done" for r in runs)
    failed = sum(status.get(r["key"]) == "failed" for r in runs) if not retry_failed else 0
    bar = tqdm(
        total=len(runs),
        initial=len(runs) - len(todo),
        desc=cfg["name"],
        unit="run",
        dynamic_ncols=True,
    )
    for i, r in enumerate(todo):
        if max_runs is not None and i >= max_runs:
            break
        name = run_name(r["settings"])
        bar.set_postfix_str(f"running {name} | done {done} failed {failed}")
        base = {
            "key": r["key"],
            "run": name,
            "ablation": cfg["name"],
            **_flat(r["settings"]),
            "settings": json.dumps(r["settings"], sort_keys=True),
        }
        try:
            row = {
                **base,
                **train_and_score(r["settings"], folder, cfg["name"], mode, r["key"]),
                "status": "done",
                "error": "",
            }
            done += 1
        except Exception as e:  # NaN loss, out of memory, bad settings: recorded, the grid goes on
            log.error("%s failed: %s", name, e)
            row = {
                **base,
                "status": "failed",
                "error": f"{type(e).__name__}: {e}".replace("\n", " ")[:500],
                "traceback": traceback.format_exc()[-2000:],
            }
            failed += 1
        store.put(row)
        bar.update(1)
    bar.close()
    df = store.read()
    finished = df[df["status"] == "done"]
    if len(finished):
        write_reports(finished, folder, cfg, mode)
    return df


def write_reports(df: pd.DataFrame, folder: Path, cfg: dict, mode: str) -> dict[str, Path]:
    """Markdown and LaTeX tables and the frontier plot beside the store; a W&B summary run."""
    metric = main_metric(df)
    rows, cols = table_axes(cfg)
    paths = {
        "md": folder / "table.md",
        "latex": folder / "table.tex",
        "plot": folder / "frontier.png",
    }
    paths["md"].write_text(render(df, rows, cols, metric, "md"))
    paths["latex"].write_text(render(df, rows, cols, metric, "latex"))
    points = (
        df.groupby("run", sort=False)
        .agg({metric: "mean", "gmacs_per_frame": "first"})
        .reset_index()
    )
    points["label"] = points["run"].str.replace(r"_s\d+$", "", regex=True)
    points = (
        points.groupby("label", sort=False)
        .agg({metric: "mean", "gmacs_per_frame": "first"})
        .reset_index()
    )
    frontier_plot(
        points, metric, paths["plot"], title=f"{cfg['name']}: {metric} against GMACs per frame"
    )
    if mode != "disabled":
        import wandb

        run = wandb.init(
            project=PROJECT,
            group=cfg["name"],
            name=f"{cfg['name']}-summary",
            job_type="summary",
            dir=str(folder),
            mode=mode,
        )
        table = wandb.Table(dataframe=df.select_dtypes(exclude="object").join(df[["run"]]))
        run.log(
            {
                "results": table,
                "frontier": wandb.plot.scatter(
                    table, "gmacs_per_frame", metric, title=f"{cfg['name']} frontier"
                ),
            }
        )
        run.summary["best_" + metric] = float(df[metric].max())
        run.finish()
    return paths


def main_metric(df: pd.DataFrame) -> str:
    """The measure tables and plots use: val/score (the mean over trained tasks)."""
    return MONITOR if MONITOR in df else next(c for c in df.columns if c.startswith("val/"))


def table_axes(cfg: dict) -> tuple[str, str]:
    """Rows and columns of the default table: the first two grid axes other than the seed."""
    axes = [a for a in cfg.get("grid", {}) if a != "seed"]
    rows = axes[0] if axes else "model.head"
    cols = axes[1] if len(axes) > 1 else "model.backbone"
    return rows, cols
