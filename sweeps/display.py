"""A grid's or sweep's live display: in a terminal, one status line at the bottom that keeps
what is running, how many are done and failed, the time left and the last run's measure, with
each finished run's line, warnings and errors printed above it.

The line is drawn by the process that started the command, from the study itself (polled every
second; so it counts every worker's runs, on this machine or others). Workers in processes of
their own write their console (run lines, warnings, tracebacks) to ``logs/workers.log`` beside
the results, which the display prints above its line as they come; a worker in this process
prints through it. Where the output is not a terminal (a log file, CI, a pipe) there is no
status line and every worker prints its lines as they come; ``-v`` (``AFFBENCH_VERBOSE``) also
turns the status line off, so that Lightning's own lines show as they are.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sys
import threading
from pathlib import Path

from optuna.trial import TrialState

log = logging.getLogger("affbench.display")


def wanted() -> bool:
    """A status line only where a person watches a terminal."""
    return (
        sys.stdout.isatty()
        and os.environ.get("TERM") != "dumb"
        and not os.environ.get("AFFBENCH_VERBOSE")
    )


def short_name(name: str) -> str:
    """A run's name on the status line: timm's long backbone name shortened, the rest as is
    (``mobilenetv4_conv_small+gru_t8_r112_s0`` -> ``MNv4-Conv-S+gru_t8_r112_s0``)."""
    from ablations.frontier import short_backbone

    prefix, plus, rest = name.rpartition("+")
    if not plus:
        return name
    head, dash, backbone = prefix.rpartition("-")  # a sweep's "t003-<backbone>"
    return f"{head}{dash}{short_backbone(backbone)}+{rest}"


def measure_name(settings) -> str:
    """What a run's score is called: its task's own measure where it trains one task
    (``VA CCC``: the score then equals it), else ``score`` (the mean over its tasks)."""
    from lightning_modules.experiment import MEASURE_NAMES
    from lightning_modules.scoring import MEASURE

    if isinstance(settings, str):
        with contextlib.suppress(ValueError):
            settings = json.loads(settings)
    tasks = (settings or {}).get("model", {}).get("tasks") if isinstance(settings, dict) else None
    if isinstance(tasks, list) and len(tasks) == 1:
        tasks = tasks[0]
    if isinstance(tasks, str) and tasks in MEASURE:  # "va,expr" and lists of two are not
        return MEASURE_NAMES.get(MEASURE[tasks], "score")
    return "score"


def status_line(trials: list, counts: tuple[int, int], started: float) -> str:
    """``3/24 done, about 4 min left · 1 failed · last MNv4-Conv-S+mean_t16_r96_s0: VA CCC
    0.612 · running MNv4-Conv-S+gru_t16_r96_s1`` from the study's trials and the plan's
    (done, total)."""
    from sweeps.engine import failures, finished_since, progress

    done, total = counts
    parts = [progress(done, total, finished_since(trials, started), started)[1:-1]]
    if failed := len(failures(trials)):
        parts.append(f"{failed} failed")
    finished = [t for t in trials if t.state == TrialState.COMPLETE and t.datetime_complete]
    if finished:
        last = max(finished, key=lambda t: t.datetime_complete)
        name = short_name(last.user_attrs.get("run") or f"trial {last.number}")
        measure = measure_name(last.user_attrs.get("settings"))
        parts.append(f"last {name}: {measure} {last.values[0]:.3f}")
    running = [t for t in trials if t.state == TrialState.RUNNING]
    if running:  # last: a narrow terminal cuts this first
        names = [short_name(t.user_attrs.get("run") or f"trial {t.number}") for t in running]
        parts.append("running " + ", ".join(names))
    return " · ".join(parts)


class LiveDisplay:
    """The status line (module docstring) while a block runs: ``with LiveDisplay(plan, url,
    folder) as d:`` - ``d.workers_log`` is where worker processes write (None when off)."""

    def __init__(self, plan, url: str, folder: Path, poll: float | None = None):
        self.plan, self.url = plan, url
        self.poll = poll or float(os.environ.get("AFFBENCH_DISPLAY_POLL", 1.0))  # s
        self.on = wanted()
        self.workers_log = Path(folder) / "logs" / "workers.log" if self.on else None
        self._stop = threading.Event()
        self._offset = 0
        self._partial = ""

    def __enter__(self) -> LiveDisplay:
        if not self.on:
            return self
        from tqdm import tqdm
        from tqdm.contrib import DummyTqdmFile
        from tqdm.contrib.logging import logging_redirect_tqdm

        self.workers_log.parent.mkdir(parents=True, exist_ok=True)
        self.workers_log.touch()
        self._offset = self.workers_log.stat().st_size  # an earlier command's lines stay there
        self._streams = sys.stdout, sys.stderr
        self.bar = tqdm(
            total=1, file=self._streams[0], bar_format="{desc} {bar:12}", desc=self.plan.study_name
        )
        # this process's prints and warnings go above the line; its log records too
        sys.stdout, sys.stderr = DummyTqdmFile(self._streams[0]), DummyTqdmFile(self._streams[1])
        self._logging = logging_redirect_tqdm()
        self._logging.__enter__()
        self._thread = threading.Thread(target=self._run, name="live-display", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if not self.on:
            return
        self._stop.set()
        self._thread.join(timeout=30)
        self._update()  # the final state, and the workers' last lines
        if self._partial:
            self.bar.write(self._partial, file=self._streams[0])
        self.bar.close()
        self._logging.__exit__(None, None, None)
        sys.stdout, sys.stderr = self._streams

    def _run(self) -> None:
        storage = None
        while not self._stop.wait(self.poll):
            if storage is None:
                storage = self._open()
            try:
                self._update(storage)
            except Exception as e:  # the display never stops the work it shows
                log.debug("display: %s", e)

    def _open(self):
        from sweeps.storage import open_storage

        with contextlib.suppress(Exception):  # not there yet, or busy: the next poll tries
            storage = open_storage(self.url, self.plan.heartbeat)
            self._study_id = storage.get_study_id_from_name(self.plan.study_name)
            return storage
        return None

    def _update(self, storage=None) -> None:
        self._workers_lines()
        storage = storage or self._open()
        if storage is None:
            return
        try:
            trials = storage.get_all_trials(self._study_id, deepcopy=False)
        except Exception as e:  # a busy SQLite file, a dropped connection: only the line waits
            log.debug("display: %s", e)
            return
        done, total = self.plan.counts(trials)
        text = status_line(trials, (done, total), self.plan.started)
        # one terminal line: a line that wraps cannot be redrawn in place
        room = max(10, shutil.get_terminal_size((100, 24)).columns - len(self.bar.desc) - 16)
        text = text if len(text) <= room else text[: room - 1] + "…"
        self.bar.bar_format = "{desc} {bar:12} " + text.replace("{", "{{").replace("}", "}}")
        self.bar.total, self.bar.n = max(total, 1), min(done, total)
        self.bar.refresh()

    def _workers_lines(self) -> None:
        """Print the complete lines the worker processes wrote since the last look."""
        if self.workers_log is None:
            return
        with open(self.workers_log, "rb") as f:
            f.seek(self._offset)
            chunk = f.read()
        self._offset += len(chunk)
        text = self._partial + chunk.decode("utf-8", "replace")
        *lines, self._partial = text.split("\n")
        for line in lines:
            self.bar.write(line.rsplit("\r", 1)[-1], file=self._streams[0])
