"""The official ABAW measures, computed frame-exact, and the metric keys.

During validation and test every frame's prediction is kept with its key (video, frame number).
At the end, across all ranks: a clip seen twice (a distributed sampler repeats samples to even
out its shards) counts once; predictions of a frame seen by several clips (overlapping windows)
are averaged into one; padding never enters; unannotated frames are dropped per task. Then,
over all annotated frames of the split pooled, each task's measures (its ``Task.measures`` in
``datamodules.tasks``):

* VA: CCC of valence and of arousal (population moments) and their mean;
* EXPR: macro F1 over the classes (torchmetrics; a class absent from both targets and
  predictions is left out of the mean, as scikit-learn's default does);
* AU: mean over the 12 AUs of the binary F1 at probability > 0.5 (or tuned per-AU thresholds);
* EMI: per video (frames averaged), Pearson's r per dimension across videos, averaged.
"""

from __future__ import annotations

import hashlib

import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from datamodules.tasks import AROUSAL, AU_TUNED, VALENCE, TaskTable, get_task  # noqa: F401

# metric names, spelled once: each task's own (its Task's ``measure``; VALENCE, AROUSAL and
# AU_TUNED beside them) and the mean of the trained tasks'; logged as f"{stage}/{name}"
MEASURE = TaskTable("measure")  # task -> its main measure, e.g. "va" -> "va_ccc"
SCORE = "score"
MONITOR = f"val/{SCORE}"  # checkpointing, early stopping, pruning and tables all use this

FRAME_SPAN = 1 << 22  # frame numbers below 4 million; video hashes take the 40 bits above


def metric_key(stage: str, name: str) -> str:
    return f"{stage}/{name}"


def video_hash(name: str) -> int:
    """A stable 40-bit id of a video name (the same on every rank and run)."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=5).digest(), "big")


def frame_keys(videos: list[str], frames: torch.Tensor) -> torch.Tensor:
    """(B,) names, (B, T) frame numbers -> (B, T) int64 keys, one per (video, frame)."""
    ids = torch.tensor([video_hash(v) for v in videos], dtype=torch.int64, device=frames.device)
    return ids[:, None] * FRAME_SPAN + frames.long()


def merge_by_key(keys: torch.Tensor, *values: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(N,) keys with repeats, (N, K) values -> (M,) unique keys and (M, K) per-key means."""
    uniq, inv = torch.unique(keys, return_inverse=True)
    count = torch.zeros(len(uniq), dtype=torch.float64, device=keys.device).index_add_(
        0, inv, torch.ones_like(inv, dtype=torch.float64)
    )
    out = [
        torch.zeros(len(uniq), v.shape[1], dtype=torch.float64, device=v.device).index_add_(
            0, inv, v.double()
        )
        / count[:, None]
        for v in values
    ]
    return (uniq, *out)


