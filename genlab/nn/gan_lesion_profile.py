"""Flat lesion discs with a linear soft edge, drawn in a window around each disc.

The atlas generator's first lesion profile is a saturated Gaussian, 1 - exp(-amp g(p)): a disc
whose edge widens as it grows and whose overlapping neighbours add up before saturating. A lesion
classifier used as a judge reads the size, edge and brightness of a tumour to a tenth of a pixel,
and a Gaussian-shaped blob of the right area is still the wrong shape. Profile "ramp" draws what
many lesion models (and the brain factory) use instead: a disc of radius r at full opacity inside
r - e, falling linearly in rho^2 to nothing at r + e, where e = e0 + k r is a soft edge that
grows a little with the disc; where discs overlap the brightest one wins (a maximum, not a sum),
so a cluster of small discs never outshines one disc. G learns r and the opacity per disc; e0
and k are two numbers shared by every disc and image.

The image is only touched near each disc: a square window of (2P + 1)^2 pixels around its
centre, P the widest disc's reach in output pixels, so the work is B x K x (2P + 1)^2, not
B x K x H x W, and the windows are merged into the image with a scatter maximum (whose gradient
goes to the disc that wins each pixel). Distances are in template pixels, as the Gaussian
profile's are: the pose's scale stretches a disc with the anatomy.
"""
from __future__ import annotations

import math

import torch

RADIUS = (0.5, 10.0)  # template px: the disc's radius at half of its edge
OPACITY = (0.5, 1.0)  # per disc, times the image's lesion gain
EDGE_0 = (0.1, 2.0)  # px: e = e0 + k r, two numbers learnt for every disc and image
EDGE_K = (0.0, 0.5)
INIT_EDGE = (0.5, 0.15)
INIT_RADIUS, INIT_OPACITY = 3.0, 0.875


def ramp_discs(pose: torch.Tensor, centres: torch.Tensor, radius: torch.Tensor, edge: torch.Tensor,
               opacity: torch.Tensor, out_hw: tuple[int, int]) -> torch.Tensor:
    """(B, H, W): the brightest disc at each pixel, in [0, 1].

    pose (B, >= 4): log scale x, y and shift x, y of the warp (template = exp(scale) * output +
    shift, normalised coordinates); centres (B, K, 2) normalised template coordinates; radius,
    edge (B, K) template px; opacity (B, K) in [0, 1] (0: a disc that is off)."""
    h, w = out_hw
    b, k = radius.shape
    scale, shift = torch.exp(pose[:, 0:2]), pose[:, 2:4]
    # the disc centres in output pixel indices (pixel j's centre: normalised (2 j + 1) / w - 1)
    out = (centres - shift[:, None]) / scale[:, None]
    jc = (out[..., 0] + 1) * w / 2 - 0.5
    ic = (out[..., 1] + 1) * h / 2 - 0.5
    with torch.no_grad():  # the window's half-width: the widest reach, in output px
        reach = ((radius + edge).amax() / scale.amin()).item() if b * k else 0.0
    half = math.ceil(reach) + 1
    offs = torch.arange(-half, half + 1, device=radius.device)
    cols = torch.round(jc.detach()).long()[..., None] + offs  # (B, K, n)
    rows = torch.round(ic.detach()).long()[..., None] + offs
    # template px from each window pixel to its disc's centre
    dx = (scale[:, 0, None, None] * ((2 * cols + 1) / w - 1) + shift[:, 0, None, None]
          - centres[..., 0:1]) * (w / 2)
    dy = (scale[:, 1, None, None] * ((2 * rows + 1) / h - 1) + shift[:, 1, None, None]
          - centres[..., 1:2]) * (h / 2)
    far = 1e6  # outside the image: never drawn (finite: no inf or nan in the gradients)
    dx = torch.where((cols < 0) | (cols >= w), far, dx.square())
    dy = torch.where((rows < 0) | (rows >= h), far, dy.square())
    rho2 = dy[..., :, None] + dx[..., None, :]  # (B, K, n, n)
    r1 = (radius + edge)[..., None, None]
    r0 = (radius - edge).clamp_min(0)[..., None, None]
    ramp = ((r1.square() - rho2) / (r1.square() - r0.square())).clamp(0, 1)
    value = opacity[..., None, None] * ramp
    batch = torch.arange(b, device=radius.device)[:, None, None]
    flat = ((batch * h + rows.clamp(0, h - 1)) * w)[..., :, None] + cols.clamp(0, w - 1)[..., None, :]
    base = value.new_zeros(b * h * w)
    return base.scatter_reduce(0, flat.reshape(-1), value.reshape(-1), "amax").view(b, h, w)


__all__ = ["EDGE_0", "EDGE_K", "INIT_EDGE", "INIT_OPACITY", "INIT_RADIUS", "OPACITY", "RADIUS",
           "ramp_discs"]
