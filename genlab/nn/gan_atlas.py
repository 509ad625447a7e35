"""A generator that draws only the findings: a frozen learned atlas at a drawn pose, plus lesions.

For data that share one anatomy (the brain factory), a conv generator spends most of its
capacity redrawing that anatomy and has little left for the few pixels that carry the class
(the tumours). Here the anatomy comes from a learned atlas (genlab.nn.atlas: a template and its
affine warp), frozen, and G draws three things from its latent vector:

    pose      (log scale x, y, shift x, y, log gain, offset) = pose_mean + pose_sd * (u_pose +
              linear(z)); the buffers hold the real images' pose statistics under the atlas's
              pose net (`fit_pose`), so the anatomy is at a real-looking pose from step 0;
              with pose_cov "full", pose_mean + L (u_pose + linear(z)), L the Cholesky factor
              of their covariance: the brain factory's contrast pivots about a grey level, so
              its gain and offset go together (correlation -0.68), and drawn apart they gave
              healthy slices 12x the lesion judge's floor (with it and the noise amplitude
              drawn as the factory draws it: 1.3x)
    lesions   a set of `slots` soft discs in template coordinates (below)
    noise     per-pixel uniform noise of a drawn amplitude, read from a fixed noise bank

    image = clamp(clamp(gain * warp(T) + offset + noise) + gain * lesion_gain * (1 - exp(-S)))

where S = sum_k amp_k * exp(-|p - c_k|^2 / (2 sigma_k^2)), p a pixel's template position.
The warp is scale + shift (no rotation), so each Gaussian factorises along x and y and S is one
batched matrix product, (B, H, K) @ (B, K, W): no (B, K, H, W) tensor is ever built. The
saturation 1 - exp(-S) makes a strong Gaussian a flat disc with a soft edge (its radius grows
with log amp), as the factory's tumours are; the gain multiplies the lesions as it does the
anatomy, because the factory adds its tumours before the contrast change.

Pose and noise read the noise only, never the class: the nuisance is the same for every
syndrome in the data, and a class-dependent brightness would be a shortcut that fools D's class
head without drawing a tumour.

Spread of the tumour positions within a class. A conv generator that must learn to move its
disc with z settles on one place per class; so did a first version of this one, whose cluster
centre was m(h) + exp(s(h)) u with both learnt (class A at one place by step 400: s -> log 0.02).
Here where a cluster sits is not learnt: its centre is u_area mapped to a point uniform in an
ellipse (`uniform_in_disc`), as the data's lesion areas are; position within the brain carries
no class. Only the ellipse's size is learnt, one number for every class and image (`area_reach`),
which can bring the clusters nearer the centre of the brain but cannot pick a place.
G learns the rest, per class: how tight the cluster is (disc k at the centre
+ spread(h) u_k + d_k, u_k standard normal, d_k learnt from h, u_k and a slot embedding and
starting at 0, both bounded), how many discs are on (a count per image from h: disc k is on
while k < count) and how big and bright they are (sigma_k, amp_k, the lesion gain). The ellipse
is fitted to the template's head (mean and 2 standard deviations of its bright pixels, times
AREA_FRACTION) and a disc centre pushed past it is pulled back onto it, so no lesion leaves the
brain. That is layout "slots" (the default); layout "lattice" (genlab.nn.gan_lesion_layout) puts
disc k at point k of a turned, jittered hexagonal lattice at a learnt spacing instead, so no two
discs of a cluster come nearer than a fixed distance (slots learnt, for one class, a bar of ~30
discs in a line). Or one layout per class (a list): the lattice drew B's separate discs but only
9-11 of C's dots, slots C's 43-48 spots but B as a bar; the head `area` then has five outputs
(spread, gain, count, jitter, spacing) and each image's class picks which centres it gets.
`lesion_gain` sets the range of the lesion gain (hard mode's tumours are fainter than LESION_GAIN).
`gain_draw` draws each image's lesion gain uniformly in that range instead of learning it, as the
factory draws its tumours' (learnt, an easy-mode G put its gains at the range's top, "more A than
A", where the judge's Frechet distance is driven by the brightness).
`noise_range` draws each image's noise amplitude uniformly in that range from its own latent
number, as the factory does, instead of learning it from z (learnt, a hard-mode G gave every
image 0.012 where the data's amplitudes span 0-0.05; a classifier trained on its samples then
called the real slices noisier than that lesion-bearing, healthy ones among them).
`lesion_share` (unconditional G) draws, per image, whether it carries its lesions at all: a gate
on with a learnt probability, the share, from one more latent number. Without it an unconditional
G drew 2-3 discs in every sample (the count is a smooth function of z, one number for nearly
every z), where the data leave one slice in four without a tumour. `forward(..., pair=True)`
renders each latent both ways, so the GAN family can give the share the exact derivative of G's
expected loss: the difference D makes between the sample with and without its lesions.
`profile` "ramp" draws each disc as a flat disc with a linear soft edge, the brightest disc winning
where they overlap (genlab.nn.gan_lesion_profile), instead of the saturated Gaussian sum; the
disc's sigma is then its radius and its amplitude its opacity. Or one profile per class (a list,
as for layout): the ramp drew syndrome A's big tumours within 2x the lesion judge's floor, where
the Gaussian drew C's small ones better.
`count_range` draws, for the classes given a [least, most], each image's disc count as a whole
number uniform in it from its own latent number, as the factory draws its tumour counts, instead
of learning it from h: learnt, one easy-mode G drew exactly 5 of B's discs in 250 of 250 images
and 29-36 of C's, where the data's B carries 4-11 and C 20-48 (the count is a smooth function of
h, and the one disc at the boundary passes no signal for spread).
`anatomy_maps` adds a learnt residual to the template, the same for every class (genlab.nn.gan_anatomy:
the atlas's misfit, which real healthy slices carry); `min_count` and `min_sigma` a least disc
count, a least disc sigma and a least lattice spacing per class.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from genlab.nn import gan_lesion_layout as layout_
from genlab.nn import gan_lesion_profile as profile_
from genlab.nn.atlas import Atlas
from genlab.nn.bounded import FloorComeBack, between, inverse_between, st_clamp
from genlab.nn.gan_anatomy import AnatomyResidual, warp_like_atlas
from genlab.nn.gan_lesion_layout import uniform_in_disc

HEAD_LEVEL = 0.1  # template pixels brighter than this are head (the background is ~0.03)
AREA_FRACTION = 0.7  # disc centres lie inside this fraction of the head ellipse (parenchyma)
NOISE_BANK_ROWS = 4096  # the noise bank: windows of H rows of fixed uniform noise in [-1, 1]
NOISE_BANK_SEED = 20261205
SLOT_EMBED = 8  # learnt per-slot code: lets slot k learn to be "on for large counts only"
# What G may draw (a disc that is on is a visible disc; only the count switches discs off):
LESION_GAIN = (0.15, 0.6)  # brightness a lesion adds where it saturates (the data: 0.3-0.45)
LOG_AMP = (1.0, 8.0)  # a disc saturates out to sigma sqrt(2 log amp): 1.4 to 4 sigma
SIGMA = (0.5, 8.0)  # px of the template at the input's resolution
# Around its cluster centre (units: the area's semi-axes), disc k sits at spread * u_k + d_k, both
# bounded: unbounded, G learnt to push every disc past the edge of the area, where they all
# landed on one point (measured: class A's centres within 0.03 of each other at step 400)
# The lower bound (0.08: ~2.5 px) keeps a cluster a cluster: at 0.01, G stacked 12-14 discs into
# one blob for A and for B alike (the data: A's 1-2 big tumours within 4-8 px, B's 4-8 medium
# ones within 9-14 px, C's within 10-16 px; the area's semi-axes are ~30 px)
CLUSTER_SPREAD = (0.08, 0.6)
MAX_OFFSET = 0.3  # |d_k| per axis
AREA_REACH = (0.3, 1.0)  # cluster centres lie within this share of the area: learnt, one number
INIT_COUNT = 4.0  # discs per image at step 0
COUNT_SHARPNESS = 8.0  # disc k's share: sigmoid(8 (count - k - 1/2))
# count = INIT_COUNT + COUNT_SCALE * (a linear map of h): syndrome C needs 20-48 discs, and with
# the count only moved through the one disc at its boundary, a unit scale took it from 4 to 5 in
# 650 steps (measured)
COUNT_SCALE = 4.0
# share = sigmoid(SHARE_SCALE * a parameter): Adam moves a parameter ~lr per step whatever its
# gradient's size, and the share must be able to cross from 0.5 to the data's 0.75-0.8 (a logit
# of 1.1-1.4) within a few hundred steps at lr 5e-4
SHARE_SCALE = 10.0
ATLAS_GENERATOR_BUILDER = "gan_atlas_generator"  # its exported bundles' "builder"
LAYOUTS = ("slots", "lattice")
PROFILES = ("gaussian", "ramp")


def names_per_class(key: str, value: str | list[str], allowed: tuple[str, ...],
                    num_classes: int) -> list[str]:
    """`value` (one name for every class, or a list of one per class) as a list, checked."""
    names = [value] if isinstance(value, str) else list(value)
    if not names or any(v not in allowed for v in names):
        raise ValueError(f"{key}: expected {' or '.join(map(repr, allowed))} (or a list of them, one "
                         f"per class), got {value!r}")
    if not isinstance(value, str) and len(names) != num_classes:
        raise ValueError(f"{key}: a list needs one entry per class ({num_classes}), got {value!r}")
    return names


def into_disc(q: torch.Tensor) -> torch.Tensor:
    """(..., 2) -> the same point, or, outside the unit disc, the nearest point on its edge."""
    return q / q.norm(dim=-1, keepdim=True).clamp_min(1.0)


class AtlasGenerator(nn.Module):
    """latent (B, z_dim) [, labels (B,)] -> (B, C, H, W) in [0, 1]; see the module docstring.

    latent = [z (code_dim) | u_pose (6) | u_area (2) | u_slots (2 slots) | u_gate (1, lesion_share)
    | u_gain (1, gain_draw) | u_noise_amp (1, noise_range) | u_count (1, count_range)
    | u_angle (1, lattice) | u_noise (1)],
    the bracketed ones only with
    their option, all standard normal (the GAN family draws them). The atlas (template and pose
    net) is a frozen submodule: checkpoints and the exported generator hold it, so nothing outside
    is needed to sample."""

    def __init__(self, out_shape: list[int], widths: list[int], up: int, code_dim: int,
                 num_classes: int = 0, slots: int = 48, hidden: int = 128,
                 max_log_scale: float = 0.3, max_shift: float = 0.3, layout: str = "slots",
                 lesion_gain: tuple[float, float] | None = None, anatomy_maps: int = 0,
                 min_count: list[float] | None = None, min_sigma: list[float] | None = None,
                 min_spacing: list[float] | None = None, lesion_share: float | None = None,
                 gain_draw: bool = False, noise_range: tuple[float, float] | None = None,
                 profile: str | list[str] = "gaussian", pose_cov: str = "diagonal",
                 count_range: list[list[float] | None] | None = None):
        super().__init__()
        # a name: every class; a list: one per class (as layout)
        self.profile_per_class = not isinstance(profile, str)
        profiles = names_per_class("profile", profile, PROFILES, num_classes)
        self.profile = profiles if self.profile_per_class else profile
        self.uses_ramp = "ramp" in profiles
        # a disc's size (gaussian: its sigma; ramp: its radius), px: (its range, where it starts);
        # per class, the Gaussian's, the ramp's classes moved to theirs in draw_discs
        self._size = ((profile_.RADIUS, profile_.INIT_RADIUS) if profile == "ramp"
                      else (SIGMA, 1.5))
        c, h, w = (int(v) for v in out_shape)
        self.out_shape, self.code_dim, self.slots = [c, h, w], int(code_dim), int(slots)
        # a name: every class; a list: one per class (the same key in a bundle either way)
        self.per_class = not isinstance(layout, str)
        layouts = names_per_class("layout", layout, LAYOUTS, num_classes)
        self.layout = layouts if self.per_class else layout
        self.uses_lattice = "lattice" in layouts
        # the range of the lesion gain; given, G starts at its middle (default: LESION_GAIN, 0.35)
        self.gain_range = LESION_GAIN if lesion_gain is None else tuple(float(v) for v in lesion_gain)
        if not 0 < self.gain_range[0] < self.gain_range[1]:
            raise ValueError(f"lesion_gain: expected 0 < low < high, got {list(self.gain_range)}")
        init_gain = 0.35 if lesion_gain is None else sum(self.gain_range) / 2
        # z_dim: the whole noise vector a caller draws (as for the conv Generator); the first
        # code_dim numbers feed the networks, the rest place and shape the discs directly (the
        # lattice layout: one more, the angle of the lattice)
        if lesion_share is not None and not (0 < lesion_share < 1 and not num_classes):
            raise ValueError(f"lesion_share: expected a share in (0, 1) for an unconditional G, got "
                             f"{lesion_share} (classes: {num_classes})")
        self.gated, self.gain_draw = lesion_share is not None, bool(gain_draw)
        self.noise_range = None if noise_range is None else tuple(float(v) for v in noise_range)
        if self.noise_range is not None and not 0 <= self.noise_range[0] < self.noise_range[1] <= 0.5:
            raise ValueError(f"noise_range: expected 0 <= low < high <= 0.5, got {list(noise_range)}")
        self.count_drawn = count_range is not None
        self.z_dim = (self.code_dim + 6 + 2 + 2 * self.slots + self.gated + self.gain_draw
                      + (self.noise_range is not None) + self.count_drawn + self.uses_lattice + 1)
        self.atlas = Atlas([c, h, w], widths, up, max_log_scale, max_shift).requires_grad_(False)
        self.register_buffer("pose_mean", torch.zeros(6))
        self.register_buffer("pose_sd", torch.zeros(6))  # 0 until fit_pose: the template's own pose
        self.register_buffer("pose_ready", torch.tensor(False))
        if pose_cov not in ("diagonal", "full"):
            raise ValueError(f"pose_cov: expected 'diagonal' or 'full', got {pose_cov!r}")
        self.pose_cov = pose_cov
        if pose_cov == "full":  # 0 until fit_pose, as pose_sd
            self.register_buffer("pose_chol", torch.zeros(6, 6))
        self.register_buffer("area_centre", torch.zeros(2))  # head ellipse, normalised coordinates
        self.register_buffer("area_axes", torch.ones(2))
        gen = torch.Generator().manual_seed(NOISE_BANK_SEED)  # fixed: rebuilt, never saved
        self.register_buffer("noise_bank", torch.rand(NOISE_BANK_ROWS + h, w, generator=gen) * 2 - 1,
                             persistent=False)
        self.embed = nn.Embedding(num_classes, code_dim) if num_classes else None
        self.pose = nn.Linear(code_dim, 6)  # pose and noise amplitude: from z only, never the class
        self.noise_amp = nn.Linear(code_dim, 1) if self.noise_range is None else None  # else drawn
        self.trunk = nn.Sequential(nn.Linear(code_dim * (2 if num_classes else 1), hidden), nn.LeakyReLU(0.2),
                                   nn.Linear(hidden, hidden), nn.LeakyReLU(0.2))
        # per image: log spread of the discs around the cluster centre (lattice: their spacing),
        # lesion gain, disc count (lattice: and the share of jitter; per class: and the spacing)
        self.area = nn.Linear(hidden, 5 if self.per_class else 4 if self.uses_lattice else 3)
        self._spacing_col = 4 if self.per_class else 0
        if self.uses_lattice:
            self.register_buffer("lattice", layout_.hex_points(self.slots), persistent=False)
        if self.per_class:  # which classes draw on the lattice
            self.register_buffer("class_lattice", torch.tensor([v == "lattice" for v in layouts]),
                                 persistent=False)
        # one number for all classes and images: how far from the head's centre clusters may
        # sit (a share of the lesion area); it scales where they are, it cannot choose a place
        self.area_reach = nn.Parameter(torch.tensor(inverse_between(0.8, AREA_REACH)))
        self.slot_embed = nn.Parameter(torch.randn(self.slots, SLOT_EMBED))
        self.register_buffer("slot_index", torch.arange(self.slots, dtype=torch.float32), persistent=False)
        self.slot_h = nn.Linear(hidden, 64)
        self.slot_in = nn.Linear(2 + SLOT_EMBED, 64, bias=False)
        self.slot_out = nn.Linear(64, 4)  # per disc: offset x, y, log sigma (px), log amplitude
        self._init_gain = init_gain
        self._init_heads()
        if self.uses_ramp:  # the soft edge, e = e0 + k r: two numbers for every disc and image
            self.edge = nn.Parameter(torch.tensor([inverse_between(profile_.INIT_EDGE[0], profile_.EDGE_0),
                                                   inverse_between(profile_.INIT_EDGE[1], profile_.EDGE_K)]))
        # the options below hold no weights or are created last: off, G draws the same initial weights
        # per class, the least number of discs (a floor under the count) and the least disc sigma
        self.min_count = self._per_class("min_count", min_count, num_classes, 0, self.slots, True)
        self.min_sigma = self._per_class("min_sigma", min_sigma, num_classes, *self._size[0], False)
        self.min_spacing = self._per_class("min_spacing", min_spacing, num_classes, *layout_.SPACING, False)
        if self.profile_per_class:
            self._init_class_profiles(profiles)
        if self.count_drawn:
            self._init_count_range(count_range, num_classes)
        self.anatomy = (AnatomyResidual(anatomy_maps, list(self.atlas.template.shape[1:]), code_dim)
                        if anatomy_maps else None)
        if self.gated:
            self.share_param = nn.Parameter(torch.tensor(math.log(lesion_share / (1 - lesion_share))
                                                         / SHARE_SCALE))

    def _init_class_profiles(self, profiles: list[str]) -> None:
        """Buffers of a profile per class: which classes draw ramps, the top of their size range,
        and what their size and amplitude logits add to the shared head's (zero for the Gaussian
        classes), so each class starts where a G of its one profile starts."""
        ramp = torch.tensor([v == "ramp" for v in profiles])
        self.register_buffer("class_ramp", ramp, persistent=False)
        self.register_buffer("class_size_top", torch.where(ramp, profile_.RADIUS[1], SIGMA[1]),
                             persistent=False)
        offset = torch.zeros(len(profiles), 4)
        offset[ramp, 2] = (inverse_between(profile_.INIT_RADIUS, profile_.RADIUS)
                           - inverse_between(self._size[1], SIGMA))
        offset[ramp, 3] = (inverse_between(profile_.INIT_OPACITY, profile_.OPACITY)
                           - inverse_between(3.0, LOG_AMP))
        self.register_buffer("class_logit_offset", offset, persistent=False)

    def _init_count_range(self, ranges: list[list[float] | None], num_classes: int) -> None:
        """Buffers of the drawn counts: which classes draw theirs, and the least and most discs."""
        if len(ranges) != num_classes or not any(r is not None for r in ranges):
            raise ValueError(f"count_range: expected one [least, most] or None per class ({num_classes}), "
                             f"at least one range, got {ranges}")
        bad = [r for r in ranges if r is not None and not (
            len(r) == 2 and 0 <= r[0] <= r[1] <= self.slots and all(float(v).is_integer() for v in r))]
        if bad:
            raise ValueError(f"count_range: expected whole numbers 0 <= least <= most <= slots "
                             f"({self.slots}), got {bad[0]}")
        self.register_buffer("class_count_drawn", torch.tensor([r is not None for r in ranges]),
                             persistent=False)
        self.register_buffer("class_count_range", torch.tensor([r or [0, 0] for r in ranges],
                                                               dtype=torch.float32), persistent=False)

    def lesion_share(self) -> torch.Tensor | None:
        """The probability that a drawn image carries its lesions (None: every image does)."""
        return torch.sigmoid(SHARE_SCALE * self.share_param) if self.gated else None

    def _per_class(self, name: str, values, num_classes: int, lo: float, hi: float,
                   hi_in: bool) -> list[float] | None:
        """One number per class in [lo, hi] (hi_in) or [lo, hi), kept as buffer class_<name>."""
        if values is None:
            return None
        values = [float(v) for v in values]
        if len(values) != num_classes or not all(lo <= v <= hi and (hi_in or v < hi) for v in values):
            raise ValueError(f"{name}: expected one number in [{lo}, {hi}{']' if hi_in else ')'} per "
                             f"class ({num_classes}), got {values}")
        self.register_buffer(f"class_{name}", torch.tensor(values), persistent=False)
        return values

    @torch.no_grad()
    def _init_heads(self) -> None:
        for lin in (self.pose, self.area, self.slot_out):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)
        # at step 0: discs spread around their cluster centre by 0.3 of the area's semi-axes, a
        # lesion gain of 0.35 (the data's: 0.3-0.45), INIT_COUNT sharp discs of radius ~3.7 px
        # (sigma 1.5, amp e^3: saturated out to sigma sqrt(6)). Sharp, because D rejects faint
        # blurry blobs at once, and G, answering, switches them off before D's class head has
        # learnt that the classes differ by them (measured: 48 faint discs at e^-1, off by step 60)
        spread = inverse_between(0.3, CLUSTER_SPREAD)
        spacing = inverse_between(layout_.INIT_SPACING, layout_.SPACING)
        first = spread if self.per_class or not self.uses_lattice else spacing
        bias = [first, inverse_between(self._init_gain, self.gain_range), INIT_COUNT / COUNT_SCALE]
        if self.uses_lattice:
            bias.append(inverse_between(layout_.INIT_JITTER, layout_.JITTER))
        if self.per_class:
            bias.append(spacing)
        self.area.bias.copy_(torch.tensor(bias))
        size, init_size = self._size
        amp = (inverse_between(profile_.INIT_OPACITY, profile_.OPACITY) if self.profile == "ramp"
               else inverse_between(3.0, LOG_AMP))
        self.slot_out.bias.copy_(torch.tensor([0.0, 0.0, inverse_between(init_size, size), amp]))
        if self.noise_amp is not None:
            nn.init.zeros_(self.noise_amp.weight)
            self.noise_amp.bias.fill_(math.log(math.expm1(0.025)))  # softplus -> 0.025

    # -- fitting to the data ---------------------------------------------------------------------
    @torch.no_grad()
    def fit_template_frame(self) -> None:
        """The head ellipse from the template: centre and semi-axes (2 sd of the bright pixels'
        coordinates, as for a uniform ellipse), in normalised coordinates."""
        t = self.atlas.template.float().mean(1)[0]  # (H up, W up)
        ys = (torch.arange(t.shape[0], dtype=torch.float32) + 0.5) / t.shape[0] * 2 - 1
        xs = (torch.arange(t.shape[1], dtype=torch.float32) + 0.5) / t.shape[1] * 2 - 1
        m = (t > HEAD_LEVEL).float()
        if m.sum() < 4:
            raise ValueError(f"the atlas template has no head: fewer than 4 pixels above {HEAD_LEVEL}")
        wy, wx = m.sum(1), m.sum(0)
        cy, cx = (wy * ys).sum() / m.sum(), (wx * xs).sum() / m.sum()
        sy = ((wy * (ys - cy) ** 2).sum() / m.sum()).sqrt()
        sx = ((wx * (xs - cx) ** 2).sum() / m.sum()).sqrt()
        self.area_centre.copy_(torch.stack([cx, cy]))
        self.area_axes.copy_(2 * AREA_FRACTION * torch.stack([sx, sy]))

    @torch.no_grad()
    def fit_pose(self, x: torch.Tensor) -> None:
        """Pose statistics of real images x under the atlas's pose net (once, at the first step)."""
        p = self.atlas.pose(x.float())
        self.pose_mean.copy_(p.mean(0))
        self.pose_sd.copy_(p.std(0) if len(p) > 1 else torch.zeros(6))
        if self.pose_cov == "full":
            if len(p) < 12:
                raise ValueError(f"pose_cov full: fit_pose needs at least 12 images for a 6 x 6 "
                                 f"covariance, got {len(p)}")
            cov = torch.cov(p.T.double()) + 1e-10 * torch.eye(6, dtype=torch.float64)
            self.pose_chol.copy_(torch.linalg.cholesky(cov).float())
        self.pose_ready.fill_(True)

    # -- drawing -------------------------------------------------------------------------------
    def split_latent(self, latent: torch.Tensor) -> dict[str, torch.Tensor]:
        z, k = self.code_dim, self.slots
        parts = {"z": latent[:, :z], "pose": latent[:, z:z + 6], "area": latent[:, z + 6:z + 8],
                 "slots": latent[:, z + 8:z + 8 + 2 * k].view(-1, k, 2), "noise": latent[:, -1]}
        if self.gated:
            parts["gate"] = latent[:, z + 8 + 2 * k]
        if self.gain_draw:
            parts["gain"] = latent[:, z + 8 + 2 * k + self.gated]
        if self.noise_range is not None:
            parts["noise_amp"] = latent[:, z + 8 + 2 * k + self.gated + self.gain_draw]
        if self.count_drawn:
            parts["count"] = latent[:, z + 8 + 2 * k + self.gated + self.gain_draw
                                    + (self.noise_range is not None)]
        if self.uses_lattice:
            parts["angle"] = latent[:, -2]
        return parts

    def draw_pose(self, z: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        if self.pose_cov == "full":
            p = self.pose_mean + (u + self.pose(z)) @ self.pose_chol.T
        else:
            p = self.pose_mean + self.pose_sd * (u + self.pose(z))
        a = self.atlas  # the atlas's own bounds on the warp
        geo = torch.cat([a.max_log_scale * torch.tanh(p[:, :2] / a.max_log_scale),
                         a.max_shift * torch.tanh(p[:, 2:4] / a.max_shift)], 1)
        return torch.cat([geo, p[:, 4:]], 1)

    def draw_discs(self, h: torch.Tensor, u_area: torch.Tensor, u_slots: torch.Tensor,
                   u_angle: torch.Tensor | None = None, y: torch.Tensor | None = None,
                   u_count: torch.Tensor | None = None):
        """(centres (B, K, 2) normalised template coordinates, sigma (B, K) px, amp (B, K)
        (0 for a disc that is off), lesion gain (B,)); profile ramp: the radius (px) and the opacity
        in their place. u_angle (B,): the lattice layout's turn;
        y (B,): the classes, which pick each image's layout when it is chosen per class;
        u_count (B,): with count_range, the drawn count of the classes that draw theirs."""
        a = self.area(h)
        s = self.slot_out(F.leaky_relu(self.slot_h(h)[:, None] + self.slot_in(
            torch.cat([u_slots, self.slot_embed.expand(len(h), -1, -1)], 2)), 0.2))
        reach = between(self.area_reach, AREA_REACH)
        if not self.per_class:
            centres = (self._lattice_centres(a, reach, u_area, u_slots, u_angle, y) if self.uses_lattice
                       else self._slot_centres(a, s, reach, u_area, u_slots))
        else:
            if y is None:
                raise ValueError("layouts per class: draw_discs needs the classes y")
            on_lattice = self.class_lattice[y][:, None, None]
            centres = torch.where(on_lattice, self._lattice_centres(a, reach, u_area, u_slots, u_angle, y),
                                  self._slot_centres(a, s, reach, u_area, u_slots))
        if self.profile_per_class:  # the ramp classes: their logits and range (a radius, an opacity)
            if y is None:
                raise ValueError("profiles per class: draw_discs needs the classes y")
            s = s + self.class_logit_offset[y][:, None]
            lo = self._class_range("min_sigma", self._size[0], y)[0]
            sigma = between(s[..., 2], (lo, self.class_size_top[y][:, None]))
        else:  # per class, [its least sigma, SIGMA's top]: B's medium discs, not G's 0.5 px dots
            sigma = between(s[..., 2], self._class_range("min_sigma", self._size[0], y))
        # disc k is on while k < count: one number per image sets how many, and the disc at the
        # boundary always passes a gradient to it. The floor keeps that boundary disc within
        # reach (count >= -0.5: disc 0 at 3e-4 of its amplitude, not at 0): a class whose discs
        # D rejects early (before its class head has learnt them) can draw them again later
        # (measured: without it B and C fell to counts of -5 by step 400)
        # With min_count, the floor is the class's least count (B: 4 discs, not the 2 G settles on)
        # A gated G (lesion_share): the gate says whether an image has lesions, the count how
        # many, at least one (measured: ungated by a floor, the count fell to 0.01 discs by step
        # 150, the gate then switched nothing and the share had no signal)
        floor = (-0.5 if self.min_count is None else self.class_min_count[y][:, None].clamp_min(-0.5))
        if self.gated:
            floor = 1.0
        count = st_clamp(FloorComeBack.apply(COUNT_SCALE * a[:, 2:3], floor), None, float(self.slots))
        if self.count_drawn:
            count = torch.where(self.class_count_drawn[y][:, None], self.drawn_count(u_count, y), count)
        on = torch.sigmoid(COUNT_SHARPNESS * (count - self.slot_index - 0.5))
        if self.profile == "ramp":
            opacity = between(s[..., 3], profile_.OPACITY) * on
            return centres, sigma, opacity, between(a[:, 1], self.gain_range)
        amp = torch.exp(between(s[..., 3], LOG_AMP)) * on
        if self.profile_per_class:
            amp = torch.where(self.class_ramp[y][:, None], between(s[..., 3], profile_.OPACITY) * on, amp)
        return centres, sigma, amp, between(a[:, 1], self.gain_range)

    def drawn_count(self, u: torch.Tensor | None, y: torch.Tensor | None) -> torch.Tensor:
        """(B, 1): a whole number of discs uniform in each image's class range, from u (normal).
        Whole, so every disc is on or off as a drawn image's are (the one past the count at
        sigmoid(-4), as a learnt count's boundary disc)."""
        if u is None or y is None:
            raise ValueError("count_range: draw_discs needs the classes y and the count's latent u_count")
        lo, hi = self.class_count_range[y].unbind(1)
        k = torch.floor(torch.special.ndtr(u.float()) * (hi - lo + 1))
        return (lo + torch.minimum(k, hi - lo))[:, None]

    def _class_range(self, name: str, lo_hi: tuple[float, float], y) -> tuple:
        """lo_hi, its low end raised to each image's class's least value (B, 1) when the
        per-class option `name` is set."""
        if getattr(self, name) is None:
            return lo_hi
        return getattr(self, f"class_{name}")[y][:, None], lo_hi[1]

    def _lattice_centres(self, a, reach, u_area, u_slots, u_angle, y=None) -> torch.Tensor:
        """genlab.nn.gan_lesion_layout: a drawn, turned, jittered lattice at a learnt spacing
        (per class, at least min_spacing: B's separate discs, not a clump at the least spacing)."""
        col = self._spacing_col
        spacing = between(FloorComeBack.apply(a[:, col:col + 1], -3.0),
                           self._class_range("min_spacing", layout_.SPACING, y))
        angle = 2 * math.pi * torch.special.ndtr(u_angle)
        jitter = between(a[:, 3:4], layout_.JITTER)
        px = layout_.lattice_offsets(self.lattice, spacing, jitter, angle, u_slots)
        _, hh, ww = self.out_shape  # px -> normalised template coordinates
        centre = self.area_centre + self.area_axes * reach * uniform_in_disc(u_area)
        return centre[:, None] + px / px.new_tensor([ww / 2, hh / 2])

    def _slot_centres(self, a, s, reach, u_area, u_slots) -> torch.Tensor:
        """Around a drawn centre at a learnt spread, plus an offset learnt per slot."""
        # the spread's sigmoid stops at logit -3, rising gradients only: a class that packed
        # its discs early (measured: all three at the least spread by step 650) can unpack them
        spread = between(FloorComeBack.apply(a[:, None, 0:1], -3.0), CLUSTER_SPREAD)
        q = (reach * uniform_in_disc(u_area)[:, None] + spread * u_slots
             + MAX_OFFSET * torch.tanh(s[..., :2]))
        return self.area_centre + self.area_axes * into_disc(q)

    def lesion_sum(self, pose, centres, sigma, amp) -> torch.Tensor:
        """S (B, H, W): the sum of the Gaussians at each pixel's template position."""
        _, h, w = self.out_shape
        dev = pose.device
        xn = (torch.arange(w, device=dev, dtype=torch.float32) * 2 + 1) / w - 1  # pixel centres
        yn = (torch.arange(h, device=dev, dtype=torch.float32) * 2 + 1) / h - 1
        xt = torch.exp(pose[:, 0:1]) * xn + pose[:, 2:3]  # (B, W) template x of each column
        yt = torch.exp(pose[:, 1:2]) * yn + pose[:, 3:4]  # affine_grid's map, no rotation
        inv = 1 / (2 * sigma.pow(2))[..., None]  # (B, K, 1)
        gx = torch.exp(-((xt[:, None] - centres[..., 0:1]) * (w / 2)).pow(2) * inv)  # (B, K, W)
        gy = torch.exp(-((yt[:, None] - centres[..., 1:2]) * (h / 2)).pow(2) * inv)  # (B, K, H)
        return torch.einsum("bkh,bkw->bhw", amp[..., None] * gy, gx)

    def lesion_alpha(self, pose, centres, sigma, amp, y=None) -> torch.Tensor:
        """(B, H, W) in [0, 1]: how much of the lesion gain each pixel carries (y: the classes,
        which pick each image's profile when it is chosen per class)."""
        if self.profile == "ramp":
            return self._ramp_alpha(pose, centres, sigma, amp)
        alpha = -torch.expm1(-self.lesion_sum(pose, centres, sigma, amp))
        if not self.profile_per_class:
            return alpha
        if y is None:
            raise ValueError("profiles per class: lesion_alpha needs the classes y")
        ramp = torch.nonzero(self.class_ramp[y]).squeeze(1)  # only those images pay for the windows
        if not len(ramp):
            return alpha
        return alpha.index_copy(0, ramp, self._ramp_alpha(pose[ramp], centres[ramp], sigma[ramp], amp[ramp]))

    def _ramp_alpha(self, pose, centres, radius, opacity) -> torch.Tensor:
        edge = (between(self.edge[0], profile_.EDGE_0) + between(self.edge[1], profile_.EDGE_K) * radius)
        return profile_.ramp_discs(pose, centres, radius, edge, opacity, tuple(self.out_shape[1:]))

    def noise(self, u: torch.Tensor, amp: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W): amp times a window of the bank, its first row chosen by u (normal)."""
        _, h, _ = self.out_shape
        start = (torch.special.ndtr(u.float()) * NOISE_BANK_ROWS).long().clamp(0, NOISE_BANK_ROWS - 1)
        rows = start[:, None] + torch.arange(h, device=u.device)
        return amp.view(-1, 1, 1, 1) * self.noise_bank[rows][:, None]

    def compose(self, pose: torch.Tensor, lesions: torch.Tensor, noise: torch.Tensor,
                anatomy: torch.Tensor | None = None) -> torch.Tensor:
        """The image from a pose (B, 6), a lesion layer (B, C or 1, H, W) in template brightness
        units (before the gain), noise (B, C or 1, H, W) and optionally an anatomy residual in
        template coordinates (B, C, H up, W up; `AnatomyResidual`): all lesion, noise and
        residual zero gives the atlas's rendering, clamped to [0, 1]."""
        return self.add_lesions(self.healthy(pose, noise, anatomy), pose, lesions)

    def healthy(self, pose: torch.Tensor, noise: torch.Tensor, anatomy: torch.Tensor | None) -> torch.Tensor:
        """compose's image before its lesions: the atlas at the pose, the residual and noise."""
        anatomy_px = 0.0 if anatomy is None else warp_like_atlas(anatomy, pose, self.atlas.up,
                                                                 tuple(self.out_shape[1:]))
        return st_clamp(self.atlas.render(pose) + anatomy_px + noise, 0.0, 1.0)

    @staticmethod
    def add_lesions(base: torch.Tensor, pose: torch.Tensor, lesions: torch.Tensor) -> torch.Tensor:
        return st_clamp(base + torch.exp(pose[:, 4]).view(-1, 1, 1, 1) * lesions, None, 1.0)

    def forward(self, latent: torch.Tensor, y: torch.Tensor | None = None, pair: bool = False):
        """(B, C, H, W) images; with pair=True (a gated G: lesion_share) the tuple (with its
        lesions, without them, on (B,) bool: which of the two each latent draws, the share)."""
        if pair and not self.gated:
            raise ValueError("forward(pair=True) needs a gated G (lesion_share)")
        parts = self.split_latent(latent)
        z = parts["z"]
        zc = torch.cat([z, self.embed(y)], 1) if self.embed is not None else z
        h = self.trunk(zc)
        with torch.autocast(latent.device.type, enabled=False):  # geometry in float32
            h, z = h.float(), z.float()
            pose = self.draw_pose(z, parts["pose"].float())
            angle = parts["angle"].float() if "angle" in parts else None
            u_count = parts["count"].float() if "count" in parts else None
            centres, sigma, amp, gain = self.draw_discs(h, parts["area"].float(),
                                                        parts["slots"].float(), angle, y, u_count)
            if self.gain_draw:
                lo, hi = self.gain_range
                gain = lo + (hi - lo) * torch.special.ndtr(parts["gain"].float())
            lesions = (gain.view(-1, 1, 1) * self.lesion_alpha(pose, centres, sigma, amp, y))[:, None]
            seen = profile_.OPACITY[0] / 2 if self.profile == "ramp" else 1.0  # a disc that is on
            if self.profile_per_class:
                seen = torch.where(self.class_ramp[y], profile_.OPACITY[0] / 2, 1.0)[:, None]
            self.last_stats = {"g_lesion_discs": (amp > seen).float().sum(1).mean().detach(),
                               "g_lesion_gain": gain.mean().detach(),
                               "g_disc_sigma": sigma.mean().detach(),
                               "g_area_reach": between(self.area_reach.detach(), AREA_REACH)}
            if self.uses_ramp:
                self.last_stats["g_disc_edge0"] = between(self.edge[0].detach(), profile_.EDGE_0)
                self.last_stats["g_disc_edge_k"] = between(self.edge[1].detach(), profile_.EDGE_K)
            if self.noise_range is None:
                noise_amp = F.softplus(self.noise_amp(z))
            else:
                lo, hi = self.noise_range
                noise_amp = lo + (hi - lo) * torch.special.ndtr(parts["noise_amp"].float())
            self.last_stats["g_noise_amp"] = noise_amp.mean().detach()
            noise = self.noise(parts["noise"], noise_amp)
            anatomy = None if self.anatomy is None else self.anatomy(z)
            if not self.gated:
                return self.compose(pose, lesions, noise, anatomy)
            share = self.lesion_share()
            on = torch.special.ndtr(parts["gate"].float()) < share.detach()
            self.last_stats["g_lesion_share"] = share.detach()
            base = self.healthy(pose, noise, anatomy)
            with_lesions = self.add_lesions(base, pose, lesions)
            if pair:
                return with_lesions, base, on, share
            return torch.where(on.view(-1, 1, 1, 1), with_lesions, base)


__all__ = ["ATLAS_GENERATOR_BUILDER", "LAYOUTS", "PROFILES", "AtlasGenerator", "into_disc", "uniform_in_disc"]
