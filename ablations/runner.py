"""Run an ablation grid on the engine that runs sweeps (``sweeps.engine``).

A grid is an Optuna study named after it, each combination one trial (its key in the user
attribute ``key``), by default in ``<results>/<name>/grid.db`` (SQLite); ``--storage
postgresql://...`` lets the same command on several machines share it. Workers claim
combinations under the storage's lock, each once; a running combination sends heartbeats, and
one whose worker was killed is failed and rerun once by another worker. A combination that
raises (NaN loss, out of memory, bad settings) is failed with its error and the grid goes on
(``retry_failed`` runs it again next time). SIGTERM or Ctrl-C (a cluster's time limit,
``timeout``) stop the grid: the running combination is saved to a checkpoint where it stood,
recorded ``interrupted``, and resumed from that checkpoint by the next run. A combination with
``trainer.devices`` above 1 trains under DDP in a process of its own.

The results store ``<results>/<name>/results.csv`` (one row per combination: done, failed or
interrupted), ``table.md``, ``table.tex``, ``frontier.png`` and the W&B summary run are made from
the study. Each combination is one W&B run (offline unless you are logged in or set
WANDB_MODE), grouped by the grid's name and finished before the next starts.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import os
import signal
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib.pyplot as plt
import optuna
import pandas as pd
from optuna.trial import TrialState

from ablations.features import prepare_features
from ablations.frontier import COST_AXES, frontier_plot, short_label
from ablations.grid import expand
from ablations.significance import with_intervals
from ablations.tables import render
from core.errors import ConfigError
from core.keys import settings_key
from core.paths import RESULTS
from lightning_modules.experiment import (
    GMACS_PER_FRAME,
    LATENCY_MS,
    PARAMS_M,
    Interrupted,
    build,
    cost_row,
    flat,
    measure_label,
    resume_checkpoint,
    run_name,
    spans_devices,
    summary_run,
    train_and_score,
    train_and_score_apart,
    wandb_mode,
)
from lightning_modules.scoring import MONITOR
from sweeps.engine import (
    Plan,
    clear_errors,
    failures,
    finished_since,
    progress,
    queue_retries,
    run_workers,
)
from sweeps.storage import HEARTBEAT, damage_is_an_error, open_storage, shown

log = logging.getLogger(__name__)
GRID_DB = "grid.db"


class ResultsStore:
    """results.csv under one folder, one row per combination key, made from the grid's study
    by each worker after each combination. Writes hold ``.results.lock`` and replace the file
    atomically, so processes sharing a folder never leave it half written."""

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
        return self.status_of(self.read())

    @staticmethod
    def status_of(df: pd.DataFrame) -> dict[str, str]:
        return dict(zip(df["key"], df["status"], strict=True)) if len(df) else {}

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """The folder's write lock. Under it, a ``.results.*.csv`` left by a writer that died
        (a kill, a full disk) is stale: it is removed."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / ".results.lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                for stale in self.folder.glob(".results.*.csv"):
                    stale.unlink(missing_ok=True)
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def write(self, df: pd.DataFrame) -> None:
        with self.locked():
            tmp = self.path.with_name(f".results.{os.getpid()}.csv")
            with open(tmp, "w") as f:
                df.to_csv(f, index=False)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)


def default_storage(folder: Path) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(folder / GRID_DB).resolve()}"


def _base(r: dict, cfg: dict) -> dict:
    return {
        "key": r["key"],
        "run": run_name(r["settings"]),
        "ablation": cfg["name"],
        **flat(r["settings"]),
        "settings": json.dumps(r["settings"], sort_keys=True),
    }


def grid_rows(study: optuna.Study, cfg: dict) -> pd.DataFrame:
    """The results store from the study: per combination (in the order they were first
    started) its finished row, or its failure, or where it was interrupted. A combination
    that is running, or whose worker died and whose retry waits, has no row yet."""
    trials = study.get_trials(deepcopy=False)
    not_retried = {t.number for t in failures(trials)}
    rows: dict[str, dict] = {}
    for t in trials:  # in trial order: a later trial of a key is its retry
        u = t.user_attrs
        key = u.get("key")
        if key is None or rows.get(key, {}).get("status") == "done":
            continue
        try:
            settings = json.loads(u["settings"])
        except (KeyError, TypeError, ValueError):
            continue
        base = _base({"key": key, "settings": settings}, cfg)
        if t.state == TrialState.COMPLETE:
            rows[key] = {**base, **u.get("row", {}), "status": "done", "error": ""}
        elif u.get("interrupted") and t.state in (TrialState.WAITING, TrialState.FAIL):
            rows[key] = {
                **base,
                "status": "interrupted",
                "error": u.get("error") or "interrupted",
                "checkpoint": u.get("checkpoint") or "",
                "wandb_run_id": u.get("wandb_run_id") or "",
                "train_s": u.get("train_s") or 0.0,
            }
        elif t.state == TrialState.FAIL and t.number in not_retried:
            rows[key] = {
                **base,
                "status": "failed",
                "error": (u.get("error") or "its worker stopped sending heartbeats")[:500],
                "traceback": u.get("traceback") or "",
            }
    return pd.DataFrame(list(rows.values()), columns=None if rows else ["key", "status"])


