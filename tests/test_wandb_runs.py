"""What a W&B run holds: training curves, one validation point per epoch (the best checkpoint's
measures in the summary, not as a phantom last point), the settings nested as they are, and a
summary run whose Table keeps the string columns."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from conftest import tiny_base
from wandb_files import read_offline_run

from lightning_modules.experiment import summary_run, train_and_score


def test_a_run_has_training_curves_a_point_per_epoch_and_nested_settings(
    synth_root, tmp_path, monkeypatch
):
    monkeypatch.setenv("WANDB_MODE", "offline")
    settings = tiny_base(synth_root)
    settings["model"]["head"] = "gru"
    settings["trainer"] = {"max_epochs": 2, "limit_train_batches": 10, "limit_val_batches": 2,
                           "limit_test_batches": 1}  # fmt: skip
    row = train_and_score(settings, tmp_path, "g", "offline", "k1", config={"note": "x"})
    (run_dir,) = (tmp_path / "wandb").glob("offline-run-*")
    run = read_offline_run(run_dir)
    history = run["history"]
    # 20 steps, a point every 10: the losses and the learning rate
    train = [h for h in history if "train/loss" in h]
    assert [h["trainer/global_step"] for h in train] == [9, 19]
    assert all("train/va_loss" in h for h in train)
    assert len([h for h in history if "lr-AdamW" in h]) >= 2
    # one validation point per epoch; re-scoring the best checkpoint adds none
    val = [h for h in history if "val/va_ccc" in h]
    assert [h["epoch"] for h in val] == [0, 1]
    assert not any("test/va_ccc" in h for h in history)
    assert run["summary"]["val/va_ccc"] == pytest.approx(row["val/va_ccc"], abs=1e-6)
    assert run["summary"]["test/va_ccc"] == pytest.approx(row["test/va_ccc"], abs=1e-6)
    # the config: the settings as nested as they are, once
    config = run["config"]
    assert config["model"]["head"] == "gru" and config["data"]["batch_size"] == 4
    assert config["key"] == "k1" and config["note"] == "x"
    assert not {"head", "backbone", "model.head", "batch_size", "lr"} & set(config)


def test_the_summary_runs_table_keeps_backbone_head_and_run(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    df = pd.DataFrame(
        {
            "run": ["a+frame", "a+gru"],
            "backbone": ["mobilenetv4_conv_small"] * 2,
            "head": ["frame", "gru"],
            "gmacs_per_frame": [0.05, 0.051],
            "val/va_ccc": [0.5, 0.6],
        }
    )
    summary_run(df, group="g", name="g-summary", job_type="summary", folder=tmp_path,
                mode="offline", metric="val/va_ccc", summary={"best": 0.6})  # fmt: skip
    (run_dir,) = (tmp_path / "wandb").glob("offline-run-*")
    (table,) = run_dir.glob("files/media/table/results_*.table.json")
    data = json.loads(table.read_text())
    assert data["columns"] == ["run", "backbone", "head", "GMACs per frame", "val VA CCC"]
    assert [r[2] for r in data["data"]] == ["frame", "gru"]
    # the scatter reads that table, its axes named with the measure and the unit
    run = read_offline_run(run_dir)
    assert run["summary"]["frontier_table/path"] == run["summary"]["results/path"]
    (panel,) = [v["panel_config"] for v in run["config"].values() if "panel_config" in dict(v)]
    assert panel["fieldSettings"] == {"x": "GMACs per frame", "y": "val VA CCC"}


NOISE = ("Seed set", "GPU available", "TPU available", "litlogger", "Loading `train_dataloader`",
         "LeafSpec", "log_every_n_steps", "logging interval", "Restoring states",
         "Loaded model weights", "anonymous setting", "eval mode", "wandb:")  # fmt: skip


@pytest.mark.slow
def test_a_grid_of_two_tiny_runs_prints_none_of_the_libraries_chatter(synth_root, tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    import yaml

    base = tiny_base(synth_root)
    grid = tmp_path / "g.yaml"
    grid.write_text(yaml.safe_dump({"name": "g", "base": base,
                                    "grid": {"model.head": ["frame", "gru"]}}))  # fmt: skip
    cmd = [sys.executable, "-m", "affbench.cli", "ablate", str(grid), f"--results={tmp_path}"]
    env = {**os.environ, "WANDB_MODE": "offline"}
    repo = Path(__file__).resolve().parents[1]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=repo, env=env, timeout=600)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    assert "g: 2 done, 0 failed" in out
    assert [n for n in NOISE if n in out] == [], out
    # what the console leaves out is in each run's log, beside the results
    logs = sorted((tmp_path / "g" / "logs").glob("*.log"))
    assert len(logs) == 2
    assert all("Seed set" in p.read_text() and "Restoring states" in p.read_text() for p in logs)
    # -v shows them (a new grid: its runs train)
    grid.write_text(grid.read_text().replace("name: g", "name: h"))
    r = subprocess.run([*cmd, "-v"], capture_output=True, text=True, cwd=repo, env=env,
                       timeout=600)  # fmt: skip
    assert r.returncode == 0 and "Seed set" in r.stdout + r.stderr


def test_the_progress_line_counts_and_estimates_from_the_pace_so_far():
    import time

    from sweeps.engine import progress

    now = time.time()
    # 3 runs finished in the last 30 s: 10 s each, 7 to go
    assert progress(3, 10, 3, now - 30) == "[3/10 done, about 70 s left]"
    assert progress(3, 10, 3, now - 300) == "[3/10 done, about 12 min left]"
    assert progress(10, 10, 10, now - 30) == "[10/10 done]"
    assert progress(2, 10, 0, now - 30) == "[2/10 done]"  # resumed: no pace measured yet
