"""The challenge's ``predictions.txt``: one row for every frame of the organisers' test list.

Predictions of a frame seen by several clips are averaged; a listed frame without a prediction
(its video's clips never reached it) takes the nearest predicted frame of the same video, and a
video without any prediction (no face image at all) the split's mean prediction, with a warning.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from datamodules.index import read_test_list
from datamodules.tasks import get_task
from lightning_modules.scoring import FRAME_SPAN, frame_keys, merge_by_key, video_hash

log = logging.getLogger(__name__)


def merged_predictions(outputs: list[dict], task: str) -> tuple[torch.Tensor, torch.Tensor]:
    """predict_step outputs -> (sorted unique keys (M,), mean predictions (M, K))."""
    keys = torch.cat([frame_keys(o["video"], o["frame"])[~o["pad"]] for o in outputs])
    values = torch.cat([o["preds"][task][~o["pad"]] for o in outputs])
    uniq, mean = merge_by_key(keys, values)
    return uniq, mean


def lookup_nearest(uniq: torch.Tensor, wanted: torch.Tensor) -> torch.Tensor:
    """For each wanted key, the index in sorted ``uniq`` of the same key, else of the nearest
    frame of the same video (ties: the earlier frame); -1 where the video has no prediction."""
    u, w = uniq.numpy(), wanted.numpy()
    pos = np.searchsorted(u, w)
    lo, hi = np.clip(pos - 1, 0, len(u) - 1), np.clip(pos, 0, len(u) - 1)
    same_lo = (u[lo] // FRAME_SPAN == w // FRAME_SPAN) & (u[lo] <= w)
    same_hi = u[hi] // FRAME_SPAN == w // FRAME_SPAN
    exact = u[hi] == w
    use_hi = exact | (same_hi & (~same_lo | (u[hi] - w < w - u[lo])))
    return torch.from_numpy(np.where(use_hi, hi, np.where(same_lo, lo, -1)))


def submission_paths(out_dir: Path | str, tasks: tuple[str, ...]) -> dict[str, Path]:
    """Task -> ``out_dir/<Challenge>/predictions.txt`` for the tasks with a challenge folder
    (EMI is judged per video on another dataset: it has none)."""
    return {
        t: Path(out_dir) / get_task(t).challenge / "predictions.txt"
        for t in tasks
        if get_task(t).annotated
    }


def check_submission_free(out_dir: Path | str, tasks: tuple[str, ...]) -> None:
    """Refuse, before anything is predicted or written, to write where a file already is."""
    paths = submission_paths(out_dir, tasks).values()
    for folder in (Path(out_dir), *(p.parent for p in paths)):
        if folder.exists() and not folder.is_dir():
            raise FileExistsError(f"--submission: {folder} is a file, not a folder")
    taken = [str(p) for p in paths if p.exists()]
    if taken:
        raise FileExistsError(
            f"--submission: {', '.join(taken)} already exist(s): move them away or choose "
            "another folder (nothing was predicted or overwritten)"
        )


def write_submission(
    outputs: list[dict],
    test_list: Path | str,
    out_dir: Path | str,
    tasks: tuple[str, ...],
    au_thresholds: torch.Tensor | None = None,
) -> list[Path]:
    """Write ``out_dir/<Challenge>/predictions.txt`` for each frame task; returns the paths.
    Each row is the task's ``submission_rows``; ``au_thresholds`` are the tuned thresholds of
    the thresholded task (AU; 0.5 when None). An existing file is never overwritten
    (FileExistsError before anything is written)."""
    check_submission_free(out_dir, tasks)
    listed = read_test_list(Path(test_list))
    locs = [f"{v}/{f:05d}.jpg" for v, f in zip(listed["video"], listed["frame"], strict=True)]
    wanted = torch.tensor(
        [
            video_hash(v) * FRAME_SPAN + int(f)
            for v, f in zip(listed["video"], listed["frame"], strict=True)
        ]
    )
    texts = {}  # every file is made before the first is written: an error leaves none behind
    for task, path in submission_paths(out_dir, tasks).items():
        uniq, pred = merged_predictions(outputs, task)
        bad = ~torch.isfinite(pred).all(-1)
        if bad.any():
            raise FloatingPointError(
                f"{task}: {int(bad.sum())} of {len(pred)} predicted frames are not finite (NaN or "
                f"inf): no predictions.txt written"
            )
        idx = lookup_nearest(uniq, wanted)
        p = pred[idx.clamp(min=0)]
        if (idx < 0).any():  # a video with no image at all: the split's mean prediction, said aloud
            missing = sorted({locs[i].split("/")[0] for i in torch.flatnonzero(idx < 0).tolist()})
            log.warning(
                "no prediction for video(s) %s: writing the mean prediction", ", ".join(missing)
            )
            p[idx < 0] = pred.mean(0).to(p)
        spec = get_task(task)
        rows = spec.submission_rows(p, au_thresholds if spec.thresholded else None)
        lines = [
            f"image_location,{spec.header}",
            *(f"{loc},{r}" for loc, r in zip(locs, rows, strict=True)),
        ]
        texts[path] = "\n".join(lines) + "\n"
    for path, text in texts.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return list(texts)
