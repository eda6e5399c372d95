"""``affbench bench-grid``: the grid figures of BENCHMARKS.md, measured side by side in one run.

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
        row.update(config=Path(config).name, overhead_model=str(head))
    return rows


def bench_stage1(
    config: str = "ablations/configs/quickstart.yaml",
    heads: tuple[str, ...] = ("frame", "gru", "mixer3"),
    seeds: tuple[int, ...] = (0, 1, 2),
    stills: str | Path = "data/affectnet_synth",
    epochs: int = 10,
    root: str | Path = "bench/stage1",
    recipe: str = "ablations/configs/frozen_heads.yaml",
) -> list[dict]:
    """``affbench bench-stage1``: what stage 1 buys. Stage 1 on the synthetic stills (written
    if absent; the ``pretrain`` settings of the main job's grid ``recipe``, at the backbone and
    input size of ``config``), then the grid's heads x seeds at the grid's own budget twice,
    from random weights and from the stage-1 encoder, all else equal (``freeze`` as the grid
    sets it); val VA CCC per head, mean and std over the seeds. And the training throughput of
    stage 1 (images/s) beside the video side's (frames/s, the ``frame`` head) for the same
    backbone."""
    import pandas as pd

    from lightning_modules.pretrain import merge, pretrain

    root = fresh(Path(root), "")
    cfg = load_grid(config)
    base = cfg["base"]
    if not Path(stills).exists():
        from datamodules.synth_stills import generate_affectnet

        generate_affectnet(stills)
    arch = {k: base["model"][k] for k in ("backbone", "img_size") if k in base["model"]}
    own = {"model": arch, "data": {"root": str(stills)}, "trainer": {"max_epochs": epochs}}
    stage1 = merge(load_grid(recipe).get("pretrain") or {}, own)
    with fresh_cost_cache(), environ(WANDB_SILENT="true"):
        s1 = pretrain(stage1, root / "pretrain", mode="disabled")
        frames = {}
        for start, weights in (("random", None), ("stage 1", s1["encoder"])):
            grid = copy.deepcopy(cfg)
            grid["name"] = "random" if weights is None else "stage1"
            grid["grid"] = {"model.head": list(heads), "seed": list(seeds)}
            if weights is not None:
                grid["base"]["model"]["pretrained"] = weights
            frames[start] = run_grid(grid, root, wandb_disabled=True)
    rows = []
    for head in heads:
        for start, df in frames.items():
            ccc = df[df["model.head"] == head]["val/va_ccc"].astype(float)
            rows.append(
                {
                    "head": head,
                    "start": start,
                    "val_va_ccc_mean": round(ccc.mean(), 3),
                    "val_va_ccc_std": round(ccc.std(ddof=1), 3),
                    "seeds": len(ccc),
                }
            )
    video = frames["random"]
    video = video[video["model.head"] == "frame"]["train_frames_per_s"].astype(float)
    batch = base.get("data", {}).get("batch_size", 8)
    rows += [
        {
            "head": "(throughput)",
            "start": f"stage 1: stills, batch {s1['settings']['data']['batch_size']}",
            "train_frames_per_s": s1["train_frames_per_s"],
            "stage1_val_expr_f1": round(s1["val/expr_f1"], 3),
            "stage1_val_va_ccc": round(s1["val/va_ccc"], 3),
        },
        {
            "head": "(throughput)",
            "start": f"video: frame head, batch {batch} x T {base['model'].get('seq_len')}",
            "train_frames_per_s": round(float(pd.Series(video).mean()), 1),
        },
    ]
    return rows
