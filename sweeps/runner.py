"""Run a sweep: workers that take trials from one Optuna study until its budget is spent.

The sweep is a plan on the engine (``sweeps.engine``: claiming under the storage's lock,
heartbeats, retries, signals, workers). Its budget is ``n_trials`` trials for the whole study,
whoever runs them: under the lock a worker counts the trials that hold a place in the budget
(finished, pruned, failed and not retried, running, queued) and, if there is room or a queued
retry, creates the next trial. If the budget is full while other workers still run trials, it
waits: one of them may die, and its retry must still run. So the study ends with exactly
``n_trials`` ended trials, whatever the number of workers and machines, and a killed worker's
trial is retried once.

A trial: the settings are suggested (``sweeps.space``), the cost is measured once per
architecture (``experiment.cost_row``'s cache) and stored in the trial's user attributes; over
the FLOPs budget it is pruned untrained; else it trains and is scored by
``experiment.train_and_score`` (one W&B run per trial, grouped by the study) with Optuna's
Lightning pruning callback in single-objective mode. An exception or a NaN loss fails the trial
with its message in the user attribute ``error``; the sweep goes on (``retry_failed`` queues a
retry of each such failure, which then takes its place in the budget). Ctrl-C and SIGTERM stop
a worker: the running trial is failed as ``interrupted``, its retry queued.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

import optuna
from optuna.trial import TrialState

from core.errors import ConfigError
from lightning_modules.experiment import (
    PARAMS_M,
    cost_row,
    measure_label,
    run_name,
    train_and_score,
)
from lightning_modules.intervals import stats_path
from sweeps.engine import (
    Plan,
    clear_errors,
    failures,
    finished_since,
    progress,
    queue_retries,
    run_workers,
    serve,
)
from sweeps.space import COST, LATENCY, directions, make_pruner, make_sampler, objective_names
from sweeps.space import suggest as suggest_settings
from sweeps.storage import damage_is_an_error, open_storage, shown

log = logging.getLogger("affbench.sweep")
COST_ATTRS = (
    PARAMS_M,
    "params_backbone_m",
    "params_head_m",
    COST,
    "gmacs_per_clip",
    LATENCY,
    "device",
    "threads",
)
__all__ = ["budget", "create_study", "failures", "queue_retries", "run_sweep", "work"]


def create_study(cfg: dict, url: str, study: str) -> optuna.Study:
    """The study, created or loaded (the same command again resumes it); a study of the same
    name with other directions is an error, and so is a damaged SQLite file."""
    storage = open_storage(url, cfg["heartbeat"])
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the sweep's own lines say enough
    with damage_is_an_error(url):
        st = optuna.create_study(
            storage=storage,
            study_name=study,
            directions=directions(cfg),
            sampler=make_sampler(cfg["sampler"]),
            pruner=make_pruner(cfg["pruner"]) or optuna.pruners.NopPruner(),
            load_if_exists=True,
        )
    if st.user_attrs.get("kind") == "grid":
        raise ConfigError(
            f"{shown(url)} already holds an ablation grid named {study!r}: use another --study "
            "name, or another --storage"
        )
    if [d.name.lower() for d in st.directions] != directions(cfg):
        raise ConfigError(
            f"study {study!r} in {shown(url)} optimises {[d.name.lower() for d in st.directions]}, "
            f"this sweep file {directions(cfg)}: use another --study name"
        )
    st.set_metric_names(objective_names(cfg))
    st.set_user_attr("sweep", {k: v for k, v in cfg.items() if k != "description"})
    return st


def budget(trials: list[optuna.trial.FrozenTrial]) -> dict[str, int]:
    """How many trials hold a place in the budget, and how many run or wait right now. A failed
    trial that was retried gives its place to the retry."""
    # COMPLETE, PRUNED, RUNNING, WAITING, and the failures nobody retries
    used = sum(t.state != TrialState.FAIL for t in trials) + len(failures(trials))
    running = sum(t.state == TrialState.RUNNING for t in trials)
    waiting = sum(t.state == TrialState.WAITING for t in trials)
    return {"used": used, "running": running, "waiting": waiting}


@dataclass
class SweepPlan(Plan):
    """A sweep's trials: suggested from the space, ``n_trials`` in all."""

    cfg: dict
    study_name: str
    n_trials: int
    out: Path
    wandb_mode: str = "offline"
    worker: int = 0
    started: float = field(default_factory=time.time)  # for the time left

    @property
    def heartbeat(self) -> dict:
        return self.cfg["heartbeat"]

    def load(self, url: str, worker: int) -> optuna.Study:
        with damage_is_an_error(url):
            return optuna.load_study(
                study_name=self.study_name,
                storage=open_storage(url, self.heartbeat),
                sampler=make_sampler(self.cfg["sampler"], worker),
                pruner=make_pruner(self.cfg["pruner"]) or optuna.pruners.NopPruner(),
            )

    def next_trial(self, study: optuna.Study) -> optuna.Trial | None:
        b = budget(study.get_trials(deepcopy=False))
        if not (b["waiting"] or b["used"] < self.n_trials):
            return None
        trial = study.ask()  # pops a queued retry first
        clear_errors(trial)
        return trial

    def attempt(self, study: optuna.Study, trial: optuna.Trial):
        return _attempt(study, trial, self.cfg, self.out, self.wandb_mode)

    @property
    def folder(self) -> Path:
        return self.out

    def counts(self, trials) -> tuple[int, int]:
        return sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials), (
            self.n_trials
        )

    def report(self, trial, state, values, seconds) -> None:
        trials = trial.study.get_trials(deepcopy=False)
        done, total = self.counts(trials)
        where = progress(done, total, finished_since(trials, self.started), self.started)
        _report(trial.number, state, values, self.cfg, seconds, where)


