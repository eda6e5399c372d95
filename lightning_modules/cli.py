"""``affbench fit | validate | test | predict``: LightningCLI over AffectModule and AbawDataModule.

The data follows the model: tasks, seq_len and img_size are linked from ``--model.*``, and the
normalisation from the backbone's own timm config. Checkpointing and early stopping watch
``val/score``; checkpoints go to ``<default_root_dir>/checkpoints/<run name>`` (the same folder
for the same experiment, so ``fit --ckpt_path last`` resumes the previous run).
``--ckpt_path`` brings its model settings: those left unset are taken from it (said in one line),
an architecture setting that contradicts it is an error. ``predict --submission DIR`` writes the
challenge's predictions.txt files, never over existing ones.
"""

from __future__ import annotations

import inspect
import os
import warnings
from pathlib import Path

import timm
import torch.distributed as dist
from jsonargparse import Namespace
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from core.errors import ConfigError
from datamodules.abaw import IMAGENET_MEAN, IMAGENET_STD, AbawDataModule
from lightning_modules.backbone import backbone_norm, load_file
from lightning_modules.experiment import quiet_warnings, run_name, trainer_defaults
from lightning_modules.module import AffectModule
from lightning_modules.objectives import parse_model_tasks
from lightning_modules.scoring import MONITOR
from lightning_modules.submission import check_submission_free, write_submission

# model settings that make another network: a checkpoint must agree with them where they are set
ARCHITECTURE = ("backbone", "head", "head_kwargs", "tasks", "seq_len", "img_size")
# what the trainer resolves itself; any other --ckpt_path must be a checkpoint file
CKPT_NAMES = ("last", "best", "hpc")


# An unknown backbone is left for the model to reject, in one line; a link would wrap the error.
# The normalisation follows the weights: a timm tag's own (pretrained, or a checkpoint's init_from).
def _norm(backbone: str, pretrained: str | bool | None, init_from: str | None) -> tuple:
    if timm.is_model(backbone):
        try:
            return backbone_norm(backbone, pretrained or init_from)
        except ConfigError:  # weights of another backbone, or none published: the model says so
            pass
    return IMAGENET_MEAN, IMAGENET_STD


def _mean(*weights: object) -> tuple[float, ...]:
    return _norm(*weights)[0]


def _std(*weights: object) -> tuple[float, ...]:
    return _norm(*weights)[1]


def _same(name: str, a: object, b: object) -> bool:
    """Equal as model settings: "va,au" is ["va", "au"], no head_kwargs is {}."""
    if name == "tasks":
        return parse_model_tasks(a) == parse_model_tasks(b)
    if name == "head_kwargs":
        return (a or {}) == (b or {})
    return a == b


def checkpoint_dir(cfg: Namespace) -> Path:
    """``<default_root_dir>/checkpoints/<run name>``: one folder per experiment, the same on every
    run of the same command."""
    m = cfg.model
    settings = {
        "model": {
            "backbone": m.backbone,
            "head": m.head,
            "head_kwargs": m.head_kwargs,
            "seq_len": m.seq_len,
            "img_size": m.img_size,
            "tasks": ",".join(parse_model_tasks(m.tasks)),
        },
        "seed": cfg.seed_everything,
    }
    root = cfg.trainer.default_root_dir or os.getcwd()
    return Path(root) / "checkpoints" / run_name(settings)


class AffbenchCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        for name in ("tasks", "seq_len", "img_size"):
            parser.link_arguments(f"model.{name}", f"data.{name}")
        weights = ("model.backbone", "model.pretrained", "model.init_from")
        parser.link_arguments(weights, "data.mean", compute_fn=_mean)
        parser.link_arguments(weights, "data.std", compute_fn=_std)
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

    def _parse_ckpt_path(self) -> None:
        """Lightning's version lays the checkpoint's hyperparameters over the whole config,
        silently replacing a --model.head given on the command line; ``_adopt_checkpoint`` does
        it with checks, once the seed (and so the checkpoint folder) is known."""

    def before_instantiate_classes(self) -> None:
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        user_dir = cfg.checkpoint.dirpath
        ckpt = cfg.get("ckpt_path")
        if ckpt == "last" and not user_dir:
            cfg.checkpoint.dirpath = str(checkpoint_dir(cfg))
        if ckpt:
            path = self._checkpoint_file(cfg, str(ckpt))
            if path is not None:
                self._adopt_checkpoint(path)
                cfg = self.config[self.subcommand]
        if not user_dir:  # after the checkpoint: its architecture names the folder
            cfg.checkpoint.dirpath = str(checkpoint_dir(cfg))
        out = cfg.get("submission")
        if self.subcommand == "predict" and out:
            check_submission_free(out, parse_model_tasks(cfg.model.tasks))

    def _checkpoint_file(self, cfg: Namespace, ckpt: str) -> Path | None:
        """The file ``--ckpt_path`` stands for: itself, the newest last*.ckpt of the checkpoint
        folder for ``last``, or None (no last checkpoint yet; best, hpc, a registry name)."""
        if ckpt == "last":
            found = sorted(Path(cfg.checkpoint.dirpath).glob("last*.ckpt"), key=os.path.getmtime)
            return found[-1] if found else None
        if ckpt in CKPT_NAMES or ckpt.startswith("registry"):
            return None
        return Path(ckpt)

    def _adopt_checkpoint(self, path: Path) -> None:
        """Check a checkpoint file before Lightning uses it and take its model settings: those
        the command line or config left at their defaults come from it (printed in one line);
        an architecture setting given there and differing from it is a ConfigError."""
        ckpt = load_file(path, "--ckpt_path")
        if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
            raise ConfigError(
                f"--ckpt_path {path} is not a Lightning checkpoint (it has no state_dict); "
                "to start from a state dict of weights, use --model.pretrained"
            )
        if self.subcommand == "fit" and "optimizer_states" not in ckpt:
            raise ConfigError(
                f"--ckpt_path {path} holds weights only (no optimizer state): fit cannot resume "
                "from it; start from it with --model.pretrained instead"
            )
        saved = dict(ckpt.get("hyper_parameters") or {})
        params = inspect.signature(AffectModule.__init__).parameters
        given = self.config[self.subcommand].model
        conflicts, taken = [], {}
        for name, value in saved.items():
            if name not in params or _same(name, given.get(name), value):
                continue
            if name in ARCHITECTURE and not _same(name, given[name], params[name].default):
                conflicts.append(name)
            else:
                taken[name] = value
        if conflicts:
            raise ConfigError(
                f"--ckpt_path {path} is another model: it has "
                + ", ".join(f"{n}={saved[n]!r}" for n in conflicts)
                + ", the settings ask for "
                + ", ".join(f"{n}={given[n]!r}" for n in conflicts)
                + "; drop those settings to use the checkpoint's, or pass one of that model"
            )
        if not taken:
            return
        self.config = self.parser.parse_object({self.subcommand: {"model": taken}}, self.config)
        shown = [f"{k}={v!r}" for k, v in taken.items() if k not in ("pretrained", "init_from")]
        if shown and rank_zero_only.rank == 0:
            print(f"model settings from the checkpoint {path}: {', '.join(shown)}")

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
    # affbench's main() hands its own argv over on purpose: Lightning's warning about args given
    # beside sys.argv would only be noise above a one-line error
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
    quiet_warnings()
    AffbenchCLI(
        AffectModule,
        AbawDataModule,
        args=args,
        seed_everything_default=0,
        trainer_defaults={
            **trainer_defaults(),
            "max_epochs": 10,
            "log_every_n_steps": 10,
        },
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
    )
