"""The same command with the same seed gives the same measures, to the bit: a grid run twice, a
grid with one worker and with two, a frozen encoder's grid whether its features were cached
before or by the run, a seeded one-worker sweep run twice; and ``trainer.deterministic`` (in a
grid file or from ``--set``) reaches Lightning's Trainer."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import lightning as L
import numpy as np
import optuna
import pandas as pd
import pytest
import torch
import yaml
from conftest import tiny_base

from ablations.features import extract_config
from ablations.grid import load_grid
from ablations.runner import ResultsStore, run_grid
from sweeps.runner import run_sweep
from sweeps.space import load_sweep


def _base(root, **model) -> dict:
    """tiny_base, smaller still: 32 px frames, 2 training and 2 validation batches."""
    base = tiny_base(root)
    base["model"].update(img_size=32, **model)
    base["data"]["batch_size"] = 2
    base["trainer"].update(limit_train_batches=2, limit_val_batches=2)
    return base


def _grid_file(tmp_path: Path, name: str, base: dict, grid: dict) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "base": base, "grid": grid}))
    return path


def _grid(tmp_path: Path, root, heads=("frame", "gru"), **model) -> dict:
    grid = {"model.head": list(heads)}
    return load_grid(_grid_file(tmp_path, "r", _base(root, **model), grid))


def _measures(results: Path, name: str) -> dict[str, dict[str, str]]:
    """{key: {measure: its float's hex}} of every combination, all finished, read back from
    results.csv (hex: equal means equal to the bit)."""
    df = ResultsStore(results / name).read()
    assert len(df) and (df["status"] == "done").all(), df.get("error")
    cols = [c for c in df.columns if c.startswith(("val/", "test/"))]
    assert "val/score" in cols
    return {r["key"]: {c: float(r[c]).hex() for c in cols} for _, r in df.iterrows()}


@pytest.fixture(scope="module")
def one_worker(synth_root, tmp_path_factory) -> tuple[dict, Path]:
    """The tiny grid, run once with one worker (its own cache: module fixtures start before
    the per-test one): the reference that reruns are compared with."""
    tmp = tmp_path_factory.mktemp("reference")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AFFBENCH_CACHE", str(tmp / "cache"))
        cfg = _grid(tmp, synth_root)
        run_grid(cfg, tmp / "results", wandb_disabled=True)
    return cfg, tmp / "results"


@pytest.mark.slow
def test_a_grid_run_twice_gives_the_same_measures(one_worker, tmp_path):
    cfg, first = one_worker
    run_grid(cfg, tmp_path / "again", wandb_disabled=True)
    assert _measures(tmp_path / "again", "r") == _measures(first, "r")


@pytest.mark.slow
def test_two_workers_give_one_workers_measures(one_worker, tmp_path):
    """Each worker trains with this process's CPU threads, as one worker does (a share of them
    would round the CPU's sums differently), and each combination is seeded by its settings,
    whichever worker takes it and in whatever order."""
    cfg, first = one_worker
    df = run_grid(cfg, tmp_path / "two", wandb_disabled=True, workers=2)
    assert _measures(tmp_path / "two", "r") == _measures(first, "r")
    threads = ResultsStore(first / "r").read()["train_threads"].tolist()
    assert df["train_threads"].tolist() == threads == [torch.get_num_threads()] * 2


def test_workers_start_with_openmp_waiting_passively_unless_told_otherwise(monkeypatch):
    """Workers that share cores, each with one worker's threads, must not spin against each
    other; a user's own wait policy stands, and the parent's environment is left as it was."""
    from sweeps.engine import _worker_environ

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    with _worker_environ():
        assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    assert "OMP_WAIT_POLICY" not in os.environ
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    with _worker_environ():
        assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"


def _cache_files(cache: Path) -> dict[str, str]:
    features = cache / "features"
    return {
        str(p.relative_to(features)): hashlib.sha256(np.load(p).tobytes()).hexdigest()
        for p in sorted(features.rglob("*.npy"))
    }


@pytest.mark.slow
def test_a_frozen_grid_gives_the_same_measures_cached_before_or_by_the_run(
    synth_root, tmp_path, monkeypatch
):
    """By the run: nothing prepared, the first combination extracts the features itself as it
    sets up (the randomness of its training must not see that). Before: ``features extract``'s
    path fills the cache, and the grid only reads it. Same measures, same cache files."""
    import ablations.runner

    cfg = _grid(tmp_path, synth_root, heads=["gru"], freeze="all")
    monkeypatch.setenv("AFFBENCH_CACHE", str(tmp_path / "by"))
    with monkeypatch.context() as m:
        m.setattr(ablations.runner, "prepare_features", lambda cfg: None)
        run_grid(cfg, tmp_path / "by_the_run", wandb_disabled=True)

    monkeypatch.setenv("AFFBENCH_CACHE", str(tmp_path / "before"))
    extract_config(cfg, progress=False, say=lambda *_: None)
    cached = _cache_files(tmp_path / "before")
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "before").rglob("*.npy")}
    run_grid(cfg, tmp_path / "cached_before", wandb_disabled=True)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # read, not extracted again

    assert cached and _cache_files(tmp_path / "by") == cached
    assert _measures(tmp_path / "cached_before", "r") == _measures(tmp_path / "by_the_run", "r")


@pytest.mark.slow
def test_a_seeded_one_worker_sweep_repeats_its_trials_and_values(synth_root, tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({
        "name": "s", "base": _base(synth_root), "sampler": {"name": "tpe", "seed": 0},
        "heartbeat": {"interval": 1, "grace": 30},
        "space": {"model.head": {"choices": ["frame", "gru"]},
                  "model.lr": {"float": [1e-4, 1e-2], "log": True}},
    }))  # fmt: skip
    cfg = load_sweep(path)
    runs = []
    for n in (1, 2):
        url = f"sqlite:///{tmp_path / f's{n}.db'}"
        run_sweep(cfg, url, "s", 2, tmp_path / f"out{n}", wandb_mode="disabled")
        trials = optuna.load_study(study_name="s", storage=url).get_trials(deepcopy=False)
        assert [t.state.name for t in trials] == ["COMPLETE"] * 2
        assert all(t.user_attrs["train_threads"] == torch.get_num_threads() for t in trials)
        measures = [
            {k: v.hex() for k, v in t.user_attrs.items() if k.startswith("val/")} for t in trials
        ]
        runs.append([(t.params, [v.hex() for v in t.values]) for t in trials] + measures)
    assert runs[0] == runs[1]


@pytest.fixture
def trainers(monkeypatch):
    """Every Trainer built meanwhile: (its deterministic argument, whether torch's deterministic
    algorithms were on once it was built). The process-wide flags are put back afterwards."""
    from ablations.grid import _section_keys

    _section_keys()  # the Trainer's own parameters, read (and kept) before the spy stands in
    seen: list[tuple[object, bool]] = []
    real = L.Trainer

    def spy(*args, **kwargs):
        trainer = real(*args, **kwargs)
        seen.append((kwargs.get("deterministic"), torch.are_deterministic_algorithms_enabled()))
        return trainer

    monkeypatch.setattr(L, "Trainer", spy)
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)  # Lightning sets it
    was = torch.are_deterministic_algorithms_enabled()
    yield seen
    torch.use_deterministic_algorithms(was)


def _short(root) -> dict:
    base = _base(root)
    base["trainer"].update(limit_train_batches=1, limit_val_batches=1)
    return base


@pytest.mark.slow
def test_trainer_deterministic_in_a_grid_file_reaches_the_trainer(synth_root, tmp_path, trainers):
    """``base.trainer.deterministic: true`` -> ``L.Trainer(deterministic=True)``; and a run
    that does not ask for it, next in the same process (as a worker's next combination), is
    not deterministic by inheritance."""
    base = _short(synth_root)
    base["trainer"]["deterministic"] = True
    grid = {"model.head": ["frame"]}
    run_grid(load_grid(_grid_file(tmp_path, "d", base, grid)), tmp_path, wandb_disabled=True)
    assert trainers == [(True, True)]
    plain = _grid_file(tmp_path, "p", _short(synth_root), grid)
    df = run_grid(load_grid(plain), tmp_path, wandb_disabled=True)
    assert (df["status"] == "done").all()
    assert trainers == [(True, True), (False, False)]


@pytest.mark.slow
def test_trainer_deterministic_from_the_command_line_reaches_the_trainer(
    synth_root, tmp_path, trainers
):
    from affbench.cli import main

    path = _grid_file(tmp_path, "c", _short(synth_root), {"model.head": ["frame"]})
    main(["ablate", str(path), "--results", str(tmp_path / "results"), "--no-wandb",
          "--set", "trainer.deterministic=true"])  # fmt: skip
    assert trainers == [(True, True)]
    df = pd.read_csv(tmp_path / "results" / "c" / "results.csv")
    assert df["trainer.deterministic"].tolist() == [True]