def work(
    cfg: dict,
    url: str,
    study_name: str,
    n_trials: int,
    out: Path,
    timeout: float | None = None,
    wandb_mode: str = "offline",
    threads: int | None = None,
    worker: int = 0,
) -> int:
    """One worker: run trials of the study until the budget is spent (or ``timeout`` s have
    passed: no new trial starts after it). Returns the number of trials it ran."""
    plan = SweepPlan(cfg, study_name, n_trials, out, wandb_mode)
    return serve(plan, url, timeout, threads, worker)


def _attempt(
    study: optuna.Study, trial: optuna.Trial, cfg: dict, out: Path, wandb_mode: str
) -> tuple[TrialState, list[float] | None]:
    settings = suggest_settings(trial, cfg)
    settings.setdefault("trainer", {}).setdefault("devices", 1)  # never "auto": all the GPUs
    name = f"t{trial.number:03d}-{run_name(settings)}"
    trial.set_user_attr("run", name)
    trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
    trial.set_user_attr("settings", settings)
    cost = cost_row(settings)
    for k in COST_ATTRS:
        trial.set_user_attr(k, cost.get(k))
    limit = cfg.get("max_gmacs_per_frame")
    if limit is not None and cost[COST] > limit:
        trial.set_user_attr("over_budget", True)
        log.warning(
            "trial %d: %.4f GMACs/frame > budget %.4f: not trained", trial.number, cost[COST], limit
        )
        return TrialState.PRUNED, None
    callbacks = []
    if cfg["mode"] == "single" and cfg.get("pruner") not in (None, "none"):
        from optuna_integration import PyTorchLightningPruningCallback

        callbacks.append(PyTorchLightningPruningCallback(trial, monitor=cfg["metric"]))
    t0 = time.perf_counter()
    row = train_and_score(
        settings,
        out,
        study.study_name,
        wandb_mode,
        key=f"trial{trial.number}",
        name=name,
        config={"trial": trial.number, "study": study.study_name, "params": dict(trial.params)},
        callbacks=callbacks,
        cost=cost,
    )
    trial.set_user_attr("run_s", round(time.perf_counter() - t0, 3))  # training + scoring
    # its per-video statistics, for the front's intervals (on the machine that ran it)
    trial.set_user_attr("videos", str(stats_path(out, f"trial{trial.number}").resolve()))
    kept = ("train_s", "train_threads", "wandb_run_id", "epochs")
    for k, v in row.items():
        if k.startswith(("val/", "test/")) or k in kept:
            trial.set_user_attr(k, v)
    names = objective_names(cfg)
    values = [float(row.get(k, math.nan)) for k in names]
    bad = [k for k, v in zip(names, values, strict=True) if not math.isfinite(v)]
    if bad:
        raise FloatingPointError(f"objective {', '.join(bad)} is not finite: {values}")
    return TrialState.COMPLETE, values


_OBJECTIVE_NAMES = {COST: "GMACs/frame", LATENCY: "latency ms"}


def _objective_label(name: str, cfg: dict) -> str:
    """How the run lines name an objective: ``val VA CCC`` for the score of one task (which it
    equals), ``val score`` for several, ``GMACs/frame``."""
    from sweeps.display import measure_name

    if name in _OBJECTIVE_NAMES:
        return _OBJECTIVE_NAMES[name]
    stage, _, key = name.rpartition("/")
    return f"{stage} {measure_name(cfg['base'])}" if key == "score" else measure_label(name)


def _report(
    number: int, state: TrialState, values, cfg: dict, seconds: float, where: str = ""
) -> None:
    names = [_objective_label(k, cfg) for k in objective_names(cfg)]
    what = (
        ", ".join(f"{k} {v:.4g}" for k, v in zip(names, values, strict=True))
        if values and state == TrialState.COMPLETE
        else state.name.lower()
    )
    print(f"{where} trial {number}: {what} ({seconds:.1f} s)".lstrip(), flush=True)


def run_sweep(
    cfg: dict,
    url: str,
    study_name: str,
    n_trials: int,
    out: Path,
    workers: int = 1,
    timeout: float | None = None,
    wandb_mode: str = "offline",
    retry_failed: bool = False,
) -> optuna.Study:
    """Create or resume the study, then run ``workers`` workers on it (``sweeps.engine``).
    ``retry_failed`` first queues a retry of each failed trial that has none. Returns the
    study; Ctrl-C or SIGTERM raise :class:`Interrupted` once the workers have recorded their
    trials."""
    study = create_study(cfg, url, study_name)
    if retry_failed and (failed := queue_retries(study, url)):
        print(f"retrying failed trial(s) {', '.join(str(t.number) for t in failed)}", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    if budget(study.get_trials(deepcopy=False))["used"] < n_trials:
        from ablations.features import prepare_features

        prepare_features(cfg)  # frozen encoders: their features cached before the workers start
    plan = SweepPlan(cfg, study_name, n_trials, out, wandb_mode)
    run_workers(plan, url, workers, timeout)
    return study