@dataclass
class GridPlan(Plan):
    """A grid's trials: one per combination of ``runs`` whose key is in ``todo`` (this
    command's share: all that are not finished, or the first ``max_runs`` of them)."""

    cfg: dict
    runs: list[dict]
    todo: list[str]
    folder: Path
    mode: str
    raise_on: tuple[int, ...] = (signal.SIGINT,)  # SIGTERM: saved at the end of the batch
    started: float = field(default_factory=time.time)  # for the time left

    @property
    def study_name(self) -> str:
        return self.cfg["name"]

    @property
    def heartbeat(self) -> dict:
        return self.cfg.get("heartbeat") or HEARTBEAT

    @property
    def gpus_per_run(self) -> int:
        devices = [r["settings"].get("trainer", {}).get("devices", 1) for r in self.runs]
        return max((d if isinstance(d, int) and d > 0 else 1) for d in devices)

    def load(self, url: str, worker: int) -> optuna.Study:
        with damage_is_an_error(url):
            return optuna.load_study(
                study_name=self.study_name,
                storage=open_storage(url, self.heartbeat),
                sampler=optuna.samplers.RandomSampler(),  # nothing is sampled
            )

    def next_trial(self, study: optuna.Study) -> optuna.Trial | None:
        trials = study.get_trials(deepcopy=False)
        todo = set(self.todo)
        storage = study._storage
        for t in trials:  # queued retries first: a killed worker's, an interrupted one
            if (
                t.state == TrialState.WAITING
                and t.user_attrs.get("key") in todo
                and storage.set_trial_state_values(t._trial_id, TrialState.RUNNING)
            ):
                return self._started(optuna.Trial(study, t._trial_id))
        taken = {t.user_attrs.get("key") for t in trials}
        for key in self.todo:
            if key not in taken:
                trial = optuna.Trial(study, storage.create_new_trial(study._study_id))
                r = self.by_key[key]
                trial.set_user_attr("key", key)
                trial.set_user_attr("run", run_name(r["settings"]))
                trial.set_user_attr("settings", json.dumps(r["settings"], sort_keys=True))
                return self._started(trial)
        return None

    @property
    def by_key(self) -> dict[str, dict]:
        return {r["key"]: r for r in self.runs}

    def _started(self, trial: optuna.Trial) -> optuna.Trial:
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        return trial

    def name(self, trial: optuna.Trial) -> str:
        return trial.user_attrs.get("run") or f"trial {trial.number}"

    def attempt(self, study: optuna.Study, trial: optuna.Trial):
        key, name = trial.user_attrs["key"], self.name(trial)
        settings = json.loads(trial.user_attrs["settings"])
        resume = {}
        if trial.user_attrs.get("interrupted"):
            path = resume_checkpoint(self.folder / "checkpoints" / key)
            resume = {
                "checkpoint": str(path) if path else None,
                "wandb_run_id": trial.user_attrs.get("wandb_run_id") or None,
                "train_s": float(trial.user_attrs.get("train_s") or 0) if path else 0.0,
            }
            print(f"{name}: resuming from {path}" if path else f"{name}: no checkpoint, restart")
            trial.set_user_attr("interrupted", None)
        clear_errors(trial)
        settings.setdefault("trainer", {}).setdefault("devices", 1)  # never "auto": all GPUs
        args = (settings, self.folder, self.cfg["name"], self.mode, key)
        t0 = time.perf_counter()
        if spans_devices(settings):  # DDP: this combination, in a process of its own
            row = train_and_score_apart(*args, resume=resume, cost=cost_row(settings))
        else:
            row = train_and_score(*args, resume=resume)
        trial.set_user_attr("run_s", round(time.perf_counter() - t0, 3))  # training + scoring
        value = float(row.get(MONITOR, math.nan))
        if not math.isfinite(value):
            raise FloatingPointError(f"{MONITOR} is not finite: {value}")
        trial.set_user_attr("row", row)
        return TrialState.COMPLETE, [value]

    def interrupted(self, trial: optuna.Trial, e: BaseException) -> None:
        why = e.why if isinstance(e, Interrupted) else "interrupted by SIGINT"
        trial.set_user_attr("interrupted", True)
        trial.set_user_attr("error", why)
        if isinstance(e, Interrupted):
            trial.set_user_attr("checkpoint", e.checkpoint or "")
            trial.set_user_attr("wandb_run_id", e.run_id or "")
            trial.set_user_attr("train_s", e.train_s)

    def counts(self, trials) -> tuple[int, int]:
        keys = {r["key"] for r in self.runs}
        done = {t.user_attrs.get("key") for t in trials if t.state == TrialState.COMPLETE}
        return len(done & keys), len(keys)

    def report(self, trial, state, values, seconds) -> None:
        from sweeps.display import measure_name

        measure = f"val {measure_name(trial.user_attrs.get('settings'))}"
        what = f"{measure} {values[0]:.4f}" if values else state.name.lower()
        trials = trial.study.get_trials(deepcopy=False)
        done, total = self.counts(trials)
        where = progress(done, total, finished_since(trials, self.started), self.started)
        print(f"{where} {self.name(trial)}: {what} ({seconds:.1f} s)", flush=True)

    def after(self, study: optuna.Study) -> None:
        ResultsStore(self.folder).write(in_plan(grid_rows(study, self.cfg), self.runs, say=False))


