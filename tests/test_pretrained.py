"""Pretrained weights the way users get them: ``pretrained: timm`` (or a timm tag) through timm and
the Hugging Face hub cache, offline here. Each test writes its own cache in the hub's real layout
(a randomly initialised model saved as the tag's safetensors file) into a temporary ``HF_HOME``
and runs the loading in a fresh process with ``HF_HUB_OFFLINE=1``: nothing goes online."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file

from core.errors import ConfigError
from lightning_modules.backbone import FrameEncoder, backbone_norm, timm_tag

REPO = Path(__file__).resolve().parents[1]
CONV_S = "mobilenetv4_conv_small"
TAG = f"{CONV_S}.e2400_r224_in1k"  # Conv-S's default tag: what ``pretrained: timm`` loads
COMMIT = "4" * 40


def write_hub_cache(hf_home: Path, tag: str, seed: int = 0) -> Path:
    """A hub cache holding ``timm/<tag>`` as the hub lays it out: ``refs/main`` names a snapshot,
    the snapshot holds ``model.safetensors``. Its weights are a random model's (drawn with
    ``seed``, so they differ from any other init); returns the safetensors file."""
    torch.manual_seed(seed)
    model = timm.create_model(tag, pretrained=False)
    repo = hf_home / "hub" / f"models--timm--{tag}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    path = snapshot / "model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def run_offline(hf_home: Path, code: str) -> subprocess.CompletedProcess:
    """``code`` in a fresh Python with the cache at ``hf_home`` and the hub offline."""
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    env.pop("HF_HUB_CACHE", None)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_pretrained_timm_loads_the_tag_from_the_hub_cache_offline(tmp_path):
    weights = write_hub_cache(tmp_path / "hf", TAG, seed=7)
    out = tmp_path / "encoder.pt"
    r = run_offline(
        tmp_path / "hf",
        f"""
        import torch
        from lightning_modules.module import AffectModule
        m = AffectModule(backbone="{CONV_S}", pretrained="timm", head="frame", seq_len=4,
                         img_size=64)
        frozen = sorted(n for n, p in m.encoder.model.named_parameters() if not p.requires_grad)
        torch.save({{"state": m.encoder.model.state_dict(), "freeze": m.encoder.freeze,
                    "frozen": frozen, "mean": m.mean, "std": m.std}}, "{out}")
        """,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    got = torch.load(out)
    saved = load_file(str(weights))
    assert got["state"], "no weights"
    for k, v in got["state"].items():  # every tensor of the encoder is the cached file's
        assert torch.equal(v, saved[k]), k
    assert got["freeze"] == "stem" and got["frozen"]  # with weights the stem is frozen
    assert all(n.startswith(("conv_stem", "bn1")) for n in got["frozen"])
    cfg = timm.data.resolve_model_data_config(timm.create_model(TAG, pretrained=False))
    assert (got["mean"], got["std"]) == (tuple(cfg["mean"]), tuple(cfg["std"]))


def test_weights_in_neither_the_cache_nor_online_are_one_line_naming_both(tmp_path):
    write_hub_cache(tmp_path / "hf", TAG)  # Conv-S cached: ResNet-18 is not
    r = run_offline(
        tmp_path / "hf",
        """
        from lightning_modules.backbone import FrameEncoder
        FrameEncoder("resnet18", pretrained="timm")
        """,
    )
    assert r.returncode != 0
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("core.errors.ConfigError: timm weights resnet18.a1_in1k are not in")
    assert str(tmp_path / "hf" / "hub") in last and "HF_HOME" in last


def test_a_tag_normalises_as_its_weights_do():
    """A tag's own mean and std, as timm resolves them for a model built with it (MIIL's
    ImageNet-21k MobileNetV3 takes raw [0, 1] pixels: mean 0, std 1)."""
    for tag in ("mobilenetv3_large_100.miil_in21k", "mobilenetv3_large_100.ra_in1k", TAG):
        cfg = timm.data.resolve_model_data_config(timm.create_model(tag, pretrained=False))
        backbone = tag.split(".")[0]
        assert backbone_norm(backbone, tag) == (tuple(cfg["mean"]), tuple(cfg["std"]))
    assert backbone_norm("mobilenetv3_large_100", "mobilenetv3_large_100.miil_in21k") == (
        (0.0, 0.0, 0.0),
        (1.0, 1.0, 1.0),
    )
    # "timm" is the default tag; no weights: the backbone's default config
    assert backbone_norm(CONV_S, "timm") == backbone_norm(CONV_S, TAG) == backbone_norm(CONV_S)


def test_the_cli_loads_a_tag_and_normalises_the_data_as_it_says(tmp_path, synth_root):
    """``affbench fit --model.pretrained <tag>``: the tag's weights, the data normalised with its
    mean and std (MIIL's: 0 and 1, not ImageNet's); a checkpoint of that model, loaded without
    the hub, keeps both the normalisation and the frozen stem."""
    tag = "mobilenetv3_large_100.miil_in21k"
    weights = write_hub_cache(tmp_path / "hf", tag, seed=3)
    out = tmp_path / "out.pt"
    r = run_offline(
        tmp_path / "hf",
        f"""
        import torch
        from datamodules.abaw import AbawDataModule
        from lightning_modules.cli import AffbenchCLI
        from lightning_modules.module import AffectModule
        cli = AffbenchCLI(AffectModule, AbawDataModule, run=False, args=[
            "--model.backbone=mobilenetv3_large_100", "--model.pretrained={tag}",
            "--model.head=frame", "--model.seq_len=4", "--data.root={synth_root}",
            "--trainer.default_root_dir={tmp_path}", "--trainer.logger=false"])
        m = cli.model
        ckpt = {{"hyper_parameters": dict(m.hparams)}}
        m.on_save_checkpoint(ckpt)  # what a checkpoint keeps: no hub needed to load it
        hp = {{k: v for k, v in ckpt["hyper_parameters"].items() if not k.startswith("_")}}
        again = AffectModule(**hp)
        data = cli.datamodule.hparams
        torch.save({{"data": (tuple(data.mean), tuple(data.std)),
                    "model": (m.mean, m.std), "again": (again.mean, again.std),
                    "freeze": again.encoder.freeze, "init_from": again.hparams.init_from,
                    "state": m.encoder.model.state_dict()}}, "{out}")
        """,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    got = torch.load(out)
    raw = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    assert got["data"] == got["model"] == got["again"] == raw
    assert got["freeze"] == "stem" and got["init_from"] == tag
    saved = load_file(str(weights))
    assert all(torch.equal(v, saved[k]) for k, v in got["state"].items())


def test_timm_names_are_checked():
    assert timm_tag(CONV_S, "timm") == timm_tag(CONV_S, True) == TAG
    assert timm_tag(CONV_S, f"{CONV_S}.e3600_r256_in1k") == f"{CONV_S}.e3600_r256_in1k"
    assert timm_tag(CONV_S, None) is None
    assert timm_tag(CONV_S, "runs/best.ckpt") is None  # a file name: the file reader's
    with pytest.raises(ConfigError, match="weights of another backbone than mobilenetv4_conv_s"):
        timm_tag(CONV_S, "resnet18.a1_in1k")
    with pytest.raises(
        ConfigError, match="timm publishes no weights for mobilenetv4_conv_small_035"
    ):
        timm_tag("mobilenetv4_conv_small_035", "timm")


def test_freeze_follows_the_weights(tmp_path):
    """No frozen random stem by default; with weights (here a local file) the stem is frozen;
    an explicit freeze wins either way."""
    tiny = "mobilenetv4_conv_small_035"
    assert FrameEncoder(tiny).frozen == [] and FrameEncoder(tiny).freeze == "none"
    init = tmp_path / "init.pth"
    torch.save(timm.create_model(tiny, pretrained=False).state_dict(), init)
    enc = FrameEncoder(tiny, pretrained=str(init))
    assert enc.freeze == "stem" and {n.split(".")[0] for n in enc.frozen} == {"conv_stem", "bn1"}
    assert FrameEncoder(tiny, pretrained=str(init), freeze="none").frozen == []
    assert FrameEncoder(tiny, freeze="all").freeze == "all"
