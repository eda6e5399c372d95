"""The clip dataset: decodes the JPEG frames of one window (in DataLoader workers) into a sample.

A sample, and after ``collate_clips`` a batch (B in front of every tensor), is as below. The
frames leave the workers as uint8; ``AbawDataModule`` turns them into normalised float32 once the
batch is on its device (``on_after_batch_transfer``), so a training step always sees floats.

=================  ====================  ==================================================
key                shape, dtype          meaning
=================  ====================  ==================================================
``frames``         (T, 3, H, W) uint8    -> float32, normalised with the datamodule's mean/std
``targets[task]``  (T, K) float32        VA values, EXPR one-hot (8), AU 0/1 (12)
``valid[task]``    (T,) bool             the frame carries a label for this task (never pad)
``video``          str                   the video's name (a list of B names in a batch)
``frame``          (T,) int64            1-based frame numbers (pad: past the video's end)
``pad``            (T,) bool             padding past the video's end: never score it
``filled``         (T,) bool             the pixels come from the nearest other frame
                                         (image missing from disk, or unreadable)
``corrupt``        (T,) bool             the frame's own image exists but could not be decoded
``bad_files``      list[str]             the unreadable files met by this sample
=================  ====================  ==================================================

An unreadable JPEG (truncated, garbage, zero bytes) never stops an epoch and never moves a label:
its frame keeps its label and takes the pixels of the nearest readable frame of the same video
(counted in ``corrupt``). The dataset only logs it at debug level: ``AbawDataModule`` names each
file once, in the main process, and stops the run when most frames are unreadable.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms.v2.functional import resize

from datamodules.augment import ClipTransform
from datamodules.clips import window_rows
from datamodules.index import FRAMES_DIR, FrameIndex, frame_name
from datamodules.tasks import get_task

log = logging.getLogger(__name__)
# torchvision 0.29 flags its JPEG decoder as deprecated in favour of TorchCodec; it is still the
# fastest decoder installed with torch (libjpeg-turbo), so keep it until it goes and quieten that.
warnings.filterwarnings("ignore", "The image decoding and encoding", DeprecationWarning)


def decode_frame(path: str | Path) -> torch.Tensor:
    """JPEG file -> uint8 (3, H, W) (libjpeg-turbo through torchvision).

    Raises OSError (missing, empty) or RuntimeError (not a JPEG, truncated) on a bad file."""
    with open(path, "rb") as f:
        raw = f.read()
    if not raw:
        raise OSError(f"{path} is empty (0 bytes)")
    return decode_jpeg(torch.frombuffer(bytearray(raw), dtype=torch.uint8), mode=ImageReadMode.RGB)


class ClipDataset(Dataset):
    """Windows of an index -> samples (see the module docstring for the contract).

    ``random_shift`` moves each window's start by up to ``random_shift - 1`` frames each time it
    is drawn (training), so a strided grid of windows still sees every start over the epochs.
    """

    def __init__(
        self,
        index: FrameIndex,
        windows: np.ndarray,
        tasks: tuple[str, ...],
        seq_len: int,
        transform: ClipTransform,
        random_shift: int = 0,
    ):
        self.index, self.windows, self.tasks = index, windows, tasks
        self.seq_len, self.transform, self.random_shift = seq_len, transform, random_shift
        self.source = index.nearest_image_row()
        self.frames_dir = str(Path(index.root) / FRAMES_DIR)
        self.unreadable: set[int] = set()  # rows found corrupt by this process

    def __len__(self) -> int:
        return len(self.windows)

    def _path(self, row: int) -> str:
        # plain strings: pathlib costs as much as a tenth of a frame's decoding here
        v = int(np.searchsorted(self.index.start, row, side="right") - 1)
        name = frame_name(self.index.frame[row], self.index.width[v])
        return f"{self.frames_dir}/{self.index.videos[v]}/{name}"

    def _decode(self, row: int, bad_files: list[str]) -> torch.Tensor | None:
        """Decode one row's image; None (and the file recorded) if it cannot be read."""
        path = self._path(row)
        try:
            return decode_frame(path)
        except (RuntimeError, OSError, ValueError) as e:
            self.unreadable.add(row)
            bad_files.append(str(path))
            # debug only: the datamodule warns once per file, wherever the worker ran
            log.debug("unreadable frame %s (%s): using its nearest readable neighbour", path, e)
            return None

    def _load(self, row: int, bad_files: list[str]) -> tuple[torch.Tensor | None, int]:
        """Pixels for frame ``row``: its own image, else the nearest readable image of its video
        (ties: the earlier frame). Returns (pixels or None if the video has none, source row)."""
        first = int(self.source[row])  # the nearest image on disk, usually the answer
        if (
            first >= 0
            and first not in self.unreadable
            and (img := self._decode(first, bad_files)) is not None
        ):
            return img, first
        v = int(np.searchsorted(self.index.start, row, side="right") - 1)
        lo, hi = int(self.index.start[v]), int(self.index.start[v + 1])
        cands = lo + np.flatnonzero(self.index.has_image[lo:hi])
        for cand in cands[np.argsort(np.abs(cands - row), kind="stable")].tolist():
            if cand not in self.unreadable and (img := self._decode(cand, bad_files)) is not None:
                return img, cand
        return None, -1

    def _window(self, i: int) -> tuple[int, int, np.ndarray, np.ndarray]:
        """Window ``i`` as (video, offset, rows (T,), pad (T,)), shifted at random in training."""
        video, offset = (int(x) for x in self.windows[i])
        if self.random_shift > 1:
            room = max(int(self.index.lengths[video]) - self.seq_len - offset, 0)
            offset += int(torch.randint(0, min(self.random_shift, room + 1), ()).item())
        rows, pad = window_rows(self.index, video, offset, self.seq_len)
        return video, offset, rows, pad

    def _inputs(self, video: int, rows: np.ndarray) -> dict:
        """What the model reads of these rows: ``frames`` and how they were filled."""
        bad_files: list[str] = []
        loaded: dict[int, tuple[torch.Tensor | None, int]] = {}
        pixels, used = [], np.empty(self.seq_len, np.int64)
        for t, row in enumerate(rows.tolist()):
            if row not in loaded:  # padding repeats the last row: decode it once
                loaded[row] = self._load(row, bad_files)
            img, used[t] = loaded[row]
            pixels.append(img)
        shape = next((p.shape for p in pixels if p is not None), (3, 112, 112))
        clip = torch.stack([_fit(p, shape) for p in pixels])
        return {
            "frames": self.transform(clip),
            "filled": torch.from_numpy(used != rows),
            "corrupt": torch.from_numpy(self.index.has_image[rows] & (used != rows)),
            "bad_files": bad_files,
        }

    def __getitem__(self, i: int) -> dict:
        video, offset, rows, pad = self._window(i)
        sample = {
            **self._inputs(video, rows),
            "targets": {},
            "valid": {},
            "video": self.index.videos[video],
            "frame": torch.from_numpy((offset + 1 + np.arange(self.seq_len)).astype(np.int64)),
            "pad": torch.from_numpy(pad),
        }
        for task in self.tasks:
            sample["targets"][task], sample["valid"][task] = self._labels(task, rows, pad)
        return sample

    def _labels(
        self, task: str, rows: np.ndarray, pad: np.ndarray
    ) -> tuple[torch.Tensor, torch.Tensor]:
        spec = get_task(task)
        if task not in self.index.labels:  # the split has no file for this task: all unlabelled
            return torch.zeros(self.seq_len, spec.outputs), torch.zeros(
                self.seq_len, dtype=torch.bool
            )
        valid = self.index.valid[task][rows] & ~pad
        target = spec.encode(self.index.labels[task][rows])  # e.g. EXPR index -> one-hot
        target[~valid] = 0
        return torch.from_numpy(target), torch.from_numpy(valid)


def _fit(img: torch.Tensor | None, shape: tuple[int, ...]) -> torch.Tensor:
    """A frame in the clip's shape: black where a video has no image at all, resized where a
    crop has another size than the clip's first (the Aff-Wild2 crops are all 112 x 112)."""
    if img is None:
        return torch.zeros(shape, dtype=torch.uint8)
    if img.shape != shape:
        return resize(img, list(shape[-2:]), antialias=True)
    return img


def collate_clips(samples: list[dict]) -> dict:
    """Stack samples into a batch (``video`` becomes a list, ``bad_files`` one flat list).

    ``default_collate`` stacks straight into shared memory inside a worker, which saves a copy of
    every batch on its way to the main process."""
    bad_files = [f for s in samples for f in s["bad_files"]]
    batch = default_collate([{k: v for k, v in s.items() if k != "bad_files"} for s in samples])
    batch["bad_files"] = bad_files
    return batch
