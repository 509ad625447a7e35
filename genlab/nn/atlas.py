"""A learned atlas: one template image, warped and re-lit per input by a small pose network.

Made for data whose images share one anatomy and differ by a global geometric and intensity
nuisance plus local findings (the brain factory: every slice is one base brain, shrunk, shifted,
contrast-changed and shaded, with tumours painted in). Then

    input x -> pose net -> (log scale x, log scale y, shift x, shift y, log gain, offset)
    template T (a parameter, `up` times the input's resolution)
        -> affine warp (scale about the centre, then shift) -> area-downsample by `up`
        -> gain * T_warped + offset = the reconstruction (the anatomy as this image shows it)
    residual r = x - reconstruction: what the atlas cannot explain (lesions, noise, blur)

Trained with an L1 loss the template becomes the per-pixel median image after alignment: a lesion
at a random place in a minority of images does not enter it, so lesions are left in the residual
(an atlas is the reference that registration-based anomaly detection compares against).

`ResidualStats` turns a residual into fixed-length features a linear classifier can use: at each
Gaussian scale, the share of pixels above each threshold (how much lesion area there is, and at
which size, since smoothing at scale s keeps blobs of about s and larger), quantiles (how strong
the strongest finding is) and the positive mean, for r and for -r (bright and dark findings).
Nothing in it is learned: its numbers are counts and order statistics of the residual.
`AtlasEncoder` = the two together: the exported encoder ("atlas_encoder" builder).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

#: pose parameters, in the order the pose net predicts them
POSE = ("log_scale_x", "log_scale_y", "shift_x", "shift_y", "log_gain", "offset")


class PoseNet(nn.Module):
    """Strided 4 x 4 convolutions, then a linear layer from the whole last
    feature map to the six pose numbers. Flattened, not averaged: a global average would be blind
    to where the brain is, which is half of the pose. The last layer starts at zero: every image
    starts at the identity pose."""

    def __init__(self, in_shape: list[int], widths: list[int]):
        super().__init__()
        c, h, w = in_shape
        layers: list[nn.Module] = []
        for a, b in zip([c, *widths], widths, strict=False):
            layers += [nn.Conv2d(a, b, 4, 2, 1), nn.LeakyReLU(0.2)]
            h, w = h // 2, w // 2
        if h < 1 or w < 1:
            raise ValueError(f"pose_widths: {len(widths)} stride-2 layers shrink a {in_shape[1]}x"
                             f"{in_shape[2]} image below 1 pixel; use fewer")
        self.features = nn.Sequential(*layers)
        self.out = nn.Linear(widths[-1] * h * w, len(POSE))
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.features(x).flatten(1))


class Atlas(nn.Module):
    """The template and the pose net; `forward(x)` returns (reconstruction, pose (B, 6))."""

    def __init__(self, in_shape: list[int], widths: list[int], up: int = 2,
                 max_log_scale: float = 0.3, max_shift: float = 0.3):
        super().__init__()
        c, h, w = (int(v) for v in in_shape)
        self.in_shape, self.up = [c, h, w], int(up)
        self.max_log_scale, self.max_shift = float(max_log_scale), float(max_shift)
        self.template = nn.Parameter(torch.full((1, c, h * self.up, w * self.up), 0.5))
        self.pose_net = PoseNet([c, h, w], list(widths))

    @torch.no_grad()
    def init_template(self, x: torch.Tensor) -> None:
        """Start the template at the per-pixel median of a batch (upsampled): close to the
        anatomy already, so the pose net starts from a sensible target."""
        med = x.float().median(0, keepdim=True).values
        self.template.copy_(F.interpolate(med, scale_factor=self.up, mode="bilinear", align_corners=False))

    def pose(self, x: torch.Tensor) -> torch.Tensor:
        p = self.pose_net(x)
        # bounded warps: a pose net cannot fold the template away or zoom into a corner
        geo = torch.cat([self.max_log_scale * torch.tanh(p[:, :2]),
                         self.max_shift * torch.tanh(p[:, 2:4])], 1)
        return torch.cat([geo, p[:, 4:]], 1)

    def render(self, pose: torch.Tensor) -> torch.Tensor:
        n = len(pose)
        c, h, w = self.in_shape
        theta = pose.new_zeros(n, 2, 3)
        theta[:, 0, 0], theta[:, 1, 1] = torch.exp(pose[:, 0]), torch.exp(pose[:, 1])
        theta[:, 0, 2], theta[:, 1, 2] = pose[:, 2], pose[:, 3]
        grid = F.affine_grid(theta, [n, c, h * self.up, w * self.up], align_corners=False)
        t = F.grid_sample(self.template.expand(n, -1, -1, -1), grid, mode="bilinear",
                          padding_mode="border", align_corners=False)
        t = F.avg_pool2d(t, self.up) if self.up > 1 else t
        return torch.exp(pose[:, 4]).view(n, 1, 1, 1) * t + pose[:, 5].view(n, 1, 1, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pose = self.pose(x)
        return self.render(pose), pose


def gaussian_kernel(sigma: float) -> torch.Tensor:
    """A normalised 1-D Gaussian, radius ceil(3 sigma)."""
    r = max(1, math.ceil(3 * sigma))
    t = torch.arange(-r, r + 1, dtype=torch.float32)
    k = torch.exp(-t.pow(2) / (2 * sigma * sigma))
    return k / k.sum()


def blur(r: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Separable filtering of (B, 1, H, W) by a 1-D kernel along x then y (edges replicated:
    a blob at the border keeps its mass)."""
    p = len(kernel) // 2
    r = F.conv2d(F.pad(r, (p, p, 0, 0), mode="replicate"), kernel.view(1, 1, 1, -1))
    return F.conv2d(F.pad(r, (0, 0, p, p), mode="replicate"), kernel.view(1, 1, -1, 1))


