"""The engine under sweeps and ablation grids: workers that take trials from one Optuna study.

A :class:`Plan` says what the trials are: a sweep's (settings suggested from a space, a budget
of ``n_trials``; ``sweeps.runner``) or a grid's (one trial per combination;
``ablations.runner``). The engine does the rest, the same for both:

* **Claiming.** A worker takes its next trial under the storage's lock
  (``sweeps.storage.budget_lock``): it first fails the trials whose heartbeat stopped (a killed
  worker's; their retry is queued, once), then asks the plan for a trial. So each trial is taken
  by exactly one worker, on one machine or many (PostgreSQL).
* **Waiting.** With nothing left to start while other workers still run trials, a worker waits:
  one of them may die, and its retry must still run. It says once what it waits for.
* **Heartbeats.** A running trial beats every ``interval`` s; one silent for ``grace`` s is
  failed and retried by whichever worker looks next.
* **Signals.** Ctrl-C and SIGTERM (a cluster's time limit) stop a worker: the running trial is
  failed as interrupted, its retry queued, and :class:`Interrupted` raised. A signal that the
  plan lets raise (``raise_on``) raises inside a trial's ``try`` only; others are flagged for
  the trial to stop where it can (a grid's training saves a checkpoint at the end of the batch
  first). Outside a trial (the lock, ``ask``, ``tell``) a signal waits for the next check.
* **Workers.** Several local workers are processes, each on GPU ``i mod n`` (or ``per_run``
  GPUs of its own) and with as many CPU threads as one worker has (this process's
  ``torch.get_num_threads()``, not a share of them: the rounding of a CPU reduction depends on
  how many threads split it, so a run's measures must not depend on how many workers ran beside
  it; their OpenMP threads wait passively, so workers sharing cores do not spin against each
  other); the parent forwards signals to them.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Iterator

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback, fail_stale_trials

# study.optimize runs the heartbeat thread itself; with ask/tell (which a shared budget needs)
# it is ours to run, with Optuna's own helpers
from optuna.storages._heartbeat import get_heartbeat_thread, is_heartbeat_enabled
from optuna.trial import TrialState

from lightning_modules.experiment import STOP, Interrupted
from sweeps.storage import budget_lock, damage_is_an_error, heartbeat_ages

log = logging.getLogger("affbench.engine")
# ask/tell with a heartbeat is what several workers sharing one budget need (module docstring)
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")


class Plan:
    """What the workers of one study run. Subclasses set ``study_name`` and ``heartbeat``
    (``{"interval": s, "grace": s}``), ``folder`` (where results go; the workers' console log
    under ``logs/`` while displayed) and ``started``, and define :meth:`load`,
    :meth:`next_trial`, :meth:`attempt` and :meth:`counts`; the rest has defaults. A plan is
    pickled into worker processes."""

    study_name: str
    heartbeat: dict
    raise_on: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)  # stop an attempt at once
    gpus_per_run: int = 1

    def load(self, url: str, worker: int) -> optuna.Study:
        raise NotImplementedError

    def next_trial(self, study: optuna.Study) -> optuna.Trial | None:
        """Under the lock, after stale trials were failed: the next trial to run, or None."""
        raise NotImplementedError

    def attempt(self, study: optuna.Study, trial: optuna.Trial) -> tuple[TrialState, list | None]:
        """Run the trial: its end state and objective values."""
        raise NotImplementedError

    def name(self, trial: optuna.Trial) -> str:
        return f"trial {trial.number}"

    def interrupted(self, trial: optuna.Trial, e: BaseException) -> None:
        """Record an interrupted trial before it is failed and its retry queued."""
        trial.set_user_attr("error", "interrupted")

    def counts(self, trials: list) -> tuple[int, int]:
        """(finished, planned) trials: the ``[done/total]`` of the run lines and the display."""
        raise NotImplementedError

    def report(self, trial: optuna.Trial, state: TrialState, values, seconds: float) -> None:
        pass

    def after(self, study: optuna.Study) -> None:
        """After each trial is told (a grid writes its results store)."""


def progress(done: int, total: int, recent: int, started: float) -> str:
    """``[7/24 done, about 2 min left]``: ``done`` of ``total``, and the time left at the pace of
    the ``recent`` runs that finished since ``started`` (``time.time()``; every worker's)."""
    left = max(total - done, 0)
    line = f"[{done}/{total} done"
    elapsed = time.time() - started
    if left and recent and elapsed > 0:
        eta = left * elapsed / recent
        line += f", about {eta / 60:.0f} min left" if eta >= 90 else f", about {eta:.0f} s left"
    return line + "]"


def finished_since(trials: list, started: float) -> int:
    """How many of ``trials`` finished (complete or pruned) after ``started``."""
    return sum(
        t.state in (TrialState.COMPLETE, TrialState.PRUNED)
        and t.datetime_complete is not None
        and t.datetime_complete.timestamp() >= started
        for t in trials
    )


# A worker's Ctrl-C / SIGTERM (module docstring): which signals may raise now
_live: dict = {"signals": ()}


def _on_signal(signum: int, frame) -> None:
    if STOP["signal"] is not None:
        return  # the first signal stops the worker; a second must not cut its recording short
    STOP["signal"] = signum
    if signum in _live["signals"]:
        _live["signals"] = ()
        raise Interrupted(signum)


def stop_if_signalled() -> None:
    if STOP["signal"] is not None:
        raise Interrupted(STOP["signal"])


def interruptible(fn: Callable, *args, signals: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)):
    """``fn(*args)``, where ``signals`` raise at once; one that came earlier raises here."""
    _live["signals"] = signals  # then the check: a signal between the two raises in the handler
    if STOP["signal"] is not None:
        _live["signals"] = ()
        raise Interrupted(STOP["signal"])
    try:
        return fn(*args)
    finally:
        _live["signals"] = ()


