"""``affbench bench-stage1-seeds``: does the main job hold over stage-1 seeds?

The grid of ``make demo`` (default ``ablations/configs/frozen_heads.yaml``: stage 1, its encoder
frozen, the heads x seeds on its cached features) run once per stage-1 seed, everything else
equal. Rows: each stage 1's validation measures on the stills and their spread over the seeds;
each grid's rows (mean over the head's seeds, 95 % interval, paired p against the best head,
whether it is tied with the best); and per head, on how many of the encoders it is tied with
the best, so a reader sees whether the encoders name the same heads as better or worse.
"""

from __future__ import annotations

import copy
import statistics
from pathlib import Path

from ablations.grid import load_grid
from ablations.runner import main_metric, run_grid, table_axes, with_stage1
from ablations.tables import summarise
from lightning_modules.pretrain import pretrain
from sweeps.bench import environ


def bench_stage1_seeds(
    config: str = "ablations/configs/frozen_heads.yaml",
    stage1_seeds: tuple[int, ...] = (0, 1, 2),
    workers: int = 2,
    root: str | Path = "bench/stage1_seeds",
) -> list[dict]:
    root = Path(root)
    base = load_grid(config)
    videos = base["base"].get("data", {}).get("root", "data/synthetic")
    if not Path(videos).exists():  # the synthetic videos and stills, as make demo writes them
        from datamodules.synth import generate

        generate(videos)
    stills = base.get("pretrain", {}).get("data", {}).get("root", "data/affectnet_synth")
    if not Path(stills).exists():
        from datamodules.synth_stills import generate_affectnet

        generate_affectnet(stills)
    rows, verdicts = [], {}
    measured = []
    for s in stage1_seeds:
        cfg = copy.deepcopy(base)
        cfg["name"] = f"{base['name']}-stage1-s{s}"
        cfg.setdefault("pretrain", {})["seed"] = s
        with environ(WANDB_SILENT="true"):
            df = run_grid(cfg, root, wandb_disabled=True, workers=workers)
        _, stage1, _ = with_stage1(cfg, root)
        s1 = pretrain(stage1, root / "pretrain", mode="disabled")  # found: it ran above
        measured.append(s1["val/va_ccc"])
        rows.append(
            {
                "part": "stage 1",
                "stage1_seed": s,
                "row": "stills",
                "val_va_ccc": round(s1["val/va_ccc"], 3),
                "val_expr_f1": round(s1["val/expr_f1"], 3),
            }
        )
        done = df[df["status"] == "done"]
        metric = main_metric(done)
        by, _ = table_axes(cfg)
        summary = summarise(done, by, "model.backbone", metric, root / cfg["name"])
        for _, r in summary.iterrows():
            head = str(r[by])
            tied = bool(r["tied_with_best"])
            verdicts.setdefault(head, []).append(tied)
            rows.append(
                {
                    "part": "grid",
                    "stage1_seed": s,
                    "row": head,
                    f"{metric.replace('/', '_')}": round(r["mean"], 3),
                    "ci95_low": round(r["ci95_low"], 3),
                    "ci95_high": round(r["ci95_high"], 3),
                    "p_vs_best": round(r["p_vs_best"], 4),
                    "tied_with_best": tied,
                    "seeds": int(r["count"]),
                }
            )
    rows.append(
        {
            "part": "stage 1 over seeds",
            "stage1_seed": "all",
            "row": "stills",
            "val_va_ccc": round(statistics.mean(measured), 3),
            "val_va_ccc_std": round(statistics.stdev(measured), 3) if len(measured) > 1 else 0.0,
        }
    )
    for head, tied in verdicts.items():
        rows.append(
            {
                "part": "agreement",
                "stage1_seed": "all",
                "row": head,
                "tied_with_best_on": f"{sum(tied)}/{len(tied)} encoders",
                "same_verdict": len(set(tied)) == 1,
            }
        )
    return rows
