"""What each task predicts and how it is trained: output width, activation and losses.

All losses take raw outputs (B, T, K), targets (B, T, K) and a valid mask (B, T), and average
over the valid frames only (padding and unannotated frames never reach a loss).
"""

from __future__ import annotations

import torch
from torch.nn import functional as F
from torchvision.ops import sigmoid_focal_loss

from core.errors import ConfigError

EMI_NAMES = ("Admiration", "Amusement", "Determination", "Empathic Pain", "Excitement", "Joy")
OUTPUTS = {"va": 2, "expr": 8, "au": 12, "emi": 6}
LOSSES = {"va": ("ccc", "mse"), "expr": ("focal", "ce"), "au": ("focal", "bce"), "emi": ("mse",)}


def parse_model_tasks(tasks: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """``"va,au"`` or a list -> ("va", "au"), each one of va, expr, au, emi."""
    names = tasks.split(",") if isinstance(tasks, str) else list(tasks)
    names = tuple(dict.fromkeys(n.strip().lower() for n in names if n.strip()))
    bad = [n for n in names if n not in OUTPUTS]
    if bad or not names:
        raise ConfigError(f"unknown task(s) {bad or names}; tasks are: {', '.join(OUTPUTS)}")
    return names


def activate(task: str, raw: torch.Tensor) -> torch.Tensor:
    """Raw outputs -> what is scored: VA in [-1, 1] (tanh), EXPR class probabilities (softmax),
    AU and EMI probabilities / intensities in [0, 1] (sigmoid)."""
    if task == "va":
        return torch.tanh(raw)
    if task == "expr":
        return raw.softmax(-1)
    return torch.sigmoid(raw)


def ccc(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Concordance correlation per column, population moments (the official formula):
    (N, K), (N, K) -> (K,). torchmetrics' version uses N - 1 variances, which is not it."""
    mx, my = x.mean(0), y.mean(0)
    cov = ((x - mx) * (y - my)).mean(0)
    return 2 * cov / (x.var(0, unbiased=False) + y.var(0, unbiased=False) + (mx - my) ** 2 + 1e-12)


def focal_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    gamma: float = 2.0,
    label_smoothing: float = 0.0,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """(N, K) logits, (N,) class indices -> (N,): cross-entropy (label-smoothed, class-weighted)
    scaled by (1 - p_target)^gamma, which lowers the weight of frames already right."""
    ce = F.cross_entropy(
        logits, target, weight=weight, label_smoothing=label_smoothing, reduction="none"
    )
    p = logits.softmax(-1).gather(1, target[:, None])[:, 0]
    return (1 - p).pow(gamma) * ce


def task_loss(
    task: str,
    raw: torch.Tensor,
    target: torch.Tensor,
    valid: torch.Tensor,
    kind: str,
    *,
    gamma: float = 2.0,
    alpha: float = 0.75,
    label_smoothing: float = 0.0,
    class_weights: torch.Tensor | None = None,
    pos_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """One task's loss over the valid frames of a batch; 0 (with a graph) if there are none."""
    if kind not in LOSSES[task]:
        raise ConfigError(f"{task} loss must be one of {LOSSES[task]}, got {kind!r}")
    raw, target = raw[valid].float(), target[valid].float()
    if raw.shape[0] == 0:
        return raw.sum() * 0.0
    if task == "va":
        pred = torch.tanh(raw)
        if kind == "mse" or raw.shape[0] < 2:  # a CCC needs two frames at least
            return F.mse_loss(pred, target)
        return 1 - ccc(pred, target).mean()
    if task == "expr":
        idx = target.argmax(-1)
        if kind == "ce":
            return F.cross_entropy(raw, idx, weight=class_weights, label_smoothing=label_smoothing)
        return focal_cross_entropy(raw, idx, gamma, label_smoothing, class_weights).mean()
    if task == "au":
        if kind == "bce":
            return F.binary_cross_entropy_with_logits(raw, target, pos_weight=pos_weight)
        return sigmoid_focal_loss(raw, target, alpha=alpha, gamma=gamma, reduction="mean")
    return F.mse_loss(torch.sigmoid(raw), target)
