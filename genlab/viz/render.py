"""Image grids for TensorBoard "activation renders" (after the DL4J figures of Patterson & Gibson).

Every function returns a CPU float32 (C, H, W) tensor in [0, 1] with C = 1 or 3, ready for
`SummaryWriter.add_image(tag, img, step)` (default dataformats "CHW").

    tile_weights   dense weights (out, in): one tile per unit, its incoming weights as an image
    tile_kernels   conv kernels (out, in, kh, kw), upscaled so 3x3 kernels are visible
    feature_maps   activations (C, H, W) of one input, each map normalised on its own
    image_grid     a batch of images (B, C, H, W)
    triplets       rows clean / corrupted / reconstruction, optionally labelled (label_rows)
    side_by_side   frames (first, middle, last render) with labels, through matplotlib
    save_png       write any of the above to a PNG, upscaled so an 8x8 digit can be seen

The building blocks, public for other drawings (genlab.viz.maze): `tile_grid` lays same-size
tiles (N, C, h, w) out in a grid as they are (values kept, one channel stays one), and
`nearest_upscale` enlarges by an integer factor; `rms_scale` is a contrast scale from the
weights' RMS (for weights whose few large values would grey out the rest under max|w|).

Contrast: "global" maps weight 0 to mid-gray and +-scale to white/black, with one scale for all
tiles (by default max|w| of the frame; pass `scale` to fix it across frames), so tiles compare
with each other. "per_tile" stretches each tile to [0, 1] on its own: better for seeing the shape
of weak units, useless for comparing magnitudes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

_EPS = 1e-12


def tile_grid(
    tiles: torch.Tensor, nrow: int | None = None, pad: int = 1, pad_value: float = 0.0
) -> torch.Tensor:
    """(N, C, h, w) -> (C, H, W): tiles laid out row-major, `nrow` tiles per row, `pad` px apart.

    Unlike torchvision's make_grid it keeps a single channel single (make_grid makes it RGB).
    """
    n, c, h, w = tiles.shape
    ncol = max(1, min(n, nrow if nrow else math.ceil(math.sqrt(n))))
    nrows = max(1, math.ceil(n / ncol))
    out = torch.full(
        (c, nrows * (h + pad) + pad, ncol * (w + pad) + pad), float(pad_value), dtype=torch.float32
    )
    for i in range(n):
        r, k = divmod(i, ncol)
        y, x = pad + r * (h + pad), pad + k * (w + pad)
        out[:, y : y + h, x : x + w] = tiles[i]
    return out


def _prep(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to("cpu", torch.float32)


def _contrast(t: torch.Tensor, normalize: str, scale: float | None) -> torch.Tensor:
    """(N, C, h, w) raw values -> [0, 1]; see the module docstring for the two modes."""
    if normalize == "global":
        s = float(scale) if scale is not None else float(t.abs().max())
        return (0.5 + 0.5 * t / max(s, _EPS)).clamp_(0.0, 1.0)
    if normalize == "per_tile":
        flat = t.flatten(1)
        lo, hi = flat.min(1).values, flat.max(1).values
        out = (flat - lo[:, None]) / (hi - lo).clamp_min(_EPS)[:, None]
        return out.view_as(t).clamp_(0.0, 1.0)
    raise ValueError(f"normalize must be 'global' or 'per_tile', got {normalize!r}")


def rms_scale(w: torch.Tensor, k: float = 3.0) -> float:
    """A "global" contrast `scale` of k x the RMS of all weights shown: one scale for every tile
    of the frame (tiles compare with each other; outliers saturate instead of greying the rest)."""
    return k * float(w.detach().float().pow(2).mean().sqrt()) + 1e-12


def nearest_upscale(t: torch.Tensor, factor: int) -> torch.Tensor:
    """Nearest-neighbour upscale of the last two dims by an integer factor."""
    if factor <= 1:
        return t
    return t.repeat_interleave(factor, -2).repeat_interleave(factor, -1)


def tile_weights(
    w: torch.Tensor,
    shape: Sequence[int],
    nrow: int | None = None,
    normalize: str = "global",
    pad: int = 1,
    *,
    scale: float | None = None,
    max_tiles: int | None = None,
    upscale: int = 1,
) -> torch.Tensor:
    """Each row of a dense weight matrix as an image, in a grid.

    w: (out_features, in_features) with in_features = prod(shape); shape: the input's (C, H, W)
    (or (H, W)). For a weight stored (in, out), as in an RBM's W, pass `w.T`. The first
    `max_tiles` units are shown (all if None). Separators are black. Returns (C, H, W), C = 1 or 3.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) == 2:
        shape = (1, *shape)
    w = _prep(w)
    if w.dim() != 2 or w.shape[1] != math.prod(shape):
        raise ValueError(
            f"expected weights (out_features, {math.prod(shape)}) for input shape {shape}, "
            f"got {tuple(w.shape)}"
        )
    if shape[0] not in (1, 3):
        raise ValueError(f"tiles need 1 or 3 channels, input shape is {shape}")
    if max_tiles is not None:
        w = w[:max_tiles]
    tiles = _contrast(w.reshape(-1, *shape), normalize, scale)
    return tile_grid(nearest_upscale(tiles, upscale), nrow, pad)


