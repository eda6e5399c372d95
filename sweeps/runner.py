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
message in the user attribute ``error``; the sweep goes on (``retry_failed`` queues a retry of
each such failure, which then takes its place in the budget).

Ctrl-C and SIGTERM (a cluster's time limit) stop a worker the same way: the running trial is
failed as ``interrupted``, its retry queued, and :class:`Interrupted` raised. A signal raises
only inside a trial's ``try``; one that comes anywhere else (the budget lock, ``ask``, ``tell``)
waits for the next trial's ``try`` (or the wait, or the end of the loop), so no trial is left
running until the heartbeat's grace period. With several workers the parent forwards the
signal to each.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import multiprocessing as mp
import os
import signal
import socket
import threading
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback, fail_stale_trials

# study.optimize runs the heartbeat thread itself; with ask/tell (which a shared budget needs)
# it is ours to run, with Optuna's own helpers
from optuna.storages._heartbeat import get_heartbeat_thread, is_heartbeat_enabled
from optuna.trial import TrialState

from lightning_modules.experiment import PARAMS_M, Interrupted
from sweeps.cost import trial_cost
from sweeps.space import COST, LATENCY, directions, make_pruner, make_sampler, objective_names
from sweeps.space import suggest as suggest_settings
from sweeps.storage import budget_lock, damage_is_an_error, heartbeat_ages, open_storage, shown

log = logging.getLogger("affbench.sweep")
# ask/tell with a heartbeat is what several workers sharing one budget need (module docstring)
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
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


# A worker's Ctrl-C / SIGTERM (module docstring): the first signal, and whether it may raise now
_stop: dict = {"signal": None, "live": False}


def _on_signal(signum: int, frame) -> None:
    if _stop["signal"] is not None:
        return  # the first signal stops the worker; a second must not cut its recording short
    _stop["signal"] = signum
    if _stop["live"]:
        _stop["live"] = False
        raise Interrupted(signum)


def _stop_if_signalled() -> None:
    if _stop["signal"] is not None:
        raise Interrupted(_stop["signal"])


def _interruptible(fn: Callable, *args):
    """``fn(*args)``, where a signal raises at once; one that came earlier raises here."""
    _stop["live"] = True  # then the check: a signal between the two raises in the handler
    if _stop["signal"] is not None:
        _stop["live"] = False
        raise Interrupted(_stop["signal"])
    try:
        return fn(*args)
    finally:
        _stop["live"] = False


@contextlib.contextmanager
def _signals(handler: Callable = _on_signal):
    """SIGINT and SIGTERM go to ``handler`` meanwhile (in the main thread: only it can)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _stop.update(signal=None, live=False)
    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, signal.SIG_DFL if h is None else h)
        _stop.update(signal=None, live=False)


def create_study(cfg: dict, url: str, study: str) -> optuna.Study:
    """The study, created or loaded (the same command again resumes it); a study of the same
    name with other directions is an error, and so is a damaged SQLite file."""
    storage = open_storage(url, cfg["heartbeat"])
    with damage_is_an_error(url):
        st = optuna.create_study(
            storage=storage,
            study_name=study,
            directions=directions(cfg),
            sampler=make_sampler(cfg["sampler"]),
            pruner=make_pruner(cfg["pruner"]) or optuna.pruners.NopPruner(),
            load_if_exists=True,
        )
    if [d.name.lower() for d in st.directions] != directions(cfg):
        from core.errors import ConfigError

        raise ConfigError(
            f"study {study!r} in {shown(url)} optimises {[d.name.lower() for d in st.directions]}, "
            f"this sweep file {directions(cfg)}: use another --study name"
        )
    st.set_metric_names(objective_names(cfg))
    st.set_user_attr("sweep", {k: v for k, v in cfg.items() if k != "description"})
    return st


def failures(trials: list[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
    """The failed trials that no retry replaces (a killed worker's or an interrupted trial is
    replaced by its retry): they keep their place in the budget, and fail the sweep."""
    retried = {h[-1] for t in trials if (h := RetryHeartbeatStaleTrialCallback.retry_history(t))}
    return [t for t in trials if t.state == TrialState.FAIL and t.number not in retried]


def budget(trials: list[optuna.trial.FrozenTrial]) -> dict[str, int]:
    """How many trials hold a place in the budget, and how many run or wait right now. A failed
    trial that was retried gives its place to the retry."""
    # COMPLETE, PRUNED, RUNNING, WAITING, and the failures nobody retries
    used = sum(t.state != TrialState.FAIL for t in trials) + len(failures(trials))
    running = sum(t.state == TrialState.RUNNING for t in trials)
    waiting = sum(t.state == TrialState.WAITING for t in trials)
    return {"used": used, "running": running, "waiting": waiting}


def queue_retries(study: optuna.Study, url: str) -> list[int]:
    """Under the budget lock, queue a retry (the same parameters) of every failed trial that has
    none yet: each gives its place in the budget to its retry. Returns the failed trials'
    numbers."""
    with budget_lock(url, study.study_name):
        failed = failures(study.get_trials())  # copies: the callback extends retry_history
        for t in failed:
            RetryHeartbeatStaleTrialCallback()(study, t)
    return [t.number for t in failed]


def _next_trial(study: optuna.Study, url: str, n_trials: int) -> optuna.Trial | str:
    """A new (or queued) trial, or 'wait' (others still run trials), or 'done'."""
    with budget_lock(url, study.study_name):
        fail_stale_trials(study)  # dead workers' trials: FAIL, their retries queued
        b = budget(study.get_trials(deepcopy=False))
        if b["waiting"] or b["used"] < n_trials:
            trial = study.ask()  # pops a queued retry first
            if is_heartbeat_enabled(study._storage):  # from its first instant: a worker killed
                study._storage.record_heartbeat(trial._trial_id)  # now still leaves a stale trial
            for k in ("error", "traceback"):  # a retry starts clean: the failed trial keeps them
                if trial.user_attrs.get(k) is not None:
                    trial.set_user_attr(k, None)
            return trial
    return "wait" if b["running"] and is_heartbeat_enabled(study._storage) else "done"


def _waiting_for(study: optuna.Study, storage, grace: float) -> tuple[tuple, str]:
    """What a worker with a full budget waits for: the running trials (their number and
    worker, the key), and a line saying so, with their heartbeats and the longest wait."""
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    ages = heartbeat_ages(storage, [t._trial_id for t in running])
    key, parts = [], []
    for t in running:
        worker = t.user_attrs.get("worker", "an unknown worker")
        key.append((t.number, worker))
        age = ages.get(t._trial_id)
        parts.append(
            f"trial {t.number} on {worker} "
            + (
                "(no heartbeat yet)"
                if age is None
                else f"(last heartbeat {age:.0f} s ago, at most {max(0.0, grace - age):.0f} s more)"
            )
        )
    line = (
        f"the budget is full; waiting for {', '.join(parts)}: a trial whose worker died is "
        f"failed and retried here once its heartbeat is {grace:g} s old"
    )
    return tuple(key), line


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
    with _signals():
        storage = open_storage(url, cfg["heartbeat"])
        with damage_is_an_error(url):
            study = optuna.load_study(
                study_name=study_name,
                storage=storage,
                sampler=make_sampler(cfg["sampler"], worker),
                pruner=make_pruner(cfg["pruner"]) or optuna.pruners.NopPruner(),
            )
        t0, ran, told = time.monotonic(), 0, None
        poll = max(1.0, cfg["heartbeat"]["interval"] / 2)
        while timeout is None or time.monotonic() - t0 < timeout:
            _stop_if_signalled()
            trial = _next_trial(study, url, n_trials)
            if trial == "done":
                break
            if trial == "wait":  # said once, and again when what it waits for changes
                key, line = _waiting_for(study, storage, cfg["heartbeat"]["grace"])
                if key != told:
                    print(line, flush=True)
                    told = key
                _interruptible(time.sleep, poll)
                continue
            told = None
            run_trial(study, trial, cfg, out, wandb_mode)
            ran += 1
        _stop_if_signalled()
    return ran


def run_trial(
    study: optuna.Study, trial: optuna.Trial, cfg: dict, out: Path, wandb_mode: str
) -> TrialState:
    """Run one trial and tell the study how it ended (its message kept if it failed)."""
    t0 = time.perf_counter()
    with get_heartbeat_thread(trial._trial_id, study._storage):
        values = None
        try:  # a signal that came since the ask raises here, as the first thing
            state, values = _interruptible(_attempt, study, trial, cfg, out, wandb_mode)
        except optuna.TrialPruned as e:
            trial.set_user_attr("pruned", str(e))
            state = TrialState.PRUNED
        except (KeyboardInterrupt, SystemExit):
            # Ctrl-C or SIGTERM (Lightning turns a KeyboardInterrupt into SystemExit, SIGTERM
            # without our handler into SIGTERMException): fail this trial, queue its retry
            trial.set_user_attr("error", "interrupted")
            study.tell(trial, state=TrialState.FAIL)
            frozen = copy.deepcopy(study._storage.get_trial(trial._trial_id))  # it is extended
            RetryHeartbeatStaleTrialCallback()(study, frozen)
            print(f"trial {trial.number}: interrupted; its retry is queued", flush=True)
            if _stop["signal"] is not None:
                raise Interrupted(_stop["signal"]) from None
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
    try:
        work(**kw)  # its own SIGINT / SIGTERM handler (even if the parent ignored SIGINT)
    except KeyboardInterrupt as e:
        signum = e.signum if isinstance(e, Interrupted) else signal.SIGINT
        raise SystemExit(128 + signum) from None


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
    """Create or resume the study, then run ``workers`` workers on it: in this process for one,
    else as processes, each with its share of the CPU threads and, where there are at least as
    many GPUs as workers, a GPU of its own. ``retry_failed`` first queues a retry of each failed
    trial that has none. Returns the study; Ctrl-C or SIGTERM raise :class:`Interrupted` once
    the workers have recorded their trials."""
    study = create_study(cfg, url, study_name)
    if retry_failed and (numbers := queue_retries(study, url)):
        print(f"retrying failed trial(s) {', '.join(map(str, numbers))}", flush=True)
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

    def forward(signum: int, frame) -> None:  # Ctrl-C reaches them all; SIGTERM may not
        if _stop["signal"] is None:
            _stop["signal"] = signum
        for p in procs:
            if p.pid is not None and p.exitcode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signum)

    with _signals(forward):
        for p in procs:
            if _stop["signal"] is None:
                p.start()
        for p in procs:
            if p.pid is not None:
                p.join()
        stopped = _stop["signal"]
    if stopped is not None:
        raise Interrupted(stopped)
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
