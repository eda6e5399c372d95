"""Still faces (AffectNet) as clips of one frame: ``StillDataset`` and ``AffectNetDataModule``.

Stage 1 pretrains the frame encoder on stills with the model that trains on video, unchanged:
a still is a clip of T = 1 frame and a batch follows the contract of ``datamodules/dataset.py``.
Its scoring keys are ``video = f"{split}-{k // 1_000_000}"`` and ``frame = k % 1_000_000 + 1``
for row k of the split, one (video, frame) per image.

A face box (the file-list layout) is cropped before the resize. An image that cannot be decoded
(or whose face box lies outside it) is named once in a warning from the main process and its
sample carries no label, so it is neither trained on nor scored; the run stops with a
``DataError`` naming the data root once most images loaded so far could not be read (the
thresholds of ``AbawDataModule``).
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.io import ImageReadMode, decode_image

from core.errors import ConfigError, DataError
from datamodules.abaw import IMAGENET_MEAN, IMAGENET_STD, MAX_UNREADABLE_SHARE, MIN_FRAMES_CHECKED
from datamodules.affectnet import Stills, read_stills
from datamodules.augment import AugmentConfig, ClipTransform
from datamodules.dataset import decode_frame
from datamodules.loading import ClipLoaders
from datamodules.tasks import get_task, parse_tasks

log = logging.getLogger(__name__)

STILL_TASKS = ("va", "expr")  # what AffectNet labels
KEY_SPAN = 1_000_000  # images per scoring "video"


def decode_still(path: str) -> torch.Tensor:
    """Image file -> uint8 (3, H, W): JPEG through libjpeg-turbo (as video frames), others
    (PNG in class folders) through torchvision's generic decoder."""
    if path.lower().endswith((".jpg", ".jpeg")):
        return decode_frame(path)
    with open(path, "rb") as f:
        raw = f.read()
    if not raw:
        raise OSError(f"{path} is empty (0 bytes)")
    return decode_image(torch.frombuffer(bytearray(raw), dtype=torch.uint8), ImageReadMode.RGB)


def crop_box(img: torch.Tensor, box: np.ndarray) -> torch.Tensor:
    """(3, H, W) -> the face box (x, y, w, h) clipped to the image; the whole image where the
    box is -1 (the image is the face). ValueError if the box lies outside the image."""
    x, y, w, h = (int(v) for v in box)
    if w < 0:
        return img
    height, width = img.shape[-2:]
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, width), min(y + h, height)
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"face box {x},{y},{w},{h} outside the {width}x{height} image")
    return img[:, y0:y1, x0:x1]


class StillDataset(Dataset):
    """Rows ``rows`` of ``stills`` -> samples of one frame (the contract of ``dataset.py``)."""

    def __init__(
        self,
        stills: Stills,
        rows: np.ndarray,
        tasks: tuple[str, ...],
        transform: ClipTransform,
        fill: tuple[int, int, int] = (0, 0, 0),
    ):
        self.split, self.rows, self.tasks, self.transform = stills.split, rows, tasks, transform
        # numpy arrays, not lists of str: workers read them without touching reference counts
        self.path, self.box = stills.path[rows], stills.box[rows]
        size = transform.img_size
        self.blank = torch.tensor(fill, dtype=torch.uint8).view(1, 3, 1, 1).expand(1, 3, size, size)
        labels = {"va": stills.va[rows], "expr": stills.expr[rows, None]}
        valid = {"va": ~np.isnan(labels["va"]).any(axis=1), "expr": labels["expr"][:, 0] >= 0}
        self.valid, self.targets = {}, {}
        for t in tasks:
            target = get_task(t).encode(np.nan_to_num(labels[t]))  # EXPR: index -> one-hot
            target[~valid[t]] = 0
            self.valid[t], self.targets[t] = valid[t], target

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        path, bad_files = str(self.path[i]), []
        try:
            frames = self.transform(crop_box(decode_still(path), self.box[i])[None])
        except (RuntimeError, OSError, ValueError) as e:
            # debug only: the datamodule warns once per file, wherever the worker ran
            log.debug("unreadable image %s (%s): left out", path, e)
            reason = " (face box outside the image)" if str(e).startswith("face box") else ""
            bad_files.append(path + reason)
            frames = self.blank.clone()
        ok = not bad_files
        k = int(self.rows[i])
        no = torch.zeros(1, dtype=torch.bool)
        return {
            "frames": frames,
            "targets": {t: torch.from_numpy(self.targets[t][i : i + 1]) for t in self.tasks},
            "valid": {t: torch.tensor([bool(self.valid[t][i]) and ok]) for t in self.tasks},
            "video": f"{self.split}-{k // KEY_SPAN}",
            "frame": torch.tensor([k % KEY_SPAN + 1], dtype=torch.int64),
            "pad": no,
            "filled": no.clone(),
            "corrupt": torch.tensor([not ok]),
            "bad_files": bad_files,
        }


