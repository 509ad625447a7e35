"""Render helpers: shapes, value range, contrast conventions, PNG output."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from genlab.viz.render import (
    feature_maps,
    image_grid,
    nearest_upscale,
    rms_scale,
    save_png,
    side_by_side,
    tile_grid,
    tile_kernels,
    tile_weights,
    triplets,
)


def _ok(img: torch.Tensor, channels: int = 1):
    assert img.dtype == torch.float32 and img.device.type == "cpu"
    assert img.dim() == 3 and img.shape[0] == channels
    assert img.min() >= 0.0 and img.max() <= 1.0


def test_tile_weights_shape_and_range():
    g = tile_weights(torch.randn(10, 64), (1, 8, 8), nrow=5, pad=1)
    _ok(g)
    assert g.shape == (1, 2 * 9 + 1, 5 * 9 + 1)
    assert tile_weights(torch.randn(9, 64), (8, 8)).shape == (1, 3 * 9 + 1, 3 * 9 + 1)
    _ok(tile_weights(torch.randn(4, 48), (3, 4, 4)), channels=3)
    with pytest.raises(ValueError, match="expected weights"):
        tile_weights(torch.randn(4, 60), (1, 8, 8))


def test_global_contrast_zero_is_gray():
    w = torch.zeros(2, 4)
    w[0, 0], w[1, 3] = 2.0, -1.0  # max|w| = 2
    g = tile_weights(w, (1, 2, 2), nrow=2, pad=0)[0]  # (2, 4): tile 0 | tile 1
    assert g[0, 0] == 1.0  # +max -> white
    assert g[0, 1] == 0.5 and g[1, 0] == 0.5  # zero weight -> mid gray, same scale for all tiles
    assert g[1, 3] == 0.25  # -1 of scale 2 -> a quarter
    fixed = tile_weights(w, (1, 2, 2), nrow=2, pad=0, scale=4.0)[0]
    assert fixed[0, 0] == 0.75 and fixed[0, 1] == 0.5


def test_per_tile_contrast_stretches_each_tile():
    w = torch.stack([torch.linspace(-1, 1, 16), torch.linspace(0, 0.01, 16)])
    g = tile_weights(w, (1, 4, 4), nrow=2, pad=0, normalize="per_tile")[0]
    for tile in (g[:, :4], g[:, 4:]):
        assert tile.min() == 0.0 and tile.max() == 1.0
    with pytest.raises(ValueError, match="normalize"):
        tile_weights(w, (1, 4, 4), normalize="local")


def test_tile_kernels_upscaled_nearest():
    k = tile_kernels(torch.randn(6, 2, 3, 3), upscale=4, pad=1)
    _ok(k)
    assert k.shape == (1, 2 * 13 + 1, 3 * 13 + 1)
    tile = k[0, 1:13, 1:13]  # first tile, 12x12 from 3x3
    assert torch.equal(tile, tile[::4, ::4].repeat_interleave(4, 0).repeat_interleave(4, 1))
    _ok(tile_kernels(torch.randn(8, 3, 5, 5)), channels=3)
    first = tile_kernels(torch.randn(4, 16, 3, 3), reduce="first")
    assert first.shape[0] == 1


def test_feature_maps_each_normalised():
    fm = feature_maps(torch.randn(40, 4, 4), max_maps=32, nrow=8, pad=0)
    _ok(fm)
    assert fm.shape == (1, 4 * 16, 8 * 16)  # 32 maps, upscaled 4x to 16 px
    for r in range(4):
        for c in range(8):
            m = fm[0, r * 16 : (r + 1) * 16, c * 16 : (c + 1) * 16]
            assert m.min() == 0.0 and m.max() == 1.0
    _ok(feature_maps(torch.zeros(1, 3, 32, 32)))  # batch of one, constant maps: no NaN


def test_image_grid_and_triplets():
    x = torch.rand(5, 3, 8, 8)
    _ok(image_grid(x, nrow=5, pad=2), channels=3)
    clean = torch.rand(10, 1, 8, 8)
    t = triplets(clean, clean * 0.5, clean.flatten(1), n=8, pad=2)
    _ok(t)
    assert t.shape == (1, 3 * 10 + 2, 8 * 10 + 2)  # rows clean / corrupted / recon
    assert torch.equal(t[0, 2:10, 2:10], clean[0, 0])
    assert triplets(clean, None, clean, n=4).shape[1] == 2 * 10 + 2


def test_save_png_upscales_and_reads_back(tmp_path):
    img = torch.rand(1, 8, 8)
    p = save_png(img, tmp_path / "sub" / "digit.png")
    with Image.open(p) as im:
        assert im.mode == "L" and min(im.size) >= 256 and im.size[0] % 8 == 0
        back = torch.from_numpy(np.array(im)).float()
    factor = back.shape[0] // 8
    assert torch.allclose(back[::factor, ::factor] / 255, img[0], atol=1 / 255)
    with Image.open(save_png(torch.rand(3, 300, 260), tmp_path / "rgb.png")) as im:
        assert im.mode == "RGB" and im.size == (260, 300)  # already >= 256: not scaled


def test_side_by_side(tmp_path):
    frames = [tile_weights(torch.randn(16, 64) * s, (1, 8, 8)) for s in (0.01, 0.1, 1.0)]
    fig = side_by_side(frames, ["first", "middle", "last"], title="layer 1")
    _ok(fig, channels=3)
    assert fig.shape[2] > fig.shape[1]  # a row of frames
    save_png(fig, tmp_path / "evolution.png", min_size=0)
    with pytest.raises(ValueError):
        side_by_side(frames, ["only one"])


def test_building_blocks_keep_values_and_channels():
    tiles = torch.arange(12.0).view(3, 1, 2, 2)  # values outside [0, 1] are kept as they are
    g = tile_grid(tiles, nrow=3, pad=1, pad_value=-1.0)
    assert g.shape == (1, 2 + 1 + 1, 3 * 3 + 1)
    assert torch.equal(g[0, 1:3, 4:6], tiles[1, 0]) and g[0, 0, 0] == -1.0
    up = nearest_upscale(torch.tensor([[[1.0, 2.0]]]), 3)
    assert up.shape == (1, 3, 6) and torch.equal(up[0, :, :3], torch.ones(3, 3))
    assert rms_scale(torch.full((4, 4), -2.0)) == pytest.approx(6.0)


def test_maze_drawings():
    from genlab.envs.maze import parse_layout
    from genlab.viz.maze import frame_strip, q_heatmap, q_map

    layout = parse_layout("#####\n#>.F#\n#####")
    q = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(8 * 3 * 5, 3))
    m = q_map(q, layout, torch.device("cpu"))
    assert m.shape == (4, 3, 5) and m[:, 1, 1:3].isfinite().all() and m[:, 0].isnan().all()
    _ok(q_heatmap(m, layout, cell_px=4), channels=3)
    frames = [np.full((12, 20, 3), i, np.uint8) for i in range(40)]
    _ok(frame_strip(frames, max_frames=8, per_row=4), channels=3)

