"""What the ABAW and the still-image datamodules load alike: their DataLoaders (batches in the
clip contract of ``datamodules/dataset.py``) and the uint8 -> normalised float32 step on the
batch's device."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from datamodules.augment import normalize_frames
from datamodules.dataset import collate_clips


class ClipLoaders:
    """Mixin for a LightningDataModule with ``self.datasets`` ("train", "val", "test") and the
    hyperparameters ``batch_size``, ``num_workers``, ``pin_memory``, ``mean`` and ``std``."""

    datasets: dict

    def _loader(self, name: str, shuffle: bool) -> DataLoader:
        workers = self.hparams.num_workers
        return DataLoader(
            self.datasets[name],
            batch_size=self.hparams.batch_size,
            shuffle=shuffle,
            drop_last=False,
            num_workers=workers,
            collate_fn=collate_clips,
            pin_memory=self.hparams.pin_memory,
            persistent_workers=workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        """uint8 frames -> normalised float32, on the batch's device (the GPU when there is one);
        cached fp16 features -> float32, with ``feature_noise`` in training."""
        if "features" in batch:
            noise = float(self.hparams.get("feature_noise") or 0.0)
            training = self.trainer is not None and self.trainer.training
            feats = {k: v.float() for k, v in batch["features"].items()}
            if noise and training:
                for k, x in feats.items():  # in units of each channel's spread (channels: dim 2)
                    dims = tuple(d for d in range(x.dim()) if d != 2)
                    feats[k] = x + noise * x.std(dim=dims, keepdim=True) * torch.randn_like(x)
            batch["features"] = feats
        elif batch["frames"].dtype == torch.uint8:
            batch["frames"] = normalize_frames(batch["frames"], self.hparams.mean, self.hparams.std)
        return batch