def tile_kernels(
    conv_weight: torch.Tensor,
    upscale: int = 4,
    nrow: int | None = None,
    normalize: str = "global",
    pad: int = 1,
    *,
    reduce: str = "mean",
    scale: float | None = None,
    max_tiles: int | None = None,
) -> torch.Tensor:
    """Conv kernels (out, in, kh, kw) as a grid of upscaled tiles.

    in == 3 (a first layer on RGB input): RGB tiles. Otherwise one gray tile per output channel:
    the mean over input channels (`reduce="mean"`) or the first input channel (`"first"`).
    """
    k = _prep(conv_weight)
    if k.dim() != 4:
        raise ValueError(f"expected conv weight (out, in, kh, kw), got {tuple(k.shape)}")
    if max_tiles is not None:
        k = k[:max_tiles]
    if k.shape[1] != 3:
        if reduce == "mean":
            k = k.mean(1, keepdim=True)
        elif reduce == "first":
            k = k[:, :1]
        else:
            raise ValueError(f"reduce must be 'mean' or 'first', got {reduce!r}")
    tiles = _contrast(k, normalize, scale)
    return tile_grid(nearest_upscale(tiles, upscale), nrow, pad)


def feature_maps(
    acts: torch.Tensor,
    max_maps: int = 32,
    nrow: int | None = None,
    pad: int = 1,
    *,
    upscale: int | None = None,
) -> torch.Tensor:
    """Activations (C, H, W) of one input (or (1, C, H, W)): the first `max_maps` maps, each
    min-max normalised (a constant map shows black). Small maps are upscaled (nearest) to at
    least 16 px unless `upscale` is given. Returns (1, H', W')."""
    a = _prep(acts)
    if a.dim() == 4 and a.shape[0] == 1:
        a = a[0]
    if a.dim() != 3:
        raise ValueError(f"expected activations (C, H, W) of one input, got {tuple(acts.shape)}")
    a = a[:max_maps].unsqueeze(1)  # (n, 1, H, W)
    tiles = _contrast(a, "per_tile", None)
    if upscale is None:
        upscale = max(1, math.ceil(16 / min(a.shape[-2:])))
    return tile_grid(nearest_upscale(tiles, upscale), nrow, pad)


def image_grid(
    images: torch.Tensor, nrow: int | None = None, pad: int = 2, pad_value: float = 1.0
) -> torch.Tensor:
    """A batch (B, C, H, W) in [0, 1] laid out in a grid (`nrow` per row; default square-ish)."""
    x = _prep(images)
    if x.dim() == 3:
        x = x.unsqueeze(1)
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"expected images (B, 1|3, H, W), got {tuple(images.shape)}")
    return tile_grid(x.clamp(0.0, 1.0), nrow, pad, pad_value)


def triplets(
    clean: torch.Tensor,
    corrupted: torch.Tensor | None,
    recon: torch.Tensor,
    n: int = 8,
    pad: int = 2,
    labels: Sequence[str] | None = None,
) -> torch.Tensor:
    """Rows: clean / corrupted / reconstruction of the first n examples (two rows if
    `corrupted` is None). `recon` may be flat (B, C*H*W); it is reshaped like `clean`.
    `labels`, one per row (e.g. "clean", "noisy", "reconstructed"), are written on the left
    (`label_rows`)."""
    rows = [clean, corrupted, recon] if corrupted is not None else [clean, recon]
    shape = clean.shape[1:]
    k = min(n, clean.shape[0])
    parts = [_prep(r)[:k].reshape(k, *shape) for r in rows]
    grid = image_grid(torch.cat(parts), nrow=k, pad=pad)
    if labels is None:
        return grid
    if len(labels) != len(rows):
        raise ValueError(f"{len(rows)} rows but {len(labels)} labels")
    return label_rows(grid, labels, row_height=int(shape[-2]), pad=pad)


