"""Input corruptions for denoising and restoration autoencoders: the model sees corrupt(x) and is
scored against x.

Noise (pixel by pixel):
    gaussian       x + N(0, level^2), clamped to [0, 1]
    masking        each pixel zeroed with probability `level` (dropout noise, Vincent et al. 2008)
    salt_pepper    each pixel, with probability `level`, set to 0 or 1 with equal odds
    none           x unchanged

Restoration (Models Genesis, Zhou et al. 2019/2021; MAE, He et al. 2022): a whole region is
destroyed, so the model can only restore it from what surrounds it, and has to learn what the
anatomy around a region implies about the region itself. `level` is in [0, 1] for all of them,
and 0 leaves x unchanged.
    inpaint        `boxes` random boxes per image, each side level/2 .. level of the image's,
                   filled (`fill`)
    outpaint       everything outside one random box filled; the box's sides are 1 - level ..
                   1 - level/2 of the image's
    local_shuffle  a share `level` of the `window` x `window` cells of a grid (its offset random per
                   batch) have their pixels permuted (all channels alike): texture destroyed,
                   the cell's intensities kept
    intensity      a random monotone cubic Bezier curve applied to the intensities; its two inner
                   control points lie `level` of the way from the identity line's to random ones
    genesis        per image, the paper's mix: local_shuffle (p 0.5), then intensity (p 0.9), then
                   with p 0.9 a painting, inpaint (1 in 5) or outpaint (4 in 5), each at `level`
    patch_mask     round(level x n) of the n non-overlapping `patch` x `patch` patches filled (MAE)

`fill`: noise (uniform in [0, 1)), zero, or mean (the image's mean, per channel). The region
kinds need images (B, C, H, W); `corrupt_with_mask` also returns the boolean mask of the
pixels the corruption replaced or moved (shaped like x), for a loss on those pixels only.
Draws come from `generator` when given (fixed noise for a comparable evaluation), else from the
global RNG (which the trainer seeds and checkpoints).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from genlab.core.schema import param

KINDS = ("none", "gaussian", "masking", "salt_pepper", "inpaint", "outpaint", "local_shuffle",
         "intensity", "genesis", "patch_mask")
CorruptionKind = Literal["none", "gaussian", "masking", "salt_pepper", "inpaint", "outpaint",
                         "local_shuffle", "intensity", "genesis", "patch_mask"]
#: kinds that destroy whole regions (they need (B, C, H, W) images)
REGION_KINDS = ("inpaint", "outpaint", "local_shuffle", "intensity", "genesis", "patch_mask")
#: kinds whose level is a share or a strength, so at most 1
SHARE_KINDS = ("masking", "salt_pepper", *REGION_KINDS)
#: kinds that leave some pixels untouched: a loss on the corrupted pixels only means something
MASKED_KINDS = ("masking", "salt_pepper", "inpaint", "outpaint", "local_shuffle", "genesis",
                "patch_mask")
FILLS = ("noise", "zero", "mean")
# Models Genesis' per-image probabilities (Zhou et al. 2021, their released configuration)
GENESIS_SHUFFLE_P, GENESIS_INTENSITY_P, GENESIS_PAINT_P, GENESIS_INPAINT_SHARE = 0.5, 0.9, 0.9, 0.2
PERMUTATIONS = 256  # local_shuffle: random permutations drawn per batch


def _rand(x: torch.Tensor, generator: torch.Generator | None, normal: bool = False) -> torch.Tensor:
    """Uniform [0, 1) (or standard normal) noise shaped like x, drawn on the generator's device."""
    device = x.device if generator is None else generator.device
    draw = torch.randn if normal else torch.rand
    dtype = x.dtype if x.is_floating_point() else torch.float32
    return draw(x.shape, generator=generator, device=device, dtype=dtype).to(x.device)


