import subprocess
import sys

import lightning as L
import numpy as np
import pytest
import timm
import torch

from datamodules.abaw import AbawDataModule
from datamodules.index import read_test_list
from lightning_modules.backbone import FrameEncoder, backbone_norm
from lightning_modules.module import AffectModule
from lightning_modules.objectives import ccc, focal_cross_entropy, task_loss
from lightning_modules.scoring import MONITOR

TINY = "mobilenetv4_conv_small_035"


def _trainer(tmp_path, **kw):
    kw = {"fast_dev_run": 2, **kw}
    return L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        **kw,
    )


def _pair(root, tasks, head="gru", seq_len=8, **model_kw):
    model = AffectModule(
        backbone=TINY, head=head, tasks=tasks, seq_len=seq_len, img_size=112, **model_kw
    )
    data = AbawDataModule(
        root=str(root),
        tasks=tasks,
        seq_len=seq_len,
        batch_size=4,
        num_workers=0,
        mean=model.mean,
        std=model.std,
    )
    return model, data


@pytest.mark.parametrize("tasks", ["va", "expr", "au", "va,expr,au"])
def test_fast_dev_run_fit_validate_predict(synth_root, tmp_path, tasks):
    model, data = _pair(synth_root, tasks, head="mixer3")
    trainer = _trainer(tmp_path)
    trainer.fit(model, data)
    metrics = trainer.validate(model, data, verbose=False)[0]
    names = {"va": "val/va_ccc", "expr": "val/expr_f1", "au": "val/au_f1"}
    for t in tasks.split(","):
        assert np.isfinite(metrics[names[t]])
    assert np.isfinite(metrics[MONITOR])
    preds = trainer.predict(model, data)
    widths = {"va": 2, "expr": 8, "au": 12}
    for t in tasks.split(","):
        p = preds[0]["preds"][t]
        assert p.shape == (4, 8, widths[t])
        if t == "va":
            assert p.abs().max() <= 1
        else:
            assert (p >= 0).all() and (p <= 1).all()


def test_checkpoint_round_trip_needs_nothing_else(synth_root, tmp_path):
    torch.manual_seed(0)
    # start from a local "pretrained" file, then delete it: the checkpoint must not need it
    init = tmp_path / "init.pth"
    torch.save(timm.create_model(TINY, pretrained=False).state_dict(), init)
    model, data = _pair(synth_root, "va,au", head="mixer3", pretrained=str(init), freeze="stem")
    trainer = _trainer(tmp_path, fast_dev_run=False, max_steps=2, limit_val_batches=2)
    trainer.fit(model, data)
    ckpt = tmp_path / "round.ckpt"
    trainer.save_checkpoint(ckpt)
    init.unlink()
    loaded = AffectModule.load_from_checkpoint(ckpt)
    assert loaded.hparams.init_from == str(init) and loaded.hparams.pretrained is None
    batch = data.on_after_batch_transfer(next(iter(data.val_dataloader())), 0)
    model.eval()
    loaded.eval()
    with torch.no_grad():
        a, b = model(batch["frames"]), loaded(batch["frames"])
    for t in ("va", "au"):
        torch.testing.assert_close(a[t], b[t], rtol=0, atol=0)


def test_local_checkpoints_load_or_fail_naming_keys(tmp_path):
    full = timm.create_model(TINY, pretrained=False)
    torch.nn.init.constant_(full.conv_stem.weight, 0.123)
    plain = tmp_path / "imagenet.pth"
    torch.save(full.state_dict(), plain)  # with its classifier: unused, not an error
    enc = FrameEncoder(TINY, pretrained=str(plain))
    assert torch.all(enc.model.conv_stem.weight == 0.123)
    assert any("classifier" in k for k in enc.unused_checkpoint_keys)
    # a Lightning-style file with a prefix
    nested = tmp_path / "lightning.ckpt"
    torch.save(
        {"state_dict": {f"model.encoder.{k}": v for k, v in full.state_dict().items()}}, nested
    )
    assert torch.all(FrameEncoder(TINY, pretrained=str(nested)).model.conv_stem.weight == 0.123)
    # the wrong architecture: missing keys named
    other = tmp_path / "resnet.pth"
    torch.save(timm.create_model("resnet18", pretrained=False).state_dict(), other)
    with pytest.raises(ValueError, match=r"missing keys: conv_stem\.weight"):
        FrameEncoder(TINY, pretrained=str(other))
    # the right keys, a wrong shape: named with both shapes
    bad = full.state_dict()
    bad["conv_stem.weight"] = torch.zeros(8, 3, 3, 3)
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match=r"conv_stem\.weight \(8, 3, 3, 3\) != \(32, 3, 3, 3\)"):
        FrameEncoder(TINY, pretrained=str(tmp_path / "bad.pth"))
    with pytest.raises(FileNotFoundError, match="does not exist .nor timm weights"):
        FrameEncoder(TINY, pretrained=str(tmp_path / "nope.pth"))


