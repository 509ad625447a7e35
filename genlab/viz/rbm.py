"""Drawings of a stack of RBMs (the "rbm" and "dbn" families' renders).

Filters are weights on the input shaped as the image, one tile per unit; a deeper unit's
receptive field is the product of the weights below it, W_l ... W_1 W_0 (linear: the sigmoids are
ignored). Contrast: one scale for all tiles of a frame, `rms_scale` (3 x the RMS of the weights
shown) unless a fixed `filter_scale` is given for the first layer. Small images (8x8 digits) are
upscaled so that TensorBoard shows them at a readable size.
"""
from __future__ import annotations

import torch

from genlab.viz.render import image_grid, label_rows, nearest_upscale, rms_scale, tile_weights, triplets


def stack_renders(weights: list[torch.Tensor], shape: list[int], max_units: int,
                  filter_scale: float | None, x: torch.Tensor, recon: torch.Tensor,
                  samples: torch.Tensor, chains: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """weights: each layer's (H_l, H_{l-1}) weights on its input (layer 0's on the image, (H_0,
    prod(shape))); x / recon: a few images and their reconstructions (n, *shape); samples
    (m, *shape); chains: PCD fantasy particles (c, prod(shape)) or None. Returns "filters",
    "receptive_fields_layer<l>" (l >= 1), "reconstructions", "samples" and "pcd_chains"."""
    up = max(1, min(8, 32 // max(shape[-2:])))  # 8x8 digits: 4x
    w0 = weights[0][:max_units]
    out = {"filters": tile_weights(w0, shape, scale=filter_scale or rms_scale(w0), upscale=up)}
    field = weights[0]
    for i, w in enumerate(weights[1:], start=1):
        field = w @ field  # (H_i, V): unit j's linear receptive field on the input
        f = field[:max_units]
        out[f"receptive_fields_layer{i}"] = tile_weights(f, shape, scale=rms_scale(f), upscale=up)
    out["reconstructions"] = label_rows(nearest_upscale(triplets(x, None, recon), up),
                                        ("input", "reconstructed"), row_height=shape[-2] * up,
                                        pad=2 * up)
    out["samples"] = nearest_upscale(image_grid(samples.clamp(0, 1), nrow=8), up)
    if chains is not None and chains.shape[0]:
        grid = image_grid(chains[:32].view(-1, *shape).clamp(0, 1), nrow=8)
        out["pcd_chains"] = nearest_upscale(grid, up)
    return out
