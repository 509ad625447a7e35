"""Input corruptions for denoising autoencoders: the model sees corrupt(x) and is scored against x.

    gaussian     x + N(0, level^2), clamped to [0, 1]
    masking      each pixel zeroed with probability `level` (dropout noise, Vincent et al. 2008)
    salt_pepper  each pixel, with probability `level`, set to 0 or 1 with equal odds
    none         x unchanged

Draws come from `generator` when given (fixed noise for a comparable evaluation), else from the
global RNG (which the trainer seeds and checkpoints).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from genlab.core.schema import param

KINDS = ("none", "gaussian", "masking", "salt_pepper")
CorruptionKind = Literal["none", "gaussian", "masking", "salt_pepper"]


def _rand(x: torch.Tensor, generator: torch.Generator | None, normal: bool = False) -> torch.Tensor:
    """Uniform [0, 1) (or standard normal) noise shaped like x, drawn on the generator's device."""
    device = x.device if generator is None else generator.device
    draw = torch.randn if normal else torch.rand
    dtype = x.dtype if x.is_floating_point() else torch.float32
    return draw(x.shape, generator=generator, device=device, dtype=dtype).to(x.device)


def corrupt(
    x: torch.Tensor, kind: str, level: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """A corrupted copy of x (any shape, values in [0, 1]); x itself is not modified."""
    if kind not in KINDS:
        raise ValueError(f"unknown corruption {kind!r}; expected one of {KINDS}")
    if level < 0 or (kind in ("masking", "salt_pepper") and level > 1):
        raise ValueError(f"{kind} level must be in [0, 1], got {level}")
    if kind == "none" or level == 0:
        return x.clone()
    if kind == "gaussian":
        return (x + level * _rand(x, generator, normal=True)).clamp_(0.0, 1.0)
    u = _rand(x, generator)
    if kind == "masking":
        return x * (u >= level)
    # salt_pepper: one uniform draw decides both whether a pixel is hit (u < level) and, within
    # the hit ones, salt (u < level/2 -> 1) or pepper (level/2 <= u < level -> 0), equal odds.
    out = x.clone()
    out[u < level] = 0.0
    out[u < level / 2] = 1.0
    return out


@dataclass
class Corruption:
    """The corruption a denoising family applies to its inputs: `Corruption()(x, generator)`."""

    kind: CorruptionKind = param("gaussian", help="none | gaussian | masking | salt_pepper")
    level: float = param(
        0.25, ge=0, help="gaussian: noise std; masking, salt_pepper: share of pixels hit (<= 1)"
    )

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(
                f"kind: unknown corruption {self.kind!r}; expected one of {', '.join(KINDS)}"
            )
        if self.level < 0:
            raise ValueError(f"level: must be >= 0, got {self.level!r}")
        if self.kind in ("masking", "salt_pepper") and self.level > 1:
            raise ValueError(
                f"level: {self.kind} level is a probability in [0, 1], got {self.level!r}"
            )

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return corrupt(x, self.kind, self.level, generator)
