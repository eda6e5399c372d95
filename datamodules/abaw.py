"""``AbawDataModule``: Aff-Wild2 (or the synthetic set) as clips for Lightning.

train = ``Train_Set`` (strided windows with a random shift, augmented), val = ``Validation_Set``
(sliding windows covering every annotated frame), test/predict = the frames of the organisers'
test list (labels joined from ``Test_Set`` annotation folders where they exist).

Frames that cannot be read never pass silently. Each unreadable file is replaced by its nearest
readable neighbour and named once (a warning here, in the main process). The run stops with a
``DataError`` naming the data root when the frame index disagrees with the disk (the first image
it lists for some video is gone: a moved root, or a cache older than the files; checked at setup,
one ``stat`` per video), when a split has no image at all, or when more than
``MAX_UNREADABLE_SHARE`` of the frames loaded so far (once ``MIN_FRAMES_CHECKED`` were) could not
be decoded. A few corrupt JPEGs in three million stay far below that share; a wrong root or a
tree of broken files crosses it within the first batch or two.
"""

from __future__ import annotations

import logging
import os
import sys
from collections import Counter
from pathlib import Path

import lightning as L
import numpy as np

from core.errors import ConfigError, DataError
from datamodules.augment import AugmentConfig, ClipTransform
from datamodules.clips import eval_windows, scored_mask, train_windows
from datamodules.dataset import ClipDataset
from datamodules.features import (
    FEATURES_MODES,
    FeatureCache,
    FeatureDataset,
    extract,
    frame_fingerprint,
    parts_for,
    size_line,
)
from datamodules.index import (
    FrameIndex,
    default_cache_dir,
    find_annotations_dir,
    load_index,
    test_list_path,
)
from datamodules.loading import ClipLoaders
from datamodules.tasks import SPLITS, TEST_SPLIT, parse_tasks

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Stop when more than this share of the frames whose image exists could not be decoded ...
MAX_UNREADABLE_SHARE = 0.5
# ... counted over all batches so far, once at least this many such frames were loaded.
MIN_FRAMES_CHECKED = 64


