"""``AffectModule``: any timm backbone x any temporal head x any ABAW task(s), one LightningModule.

Frames (B, T, 3, H, W) -> encoder (per-tap maps, pooled vectors) -> temporal head (B, T, D)
-> dropout -> one linear layer per task (B, T, K). It takes plain values only, so
``save_hyperparameters()`` records the whole experiment and ``AffectModule.load_from_checkpoint``
needs nothing else.
"""

from __future__ import annotations

import math

import lightning as L
import torch
from torch import nn

from core.errors import ConfigError
from datamodules.augment import normalize_frames
from datamodules.tasks import get_task, list_tasks, parse_tasks
from lightning_modules.backbone import FrameEncoder, backbone_norm
from lightning_modules.heads import create_head
from lightning_modules.objectives import task_loss
from lightning_modules.scoring import FramePredictions, metric_key, score_split


class AffectModule(L.LightningModule):
    """Args (all plain values):
    backbone: a timm model name. pretrained: None, ``timm`` (timm's published weights, through
    the Hugging Face hub cache), a timm tag (``mobilenetv4_conv_small.e2400_r224_in1k``), or a
    local checkpoint file (a stage-1 checkpoint of ``affbench pretrain`` among them).
    freeze: none | stem | all_but_last | all; None: stem with weights, none without.
    head: a registered head name; head_kwargs its
    settings (e.g. ``{"levels": 2, "token_mixer": "factorized"}``).
    tasks: any registered tasks, e.g. va, expr, au, emi (``"va,au"`` or a list); one output
    layer each, of the task's width; multi-task losses are summed with ``task_weights``.
    seq_len, img_size: T and the input size (linked to the datamodule by the CLI).
    dropout: before the output layers. va_loss: ccc | mse. expr_loss: focal | ce.
    au_loss: focal | bce (a task without such a setting trains with its first loss kind).
    focal_gamma, au_focal_alpha, label_smoothing (EXPR),
    expr_class_weights (8 floats), au_pos_weight (12 floats).
    lr, weight_decay, warmup_epochs: AdamW with a linear warm-up (in epochs, fractions
    allowed). scheduler: cosine (to zero over the run) | cosine_restarts (period
    ``restart_epochs``) | none.
    tune_au_thresholds: choose per-AU thresholds on validation (logged as au_f1_tuned; the
    official au_f1 stays at 0.5) and use them for predictions.
    init_from: where the initial weights came from (checkpoints keep it, for the record).
    """

    def __init__(
        self,
        backbone: str = "mobilenetv4_conv_small",
        head: str = "mixer3",
        head_kwargs: dict | None = None,
        tasks: list[str] | str = "va",
        seq_len: int = 32,
        img_size: int = 112,
        pretrained: str | bool | None = None,
        freeze: str | None = None,
        dropout: float = 0.3,
        va_loss: str = "ccc",
        expr_loss: str = "focal",
        au_loss: str = "focal",
        focal_gamma: float = 2.0,
        au_focal_alpha: float = 0.75,
        label_smoothing: float = 0.1,
        expr_class_weights: list[float] | None = None,
        au_pos_weight: list[float] | None = None,
        task_weights: dict[str, float] | None = None,
        lr: float = 1e-3,
        weight_decay: float = 2e-5,
        warmup_epochs: float = 0.5,
        scheduler: str = "cosine",
        restart_epochs: int = 3,
        tune_au_thresholds: bool = False,
        init_from: str | None = None,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.tasks = parse_tasks(tasks)
        if scheduler not in ("cosine", "cosine_restarts", "none"):
            raise ConfigError(
                f"scheduler must be cosine, cosine_restarts or none, got {scheduler!r}"
            )
        if not 0 <= dropout < 1:
            raise ConfigError(f"dropout must be in [0, 1), got {dropout}")
        unknown = sorted(set(task_weights or {}) - set(list_tasks()))
        if unknown:  # a misspelt task would silently keep weight 1
            raise ConfigError(
                f"task_weights names unknown task(s) {', '.join(unknown)}; tasks are: "
                + ", ".join(list_tasks())
            )
        self.encoder = FrameEncoder(
            backbone, img_size=img_size, pretrained=pretrained, freeze=freeze
        )
        self.head = create_head(head, self.encoder.spec, seq_len, **(head_kwargs or {}))
        self.dropout = nn.Dropout(dropout)
        self.outputs = nn.ModuleDict(
            {t: nn.Linear(self.head.out_dim, get_task(t).outputs) for t in self.tasks}
        )
        # what the datamodule must normalise with: the weights' own (a timm tag's mean and std;
        # a checkpoint records its initial weights in init_from, so its tag still counts)
        self.mean, self.std = backbone_norm(backbone, pretrained or init_from)
        for name, values, n in (
            ("expr_class_weights", expr_class_weights, get_task("expr").outputs),
            ("au_pos_weight", au_pos_weight, get_task("au").outputs),
        ):
            if values is not None and len(values) != n:
                raise ConfigError(f"{name} needs {n} values, got {len(values)}")
            self.register_buffer(
                name, torch.tensor(values, dtype=torch.float32) if values else None
            )
        # the tuned thresholds of the thresholded task (AU): a buffer, so checkpoints keep them
        self.register_buffer("au_thresholds", torch.full((get_task("au").outputs,), 0.5))
        self.task_weights = {t: float((task_weights or {}).get(t, 1.0)) for t in self.tasks}
        self.frames = nn.ModuleDict({s: FramePredictions(self.tasks) for s in ("val", "test")})
        # stage -> (merged frame predictions, video names) of its last scoring: what the
        # per-video statistics of a run's intervals are made from (intervals.video_stats)
        self.last_scored: dict[str, tuple[dict, dict[int, str]]] = {}

    def forward(self, frames: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, T, 3, H, W) normalised float frames, or uint8 ones (normalised here with the
        backbone's own mean/std) -> {task: (B, T, K) raw outputs}."""
        if frames.dtype == torch.uint8:
            frames = normalize_frames(frames, self.mean, self.std)
        return self._from_features(*self.encoder(frames))

    def _from_features(self, maps: list, pooled: torch.Tensor) -> dict[str, torch.Tensor]:
        """The encoder's outputs -> {task: (B, T, K)}: the head, dropout, the output layers."""
        x = self.dropout(self.head(maps, pooled))
        return {t: layer(x) for t, layer in self.outputs.items()}

    def _raw(self, batch: dict) -> dict[str, torch.Tensor]:
        """A batch's raw outputs: from its frames, or from the frozen encoder's cached outputs
        (``features``: pooled and the taps the head reads) where the datamodule gives those."""
        if "features" not in batch:
            return self(batch["frames"])
        feats = batch["features"]
        maps = [feats.get(f"tap{i}") for i in range(len(self.encoder.spec.channels))]
        return self._from_features(maps, feats["pooled"])

    def _losses(self, raw: dict, batch: dict) -> dict[str, torch.Tensor]:
        hp = self.hparams
        return {
            t: task_loss(
                t,
                raw[t],
                batch["targets"][t],
                batch["valid"][t],
                hp.get(f"{t}_loss") or get_task(t).losses[0],  # va_loss, ...: the loss kind
                gamma=hp.focal_gamma,
                alpha=hp.au_focal_alpha,
                label_smoothing=hp.label_smoothing,
                class_weights=self.expr_class_weights,
                pos_weight=self.au_pos_weight,
            )
            for t in self.tasks
        }

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        losses = self._losses(self._raw(batch), batch)
        loss = sum(self.task_weights[t] * v for t, v in losses.items())
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss is {loss.item()} at step {self.global_step}")
        b = batch["pad"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=b)
        for t, v in losses.items():
            self.log(f"train/{t}_loss", v, batch_size=b)
        return loss

    def _eval_step(self, stage: str, batch: dict) -> None:
        raw = self._raw(batch)
        preds = {t: get_task(t).activate(v) for t, v in raw.items()}
        self.frames[stage].update(
            batch["video"], batch["frame"], batch["pad"], preds, batch["targets"], batch["valid"]
        )
        loss = sum(self.task_weights[t] * v for t, v in self._losses(raw, batch).items())
        self.log(f"{stage}/loss", loss, batch_size=batch["pad"].shape[0], sync_dist=True)

    def _eval_epoch_end(self, stage: str) -> None:
        merged = self.frames[stage].compute()  # gathered from all ranks, merged per frame
        self.frames[stage].reset()
        if stage == "val" and self.hparams.tune_au_thresholds:
            for t, (_, pred, target) in merged.items():
                if get_task(t).thresholded and len(pred):
                    self.au_thresholds = get_task(t).tune_thresholds(pred, target).float()
        tuned = self.au_thresholds if self.hparams.tune_au_thresholds else None
        names = dict(self.frames[stage].video_names)
        self.last_scored[stage] = (merged, names)
        for name, value in score_split(merged, tuned, names).items():
            self.log(metric_key(stage, name), value, prog_bar=name == "score", rank_zero_only=False)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step("val", batch)

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step("test", batch)

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        """Per-frame predictions (activated) with their keys, for a submission file."""
        preds = {t: get_task(t).activate(v).float().cpu() for t, v in self._raw(batch).items()}
        return {
            "video": batch["video"],
            "frame": batch["frame"].cpu(),
            "pad": batch["pad"].cpu(),
            "preds": preds,
        }

    def configure_optimizers(self):
        hp = self.hparams
        params = [p for p in self.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=hp.lr, weight_decay=hp.weight_decay)
        if hp.scheduler == "none":
            return opt
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        per_epoch = max(total // max(self.trainer.max_epochs or 1, 1), 1)
        warmup = int(hp.warmup_epochs * per_epoch)
        period = max(hp.restart_epochs * per_epoch, 1)

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            s = step - warmup
            if hp.scheduler == "cosine_restarts":
                return 0.5 * (1 + math.cos(math.pi * (s % period) / period))
            return 0.5 * (1 + math.cos(math.pi * min(s / max(total - warmup, 1), 1.0)))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # the weights are in the checkpoint: loading it must not need the initial file any more
        hp = checkpoint.get("hyper_parameters", {})
        if hp.get("pretrained"):
            hp["init_from"], hp["pretrained"] = hp["pretrained"], None
            # freeze as the weights resolved it (stem): without them it would resolve to none
            hp["freeze"] = self.encoder.freeze
