"""Clips: windows of T consecutive frame numbers of one video, as (video, first frame offset).

Training windows start every ``stride`` frames (optionally shifted at random each time they are
drawn) and keep only windows holding at least one labelled frame. Evaluation windows slide with
``stride <= T`` from the first frame until the video's last frame is covered, so every frame is
in some window; frames past the video's end are padding, marked and never scored.
"""

from __future__ import annotations

import numpy as np

from datamodules.index import FrameIndex


def _any_in_window(
    mask: np.ndarray, index: FrameIndex, video: np.ndarray, offset: np.ndarray, t: int
):
    """(M,) bool: does window m (rows start[video] + offset .. + t, clipped to its video) hold a
    True of ``mask``? One cumulative sum, no loop over windows."""
    csum = np.concatenate([[0], np.cumsum(mask, dtype=np.int64)])
    first = index.start[video] + offset
    last = np.minimum(first + t, index.start[video + 1])
    return csum[last] > csum[first]


def scored_mask(index: FrameIndex, tasks: tuple[str, ...]) -> np.ndarray:
    """(N,) frames that carry a label for at least one of ``tasks``."""
    mask = np.zeros(len(index), bool)
    for t in tasks:
        if t in index.valid:
            mask |= index.valid[t]
    return mask


def train_windows(
    index: FrameIndex, tasks: tuple[str, ...], seq_len: int, stride: int
) -> np.ndarray:
    """(M, 2) int64 [video, offset]: strided windows that fit in their video (a video shorter
    than T gives one padded window) and hold a labelled frame and an image."""
    if seq_len < 1 or stride < 1:
        raise ValueError(f"seq_len and stride must be >= 1, got {seq_len}, {stride}")
    lengths = index.lengths
    last = np.maximum(lengths - seq_len, 0)
    counts = last // stride + 1
    video = np.repeat(np.arange(len(lengths)), counts)
    offset = (np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)) * stride
    keep = _any_in_window(scored_mask(index, tasks), index, video, offset, seq_len)
    keep &= _any_in_window(index.has_image, index, video, offset, seq_len)
    return np.stack([video[keep], offset[keep]], 1).astype(np.int64)


def eval_windows(
    index: FrameIndex, seq_len: int, stride: int, scored: np.ndarray | None = None
) -> np.ndarray:
    """(M, 2) int64 [video, offset]: sliding windows that cover every frame of every video (the
    last one padded past the end); windows without a frame of ``scored`` are left out, and so are
    videos without any image (nothing to show the model)."""
    if not 1 <= stride <= seq_len:
        raise ValueError(
            f"evaluation stride must be in 1..seq_len={seq_len} to cover every frame, got {stride}"
        )
    lengths = index.lengths
    # starts 0, stride, ... until start + T >= L
    counts = np.where(lengths > 0, -(-np.maximum(lengths - seq_len, 0) // stride) + 1, 0)
    video = np.repeat(np.arange(len(lengths)), counts)
    offset = (np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)) * stride
    keep = _any_in_window(index.has_image, index, video, np.zeros_like(offset), 10**12)
    if scored is not None:
        keep &= _any_in_window(scored, index, video, offset, seq_len)
    return np.stack([video[keep], offset[keep]], 1).astype(np.int64)


def window_rows(
    index: FrameIndex, video: int, offset: int, seq_len: int
) -> tuple[np.ndarray, np.ndarray]:
    """Rows of one window, (T,) int64, and its padding mask (T,) bool. Padding repeats the
    video's last row, so it is always a valid row to read."""
    pos = offset + np.arange(seq_len)
    length = int(index.lengths[video])
    pad = pos >= length
    rows = index.start[video] + np.minimum(pos, length - 1)
    return rows.astype(np.int64), pad
