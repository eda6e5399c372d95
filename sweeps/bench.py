"""``affbench bench-sweep``: the sweep figures of BENCHMARKS.md, measured side by side in one run.

* Trials per hour with 1 and 2 workers: the same N trials (parameters drawn once from the sweep
  file's space with a seeded random sampler and queued in each study) run on a fresh SQLite
  study and a fresh cost cache, so both runs do the same work, latency measurements included.
* The sweep machinery's overhead per trial: one architecture trained R times by the experiment
  layer's ``train_and_score`` alone (cost already cached, W&B offline), against R identical
  queued trials through ``run_sweep`` (study, lock, stale-trial check, ask, suggest, heartbeat
  thread, user attributes, tell), alternated over rounds; wall clock per trial. And, measured
  inside the same swept runs, the seconds each trial spends outside ``train_and_score``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import torch

from sweeps.runner import create_study, run_sweep
from sweeps.space import load_sweep, suggest


def fresh(root: Path, name: str) -> Path:
    """``root/name``, empty."""
    d = root / name
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    return d


@contextlib.contextmanager
def environ(**values: str) -> Iterator[None]:
    """The environment variables set to ``values`` meanwhile, restored after."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def fresh_cost_cache() -> Iterator[None]:
    """A new, empty cost cache meanwhile (a new sweep or grid measures each architecture's
    costs once), deleted after."""
    folder = tempfile.mkdtemp(prefix="affbench-bench-cache-")
    try:
        with environ(AFFBENCH_CACHE=folder):
            yield
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def throughput_row(unit: str, n: int, seconds: float, workers: int) -> dict:
    """``n`` ``unit`` in ``seconds`` with ``workers`` workers, and per hour."""
    return {
        "measure": f"{unit} per hour, {workers} worker(s)",
        unit: n,
        "wall_s": round(seconds, 1),
        f"{unit}_per_hour": round(3600 * n / seconds, 1),
        "threads_per_worker": max(1, (os.cpu_count() or 1) // workers),
    }


def overhead_rows(
    unit: str, engine: str, alone: list[float], through: list[float], inside: list[float]
) -> list[dict]:
    """Seconds per ``unit`` (one a round in each list): ``train_and_score`` alone, the same
    through ``engine``, and the engine's own share (its wall clock less the time inside
    ``train_and_score``), with the overheads in percent."""
    a, t, i = statistics.mean(alone), statistics.mean(through), statistics.mean(inside)
    n = len(alone)
    return [
        {
            "measure": f"seconds per {unit}: train_and_score alone",
            "rounds": n,
            "wall_s": round(a, 2),
            "per_round": " / ".join(f"{x:.2f}" for x in alone),
        },
        {
            "measure": f"seconds per {unit}: through {engine}",
            "rounds": n,
            "wall_s": round(t, 2),
            "per_round": " / ".join(f"{x:.2f}" for x in through),
            "overhead_pct": round(100 * (t - a) / a, 1),
        },
        {
            "measure": f"seconds per {unit}: the engine only ({engine} - train_and_score)",
            "rounds": n,
            "wall_s": round(t - i, 3),
            "per_round": " / ".join(f"{x - y:.3f}" for x, y in zip(through, inside, strict=True)),
            "overhead_pct": round(100 * (t - i) / i, 1),
        },
    ]


def _draw(cfg: dict, n: int, seed: int = 0) -> list[dict]:
    """n parameter sets from the space (seeded random sampling), to queue in every study."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    out = []
    for _ in range(n):
        t = study.ask()
        suggest(t, cfg)
        out.append(dict(t.params))
        study.tell(t, 0.0)
    return out


def _run(
    cfg: dict, root: Path, name: str, params: list[dict], workers: int
) -> tuple[float, list[float]]:
    """Seconds for a fresh study of the queued ``params`` with ``workers`` workers, and each
    trial's seconds inside ``train_and_score``."""
    folder = fresh(root, name)
    url = f"sqlite:///{folder / 'study.db'}"
    study = create_study(cfg, url, name)
    for p in params:
        study.enqueue_trial(p)
    t0 = time.perf_counter()
    run_sweep(cfg, url, name, len(params), folder, workers=workers, wandb_mode="offline")
    seconds = time.perf_counter() - t0
    done = optuna.load_study(study_name=name, storage=url).trials
    states = [t.state.name for t in done]
    if states.count("COMPLETE") != len(params):
        raise RuntimeError(f"{name}: expected {len(params)} finished trials, got {states}")
    return seconds, [t.user_attrs["run_s"] for t in done]


def bench_sweep(
    config: str = "sweeps/configs/quick.yaml",
    trials: int = 8,
    repeats: int = 4,
    rounds: int = 3,
    root: str | Path = "bench/sweep",
) -> list[dict]:
    from lightning_modules.experiment import cost_row, train_and_score

    root = Path(root)
    cfg = load_sweep(config)
    cpu = os.cpu_count() or 1
    rows = []
    params = _draw(cfg, trials)
    for workers in (1, 2):
        with fresh_cost_cache():
            seconds, _ = _run(cfg, root, f"throughput-w{workers}", params, workers)
        rows.append(throughput_row("trials", trials, seconds, workers))
    # overhead: one architecture, the cost cache warm for both paths
    fixed = params[0]
    torch.set_num_threads(cpu)
    settings = suggest(optuna.trial.FixedTrial(fixed), cfg)
    cost = cost_row(settings)
    alone, swept, inside = [], [], []
    for r in range(rounds):
        folder = fresh(root, f"alone-{r}")
        t0 = time.perf_counter()
        for i in range(repeats):
            train_and_score(settings, folder, "alone", "offline", f"run{i}", cost=cost)
        alone.append((time.perf_counter() - t0) / repeats)
        seconds, runs = _run(cfg, root, f"overhead-{r}", [fixed] * repeats, 1)
        swept.append(seconds / repeats)
        inside.append(statistics.mean(runs))
    rows += overhead_rows("trial", "run_sweep", alone, swept, inside)
    head = fixed.get("model.head", cfg["base"]["model"].get("head"))
    for row in rows:
        row.update(config=Path(config).name, overhead_model=str(head))
    return rows
