"""Data that would train silently on black frames stops the run with an error naming the root."""

import os

import lightning as L
import pytest
import torch
from conftest import frame_level, va_text, write_tree

from core.errors import DataError
from datamodules.abaw import MIN_FRAMES_CHECKED, AbawDataModule

TR, VAL = "Train_Set", "Validation_Set"
N = 40  # frames per video


def _tree(root, videos=("a", "b")):
    va = [(0.01 * k, -0.01 * k) for k in range(1, N + 1)]
    return write_tree(
        root,
        {v: list(range(1, N + 1)) for v in (*videos, "val")},
        {**{("va", TR, v): va_text(va) for v in videos}, ("va", VAL, "val"): va_text(va)},
    )


def _dm(root, **kw):
    kw = {"tasks": "va", "seq_len": 8, "img_size": 16, "batch_size": 2, "num_workers": 0, **kw}
    return AbawDataModule(root=str(root), **kw)


def _train_batches(dm, epochs=1):
    return [dm.on_before_batch_transfer(b, 0) for _ in range(epochs) for b in dm.train_dataloader()]


def test_unreadable_jpegs_stop_the_run_naming_the_root(tmp_path):
    root = _tree(tmp_path)
    for jpg in (root / "cropped_aligned").glob("[ab]/*.jpg"):
        jpg.write_bytes(b"\xff\xd8 not a jpeg")
    dm = _dm(root)
    dm.setup("fit")  # the files the index lists are all there
    with pytest.raises(DataError) as e:
        _train_batches(dm)
    msg = str(e.value)
    assert f"data root {root.resolve()}" in msg and "could not be read" in msg
    assert str(root / "cropped_aligned") in msg  # the first bad files are named
    # it stopped as soon as the threshold was crossed, not at the epoch's end
    assert MIN_FRAMES_CHECKED <= dm.frames_checked < MIN_FRAMES_CHECKED + 16
    assert dm.frames_unreadable == dm.frames_checked


class _MeanPixel(L.LightningModule):
    """The smallest model that trains on the batches: mean pixel -> VA."""

    def __init__(self):
        super().__init__()
        self.head = torch.nn.Linear(1, 2)

    def training_step(self, batch, batch_idx):
        x = batch["frames"].mean(dim=(2, 3, 4))[..., None]
        return torch.nn.functional.mse_loss(self.head(x), batch["targets"]["va"])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


@pytest.mark.filterwarnings("ignore:You passed in a `val_dataloader`")
def test_training_on_unreadable_jpegs_does_not_end_done(tmp_path):
    root = _tree(tmp_path)
    for jpg in (root / "cropped_aligned").glob("*/*.jpg"):
        jpg.write_bytes(b"junk")
    trainer = L.Trainer(
        max_epochs=3,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    with pytest.raises(DataError, match=str(root.resolve())):
        trainer.fit(_MeanPixel(), datamodule=_dm(root))


def test_a_few_corrupt_jpegs_are_replaced_and_counted(tmp_path):
    root = _tree(tmp_path, videos=("a", "b", "c"))
    bad = [root / "cropped_aligned" / v / f"{f:05d}.jpg" for v, f in (("a", 10), ("c", 30))]
    for jpg in bad:
        jpg.write_bytes(b"junk")
    dm = _dm(root, train_random_shift=False, augment=False)
    dm.setup("fit")
    batches = _train_batches(dm, epochs=3)  # 3 x 3 videos x 40 frames, 2 of each 120 unreadable
    assert dm.frames_checked == 3 * 3 * N and dm.frames_unreadable == 3 * 2
    assert sorted(dm.bad_files) == sorted(map(str, bad))
    for b in batches:
        for video, frames, corrupt, pixels in zip(
            b["video"], b["frame"], b["corrupt"], b["frames"], strict=True
        ):
            want = {"a": 10, "c": 30}.get(video)
            assert corrupt.tolist() == [f == want for f in frames.tolist()]
            # the neighbour's pixels (frame - 1, the earlier on a tie); every other frame its own
            levels = pixels.float().mean(dim=(1, 2, 3)).tolist()
            own = [frame_level(f - (f == want)) for f in frames.tolist()]
            assert levels == pytest.approx(own, abs=2)


def test_index_files_gone_from_disk_stop_setup(tmp_path):
    root = _tree(tmp_path)
    _dm(root).prepare_data()  # the index is cached with every frame present
    folder = root / "cropped_aligned" / "b"
    st = folder.stat()
    for jpg in folder.glob("*.jpg"):
        jpg.unlink()
    os.utime(folder, ns=(st.st_atime_ns, st.st_mtime_ns))  # the cache key does not see it
    dm = _dm(root)
    with pytest.raises(DataError) as e:
        dm.setup("fit")
    msg = str(e.value)
    assert f"1 of 2 video(s) of {TR} under data root {root.resolve()}" in msg
    assert str(folder / "00001.jpg") in msg and "AFFBENCH_CACHE" in msg


def test_a_split_without_any_image_stops_setup(tmp_path):
    root = _tree(tmp_path)
    for jpg in (root / "cropped_aligned").glob("val/*.jpg"):
        jpg.unlink()
    dm = _dm(root)
    with pytest.raises(DataError, match=f"no frame image under {root.resolve()}/cropped_aligned"):
        dm.setup("validate")
