"""The official ABAW measures, computed frame-exact, and the metric keys (defined here, once).

During validation and test every frame's prediction is kept with its key (video, frame number).
At the end, across all ranks: a clip seen twice (a distributed sampler repeats samples to even
out its shards) counts once; predictions of a frame seen by several clips (overlapping windows)
are averaged into one; padding never enters; unannotated frames are dropped per task. Then,
over all annotated frames of the split pooled:

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
from torchmetrics.functional import pearson_corrcoef
from torchmetrics.functional.classification import multiclass_f1_score, multilabel_f1_score
from torchmetrics.utilities import dim_zero_cat

from lightning_modules.objectives import OUTPUTS, ccc

# metric names, the one place they are spelled; logged as f"{stage}/{name}"
MEASURE = {"va": "va_ccc", "expr": "expr_f1", "au": "au_f1", "emi": "emi_pcc"}
VALENCE, AROUSAL, AU_TUNED, SCORE = "valence_ccc", "arousal_ccc", "au_f1_tuned", "score"
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
    grid = torch.linspace(0.05, 0.95, 19, dtype=pred.dtype, device=pred.device)
    hard = (pred[None] > grid[:, None, None]).double()  # (G, M, 12)
    tgt = target[None].double()
    tp = (hard * tgt).sum(1)
    f1 = 2 * tp / (hard.sum(1) + tgt.sum(1)).clamp(min=1e-12)  # (G, 12)
    return grid[f1.argmax(0)]


def measures(
    task: str,
    keys: torch.Tensor,
    pred: torch.Tensor,
    target: torch.Tensor,
    au_thresholds: torch.Tensor | None = None,
    video_names: dict[int, str] | None = None,
) -> dict[str, float]:
    """The official measures of one task from merged frame predictions.

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
    if task == "va":
        c = ccc(pred, target)
        return {MEASURE["va"]: float(c.mean()), VALENCE: float(c[0]), AROUSAL: float(c[1])}
    if task == "expr":
        f1 = multiclass_f1_score(
            pred.argmax(-1), target.argmax(-1), num_classes=OUTPUTS["expr"], average="macro"
        )
        return {MEASURE["expr"]: float(f1)}
    if task == "au":
        # hard labels: given floats, torchmetrics applies a sigmoid to all of them as soon as one
        # lies outside [0, 1], and the F1 changes without a word
        def au_f1(thresholds: torch.Tensor | float) -> float:
            hard = (pred > thresholds).int()
            return float(
                multilabel_f1_score(hard, target.int(), num_labels=OUTPUTS["au"], average="macro")
            )

        out = {MEASURE["au"]: au_f1(0.5)}
        if au_thresholds is not None:
            out[AU_TUNED] = au_f1(au_thresholds.to(pred))
        return out
    # EMI: one prediction per video, the mean of its frames
    video = keys // FRAME_SPAN
    _, pred_v, target_v = merge_by_key(video, pred, target)
    if len(pred_v) < 2:
        return {}
    return {MEASURE["emi"]: float(pearson_corrcoef(pred_v, target_v).nan_to_num(0.0).mean())}


def score_split(
    merged: dict,
    au_thresholds: torch.Tensor | None = None,
    video_names: dict[int, str] | None = None,
) -> dict[str, float]:
    """All measures of all tasks, plus ``score``: the mean of each trained task's measure."""
    out: dict[str, float] = {}
    for task, (keys, pred, target) in merged.items():
        thresholds = au_thresholds if task == "au" else None
        out.update(measures(task, keys, pred, target, thresholds, video_names))
    main = [out[MEASURE[t]] for t in merged if MEASURE[t] in out]
    if main:
        out[SCORE] = sum(main) / len(main)
    return out