class FramePredictions(Metric):
    """Collects per-frame predictions, targets and valid flags (padding dropped); ``compute``
    gathers them from every rank and merges them per (video, frame)."""

    full_state_update = False

    def __init__(self, tasks: tuple[str, ...]):
        super().__init__()
        self.tasks = tuple(tasks)
        # id -> name of the videos this rank saw, to name them in errors (never synced)
        self.video_names: dict[int, str] = {}
        self.add_state("key", default=[], dist_reduce_fx="cat")
        self.add_state("clip", default=[], dist_reduce_fx="cat")  # key of the clip's first frame
        for t in self.tasks:
            for kind in ("pred", "target", "valid"):
                self.add_state(f"{kind}_{t}", default=[], dist_reduce_fx="cat")

    def update(
        self,
        videos: list[str],
        frames: torch.Tensor,
        pad: torch.Tensor,
        preds: dict[str, torch.Tensor],
        targets: dict[str, torch.Tensor],
        valid: dict[str, torch.Tensor],
    ) -> None:
        """videos (B,), frames/pad (B, T), preds/targets (B, T, K) activated, valid (B, T)."""
        keep = ~pad
        for v in videos:
            self.video_names.setdefault(video_hash(v), v)
        keys = frame_keys(videos, frames)
        self.key.append(keys[keep])
        self.clip.append(keys[:, :1].expand_as(keys)[keep])
        for t in self.tasks:
            getattr(self, f"pred_{t}").append(preds[t][keep].detach().float())
            getattr(self, f"target_{t}").append(targets[t][keep].float())
            getattr(self, f"valid_{t}").append(valid[t][keep].float()[:, None])

    def compute(self) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """task -> (keys (M,), merged predictions (M, K), targets (M, K)) of annotated frames."""
        if isinstance(self.key, list) and not self.key:  # after a sync it is one tensor
            raise RuntimeError("no frame was scored: the evaluation split gave no batch")
        keys, clips = dim_zero_cat(self.key), dim_zero_cat(self.clip)
        # one row per distinct (frame, clip): a repeated clip is the same prediction again
        _, inv = torch.unique(torch.stack([keys, clips], 1), dim=0, return_inverse=True)
        first = torch.full((int(inv.max()) + 1,), len(inv), dtype=torch.long, device=inv.device)
        first = first.scatter_reduce(0, inv, torch.arange(len(inv), device=inv.device), "amin")
        keys = keys[first]
        out = {}
        for t in self.tasks:
            pred, target, valid = (
                dim_zero_cat(getattr(self, f"{k}_{t}"))[first] for k in ("pred", "target", "valid")
            )
            uniq, pred, target, valid = merge_by_key(keys, pred, target, valid)
            annotated = valid[:, 0] > 0
            out[t] = (uniq[annotated], pred[annotated], target[annotated])
        return out


def tune_au_thresholds(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(M, 12) probabilities, labels -> (12,) thresholds in 0.05..0.95 maximising each AU F1."""
    return get_task("au").tune_thresholds(pred, target)


def measures(
    task: str,
    keys: torch.Tensor,
    pred: torch.Tensor,
    target: torch.Tensor,
    thresholds: torch.Tensor | None = None,
    video_names: dict[int, str] | None = None,
) -> dict[str, float]:
    """The official measures of one task from merged frame predictions (its Task's
    ``measures``; a per-video task's on one prediction per video, the mean of its frames).
    ``thresholds``: tuned per-output thresholds of a thresholded task (AU).

    A non-finite prediction is an error, never a number: torchmetrics would pass a NaN into the
    CCC, pick it as the EXPR class, or (AU) take it as a cue to apply a sigmoid to every
    probability, and Pearson's r of EMI would turn it into 0. ``video_names`` (id -> name) names
    the video in that error."""
    if len(pred) == 0:
        return {}
    bad = ~torch.isfinite(pred).all(-1)
    if bad.any():
        key = int(keys[bad][0])
        vid = key // FRAME_SPAN
        video = (video_names or {}).get(vid, f"id {vid:#012x}")
        raise FloatingPointError(
            f"{task}: {int(bad.sum())} of {len(pred)} frames have a non-finite (NaN or inf) "
            f"prediction, e.g. frame {key % FRAME_SPAN} of video {video}; "
            "a score over them would be wrong"
        )
    spec = get_task(task)
    if spec.per_video:
        _, pred, target = merge_by_key(keys // FRAME_SPAN, pred, target)
    return spec.measures(pred, target, thresholds if spec.thresholded else None)


def score_split(
    merged: dict,
    thresholds: torch.Tensor | None = None,
    video_names: dict[int, str] | None = None,
) -> dict[str, float]:
    """All measures of all tasks, plus ``score``: the mean of each trained task's measure.
    ``thresholds``: the tuned thresholds of the thresholded task (AU), or None."""
    out: dict[str, float] = {}
    for task, (keys, pred, target) in merged.items():
        out.update(measures(task, keys, pred, target, thresholds, video_names))
    main = [out[get_task(t).measure] for t in merged if get_task(t).measure in out]
    if main:
        out[SCORE] = sum(main) / len(main)
    return out
