"""``affbench fit | validate | test | predict``: LightningCLI over AffectModule and AbawDataModule.

The data follows the model: tasks, seq_len and img_size are linked from ``--model.*``, and the
normalisation from the backbone's own timm config. Checkpointing and early stopping watch
``val/score``. ``predict --submission DIR`` writes the challenge's predictions.txt files.
"""

from __future__ import annotations

import timm
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.cli import LightningCLI

from datamodules.abaw import IMAGENET_MEAN, IMAGENET_STD, AbawDataModule
from lightning_modules.backbone import backbone_norm
from lightning_modules.module import AffectModule
from lightning_modules.scoring import MONITOR
from lightning_modules.submission import write_submission


# An unknown backbone is left for the model to reject, in one line; a link would wrap the error.
def _mean(backbone: str) -> tuple[float, ...]:
    return backbone_norm(backbone)[0] if timm.is_model(backbone) else IMAGENET_MEAN


def _std(backbone: str) -> tuple[float, ...]:
    return backbone_norm(backbone)[1] if timm.is_model(backbone) else IMAGENET_STD


class AffbenchCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        for name in ("tasks", "seq_len", "img_size"):
            parser.link_arguments(f"model.{name}", f"data.{name}")
        parser.link_arguments("model.backbone", "data.mean", compute_fn=_mean)
        parser.link_arguments("model.backbone", "data.std", compute_fn=_std)
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": MONITOR,
                "checkpoint.mode": "max",
                "checkpoint.save_last": True,
                "checkpoint.filename": "best-{epoch:02d}",
            }
        )
        parser.add_lightning_class_args(EarlyStopping, "early_stopping")
        parser.set_defaults(
            {
                "early_stopping.monitor": MONITOR,
                "early_stopping.mode": "max",
                "early_stopping.patience": 3,
            }
        )
        parser.add_argument(
            "--submission",
            default=None,
            help="predict: write predictions.txt files under this folder",
        )

    def after_predict(self) -> None:
        out = self.config.get(self.subcommand, {}).get("submission")
        if not out:
            return
        outputs = self.trainer.predict_loop.predictions
        if dist.is_available() and dist.is_initialized():  # every rank predicted a share
            gathered = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, outputs)
            outputs = [o for part in gathered for o in part]
        if self.trainer.is_global_zero:
            model, data = self.model, self.datamodule
            thresholds = model.au_thresholds.cpu() if model.hparams.tune_au_thresholds else None
            test_list = data.test_list_file()
            for path in write_submission(outputs, test_list, out, model.tasks, thresholds):
                print(f"wrote {path}")


def run(args: list[str]) -> None:
    AffbenchCLI(
        AffectModule,
        AbawDataModule,
        args=args,
        seed_everything_default=0,
        trainer_defaults={
            "gradient_clip_val": 1.0,
            "precision": "bf16-mixed" if torch.cuda.is_available() else "32-true",
            "max_epochs": 10,
            "log_every_n_steps": 10,
        },
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
    )