def open_grid(cfg: dict, url: str, store: ResultsStore) -> optuna.Study:
    """The grid's study, created or loaded (the same command again resumes it). A grid whose
    results store predates its study (written by an older version) is taken in: its finished,
    failed and interrupted combinations keep their state."""
    storage = open_storage(url, cfg.get("heartbeat") or HEARTBEAT)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the grid's own lines say enough
    with damage_is_an_error(url):
        study = optuna.create_study(
            storage=storage,
            study_name=cfg["name"],
            direction="maximize",
            load_if_exists=True,
        )
    kind = study.user_attrs.get("kind") or ("sweep" if "sweep" in study.user_attrs else None)
    if kind not in (None, "grid"):
        raise ConfigError(
            f"{shown(url)} already holds a {kind} named {cfg['name']!r}: give the grid another "
            "name, or another --storage"
        )
    if kind is None:
        study.set_user_attr("kind", "grid")
        study.set_metric_names([MONITOR])
        if not study.get_trials(deepcopy=False) and store.path.exists():
            _take_in(study, store.read())
    return study


def _take_in(study: optuna.Study, df: pd.DataFrame) -> None:
    base = {"key", "run", "ablation", "settings", "status", "error", "traceback"}
    for _, r in df.iterrows():
        if not isinstance(r.get("settings"), str):
            continue
        attrs = {"key": r["key"], "run": r.get("run"), "settings": r["settings"]}
        if r["status"] == "done" and math.isfinite(float(r.get(MONITOR, math.nan))):
            row = {
                k: v
                for k, v in r.items()
                if k not in base and "." not in k and not (isinstance(v, float) and math.isnan(v))
            }
            state, value = TrialState.COMPLETE, float(r[MONITOR])
            attrs["row"] = {k: v.item() if hasattr(v, "item") else v for k, v in row.items()}
        elif r["status"] == "failed":
            state, value = TrialState.FAIL, None
            attrs["error"] = str(r.get("error") or "")
        elif r["status"] == "interrupted":
            state, value = TrialState.WAITING, None
            attrs.update(interrupted=True, error=str(r.get("error") or "interrupted"))
            for k in ("checkpoint", "wandb_run_id"):
                attrs[k] = r[k] if isinstance(r.get(k), str) else ""
            attrs["train_s"] = float(r.get("train_s") or 0)
        else:
            continue
        study.add_trial(optuna.trial.create_trial(state=state, value=value, user_attrs=attrs))


