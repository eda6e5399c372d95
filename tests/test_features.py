"""The feature cache of a frozen encoder: what it holds, that training on it is training the same
model, and that a changed frame or weights file is never read from a stale cache."""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from conftest import TINY, frame_jpeg, va_text, write_tree

from core.errors import ConfigError, DataError
from datamodules.abaw import AbawDataModule
from datamodules.augment import normalize_frames
from datamodules.features import FeatureCache, FeatureDataset, parts_for
from datamodules.tasks import SPLITS
from lightning_modules.backbone import FrameEncoder
from lightning_modules.experiment import build, trainer_kwargs

IMG = 64
REPO = Path(__file__).resolve().parents[1]


def _data(root, **kw) -> AbawDataModule:
    return AbawDataModule(
        root=str(root), seq_len=8, img_size=IMG, batch_size=4, num_workers=0, augment=False, **kw
    )


def _encode(encoder: FrameEncoder, dm: AbawDataModule, frames: torch.Tensor):
    """uint8 (T, 3, H, W) -> ([(T, C_i, h_i, w_i)], (T, C)) of the encoder in eval mode."""
    with torch.no_grad():
        maps, pooled = encoder.eval()(
            normalize_frames(frames, dm.hparams.mean, dm.hparams.std)[None]
        )
    return [m[0] for m in maps], pooled[0]


def _close(cached: torch.Tensor, exact: torch.Tensor) -> None:
    # fp16 keeps 11 significant bits: a relative error of 2**-11 of each value's magnitude
    scale = exact.abs().max().item()
    torch.testing.assert_close(cached.float(), exact, rtol=2e-3, atol=1e-3 * scale)


