"""The feature cache: a frozen frame encoder's outputs, computed once and read by every run.

When the encoder is frozen (``freeze: all``), every run of a head grid or sweep would run the
same encoder on the same frames. Instead its outputs are kept on disk, fp16 and memory-mapped,
one folder per encoder and one per video::

    <cache>/features/<backbone>-<img_size>px-<key>/
        encoder.json                       what the key stands for (backbone, weights, size...)
        <video>/pooled.npy                 (n, C_last) the pooled vector of every frame
        <video>/tap<i>.npy                 (n, C_i, h_i, w_i) tap i's map, only where a head
                                           reads it (the Mixer heads)
        <video>/video.json                 the frame files it was computed from, and the parts

``key`` hashes the backbone, the weights' tensors themselves (random, timm or stage 1: whatever
the encoder holds), the input size, the taps and the normalisation: a changed weights file or
setting is another folder. ``n`` is the video's last image frame; row ``f - 1`` is frame ``f``,
and a frame without an image (or with an unreadable one) holds its nearest readable
neighbour's features, as the pixel loader fills it. A video's features are valid while its frame
files keep their names, sizes and modification times (one ``stat`` per frame at set-up): a
changed frame re-extracts that video.

Pixel augmentation cannot reach a cached feature. What stays: the random shift of the training
windows (temporal jitter) and ``feature_noise`` (Gaussian noise on the features, in units of
each channel's spread).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from core.errors import DataError
from core.keys import settings_key
from core.paths import cache_root
from datamodules.augment import ClipTransform, normalize_frames
from datamodules.dataset import ClipDataset, collate_clips
from datamodules.index import FrameIndex

log = logging.getLogger(__name__)

CACHE_VERSION = 1
POOLED = "pooled"
FEATURES_MODES = ("auto", "off", "only")


def default_features_dir() -> Path:
    return cache_root() / "features"


def tap_part(i: int) -> str:
    """The file stem of tap ``i`` (its position among the encoder's taps, 0 = finest)."""
    return f"tap{i}"


def weights_sha(module: torch.nn.Module) -> str:
    """SHA-256 of every tensor of ``module`` (parameters and buffers: BatchNorm statistics count),
    with its name, dtype and shape."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


@dataclass(frozen=True)
class EncoderId:
    """What a cached feature depends on besides the frames."""

    backbone: str
    weights_sha256: str
    img_size: int
    taps: tuple[int, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    version: int = CACHE_VERSION

    @property
    def folder_name(self) -> str:
        return f"{self.backbone}-{self.img_size}px-{settings_key(asdict(self))}"


@dataclass(frozen=True)
class Layout:
    """The shape of each cached part per frame (from the encoder's FeatureSpec)."""

    pooled_dim: int
    maps: tuple[tuple[int, int, int], ...]  # (C, h, w) per tap

    def shape(self, part: str) -> tuple[int, ...]:
        return (self.pooled_dim,) if part == POOLED else self.maps[int(part[3:])]

    def bytes_per_frame(self, parts: list[str] | tuple[str, ...]) -> int:
        return sum(2 * int(np.prod(self.shape(p))) for p in parts)  # fp16


def encoder_layout(encoder) -> Layout:
    spec = encoder.spec
    return Layout(
        spec.pooled_dim,
        tuple((c, h, w) for c, (h, w) in zip(spec.channels, spec.sizes, strict=True)),
    )


def parts_for(maps_used: int, n_taps: int) -> list[str]:
    """The parts a head reads: the pooled vector always, and its last ``maps_used`` taps."""
    return [POOLED] + [tap_part(i) for i in range(n_taps - maps_used, n_taps)]


def size_line(layout: Layout, parts: list[str], frames: int | None = None) -> str:
    """``pooled 1.9 KB/frame (0.002 GB per 1,000 frames) + taps 0,1,2 ...``: what a cache costs."""
    taps = [p for p in parts if p != POOLED]
    out = []
    for label, group in (("pooled", [POOLED]), (f"taps {','.join(t[3:] for t in taps)}", taps)):
        if group:
            b = layout.bytes_per_frame(group)
            out.append(f"{label} {b / 1e3:.1f} KB/frame ({b / 1e6:.3f} GB per 1,000 frames)")
    line = " + ".join(out)
    if frames is not None:
        line += f"; {frames:,} frames: {layout.bytes_per_frame(parts) * frames / 1e9:.2f} GB"
    return line


def frame_fingerprint(index: FrameIndex, v: int) -> tuple[int, str]:
    """(n, hash) of video ``v``'s frame files: n is its last image frame, the hash covers every
    image's number, size and modification time."""
    lo, hi = int(index.start[v]), int(index.start[v + 1])
    rows = lo + np.flatnonzero(index.has_image[lo:hi])
    if not len(rows):
        return 0, ""
    h = hashlib.sha1()
    for r in rows.tolist():
        path = index.image_path(r)
        try:
            st = os.stat(path)
            h.update(f"{index.frame[r]}:{st.st_size}:{st.st_mtime_ns}|".encode())
        except FileNotFoundError:  # gone since indexing: the pixel loader fills it too
            h.update(f"{index.frame[r]}:gone|".encode())
    return int(index.frame[rows[-1]]), h.hexdigest()


class FeatureCache:
    """One encoder's cached features (see the module docstring)."""

    def __init__(self, ident: EncoderId, layout: Layout, root: str | Path | None = None):
        self.ident, self.layout = ident, layout
        self.folder = Path(root or default_features_dir()) / ident.folder_name

    @classmethod
    def of(cls, encoder, mean, std, root: str | Path | None = None) -> FeatureCache:
        """The cache of a FrameEncoder's current weights, fed frames normalised with mean/std."""
        ident = EncoderId(
            backbone=encoder.name,
            weights_sha256=weights_sha(encoder),
            img_size=int(encoder.img_size),
            taps=tuple(int(t) for t in encoder.taps),
            mean=tuple(round(float(m), 6) for m in mean),
            std=tuple(round(float(s), 6) for s in std),
        )
        return cls(ident, encoder_layout(encoder), root)

    def video_dir(self, video: str) -> Path:
        return self.folder / video

    def video_meta(self, video: str) -> dict | None:
        try:
            return json.loads((self.video_dir(video) / "video.json").read_text())
        except (FileNotFoundError, ValueError):
            return None

    def missing(self, index: FrameIndex, parts: list[str]) -> dict[int, list[str]]:
        """{video id: parts to compute} for the videos of ``index`` whose cached features are
        absent, incomplete, or older than their frame files."""
        out = {}
        for v, name in enumerate(index.videos):
            n, fp = frame_fingerprint(index, v)
            if n == 0:
                continue  # no image at all: no window ever reads it
            meta = self.video_meta(name)
            if meta is None or meta.get("fingerprint") != fp or meta.get("frames") != n:
                out[v] = list(parts)
            else:  # a part listed but damaged (truncated, overwritten) is computed again
                listed = meta.get("parts", [])
                need = [p for p in parts if p not in listed or not self._intact(name, p, n)]
                if need:
                    out[v] = need
        return out

    def _intact(self, video: str, part: str, n: int) -> bool:
        try:
            return self.open(video, part).shape == (n, *self.layout.shape(part))
        except DataError:
            return False

    def open(self, video: str, part: str) -> np.ndarray:
        """One part of one video, memory-mapped; a DataError naming the file if it is damaged
        (set-up checks every part first and extracts a damaged one again)."""
        path = self.video_dir(video) / f"{part}.npy"
        try:
            return np.load(path, mmap_mode="r")
        except (OSError, ValueError) as e:
            raise DataError(
                f"cached features {path} cannot be read ({type(e).__name__}: {e}); delete it "
                "and run again to extract it anew"
            ) from None

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.folder.rglob("*.npy"))

    def write_ident(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        meta = {**asdict(self.ident), "layout": asdict(self.layout)}
        _write_json(self.folder / "encoder.json", meta)

    @contextlib.contextmanager
    def locked(self):
        """An exclusive lock on this cache (two workers never extract the same video at once)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / ".lock", "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


class _FrameRows(ClipDataset):
    """One frame per item (the rows to encode), decoded and filled as the pixel loader does."""

    def __init__(self, index: FrameIndex, rows: np.ndarray, img_size: int):
        super().__init__(index, np.zeros((0, 2), np.int64), (), 1, ClipTransform(img_size))
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        row = int(self.rows[i])
        bad: list[str] = []
        img, used = self._load(row, bad)
        blank = torch.zeros(3, 112, 112, dtype=torch.uint8)  # a video without a readable image
        clip = self.transform((img if img is not None else blank)[None])
        own = bool(self.index.has_image[row])
        return {
            "frames": clip,
            "row": row,
            "pad": torch.zeros(1, dtype=torch.bool),
            "filled": torch.tensor([used != row]),
            "corrupt": torch.tensor([own and used != row]),
            "bad_files": bad,
        }


def extract(
    cache: FeatureCache,
    encoder: torch.nn.Module,
    index: FrameIndex,
    todo: dict[int, list[str]],
    *,
    batch_size: int = 64,
    num_workers: int = 2,
    check_batch=None,
    progress: bool = True,
) -> dict:
    """Compute ``todo`` ({video: parts}) with ``encoder`` and write it into ``cache``. Frames are
    decoded and filled as for training (``check_batch``, the datamodule's bad-frame check, sees
    every batch) by one DataLoader over all the videos' images; the encoder runs in eval mode,
    under bf16 autocast on a GPU. Each video is written (atomically) once its last image is
    done. Returns ``{"frames": encoded frames, "seconds": ..., "frames_per_s": ...}``."""
    from tqdm import tqdm

    t0 = time.perf_counter()
    device = (
        torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else None
    )
    model = encoder
    if device is not None:
        import copy

        model = copy.deepcopy(encoder).to(device)
    was_training = model.training
    model.eval()
    videos = [_VideoOut(cache, index, v, parts) for v, parts in todo.items()]
    nearest = index.nearest_image_row()
    rows = np.concatenate([v.own for v in videos]) if videos else np.zeros(0, np.int64)
    ends = np.cumsum([len(v.own) for v in videos])  # rows done when video k is complete
    # the run's randomness must not depend on whether its features were cached already (a
    # DataLoader draws its seed from the global generator)
    with torch.random.fork_rng(devices=[device] if device is not None else []):
        try:
            cache.write_ident()
            loader = DataLoader(
                _FrameRows(index, rows, cache.ident.img_size),
                batch_size=batch_size,
                num_workers=num_workers,
                collate_fn=collate_clips,
            )
            bar = tqdm(
                total=len(rows),
                desc=f"features {cache.ident.backbone} {cache.ident.img_size}px",
                unit="frame",
                disable=not progress or not sys.stderr.isatty(),  # no \r-bars in log files
                file=sys.stderr,
                dynamic_ncols=True,
            )
            done, written, dev = 0, 0, next(model.parameters()).device
            with torch.no_grad():
                for batch in loader:
                    if check_batch is not None:
                        check_batch(batch)
                    frames = normalize_frames(batch["frames"].to(dev), *_norm(cache))
                    with torch.autocast("cuda", torch.bfloat16, enabled=dev.type == "cuda"):
                        maps, pooled = model(frames)
                    outputs = {
                        POOLED: pooled[:, 0],
                        **{tap_part(i): m[:, 0] for i, m in enumerate(maps)},
                    }
                    got = batch["row"].numpy()
                    owner = np.searchsorted(ends, np.arange(done, done + len(got)), side="right")
                    for k in np.unique(owner).tolist():
                        sel = owner == k
                        videos[k].write(got[sel], outputs, batch["bad_files"], sel)
                    done += len(got)
                    while written < len(videos) and ends[written] <= done:
                        videos[written].finish(nearest)
                        written += 1
                    bar.update(len(got))
            bar.close()
        finally:
            model.train(was_training)
    seconds = time.perf_counter() - t0
    return {
        "frames": int(len(rows)),
        "seconds": round(seconds, 2),
        "frames_per_s": round(len(rows) / seconds, 1) if seconds else None,
    }


def _norm(cache: FeatureCache) -> tuple[tuple[float, ...], tuple[float, ...]]:
    return cache.ident.mean, cache.ident.std


class _VideoOut:
    """One video's parts being written: fp16 memory maps under temporary names, renamed with its
    ``video.json`` once every image of the video is in."""

    def __init__(self, cache: FeatureCache, index: FrameIndex, v: int, parts: list[str]):
        self.cache, self.index, self.parts = cache, index, list(parts)
        self.name = index.videos[v]
        self.n, fp = frame_fingerprint(index, v)
        self.lo = int(index.start[v])
        self.own = _own_rows(index, v)  # rows with an image: each is encoded once
        self.out = cache.video_dir(self.name)
        meta = cache.video_meta(self.name)
        if meta is None or meta.get("fingerprint") != fp or meta.get("frames") != self.n:
            shutil.rmtree(self.out, ignore_errors=True)  # stale: every part is recomputed
            meta = {"frames": self.n, "fingerprint": fp, "parts": []}
        self.meta, self.bad = meta, set()
        self.out.mkdir(parents=True, exist_ok=True)
        self.tmp = {p: self.out / f".{p}.{os.getpid()}.tmp.npy" for p in self.parts}
        self.arrays = {
            p: np.lib.format.open_memmap(
                self.tmp[p], mode="w+", dtype=np.float16, shape=(self.n, *cache.layout.shape(p))
            )
            for p in self.parts
        }

    def write(self, rows: np.ndarray, outputs: dict, bad_files: list[str], sel: np.ndarray):
        local = rows - self.lo
        for p in self.parts:
            self.arrays[p][local] = (
                outputs[p][torch.from_numpy(sel)].to(torch.float16).cpu().numpy()
            )
        self.bad |= {f for f in bad_files if f"/{self.name}/" in f}

    def finish(self, nearest: np.ndarray) -> None:
        """``nearest``: the index's nearest_image_row(); frames without an image take their
        nearest image's features (the pixel loader's rule)."""
        lo, n = self.lo, self.n
        source = nearest[lo : lo + n] - lo
        fill = np.flatnonzero(~self.index.has_image[lo : lo + n])
        for p in self.parts:
            if len(fill):
                self.arrays[p][fill] = self.arrays[p][source[fill]]
            self.arrays[p].flush()
            os.replace(self.tmp[p], self.out / f"{p}.npy")
        self.arrays.clear()
        self.meta["parts"] = sorted(set(self.meta["parts"]) | set(self.parts))
        self.meta["unreadable"] = sorted(set(self.meta.get("unreadable", [])) | self.bad)
        _write_json(self.out / "video.json", self.meta)


def _own_rows(index: FrameIndex, v: int) -> np.ndarray:
    lo, hi = int(index.start[v]), int(index.start[v + 1])
    return lo + np.flatnonzero(index.has_image[lo:hi])


class FeatureDataset(ClipDataset):
    """Windows of an index -> samples whose ``features`` ({"pooled": (T, C_last) fp16,
    "tap<i>": (T, C_i, h_i, w_i) fp16}) replace ``frames``; the rest of the clip contract
    (targets, valid, video, frame, pad, filled) is the pixel loader's."""

    def __init__(self, cache: FeatureCache, parts: list[str], *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.cache, self.parts = cache, list(parts)
        self._open: dict[tuple[int, str], np.ndarray] = {}  # memory maps, per worker

    def _array(self, v: int, part: str) -> np.ndarray:
        key = (v, part)
        if key not in self._open:
            self._open[key] = self.cache.open(self.index.videos[v], part)
        return self._open[key]

    def _inputs(self, video: int, rows: np.ndarray) -> dict:
        pooled = self._array(video, POOLED)
        local = np.minimum(rows - int(self.index.start[video]), len(pooled) - 1)
        feats = {
            p: torch.from_numpy(np.ascontiguousarray(self._array(video, p)[local]))
            for p in self.parts
        }
        return {
            "features": feats,
            "filled": torch.from_numpy(~self.index.has_image[rows]),
            "corrupt": torch.zeros(len(rows), dtype=torch.bool),
            "bad_files": [],
        }
