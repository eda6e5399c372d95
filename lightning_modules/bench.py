"""``affbench bench-learning``: do the temporal heads learn, and does time help?

Trains each head with the same backbone, data, seed and budget (epochs), multi-task (VA, EXPR,
AU at once), then scores the last epoch's weights on Validation_Set and Test_Set with the official
measures. No checkpoint selection: every head is read at the same step. The device, threads and
versions are the conditions the command writes beside the rows (``core.conditions``).
"""

from __future__ import annotations

import time

import lightning as L

from lightning_modules.experiment import build, trainer_kwargs


def bench_learning(
    root: str,
    heads: list[str],
    backbone: str = "mobilenetv4_conv_small",
    seq_len: int = 16,
    img_size: int = 112,
    epochs: int = 8,
    batch_size: int = 8,
    lr: float = 1e-3,
    num_workers: int = 1,
    seed: int = 0,
) -> list[dict]:
    rows = []
    for head in heads:
        L.seed_everything(seed, workers=True)
        settings = {
            "model": {
                "backbone": backbone,
                "head": head,
                "tasks": "va,expr,au",
                "seq_len": seq_len,
                "img_size": img_size,
                "lr": lr,
                "freeze": "none",
            },
            "data": {"root": root, "batch_size": batch_size, "num_workers": num_workers},
            "seed": seed,
        }
        model, data = build(settings)
        trainer = L.Trainer(
            **trainer_kwargs(
                settings,
                accelerator="auto",
                max_epochs=epochs,
                logger=False,
                enable_checkpointing=False,
                check_val_every_n_epoch=epochs,  # validate the last epoch only
            )
        )
        t0 = time.perf_counter()
        trainer.fit(model, data)
        train_s = time.perf_counter() - t0
        val = trainer.validate(model, data, verbose=False)[0]
        test = trainer.test(model, data, verbose=False)[0]
        rows.append(
            {
                "head": head,
                "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
                **{k: round(v, 4) for k, v in val.items() if k != "val/loss"},
                **{k: round(v, 4) for k, v in test.items() if k != "test/loss"},
                "train_s": round(train_s),
                "steps": trainer.global_step,
                "backbone": backbone,
                "seq_len": seq_len,
                "img_size": img_size,
                "epochs": epochs,
                "batch_size": batch_size,
                "lr": lr,
                "seed": seed,
            }
        )
    return rows