def test_cached_features_equal_the_encoders_outputs_on_the_same_frames(synth_root):
    torch.manual_seed(0)
    encoder = FrameEncoder(TINY, img_size=IMG, freeze="all")
    cached_dm, pixel_dm = _data(synth_root), _data(synth_root, features="off")
    cached_dm.attach_encoder(encoder, maps_used=3)
    cached_dm.setup("fit")
    pixel_dm.setup("fit")
    cached, pixels = cached_dm.datasets["val"], pixel_dm.datasets["val"]
    assert isinstance(cached, FeatureDataset) and len(cached) == len(pixels) > 2
    filled = 0
    for i in sorted({0, len(cached) // 2, len(cached) - 1}):  # the last window is padded
        a, b = cached[i], pixels[i]
        assert a["video"] == b["video"] and torch.equal(a["frame"], b["frame"])
        assert torch.equal(a["pad"], b["pad"]) and torch.equal(a["filled"], b["filled"])
        filled += int(a["filled"].sum())
        maps, pooled = _encode(encoder, pixel_dm, b["frames"])
        _close(a["features"]["pooled"], pooled)
        for k, m in enumerate(maps):
            _close(a["features"][f"tap{k}"], m)
    # the synthetic videos drop frames: some of these were filled from a neighbour
    assert filled > 0 or not pixels.index.has_image.all()


def _first_loss(settings: dict) -> float:
    class First(L.Callback):
        loss = None

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            First.loss = First.loss if First.loss is not None else float(outputs["loss"])

    L.seed_everything(0)
    model, data = build(settings)
    before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    kw = trainer_kwargs(settings, max_steps=1, logger=False, enable_checkpointing=False)
    L.Trainer(callbacks=[First()], **kw).fit(model, data)
    # frozen means frozen: weights and BatchNorm statistics alike, also when the encoder runs
    after = model.encoder.state_dict()
    assert [k for k, v in before.items() if not torch.equal(v, after[k])] == []
    return First.loss


@pytest.mark.parametrize("head", ["gru", "mixer3"])
def test_a_head_on_cached_features_takes_the_end_to_end_first_step(synth_root, head):
    """Same frozen encoder (random, seeded), same clips, same head init: the first training
    step's loss is the same whether the encoder runs or its cache is read."""
    settings = {
        "model": {"backbone": TINY, "head": head, "seq_len": 8, "img_size": IMG,
                  "freeze": "all", "dropout": 0.0},
        "data": {"root": str(synth_root), "batch_size": 4, "num_workers": 0, "augment": False},
        "seed": 0,
    }  # fmt: skip
    end_to_end = _first_loss({**settings, "data": {**settings["data"], "features": "off"}})
    cached = _first_loss(settings)
    assert cached == pytest.approx(end_to_end, rel=2e-3)
    assert end_to_end > 0.05  # a real loss, not a constant


def _small_tree(root):
    """One training video of 20 frames with frame 5 missing, and one validation video."""
    return write_tree(
        root,
        {"a": [f for f in range(1, 21) if f != 5], "b": list(range(1, 13))},
        {
            ("va", SPLITS[0], "a"): va_text([(0.1 * (f % 5), -0.1) for f in range(22)]),
            ("va", SPLITS[1], "b"): va_text([(0.2, 0.3)] * 12),
        },
    )


def test_a_changed_frame_recomputes_its_video_only(tmp_path):
    root = _small_tree(tmp_path / "data")
    torch.manual_seed(0)
    encoder = FrameEncoder(TINY, img_size=IMG, freeze="all")
    dm = _data(root)
    dm.attach_encoder(encoder)
    dm.setup("fit")
    cache, parts = dm.feature_cache()
    assert parts == ["pooled"]
    index = dm.indexes[SPLITS[0]]
    assert cache.missing(index, parts) == {}
    before = np.array(cache.open("a", "pooled"))
    assert before.shape[0] == 20  # the last image is frame 20
    np.testing.assert_array_equal(before[4], before[3])  # frame 5 takes frame 4's features

    frame3 = root / "cropped_aligned" / "a" / "00003.jpg"
    frame3.write_bytes(frame_jpeg(200))
    st = frame3.stat()
    os.utime(frame3, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert cache.missing(index, parts) == {0: ["pooled"]}
    assert cache.missing(dm.indexes[SPLITS[1]], parts) == {}

    got = dm.ensure_features(index, progress=False)
    assert got["frames"] == 19  # the video's images, again
    after = np.array(cache.open("a", "pooled"))
    changed = np.flatnonzero(np.abs(after - before).max(axis=1) > 0)
    assert changed.tolist() == [2]
    from datamodules.dataset import decode_frame

    img = decode_frame(frame3)
    from datamodules.augment import ClipTransform

    _, pooled = _encode(encoder, dm, ClipTransform(IMG)(img[None]))
    _close(torch.from_numpy(after[2:3]), pooled)


def test_a_changed_weights_file_is_another_cache_and_only_mode_says_what_is_missing(tmp_path):
    root = _small_tree(tmp_path / "data")
    torch.manual_seed(0)
    weights = tmp_path / "encoder.pt"
    torch.save(FrameEncoder(TINY, img_size=IMG).model.state_dict(), weights)

    def cache_of(path) -> FeatureCache:
        enc = FrameEncoder(TINY, img_size=IMG, pretrained=str(path), freeze="all")
        dm = _data(root)
        dm.attach_encoder(enc)
        dm.setup("fit")
        return dm.feature_cache()[0]

    first = cache_of(weights)
    assert cache_of(weights).folder == first.folder  # same file: the same cache
    state = torch.load(weights)
    key = next(k for k, v in state.items() if v.is_floating_point())
    state[key] = state[key] + 0.01
    torch.save(state, weights)
    enc = FrameEncoder(TINY, img_size=IMG, pretrained=str(weights), freeze="all")
    dm = _data(root, features="only")
    dm.attach_encoder(enc)
    assert dm.feature_cache()[0].folder != first.folder
    with pytest.raises(ConfigError, match=r"lacks pooled for 1 video\(s\) of Train_Set"):
        dm.setup("fit")


def test_a_head_reading_taps_the_cache_lacks_says_so(tmp_path):
    root = _small_tree(tmp_path / "data")
    torch.manual_seed(0)
    encoder = FrameEncoder(TINY, img_size=IMG, freeze="all")
    dm = _data(root)
    dm.attach_encoder(encoder, maps_used=0)
    dm.setup("fit")  # pooled only
    mixer = _data(root, features="only")
    mixer.attach_encoder(encoder, maps_used=3)
    assert mixer.feature_cache()[1] == parts_for(3, 3) == ["pooled", "tap0", "tap1", "tap2"]
    with pytest.raises(ConfigError, match="lacks tap0, tap1, tap2 for 1 video"):
        mixer.setup("fit")


def test_features_only_needs_a_frozen_encoder(tmp_path):
    root = _small_tree(tmp_path / "data")
    settings = {
        "model": {"backbone": TINY, "head": "frame", "seq_len": 8, "img_size": IMG},
        "data": {"root": str(root), "batch_size": 4, "num_workers": 0, "features": "only"},
    }
    model, data = build(settings)
    trainer = L.Trainer(**trainer_kwargs(settings, max_steps=1, logger=False))
    with pytest.raises(ConfigError, match="model.freeze: all"):
        trainer.fit(model, data)


def test_a_frozen_stem_keeps_its_batchnorm_statistics_in_a_trainer_fit(synth_root):
    """Lightning keeps the train/eval modes it finds: the encoder must start with its frozen
    stages' BatchNorm in eval mode, or their running statistics drift while their weights stay."""
    settings = {
        "model": {"backbone": TINY, "head": "frame", "seq_len": 8, "img_size": IMG,
                  "freeze": "stem"},
        "data": {"root": str(synth_root), "batch_size": 4, "num_workers": 0},
        "seed": 0,
    }  # fmt: skip
    model, data = build(settings)
    frozen = {n.rsplit(".", 1)[0] for n in model.encoder.frozen}
    state = model.encoder.model.state_dict()
    stem = {k: v.clone() for k, v in state.items() if k.rsplit(".", 1)[0] in frozen}
    rest = {k: v.clone() for k, v in state.items() if k.endswith("running_mean") and k not in stem}
    assert any(k.endswith("running_mean") for k in stem) and rest
    kw = trainer_kwargs(settings, max_steps=2, logger=False, enable_checkpointing=False)
    L.Trainer(**kw).fit(model, data)
    after = model.encoder.model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in stem.items())
    assert not all(torch.equal(v, after[k]) for k, v in rest.items())  # the trained BNs moved


def _affbench(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "affbench.cli", *args]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return r


@pytest.mark.slow
def test_a_frozen_two_stage_grid_and_sweep_share_stage1_and_features(synth_root, tmp_path):
    """``features extract`` fills the cache for the grid's heads (the Mixer's tap included),
    the grid trains on it without extracting again, and a sweep with the same stage 1 finds it."""
    import yaml

    from datamodules.synth_stills import generate_affectnet

    stills, results = tmp_path / "stills", tmp_path / "results"
    generate_affectnet(stills, images=48, val_images=24, seed=1, img_size=64)
    short = {"max_epochs": 1, "limit_train_batches": 2, "limit_val_batches": 2}
    common = {
        "pretrain": {"data": {"root": str(stills), "batch_size": 8, "num_workers": 0},
                     "trainer": short},
        "base": {"model": {"backbone": TINY, "tasks": "va", "seq_len": 8, "img_size": IMG,
                           "freeze": "all"},
                 "data": {"root": str(synth_root), "batch_size": 4, "num_workers": 0},
                 "trainer": {**short, "limit_test_batches": 1}},
    }  # fmt: skip
    grid, sweep = tmp_path / "grid.yaml", tmp_path / "sweep.yaml"
    grid.write_text(yaml.safe_dump({"name": "g", **common,
                                    "grid": {"model.head": ["frame", "mixer1"]}}))  # fmt: skip
    sweep.write_text(yaml.safe_dump({
        "name": "s", **common, "n_trials": 2, "sampler": {"name": "random", "seed": 0},
        "space": {"model.head": {"choices": ["frame", "gru"]},
                  "model.lr": {"float": [1e-4, 1e-3], "log": True}},
    }))  # fmt: skip
    out = _affbench("features", "extract", str(grid), f"--results={results}", "--no-wandb",
                    "--format=csv").stdout  # fmt: skip
    assert "taps 2" in out and "GB per 1,000 frames" in out  # the cost, before extraction
    rows = list(csv.DictReader(io.StringIO(out[out.index("backbone,") :])))
    assert {r["split"] for r in rows} >= set(SPLITS)
    extracted = [(r["split"], int(r["frames_extracted"]), r["parts"]) for r in rows]
    assert all(n > 0 and parts == "pooled,tap2" for _, n, parts in extracted), extracted
    info = _affbench("features", "info", "--format=csv").stdout
    (cached,) = list(csv.DictReader(io.StringIO(info[info.index("folder,") :].split("total")[0])))
    assert cached["backbone"] == TINY and cached["parts"] == "pooled,tap2"
    files = sorted(Path(os.environ["AFFBENCH_CACHE"], "features").rglob("*.npy"))
    stamps = [p.stat().st_mtime_ns for p in files]

    done = _affbench("ablate", str(grid), f"--results={results}", "--no-wandb").stdout
    assert "g: 2 done, 0 failed" in done
    assert [p.stat().st_mtime_ns for p in files] == stamps  # read, not written again
    swept = _affbench("sweep", str(sweep), f"--results={results}", "--no-wandb",
                      f"--studies={tmp_path / 'studies'}").stdout  # fmt: skip
    assert "stage 1 (done)" in swept and "2 finished" in swept
    assert len(list((results / "pretrain").glob("*/encoder.ckpt"))) == 1
    assert [p.stat().st_mtime_ns for p in files] == stamps


def test_a_damaged_cache_file_is_extracted_again_and_named_when_read(tmp_path):
    root = _small_tree(tmp_path / "data")
    torch.manual_seed(0)
    dm = _data(root)
    dm.attach_encoder(FrameEncoder(TINY, img_size=IMG, freeze="all"))
    dm.setup("fit")
    cache, parts = dm.feature_cache()
    index = dm.indexes[SPLITS[0]]
    good = np.array(cache.open("a", "pooled"))
    path = cache.video_dir("a") / "pooled.npy"
    path.write_bytes(path.read_bytes()[:200])  # truncated (a full disk, a killed copy)
    with pytest.raises(DataError, match=f"cached features {path} cannot be read"):
        cache.open("a", "pooled")
    assert cache.missing(index, parts) == {0: ["pooled"]}
    assert dm.ensure_features(index, progress=False)["frames"] == 19
    np.testing.assert_array_equal(np.array(cache.open("a", "pooled")), good)
