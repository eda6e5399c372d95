"""The frame index of one split: every frame of every annotated video, its image and its labels.

Rows are frames. Video ``v`` owns the contiguous rows ``start[v]:start[v + 1]``, one per frame
number ``1..L_v`` where ``L_v`` is the larger of its last image number and its longest annotation
file; so frame ``f`` of video ``v`` is row ``start[v] + f - 1`` whatever images are missing, and the
label of annotation line k always lands on image k.

Building reads every annotation file of the split (vectorised, see ``annotations.py``) and lists
the frame folders (names only, never pixels). Frame files are ``<n>.jpg`` with n >= 1, zero-padded
to one width per folder (``00001.jpg`` as shipped, ``000001.jpg``, or unpadded ``1.jpg``); the
width each folder uses is kept, so the loader opens the names that are really there.

The result is cached on disk as one ``.npz`` keyed by the size and mtime of every file and folder
it was built from, so a changed file rebuilds it. The cache does not hold the data root: a loaded
index takes the root it is opened with (a relative root typed in another folder would be wrong).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from core.errors import DataError
from core.paths import cache_root
from datamodules.annotations import AnnotationError, read_task_files
from datamodules.tasks import SPLITS, TEST_SPLIT, get_task, list_tasks

FRAMES_DIR = "cropped_aligned"
ANNOTATIONS_DIR = "8th_ABAW_Annotations"  # the 8th ABAW release's folder name
TEST_LISTS_DIR = "test_set_examples"  # the organisers' lists of test frames to predict


def test_list_path(root: Path | str, task: str) -> Path:
    """``<root>/test_set_examples/<TASK>_test_set_example.txt``."""
    return Path(root) / TEST_LISTS_DIR / f"{task.upper()}_test_set_example.txt"


INDEX_VERSION = 2  # 2: per-video frame name width
ABAW_WIDTH = 5  # 00001.jpg, the organisers' names
_FRAME_NAME = re.compile(r"^(\d+)\.jpg$")

# Per-video, per-task counts kept with the index (columns of FrameIndex.counts[task]).
COUNT_FIELDS = ("lines", "annotated", "blank_lines", "lines_beyond_frames", "frames_beyond_lines")


@dataclass
class FrameIndex:
    """Columnar frame index of one split (numpy arrays, row = frame).

    ``labels[task]`` is (N, values_per_line) as written in the files: VA float32, the EXPR
    class and the twelve AU values int8; ``valid[task]`` (N,) marks annotated frames;
    ``listed`` (N,) marks the frames a test list asks for (None outside a test split);
    ``width`` (V,) is the zero-padding of each video's file names (0: unpadded, ``1.jpg``).
    """

    root: Path
    split: str
    videos: list[str]
    start: np.ndarray  # (V + 1,) int64 row offsets
    frame: np.ndarray  # (N,) int32, 1-based frame numbers
    has_image: np.ndarray  # (N,) bool
    labels: dict[str, np.ndarray] = field(default_factory=dict)
    valid: dict[str, np.ndarray] = field(default_factory=dict)
    annotated_videos: dict[str, np.ndarray] = field(default_factory=dict)  # (V,) bool per task
    counts: dict[str, np.ndarray] = field(default_factory=dict)  # (V, len(COUNT_FIELDS)) per task
    listed: np.ndarray | None = None
    width: np.ndarray | None = None  # (V,) int64; None: the ABAW width for every video

    def __post_init__(self) -> None:
        if self.width is None:
            self.width = np.full(len(self.videos), ABAW_WIDTH, np.int64)

    def __len__(self) -> int:
        return len(self.frame)

    @property
    def tasks(self) -> list[str]:
        return list(self.labels)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.start)

    @property
    def video(self) -> np.ndarray:
        """(N,) int32 video id of each row."""
        return np.repeat(np.arange(len(self.videos), dtype=np.int32), self.lengths)

    def image_path(self, row: int) -> Path:
        v = int(np.searchsorted(self.start, row, side="right") - 1)
        return self.root / FRAMES_DIR / self.videos[v] / frame_name(self.frame[row], self.width[v])

    def nearest_image_row(self) -> np.ndarray:
        """(N,) row of the nearest frame of the same video that has an image (ties: the earlier
        one), or -1 for a video without any image."""
        rows = np.arange(len(self), dtype=np.int64)
        img = np.flatnonzero(self.has_image)
        if len(img) == 0:
            return np.full(len(self), -1, np.int64)
        vid = self.video
        pos = np.searchsorted(img, rows)
        prev = img[np.clip(pos - 1, 0, len(img) - 1)]
        nxt = img[np.clip(pos, 0, len(img) - 1)]
        prev_ok = (prev <= rows) & (vid[prev] == vid)
        next_ok = (nxt >= rows) & (vid[nxt] == vid)
        use_next = next_ok & (~prev_ok | (nxt - rows < rows - prev))
        out = np.where(use_next, nxt, np.where(prev_ok, prev, -1))
        return out.astype(np.int64)

    # -- cache ---------------------------------------------------------------------------------
    def save(self, path: Path) -> None:
        arrays = {
            "videos": np.array(self.videos, dtype=str),
            "start": self.start,
            "frame": self.frame,
            "has_image": self.has_image,
            "width": self.width,
            "meta": np.array(json.dumps({"split": self.split})),
        }
        if self.listed is not None:
            arrays["listed"] = self.listed
        for t in self.labels:
            arrays[f"labels.{t}"] = self.labels[t]
            arrays[f"valid.{t}"] = self.valid[t]
            arrays[f"annotated_videos.{t}"] = self.annotated_videos[t]
            arrays[f"counts.{t}"] = self.counts[t]
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npz")
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(tmp, **arrays)
        os.replace(tmp, path)  # atomic: ranks or workers building at once never see half a file

    @classmethod
    def load(cls, path: Path, root: Path | str) -> FrameIndex:
        """The index saved at ``path``, reading its frames under ``root`` (not stored)."""
        with np.load(path) as z:
            meta = json.loads(str(z["meta"]))
            idx = cls(
                root=Path(root),
                split=meta["split"],
                videos=z["videos"].tolist(),
                start=z["start"],
                frame=z["frame"],
                has_image=z["has_image"],
                listed=z.get("listed"),
                width=z["width"],
            )
            for key in z.files:
                kind, _, task = key.partition(".")
                if task:
                    getattr(idx, kind)[task] = z[key]
        return idx


def find_annotations_dir(root: Path, annotations: str | None = None) -> Path:
    """The annotations folder: ``root/annotations`` if given, else the one child of ``root``
    holding at least one challenge folder (its name changes with each ABAW edition)."""
    root = Path(root)
    if annotations:
        path = Path(annotations) if Path(annotations).is_absolute() else root / annotations
        if not path.is_dir():
            raise FileNotFoundError(f"annotations folder {path} does not exist")
        return path
    if not root.is_dir():
        raise FileNotFoundError(f"data root {root} does not exist")
    challenges = {get_task(t).challenge for t in list_tasks(annotated=True)}
    found = [
        d
        for d in sorted(root.iterdir())
        if d.is_dir() and any((d / c).is_dir() for c in challenges)
    ]
    if not found:
        raise FileNotFoundError(
            f"no annotations folder under {root}: expected a folder holding "
            f"{', '.join(sorted(challenges))} (set the annotations folder explicitly)"
        )
    if len(found) > 1:
        names = ", ".join(repr(d.name) for d in found)
        raise ValueError(f"several annotations folders under {root} ({names}): choose one")
    return found[0]


def read_test_list(path: Path) -> pd.DataFrame:
    """The organisers' test list: a header, then ``<video>/<NNNNN>.jpg,...`` one row per frame to
    predict. Returns columns ``video`` and ``frame`` (int)."""
    path = Path(path)
    text = path.read_bytes().replace(b"\r", b"").decode("utf-8")
    lines = text.split("\n")
    if not lines or not lines[0].lower().startswith("image_location"):
        raise AnnotationError(path, 1, "expected a header starting with 'image_location'")
    locs = [ln.split(",", 1)[0].strip() for ln in lines[1:]]
    while locs and not locs[-1]:
        locs.pop()
    video, frame = [], []
    for k, loc in enumerate(locs, start=2):
        v, _, name = loc.rpartition("/")
        m = _FRAME_NAME.match(name)
        if not v or not m:
            raise AnnotationError(path, k, f"expected '<video>/<NNNNN>.jpg', got {loc!r}")
        video.append(v)
        frame.append(int(m.group(1)))
    return pd.DataFrame({"video": video, "frame": np.asarray(frame, dtype=np.int32)})


def frame_name(frame: int, width: int) -> str:
    """The file name of frame ``frame`` in a folder whose names are padded to ``width``."""
    return f"{int(frame):0{int(width)}d}.jpg"


def _list_frames(folder: Path) -> tuple[np.ndarray, int]:
    """Sorted frame numbers (>= 1) of the images in one video folder, and the zero-padding width
    of its names (names only, never pixels).

    A name with a leading zero fixes the width; names without one fit any width up to their own
    length (``1.jpg .. 10.jpg`` read with width 0, ``00099.jpg .. 100000.jpg`` with 5). A
    ``0.jpg`` / ``00000.jpg`` is no frame (frames are 1-based) and is ignored. Two widths, or two
    files of one frame (``1.jpg`` and ``00001.jpg``), are a DataError naming the folder.
    """
    try:
        stems = [e.name[:-4] for e in os.scandir(folder) if e.name.endswith(".jpg")]
    except FileNotFoundError:
        return np.empty(0, np.int32), ABAW_WIDTH
    stems = [s for s in stems if s.isdigit() and s.isascii() and s.strip("0")]
    if not stems:
        return np.empty(0, np.int32), ABAW_WIDTH
    nums = np.sort(np.asarray([int(s) for s in stems], dtype=np.int64))
    if (dup := nums[1:][np.diff(nums) == 0]).size:
        same = sorted(s for s in stems if int(s) == dup[0])
        raise DataError(
            f"{folder}: two image files for frame {dup[0]} ({', '.join(f'{s}.jpg' for s in same)})"
        )
    padded = {len(s) for s in stems if s[0] == "0"}
    width = max(padded, default=0)
    shortest = min((len(s) for s in stems if s[0] != "0"), default=width)
    if len(padded) > 1 or shortest < width:
        short = min(stems, key=len)
        wide = next(s for s in stems if s[0] == "0" and len(s) == width)
        raise DataError(
            f"{folder}: frame file names mix zero-paddings ({short}.jpg and {wide}.jpg); "
            f"name every frame with one width, e.g. 00001.jpg"
        )
    return nums.astype(np.int32), width


def _split_files(ann_dir: Path, split: str) -> dict[str, dict[str, Path]]:
    """task -> {video: annotation file} of one split; tasks without that split are left out."""
    out = {}
    for t in list_tasks(annotated=True):
        folder = ann_dir / get_task(t).challenge / split
        if folder.is_dir():
            out[t] = {p.stem: p for p in sorted(folder.glob("*.txt"))}
    return out


def _cache_key(root: Path, ann_dir: Path, split: str, test_list: Path | None) -> str:
    """A hash of everything the index is built from: any change to a file or folder changes it."""
    h = hashlib.sha1(f"{INDEX_VERSION}|{root.resolve()}|{ann_dir.resolve()}|{split}".encode())
    files = _split_files(ann_dir, split)
    videos = set()
    for t, by_video in files.items():
        for v, p in by_video.items():
            st = p.stat()
            h.update(f"{t}/{v}:{st.st_size}:{st.st_mtime_ns}|".encode())
            videos.add(v)
    if test_list is not None:
        st = Path(test_list).stat()
        h.update(f"test:{Path(test_list).resolve()}:{st.st_size}:{st.st_mtime_ns}|".encode())
        videos |= set(read_test_list(test_list)["video"])
    for v in sorted(videos):
        try:
            mtime = (
                (root / FRAMES_DIR / v).stat().st_mtime_ns
            )  # changes when a frame is added or removed
        except FileNotFoundError:
            mtime = -1
        h.update(f"frames/{v}:{mtime}|".encode())
    return h.hexdigest()[:20]


def default_cache_dir() -> Path:
    return cache_root() / "index"


def build_index(
    root: Path | str,
    split: str,
    annotations: str | None = None,
    test_list: Path | str | None = None,
) -> FrameIndex:
    """Build the index of one split from the files (no cache; see ``load_index``)."""
    root = Path(root)
    ann_dir = find_annotations_dir(root, annotations)
    files = _split_files(ann_dir, split)
    listed_df = read_test_list(Path(test_list)) if test_list is not None else None
    if listed_df is not None:
        videos = list(dict.fromkeys(listed_df["video"]))
    else:
        videos = sorted({v for by_video in files.values() for v in by_video})
        if not videos:
            raise FileNotFoundError(f"no annotation files for split {split!r} under {ann_dir}")
    vid_of = {v: i for i, v in enumerate(videos)}

    listing = [_list_frames(root / FRAMES_DIR / v) for v in videos]
    images = [frames for frames, _ in listing]
    width = np.array([w for _, w in listing], dtype=np.int64)
    last_image = np.array([im[-1] if len(im) else 0 for im in images], dtype=np.int64)
    parsed = {}
    for t, by_video in files.items():
        names = [v for v in by_video if v in vid_of]
        parsed[t] = (
            np.array([vid_of[v] for v in names], np.int64),
            read_task_files([by_video[v] for v in names], get_task(t)),
        )
    length = last_image.copy()
    for ids, lab in parsed.values():
        np.maximum.at(length, ids, lab.lengths)
    if listed_df is not None:
        np.maximum.at(
            length, listed_df["video"].map(vid_of).to_numpy(), listed_df["frame"].to_numpy()
        )
    start = np.concatenate([[0], np.cumsum(length)]).astype(np.int64)
    n = int(start[-1])
    vid = np.repeat(np.arange(len(videos)), length)
    frame = (np.arange(n, dtype=np.int64) - start[vid] + 1).astype(np.int32)
    has_image = np.zeros(n, bool)
    for v, im in enumerate(images):
        has_image[start[v] + im.astype(np.int64) - 1] = True

    idx = FrameIndex(root, split, videos, start, frame, has_image, width=width)
    for t, (ids, lab) in parsed.items():
        spec = get_task(t)
        # row of each parsed line: its video's first row + (line number - 1)
        line_no = np.arange(len(lab.valid)) - np.repeat(lab.offsets[:-1], lab.lengths)
        rows = np.repeat(start[ids], lab.lengths) + line_no
        labels = np.full((n, spec.values_per_line), spec.unannotated, spec.dtype)
        labels[rows] = lab.values
        valid = np.zeros(n, bool)
        valid[rows] = lab.valid
        counts = np.zeros((len(videos), len(COUNT_FIELDS)), np.int64)
        line_video = np.repeat(ids, lab.lengths)
        counts[ids, 0] = lab.lengths
        np.add.at(counts[:, 1], line_video, lab.valid)
        np.add.at(counts[:, 2], line_video, lab.blank)
        counts[ids, 3] = np.maximum(lab.lengths - last_image[ids], 0)
        counts[ids, 4] = np.maximum(last_image[ids] - lab.lengths, 0)
        annotated = np.zeros(len(videos), bool)
        annotated[ids] = True
        idx.labels[t], idx.valid[t], idx.counts[t], idx.annotated_videos[t] = (
            labels,
            valid,
            counts,
            annotated,
        )
    if listed_df is not None:
        listed = np.zeros(n, bool)
        listed[
            start[listed_df["video"].map(vid_of).to_numpy()] + listed_df["frame"].to_numpy() - 1
        ] = True
        idx.listed = listed
    return idx


def load_index(
    root: Path | str,
    split: str,
    annotations: str | None = None,
    test_list: Path | str | None = None,
    cache_dir: Path | str | None = None,
) -> FrameIndex:
    """The index of one split, from the on-disk cache when nothing it was built from changed."""
    root = Path(root)
    if split not in (*SPLITS, TEST_SPLIT) and test_list is None:
        raise ValueError(f"unknown split {split!r}; splits are {SPLITS} (or a test list)")
    ann_dir = find_annotations_dir(root, annotations)
    key = _cache_key(root, ann_dir, split, Path(test_list) if test_list else None)
    path = Path(cache_dir or default_cache_dir()) / f"{split}-{key}.npz"
    if path.exists():
        try:
            return FrameIndex.load(path, root)
        except (OSError, ValueError, KeyError, zipfile.BadZipFile):
            pass  # a damaged cache file is rebuilt, never trusted
    idx = build_index(root, split, annotations, test_list)
    with contextlib.suppress(OSError):  # a read-only cache only costs the rebuild next time
        idx.save(path)
    return idx