@pytest.mark.parametrize("mode", ["none", "stem", "all_but_last", "all"])
def test_freezing(mode):
    enc = FrameEncoder("resnet18", freeze=mode)
    frozen = {n for n, p in enc.model.named_parameters() if not p.requires_grad}
    stem = {"conv1.weight", "bn1.weight", "bn1.bias"}
    last = {n for n, _ in enc.model.named_parameters() if n.startswith("layer4.")}
    everything = {n for n, _ in enc.model.named_parameters()}
    expected = {"none": set(), "stem": stem, "all_but_last": everything - last, "all": everything}[
        mode
    ]
    assert frozen == expected
    enc.train()
    assert enc.model.bn1.training == (mode == "none")  # frozen BatchNorm keeps its statistics
    assert enc.model.layer4[0].bn1.training == (mode != "all")


def test_norm_comes_from_the_backbone_config():
    assert backbone_norm(TINY) == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert backbone_norm("resnet18") == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert AffectModule(backbone=TINY, head="frame", seq_len=4).mean == (0.5, 0.5, 0.5)


def test_losses():
    torch.manual_seed(0)
    logits, target = torch.randn(50, 8), torch.randint(0, 8, (50,))
    # gamma 0 is plain cross-entropy; gamma > 0 weighs confident frames down
    torch.testing.assert_close(
        focal_cross_entropy(logits, target, gamma=0).mean(),
        torch.nn.functional.cross_entropy(logits, target),
    )
    assert (
        focal_cross_entropy(logits, target, gamma=2).mean()
        < focal_cross_entropy(logits, target, gamma=0).mean()
    )
    raw, y = torch.randn(2, 5, 2), torch.rand(2, 5, 2) * 2 - 1
    valid = torch.tensor([[True] * 5, [True, True, False, False, False]])
    loss = task_loss("va", raw, y, valid, "ccc")
    torch.testing.assert_close(loss, 1 - ccc(torch.tanh(raw[valid]), y[valid]).mean())
    # unlabelled frames never reach a loss: changing their targets changes nothing
    y2 = y.clone()
    y2[~valid] = 7.0
    assert task_loss("va", raw, y2, valid, "ccc") == loss
    assert (
        task_loss(
            "au",
            torch.randn(1, 3, 12),
            torch.ones(1, 3, 12),
            torch.zeros(1, 3, dtype=torch.bool),
            "focal",
        )
        == 0
    )
    with pytest.raises(ValueError, match="va loss must be one of"):
        task_loss("va", raw, y, valid, "focal")


def test_submission_has_a_row_for_every_listed_frame(synth_root, tmp_path):
    from lightning_modules.submission import write_submission

    model, data = _pair(synth_root, "va,expr,au", head="frame")
    trainer = _trainer(tmp_path, fast_dev_run=False, limit_predict_batches=None)
    outputs = trainer.predict(model, data)
    paths = write_submission(outputs, data.test_list_file(), tmp_path / "sub", model.tasks)
    listed = read_test_list(data.test_list_file())
    assert [p.parent.name for p in paths] == [
        "VA_Estimation_Challenge",
        "EXPR_Recognition_Challenge",
        "AU_Detection_Challenge",
    ]
    for p in paths:
        lines = p.read_text().splitlines()
        assert lines[0].startswith("image_location,")
        assert len(lines) - 1 == len(listed)
        assert lines[1].split(",")[0] == f"{listed['video'][0]}/{listed['frame'][0]:05d}.jpg"
    expr = [int(r.split(",")[1]) for r in paths[1].read_text().splitlines()[1:]]
    assert set(expr) <= set(range(8)) and len(paths[1].read_text().splitlines()[1].split(",")) == 2
    au = [r.split(",")[1:] for r in paths[2].read_text().splitlines()[1:]]
    assert all(len(r) == 12 and set(r) <= {"0", "1"} for r in au)