@contextlib.contextmanager
def signals_to(handler: Callable = _on_signal):
    """SIGINT and SIGTERM go to ``handler`` meanwhile (in the main thread: only it can)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    STOP["signal"], STOP["missed"], _live["signals"] = None, None, ()
    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    hook = sys.unraisablehook

    def unraisable(u) -> None:
        # the handler raised inside a weakref callback or a __del__, which Python cannot raise
        # from: no "Exception ignored" traceback; the trainer raises it at the next batch end
        if isinstance(u.exc_value, Interrupted):
            STOP["missed"] = u.exc_value.signum
        else:
            hook(u)

    sys.unraisablehook = unraisable
    try:
        yield
    finally:
        sys.unraisablehook = hook
        for s, h in previous.items():
            signal.signal(s, signal.SIG_DFL if h is None else h)
        STOP["signal"], STOP["missed"], _live["signals"] = None, None, ()


def failures(trials: list[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
    """The failed trials that no retry replaces (a killed worker's or an interrupted trial is
    replaced by its retry): they keep their place, and fail the sweep or the grid."""
    retried = {h[-1] for t in trials if (h := RetryHeartbeatStaleTrialCallback.retry_history(t))}
    return [t for t in trials if t.state == TrialState.FAIL and t.number not in retried]


def queue_retries(study: optuna.Study, url: str) -> list[optuna.trial.FrozenTrial]:
    """Under the lock, queue a retry (the same parameters and user attributes) of every failed
    trial that has none yet. Returns those failed trials."""
    with budget_lock(url, study.study_name):
        failed = failures(study.get_trials())  # copies: the callback extends retry_history
        for t in failed:
            RetryHeartbeatStaleTrialCallback()(study, t)
    return failed


def _next(plan: Plan, study: optuna.Study, url: str) -> optuna.Trial | str:
    """The plan's next trial, started; or 'wait' (others still run trials), or 'done'."""
    with budget_lock(url, study.study_name):
        fail_stale_trials(study)  # dead workers' trials: FAIL, their retries queued
        trial = plan.next_trial(study)
        if trial is not None:
            if is_heartbeat_enabled(study._storage):  # from its first instant: a worker killed
                study._storage.record_heartbeat(trial._trial_id)  # now still leaves a stale trial
            return trial
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    return "wait" if running and is_heartbeat_enabled(study._storage) else "done"