def check_runs(runs: list[dict], pending: str | None = None) -> None:
    """Check every combination before the first trains: the data root is there, and each
    distinct model and data setting builds (heads, backbones, T against the Mixer's tubelets,
    strides, ...). All problems are one ConfigError, so a grid never fails one run at a time.
    ``pending``: the stage-1 encoder file that is yet to be written (built without it)."""
    from datamodules.index import find_annotations_dir

    problems: dict[str, dict[str, None]] = {}  # message -> run names
    checked: dict[str, str | None] = {}
    bad_keys: set[str] = set()

    def check(what: str, fn) -> str | None:
        if what not in checked:
            try:
                fn()
                checked[what] = None
            except (ConfigError, ValueError, TypeError, FileNotFoundError) as e:
                checked[what] = f"{e}".splitlines()[0] if str(e) else type(e).__name__
        return checked[what]

    for r in runs:
        if r["settings"].get("trainer", {}).get("num_nodes", 1) != 1:
            problems.setdefault(
                "trainer.num_nodes must be 1 in a grid (run the same command on each machine with "
                "one --storage postgresql://... instead)",
                {},
            )[run_name(r["settings"])] = None
            bad_keys.add(r["key"])
        model, data = r["settings"].get("model", {}), r["settings"].get("data", {})
        if pending is not None and model.get("pretrained") == pending:
            model = {k: v for k, v in model.items() if k != "pretrained"}
        root = data.get("root", "data/synthetic")
        found = (
            check(
                f"root:{root}:{data.get('annotations')}",
                lambda root=root, data=data: find_annotations_dir(
                    Path(root), data.get("annotations")
                ),
            ),
            check(
                json.dumps([model, data], sort_keys=True, default=str),
                lambda model=model, data=data: build({"model": model, "data": data}),
            ),
        )
        for problem in filter(None, found):
            problems.setdefault(problem, {})[run_name(r["settings"])] = None  # ordered, once
            bad_keys.add(r["key"])
    if problems:
        bad = len(bad_keys)
        parts = [
            f"{msg} ({', '.join(names[:3])}" + (f" +{len(names) - 3} more)" if names[3:] else ")")
            for msg, names in ((m, list(n)) for m, n in problems.items())
        ]
        raise ConfigError(
            f"{bad} of {len(runs)} combinations cannot run, nothing was trained: "
            + "; ".join(parts)
        )


def run_grid(
    cfg: dict,
    results_root: str | Path = RESULTS,
    wandb_disabled: bool = False,
    dry_run: bool = False,
    max_runs: int | None = None,
    retry_failed: bool = False,
    workers: int = 1,
    storage: str | None = None,
) -> pd.DataFrame:
    """Run every combination not yet finished (and the failed ones with ``retry_failed``) with
    ``workers`` workers on the grid's study (``storage``, default SQLite beside the results);
    returns the results store. ``max_runs`` starts that many combinations at most (the rest run
    on the next call). Every combination is checked first (:func:`check_runs`). Combinations
    that another process runs are left to it. SIGTERM or Ctrl-C stop the grid after recording
    the running combinations as ``interrupted`` (they resume from their checkpoint next time)
    and raise :class:`Interrupted`."""
    stage1, encoder = None, None
    if "pretrain" in cfg:  # a two-stage grid: every combination starts from its stage 1
        cfg, stage1, encoder = with_stage1(cfg, results_root)
    runs = expand(cfg)
    folder = Path(results_root) / cfg["name"]
    store = ResultsStore(folder)
    if dry_run:
        if stage1 is not None:
            state = "done" if Path(encoder).exists() else "to run first"
            print(f"stage 1 ({state}): {run_name(stage1)} on {stage1['data']['root']} -> {encoder}")
        return _dry_run(runs, store)
    skip = ("done",) if retry_failed else ("done", "failed")
    known = store.status()  # this folder's last view of the grid: check before any file is made
    check_runs([r for r in runs if known.get(r["key"]) not in skip], pending=encoder)
    url = storage or default_storage(folder)
    study = open_grid(cfg, url, store)
    if stage1 is not None:
        run_stage1(study, stage1, encoder, results_root, wandb_mode(wandb_disabled))
    if retry_failed and (failed := queue_retries(study, url)):
        names = ", ".join(t.user_attrs.get("run") or f"trial {t.number}" for t in failed)
        print(f"retrying failed combination(s): {names}")
    status = ResultsStore.status_of(grid_rows(study, cfg))
    todo = [r for r in runs if status.get(r["key"]) not in skip]
    check_runs([r for r in todo if known.get(r["key"]) in skip])  # done elsewhere, not here
    keys = [r["key"] for r in todo][: max_runs if max_runs is not None else None]
    mode = wandb_mode(wandb_disabled)
    os.environ.setdefault("WANDB_SILENT", "true")  # the grid's own lines and summary say enough
    if keys:
        prepare_features(cfg)  # frozen encoders: their features cached before the workers start
    plan = GridPlan(cfg, runs, keys, folder, mode)
    interrupted = None
    try:
        run_workers(plan, url, workers)
    except Interrupted as e:
        interrupted = e
    df = in_plan(grid_rows(study, cfg), runs)
    if len(df) and (df["status"] == "done").any():  # each row's interval, p against the best
        df = with_intervals(df, folder, list(table_axes(cfg)), main_metric(df[df.status == "done"]))
    store.write(df)
    finished = df[df["status"] == "done"] if len(df) else df
    if len(finished):
        with store.locked():
            write_reports(finished, folder, cfg, mode)
    if interrupted is not None:
        raise interrupted
    return df