class AffectNetDataModule(ClipLoaders, L.LightningDataModule):
    """Still faces in an AffectNet layout (``datamodules/affectnet.py``) as clips of one frame.

    train = the "train" split (shuffled, augmented); val = the "val" split, which test and
    predict also use. Arguments mean what ``AbawDataModule``'s of the same names do (so the
    model's links fill them alike); ``tasks`` are ``va`` and/or ``expr``, ``seq_len`` is 1.
    Images without a label for any of ``tasks`` are left out at setup (counted in the log).
    """

    def __init__(
        self,
        root: str = "data/affectnet_synth",
        tasks: list[str] | str = "va,expr",
        seq_len: int = 1,
        img_size: int = 112,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        batch_size: int = 64,
        num_workers: int = 2,
        hflip: float = 0.5,
        color_jitter: float = 0.3,
        erasing: float = 0.25,
        blur: float = 0.1,
        augment: bool = True,
        pin_memory: bool = False,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.tasks = parse_tasks(tasks, annotated=True)
        if other := [t for t in self.tasks if t not in STILL_TASKS]:
            raise ConfigError(
                f"still images carry {' and '.join(STILL_TASKS)} labels only, not {other}"
            )
        if seq_len != 1:
            raise ConfigError(f"stills are clips of one frame: seq_len must be 1, got {seq_len}")
        self.augment = (
            AugmentConfig(hflip, color_jitter, erasing=erasing, blur=blur) if augment else None
        )
        self.stills: dict[str, Stills] = {}
        self.datasets: dict[str, StillDataset] = {}
        self.bad_files: Counter[str] = Counter()  # unreadable images met so far (main process)
        self.frames_checked = 0  # images loaded ...
        self.frames_unreadable = 0  # ... and those of them that could not be decoded

    def _dataset(self, split: str, train: bool) -> StillDataset:
        if split not in self.stills:
            self.stills[split] = read_stills(self.hparams.root, split)
        stills = self.stills[split]
        keep = stills.labelled(self.tasks)
        log.info(
            "%s: %d of %d images carry no label for %s and are left out",
            split,
            len(keep) - keep.sum(),
            len(keep),
            ",".join(self.tasks),
        )
        if not keep.any():
            raise DataError(
                f"no image of the {split} split under {Path(self.hparams.root).resolve()} "
                f"carries a label for {','.join(self.tasks)}"
            )
        hp = self.hparams
        transform = ClipTransform(hp.img_size, self.augment if train else None, mean=hp.mean)
        fill = tuple(round(255 * m) for m in hp.mean)  # normalises to 0
        return StillDataset(stills, np.flatnonzero(keep), self.tasks, transform, fill)

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit"):
            self.datasets["train"] = self._dataset("train", train=True)
        if "val" not in self.datasets:  # every stage's
            self.datasets["val"] = self._dataset("val", train=False)
        if stage in ("test", "predict"):
            self.datasets["test"] = self.datasets["val"]

    def on_before_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        """Name each unreadable image once (decoded in workers, reported here) and stop the run
        when most images cannot be read."""
        for f in batch.get("bad_files", ()):
            if f not in self.bad_files:
                log.warning("unreadable image %s: left out of training and scoring", f)
            self.bad_files[f] += 1
        self.frames_checked += int(batch["corrupt"].numel())
        self.frames_unreadable += int(batch["corrupt"].sum())
        checked, bad = self.frames_checked, self.frames_unreadable
        if checked >= MIN_FRAMES_CHECKED and bad > MAX_UNREADABLE_SHARE * checked:
            first = ", ".join(list(self.bad_files)[:3])
            raise DataError(
                f"{bad} of the {checked} images loaded so far under data root "
                f"{Path(self.hparams.root).resolve()} could not be read (more than "
                f"{MAX_UNREADABLE_SHARE:.0%}; first files: {first}): are these the data's images?"
            )
        return batch