def clear_errors(trial: optuna.Trial) -> None:
    """A retry starts clean: the failed trial it copies keeps its error."""
    for k in ("error", "traceback"):
        if trial.user_attrs.get(k) is not None:
            trial.set_user_attr(k, None)


def waiting_for(study: optuna.Study, grace: float) -> tuple[tuple, str]:
    """What a worker with nothing to start waits for: the running trials (their number and
    worker, the key), and a line saying so, with their heartbeats and the grace period."""
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    storage = getattr(study._storage, "_backend", study._storage)  # under Optuna's cache
    ages = heartbeat_ages(storage, [t._trial_id for t in running])
    key, parts = [], []
    for t in running:
        worker = t.user_attrs.get("worker", "an unknown worker")
        key.append((t.number, worker))
        age = ages.get(t._trial_id)
        beat = "no heartbeat yet" if age is None else f"last heartbeat {age:.0f} s ago"
        parts.append(f"trial {t.number} on {worker} ({beat})")
    line = (
        f"all started; waiting for {', '.join(parts)} to finish (a trial whose heartbeat stops "
        f"for {grace:g} s is retried here)"
    )
    return tuple(key), line


def serve(
    plan: Plan,
    url: str,
    timeout: float | None = None,
    threads: int | None = None,
    worker: int = 0,
) -> int:
    """One worker: run the plan's trials until none is left (or ``timeout`` s have passed: no
    new trial starts after it). Returns the number of trials it ran."""
    if threads:
        import torch

        torch.set_num_threads(threads)
    os.environ.setdefault("WANDB_SILENT", "true")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with signals_to():
        study = plan.load(url, worker)
        t0, ran, told = time.monotonic(), 0, None
        poll = max(1.0, plan.heartbeat["interval"] / 2)
        while timeout is None or time.monotonic() - t0 < timeout:
            stop_if_signalled()
            with damage_is_an_error(url):
                trial = _next(plan, study, url)
            if trial == "done":
                break
            if trial == "wait":  # said once, and again when what it waits for changes
                key, line = waiting_for(study, plan.heartbeat["grace"])
                if key != told:
                    print(line, flush=True)
                    told = key
                interruptible(time.sleep, poll)
                continue
            told = None
            run_trial(plan, study, trial)
            ran += 1
        stop_if_signalled()
    return ran


def run_trial(plan: Plan, study: optuna.Study, trial: optuna.Trial) -> TrialState:
    """Run one trial and tell the study how it ended (its message kept if it failed)."""
    t0 = time.perf_counter()
    with get_heartbeat_thread(trial._trial_id, study._storage):
        values = None
        try:  # a signal that came since the ask raises here, as the first thing
            state, values = interruptible(plan.attempt, study, trial, signals=plan.raise_on)
        except optuna.TrialPruned as e:
            trial.set_user_attr("pruned", str(e))
            state = TrialState.PRUNED
        except (KeyboardInterrupt, SystemExit) as e:
            # Ctrl-C or SIGTERM (Lightning turns a KeyboardInterrupt into SystemExit, SIGTERM
            # without our handler into SIGTERMException): fail this trial, queue its retry
            plan.interrupted(trial, e)
            study.tell(trial, state=TrialState.FAIL)
            frozen = copy.deepcopy(study._storage.get_trial(trial._trial_id))  # it is extended
            RetryHeartbeatStaleTrialCallback()(study, frozen)
            print(f"{plan.name(trial)}: interrupted; its retry is queued", flush=True)
            plan.after(study)
            if isinstance(e, Interrupted):
                raise
            if STOP["signal"] is not None:
                raise Interrupted(STOP["signal"]) from None
            raise
        except Exception as e:  # a bad combination, a NaN loss, out of memory: recorded
            trial.set_user_attr("error", f"{type(e).__name__}: {e}"[:1000])
            trial.set_user_attr("traceback", traceback.format_exc()[-3000:])
            log.error("%s failed: %s: %s", plan.name(trial), type(e).__name__, e)
            state = TrialState.FAIL
        trial.set_user_attr("trial_s", round(time.perf_counter() - t0, 2))
        study.tell(trial, values, state=state)
    plan.report(trial, state, values, time.perf_counter() - t0)
    plan.after(study)
    return state