def in_plan(df: pd.DataFrame, runs: list[dict], say: bool = True) -> pd.DataFrame:
    """The rows of the grid as its file now stands. A grid rerun with other base or stage-1
    settings plans other combinations (other keys): the study keeps the earlier ones (the file
    changed back finds them again), but they are left out of its results and tables, so that
    runs of two settings are never averaged as one."""
    if not len(df):
        return df
    keep = df["key"].isin({r["key"] for r in runs})
    if say and (n := int((~keep).sum())):
        print(
            f"{n} combination(s) in this grid's study were run with other settings than the file "
            "now gives: kept in the study, left out of its results and tables"
        )
    return df[keep].reset_index(drop=True)


def with_stage1(cfg: dict, results_root: str | Path) -> tuple[dict, dict, str]:
    """A two-stage grid: its ``pretrain`` settings over the base's backbone and input size (the
    stage-1 defaults below those), and the grid with ``base.model.pretrained`` set to the
    encoder that stage 1 writes (or wrote) under ``<results>/pretrain/<key>/``."""
    from lightning_modules.pretrain import encoder_path, grid_stage1

    base = cfg["base"].get("model", {})
    if base.get("pretrained"):
        raise ConfigError(
            f"grid {cfg['name']}: base.model.pretrained ({base['pretrained']}) and a pretrain: "
            "section both say where the weights come from; keep one"
        )
    stage1 = grid_stage1(cfg)
    encoder = str(encoder_path(stage1, Path(results_root) / "pretrain"))
    out = json.loads(json.dumps(cfg))
    out["base"].setdefault("model", {})["pretrained"] = encoder
    return out, stage1, encoder


def run_stage1(study: optuna.Study, stage1: dict, encoder: str, results_root, mode: str) -> None:
    """Stage 1 of a two-stage grid, once: trained here unless its encoder is there already,
    and its SHA-256 recorded in the study under the stage-1 settings' key, so that a worker on
    another machine whose stage 1 differs (or is missing) stops instead of mixing two starting
    points in one table. Other stage-1 settings are another stage 1 (another key, other
    combinations), recorded beside it."""
    import hashlib

    from lightning_modules.pretrain import pretrain

    key = settings_key(stage1)
    sha_attr, host_attr = f"stage1_sha256:{key}", f"stage1_host:{key}"
    recorded = study.user_attrs.get(sha_attr)
    if recorded and not Path(encoder).exists():
        raise ConfigError(
            f"this grid's stage 1 was run on {study.user_attrs.get(host_attr)}: copy its "
            f"encoder to {encoder} (SHA-256 {recorded[:12]}...) so every combination starts "
            "from the same weights"
        )
    if not Path(encoder).exists():
        print(f"stage 1: {run_name(stage1)} on {stage1['data']['root']}")
        row = pretrain(stage1, Path(results_root) / "pretrain", mode)
        print(
            f"stage 1 done: val/expr_f1 {row.get('val/expr_f1', float('nan')):.3f}, val/va_ccc "
            f"{row.get('val/va_ccc', float('nan')):.3f}; encoder {row['encoder']}"
        )
    sha = hashlib.sha256(Path(encoder).read_bytes()).hexdigest()
    if recorded is None:
        study.set_user_attr(sha_attr, sha)
        study.set_user_attr(host_attr, socket.gethostname())
    elif recorded != sha:
        raise ConfigError(
            f"the stage-1 encoder {encoder} is not the one this grid started from (SHA-256 "
            f"{sha[:12]}... against {recorded[:12]}... from {study.user_attrs.get(host_attr)})"
            ": copy that machine's file here, or start a new grid"
        )


