"""Training a task: its loss over the valid frames of a batch, and its activation.

What each task is (output width, activation, losses) is its ``Task`` object
(``datamodules.tasks``); this module masks a batch down to its valid frames and asks it. All
losses take raw outputs (B, T, K), targets (B, T, K) and a valid mask (B, T), and average over
the valid frames only (padding and unannotated frames never reach a loss).
"""

from __future__ import annotations

import torch

from core.errors import ConfigError
from datamodules.tasks import (  # noqa: F401  (ccc, focal_cross_entropy, EMI_NAMES: re-exported)
    EMI_NAMES,
    TaskTable,
    ccc,
    focal_cross_entropy,
    get_task,
    parse_tasks,
)

OUTPUTS = TaskTable("outputs")  # task -> K, read from the registry
parse_model_tasks = parse_tasks  # the model side's name for the one parser


def activate(task: str, raw: torch.Tensor) -> torch.Tensor:
    """Raw outputs -> what is scored (the task's activation: VA tanh, EXPR softmax, AU and
    EMI sigmoid)."""
    return get_task(task).activate(raw)


def task_loss(
    task: str,
    raw: torch.Tensor,
    target: torch.Tensor,
    valid: torch.Tensor,
    kind: str,
    **settings: object,
) -> torch.Tensor:
    """One task's loss over the valid frames of a batch; 0 (with a graph) if there are none.
    ``settings``: the model's loss settings (``gamma``, ``alpha``, ``label_smoothing``,
    ``class_weights``, ``pos_weight``), passed to ``Task.loss``, which reads those it has."""
    spec = get_task(task)
    if kind not in spec.losses:
        raise ConfigError(f"{task} loss must be one of {spec.losses}, got {kind!r}")
    raw, target = raw[valid].float(), target[valid].float()
    if raw.shape[0] == 0:
        return raw.sum() * 0.0
    return spec.loss(raw, target, kind, **settings)