def gpus_for(worker: int, n_gpus: int, per_run: int = 1) -> list[int]:
    """The GPUs of worker ``worker``: GPU ``worker mod n`` (``per_run`` in a row for a
    combination that trains on several); none on a machine without GPUs."""
    if n_gpus == 0:
        return []
    return [(worker * per_run + j) % n_gpus for j in range(min(per_run, n_gpus))]


def _worker_main(plan: Plan, url: str, kw: dict, gpus: list[int], console: str | None) -> None:
    if console:  # the live display shows what this process writes (sweeps.display)
        fd = os.open(console, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
    if gpus:  # set before CUDA starts in this process
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, gpus))
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        serve(plan, url, **kw)  # its own SIGINT / SIGTERM handler (even if the parent ignored it)
    except KeyboardInterrupt as e:
        signum = e.signum if isinstance(e, Interrupted) else signal.SIGINT
        raise SystemExit(128 + signum) from None


def run_workers(plan: Plan, url: str, workers: int = 1, timeout: float | None = None) -> None:
    """``workers`` workers on the plan's study: in this process for one, else as processes (see
    the module docstring). Ctrl-C or SIGTERM raise :class:`Interrupted` once the workers have
    recorded their trials; a worker that died is reported (its trial is retried). In a
    terminal, a status line shows the study's progress meanwhile (``sweeps.display``)."""
    from sweeps.display import LiveDisplay

    with LiveDisplay(plan, url, plan.folder) as display:
        if workers <= 1:
            serve(plan, url, timeout)
        else:
            _run_processes(plan, url, workers, timeout, display.workers_log)


@contextlib.contextmanager
def _worker_environ() -> Iterator[None]:
    """Meanwhile, the environment a worker process starts with: OpenMP's threads wait for work
    passively (unless the user chose otherwise). Every worker has as many threads as one worker
    alone, so on a CPU-only machine K workers run K times the cores' threads, where OpenMP's
    default, spinning while it waits, has them burn each other's time (2 workers of 2 threads on
    2 cores, spinning: several times the wall clock of 1 thread each; waiting passively: the
    same). The wait policy never changes a result."""
    was = os.environ.get("OMP_WAIT_POLICY")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read when a worker loads OpenMP
    try:
        yield
    finally:
        if was is None:
            os.environ.pop("OMP_WAIT_POLICY", None)


def _run_processes(plan: Plan, url: str, workers: int, timeout: float | None, console) -> None:
    import torch

    # the threads of a run of one worker (this process's): the same run, the same rounding, the
    # same measures whatever the number of workers; on a CPU-only machine they share its cores
    threads = torch.get_num_threads()
    n_gpus = torch.cuda.device_count()
    ctx = mp.get_context("spawn")  # no forked torch or database state
    procs = [
        ctx.Process(
            target=_worker_main,
            args=(
                plan,
                url,
                {"timeout": timeout, "threads": threads, "worker": i},
                gpus_for(i, n_gpus, plan.gpus_per_run),
                str(console) if console else None,
            ),
        )
        for i in range(workers)
    ]

    def forward(signum: int, frame) -> None:  # Ctrl-C reaches them all; SIGTERM may not
        if STOP["signal"] is None:
            STOP["signal"] = signum
        for p in procs:
            if p.pid is not None and p.exitcode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signum)

    with signals_to(forward):
        with _worker_environ():
            for p in procs:
                if STOP["signal"] is None:
                    p.start()
        for p in procs:
            if p.pid is not None:
                p.join()
        stopped = STOP["signal"]
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
