"""Run a sweep: workers that take trials from one Optuna study until its budget is spent.

The budget is ``n_trials`` trials for the whole study, whoever runs them. A worker, under the
storage's lock (``sweeps.storage.budget_lock``): fails the trials whose heartbeat stopped (their
retry is queued), counts the trials that hold a place in the budget (finished, pruned, failed
and not retried, running, queued) and, if there is room or a queued retry, creates the next
trial. If the budget is full while other workers still run trials, it waits: one of them may
die, and its retry must still run. So the study ends with exactly ``n_trials`` ended trials,
whatever the number of workers and machines, and a killed worker's trial is retried once.

A trial: the settings are suggested (``sweeps.space``), the cost is measured once per
architecture (``sweeps.cost``) and stored in the trial's user attributes; over the FLOPs budget
it is pruned untrained; else it trains and is scored by the ablation runner's
``train_and_score`` (one W&B run per trial, grouped by the study) with Optuna's Lightning
pruning callback in single-objective mode. An exception or a NaN loss fails the trial with its
message in the user attribute ``error``; the sweep goes on. Ctrl-C fails the running trial,
queues its retry, and stops.
"""

from __future__ import annotations

import logging
import math
import multiprocessing as mp
import os
import signal
import socket
import time
import traceback
import warnings
from pathlib import Path

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback, fail_stale_trials

# study.optimize runs the heartbeat thread itself; with ask/tell (which a shared budget needs)
# it is ours to run, with Optuna's own helpers
from optuna.storages._heartbeat import get_heartbeat_thread, is_heartbeat_enabled
from optuna.trial import TrialState

from sweeps.cost import trial_cost
from sweeps.space import COST, LATENCY, directions, make_pruner, make_sampler, objective_names
from sweeps.space import suggest as suggest_settings
from sweeps.storage import budget_lock, open_storage, shown

log = logging.getLogger("affbench.sweep")
# ask/tell with a heartbeat is what several workers sharing one budget need (module docstring)
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
COST_ATTRS = (
    "params_total_m",
    "params_backbone_m",
    "params_head_m",
    "gmacs_per_frame",
    "gmacs_per_clip",
    LATENCY,
    "device",
    "threads",
)


def create_study(cfg: dict, url: str, study: str) -> optuna.Study:
    """The study, created or loaded (the same command again resumes it); a study of the same
    name with other directions is an error."""
    storage = open_storage(url, cfg["heartbeat"])
    st = optuna.create_study(
        storage=storage,
        study_name=study,
        directions=directions(cfg),
        sampler=make_sampler(cfg["sampler"]),
        pruner=make_pruner(cfg["pruner"]) or optuna.pruners.NopPruner(),
        load_if_exists=True,
    )
    if [d.name.lower() for d in st.directions] != directions(cfg):
        from affbench.errors import ConfigError

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
    retried = {h[-1] for t in trials if (h := RetryHeartbeatStaleTrialCallback.retry_history(t))}
    used = sum(
        t.state != TrialState.FAIL or t.number not in retried for t in trials
    )  # COMPLETE, PRUNED, RUNNING, WAITING, and the failures nobody retries
    running = sum(t.state == TrialState.RUNNING for t in trials)
    waiting = sum(t.state == TrialState.WAITING for t in trials)
    return {"used": used, "running": running, "waiting": waiting}


def _next_trial(study: optuna.Study, url: str, n_trials: int) -> optuna.Trial | str:
    """A new (or queued) trial, or 'wait' (others still run trials), or 'done'."""
    with budget_lock(url, study.study_name):
        fail_stale_trials(study)  # dead workers' trials: FAIL, their retries queued
        b = budget(study.get_trials(deepcopy=False))
        if b["waiting"] or b["used"] < n_trials:
            trial = study.ask()  # pops a queued retry first
            if is_heartbeat_enabled(study._storage):  # from its first instant: a worker killed
                study._storage.record_heartbeat(trial._trial_id)  # now still leaves a stale trial
            return trial
    return "wait" if b["running"] and is_heartbeat_enabled(study._storage) else "done"


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
    if threads:
        import torch

        torch.set_num_threads(threads)
    os.environ.setdefault("WANDB_SILENT", "true")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(url, cfg["heartbeat"])
    study = optuna.load_study(
        study_name=study_name,
        storage=storage,
        sampler=make_sampler(cfg["sampler"], worker),
        pruner=make_pruner(cfg["pruner"]) or optuna.pruners.NopPruner(),
    )
    t0, ran = time.monotonic(), 0
    poll = max(1.0, cfg["heartbeat"]["interval"] / 2)
    while timeout is None or time.monotonic() - t0 < timeout:
        trial = _next_trial(study, url, n_trials)
        if trial == "done":
            break
        if trial == "wait":
            time.sleep(poll)
            continue
        run_trial(study, trial, cfg, out, wandb_mode)
        ran += 1
    return ran


