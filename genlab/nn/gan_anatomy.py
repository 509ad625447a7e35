"""The atlas generator's anatomy residual (`model.g_anatomy_residual`): what the atlas misses.

The frozen atlas (genlab.nn.atlas) is the healthy anatomy as an L1 fit learnt it: smooth, with
soft edges. A real slice departs from that rendering even where it is healthy (measured on hard
brain slices: up to ~0.075, the median over slices of the maximum |x - atlas(x)|; rings at the
skull edge, the fine tissue texture), while an atlas G's healthy slice departs by its noise only
(~0.04). A classifier trained on such samples learns "anything beyond the atlas is a lesion" and
calls real healthy slices lesion-bearing.

So G may add a residual to the template, in the template's own coordinates (the misfit belongs
to the anatomy: the edge rings move with the head), warped by the drawn pose and scaled by its
gain as the template is:

    R(z) = R_MAX tanh(M_0 + sum_{k >= 1} c_k(z) M_k),    c = a linear map of z

M_0 is shared by every image (the factory draws one anatomy, so one map can hold its whole
misfit); maps 1.. let the residual vary with z, for data whose anatomy varies. Every map starts
at zero, so at step 0 G is the atlas G it was; the coefficients start random, so maps 1.. get a
gradient from the first step. The residual reads z only, never the class: a class-dependent
residual would be a shortcut past D's class head that draws no tumour.

Why bounded and scaled (R_MAX tanh): the maps are free pixels, and Adam moves every parameter by
about the learning rate per step however small its gradient, so a plain map (R = M) was, after
1,500 steps at 5e-4, a high-frequency pattern up to 0.32 in places, edge rings and cortex texture
~4x as strong as real slices show (generated healthy slices 0.29 from their atlas rendering,
real ones 0.075). Through R_MAX tanh, a step moves R by at most R_MAX x the learning rate, and R
never passes R_MAX, the largest departure a real healthy slice shows.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

R_MAX = 0.08  # real healthy hard slices: median over slices of max |x - atlas(x)| 0.075 (noise included)


class AnatomyResidual(nn.Module):
    """z (B, code_dim) -> (B, C, H up, W up): the residual in template coordinates (above)."""

    def __init__(self, maps: int, template_shape: list[int], code_dim: int):
        super().__init__()
        if maps < 1:
            raise ValueError(f"anatomy residual: expected at least 1 map, got {maps}")
        self.maps = nn.Parameter(torch.zeros(maps, *template_shape))
        self.coef = nn.Linear(code_dim, maps - 1) if maps > 1 else None

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        c = z.new_ones(len(z), 1)
        if self.coef is not None:
            c = torch.cat([c, self.coef(z)], 1)
        return R_MAX * torch.tanh(torch.einsum("bk,kchw->bchw", c, self.maps.to(c.dtype)))


def warp_like_atlas(maps: torch.Tensor, pose: torch.Tensor, up: int, out_hw: tuple[int, int]) -> torch.Tensor:
    """(B, C, H up, W up) maps in template coordinates -> (B, C, H, W) at the pose, times its
    gain (no offset): exactly what genlab.nn.atlas.Atlas.render does to the template, so the
    residual moves and scales with the anatomy it corrects."""
    n, c = maps.shape[:2]
    h, w = out_hw
    theta = pose.new_zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1] = torch.exp(pose[:, 0]), torch.exp(pose[:, 1])
    theta[:, 0, 2], theta[:, 1, 2] = pose[:, 2], pose[:, 3]
    grid = F.affine_grid(theta, [n, c, h * up, w * up], align_corners=False)
    r = F.grid_sample(maps, grid, mode="bilinear", padding_mode="border", align_corners=False)
    r = F.avg_pool2d(r, up) if up > 1 else r
    return torch.exp(pose[:, 4]).view(n, 1, 1, 1) * r


__all__ = ["R_MAX", "AnatomyResidual", "warp_like_atlas"]