class ResidualStats(nn.Module):
    """(B, C, H, W) residual -> (B, features): per scale and sign, shares above thresholds,
    quantiles and the positive mean (module docstring). Channels are averaged first."""

    def __init__(self, scales: list[float], thresholds: list[float], quantiles: list[float]):
        super().__init__()
        self.scales = [float(s) for s in scales]
        self.register_buffer("thresholds", torch.tensor([float(t) for t in thresholds]), persistent=False)
        self.register_buffer("quantiles", torch.tensor([float(q) for q in quantiles]), persistent=False)
        for i, s in enumerate(self.scales):  # fixed filters: rebuilt from the scales, not saved
            if s > 0:
                self.register_buffer(f"kernel{i}", gaussian_kernel(s), persistent=False)

    @property
    def num_features(self) -> int:
        return 2 * len(self.scales) * (len(self.thresholds) + len(self.quantiles) + 1)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        r = r.float().mean(1, keepdim=True)
        out = []
        for i, s in enumerate(self.scales):
            m = r if s <= 0 else blur(r, getattr(self, f"kernel{i}"))
            for v in (m.flatten(1), -m.flatten(1)):
                out.append((v.unsqueeze(1) > self.thresholds.view(1, -1, 1)).float().mean(2))
                out.append(torch.quantile(v, self.quantiles.to(v), dim=1).T)
                out.append(v.clamp(min=0).mean(1, keepdim=True))
        return torch.cat(out, 1)


class AtlasEncoder(nn.Module):
    """The exported encoder: image -> residual against the atlas -> `ResidualStats` features."""

    def __init__(self, in_shape: list[int], widths: list[int], up: int = 2,
                 scales: list[float] = (0.0, 1.0, 2.0, 4.0),
                 thresholds: list[float] = (0.01, 0.02, 0.03, 0.05, 0.08),
                 quantiles: list[float] = (0.9, 0.99, 0.999, 1.0),
                 max_log_scale: float = 0.3, max_shift: float = 0.3):
        super().__init__()
        self.atlas = Atlas(in_shape, widths, up, max_log_scale, max_shift)
        self.stats = ResidualStats(list(scales), list(thresholds), list(quantiles))
        self.num_features = self.stats.num_features

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        return x - self.atlas(x)[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stats(self.residual(x))


__all__ = ["POSE", "Atlas", "AtlasEncoder", "PoseNet", "ResidualStats", "blur", "gaussian_kernel"]
