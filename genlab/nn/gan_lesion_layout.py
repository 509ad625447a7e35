"""Where the discs of one lesion cluster sit: the atlas generator's "lattice" layout.

The first layout of genlab.nn.gan_atlas ("slots") places disc k at spread * u_k + d_k around the
cluster centre, d_k learnt per slot. Trained on easy slices it learnt, for syndrome B, a line of
~30 overlapping small discs (a bar) instead of 4-8 separate medium ones: a learnt offset per slot
is a learnt shape, and a line of slots was the shape that passed the judge.

Here the shape is not learnt. Disc k sits at point k of a hexagonal lattice, the points taken in
order of their distance from the centre (0 at the centre, 1-6 the first ring, 7-18 the second,
...), so the first n discs always form one compact cluster, whatever n. Per image, the lattice is
turned by a drawn angle and each disc moved by a drawn jitter inside a disc of radius
jitter * spacing; G learns, per class and image, only the spacing (bounded below) and the share
of jitter (bounded above). Two discs then always stand at least

    min_distance = spacing_min * (1 - 2 * jitter_max)

apart (neighbouring lattice points are `spacing` apart, and each moves by at most
jitter * spacing): no bar and no stack, and a cluster's size follows from its count and spacing
as in the data (B: 4-8 discs within 9-14 px, C: 20-48 within 10-16 px).
"""
from __future__ import annotations

import math

import torch

SPACING = (3.0, 12.0)  # px of the template at the input's resolution, neighbouring lattice points
JITTER = (0.0, 0.3)  # share of the spacing a disc may move from its lattice point
INIT_SPACING = 6.0  # at step 0: a B-like cluster (the data's B: 4-8 discs within 9-14 px)
INIT_JITTER = 0.2


def min_distance(spacing_min: float = SPACING[0], jitter_max: float = JITTER[1]) -> float:
    """The least distance, in px, between two discs of one cluster (see the module docstring)."""
    return spacing_min * (1 - 2 * jitter_max)


def hex_points(n: int) -> torch.Tensor:
    """(n, 2): the n points of the unit hexagonal lattice nearest its origin, nearest first
    (ties in order of angle), so the first k of them are a compact cluster for every k."""
    rings = 1
    while 1 + 3 * rings * (rings + 1) < n:  # points within `rings` rings of the origin
        rings += 1
    pts = [(a + b / 2, b * math.sqrt(3) / 2) for a in range(-rings, rings + 1)
           for b in range(-rings, rings + 1) if abs(a + b) <= rings]
    pts.sort(key=lambda p: (round(math.hypot(*p), 6), math.atan2(p[1], p[0]) % (2 * math.pi)))
    return torch.tensor(pts[:n], dtype=torch.float32)


def uniform_in_disc(u: torch.Tensor) -> torch.Tensor:
    """(..., 2) standard normal -> uniform in the unit disc: the direction of u, at radius
    sqrt(1 - exp(-|u|^2 / 2)) (|u|^2 / 2 is exponential, so that is sqrt of a uniform)."""
    r2 = u.pow(2).sum(-1, keepdim=True)
    return u * torch.sqrt(-torch.expm1(-r2 / 2) / r2.clamp_min(1e-12))


def lattice_offsets(points: torch.Tensor, spacing: torch.Tensor, jitter: torch.Tensor,
                    angle: torch.Tensor, u_slots: torch.Tensor) -> torch.Tensor:
    """(B, K, 2) disc offsets from the cluster centre in px: the lattice `points` (K, 2) turned
    by `angle` (B,), times `spacing` (B, 1), each moved by jitter (B, 1) * spacing * a point
    uniform in the unit disc drawn from u_slots (B, K, 2, standard normal)."""
    c, s = torch.cos(angle)[:, None], torch.sin(angle)[:, None]
    x, y = points[:, 0], points[:, 1]
    turned = torch.stack([c * x - s * y, s * x + c * y], -1)  # (B, K, 2)
    return spacing[..., None] * (turned + jitter[..., None] * uniform_in_disc(u_slots))


__all__ = ["INIT_JITTER", "INIT_SPACING", "JITTER", "SPACING", "hex_points", "lattice_offsets",
           "min_distance",
           "uniform_in_disc"]
