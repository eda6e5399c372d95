import logging

import numpy as np
import pytest
import torch
from conftest import frame_level, va_text, write_tree

from datamodules.abaw import AbawDataModule
from datamodules.augment import AugmentConfig, ClipTransform, normalize_frames
from datamodules.clips import eval_windows
from datamodules.dataset import ClipDataset
from datamodules.index import build_index

TR, VAL = "Train_Set", "Validation_Set"


def test_corrupt_jpeg_is_replaced_counted_and_labels_stay(tmp_path):
    va = [(0.1 * k, 0.0) for k in range(1, 7)]
    root = write_tree(tmp_path, {"v": [1, 2, 3, 4, 5, 6]}, {("va", TR, "v"): va_text(va)})
    (root / "cropped_aligned" / "v" / "00003.jpg").write_bytes(b"\xff\xd8 definitely not a jpeg")
    jpeg = (root / "cropped_aligned" / "v" / "00004.jpg").read_bytes()
    (root / "cropped_aligned" / "v" / "00004.jpg").write_bytes(jpeg[: len(jpeg) // 2])  # truncated
    idx = build_index(root, TR)
    ds = ClipDataset(idx, eval_windows(idx, 6, 6), ("va",), 6, ClipTransform(16))
    s = ds[0]
    assert s["corrupt"].tolist() == [False, False, True, True, False, False]
    assert s["filled"].tolist() == s["corrupt"].tolist()
    assert sorted(p.rsplit("/", 1)[1] for p in s["bad_files"]) == ["00003.jpg", "00004.jpg"]
    levels = s["frames"].float().mean(dim=(1, 2, 3)).tolist()
    # frame 3 takes frame 2 (nearest readable, earlier on a tie), frame 4 takes frame 5
    assert levels == pytest.approx([frame_level(f) for f in (1, 2, 2, 5, 5, 6)], abs=2)
    np.testing.assert_allclose(s["targets"]["va"][:, 0], [0.1 * k for k in range(1, 7)], atol=1e-6)
    assert s["valid"]["va"].all()
    # known-bad files are not retried (and not reported twice) by the same worker
    assert ds[0]["bad_files"] == []


def test_a_crop_of_another_size_joins_its_clip(tmp_path):
    import io

    from PIL import Image

    root = write_tree(tmp_path, {"v": [1, 2, 3]}, {("va", TR, "v"): va_text([(0.1, 0.1)] * 3)})
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (90, 90, 90)).save(buf, "JPEG")
    (root / "cropped_aligned" / "v" / "00002.jpg").write_bytes(buf.getvalue())
    idx = build_index(root, TR)
    s = ClipDataset(idx, eval_windows(idx, 3, 3), ("va",), 3, ClipTransform(16))[0]
    assert s["frames"].shape == (3, 3, 16, 16)
    assert s["frames"][1].float().mean().item() == pytest.approx(90, abs=3)


def test_augmentation_is_the_same_for_every_frame_unless_per_frame():
    torch.manual_seed(0)
    clip = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    clip[:] = clip[0]  # eight identical frames
    aug = AugmentConfig(hflip=0.5, color_jitter=0.4, color_jitter_p=1.0, erasing=1.0, blur=0.5)
    out = ClipTransform(32, augment=aug)(clip)
    assert out.shape == (8, 3, 32, 32)
    assert out.dtype == torch.uint8 and torch.equal(out, out[0].expand_as(out))
    assert not torch.equal(out, clip)  # and it did change the frames
    aug.per_frame = True
    out = ClipTransform(32, augment=aug)(clip)
    assert not torch.equal(out, out[0].expand_as(out))


def test_resize_and_normalise():
    clip = torch.full((2, 3, 112, 112), 255, dtype=torch.uint8)
    clip[:, 1] = 0
    out = ClipTransform(224)(clip)
    assert out.shape == (2, 3, 224, 224) and out.dtype == torch.uint8
    x = normalize_frames(out[None], (0.5, 0.5, 0.25), (0.25, 0.5, 0.5))
    assert x.shape == (1, 2, 3, 224, 224) and x.dtype == torch.float32
    torch.testing.assert_close(x[0, :, :, 0, 0], torch.tensor([[2.0, -1.0, 1.5]] * 2))


def test_datamodule_with_workers_reports_corrupt_frames(tmp_path):
    va = [(0.05 * k, -0.05 * k) for k in range(1, 17)]
    root = write_tree(
        tmp_path,
        {"a": list(range(1, 17)), "b": list(range(1, 17))},
        {("va", TR, "a"): va_text(va), ("va", VAL, "b"): va_text(va)},
    )
    (root / "cropped_aligned" / "b" / "00007.jpg").write_bytes(b"junk")
    dm = AbawDataModule(
        root=str(root), tasks="va", seq_len=4, img_size=16, batch_size=2, num_workers=2
    )
    dm.prepare_data()
    dm.setup("fit")
    train = list(dm.train_dataloader())
    assert sum(b["frames"].shape[0] for b in train) == 4
    batches = [
        dm.on_after_batch_transfer(dm.on_before_batch_transfer(b, 0), 0)
        for b in dm.val_dataloader()
    ]
    assert [f for b in batches for f in b["frame"].flatten().tolist()] == list(range(1, 17))
    assert batches[0]["frames"].dtype == torch.float32  # normalised once on its device
    assert batches[0]["frames"].shape == (2, 4, 3, 16, 16)
    assert list(dm.bad_files) == [str(root / "cropped_aligned" / "b" / "00007.jpg")]


def test_datamodule_test_split_covers_the_test_list(synth_root):
    dm = AbawDataModule(root=str(synth_root), tasks="va,expr,au", seq_len=8, num_workers=0)
    dm.setup("test")
    ds = dm.datasets["test"]
    listed = ds.index.listed
    seen = np.zeros(len(ds.index), bool)
    for b in dm.test_dataloader():
        for video, frames, pad in zip(b["video"], b["frame"], b["pad"], strict=True):
            v = ds.index.videos.index(video)
            seen[ds.index.start[v] + frames[~pad].numpy() - 1] = True
    assert (seen[listed]).all()
    # the synthetic test videos carry their labels (Test_Set): test can be scored
    assert ds.index.valid["va"].sum() > 0


def test_unknown_task_and_bad_stride_are_clear():
    with pytest.raises(ValueError, match="tasks are: va, expr, au"):
        AbawDataModule(tasks="va,emotion")
    with pytest.raises(ValueError, match="stride"):
        AbawDataModule(seq_len=4, stride=8)


def test_zero_byte_jpeg_is_replaced_counted_and_named_once(tmp_path, caplog):
    va = [(0.1 * k, 0.0) for k in range(1, 9)]
    root = write_tree(
        tmp_path,
        {"a": list(range(1, 9)), "b": list(range(1, 9))},
        {("va", TR, "a"): va_text(va), ("va", VAL, "b"): va_text(va)},
    )
    empty = root / "cropped_aligned" / "b" / "00004.jpg"
    empty.write_bytes(b"")
    dm = AbawDataModule(
        root=str(root), tasks="va", seq_len=8, img_size=16, batch_size=1, num_workers=0
    )
    dm.setup("fit")
    caplog.set_level(logging.DEBUG)
    for _ in range(2):  # two passes: the file is named once, counted each time it is met
        (batch,) = [dm.on_before_batch_transfer(b, 0) for b in dm.val_dataloader()]
        assert batch["corrupt"][0].tolist() == [k == 4 for k in range(1, 9)]
        levels = batch["frames"][0].float().mean(dim=(1, 2, 3)).tolist()
        # frame 4 takes frame 3 (as near as frame 5: the earlier wins); its label stays
        assert levels == pytest.approx([frame_level(f) for f in (1, 2, 3, 3, 5, 6, 7, 8)], abs=2)
        assert batch["targets"]["va"][0, 3, 0].item() == pytest.approx(0.4)
    assert dict(dm.bad_files) == {str(empty): 1}
    warned = [
        r for r in caplog.records if r.levelno >= logging.WARNING and str(empty) in r.getMessage()
    ]
    assert len(warned) == 1
    assert dm.frames_checked == 16 and dm.frames_unreadable == 2
