"""Synthetic brain-MRI tumour factory: `BrainFactory`, the images of data source "brain".

Every sample is a 96 x 128 (W x H) axial "MRI slice": one procedural base brain, tumours
drawn for one of four syndromes, then random alterations (shrink, move, rare ghost blur,
contrast, shade, per-pixel noise). Sample `i` of a split is a pure function of
(seed, split, i): all its random numbers come from a counter-based hash of those keys (no
generator state), so a sample is the same whatever batch it is fetched in, on any call, and
(up to float rounding) on CPU and CUDA. Everything is vectorised torch; no per-image loop.

    f = BrainFactory(mode="hard", seed=0, device="cpu")
    b = f.generate("train", torch.arange(1024))
    b["x"]     # (B, 1, 128, 96) float32 in [0, 1]
    b["y"]     # (B,) int64, index into SYNDROMES
    b["mask"]  # (B, 1, 128, 96) bool, union of the tumour discs' interiors

How it stays fast (a handful of full-image passes per image, all in cache):
- the base is pre-rendered once per device into a *bank* of rows already resampled for every
  quantised x-shrink (0.01) / x-shift (1/4 px) and every 1/4 px y position (71 MB), so the
  whole geometric warp of the base is one contiguous row gather (`index_select`);
- per-pixel noise is a window of H consecutive rows of a fixed noise bank (offset and sign
  from the hash): one more row gather;
- contrast/shade, noise and clamp are in-place passes over sub-chunks of 64 images (3 MB);
- tumours are rendered analytically in output coordinates (disc centres and radii are warped,
  not the pixels), only for the active discs, as small square patches written with a
  scatter-amax (overlaps take the max: order-free, hence reproducible on CUDA too); the lesion
  mask comes from the same patches. Contrast is affine, so adding the tumour after it (scaled
  by the gain k) equals adding it before;
- the random numbers of the disc slots are hashed only for active discs.

Easy and hard twins (same seed, split, index) use the same hash slots for every draw; the mode
only scales tumour radii (x HARD_SIZE) and opacities (x HARD_OPACITY). A healthy (Z) sample is
therefore identical in both modes, and elsewhere they differ only under the tumours.

The data source (recipes' `data: {name: brain}`) is genlab.data.brain; the PNG folder writer
(`genlab data brain`) is genlab.data.brain_folder.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F

from genlab.core.errors import DataError
from genlab.data.base import SPLITS

SYNDROMES = ("A", "B", "C", "Z")  # label = position; Z is the healthy patient
HEIGHT, WIDTH = 128, 96

# ----------------------------------------------------------------------------- constants
# Tumour radii in pixels of the 96 x 128 image, easy mode (hard mode multiplies by HARD_SIZE).
R_BIG = (6.0, 9.0)  # syndrome A's 1-2 big tumours
R_MEDIUM = (3.0, 4.5)  # A's 0-2 extra ones, B's 4-8
R_SMALL = (1.6, 2.4)  # "small" of B's 0-3 and C's 20-48 small-or-tiny (half small, half tiny)
R_TINY = (0.9, 1.5)
# Soft edge: the opacity ramps from full at r - e to zero at r + e, e = EDGE_0 + EDGE_K * r.
EDGE_0, EDGE_K = 0.4, 0.12
# Radius of the circular area holding a syndrome's tumours (centres uniform inside it).
R_AREA = {"A": (4.0, 8.0), "B": (9.0, 14.0), "C": (10.0, 16.0)}
# Tumour counts: (big, medium, small/tiny) as inclusive ranges, per syndrome.
COUNTS = {
    "A": ((1, 2), (0, 2), (0, 0)),
    "B": ((0, 0), (4, 8), (0, 3)),
    "C": ((0, 0), (0, 0), (20, 48)),
    "Z": ((0, 0), (0, 0), (0, 0)),
}
TUMOUR_GAIN = (0.30, 0.45)  # brightness a tumour adds at full opacity (per image)
OPACITY_EASY = (0.75, 1.0)  # per-disc peak opacity in easy mode
HARD_OPACITY = 0.28  # hard mode: opacity x 0.28 ...
HARD_SIZE = 0.8  # ... and radii x 0.8

# Alterations (per image). Shrink and shift are quantised so the base warp is a table lookup.
SHRINK = (0.90, 1.00)  # scale along x and along y, independent uniforms
SHRINK_STEP = 0.01  # x-scale quantum (y-scale is continuous; y rows sampled at 1/4 px)
SHIFT_SIGMA, SHIFT_MAX = 1.5, 4.0  # move along x and y: normal(0, 1.5) px clipped to +-4 px
SHIFT_STEP = 0.25  # x-shift quantum, px
Y_SUB = 4  # base rows pre-sampled every 1/Y_SUB px
CONTRAST_SIGMA, CONTRAST_MAX = 0.08, 0.2  # gain k = 1 + normal(0, 0.08), clipped to 1 +- 0.2
CONTRAST_CENTRE = (0.2, 0.7)  # x -> c + k (x - c), c uniform
SHADE_SIGMA, SHADE_MAX = 0.03, 0.08  # flat brightness shift, normal clipped
NOISE_AMP = (0.0, 0.05)  # per-pixel uniform noise in +-amp, amp uniform per image
GHOST_PROB = 0.001  # 0.1 % of the images
GHOST_LENGTH = (3.0, 8.0)  # motion-blur streak length, px
GHOST_TAPS, GHOST_DECAY = 5, 0.55  # copies along the streak, weights decay^k

NOISE_ROWS = 16384  # noise bank rows (W floats each); a window is H consecutive rows

# ----------------------------------------------------------------------------- hash RNG
_U64 = (1 << 64) - 1


def _i64(c: int) -> int:
    """An unsigned 64-bit constant as the signed int64 torch stores."""
    c &= _U64
    return c - (1 << 64) if c >> 63 else c


_GOLD = _i64(0x9E3779B97F4A7C15)
_GOLD2 = _i64(0xD1B54A32D192ED03)
_M1 = _i64(0xBF58476D1CE4E5B9)
_M2 = _i64(0x94D049BB133111EB)


def _srl(z: torch.Tensor, s: int) -> torch.Tensor:
    """Logical (unsigned) right shift of int64 (torch's >> is arithmetic)."""
    return (z >> s) & ((1 << (64 - s)) - 1)


def _mix64(z: torch.Tensor) -> torch.Tensor:
    """splitmix64 finaliser; int64 products wrap modulo 2^64 as the unsigned version does."""
    z = (z ^ _srl(z, 30)) * _M1
    z = (z ^ _srl(z, 27)) * _M2
    return z ^ _srl(z, 31)


# Hash slot layout: one uniform per (sample, slot).
_S_LABEL = 0
_S_SX, _S_SY, _S_TX, _S_TY = 1, 2, 3, 5  # TX, TY use two slots each (Box-Muller)
_S_GHOST, _S_GANGLE, _S_GLEN = 7, 8, 9
_S_CK, _S_CC = 10, 12  # contrast gain (2 slots), centre
_S_SHADE = 13  # 2 slots
_S_NAMP, _S_NOFF, _S_NSIGN = 15, 16, 17
_S_AREA_R, _S_AREA_PR, _S_AREA_PT, _S_GAIN = 18, 19, 20, 21
_S_NCOUNT = 22  # 3 slots: big, medium, small
_N_SLOTS = (2, 8, 48)  # fixed disc slots per size class (big, medium, small/tiny)
_PER_DISC = 4  # position radius, position angle, radius, opacity
_S_DISC = 25
_S_TOTAL = _S_DISC + _PER_DISC * sum(_N_SLOTS)


def _normal(u1: torch.Tensor, u2: torch.Tensor) -> torch.Tensor:
    return torch.sqrt(-2.0 * torch.log1p(-u1)) * torch.cos(2 * math.pi * u2)


# ----------------------------------------------------------------------------- base brain
# Tissue intensities of the base slice (before the MRI blur).
_CSF, _GM, _WM, _DEEP = 0.12, 0.45, 0.74, 0.58


def _render_base_hr(H: int, W: int, ss: int) -> torch.Tensor:
    """The procedural base slice at ss x resolution, float64 (H*ss, W*ss), deterministic.

    Coordinates are output pixels (pixel centres at integers). Head: an egg-shaped ellipse
    (wider at the back); scalp, a bright skull ring, a dark CSF/bone gap, a folded cortex
    (sulci whose phase wanders with angle and radius), white matter reaching into the gyri,
    deep grey nuclei, two lateral ventricles ")(" and the interhemispheric fissure.
    """
    g = torch.Generator().manual_seed(20190301)  # the draws below come in this fixed order

    def noise(cell_px: float, amp: float) -> torch.Tensor:
        return _smooth_noise(g, H, W, ss, cell_px, amp)

    dx, dy, rho, th = _head_coords(H, W, ss)
    img = _paint_cortex(dx, dy, rho, th, noise)
    img = _paint_deep(img, dx, dy)
    tex = 1 + noise(3, 0.03) + noise(10, 0.03)  # fixed faint tissue texture
    img = torch.where(rho < 0.975, img * tex, img)
    return _mri_blur(img, ss).clamp(0, 1)


def _smooth_noise(g: torch.Generator, H: int, W: int, ss: int, cell_px: float, amp: float
                  ) -> torch.Tensor:
    """(H*ss, W*ss) float64 noise of std `amp`, smooth over cells of `cell_px` output pixels."""
    n = torch.randn(
        1, 1, int(H / cell_px) + 3, int(W / cell_px) + 3, generator=g, dtype=torch.float64
    )
    n = F.interpolate(n, size=(H * ss, W * ss), mode="bicubic", align_corners=False)[0, 0]
    return amp * n / n.std()


def _paint(img: torch.Tensor, where: torch.Tensor, value: float) -> torch.Tensor:
    return torch.where(where, torch.full_like(img, value), img)


def _head_coords(H: int, W: int, ss: int) -> tuple[torch.Tensor, ...]:
    """(dx, dy, rho, th) on the ss x grid: offsets from the image centre in output pixels,
    the head's elliptic radius (1 at the scalp) and the polar angle."""
    Hh, Wh = H * ss, W * ss
    y = (torch.arange(Hh, dtype=torch.float64) + 0.5) / ss - 0.5
    x = (torch.arange(Wh, dtype=torch.float64) + 0.5) / ss - 0.5
    Y, X = torch.meshgrid(y, x, indexing="ij")
    cx, cy = (W - 1) / 2, (H - 1) / 2
    dx, dy = X - cx, Y - cy
    AX, AY = 0.445 * W, 0.445 * H
    ax = AX * (1 + 0.05 * dy / AY)
    rho = torch.sqrt((dx / ax) ** 2 + (dy / AY) ** 2)
    th = torch.atan2(dy, dx)
    return dx, dy, rho, th


def _paint_cortex(dx, dy, rho, th, noise) -> torch.Tensor:
    """Background, scalp, skull, CSF gap, grey matter, white matter fingers, sulci, fissure."""
    img = torch.full_like(dx, 0.02)  # background
    img = _paint(img, rho < 1.0, 0.42)  # scalp
    img = _paint(img, rho < 0.975, 0.88)  # skull ring (fat / diploe), bright
    img = _paint(img, rho < 0.925, 0.16)  # inner table + CSF gap, dark
    rb = 0.895 + 0.008 * torch.sin(7 * th + 0.3) + 0.006 * torch.sin(13 * th + 1.1)  # brain edge
    brain = rho < rb
    img = _paint(img, brain, _GM)
    # gyri: a wandering angular phase; sulci where cos(phase) ~ 1, white matter fingers elsewhere
    bend = (rb - rho).clamp(min=0) * (9 * torch.sin(4 * th + 0.5) + 6 * torch.sin(7 * th + 2.1))
    phase = (
        26 * th
        + 1.6 * torch.sin(3 * th + 0.4)
        + 0.9 * torch.sin(5 * th + 2.0)
        + noise(24, 0.6)
    )
    s = torch.cos(phase + bend)
    depth = 0.15 + 0.07 * torch.sin(9 * th + 0.8) + 0.04 * torch.sin(17 * th + 2.5)
    for side in (-0.22, math.pi + 0.22):  # the two sylvian fissures run deeper
        dth = torch.remainder(th - side + math.pi, 2 * math.pi) - math.pi
        depth = depth + 0.14 * torch.exp(-((dth / 0.07) ** 2))
    valley = ((1 + s) / 2) ** 1.5
    rw = (
        rb
        - 0.075
        - (depth + 0.03) * valley
        - 0.03 * (1 - valley) * (0.5 + 0.5 * torch.sin(11 * th))
    )
    img = _paint(img, rho < rw, _WM)
    img = _paint(img, (s > 0.86) & (rho > rb - depth) & brain, _CSF)  # sulci
    fissure = (dx.abs() < 0.55) & (((dy < 0) & (rho > 0.42)) | ((dy > 0) & (rho > 0.55))) & brain
    return _paint(img, fissure, _CSF)


def _paint_deep(img: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    """Caudate heads, thalami, the lateral ventricles and the third ventricle."""
    for sx in (-1, 1):  # caudate heads and thalami
        cau = ((dx - sx * 8.5) / 3.5) ** 2 + ((dy + 11) / 6.0) ** 2 < 1
        tha = ((dx - sx * 7.5) / 5.0) ** 2 + ((dy - 8) / 6.5) ** 2 < 1
        img = _paint(img, cau | tha, _DEEP)
    ddy = dy + 3  # lateral ventricles: bananas bowing outwards, frontal horns a little wider
    off = 3.2 + 0.020 * ddy**2
    halfw = 2.4 + 0.8 * (ddy < 0) * (-ddy / 15).clamp(max=1)
    for sx in (-1, 1):
        img = _paint(img, (((sx * dx) - off) / halfw) ** 2 + (ddy / 15.5) ** 2 < 1, 0.10)
    return _paint(img, (dx.abs() < 0.7) & (dy > 3) & (dy < 12), 0.10)  # third ventricle


def _mri_blur(img: torch.Tensor, ss: int) -> torch.Tensor:
    """MRI softness (gaussian, sigma 0.6 px) and the output pixel's footprint (a 1 px box,
    variance 1/12 px^2): one separable gaussian, applied as two banded matrix products."""
    sig = ss * math.sqrt(0.6**2 + 1 / 12)

    def blur_matrix(n: int) -> torch.Tensor:
        i = torch.arange(n, dtype=torch.float64)
        m = torch.exp(-0.5 * ((i[:, None] - i[None, :]) / sig) ** 2)
        m[(i[:, None] - i[None, :]).abs() > 4 * sig] = 0
        return m / m.sum(1, keepdim=True)

    return blur_matrix(img.shape[0]) @ img @ blur_matrix(img.shape[1]).t()


def _interp(t: torch.Tensor, dim: int, pos: torch.Tensor) -> torch.Tensor:
    """Linear interpolation of t along `dim` at fractional indices pos (1-D), border-clamped."""
    n = t.shape[dim]
    pos = pos.clamp(0, n - 1)
    i0 = pos.floor().long().clamp(max=n - 2)
    w = (pos - i0).to(t.dtype)
    shape = [1] * t.dim()
    shape[dim] = -1
    a, b = t.index_select(dim, i0), t.index_select(dim, i0 + 1)
    return a.lerp_(b, w.view(shape))


def _sample_hr(hr: torch.Tensor, ss: int, ys: torch.Tensor, xs: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of the ss x image at output-pixel coordinates: rows ys (R,), columns
    xs (C,) -> (R, C). Output pixel coordinate v sits at (v + 0.5) ss - 0.5 in the ss x grid."""
    rows = _interp(hr, 0, (ys + 0.5) * ss - 0.5)
    return _interp(rows, 1, (xs + 0.5) * ss - 0.5)


class _Tables:
    """Per-device constant tables, built once on CPU (so every device gets the same values)."""

    _cache: ClassVar[dict] = {}

    def __init__(self, H: int, W: int):
        ss = 4
        hr = _render_base_hr(H, W, ss)
        cx = (W - 1) / 2
        self.base = _sample_hr(
            hr, ss, torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64)
        ).float()
        self.n_sx = round((SHRINK[1] - SHRINK[0]) / SHRINK_STEP) + 1
        self.n_tx = round(2 * SHIFT_MAX / SHIFT_STEP) + 1
        self.n_yr = Y_SUB * (H - 1) + 1
        rows = _interp(
            hr, 0, (torch.arange(self.n_yr, dtype=torch.float64) / Y_SUB + 0.5) * ss - 0.5
        )  # (n_yr, W*ss): the base at every 1/Y_SUB px row
        j = torch.arange(W, dtype=torch.float64)
        sxs = SHRINK[0] + SHRINK_STEP * torch.arange(self.n_sx, dtype=torch.float64)
        txs = -SHIFT_MAX + SHIFT_STEP * torch.arange(self.n_tx, dtype=torch.float64)
        # output column j samples the base at cx + (j - cx - tx) / sx
        src = cx + (j[None, None, :] - cx - txs[None, :, None]) / sxs[:, None, None]
        cols = _interp(rows.float().t().contiguous(), 0, ((src + 0.5) * ss - 0.5).reshape(-1))
        # bank row (v * n_yr + q) = base resampled for x-variant v = isx * n_tx + itx, y = q / Y_SUB
        self.bank = cols.view(-1, W, self.n_yr).transpose(1, 2).reshape(-1, W).contiguous()
        g = torch.Generator().manual_seed(7)
        self.noise = (torch.rand(NOISE_ROWS, W, generator=g) * 2 - 1).contiguous()

    @classmethod
    def get(cls, H: int, W: int, device: torch.device) -> dict[str, torch.Tensor]:
        key = (H, W, str(device))
        if key not in cls._cache:
            cpu_key = (H, W, "cpu")
            if cpu_key not in cls._cache:
                t = _Tables(H, W)
                cls._cache[cpu_key] = {
                    "base": t.base,
                    "bank": t.bank,
                    "noise": t.noise,
                    "dims": (t.n_sx, t.n_tx, t.n_yr),
                }
            src = cls._cache[cpu_key]
            cls._cache[key] = {
                k: (v.to(device) if torch.is_tensor(v) else v) for k, v in src.items()
            }
        return cls._cache[key]


# ----------------------------------------------------------------------------- factory
def _range_of(u: torch.Tensor, lo_hi) -> torch.Tensor:
    lo, hi = lo_hi
    return lo + (hi - lo) * u


class BrainFactory:
    """Vectorised synthetic brain slices with tumours; see the module docstring.

    `generate(split, indices)` -> {"x": (B,1,H,W) float32 in [0,1], "y": (B,) int64,
    "mask": (B,1,H,W) bool} on `device`; sample i is a pure function of (seed, split, i, mode).
    `ghost_prob` is the per-image probability of the motion ghost blur (tests force it to 1).
    `chunk` (samples whose parameters are computed together) and `sub_chunk` (images per
    full-image pass) only tune speed and memory; they never change a sample.
    The radii and areas are tuned for 96 x 128; other sizes work but keep those pixel sizes.
    """

    def __init__(
        self,
        mode: str = "hard",
        seed: int = 0,
        device: torch.device | str = "cpu",
        height: int = HEIGHT,
        width: int = WIDTH,
        ghost_prob: float = GHOST_PROB,
        chunk: int | None = None,
        sub_chunk: int | None = None,
    ):
        if mode not in ("easy", "hard"):
            raise DataError(f"brain factory: mode must be 'easy' or 'hard', got {mode!r}")
        if not 0.0 <= ghost_prob <= 1.0:
            raise DataError(f"brain factory: ghost_prob must be in [0, 1], got {ghost_prob!r}")
        self.mode, self.seed, self.device = mode, int(seed), torch.device(device)
        self.H, self.W, self.ghost_prob = int(height), int(width), float(ghost_prob)
        cuda = self.device.type == "cuda"
        self.chunk = chunk or (16384 if cuda else 1024)  # samples whose parameters are batched
        self.sub_chunk = sub_chunk or (self.chunk if cuda else 64)  # full-image passes: 3 MB
        self.size_scale = 1.0 if mode == "easy" else HARD_SIZE
        self.opacity_scale = 1.0 if mode == "easy" else HARD_OPACITY
        t = _Tables.get(self.H, self.W, self.device)
        self.base, self._bank, self._noise = t["base"], t["bank"], t["noise"]
        self._n_sx, self._n_tx, self._n_yr = t["dims"]
        d = self.device
        self._slot_off = torch.arange(1, _S_TOTAL + 1, dtype=torch.long, device=d) * _GOLD
        seed_t = torch.tensor(self.seed, dtype=torch.long, device=d)
        k0 = _mix64(seed_t + _GOLD)
        self._split_keys = {s: _mix64(k0 + _i64((i + 1) * _GOLD2)) for i, s in enumerate(SPLITS)}
        self._gy = torch.arange(self.H, dtype=torch.float32, device=d)
        self._zero = torch.zeros((), device=d)
        self._mask_bytewise = self.device.type == "cpu"  # mask scatter: uint8 amax or index_fill
        # per size class: patch half-size covering r_max + edge + rounding of the centre
        r_max = (R_BIG[1], R_MEDIUM[1], max(R_SMALL[1], R_TINY[1]))
        self._half = tuple(
            math.ceil(self.size_scale * (r + EDGE_0 + EDGE_K * r) + 0.5) for r in r_max
        )
        self._offs = tuple(torch.arange(-h, h + 1, device=d) for h in self._half)
        # counts per syndrome as tensors (4, 3) lo and span
        lo = [[COUNTS[s][c][0] for c in range(3)] for s in SYNDROMES]
        hi = [[COUNTS[s][c][1] for c in range(3)] for s in SYNDROMES]
        self._cnt_lo = torch.tensor(lo, dtype=torch.float32, device=d)
        self._cnt_span = torch.tensor(hi, dtype=torch.float32, device=d) - self._cnt_lo + 1
        ar = [R_AREA.get(s, (0.0, 0.0)) for s in SYNDROMES]
        self._area_lo = torch.tensor([a[0] for a in ar], device=d)
        self._area_hi = torch.tensor([a[1] for a in ar], device=d)
        # margin between the area and the parenchyma edge: the biggest disc (+ edge) it may hold
        big_r = [
            max((rm for c, rm in enumerate(r_max) if COUNTS[s][c][1] > 0), default=0.0)
            for s in SYNDROMES
        ]
        self._margin = torch.tensor([r * (1 + EDGE_K) + EDGE_0 for r in big_r], device=d)
        # parenchyma ellipse (inside the cortex) where tumour areas live, px from the centre
        self._par = (0.80 * 0.445 * self.W, 0.80 * 0.445 * self.H)

    # ------------------------------------------------------------------ random numbers
    def _sample_keys(self, split: str, indices: torch.Tensor) -> torch.Tensor:
        if split not in SPLITS:
            raise DataError(f"unknown split {split!r}; expected one of {SPLITS}")
        idx = indices.to(device=self.device, dtype=torch.long)
        return _mix64(self._split_keys[split] + (idx + 1) * _GOLD)  # (B,)

    @staticmethod
    def _to_unit(h: torch.Tensor) -> torch.Tensor:
        return _srl(h, 40).to(torch.float32) * (1.0 / (1 << 24))  # top 24 bits -> [0, 1)

    def uniforms(self, split: str, indices: torch.Tensor, slots: int = _S_TOTAL) -> torch.Tensor:
        """(B, slots) float32 uniforms in [0, 1): slot s of sample i is a hash of
        (seed, split, i, s). Slots >= _S_DISC belong to the disc slots (see `_disc_uniforms`)."""
        ks = self._sample_keys(split, indices)
        return self._to_unit(_mix64(ks[:, None] + self._slot_off[None, :slots]))

    def _disc_uniforms(self, ks: torch.Tensor, slot_first: torch.Tensor) -> torch.Tensor:
        """(N, _PER_DISC) uniforms of N discs: sample keys ks (N,), first hash slot (N,)."""
        s = slot_first[:, None] + torch.arange(_PER_DISC, device=self.device)[None, :]
        return self._to_unit(_mix64(ks[:, None] + self._slot_off[s]))

    def labels(self, split: str, indices: torch.Tensor) -> torch.Tensor:
        """(B,) int64 syndrome labels of samples `indices` (cheap: one hash slot)."""
        u = self._to_unit(_mix64(self._sample_keys(split, indices) + self._slot_off[_S_LABEL]))
        return (u * len(SYNDROMES)).long().clamp_(max=len(SYNDROMES) - 1)

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def generate(self, split: str, indices: torch.Tensor) -> dict[str, torch.Tensor]:
        if split not in SPLITS:
            raise DataError(f"unknown split {split!r}; expected one of {SPLITS}")
        idx = torch.as_tensor(indices).to(device=self.device, dtype=torch.long).reshape(-1)
        B, H, W = idx.numel(), self.H, self.W
        x = torch.empty(B, 1, H, W, dtype=torch.float32, device=self.device)
        m = torch.zeros(B, 1, H, W, dtype=torch.bool, device=self.device)
        y = torch.empty(B, dtype=torch.long, device=self.device)
        for c0 in range(0, B, self.chunk):
            c1 = min(B, c0 + self.chunk)
            y[c0:c1] = self._chunk(split, idx[c0:c1], x[c0:c1], m[c0:c1])
        return {"x": x, "y": y, "mask": m}

    def _chunk(
        self, split: str, idx: torch.Tensor, x: torch.Tensor, m: torch.Tensor, clean: bool = False
    ) -> torch.Tensor:
        """Fill x (n,1,H,W) and m (n,1,H,W, zeros on entry) for samples idx; return labels.

        Order of work (same image as tumours -> ghost -> contrast/shade -> noise -> clamp, but
        cheaper): base rows gathered already warped -> contrast/shade -> noise -> clamp (in
        cache-sized sub-chunks), then the tumours added on top as k * alpha * gain (contrast
        is affine), then the rare ghost-blurred samples are redone: clean, blurred, noised.
        `clean=True` leaves the noise and the ghost out (used to redo ghosted samples).
        """
        ks = self._sample_keys(split, idx)  # (n,)
        u = self._to_unit(_mix64(ks[:, None] + self._slot_off[None, :_S_DISC]))  # (n, S)
        syn = (u[:, _S_LABEL] * 4).long().clamp_(max=3)  # (n,)
        sx, sy, tx, ty, rows = self._geometry(u)
        k, off, amp, nrows = self._intensity(u)
        self._base_passes(x, rows, k, off, amp, nrows, clean)
        self._tumours(ks, u, syn, sx, sy, tx, ty, k, x, m)
        if self.ghost_prob > 0 and not clean:
            self._redo_ghosted(split, idx, u, x, amp, nrows)
        return syn

    def _geometry(self, u: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Shrink (sx, sy) and shift (tx, ty) per sample, and the (n*H,) bank rows that hold
        the base already warped by them: output pixel p samples the base at c + (p - c - t) / s."""
        isx = (u[:, _S_SX] * self._n_sx).long().clamp_(max=self._n_sx - 1)  # quantised scale
        sx = SHRINK[0] + SHRINK_STEP * isx.float()
        sy = _range_of(u[:, _S_SY], SHRINK)
        tx = (SHIFT_SIGMA * _normal(u[:, _S_TX], u[:, _S_TX + 1])).clamp(-SHIFT_MAX, SHIFT_MAX)
        itx = torch.round((tx + SHIFT_MAX) / SHIFT_STEP).long()
        tx = -SHIFT_MAX + SHIFT_STEP * itx.float()
        ty = (SHIFT_SIGMA * _normal(u[:, _S_TY], u[:, _S_TY + 1])).clamp(-SHIFT_MAX, SHIFT_MAX)
        cy = (self.H - 1) / 2
        src_y = cy + (self._gy[None, :] - cy - ty[:, None]) / sy[:, None]  # (n, H)
        q = torch.round(src_y * Y_SUB).long().clamp_(0, self._n_yr - 1)
        rows = ((isx * self._n_tx + itx)[:, None] * self._n_yr + q).reshape(-1)  # (n*H,)
        return sx, sy, tx, ty, rows

    def _intensity(self, u: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Contrast gain k (n,) and offset (n,1,1,1) of x -> k x + (c (1 - k) + shade), the
        signed noise amplitude (n,1,1,1) and the (n*H,) noise-bank rows of each image."""
        n, H = u.shape[0], self.H
        k = 1 + (CONTRAST_SIGMA * _normal(u[:, _S_CK], u[:, _S_CK + 1])).clamp(
            -CONTRAST_MAX, CONTRAST_MAX
        )
        c = _range_of(u[:, _S_CC], CONTRAST_CENTRE)
        shade = (SHADE_SIGMA * _normal(u[:, _S_SHADE], u[:, _S_SHADE + 1])).clamp(
            -SHADE_MAX, SHADE_MAX
        )
        off = (c * (1 - k) + shade).view(n, 1, 1, 1)
        amp = _range_of(u[:, _S_NAMP], NOISE_AMP)
        amp = torch.where(u[:, _S_NSIGN] < 0.5, -amp, amp).view(n, 1, 1, 1)
        start = (u[:, _S_NOFF] * (NOISE_ROWS - H + 1)).long().clamp_(max=NOISE_ROWS - H)
        nrows = (start[:, None] + torch.arange(H, device=self.device)).reshape(-1)  # (n*H,)
        return k, off, amp, nrows

    def _base_passes(self, x, rows, k, off, amp, nrows, clean: bool) -> None:
        """x = clamp(k * warped base + off [+ amp * noise]), in sub-chunks that stay in cache."""
        n, H, W = x.shape[0], self.H, self.W
        k4 = k.view(n, 1, 1, 1)
        xf = x.view(n * H, W)
        sub = self.sub_chunk
        for s0 in range(0, n, sub):
            s1 = min(n, s0 + sub)
            xs = x[s0:s1]
            torch.index_select(self._bank, 0, rows[s0 * H : s1 * H], out=xf[s0 * H : s1 * H])
            xs.mul_(k4[s0:s1]).add_(off[s0:s1])
            if not clean:
                nz = torch.index_select(self._noise, 0, nrows[s0 * H : s1 * H]).view(
                    s1 - s0, 1, H, W
                )
                xs.addcmul_(nz, amp[s0:s1])
            xs.clamp_(0.0, 1.0)

    def _redo_ghosted(self, split, idx, u, x, amp, nrows) -> None:
        """The rare ghost-blurred samples: redone clean (with their tumours), blurred, then
        given their noise and clamped."""
        n, H, W, d = x.shape[0], self.H, self.W, self.device
        sel = torch.nonzero(u[:, _S_GHOST] < self.ghost_prob).squeeze(1)
        if not sel.numel():
            return
        g = sel.numel()
        xc = torch.empty(g, 1, H, W, device=d)
        self._chunk(
            split, idx[sel], xc, torch.zeros(g, 1, H, W, dtype=torch.bool, device=d), clean=True
        )
        xc = self._ghost(xc, u[sel])
        nz = torch.index_select(self._noise, 0, nrows.view(n, H)[sel].reshape(-1))
        x[sel] = xc.addcmul_(nz.view(g, 1, H, W), amp[sel]).clamp_(0.0, 1.0)

    def _tumours(self, ks, u, syn, sx, sy, tx, ty, k, x, m) -> None:
        """Patch every active disc into x and set its interior in the mask m.

        A disc adds alpha * GAIN of brightness (before contrast, so k * alpha * GAIN after);
        alpha ramps (in rho^2) from its peak at r - e down to 0 at r + e. Where discs overlap
        the largest alpha wins (scatter-amax: order-free, so exactly reproducible everywhere).
        """
        if not bool((syn < 3).any()):
            return
        # the area: radius, and a centre uniform in the parenchyma ellipse shrunk by the margin
        r_area = self._area_lo[syn] + (self._area_hi[syn] - self._area_lo[syn]) * u[:, _S_AREA_R]
        marg = r_area + self._margin[syn]
        pr = torch.sqrt(u[:, _S_AREA_PR])
        pt = 2 * math.pi * u[:, _S_AREA_PT]
        acx = pr * torch.cos(pt) * (self._par[0] - marg).clamp(min=0)
        acy = pr * torch.sin(pt) * (self._par[1] - marg).clamp(min=0)
        counts = self._cnt_lo[syn] + torch.floor(
            u[:, _S_NCOUNT : _S_NCOUNT + 3] * self._cnt_span[syn]
        )  # (n, 3)
        kg = k * _range_of(u[:, _S_GAIN], TUMOUR_GAIN)  # brightness added at alpha = 1
        x_flat, m_flat = x.view(-1), m.view(-1)
        warp = (r_area, acx, acy, sx, sy, tx, ty, kg)
        todo = []  # per size class: (flat index, value, inside) of its patch pixels
        slot0 = _S_DISC
        for c, n_slots in enumerate(_N_SLOTS):
            active = torch.arange(n_slots, device=self.device)[None, :] < counts[:, c : c + 1]
            sel = torch.nonzero(active.reshape(-1)).squeeze(1)  # sample-major, slot order kept
            first = slot0 + _PER_DISC * torch.remainder(sel, n_slots)  # the disc's hash slots
            slot0 += _PER_DISC * n_slots
            if sel.numel() == 0:
                continue
            b = torch.div(sel, n_slots, rounding_mode="floor")
            v = self._disc_uniforms(ks[b], first)  # (N, 4), hashed only for active discs
            todo.append(self._disc_patches(c, b, v, warp, x_flat))
        for flat, val, inside in todo:
            x_flat.scatter_reduce_(0, flat, val, "amax")
            if self._mask_bytewise:  # fastest on CPU: a byte-wise max
                m_flat.view(torch.uint8).scatter_reduce_(0, flat, inside.view(torch.uint8), "amax")
            else:  # portable: write True at the interior pixels (order-free)
                m_flat.index_fill_(0, torch.masked_select(flat, inside), True)

    def _disc_patches(self, c: int, b, v, warp, x_flat) -> tuple[torch.Tensor, ...]:
        """(flat pixel index, new value, inside the disc) of the square patches of N discs of
        size class `c`: b (N,) their samples, v (N, 4) their uniforms, `warp` the per-sample
        area radius and centre, shrink, shift and gain (see `_tumours`)."""
        H, W = self.H, self.W
        cx, cy = (W - 1) / 2, (H - 1) / 2
        r_area, acx, acy, sx, sy, tx, ty, kg = warp
        if c == 0:
            r = _range_of(v[:, 2], R_BIG)
        elif c == 1:
            r = _range_of(v[:, 2], R_MEDIUM)
        else:  # half tiny, half small
            t2 = v[:, 2] * 2
            r = torch.where(t2 < 1, _range_of(t2, R_TINY), _range_of(t2 - 1, R_SMALL))
        e = (EDGE_0 + EDGE_K * r) * self.size_scale
        r = r * self.size_scale
        opa = _range_of(v[:, 3], OPACITY_EASY) * self.opacity_scale
        dr = r_area[b] * torch.sqrt(v[:, 0])
        dt = 2 * math.pi * v[:, 1]
        sxb, syb = sx[b], sy[b]
        # centre in base coordinates (relative to the image centre), then warped
        px = cx + sxb * (acx[b] + dr * torch.cos(dt)) + tx[b]
        py = cy + syb * (acy[b] + dr * torch.sin(dt)) + ty[b]
        offs = self._offs[c]
        X = torch.round(px).long()[:, None] + offs[None, :]  # (N, P)
        Y = torch.round(py).long()[:, None] + offs[None, :]
        ddx = ((X.float() - px[:, None]) / sxb[:, None]).square_()  # in disc units
        ddy = ((Y.float() - py[:, None]) / syb[:, None]).square_()
        ddx.masked_fill_((X < 0) | (X >= W), 1e6)  # outside the image: never drawn
        ddy.masked_fill_((Y < 0) | (Y >= H), 1e6)
        X.clamp_(0, W - 1)
        Y.clamp_(0, H - 1)
        rho2 = ddy[:, :, None] + ddx[:, None, :]  # (N, P, P)
        r0 = (r - e).clamp(min=0)
        r1 = r + e
        peak = opa * kg[b]  # brightness added at the centre
        slope = peak / (r1 * r1 - r0 * r0)
        add = torch.addcmul((slope * r1 * r1)[:, None, None], rho2, -slope[:, None, None])
        add = torch.clamp(add, min=self._zero, max=peak[:, None, None])  # (N, P, P)
        flat = ((((b * H)[:, None] + Y) * W)[:, :, None] + X[:, None, :]).reshape(-1)
        # values from the untouched x (all classes gathered before any scatter), so where
        # discs of different classes overlap the result is a max too, never a sum
        val = torch.index_select(x_flat, 0, flat).add_(add.reshape(-1)).clamp_(max=1.0)
        return flat, val, (rho2 <= (r * r)[:, None, None]).reshape(-1)

    def _ghost(self, xs: torch.Tensor, us: torch.Tensor) -> torch.Tensor:
        """Motion 'ghost' blur of (k,1,H,W): the image plus fading copies along a streak."""
        k = xs.shape[0]
        ang = math.pi * us[:, _S_GANGLE]
        length = _range_of(us[:, _S_GLEN], GHOST_LENGTH)
        out = torch.zeros_like(xs)
        wsum = 0.0
        eye = torch.tensor([[1.0, 0.0], [0.0, 1.0]], device=xs.device).expand(k, 2, 2)
        for t in range(GHOST_TAPS):
            w = GHOST_DECAY**t
            dist = length * t / (GHOST_TAPS - 1)  # px
            shift = torch.stack(
                [dist * torch.cos(ang) * 2 / self.W, dist * torch.sin(ang) * 2 / self.H], dim=1
            )
            theta = torch.cat([eye, shift[:, :, None]], dim=2)  # (k, 2, 3)
            grid = F.affine_grid(theta, list(xs.shape), align_corners=False)
            out.add_(
                F.grid_sample(
                    xs, grid, mode="bilinear", padding_mode="border", align_corners=False
                ),
                alpha=w,
            )
            wsum += w
        return out.div_(wsum)


__all__ = ["HEIGHT", "SYNDROMES", "WIDTH", "BrainFactory"]
