"""Ablation grids on the sweeps' engine: several workers and machines on one study (a real
PostgreSQL server), a killed worker's combination retried by another, DDP for one combination
without rerunning the command, and one GPU per worker."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import lightning as L
import optuna
import pytest
import yaml
from conftest import tiny_base, wait_for
from optuna.trial import TrialState

from ablations.grid import expand, load_grid
from ablations.runner import ResultsStore, run_grid
from lightning_modules.experiment import build
from lightning_modules.intervals import load as load_stats
from lightning_modules.intervals import stats_path
from sweeps.engine import gpus_for

REPO = Path(__file__).resolve().parents[1]
HEADS = ["frame", "mean", "gru", "tcn"]


def _grid(root, name: str, heads=HEADS, **trainer) -> dict:
    base = tiny_base(root)
    base["data"]["batch_size"] = 2
    base["trainer"].update(trainer)
    return {"name": name, "base": base, "grid": {"model.head": list(heads)}}


def _write(tmp_path: Path, cfg: dict) -> Path:
    path = tmp_path / f"{cfg['name']}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _trials(url: str, name: str) -> list:
    return optuna.load_study(study_name=name, storage=url).get_trials(deepcopy=False)


def _env() -> dict:
    return {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": str(REPO)}


def test_each_worker_has_its_own_gpu():
    assert [gpus_for(i, 4) for i in range(6)] == [[0], [1], [2], [3], [0], [1]]
    assert [gpus_for(i, 4, per_run=2) for i in range(3)] == [[0, 1], [2, 3], [0, 1]]
    assert gpus_for(1, 0) == [] and gpus_for(0, 1, per_run=2) == [0]


@pytest.mark.slow
def test_two_workers_share_a_postgres_grid(synth_root, tmp_path, postgres_url, monkeypatch):
    """4 combinations, 2 worker processes on one PostgreSQL study: each combination trained
    exactly once, by both workers, and the store equals one worker's in settings and rows."""
    monkeypatch.setenv("WANDB_MODE", "disabled")
    cfg = load_grid(_write(tmp_path, _grid(synth_root, "pg2")))
    two = run_grid(cfg, tmp_path / "two", workers=2, storage=postgres_url)
    trials = _trials(postgres_url, "pg2")
    assert len(trials) == 4 and all(t.state == TrialState.COMPLETE for t in trials)
    keys = sorted(t.user_attrs["key"] for t in trials)
    assert keys == sorted(r["key"] for r in expand(cfg))  # each combination once
    assert len({t.user_attrs["worker"] for t in trials}) == 2  # both workers used
    assert sorted(two["key"]) == keys and (two["status"] == "done").all()

    one_cfg = load_grid(_write(tmp_path, _grid(synth_root, "one")))
    one = run_grid(one_cfg, tmp_path / "one")  # the default: SQLite beside the results
    assert (tmp_path / "one" / "one" / "grid.db").exists()
    assert len(one) == len(two) == 4
    assert sorted(one["settings"]) == sorted(two["settings"])
    assert (ResultsStore(tmp_path / "two" / "pg2").read()["key"].sort_values().tolist()) == keys


