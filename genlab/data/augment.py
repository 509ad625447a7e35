"""Training-time image augmentation (torchvision.transforms.v2), configured from a recipe.

    model:
      augment: {hflip: true, degrees: 10, translate: 0.1, brightness: 0.2}

`build_augment(cfg)` gives a function (B, C, H, W) -> (B, C, H, W) that transforms every image
on its own and clamps the result to [0, 1], or None when nothing is enabled. The random draws
come from the global torch RNG (which the trainer seeds and checkpoints).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from genlab.core.schema import param


@dataclass
class AugmentConfig:
    hflip: bool = param(False, help="random horizontal flip (p 0.5)")
    vflip: bool = param(False, help="random vertical flip (p 0.5)")
    degrees: float = param(0.0, ge=0, le=180, help="random rotation in [-degrees, degrees]")
    translate: float = param(0.0, ge=0, lt=1, help="random shift up to this fraction of W and H")
    scale: list[float] = param(default_factory=lambda: [1.0, 1.0], gt=0,
                               help="random zoom factor range [lo, hi]")
    brightness: float = param(0.0, ge=0, help="ColorJitter brightness (factor in [1-b, 1+b])")
    contrast: float = param(0.0, ge=0, help="ColorJitter contrast (factor in [1-c, 1+c])")

    def __post_init__(self):
        if len(self.scale) != 2 or self.scale[0] > self.scale[1]:
            raise ValueError(f"scale: expected [lo, hi] with lo <= hi, got {self.scale}")

    @property
    def enabled(self) -> bool:
        return bool(self.hflip or self.vflip or self.degrees or self.translate
                    or list(self.scale) != [1.0, 1.0] or self.brightness or self.contrast)


def build_augment(a: AugmentConfig) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The batch augmentation `a` describes (None when it does nothing)."""
    if not a.enabled:
        return None
    from torchvision.transforms import v2

    ts = []
    if a.hflip:
        ts.append(v2.RandomHorizontalFlip())
    if a.vflip:
        ts.append(v2.RandomVerticalFlip())
    if a.degrees or a.translate or list(a.scale) != [1.0, 1.0]:
        ts.append(v2.RandomAffine(degrees=a.degrees,
                                  translate=(a.translate, a.translate) if a.translate else None,
                                  scale=tuple(a.scale) if list(a.scale) != [1.0, 1.0] else None))
    if a.brightness or a.contrast:
        ts.append(v2.ColorJitter(brightness=a.brightness or None, contrast=a.contrast or None))
    per_image = v2.Compose(ts)

    def augment(x: torch.Tensor) -> torch.Tensor:
        return torch.stack([per_image(img) for img in x]).clamp_(0, 1)

    return augment


__all__ = ["AugmentConfig", "build_augment"]
