"""Validate a checkpoint on 1 or N CPU processes (gloo) and write the metrics as JSON.

Run as a script (Lightning's DDP launcher re-runs it once per rank):
    python tests/ddp_validate.py ROOT CKPT OUT.json DEVICES
"""

import json
import sys

import lightning as L

from datamodules.abaw import AbawDataModule
from lightning_modules.module import AffectModule

if __name__ == "__main__":
    root, ckpt, out, devices = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    model = AffectModule.load_from_checkpoint(ckpt)
    hp = model.hparams
    data = AbawDataModule(
        root=root,
        tasks=hp.tasks,
        seq_len=hp.seq_len,
        stride=hp.seq_len // 2,
        img_size=hp.img_size,
        batch_size=3,
        num_workers=0,
        mean=model.mean,
        std=model.std,
    )
    trainer = L.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy="ddp" if devices > 1 else "auto",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    metrics = trainer.validate(model, data, verbose=False)[0]
    if trainer.is_global_zero:
        with open(out, "w") as f:
            json.dump({**metrics, "world_size": trainer.world_size}, f)
