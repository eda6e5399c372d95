"""The tasks: one registry of ``Task`` objects, the one place that says what a task is.

A task is registered under the short name used everywhere else (CLI flags, batch keys, metric
keys) and carries all that the suite asks of it: its output width K; its annotation format in
the ABAW layout (see abaw-format.md); how an annotation line becomes a target row; the
activation from raw outputs to what is scored; its losses; its official measure; and how a
prediction is written to the challenge's ``predictions.txt``. Adding a task is adding one
``register_task(...)`` here (or anywhere before the model is built): the reader, the dataset,
the model's output layer, the losses, the scoring and the submission ask the object.

``va``, ``expr`` and ``au`` are frame-level, on Aff-Wild2. ``emi`` (Hume-Vidmimic2) is
video-level, on another dataset: the model side only (no annotation format, no submission);
``list_tasks(annotated=True)`` and ``parse_tasks(..., annotated=True)`` leave it out.

torch is imported inside the methods that need it: the data side (the frame index, ``affbench
data info``) reads annotation formats without loading torch (470 MiB of resident memory).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from core.errors import ConfigError

if TYPE_CHECKING:
    import torch

SPLITS = ("Train_Set", "Validation_Set")
TEST_SPLIT = "Test_Set"  # labels of the test videos, where a user has them (the synthetic set does)

AU_NAMES = (
    "AU1",
    "AU2",
    "AU4",
    "AU6",
    "AU7",
    "AU10",
    "AU12",
    "AU15",
    "AU23",
    "AU24",
    "AU25",
    "AU26",
)
EXPR_NAMES = ("Neutral", "Anger", "Disgust", "Fear", "Happiness", "Sadness", "Surprise", "Other")
EMI_NAMES = ("Admiration", "Amusement", "Determination", "Empathic Pain", "Excitement", "Joy")

# metric names beside each task's main ``measure``; logged as f"{stage}/{name}"
VALENCE, AROUSAL, AU_TUNED = "valence_ccc", "arousal_ccc", "au_f1_tuned"


@dataclass(frozen=True)
class Task:
    """One task. Fields:

    name: the short name. outputs: K, the width of ``targets[task]`` and of the output layer.
    measure: the name of the official measure (``va_ccc``): ``val/<measure>`` is its metric key.
    losses: the loss kinds it trains with, the first the default.
    Annotation format (``challenge`` None: no ABAW annotation files and no submission):
    challenge: the folder under the annotations folder (and of the submission file);
    columns: the header's names (EMI: its outputs'); values_per_line: values on a data line
    (EXPR's header names eight classes, its lines hold one index); unannotated: the value that
    marks an unannotated frame; dtype: how the frame index stores the values.
    per_video: scored on one prediction per video (its frames' mean), not per frame.
    thresholded: scored and submitted as 0/1 per output, at 0.5 or at tuned thresholds.

    Methods, all on the values of one task: ``values_ok`` / ``bad_values_message`` check
    annotation values; ``encode`` makes targets; ``activate``, ``loss`` train; ``measures`` and
    ``tune_thresholds`` score; ``submission_values`` / ``submission_rows`` write predictions.
    """

    name: str
    outputs: int
    measure: str
    losses: tuple[str, ...] = ("mse",)
    challenge: str | None = None
    columns: tuple[str, ...] = ()
    values_per_line: int = 0
    unannotated: float = -1.0
    dtype: str = "int8"  # class indices and 0/1 fit in int8
    per_video: bool = False
    thresholded: bool = False

    @property
    def header(self) -> str:
        return ",".join(self.columns)

    @property
    def num_outputs(self) -> int:  # the name the data side used before ``outputs``
        return self.outputs

    @property
    def annotated(self) -> bool:
        """Read from ABAW annotation files (and written to a ``predictions.txt``)."""
        return self.challenge is not None

    # -- annotation values -> targets ------------------------------------------------------------
    def values_ok(self, values: np.ndarray) -> np.ndarray:
        """(N, C) annotation values (blank lines NaN) -> (N, C) bool: each value allowed."""
        return np.isfinite(values)

    def bad_values_message(self, shown: str) -> str:
        """Why a line with the values ``shown`` (comma-separated) is not allowed."""
        return f"value out of range in {shown!r}"

    def encode(self, values: np.ndarray) -> np.ndarray:
        """(N, values_per_line) annotation values -> (N, K) float32 targets. Unannotated rows
        give something finite; the dataset zeroes them and marks them invalid."""
        return values.astype(np.float32)

    # -- training ---------------------------------------------------------------------------------
    def activate(self, raw: torch.Tensor) -> torch.Tensor:
        """(..., K) raw outputs -> (..., K) what is scored: here intensities in [0, 1]."""
        return raw.sigmoid()

    def loss(
        self,
        raw: torch.Tensor,
        target: torch.Tensor,
        kind: str,
        *,
        gamma: float = 2.0,
        alpha: float = 0.75,
        label_smoothing: float = 0.0,
        class_weights: torch.Tensor | None = None,
        pos_weight: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(N, K) raw outputs, (N, K) targets of N >= 1 valid frames -> the mean loss of kind
        ``kind`` (one of ``losses``). Here the MSE of the activation; the keyword settings are
        the model's (focal gamma and alpha, EXPR's smoothing and class weights, AU's
        pos_weight): each task reads those it has."""
        from torch.nn import functional as F

        return F.mse_loss(self.activate(raw), target)

    # -- scoring ----------------------------------------------------------------------------------
    def measures(
        self, pred: torch.Tensor, target: torch.Tensor, thresholds: torch.Tensor | None = None
    ) -> dict[str, float]:
        """(M, K) activated predictions and targets of the annotated frames (per-video tasks:
        of the videos), all finite -> {metric name: value}, ``measure`` among them."""
        raise NotImplementedError(f"task {self.name!r} defines no measure")

    def frame_stats(self, pred: torch.Tensor, target: torch.Tensor) -> np.ndarray:
        """(M, K) predictions and targets, as ``measures`` takes them -> (M, S) float64 rows
        whose sum over any set of the rows is all :meth:`measures_from_stats` needs for that
        set's measures. Summed per video once, they let a bootstrap redraw whole videos
        without the frames (intervals.py)."""
        raise NotImplementedError(f"task {self.name!r} defines no summed statistics")

    def measures_from_stats(self, sums: np.ndarray) -> dict[str, np.ndarray]:
        """(..., S) sums of :meth:`frame_stats` rows -> {metric name: (...) values}: what
        ``measures`` gives on those rows (the official measures at the default threshold),
        to rounding, for a whole batch of resamples at once."""
        raise NotImplementedError(f"task {self.name!r} defines no summed statistics")

    def tune_thresholds(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """(M, K) probabilities and 0/1 targets -> (K,) thresholds in 0.05..0.95, each the one
        maximising its output's binary F1 (thresholded tasks)."""
        import torch

        grid = torch.linspace(0.05, 0.95, 19, dtype=pred.dtype, device=pred.device)
        hard = (pred[None] > grid[:, None, None]).double()  # (G, M, K)
        tgt = target[None].double()
        tp = (hard * tgt).sum(1)
        f1 = 2 * tp / (hard.sum(1) + tgt.sum(1)).clamp(min=1e-12)  # (G, K)
        return grid[f1.argmax(0)]

    # -- submission -------------------------------------------------------------------------------
    def submission_values(
        self, pred: torch.Tensor, thresholds: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(M, K) predictions -> (M, values_per_line) what a row of ``predictions.txt`` holds
        after the location: floats are written with 4 decimals, integers as they are."""
        return pred

    def submission_rows(
        self, pred: torch.Tensor, thresholds: torch.Tensor | None = None
    ) -> list[str]:
        """(M, K) predictions -> M rows of comma-separated values (the location not included)."""
        values = self.submission_values(pred, thresholds)
        fmt = "{:.4f}" if values.is_floating_point() else "{}"
        return [",".join(fmt.format(x) for x in row) for row in values.tolist()]


def ccc(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Concordance correlation per column, population moments (the official formula):
    (N, K), (N, K) -> (K,). torchmetrics' version uses N - 1 variances, which is not it."""
    mx, my = x.mean(0), y.mean(0)
    cov = ((x - mx) * (y - my)).mean(0)
    return 2 * cov / (x.var(0, unbiased=False) + y.var(0, unbiased=False) + (mx - my) ** 2 + 1e-12)


def moments(pred: torch.Tensor, target: torch.Tensor) -> np.ndarray:
    """(M, K), (M, K) -> (M, 6K) float64: 1, x, y, x^2, y^2 and xy per column, the sums that
    give means, variances and the covariance of any set of rows."""
    x, y = pred.double().cpu().numpy(), target.double().cpu().numpy()
    return np.concatenate([np.ones_like(x), x, y, x * x, y * y, x * y], axis=-1)


def central_moments(sums: np.ndarray) -> tuple[np.ndarray, ...]:
    """(..., 6K) sums of :func:`moments` -> (..., K) each: mean of x, of y, population
    variance of x, of y, covariance."""
    n, sx, sy, sxx, syy, sxy = np.split(sums, 6, axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mx, my = sx / n, sy / n
        return mx, my, sxx / n - mx * mx, syy / n - my * my, sxy / n - mx * my


def focal_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    gamma: float = 2.0,
    label_smoothing: float = 0.0,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """(N, K) logits, (N,) class indices -> (N,): cross-entropy (label-smoothed, class-weighted)
    scaled by (1 - p_target)^gamma, which lowers the weight of frames already right."""
    from torch.nn import functional as F

    ce = F.cross_entropy(
        logits, target, weight=weight, label_smoothing=label_smoothing, reduction="none"
    )
    p = logits.softmax(-1).gather(1, target[:, None])[:, 0]
    return (1 - p).pow(gamma) * ce


@dataclass(frozen=True)
class ValenceArousal(Task):
    """Two values in [-1, 1]; tanh; 1 - mean CCC (or MSE); the mean CCC of the two."""

    def values_ok(self, values: np.ndarray) -> np.ndarray:
        return ((values >= -1) & (values <= 1)) | (values == self.unannotated)

    def bad_values_message(self, shown: str) -> str:
        return f"value outside [-1, 1] (and not the unannotated -5) in {shown!r}"

    def activate(self, raw: torch.Tensor) -> torch.Tensor:
        return raw.tanh()

    def loss(self, raw: torch.Tensor, target: torch.Tensor, kind: str, **_: object) -> torch.Tensor:
        from torch.nn import functional as F

        pred = self.activate(raw)
        if kind == "mse" or raw.shape[0] < 2:  # a CCC needs two frames at least
            return F.mse_loss(pred, target)
        return 1 - ccc(pred, target).mean()

    def measures(
        self, pred: torch.Tensor, target: torch.Tensor, thresholds: torch.Tensor | None = None
    ) -> dict[str, float]:
        c = ccc(pred, target)
        return {self.measure: float(c.mean()), VALENCE: float(c[0]), AROUSAL: float(c[1])}

    def frame_stats(self, pred: torch.Tensor, target: torch.Tensor) -> np.ndarray:
        return moments(pred, target)

    def measures_from_stats(self, sums: np.ndarray) -> dict[str, np.ndarray]:
        mx, my, vx, vy, cov = central_moments(sums)
        c = 2 * cov / (vx + vy + (mx - my) ** 2 + 1e-12)
        return {self.measure: c.mean(-1), VALENCE: c[..., 0], AROUSAL: c[..., 1]}


@dataclass(frozen=True)
class Expression(Task):
    """One class index per line, one-hot targets; softmax; focal or plain cross-entropy; macro
    F1 over the K classes (a class absent from targets and predictions is left out, as
    scikit-learn's default does); the class index is submitted."""

    def values_ok(self, values: np.ndarray) -> np.ndarray:
        return (values >= -1) & (values < self.outputs) & (values == np.round(values))

    def bad_values_message(self, shown: str) -> str:
        return f"class {shown!r} is not an integer in 0..{self.outputs - 1} or -1"

    def encode(self, values: np.ndarray) -> np.ndarray:
        target = np.zeros((len(values), self.outputs), np.float32)
        target[np.arange(len(values)), np.clip(values[:, 0], 0, self.outputs - 1).astype(int)] = 1
        return target

    def activate(self, raw: torch.Tensor) -> torch.Tensor:
        return raw.softmax(-1)

    def loss(
        self,
        raw: torch.Tensor,
        target: torch.Tensor,
        kind: str,
        *,
        gamma: float = 2.0,
        label_smoothing: float = 0.0,
        class_weights: torch.Tensor | None = None,
        **_: object,
    ) -> torch.Tensor:
        from torch.nn import functional as F

        idx = target.argmax(-1)
        if kind == "ce":
            return F.cross_entropy(raw, idx, weight=class_weights, label_smoothing=label_smoothing)
        return focal_cross_entropy(raw, idx, gamma, label_smoothing, class_weights).mean()

    def measures(
        self, pred: torch.Tensor, target: torch.Tensor, thresholds: torch.Tensor | None = None
    ) -> dict[str, float]:
        from torchmetrics.functional.classification import multiclass_f1_score

        f1 = multiclass_f1_score(
            pred.argmax(-1), target.argmax(-1), num_classes=self.outputs, average="macro"
        )
        return {self.measure: float(f1)}

    def frame_stats(self, pred: torch.Tensor, target: torch.Tensor) -> np.ndarray:
        """One-hot cells of the (target, prediction) confusion matrix, K x K per frame."""
        k = self.outputs
        cell = (target.argmax(-1) * k + pred.argmax(-1)).cpu().numpy()
        return np.eye(k * k, dtype=np.float64)[cell]

    def measures_from_stats(self, sums: np.ndarray) -> dict[str, np.ndarray]:
        k = self.outputs
        conf = sums.reshape(*sums.shape[:-1], k, k)  # [..., target, prediction]
        tp = np.diagonal(conf, axis1=-2, axis2=-1)
        wrong = conf.sum(-1) + conf.sum(-2) - 2 * tp  # false negatives + false positives
        seen = (tp + wrong) > 0  # a class absent from targets and predictions: left out
        with np.errstate(invalid="ignore", divide="ignore"):
            f1 = np.where(seen, 2 * tp / (2 * tp + wrong), 0.0)
            return {self.measure: f1.sum(-1) / seen.sum(-1)}

    def submission_values(
        self, pred: torch.Tensor, thresholds: torch.Tensor | None = None
    ) -> torch.Tensor:
        return pred.argmax(-1, keepdim=True)


@dataclass(frozen=True)
class ActionUnits(Task):
    """K 0/1 labels; sigmoid; sigmoid focal loss or BCE with ``pos_weight``; the mean over the
    K units of the binary F1 at probability > 0.5 (and at tuned thresholds, if given)."""

    def values_ok(self, values: np.ndarray) -> np.ndarray:
        return (values == 0) | (values == 1) | (values == -1)

    def bad_values_message(self, shown: str) -> str:
        return f"AU values must be 0, 1 or -1, got {shown!r}"

    def loss(
        self,
        raw: torch.Tensor,
        target: torch.Tensor,
        kind: str,
        *,
        gamma: float = 2.0,
        alpha: float = 0.75,
        pos_weight: torch.Tensor | None = None,
        **_: object,
    ) -> torch.Tensor:
        from torch.nn import functional as F
        from torchvision.ops import sigmoid_focal_loss

        if kind == "bce":
            return F.binary_cross_entropy_with_logits(raw, target, pos_weight=pos_weight)
        return sigmoid_focal_loss(raw, target, alpha=alpha, gamma=gamma, reduction="mean")

    def measures(
        self, pred: torch.Tensor, target: torch.Tensor, thresholds: torch.Tensor | None = None
    ) -> dict[str, float]:
        from torchmetrics.functional.classification import multilabel_f1_score

        # hard labels: given floats, torchmetrics applies a sigmoid to all of them as soon as one
        # lies outside [0, 1], and the F1 changes without a word
        def f1(cut: torch.Tensor | float) -> float:
            hard = (pred > cut).int()
            return float(
                multilabel_f1_score(hard, target.int(), num_labels=self.outputs, average="macro")
            )

        out = {self.measure: f1(0.5)}
        if thresholds is not None:
            out[AU_TUNED] = f1(thresholds.to(pred))
        return out

    def frame_stats(self, pred: torch.Tensor, target: torch.Tensor) -> np.ndarray:
        """True positives, false positives and false negatives at 0.5, K of each per frame."""
        hard, tgt = (pred > 0.5).cpu().numpy(), target.cpu().numpy() > 0.5
        return np.concatenate([hard & tgt, hard & ~tgt, ~hard & tgt], axis=-1).astype(np.float64)

    def measures_from_stats(self, sums: np.ndarray) -> dict[str, np.ndarray]:
        tp, fp, fn = np.split(sums, 3, axis=-1)
        denom = 2 * tp + fp + fn
        f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)  # empty unit: 0
        return {self.measure: f1.mean(-1)}

    def submission_values(
        self, pred: torch.Tensor, thresholds: torch.Tensor | None = None
    ) -> torch.Tensor:
        if thresholds is None:
            return (pred > 0.5).int()
        return (pred > thresholds.to(pred)).int()


@dataclass(frozen=True)
class EmotionalMimicry(Task):
    """K intensities in [0, 1] per video; sigmoid; MSE; the mean over the K dimensions of
    Pearson's r across videos (a constant dimension counts 0)."""

    def measures(
        self, pred: torch.Tensor, target: torch.Tensor, thresholds: torch.Tensor | None = None
    ) -> dict[str, float]:
        from torchmetrics.functional import pearson_corrcoef

        if len(pred) < 2:
            return {}
        return {self.measure: float(pearson_corrcoef(pred, target).nan_to_num(0.0).mean())}

    def frame_stats(self, pred: torch.Tensor, target: torch.Tensor) -> np.ndarray:
        """Moments of the videos' predictions (a row per video: the task is scored per video)."""
        return moments(pred, target)

    def measures_from_stats(self, sums: np.ndarray) -> dict[str, np.ndarray]:
        _, _, vx, vy, cov = central_moments(sums)
        with np.errstate(invalid="ignore", divide="ignore"):
            r = np.nan_to_num(cov / np.sqrt(vx * vy), nan=0.0, posinf=0.0, neginf=0.0)
        r = np.where(sums[..., :1] >= 2, r, np.nan)  # fewer than two videos: no measure
        return {self.measure: r.mean(-1)}


_TASKS: dict[str, Task] = {}


def register_task(task: Task) -> Task:
    """Add a task to the registry; a name taken already raises."""
    if task.name in _TASKS:
        raise ValueError(f"task {task.name!r} is already registered")
    _TASKS[task.name] = task
    return task


register_task(
    ValenceArousal(
        "va",
        outputs=2,
        measure="va_ccc",
        losses=("ccc", "mse"),
        challenge="VA_Estimation_Challenge",
        columns=("valence", "arousal"),
        values_per_line=2,
        unannotated=-5.0,
        dtype="float32",
    )
)
register_task(
    Expression(
        "expr",
        outputs=8,
        measure="expr_f1",
        losses=("focal", "ce"),
        challenge="EXPR_Recognition_Challenge",
        columns=EXPR_NAMES,
        values_per_line=1,
    )
)
register_task(
    ActionUnits(
        "au",
        outputs=12,
        measure="au_f1",
        losses=("focal", "bce"),
        challenge="AU_Detection_Challenge",
        columns=AU_NAMES,
        values_per_line=12,
        thresholded=True,
    )
)
register_task(
    EmotionalMimicry(
        "emi",
        outputs=6,
        measure="emi_pcc",
        losses=("mse",),
        columns=EMI_NAMES,  # no annotation files: the names of its outputs
        dtype="float32",
        per_video=True,
    )
)


def list_tasks(annotated: bool = False) -> list[str]:
    """Registered task names, in registration order; ``annotated``: only those read from ABAW
    annotation files (the data side's tasks)."""
    return [n for n, t in _TASKS.items() if t.annotated or not annotated]


def get_task(name: str) -> Task:
    try:
        return _TASKS[name]
    except KeyError:
        raise ConfigError(f"unknown task {name!r}; tasks are: {', '.join(_TASKS)}") from None


def parse_tasks(
    tasks: str | list[str] | tuple[str, ...], annotated: bool = False
) -> tuple[str, ...]:
    """``"va,au"`` or ``["va", "au"]`` -> ``("va", "au")``, each checked against the registry
    (``annotated``: against the tasks with annotation files, as the datamodule reads)."""
    known = list_tasks(annotated)
    names = tasks.split(",") if isinstance(tasks, str) else list(tasks)
    names = [n.strip().lower() for n in names if n.strip()]
    if not names:
        raise ConfigError("no task given; tasks are: " + ", ".join(known))
    for n in names:
        if n not in known:
            raise ConfigError(f"unknown task {n!r}; tasks are: {', '.join(known)}")
    return tuple(dict.fromkeys(names))


class TaskTable(Mapping):
    """A read-only view of one field of every registered task, by name: ``OUTPUTS["au"]`` is
    12. It reads the registry on each use, so a task registered later is in it."""

    def __init__(self, field: str):
        self.field = field

    def __getitem__(self, name: str) -> object:
        return getattr(_TASKS[name], self.field)

    def __iter__(self) -> Iterator[str]:
        return iter(list(_TASKS))

    def __len__(self) -> int:
        return len(_TASKS)


TaskSpec = Task  # the name the data side used before the registry held whole tasks
