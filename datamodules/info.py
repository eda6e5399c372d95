"""``affbench data info``: what a dataset holds, per task and split, from its frame index.

For the videos that have an annotation file for the task:

* ``videos``, ``frames`` (all frame numbers 1..L of those videos);
* ``annotated_frames`` (a valid label), ``unannotated_frames`` (-5 / -1 lines, blank lines, and
  frames past the end of the annotation file);
* ``missing_images`` (frames without an image on disk) and ``annotated_missing_images``;
* the annotation files' own messiness: ``blank_lines``, ``lines_beyond_frames`` (lines past the
  video's last image), ``frames_beyond_lines`` (images past the file's last line);
* ``labels``: class counts (EXPR), positive rates (AU), mean/std (VA) over annotated frames.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from datamodules.index import COUNT_FIELDS, FrameIndex, find_annotations_dir, load_index
from datamodules.tasks import SPLITS, TEST_SPLIT, get_task, list_tasks


def task_summary(index: FrameIndex, task: str) -> dict:
    spec = get_task(task)
    annotated_videos = index.annotated_videos[task]
    in_task = np.repeat(annotated_videos, index.lengths)
    valid = index.valid[task]
    labels = index.labels[task][valid]
    counts = dict(zip(COUNT_FIELDS, index.counts[task].sum(0).tolist(), strict=True))
    out = {
        "videos": int(annotated_videos.sum()),
        "frames": int(in_task.sum()),
        "annotated_frames": int(valid.sum()),
        "unannotated_frames": int((in_task & ~valid).sum()),
        "missing_images": int((in_task & ~index.has_image).sum()),
        "annotated_missing_images": int((valid & ~index.has_image).sum()),
        "blank_lines": counts["blank_lines"],
        "lines_beyond_frames": counts["lines_beyond_frames"],
        "frames_beyond_lines": counts["frames_beyond_lines"],
    }
    if task == "va":
        out["labels"] = {
            f"{name}_{stat}": round(float(fn(labels[:, i])) if len(labels) else float("nan"), 4)
            for i, name in enumerate(spec.columns)
            for stat, fn in (("mean", np.mean), ("std", np.std))
        }
    elif task == "expr":
        hist = np.bincount(labels[:, 0].astype(int), minlength=spec.num_outputs)
        out["labels"] = dict(zip(spec.columns, hist.tolist(), strict=True))
    else:
        rates = labels.mean(0) if len(labels) else np.full(len(spec.columns), np.nan)
        out["labels"] = {n: round(float(r), 4) for n, r in zip(spec.columns, rates, strict=True)}
    return out


def dataset_info(
    root: Path | str, annotations: str | None = None, cache_dir: str | None = None
) -> dict:
    """{split: {task: summary}} for every split folder that exists (Train, Validation, Test)."""
    ann_dir = find_annotations_dir(Path(root), annotations)
    out: dict[str, dict] = {}
    for split in (*SPLITS, TEST_SPLIT):
        if not any(
            (ann_dir / get_task(t).challenge / split).is_dir() for t in list_tasks(annotated=True)
        ):
            continue
        index = load_index(root, split, annotations, cache_dir=cache_dir)
        out[split] = {t: task_summary(index, t) for t in index.tasks}
    return out


def format_info(info: dict) -> str:
    """The summary as aligned text tables, one per split."""
    keys = (
        "videos",
        "frames",
        "annotated_frames",
        "unannotated_frames",
        "missing_images",
        "annotated_missing_images",
        "blank_lines",
        "lines_beyond_frames",
        "frames_beyond_lines",
    )
    lines = []
    for split, tasks in info.items():
        lines.append(f"{split}")
        lines.append("  " + f"{'':26}" + "".join(f"{t:>10}" for t in tasks))
        for k in keys:
            lines.append("  " + f"{k:26}" + "".join(f"{tasks[t][k]:>10}" for t in tasks))
        for t, s in tasks.items():
            dist = ", ".join(f"{k} {v}" for k, v in s["labels"].items())
            lines.append(f"  {t} labels: {dist}")
        lines.append("")
    return "\n".join(lines)
