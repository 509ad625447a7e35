"""Drawings of the mouse maze and of a Q-network on it (the DQN family's renders).

    frame_strip   an episode's RGB frames in a grid (evenly subsampled, first and last kept)
    q_map         max_a Q with the mouse at each floor cell, per heading (numbers, not a picture)
    q_heatmap     the maze, then q_map as colour panels on one scale
    qnet_filters  a Q-network's first-layer weights: one row per observation channel it reads
                  (labelled), one column per unit
    qnet_maps     its first-layer activations on one maze: a feature map per unit (or, for an
                  MLP, the units as the pixels of one square)

Each drawing returns a CPU float32 (C, H, W) tensor in [0, 1], as genlab.viz.render does: RGB
(C = 3) for the maze pictures, gray (C = 1) for qnet_filters and qnet_maps.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from genlab.envs.maze import CHANNELS, Layout, MouseMazeEnv
from genlab.viz.render import feature_maps, image_grid, label_rows, rms_scale, tile_grid, tile_kernels

#: row labels of qnet_filters, one per observation channel (genlab.envs.maze.CHANNELS)
CHANNEL_LABELS = ("wall", "food", "shock", "mouse", "facing N", "facing E", "facing S", "facing W")


def frame_strip(frames: list[np.ndarray], max_frames: int = 32, per_row: int = 8) -> torch.Tensor:
    """(3, H, W) grid of up to `max_frames` frames (evenly subsampled, first and last kept)."""
    if len(frames) > max_frames:
        keep = np.unique(np.linspace(0, len(frames) - 1, max_frames).round().astype(int))
        frames = [frames[i] for i in keep]
    x = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float() / 255.0
    return image_grid(x, nrow=min(per_row, len(frames)))


@torch.no_grad()
def q_map(q: nn.Module, layout: Layout, device: torch.device) -> torch.Tensor:
    """(4, H, W) max_a Q with the mouse at each floor cell facing N, E, S, W (NaN on walls),
    food and shocks as at the start."""
    h, w = layout.shape
    cells = np.argwhere(~layout.walls & ~layout.food & ~layout.shocks)
    base = np.zeros((len(CHANNELS), h, w), np.float32)
    base[0], base[1], base[2] = layout.walls, layout.food, layout.shocks
    x = np.repeat(base[None], 4 * len(cells), 0)
    for k, (r, c) in enumerate(cells):
        for hd in range(4):
            x[4 * k + hd, 3, r, c] = 1.0
            x[4 * k + hd, 4 + hd, r, c] = 1.0
    qv = q(torch.from_numpy(x).to(device)).max(1).values.float().cpu()
    out = torch.full((4, h, w), float("nan"))
    for k, (r, c) in enumerate(cells):
        out[:, r, c] = qv[4 * k:4 * k + 4]
    return out


def _colormap(v: np.ndarray) -> np.ndarray:
    """Values in [0, 1] -> (…, 3) RGB in [0, 1] (matplotlib's viridis)."""
    from matplotlib import colormaps

    return colormaps["viridis"](v)[..., :3]


def q_heatmap(qmap: torch.Tensor, layout: Layout, cell_px: int = 8) -> torch.Tensor:
    """(3, H', W'): the maze, then max over headings of max_a Q, then one panel per heading
    (N, E, S, W); one colour scale for all panels (viridis, low = dark); walls dark grey,
    food cells green, shock cells red."""
    panels = [qmap.nan_to_num(float("-inf")).max(0).values, *qmap]
    finite = qmap[torch.isfinite(qmap)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.numel() else (0.0, 1.0)
    tiles = []
    env = MouseMazeEnv(layout=layout, render_mode="rgb_array", cell_px=cell_px)
    env.reset(seed=0)
    tiles.append(torch.from_numpy(env.render()).permute(2, 0, 1).float() / 255.0)
    for p in panels:
        v = ((p - lo) / max(hi - lo, 1e-9)).clamp(0, 1).numpy()
        rgb = _colormap(np.nan_to_num(v))
        rgb[layout.walls] = (0.17, 0.17, 0.21)
        rgb[layout.food] = (0.24, 0.67, 0.29)
        rgb[layout.shocks] = (0.82, 0.16, 0.16)
        t = torch.from_numpy(rgb).float().permute(2, 0, 1)
        tiles.append(t.repeat_interleave(cell_px, 1).repeat_interleave(cell_px, 2))
    return tile_grid(torch.stack(tiles), nrow=len(tiles), pad=2, pad_value=1.0)


def start_observation(layout: Layout, device: torch.device, config=None) -> torch.Tensor:
    """(1, 8, H, W) float observation of `layout` as an episode in it starts (under `config`,
    a MazeConfig; the default one if None)."""
    env = MouseMazeEnv(config, layout=layout)
    obs, _ = env.reset(seed=0)
    return torch.from_numpy(obs)[None].to(device)


def qnet_filters(kernels: torch.Tensor, channels: tuple[int, ...], max_units: int = 32) -> torch.Tensor:
    """(1, H, W): first-layer weights (units, len(channels), kh, kw) as a grid whose row c holds
    every unit's kernel on observation channel channels[c] (labelled on the left) and whose
    column u is unit u (the first `max_units`). One contrast scale for all tiles, 3 x the RMS of
    the weights shown (0 is mid-grey), so that channels and units compare."""
    w = kernels[:max_units].detach().float().cpu()
    units, c, kh, kw = w.shape
    tiles = w.transpose(0, 1).reshape(c * units, 1, kh, kw)  # channel-major: one row each
    up = max(1, 24 // max(kh, kw))
    grid = tile_kernels(tiles, upscale=up, nrow=units, scale=rms_scale(w))
    return label_rows(grid, [CHANNEL_LABELS[i] for i in channels], row_height=kh * up, pad=1)


def qnet_maps(acts: torch.Tensor, max_maps: int = 32) -> torch.Tensor:
    """(1, H, W): first-layer activations of one observation: (units, h, w) maps, each on its
    own contrast (genlab.viz.render.feature_maps), or an MLP's (units,) as one square image,
    unit k at row k // side, column k % side (empty places black)."""
    a = acts.detach().float().cpu()
    if a.dim() == 3:
        return feature_maps(a, max_maps=max_maps, upscale=max(1, 32 // max(a.shape[-2:])))
    side = int(np.ceil(np.sqrt(a.numel())))
    square = torch.zeros(side * side)
    square[:a.numel()] = a.flatten()
    return feature_maps(square.view(1, side, side), max_maps=1, upscale=max(1, 128 // side))
