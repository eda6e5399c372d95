"""``affbench bench-grid``: the README's grid figures, measured side by side in one run.

* Wall clock of a grid (default: the quickstart's 6 combinations) with 1 and 2 workers, each on
  a fresh results folder, study and cost cache, so both runs do the same work.
* The engine's overhead per combination: R seeds of one combination trained by
  ``experiment.train_and_score`` alone, against the same R combinations run as a grid by
  ``run_grid`` (checks, study, lock, heartbeat thread, user attributes, results store after
  each, tables, plot, summary run), alternated over rounds, the cost cache warm for both; wall
  clock per combination. And, inside the same grid runs, the seconds each combination spends
  outside ``train_and_score``.
"""

from __future__ import annotations

import copy
import os
import statistics
import time
from pathlib import Path

import optuna

from ablations.grid import expand, load_grid
from ablations.runner import GRID_DB, run_grid
from lightning_modules.experiment import cost_row, train_and_score
from sweeps.bench import environ, fresh, fresh_cost_cache, overhead_rows, throughput_row


def _grid(cfg: dict, folder: Path, workers: int = 1) -> tuple[float, list[float]]:
    """Seconds for the grid on a fresh folder, and each combination's seconds inside
    ``train_and_score``."""
    t0 = time.perf_counter()
    df = run_grid(cfg, folder, workers=workers)
    seconds = time.perf_counter() - t0
    n = len(expand(cfg))
    if len(df) != n or not (df["status"] == "done").all():
        raise RuntimeError(f"{cfg['name']}: expected {n} finished combinations, got {df}")
    url = f"sqlite:///{(folder / cfg['name'] / GRID_DB).resolve()}"
    trials = optuna.load_study(study_name=cfg["name"], storage=url).trials
    return seconds, [t.user_attrs["run_s"] for t in trials]


def bench_grid(
    config: str = "ablations/configs/quickstart.yaml",
    repeats: int = 3,
    rounds: int = 2,
    root: str | Path = "bench/grid",
) -> list[dict]:
    root = Path(root)
    cfg = load_grid(config)
    n = len(expand(cfg))
    cpu = os.cpu_count() or 1
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rows = []
    with environ(WANDB_MODE="offline"):  # real run files, on both paths
        for workers in (1, 2):
            with fresh_cost_cache():
                seconds, _ = _grid(cfg, fresh(root, f"w{workers}"), workers)
            rows.append(throughput_row("combinations", n, seconds, workers))
        # overhead: R seeds of the grid's first combination, the cost cache warm for both paths
        one = copy.deepcopy(expand(cfg)[0]["settings"])
        seeds = {**cfg, "base": one, "grid": {"seed": list(range(repeats))}}
        settings = [r["settings"] for r in expand(seeds)]
        cost_row(settings[0])
        alone, gridded, inside = [], [], []
        for r in range(rounds):
            folder = fresh(root, f"alone-{r}")
            t0 = time.perf_counter()
            for i, s in enumerate(settings):
                train_and_score(s, folder, "alone", "offline", f"run{i}")
            alone.append((time.perf_counter() - t0) / repeats)
            seconds, runs = _grid({**seeds, "name": f"overhead-{r}"}, fresh(root, f"grid-{r}"))
            gridded.append(seconds / repeats)
            inside.append(statistics.mean(runs))
    rows += overhead_rows("combination", "run_grid", alone, gridded, inside)
    head = one["model"].get("head", "mixer3")
    for row in rows:
        row.update(config=Path(config).name, overhead_model=str(head), threads=cpu)
    return rows