def _u(shape: tuple[int, ...], x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Uniform [0, 1) float32 draws of `shape` (random sizes, positions, keys), on x's device."""
    device = x.device if generator is None else generator.device
    return torch.rand(shape, generator=generator, device=device).to(x.device)


def _pick(b: int, n: int, share: float, x: torch.Tensor, generator) -> torch.Tensor:
    """(b, n) bool: exactly round(share * n) of the n items chosen at random in each row."""
    k = round(share * n)
    ranks = _u((b, n), x, generator).argsort(1).argsort(1)
    return ranks < k


def _boxes(x: torch.Tensor, n: int, lo: float, hi: float, generator) -> torch.Tensor:
    """(B, 1, H, W) bool: the union of n random boxes per image, each side a uniform share in
    [lo, hi] of the image's (at least 1 px), placed uniformly inside the image."""
    b, _, h, w = x.shape
    u = _u((4, b, n), x, generator)
    size = torch.tensor([h, w], dtype=torch.float32, device=x.device).view(2, 1, 1)
    side = ((lo + (hi - lo) * u[:2]) * size).round().clamp(1, None).minimum(size)
    start = (u[2:] * (size - side + 1)).floor()
    yy = torch.arange(h, device=x.device).view(1, 1, h)
    xx = torch.arange(w, device=x.device).view(1, 1, w)
    rows = (yy >= start[0, ..., None]) & (yy < (start[0] + side[0])[..., None])  # (B, n, H)
    cols = (xx >= start[1, ..., None]) & (xx < (start[1] + side[1])[..., None])  # (B, n, W)
    # pixel (y, x) is in some box iff sum_n rows[n, y] * cols[n, x] > 0: one small matmul
    return (rows.transpose(1, 2).float() @ cols.float() > 0).unsqueeze(1)


def _fill(x: torch.Tensor, region: torch.Tensor, fill: str, generator) -> torch.Tensor:
    """x with the pixels of `region` (broadcast over channels) replaced by `fill`."""
    if fill == "zero":
        value = torch.zeros_like(x)
    elif fill == "mean":
        value = x.mean((2, 3), keepdim=True).expand_as(x)
    else:
        value = _rand(x, generator)
    return torch.where(region, value, x)


def _local_shuffle(x, level: float, window: int, generator) -> tuple[torch.Tensor, torch.Tensor]:
    b, c, h, w = x.shape
    nh, nw = h // window, w // window
    off = _u((2,), x, generator).cpu()  # one grid offset per batch: no seams inside a cell
    oy, ox = int(off[0] * (h - nh * window + 1)), int(off[1] * (w - nw * window + 1))
    cells = nh * nw
    chosen = _pick(b, cells, level, x, generator)  # (B, cells)
    # each chosen cell takes one of PERMUTATIONS random permutations drawn for the batch
    # (sorting a key per pixel of every cell would cost 10x the rest of the corruption)
    pool = _u((PERMUTATIONS, window * window), x, generator).argsort(1)
    which = (_u((b, cells), x, generator) * PERMUTATIONS).long().clamp(max=PERMUTATIONS - 1)
    ident = torch.arange(window * window, device=x.device)
    perm = torch.where(chosen[..., None], pool[which], ident)  # unchosen: the identity

    def cut(t: torch.Tensor) -> torch.Tensor:  # (B, C, nh*k, nw*k) -> (B, C, cells, k*k)
        t = t.reshape(t.shape[0], t.shape[1], nh, window, nw, window).permute(0, 1, 2, 4, 3, 5)
        return t.reshape(t.shape[0], t.shape[1], cells, window * window)

    def paste(t: torch.Tensor) -> torch.Tensor:
        t = t.reshape(t.shape[0], t.shape[1], nh, nw, window, window).permute(0, 1, 2, 4, 3, 5)
        return t.reshape(t.shape[0], t.shape[1], nh * window, nw * window)

    ys, xs = slice(oy, oy + nh * window), slice(ox, ox + nw * window)
    out = x.clone()
    part = cut(x[:, :, ys, xs])
    out[:, :, ys, xs] = paste(part.gather(3, perm[:, None].expand(-1, c, -1, -1)))
    region = torch.zeros((b, 1, h, w), dtype=torch.bool, device=x.device)
    region[:, :, ys, xs] = paste(chosen[:, None, :, None].expand(-1, 1, -1, window * window))
    return out, region


def _bezier(p1: torch.Tensor, p2: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """One coordinate of the cubic Bezier curve from 0 to 1 with inner control values p1, p2 (B,)."""
    s = 1 - t
    return 3 * s * s * t * p1[:, None] + 3 * s * t * t * p2[:, None] + t ** 3


def _intensity(x: torch.Tensor, level: float, generator) -> torch.Tensor:
    """Each image through its own monotone curve y(x). With inner control points in [0, 1]^2 both
    coordinates of a cubic Bezier from (0, 0) to (1, 1) are non-decreasing in t, so y(x) is a
    monotone map of [0, 1] onto itself. It is tabulated at 1,025 evenly spaced intensities (from
    513 points of the curve) and read off by linear interpolation: two gathers per pixel."""
    b = x.shape[0]
    ident = torch.tensor([1 / 3, 1 / 3, 2 / 3, 2 / 3], device=x.device)
    p = ident + level * (_u((b, 4), x, generator) - ident)  # x1, y1, x2, y2
    t = torch.linspace(0, 1, 513, device=x.device)
    cx = _bezier(p[:, 0], p[:, 2], t).cummax(1).values.contiguous()  # rounding never unsorts it
    cy = _bezier(p[:, 1], p[:, 3], t)
    grid = torch.linspace(0, 1, 1025, device=x.device).expand(b, -1).contiguous()
    lut = _interp(grid, cx, cy)  # (B, 1025): y at evenly spaced x
    pos = x.reshape(b, -1).float().clamp(0, 1).mul_(lut.shape[1] - 1)
    i = pos.long().clamp_(max=lut.shape[1] - 2)  # floor: pos >= 0
    y = torch.lerp(lut.gather(1, i), lut.gather(1, i + 1), pos.sub_(i))
    return y.reshape(x.shape).to(x.dtype)


def _interp(q: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """Row-wise piecewise-linear interpolation of the points (xs, ys) (xs sorted) at q."""
    i = torch.searchsorted(xs, q, right=True).clamp(1, xs.shape[1] - 1)
    x0, x1, y0, y1 = xs.gather(1, i - 1), xs.gather(1, i), ys.gather(1, i - 1), ys.gather(1, i)
    return y0 + ((q - x0) / (x1 - x0).clamp_min(1e-12)).clamp(0, 1) * (y1 - y0)


def _region_kind(x, kind, level, generator, patch, window, boxes, fill):
    """(corrupted x, (B, 1, H, W) mask) for the region kinds."""
    b, _, h, w = x.shape
    if kind == "inpaint":
        region = _boxes(x, boxes, level / 2, level, generator)
        return _fill(x, region, fill, generator), region
    if kind == "outpaint":
        region = ~_boxes(x, 1, 1 - level, 1 - level / 2, generator)
        return _fill(x, region, fill, generator), region
    if kind == "local_shuffle":
        return _local_shuffle(x, level, window, generator)
    if kind == "intensity":
        return _intensity(x, level, generator), torch.ones((b, 1, h, w), dtype=torch.bool, device=x.device)
    if kind == "patch_mask":
        gh, gw = math.ceil(h / patch), math.ceil(w / patch)
        grid = _pick(b, gh * gw, level, x, generator).view(b, 1, gh, gw)
        region = grid.repeat_interleave(patch, 2).repeat_interleave(patch, 3)[:, :, :h, :w]
        return _fill(x, region, fill, generator), region
    # genesis: every component is drawn for the whole batch, then kept per image
    def per_image(p: float) -> torch.Tensor:
        return (_u((b,), x, generator) < p).view(b, 1, 1, 1)

    shuffled, region = _local_shuffle(x, level, window, generator)
    keep = per_image(GENESIS_SHUFFLE_P)
    out, mask = torch.where(keep, shuffled, x), region & keep
    keep = per_image(GENESIS_INTENSITY_P)
    out, mask = torch.where(keep, _intensity(out, level, generator), out), mask | keep
    u = _u((b,), x, generator).view(b, 1, 1, 1)
    inner = _boxes(x, boxes, level / 2, level, generator)
    outer = ~_boxes(x, 1, 1 - level, 1 - level / 2, generator)
    paint = torch.where(u < GENESIS_PAINT_P * GENESIS_INPAINT_SHARE, inner, outer) & (u < GENESIS_PAINT_P)
    return _fill(out, paint, fill, generator), mask | paint


def _check(x: torch.Tensor, kind: str, level: float, patch: int, window: int, boxes: int, fill: str):
    if kind not in KINDS:
        raise ValueError(f"unknown corruption {kind!r}; expected one of {KINDS}")
    if level < 0 or (kind in SHARE_KINDS and level > 1):
        raise ValueError(f"{kind} level must be in [0, 1], got {level}")
    if kind not in REGION_KINDS:
        return
    if x.dim() != 4:
        raise ValueError(f"{kind} needs images (B, C, H, W), got shape {tuple(x.shape)}")
    if fill not in FILLS:
        raise ValueError(f"fill must be one of {', '.join(FILLS)}, got {fill!r}")
    if patch < 1 or boxes < 1:
        raise ValueError(f"patch and boxes must be >= 1, got patch {patch}, boxes {boxes}")
    h, w = x.shape[-2:]
    if kind in ("local_shuffle", "genesis") and not 2 <= window <= min(h, w):
        raise ValueError(f"window must be 2 .. {min(h, w)} px (the image is {h} x {w}), got {window}")


def corrupt_with_mask(
    x: torch.Tensor, kind: str, level: float, generator: torch.Generator | None = None, *,
    patch: int = 16, window: int = 8, boxes: int = 5, fill: str = "noise",
) -> tuple[torch.Tensor, torch.Tensor]:
    """(a corrupted copy of x, the bool mask shaped like x of the pixels it replaced or moved).
    x: values in [0, 1]; any shape for the pixel kinds, (B, C, H, W) for the region kinds.
    gaussian and intensity change every pixel (mask all True), none none."""
    _check(x, kind, level, patch, window, boxes, fill)
    if kind == "none" or level == 0:
        return x.clone(), torch.zeros(x.shape, dtype=torch.bool, device=x.device)
    if kind == "gaussian":
        return corrupt(x, kind, level, generator), torch.ones(x.shape, dtype=torch.bool, device=x.device)
    if kind in ("masking", "salt_pepper"):
        u = _rand(x, generator)
        return _pixelwise(x, kind, level, u), u < level
    out, region = _region_kind(x, kind, level, generator, patch, window, boxes, fill)
    return out, region.expand_as(x)


def _pixelwise(x: torch.Tensor, kind: str, level: float, u: torch.Tensor) -> torch.Tensor:
    if kind == "masking":
        return x * (u >= level)
    # salt_pepper: one uniform draw decides both whether a pixel is hit (u < level) and, within
    # the hit ones, salt (u < level/2 -> 1) or pepper (level/2 <= u < level -> 0), equal odds.
    out = x.clone()
    out[u < level] = 0.0
    out[u < level / 2] = 1.0
    return out


def corrupt(
    x: torch.Tensor, kind: str, level: float, generator: torch.Generator | None = None, **opts
) -> torch.Tensor:
    """A corrupted copy of x (values in [0, 1]); x itself is not modified. `opts`: patch, window,
    boxes, fill (see corrupt_with_mask; the pixel kinds ignore them)."""
    if kind in REGION_KINDS:
        return corrupt_with_mask(x, kind, level, generator, **opts)[0]
    _check(x, kind, level, 16, 8, 5, "noise")
    if kind == "none" or level == 0:
        return x.clone()
    if kind == "gaussian":
        return (x + level * _rand(x, generator, normal=True)).clamp_(0.0, 1.0)
    return _pixelwise(x, kind, level, _rand(x, generator))


@dataclass
class Corruption:
    """The corruption a denoising family applies to its inputs: `Corruption()(x, generator)`."""

    kind: CorruptionKind = param("gaussian", help="none | gaussian | masking | salt_pepper | inpaint | "
                                 "outpaint | local_shuffle | intensity | genesis | patch_mask")
    level: float = param(
        0.25, ge=0, help="gaussian: noise std; masking, salt_pepper: share of pixels hit; inpaint: "
        "largest box side (share of the image's); outpaint: share of each side removed at most; "
        "local_shuffle, patch_mask: share of cells / patches hit; intensity: curve strength; "
        "genesis: all of these (<= 1 for all but gaussian)")
    patch: int = param(16, ge=1, help="patch_mask: side of the square patches in px")
    window: int = param(8, ge=2, help="local_shuffle, genesis: side of the shuffled cells in px")
    boxes: int = param(5, ge=1, help="inpaint, genesis: boxes per image")
    fill: Literal["noise", "zero", "mean"] = param(
        "noise", help="inpaint, outpaint, patch_mask, genesis: what replaces the destroyed pixels: "
        "uniform noise, 0, or the image's mean")

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(
                f"kind: unknown corruption {self.kind!r}; expected one of {', '.join(KINDS)}"
            )
        if self.level < 0:
            raise ValueError(f"level: must be >= 0, got {self.level!r}")
        if self.kind in SHARE_KINDS and self.level > 1:
            raise ValueError(
                f"level: {self.kind} level is a share in [0, 1], got {self.level!r}"
            )
        if self.fill not in FILLS:
            raise ValueError(f"fill: expected one of {', '.join(FILLS)}, got {self.fill!r}")
        for key, low in (("patch", 1), ("window", 2), ("boxes", 1)):
            if getattr(self, key) < low:
                raise ValueError(f"{key}: expected an integer >= {low}, got {getattr(self, key)!r}")

    def check_shape(self, shape) -> None:
        """ValueError naming the key when images of `shape` (C, H, W) cannot take this corruption."""
        if self.kind in ("local_shuffle", "genesis") and self.window > min(shape[-2:]):
            raise ValueError(f"window: {self.window} px cells do not fit the {shape[-2]} x {shape[-1]} "
                             f"images; expected 2 .. {min(shape[-2:])}")
        if self.kind in REGION_KINDS and len(shape) != 3:
            raise ValueError(f"kind: {self.kind} needs images (C, H, W), the data gives {list(shape)}")

    @property
    def _opts(self) -> dict:
        return {"patch": self.patch, "window": self.window, "boxes": self.boxes, "fill": self.fill}

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if self.kind in REGION_KINDS:
            return corrupt(x, self.kind, self.level, generator, **self._opts)
        return corrupt(x, self.kind, self.level, generator)

    def with_mask(self, x: torch.Tensor, generator: torch.Generator | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """(corrupted x, bool mask shaped like x of the pixels replaced or moved)."""
        return corrupt_with_mask(x, self.kind, self.level, generator, **self._opts)