def _dry_run(runs: list[dict], store: ResultsStore) -> pd.DataFrame:
    from lightning_modules.efficiency import ModelSpec, profile

    rows = []
    status = store.status()
    for r in runs:
        spec = ModelSpec.from_settings(r["settings"].get("model", {}))
        try:
            cost = profile(spec, timing=False)
        except (ConfigError, ValueError, TypeError) as e:
            raise ConfigError(f"{run_name(r['settings'])}: {e}") from None
        rows.append(
            {
                "key": r["key"],
                "run": run_name(r["settings"]),
                "status": status.get(r["key"], "todo"),
                PARAMS_M: cost[PARAMS_M],
                GMACS_PER_FRAME: cost[GMACS_PER_FRAME],
            }
        )
    return pd.DataFrame(rows)


def write_reports(df: pd.DataFrame, folder: Path, cfg: dict, mode: str) -> dict[str, Path]:
    """Markdown and LaTeX tables and the frontier plot beside the store; a W&B summary run."""
    metric = main_metric(df)
    rows, cols = table_axes(cfg)
    paths = {
        "md": folder / "table.md",
        "latex": folder / "table.tex",
        "plot": folder / "frontier.png",
    }
    paths["md"].write_text(render(df, rows, cols, metric, "md", folder))
    paths["latex"].write_text(render(df, rows, cols, metric, "latex", folder))
    # one point per model: the seeds' mean, labelled by its head (and backbone where several)
    named = df.assign(label=df["run"].str.replace(r"_s\d+$", "", regex=True))
    agg = {metric: "mean"} | {
        c: "first"
        for c in (GMACS_PER_FRAME, LATENCY_MS, PARAMS_M, "model.head", "model.backbone")
        if c in df
    }
    points = named.groupby("label", sort=False).agg(agg).reset_index()
    points = points.rename(columns={"model.head": "head", "model.backbone": "backbone"})
    several = "backbone" in points and points["backbone"].nunique() > 1
    short = points.apply(short_label, axis=1, several_backbones=several)
    if not short.duplicated().any():  # other axes vary too (T, lr...): the run's own label
        points["label"] = short
    for cost, path in (
        (GMACS_PER_FRAME, paths["plot"]),
        (LATENCY_MS, folder / "frontier_latency.png"),
        (PARAMS_M, folder / "frontier_params.png"),
    ):
        if cost in points and points[cost].notna().any():
            frontier_plot(points, metric, path, cost=cost,
                          title=f"{cfg['name']}: {measure_label(metric)} against "
                          f"{COST_AXES[cost].split(' (')[0]}")  # fmt: skip
            plt.close("all")
    strings = {c: c.split(".")[-1] for c in ("model.backbone", "model.head") if c in df}
    tied = [c for c in (f"{metric}_tied_with_best",) if c in df]  # yes/no: not a number
    summary = {"best_" + metric: float(df[metric].max())}
    best = df.loc[df[metric].idxmax()]
    for c in (f"{metric}_ci95_low", f"{metric}_ci95_high"):
        if c in df and best[c] == best[c]:
            summary["best_" + c] = float(best[c])
    numbers = df.select_dtypes(include="number").drop(columns=tied, errors="ignore")
    labels = df[["run", *strings, *tied]].rename(columns=strings)
    summary_run(
        numbers.join(labels.replace({True: "yes", False: "no"})),
        group=cfg["name"],
        name=f"{cfg['name']}-summary",
        job_type="summary",
        folder=folder,
        mode=mode,
        metric=metric,
        summary=summary,
    )
    return paths


def main_metric(df: pd.DataFrame) -> str:
    """The measure tables and plots use: the task's own (``val/va_ccc``) when every row trains
    one and the same task, else val/score (the mean over the trained tasks)."""
    from lightning_modules.scoring import MEASURE, metric_key

    tasks = set(df["model.tasks"].astype(str)) if "model.tasks" in df else set()
    if len(tasks) == 1 and (task := tasks.pop()) in MEASURE:
        own = metric_key("val", MEASURE[task])
        if own in df:
            return own
    return MONITOR if MONITOR in df else next(c for c in df.columns if c.startswith("val/"))


def table_axes(cfg: dict) -> tuple[str, str]:
    """Rows and columns of the default table: the first two grid axes other than the seed."""
    axes = [a for a in cfg.get("grid", {}) if a != "seed"]
    rows = axes[0] if axes else "model.head"
    cols = axes[1] if len(axes) > 1 else "model.backbone"
    return rows, cols
