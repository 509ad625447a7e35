"""Differentiable augmentation for GAN discriminators (DiffAugment, Zhao et al. 2020).

Both the real and the generated images pass through the same random transformations before D,
in D's update and in G's, and the transformations are differentiable, so G learns through them.
D then cannot win by memorising the exact real images, and nothing it rewards can be undone by
an augmentation (the generator is never asked to draw augmented images). Only transformations
that keep a small bright lesion are offered: no cutout, which could erase it. Policies, for
images in [0, 1] (the original's strengths, halved where its images were in [-1, 1]):

    brightness   x + b,                  b ~ U[-0.25, 0.25] per image
    contrast     (x - m) c + m,          c ~ U[0.5, 1.5] per image, m the image's mean
    translation  shift by up to 1/8 of the height and width (whole pixels), zeros let in

Random numbers come from the global torch RNG, whose state the trainer's checkpoints hold.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

AUGMENTATIONS = ("brightness", "contrast", "translation")
TRANSLATION_RATIO = 0.125


def _brightness(x: torch.Tensor) -> torch.Tensor:
    return x + (torch.rand(x.shape[0], 1, 1, 1, device=x.device, dtype=x.dtype) - 0.5) * 0.5


def _contrast(x: torch.Tensor) -> torch.Tensor:
    m = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - m) * (torch.rand(x.shape[0], 1, 1, 1, device=x.device, dtype=x.dtype) + 0.5) + m


def translate(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """Shift image i by (dy[i], dx[i]) whole pixels (down, right), letting zeros in."""
    b, _, h, w = x.shape
    rows = torch.arange(h, device=x.device)[None, :] - dy[:, None] + 1  # (B, H): padded row read
    cols = torch.arange(w, device=x.device)[None, :] - dx[:, None] + 1
    pad = F.pad(x, [1, 1, 1, 1])  # a zero border: out-of-range reads clamp onto it
    rows, cols = rows.clamp(0, h + 1), cols.clamp(0, w + 1)
    idx = torch.arange(b, device=x.device)[:, None, None]
    return pad.permute(0, 2, 3, 1)[idx, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def _translation(x: torch.Tensor) -> torch.Tensor:
    b, _, h, w = x.shape
    sy, sx = int(h * TRANSLATION_RATIO + 0.5), int(w * TRANSLATION_RATIO + 0.5)
    dy = torch.randint(-sy, sy + 1, (b,), device=x.device)
    dx = torch.randint(-sx, sx + 1, (b,), device=x.device)
    return translate(x, dy, dx)


_FUNCS = {"brightness": _brightness, "contrast": _contrast, "translation": _translation}


def diff_augment(x: torch.Tensor, policy: list[str] | tuple[str, ...]) -> torch.Tensor:
    """x (B, C, H, W) through each transformation of `policy` in order; [] returns x itself."""
    for name in policy:
        x = _FUNCS[name](x)
    return x