class AbawDataModule(ClipLoaders, L.LightningDataModule):
    """Clips of ABAW-format data. Batches follow the contract in ``datamodules/dataset.py``.

    Args:
        root: the folder holding ``cropped_aligned/`` and the annotations folder.
        tasks: any of ``va``, ``expr``, ``au`` (a list or ``"va,au"``); frames carry every
            task's label where they have one.
        seq_len: T, frames per clip.
        stride: step between evaluation windows (default T: no overlap); <= T.
        train_stride: step between training windows before their random shift (default T).
        train_random_shift: shift each training window by a random 0..train_stride-1 frames.
        img_size: frames are resized to img_size x img_size (Aff-Wild2 crops are 112).
        mean, std: normalisation; the model hands its backbone's own (timm's data config).
        annotations: the annotations folder's name (found under ``root`` when None).
        test_list: the organisers' list of frames to predict (default: the synthetic set's
            ``test_set_examples/<TASK>_test_set_example.txt`` for the first task, if present).
        per_frame_augment: draw augmentation parameters per frame (as the paper does) instead of
            once per clip.
        cache_dir: where frame indexes are cached (default ``~/.cache/affbench/index``).
        features: ``auto`` (when the model's encoder is frozen, ``freeze: all``, train and score
            on its cached outputs, extracting what is missing; see ``datamodules/features.py``),
            ``off`` (always the frames), ``only`` (the cache must hold them already).
        feature_noise: Gaussian noise added to cached features in training, in units of each
            channel's spread over the batch (pixel augmentation cannot reach a cached feature).
        features_dir: where features are cached (default ``~/.cache/affbench/features``).
    """

    def __init__(
        self,
        root: str = "data/synthetic",
        tasks: list[str] | str = "va",
        seq_len: int = 8,
        stride: int | None = None,
        train_stride: int | None = None,
        train_random_shift: bool = True,
        img_size: int = 112,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        batch_size: int = 8,
        num_workers: int = 2,
        annotations: str | None = None,
        test_list: str | None = None,
        hflip: float = 0.5,
        color_jitter: float = 0.3,
        erasing: float = 0.25,
        blur: float = 0.1,
        per_frame_augment: bool = False,
        augment: bool = True,
        cache_dir: str | None = None,
        pin_memory: bool = False,
        features: str = "auto",
        feature_noise: float = 0.0,
        features_dir: str | None = None,
    ):
        super().__init__()
        self.save_hyperparameters()
        if features not in FEATURES_MODES:
            raise ConfigError(f"features must be one of {FEATURES_MODES}, got {features!r}")
        if feature_noise < 0:
            raise ConfigError(f"feature_noise must be >= 0, got {feature_noise}")
        self._encoder = None  # (FrameEncoder, how many of its last taps the head reads)
        self._cache = None  # (FeatureCache, parts) of that encoder
        self.tasks = parse_tasks(tasks, annotated=True)  # EMI has no reader here
        self.seq_len = seq_len
        self.stride = stride or seq_len
        self.train_stride = train_stride or seq_len
        if not 1 <= self.stride <= seq_len:
            raise ConfigError(f"stride must be in 1..seq_len={seq_len}, got {self.stride}")
        self.augment = (
            AugmentConfig(
                hflip, color_jitter, erasing=erasing, blur=blur, per_frame=per_frame_augment
            )
            if augment
            else None
        )
        self.indexes: dict[str, FrameIndex] = {}
        self.datasets: dict[str, ClipDataset] = {}
        self.bad_files: Counter[str] = Counter()  # unreadable frames met so far (main process)
        self.frames_checked = 0  # frames loaded whose image the index lists (pad excluded) ...
        self.frames_unreadable = 0  # ... and those of them that could not be decoded

    # -- data -----------------------------------------------------------------------------------
    def test_list_file(self) -> Path | None:
        if self.hparams.test_list:
            return Path(self.hparams.test_list)
        path = test_list_path(self.hparams.root, self.tasks[0])
        return path if path.exists() else None

    def _index(self, split: str) -> FrameIndex:
        if split not in self.indexes:
            kw = dict(annotations=self.hparams.annotations, cache_dir=self.hparams.cache_dir)
            if split == TEST_SPLIT:
                test_list = self.test_list_file()
                if test_list is None:
                    raise FileNotFoundError(
                        f"no test list: pass test_list (the organisers' example file); "
                        f"none found under {self.hparams.root}"
                    )
                self.indexes[split] = load_index(
                    self.hparams.root, TEST_SPLIT, test_list=test_list, **kw
                )
            else:
                self.indexes[split] = load_index(self.hparams.root, split, **kw)
        return self.indexes[split]

    def prepare_data(self) -> None:
        """Build (or validate) the cached indexes once, on one process per node, and the cached
        features of a frozen encoder."""
        find_annotations_dir(Path(self.hparams.root), self.hparams.annotations)
        for split in SPLITS:
            self._index(split)
        if self.feature_cache() is not None:
            splits = [*SPLITS, *([TEST_SPLIT] if self.test_list_file() else [])]
            for split in splits:
                self.ensure_features(self._index(split))

    # -- cached features ------------------------------------------------------------------------
    def attach_encoder(self, encoder, maps_used: int = 0) -> None:
        """Feed cached outputs of ``encoder`` (a FrameEncoder) instead of frames, with the parts
        a head reading its last ``maps_used`` taps needs. In training this happens by itself:
        the trainer's model is asked (a frozen encoder: ``freeze: all``)."""
        self._encoder, self._cache = (encoder, int(maps_used)), None

    def _frozen_encoder(self):
        if self.hparams.features == "off":
            return None
        if self._encoder is not None:
            return self._encoder
        module = self.trainer.lightning_module if self.trainer is not None else None
        encoder = getattr(module, "encoder", None)
        if encoder is None or getattr(encoder, "freeze", None) != "all":
            if self.hparams.features == "only":
                raise ConfigError(
                    "data.features: only reads cached features of a frozen encoder: set "
                    "model.freeze: all (or data.features: auto)"
                )
            return None
        self._encoder = (encoder, int(getattr(module.head, "maps_used", 0)))
        return self._encoder

    def feature_cache(self) -> tuple[FeatureCache, list[str]] | None:
        """(cache, parts) when cached features replace the frames, else None."""
        found = self._frozen_encoder()
        if found is None:
            return None
        if self._cache is None:
            encoder, maps_used = found
            cache = FeatureCache.of(
                encoder, self.hparams.mean, self.hparams.std, self.hparams.features_dir
            )
            self._cache = (cache, parts_for(maps_used, len(encoder.spec.channels)))
        return self._cache

    def ensure_features(self, index: FrameIndex, progress: bool = True) -> dict | None:
        """Extract what ``index`` lacks in the cache (under its lock; ``features: only`` says
        what is missing instead). Returns the extraction's figures, or None if nothing was."""
        cache, parts = self.feature_cache()
        if not cache.missing(index, parts):
            return None
        with cache.locked():
            todo = cache.missing(index, parts)  # another process may have filled it meanwhile
            if not todo:
                return None
            frames = sum(frame_fingerprint(index, v)[0] for v in todo)
            need = sorted({p for ps in todo.values() for p in ps})
            if self.hparams.features == "only":
                raise ConfigError(
                    f"the feature cache {cache.folder} lacks {', '.join(need)} for {len(todo)} "
                    f"video(s) of {index.split} ({frames:,} frames), e.g. "
                    f"{index.videos[next(iter(todo))]}: run affbench features extract with these "
                    f"settings, or set data.features: auto"
                )
            if progress:  # the cost, before it is paid (once per encoder and split)
                print(
                    f"caching {', '.join(need)} of {len(todo)} video(s) of {index.split} in "
                    f"{cache.folder}: {size_line(cache.layout, need, frames)}",
                    file=sys.stderr,
                    flush=True,
                )
            encoder = self._encoder[0]
            return extract(
                cache, encoder, index, todo, num_workers=self.hparams.num_workers,
                check_batch=lambda b: self.on_before_batch_transfer(b, 0), progress=progress,
            )  # fmt: skip

    def _check_images(self, index: FrameIndex) -> None:
        """DataError unless the split has images and, for every video with images, the first one
        the index lists is on disk (one stat per video: cheap even on the whole Aff-Wild2)."""
        root = Path(self.hparams.root).resolve()
        if len(index) and not index.has_image.any():
            raise DataError(
                f"no frame image under {root / 'cropped_aligned'} for the {len(index.videos)} "
                f"video(s) of {index.split}: is {root} the data root?"
            )
        rows = np.flatnonzero(index.has_image)
        first = rows[np.unique(index.video[rows], return_index=True)[1]]
        gone = [p for p in map(index.image_path, first.tolist()) if not os.path.exists(p)]
        if gone:
            cache = self.hparams.cache_dir or default_cache_dir()
            raise DataError(
                f"{len(gone)} of {len(first)} video(s) of {index.split} under data root {root} "
                f"lack image files the frame index lists, e.g. {gone[0]}: was the root moved or "
                f"were files replaced since the index was cached? It is cached under {cache} "
                f"(AFFBENCH_CACHE); delete it there to rebuild it from the files"
            )

    def _dataset(self, split: str, train: bool) -> ClipDataset:
        index = self._index(split)
        self._check_images(index)
        augment = self.augment if train else None
        transform = ClipTransform(self.hparams.img_size, augment, mean=self.hparams.mean)
        if train:
            windows = train_windows(index, self.tasks, self.seq_len, self.train_stride)
            shift = self.train_stride if self.hparams.train_random_shift else 0
        else:
            scored = index.listed if index.listed is not None else scored_mask(index, self.tasks)
            windows = eval_windows(index, self.seq_len, self.stride, scored)
            shift = 0
        args = (index, windows, self.tasks, self.seq_len, transform)
        cached = self.feature_cache()
        if cached is None:
            return ClipDataset(*args, random_shift=shift)
        self.ensure_features(index)
        return FeatureDataset(*cached, *args, random_shift=shift)

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit"):
            self.datasets["train"] = self._dataset(SPLITS[0], train=True)
        if stage in (None, "fit", "validate"):
            self.datasets["val"] = self._dataset(SPLITS[1], train=False)
        if stage in ("test", "predict"):
            self.datasets["test"] = self._dataset(TEST_SPLIT, train=False)
        for name, ds in self.datasets.items():
            if len(ds) == 0:
                raise ConfigError(
                    f"{name}: no clip of {self.seq_len} frames holds a label for tasks {self.tasks}"
                )

    def on_before_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        """Count unreadable frames (decoded in workers, reported here, once per file) and stop
        the run when most frames cannot be read (see the module docstring)."""
        for f in batch.get("bad_files", ()):
            if f not in self.bad_files:
                log.warning("unreadable frame %s was replaced by its nearest readable neighbour", f)
            self.bad_files[f] += 1
        if "corrupt" in batch:
            # frames whose own image the index lists: read, or replaced because unreadable
            own = ~batch["pad"] & (~batch["filled"] | batch["corrupt"])
            self.frames_checked += int(own.sum())
            self.frames_unreadable += int((own & batch["corrupt"]).sum())
            self._check_unreadable()
        return batch

    def _check_unreadable(self) -> None:
        checked, bad = self.frames_checked, self.frames_unreadable
        if checked < MIN_FRAMES_CHECKED or bad <= MAX_UNREADABLE_SHARE * checked:
            return
        root = Path(self.hparams.root).resolve()
        first = ", ".join(list(self.bad_files)[:3]) or "none named yet"
        raise DataError(
            f"{bad} of the {checked} frames loaded so far under data root {root} could not be "
            f"read (more than {MAX_UNREADABLE_SHARE:.0%}; first files: {first}): are these the "
            f"data's JPEG files?"
        )
