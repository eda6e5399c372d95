"""Clip augmentation with torchvision's v2 transforms, on uint8 frames, and the normalisation.

A v2 transform given a (T, 3, H, W) tensor draws its random parameters once and applies them to
every frame: that is the clip-consistent default (the same flip, jitter, erasing and blur on all
T frames, so motion stays motion). ``per_frame=True`` draws them anew for each frame, as the seed
paper did.

Frames stay uint8 through the DataLoader workers (a quarter of the bytes of float32 to pass
between processes) and are normalised by ``normalize_frames`` after the batch reaches its device.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F


@dataclass
class AugmentConfig:
    """Training augmentation; probabilities in [0, 1], strengths as torchvision takes them."""

    hflip: float = 0.5
    color_jitter: float = 0.3  # brightness, contrast and saturation
    hue: float = 0.0  # off by default: faces do not change hue, and it is 4x the cost of the rest
    color_jitter_p: float = 0.8
    erasing: float = 0.25  # probability of erasing one rectangle (filled with the mean colour)
    blur: float = 0.1  # probability of a Gaussian blur
    per_frame: bool = False


class ClipTransform:
    """uint8 (T, 3, H, W) -> uint8 (T, 3, img_size, img_size), resized and maybe augmented."""

    def __init__(
        self,
        img_size: int,
        augment: AugmentConfig | None = None,
        mean: tuple[float, float, float] = (0.485, 0.456, 0.406),
    ):
        self.img_size = img_size
        self.per_frame = bool(augment and augment.per_frame)
        self.augment = None
        if augment is not None:
            j = augment.color_jitter
            fill = [round(255 * m) for m in mean]  # erased pixels normalise to 0
            self.augment = v2.Compose(
                [
                    v2.RandomHorizontalFlip(augment.hflip),
                    v2.RandomApply(
                        [v2.ColorJitter(j, j, j, augment.hue)], p=augment.color_jitter_p
                    ),
                    v2.RandomApply([v2.GaussianBlur(5, sigma=(0.1, 1.5))], p=augment.blur),
                    v2.RandomErasing(p=augment.erasing, value=fill),
                ]
            )

    def __call__(self, clip: torch.Tensor) -> torch.Tensor:
        if clip.shape[-2:] != (self.img_size, self.img_size):
            clip = F.resize(clip, [self.img_size, self.img_size], antialias=True)
        if self.augment is None:
            return clip
        if self.per_frame:
            return torch.stack([self.augment(f) for f in clip])
        return self.augment(clip)


def normalize_frames(
    frames: torch.Tensor, mean: tuple[float, float, float], std: tuple[float, float, float]
) -> torch.Tensor:
    """uint8 (..., 3, H, W) -> float32 (..., 3, H, W): ``(x / 255 - mean) / std`` per channel."""
    m = torch.tensor(mean, device=frames.device, dtype=torch.float32).view(3, 1, 1)
    s = torch.tensor(std, device=frames.device, dtype=torch.float32).view(3, 1, 1)
    return (frames.float() / 255 - m) / s