def test_cli_fit_and_one_line_errors(synth_root, tmp_path):
    base = [sys.executable, "-m", "affbench.cli"]
    ok = subprocess.run(
        [
            *base,
            "fit",
            f"--model.backbone={TINY}",
            "--model.head=mixer1",
            "--model.seq_len=8",
            "--model.tasks=va",
            f"--data.root={synth_root}",
            "--data.num_workers=0",
            "--trainer.fast_dev_run=1",
            f"--trainer.default_root_dir={tmp_path}",
            "--trainer.logger=false",
        ],
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0, ok.stderr[-2000:]
    for flag, words in (
        ("--model.backbone=mobilenetv9", "unknown backbone 'mobilenetv9'"),
        ("--model.head=lstm", "unknown head 'lstm'; heads are: frame, mean, gru"),
    ):
        r = subprocess.run(
            [*base, "fit", flag, f"--data.root={synth_root}"], capture_output=True, text=True
        )
        assert r.returncode == 2
        assert r.stderr.strip().splitlines()[-1].startswith("affbench: error: " + words)
        assert "Traceback" not in r.stderr


@pytest.mark.slow
def test_ddp_scores_every_frame_once(synth_root, tmp_path):
    """Validation on two gloo processes gives the single-process measures: predictions are
    gathered across ranks and merged per frame (overlapping windows and the sampler's repeats)."""
    import json
    from pathlib import Path

    model, data = _pair(synth_root, "va,expr,au", head="gru")
    trainer = _trainer(tmp_path, fast_dev_run=False, max_steps=2, limit_val_batches=1)
    trainer.fit(model, data)
    ckpt = tmp_path / "m.ckpt"
    trainer.save_checkpoint(ckpt)
    script = Path(__file__).with_name("ddp_validate.py")
    results = []
    for devices in (1, 2):
        out = tmp_path / f"m{devices}.json"
        r = subprocess.run(
            [sys.executable, str(script), str(synth_root), str(ckpt), str(out), str(devices)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert r.returncode == 0, r.stderr[-3000:]
        results.append(json.loads(out.read_text()))
    single, ddp = results
    assert single["world_size"] == 1 and ddp["world_size"] == 2
    for k in ("val/va_ccc", "val/expr_f1", "val/au_f1", "val/score"):
        assert ddp[k] == pytest.approx(single[k], abs=1e-6), k


def test_cli_config_links_and_submission(synth_root, tmp_path):
    from lightning_modules.cli import AffbenchCLI

    cli = AffbenchCLI(
        AffectModule,
        AbawDataModule,
        run=False,
        args=[
            "--config=lightning_modules/configs/paper_mixer3.yaml",
            f"--data.root={synth_root}",
            f"--trainer.default_root_dir={tmp_path}",
        ],
    )
    # the data follows the model: tasks, T, size and the backbone's own normalisation
    data = cli.datamodule.hparams
    assert (data.seq_len, data.img_size, data.tasks) == (32, 224, "va")
    assert tuple(data.mean) == backbone_norm("mobilenetv4_conv_small")[0] == cli.model.mean
    assert data.per_frame_augment and cli.model.hparams.scheduler == "cosine_restarts"
    monitors = {c.monitor for c in cli.trainer.callbacks if hasattr(c, "monitor")}
    assert monitors == {MONITOR}
    base = [sys.executable, "-m", "affbench.cli"]
    out = tmp_path / "sub"
    r = subprocess.run(
        [
            *base,
            "predict",
            f"--model.backbone={TINY}",
            "--model.head=frame",
            "--model.seq_len=8",
            "--model.tasks=va,au",
            f"--data.root={synth_root}",
            "--data.num_workers=0",
            f"--trainer.default_root_dir={tmp_path}",
            "--trainer.logger=false",
            f"--submission={out}",
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    rows = (out / "VA_Estimation_Challenge" / "predictions.txt").read_text().splitlines()
    assert rows[0] == "image_location,valence,arousal"
    assert len(rows) - 1 == len(
        read_test_list(synth_root / "test_set_examples" / "VA_test_set_example.txt")
    )
    assert (out / "AU_Detection_Challenge" / "predictions.txt").exists()


def test_listed_frames_without_prediction_take_the_nearest():
    from lightning_modules.scoring import FRAME_SPAN, video_hash
    from lightning_modules.submission import lookup_nearest

    a, b = video_hash("a") * FRAME_SPAN, video_hash("b") * FRAME_SPAN
    uniq = torch.tensor(sorted([a + 2, a + 6, b + 10]))
    wanted = torch.tensor(
        [a + 1, a + 2, a + 4, a + 5, a + 9, b + 1, video_hash("c") * FRAME_SPAN + 1]
    )
    got = [int(uniq[i]) if i >= 0 else -1 for i in lookup_nearest(uniq, wanted).tolist()]
    assert got == [a + 2, a + 2, a + 2, a + 6, a + 6, b + 10, -1]  # frame 4: a tie, the earlier


def test_settings_that_would_be_silently_wrong_are_errors():
    from core.errors import ConfigError

    with pytest.raises(ConfigError, match=r"task_weights names unknown task\(s\) aus"):
        AffectModule(backbone=TINY, head="frame", tasks="va,au", task_weights={"aus": 2.0})
    with pytest.raises(ConfigError, match=r"dropout must be in \[0, 1\), got 1.5"):
        AffectModule(backbone=TINY, head="frame", dropout=1.5)


def test_pretrained_files_torch_cannot_read_are_config_errors(tmp_path):
    from core.errors import ConfigError

    pickled = tmp_path / "whole_model.pt"
    torch.save(torch.nn.Linear(2, 2), pickled)  # the module object, not its state dict
    with pytest.raises(ConfigError, match=f"pretrained {pickled} holds pickled Python objects"):
        FrameEncoder(TINY, pretrained=str(pickled))
    for name, data in (("empty.pth", b""), ("notes.pth", b"lr 1e-3\n"), ("w.safetensors", b"x")):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ConfigError, match=f"pretrained {tmp_path / name} is not a PyTorch"):
            FrameEncoder(TINY, pretrained=str(tmp_path / name))
