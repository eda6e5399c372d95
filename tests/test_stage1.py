"""Stage 1 and the two-stage grid: the encoder pretrained on still faces in the AffectNet layout
is what the video side starts from (its weights, its normalisation), never trained twice, and a
grid's combinations all start from the same stage 1."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import torch
from conftest import TINY, tiny_base

from ablations.runner import ResultsStore, run_grid
from core.errors import ConfigError
from core.keys import settings_key
from datamodules.synth_stills import generate_affectnet
from lightning_modules import pretrain as stage1
from lightning_modules.backbone import FrameEncoder, backbone_norm
from lightning_modules.module import AffectModule

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def stills(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("stills") / "affectnet"
    generate_affectnet(root, images=48, val_images=24, seed=1, img_size=64)
    return root


def _settings(stills: Path) -> dict:
    return {
        "model": {"backbone": TINY, "img_size": 64},
        "data": {"root": str(stills), "batch_size": 8, "num_workers": 0},
        "trainer": {"max_epochs": 1, "limit_train_batches": 3, "limit_val_batches": 2},
    }


def test_stage1_writes_the_encoder_the_video_side_starts_from(stills, tmp_path, monkeypatch):
    row = stage1.pretrain(_settings(stills), tmp_path, mode="disabled")
    encoder = Path(row["encoder"])
    assert encoder == stage1.encoder_path(_settings(stills), tmp_path) and encoder.exists()
    assert {"val/expr_f1", "val/va_ccc", "val/score"} <= set(row)
    assert row["train_frames_per_s"] > 0 and row["steps"] == 3
    # the encoder file holds the trained encoder alone: the still-image layers are dropped
    trained = torch.load(row["checkpoint"], weights_only=True)["state_dict"]
    saved = torch.load(encoder, weights_only=True)
    assert saved["stage"] == 1 and saved["hyper_parameters"]["backbone"] == TINY
    assert set(saved["state_dict"]) == {
        k.removeprefix(stage1.PREFIX) for k in trained if k.startswith(stage1.PREFIX)
    }
    # the video model starts from exactly those weights, nothing left over
    video = AffectModule(backbone=TINY, head="gru", seq_len=8, pretrained=str(encoder))
    assert video.encoder.unused_checkpoint_keys == []
    for k, v in video.encoder.model.state_dict().items():
        assert torch.equal(v, trained[stage1.PREFIX + k]), k
    assert video.encoder.freeze == "stem"  # weights loaded: the stem is frozen by default
    # the same settings again: the finished stage 1, not a second training
    monkeypatch.setattr(
        "lightning_modules.experiment.train_and_score",
        lambda *a, **k: pytest.fail("stage 1 trained twice"),
    )
    assert stage1.pretrain(_settings(stills), tmp_path, mode="disabled") == row


def test_a_checkpoint_normalises_as_its_initial_weights_did(tmp_path):
    """A stage 1 started from MIIL's tag (raw pixels: mean 0, std 1): the video side that
    starts from its encoder normalises the same way, two files down the chain."""
    tag = "mobilenetv3_large_100.miil_in21k"
    first = tmp_path / "first.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"init_from": tag}}, first)
    second = tmp_path / "second.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"init_from": str(first)}}, second)
    raw = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    assert backbone_norm("mobilenetv3_large_100", str(second)) == raw
    plain = tmp_path / "plain.pth"  # a state dict says nothing: the backbone's default
    torch.save({}, plain)
    assert backbone_norm("mobilenetv3_large_100", str(plain)) == backbone_norm(
        "mobilenetv3_large_100"
    )


def _two_stage(synth_root, stills: Path, name: str) -> dict:
    base = tiny_base(synth_root)
    base["trainer"].update(limit_train_batches=2, limit_val_batches=2)
    return {
        "name": name,
        "base": base,
        "grid": {"model.head": ["frame", "gru"]},
        "pretrain": _settings(stills),
        "heartbeat": {"interval": 30, "grace": 120},
    }


@pytest.mark.slow
def test_a_two_stage_grid_starts_every_combination_from_one_stage1(
    synth_root, stills, tmp_path, capsys
):
    cfg = _two_stage(synth_root, stills, "two")
    results = tmp_path / "results"
    plan = run_grid(cfg, results, wandb_disabled=True, dry_run=True)
    assert "stage 1 (to run first)" in capsys.readouterr().out and len(plan) == 2
    df = run_grid(cfg, results, wandb_disabled=True)
    encoder = stage1.encoder_path(stage1.grid_stage1(cfg), results / "pretrain")
    assert stage1.grid_stage1(cfg)["model"]["img_size"] == 64  # the section's over the base's
    assert encoder.exists() and list(df["status"]) == ["done", "done"]
    assert set(df["model.pretrained"]) == {str(encoder)}
    study = optuna.load_study(study_name="two", storage=f"sqlite:///{results / 'two' / 'grid.db'}")
    sha = study.user_attrs[f"stage1_sha256:{settings_key(stage1.grid_stage1(cfg))}"]
    # another machine's stage 1 (other bytes): it stops instead of mixing starting points
    state = torch.load(encoder, weights_only=True)
    state["state_dict"] = {k: v + 1 for k, v in state["state_dict"].items()}
    torch.save(state, encoder)
    with pytest.raises(ConfigError, match="is not the one this grid started from"):
        run_grid(cfg, results, wandb_disabled=True, retry_failed=True)
    encoder.unlink()  # and one without the file is told to copy it, before any training
    with pytest.raises(ConfigError, match=f"copy its encoder to {encoder}.*{sha[:12]}"):
        run_grid(cfg, results, wandb_disabled=True)
    # another stage-1 recipe in the same grid: another stage 1 and other combinations, and the
    # table holds those alone (the earlier ones stay in the study)
    cfg["pretrain"]["model"]["dropout"] = 0.1
    capsys.readouterr()
    df = run_grid(cfg, results, wandb_disabled=True)
    other = stage1.encoder_path(stage1.grid_stage1(cfg), results / "pretrain")
    assert other != encoder and other.exists()
    assert list(df["status"]) == ["done", "done"] and set(df["model.pretrained"]) == {str(other)}
    assert set(ResultsStore(results / "two").read()["model.pretrained"]) == {str(other)}
    assert "2 combination(s) in this grid's study were run with other settings" in (
        capsys.readouterr().out
    )
    complete = [t for t in study.get_trials() if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 4


@pytest.mark.slow
def test_affbench_pretrain_writes_synthetic_stills_and_the_encoder(tmp_path):
    root, results = tmp_path / "stills", tmp_path / "results"
    cmd = [sys.executable, "-m", "affbench.cli", "pretrain", "--synth-if-missing", "--no-wandb",
           f"--data.root={root}", f"--results={results}", f"--set=model.backbone={TINY}",
           "--set=trainer.max_epochs=1", "--set=trainer.limit_train_batches=2",
           "--set=trainer.limit_val_batches=2"]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (root / "Manually_Annotated_file_lists" / "training.csv").exists()
    (done,) = results.glob("pretrain/*/stage1.json")
    row = json.loads(done.read_text())
    assert f"encoder: {row['encoder']}" in r.stdout
    assert FrameEncoder(TINY, pretrained=row["encoder"]).unused_checkpoint_keys == []