def run_trial(
    study: optuna.Study, trial: optuna.Trial, cfg: dict, out: Path, wandb_mode: str
) -> TrialState:
    """Run one trial and tell the study how it ended (its message kept if it failed)."""
    t0 = time.perf_counter()
    with get_heartbeat_thread(trial._trial_id, study._storage):
        values = None
        try:
            state, values = _attempt(study, trial, cfg, out, wandb_mode)
        except optuna.TrialPruned as e:
            trial.set_user_attr("pruned", str(e))
            state = TrialState.PRUNED
        except (KeyboardInterrupt, SystemExit):
            # Ctrl-C (Lightning turns it into SystemExit): fail this trial, queue its retry
            trial.set_user_attr("error", "interrupted")
            study.tell(trial, state=TrialState.FAIL)
            frozen = next(t for t in study.get_trials(deepcopy=False) if t.number == trial.number)
            RetryHeartbeatStaleTrialCallback()(study, frozen)
            raise
        except Exception as e:  # a bad combination, a NaN loss, out of memory: recorded
            trial.set_user_attr("error", f"{type(e).__name__}: {e}"[:1000])
            trial.set_user_attr("traceback", traceback.format_exc()[-3000:])
            log.error("trial %d failed: %s: %s", trial.number, type(e).__name__, e)
            state = TrialState.FAIL
        trial.set_user_attr("trial_s", round(time.perf_counter() - t0, 2))
        study.tell(trial, values, state=state)
    _report(trial.number, state, values, cfg, time.perf_counter() - t0)
    return state


def _attempt(
    study: optuna.Study, trial: optuna.Trial, cfg: dict, out: Path, wandb_mode: str
) -> tuple[TrialState, list[float] | None]:
    from ablations.runner import run_name, train_and_score

    settings = suggest_settings(trial, cfg)
    settings.setdefault("trainer", {}).setdefault("devices", 1)  # never "auto": all the GPUs
    name = f"t{trial.number:03d}-{run_name(settings)}"
    trial.set_user_attr("run", name)
    trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
    trial.set_user_attr("settings", settings)
    cost = trial_cost(settings)
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
        config={**trial.params, "trial": trial.number, "study": study.study_name},
        callbacks=callbacks,
        cost=cost,
    )
    trial.set_user_attr("run_s", round(time.perf_counter() - t0, 3))  # training + scoring
    for k, v in row.items():
        if k.startswith(("val/", "test/")) or k in ("train_s", "wandb_run_id", "epochs"):
            trial.set_user_attr(k, v)
    names = objective_names(cfg)
    values = [float(row.get(k, math.nan)) for k in names]
    bad = [k for k, v in zip(names, values, strict=True) if not math.isfinite(v)]
    if bad:
        raise FloatingPointError(f"objective {', '.join(bad)} is not finite: {values}")
    return TrialState.COMPLETE, values


def _report(number: int, state: TrialState, values, cfg: dict, seconds: float) -> None:
    what = (
        ", ".join(f"{k} {v:.4g}" for k, v in zip(objective_names(cfg), values, strict=True))
        if values and state == TrialState.COMPLETE
        else state.name.lower()
    )
    print(f"trial {number}: {what} ({seconds:.1f} s, pid {os.getpid()})", flush=True)


def _worker_main(kw: dict, gpu: int | None = None) -> None:
    if gpu is not None:  # one GPU per worker; set before CUDA starts in this process
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        work(**kw)
    except KeyboardInterrupt:
        raise SystemExit(130) from None


def run_sweep(
    cfg: dict,
    url: str,
    study_name: str,
    n_trials: int,
    out: Path,
    workers: int = 1,
    timeout: float | None = None,
    wandb_mode: str = "offline",
) -> optuna.Study:
    """Create or resume the study, then run ``workers`` workers on it: in this process for one,
    else as processes, each with its share of the CPU threads and, where there are at least as
    many GPUs as workers, a GPU of its own. Returns the study."""
    study = create_study(cfg, url, study_name)
    out.mkdir(parents=True, exist_ok=True)
    kw = dict(
        cfg=cfg,
        url=url,
        study_name=study_name,
        n_trials=n_trials,
        out=out,
        timeout=timeout,
        wandb_mode=wandb_mode,
    )
    if workers <= 1:
        work(**kw)
        return study
    import torch

    threads = max(1, (os.cpu_count() or 1) // workers)
    gpus = torch.cuda.device_count()
    ctx = mp.get_context("spawn")  # no forked torch or database state
    procs = [
        ctx.Process(
            target=_worker_main,
            args=({**kw, "threads": threads, "worker": i}, i if gpus >= workers else None),
        )
        for i in range(workers)
    ]
    for p in procs:
        p.start()
    try:
        for p in procs:
            p.join()
    except KeyboardInterrupt:
        for p in procs:
            p.join()
        raise
    for i, p in enumerate(procs):
        if p.exitcode:
            log.warning(
                "worker %d (pid %d) ended with %s; its trial is retried (by the other workers, "
                "or by the next run of this command)",
                i,
                p.pid,
                f"signal {-p.exitcode}" if p.exitcode < 0 else f"exit code {p.exitcode}",
            )
    return study
