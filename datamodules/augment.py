"""Clip augmentation with torchvision's v2 transforms.

A v2 transform given a (T, 3, H, W) tensor draws its random parameters once and applies them to
every frame: that is the clip-consistent default (the same flip, jitter, erasing and blur on all
T frames, so motion stays motion). ``per_frame=True`` draws them anew for each frame, as the seed
paper did.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchvision.transforms import v2


@dataclass
class AugmentConfig:
    """Training augmentation; probabilities in [0, 1], strengths as torchvision takes them."""

    hflip: float = 0.5
    color_jitter: float = 0.3  # brightness, contrast and saturation strength; hue is a third of it
    color_jitter_p: float = 0.8
    erasing: float = 0.25  # probability of erasing one rectangle
    blur: float = 0.1  # probability of a Gaussian blur
    per_frame: bool = False


class ClipTransform:
    """uint8 (T, 3, H, W) -> float32 (T, 3, img_size, img_size), normalised with mean/std."""

    def __init__(
        self,
        img_size: int,
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
        augment: AugmentConfig | None = None,
    ):
        self.per_frame = bool(augment and augment.per_frame)
        steps: list[torch.nn.Module] = [v2.Resize((img_size, img_size), antialias=True)]
        if augment is not None:
            j = augment.color_jitter
            steps += [
                v2.RandomHorizontalFlip(augment.hflip),
                v2.RandomApply(
                    [v2.ColorJitter(j, j, j, min(j / 3, 0.5))], p=augment.color_jitter_p
                ),
                v2.RandomApply([v2.GaussianBlur(5, sigma=(0.1, 1.5))], p=augment.blur),
            ]
        steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
        if augment is not None and augment.erasing > 0:
            steps.append(v2.RandomErasing(p=augment.erasing, value=0))
        self.transform = v2.Compose(steps)

    def __call__(self, clip: torch.Tensor) -> torch.Tensor:
        if self.per_frame:
            return torch.stack([self.transform(f) for f in clip])
        return self.transform(clip)
