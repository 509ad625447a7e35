"""Two random views of every image in a batch, for joint-embedding self-supervised learning.

    v1, v2 = Views()(x)                      # training: draws from the global torch RNG
    v1, v2 = Views()(x, generator=g)         # evaluation, renders: a fixed stream

Each view is the image under nuisance alterations only: independent x and y scale, shift (with
bilinear resampling at a random sub-pixel offset), contrast gain around a random centre, a flat
shade, an optional Gaussian blur, an optional horizontal flip and fresh per-pixel noise. No crop:
a crop can cut a small lesion out of one view, and the model would be taught that lesion and no
lesion are the same image.

Why these and these ranges: a contrastive model finds each image again among the others by
whatever tells images apart most cheaply. The brain factory alters every image with a shrink
along x and along y, a shift, a contrast gain, a shade and per-pixel noise; any of those an
image keeps in both of its views identifies it better than anatomy or lesions do. So each
alteration here spans at least the factory's own range (genlab.data.brain_factory: SHRINK,
SHIFT_*, CONTRAST_*, SHADE_*, NOISE_AMP), x and y scale are drawn independently (one shared
scale leaves each image's own aspect ratio intact, a shortcut), and the noise is fresh: the
factory's noise is a fixed pattern per image, and new noise on top plus the resampling (which
blends neighbouring pixels differently in each view) leaves no pixel pattern in common.

Everything is batched torch on the batch's device: one affine_grid + grid_sample for the
geometry, elementwise ops for the rest. Random numbers come from `generator` when given (on the
generator's device, moved to the batch's), else from the global RNG, which the trainer seeds and
checkpoints, so a resumed run draws the same views.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from genlab.core.schema import param

#: per-image parameters drawn in one call: sx, sy, tx, ty, gain, centre, shade, noise, blur, sigma, flip
_N_PARAMS = 11


def _pair(name: str, v: list[float], lo: float | None = None) -> None:
    if len(v) != 2 or v[0] > v[1]:
        raise ValueError(f"{name}: expected [low, high] with low <= high, got {v!r}")
    if lo is not None and v[0] < lo:
        raise ValueError(f"{name}: expected values >= {lo}, got {v!r}")


def _uniform(u: torch.Tensor, rng: list[float]) -> torch.Tensor:
    return rng[0] + (rng[1] - rng[0]) * u


@dataclass
class Views:
    """The view pipeline's settings (`model.views` of family ssl); `Views()(x)` makes two views."""

    scale: list[float] = param(default_factory=lambda: [0.85, 1.15], gt=0, help=(
        "content scale along x and, drawn independently, along y: uniform in [low, high] "
        "(the brain factory shrinks each axis by 0.90-1.00)"))
    shift: float = param(6.0, ge=0, help=(
        "translation along x and along y, uniform in +-shift px (factory: +-4 px); at least "
        "+-0.5 px is always applied, so resampling never lands on the pixel grid"))
    gain: list[float] = param(default_factory=lambda: [0.75, 1.25], gt=0, help=(
        "contrast gain k of x -> c + k (x - c), uniform (factory: 1 +- 0.2)"))
    centre: list[float] = param(default_factory=lambda: [0.2, 0.7], help=(
        "contrast centre c, uniform, as a fraction of the value range (factory: 0.2-0.7)"))
    shade: float = param(0.1, ge=0, help=(
        "flat brightness shift, uniform in +-shade, as a fraction of the value range "
        "(factory: +-0.08)"))
    noise: list[float] = param(default_factory=lambda: [0.0, 0.06], ge=0, help=(
        "fresh per-pixel noise, uniform in +-amp with amp uniform in [low, high] per view, as a "
        "fraction of the value range (factory: 0-0.05); it hides each image's own noise pattern"))
    blur_prob: float = param(0.0, ge=0, le=1, help=(
        "probability of a Gaussian blur per view (0: none; blur can erase faint tiny lesions)"))
    blur_sigma: list[float] = param(default_factory=lambda: [0.5, 1.5], gt=0, help=(
        "Gaussian blur sigma in px, uniform in [low, high]"))
    flip: bool = param(False, help="mirror left-right with probability 0.5 per view")

    def __post_init__(self):
        _pair("scale", self.scale)
        _pair("gain", self.gain)
        _pair("centre", self.centre)
        _pair("noise", self.noise)
        _pair("blur_sigma", self.blur_sigma)

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None,
                 value_range: tuple[float, float] = (0.0, 1.0)) -> tuple[torch.Tensor, torch.Tensor]:
        """Two views of every image of x (B, C, H, W): a pair of tensors shaped like x, in
        `value_range`. Both are made in one batched pass over 2B images."""
        v = self.apply(torch.cat([x, x]), generator, value_range)
        return v[: len(x)], v[len(x):]

    def apply(self, x: torch.Tensor, generator: torch.Generator | None = None,
              value_range: tuple[float, float] = (0.0, 1.0)) -> torch.Tensor:
        """One random view of every image of x (B, C, H, W)."""
        if x.dim() != 4:
            raise ValueError(f"views: expected images (B, C, H, W), got {tuple(x.shape)}")
        x = x.float()
        b = x.shape[0]
        u = _rand((b, _N_PARAMS), generator, x.device)
        lo, hi = float(value_range[0]), float(value_range[1])
        out = self._geometry(x - lo, u) + lo  # what moves in from outside is the range's low end
        if self.blur_prob > 0:
            out = self._blur(out, u)
        span = hi - lo
        col = (b, 1, 1, 1)
        gain = _uniform(u[:, 4], self.gain).view(col)
        centre = (lo + span * _uniform(u[:, 5], self.centre)).view(col)
        shade = (span * self.shade * (2 * u[:, 6] - 1)).view(col)
        amp = (span * _uniform(u[:, 7], self.noise)).view(col)
        noise = 2 * _rand(tuple(out.shape), generator, x.device) - 1
        out = centre + gain * (out - centre) + shade + amp * noise
        return out.clamp_(lo, hi)

    def _geometry(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Scale, shift and flip as one affine resampling (bilinear; zero outside the image, as
        outside a scanner's field of view: reflected borders would mirror the skull in)."""
        b, _, h, w = x.shape
        sx, sy = _uniform(u[:, 0], self.scale), _uniform(u[:, 1], self.scale)
        reach = max(self.shift, 0.5)
        tx, ty = reach * (2 * u[:, 2] - 1), reach * (2 * u[:, 3] - 1)  # px
        flip = (u[:, 10] < 0.5) if self.flip else torch.zeros_like(u[:, 10], dtype=torch.bool)
        fx = torch.where(flip, -1.0, 1.0).to(u)
        # affine_grid maps output to input coordinates in [-1, 1]: content scaled by s and moved
        # by t px reads the input at (out - t') / s, with t' = 2 t / size in those units
        theta = torch.zeros(b, 2, 3, device=x.device)
        theta[:, 0, 0] = fx / sx
        theta[:, 0, 2] = -(2 * tx / w) / sx
        theta[:, 1, 1] = 1 / sy
        theta[:, 1, 2] = -(2 * ty / h) / sy
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    def _blur(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """A separable Gaussian blur of each chosen image, with its own sigma (grouped conv)."""
        b, c, h, w = x.shape
        chosen = u[:, 8] < self.blur_prob
        if not bool(chosen.any()):
            return x
        sigma = _uniform(u[:, 9], self.blur_sigma)
        r = max(1, math.ceil(3 * self.blur_sigma[1]))
        k = torch.exp(-0.5 * (torch.arange(-r, r + 1, device=x.device, dtype=x.dtype)[None]
                              / sigma[:, None]) ** 2)
        k = (k / k.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (B*C, 2r+1)
        flat = x.reshape(1, b * c, h, w)
        flat = F.conv2d(F.pad(flat, (r, r, 0, 0), mode="replicate"), k[:, None, None, :], groups=b * c)
        flat = F.conv2d(F.pad(flat, (0, 0, r, r), mode="replicate"), k[:, None, :, None], groups=b * c)
        return torch.where(chosen.view(b, 1, 1, 1), flat.view(b, c, h, w), x)


def _rand(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """Uniform [0, 1) numbers on `device`, from `generator` (drawn on its device) or the global RNG."""
    if generator is None:
        return torch.rand(shape, device=device)
    return torch.rand(shape, generator=generator, device=generator.device).to(device)


__all__ = ["Views"]