@pytest.mark.slow
def test_a_killed_worker_is_retried_by_the_other(synth_root, tmp_path, postgres_url):
    """The same command on two "machines" (processes) sharing a PostgreSQL grid; one is
    SIGKILLed while it trains: the other finishes its own combinations, waits out the dead
    one's heartbeat, reruns its combination and ends with the grid complete: every combination
    finished once, nothing lost."""
    cfg = _grid(synth_root, "killed", max_epochs=3, limit_train_batches=3)
    cfg["heartbeat"] = {"interval": 1, "grace": 4}
    path = _write(tmp_path, cfg)

    steps = tmp_path / "victim-steps.log"
    script = Path(__file__).with_name("ablate_with_sigterm.py")  # -1: logs its steps, no signal

    def start(i: int, log_steps: list[str]) -> subprocess.Popen:
        cmd = [sys.executable, *log_steps, "ablate", str(path), "--storage", postgres_url,
               "--results", str(tmp_path / f"m{i}")]  # fmt: skip
        with open(tmp_path / f"m{i}.log", "w") as f:
            return subprocess.Popen(cmd, env=_env(), stdout=f, stderr=subprocess.STDOUT)

    victim = start(0, [str(script), str(steps), "-1"])
    survivor = start(1, ["-m", "affbench.cli"])

    def victim_in_fit():
        """The victim's running trial once it has trained its first steps (of 9)."""
        if not steps.exists() or steps.read_text().split()[-1:] not in (["0"], ["1"], ["2"]):
            return None
        trials = _trials(postgres_url, "killed")
        mine = [t for t in trials if t.user_attrs.get("worker", "").endswith(f":{victim.pid}")]
        return [t for t in mine if t.state == TrialState.RUNNING]

    try:
        (running,) = wait_for(
            victim_in_fit, 300, "the victim to train", victim, tmp_path / "m0.log"
        )
        victim.send_signal(signal.SIGKILL)  # mid-training: seconds of it left
        victim.wait(60)
        code = survivor.wait(600)
    finally:
        victim.kill()
        survivor.kill()
    log = (tmp_path / "m1.log").read_text()
    assert code == 0, log[-3000:]
    trials = _trials(postgres_url, "killed")
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    assert sorted(t.user_attrs["key"] for t in done) == sorted(r["key"] for r in expand(cfg))
    (dead,) = [t for t in trials if t.state == TrialState.FAIL]
    assert dead.number == running.number  # the victim's combination, failed once ...
    retry = next(t for t in done if t.system_attrs.get("failed_trial") == dead.number)
    assert retry.user_attrs["key"] == dead.user_attrs["key"]  # ... and rerun by the survivor
    assert retry.user_attrs["worker"].endswith(f":{survivor.pid}")
    df = ResultsStore(tmp_path / "m1" / "killed").read()
    assert len(df) == 4 and df["key"].is_unique and (df["status"] == "done").all()


@pytest.mark.slow
def test_a_ddp_combination_runs_alone_under_ddp(synth_root, tmp_path):
    """``trainer.devices: 2`` for one combination: that combination trains on two gloo
    processes (world size 2) in a process of its own; Lightning's launcher does not rerun the
    ``affbench ablate`` command (one worker took every trial, one summary was printed)."""
    cfg = _grid(synth_root, "ddp", heads=["frame", "gru"], accelerator="cpu")
    cfg["grid"]["trainer.devices"] = [1, 2]
    cfg["grid"]["model.head"] = ["frame"]
    path = _write(tmp_path, cfg)
    cmd = [sys.executable, "-m", "affbench.cli", "ablate", str(path), "--results", str(tmp_path)]
    r = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    df = ResultsStore(tmp_path / "ddp").read().set_index("trainer.devices")
    assert (df["status"] == "done").all() and sorted(df.index) == [1, 2]
    assert df.loc[2, "world_size"] == 2 and df.loc[1, "world_size"] == 1
    # scored across the two ranks, each frame once: as one process scores its best checkpoint
    # on the same clips (2 batches on each rank, interleaved: the first 4 batches)
    settings = json.loads(df.loc[2, "settings"])
    model, data = build(settings)
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=4)  # fmt: skip
    alone = trainer.validate(model, data, ckpt_path=df.loc[2, "checkpoint"], verbose=False)[0]
    assert df.loc[2, "val/score"] == pytest.approx(alone["val/score"], abs=1e-5)
    # its per-video statistics, written once by rank 0 from the frames of both ranks, give the
    # same score as the single process does
    stats = load_stats(stats_path(tmp_path / "ddp", df.loc[2, "key"]), "val")
    assert float(stats.measure("score")) == pytest.approx(alone["val/score"], abs=1e-5)
    trials = _trials(f"sqlite:///{tmp_path / 'ddp' / 'grid.db'}", "ddp")
    assert len(trials) == 2 and len({t.user_attrs["worker"] for t in trials}) == 1
    assert r.stdout.count("ddp: 2 done, 0 failed") == 1, r.stdout
    settings = {json.loads(s)["trainer"].get("devices") for s in df["settings"]}
    assert settings == {1, 2}