def label_rows(grid: torch.Tensor, labels: Sequence[str], row_height: int, pad: int) -> torch.Tensor:
    """A (C, H, W) grid of rows `row_height` px tall and `pad` px apart (as `image_grid` lays
    them out), with a white column on its left holding labels[i] level with row i, in black.
    Rows too low for text (8x8 digits) are enlarged first (nearest, an integer factor)."""
    from PIL import Image, ImageDraw, ImageFont

    factor = max(1, math.ceil(14 / row_height))
    grid = nearest_upscale(_prep(grid), factor)
    row_height, pad = row_height * factor, pad * factor
    size = max(10, min(16, row_height // 6))
    try:
        font = ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one bitmap size
        font = ImageFont.load_default()
    probe = ImageDraw.Draw(Image.new("L", (1, 1)))
    width = 6 + max(math.ceil(probe.textlength(t, font=font)) for t in labels)
    column = Image.new("L", (width, grid.shape[-2]), 255)
    draw = ImageDraw.Draw(column)
    for i, text in enumerate(labels):
        top, bottom = probe.textbbox((0, 0), text, font=font)[1::2]
        y = pad + i * (row_height + pad) + (row_height - (bottom - top)) // 2 - top
        draw.text((3, y), text, fill=0, font=font)
    col = torch.from_numpy(np.asarray(column, dtype=np.float32) / 255.0)[None]
    return torch.cat([col.expand(grid.shape[0], -1, -1), grid], dim=-1)


def to_rgb(img: torch.Tensor) -> torch.Tensor:
    """(1|3, H, W) -> (3, H, W)."""
    return img.expand(3, -1, -1) if img.shape[0] == 1 else img


def save_png(img: torch.Tensor, path: str | Path, min_size: int = 256) -> Path:
    """Write a (C, H, W) [0, 1] image to PNG, upscaled (nearest, integer factor) so its short side
    is at least `min_size` px. Creates parent folders. Returns the path."""
    from PIL import Image

    x = _prep(img)
    if x.dim() == 2:
        x = x.unsqueeze(0)
    if x.dim() != 3 or x.shape[0] not in (1, 3):
        raise ValueError(f"expected an image (1|3, H, W), got {tuple(img.shape)}")
    factor = max(1, math.ceil(min_size / min(x.shape[-2:])))
    x = nearest_upscale(x, factor)
    a = (x.clamp(0, 1) * 255 + 0.5).to(torch.uint8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if a.shape[0] == 1:
        Image.fromarray(a[0].numpy(), "L").save(path)
    else:
        Image.fromarray(a.permute(1, 2, 0).contiguous().numpy(), "RGB").save(path)
    return path


def side_by_side(
    frames: Sequence[torch.Tensor],
    labels: Sequence[str],
    title: str | None = None,
    width_in: float = 4.0,
    dpi: int = 100,
) -> torch.Tensor:
    """Frames (each (1|3, H, W) in [0, 1], e.g. the first, middle and last render of a run) in a
    row, each labelled underneath. Returns (3, H', W') float32; `save_png(..., min_size=0)` it
    for a figure file."""
    if len(frames) != len(labels):
        raise ValueError(f"{len(frames)} frames but {len(labels)} labels")
    if not frames:
        raise ValueError("no frames to show")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    imgs = [_prep(f).clamp(0, 1) for f in frames]
    h = max(i.shape[-2] for i in imgs)
    w = max(i.shape[-1] for i in imgs)
    fig = Figure(
        figsize=(width_in * len(imgs), width_in * h / w + 0.6 + (0.4 if title else 0)), dpi=dpi
    )
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(imgs), squeeze=False)[0]
    for ax, img, label in zip(axes, imgs, labels):
        if img.shape[0] == 1:
            ax.imshow(img[0].numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        else:
            ax.imshow(img.permute(1, 2, 0).numpy(), interpolation="nearest")
        ax.set_xlabel(str(label))
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.canvas.draw()
    rgba = torch.from_numpy(np.asarray(fig.canvas.buffer_rgba()).copy())  # (H, W, 4) uint8
    return rgba[..., :3].permute(2, 0, 1).float().div_(255.0)
