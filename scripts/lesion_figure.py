"""Draw what a reconstruction run does to the lesions: clean, corrupted and reconstructed slices
of lesion-bearing test images, each shown whole and as a contrast-stretched close-up of its
largest lesion (hard-mode lesions are faint: at full scale they are hard to see even in the
clean slice), with the lesion mask outlined in the clean close-up.

    python scripts/lesion_figure.py RUN_DIR --out docs/figures/dae_brain_lesions.png [--n 6]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

import genlab
from genlab.families.base import eval_generator
from genlab.viz.render import save_png


def _crop_box(mask: torch.Tensor, size: int) -> tuple[int, int]:
    """Top-left corner of a size x size window centred on the mask's centre of mass."""
    ys, xs = torch.nonzero(mask[0], as_tuple=True)
    h, w = mask.shape[-2:]
    cy, cx = int(ys.float().mean()), int(xs.float().mean())
    return (min(max(cy - size // 2, 0), h - size), min(max(cx - size // 2, 0), w - size))


def _outline(mask: torch.Tensor) -> torch.Tensor:
    grown = F.max_pool2d(mask.float()[None], 3, 1, 1)[0] > 0
    return grown & ~mask


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--n", type=int, default=6)
    ap.add_argument("--crop", type=int, default=40, help="close-up size in pixels")
    args = ap.parse_args()
    run = genlab.load_run(args.run_dir, checkpoint="last")
    model, data = run.model, run.data
    batch = data.get("test", torch.arange(256))
    has = batch["mask"].flatten(1).any(1)
    idx = torch.nonzero(has).flatten()[: args.n]
    clean, mask = batch["x"][idx], batch["mask"][idx]
    with torch.no_grad():
        noisy = model.cfg.corruption(clean, generator=eval_generator({"index": idx}))
        recon = model(noisy).float()
    up = 3
    rows = []
    for row, img in enumerate((clean, noisy.clamp(0, 1), recon)):
        tiles = []
        for i in range(len(idx)):
            y0, x0 = _crop_box(mask[i], args.crop)
            c = img[i, :, y0:y0 + args.crop, x0:x0 + args.crop]
            ref = clean[i, :, y0:y0 + args.crop, x0:x0 + args.crop]
            # the same stretch for a column's three rows, set by its clean close-up's tissue
            # (the dark ventricles would otherwise take most of the grey levels)
            lo, hi = ref.quantile(0.3), ref.quantile(0.995)
            c = ((c - lo) / (hi - lo + 1e-6)).clamp(0, 1)
            c = F.interpolate(c[None], scale_factor=up, mode="nearest")[0].repeat(3, 1, 1)
            edge = F.interpolate(_outline(mask[i, :, y0:y0 + args.crop, x0:x0 + args.crop].bool())[None]
                                 .float(), scale_factor=up, mode="nearest")[0, 0] > 0
            if row == 0:  # the outline only on the clean close-up: the others show the lesion bare
                c[0][edge], c[1][edge], c[2][edge] = 1.0, 0.2, 0.2
            whole = F.interpolate(img[i][None], size=(args.crop * up, args.crop * up * 3 // 4),
                                  mode="area")[0].clamp(0, 1).repeat(3, 1, 1)
            tiles.append(torch.cat([whole, torch.ones(3, args.crop * up, 2), c], 2))
        rows.append(torch.cat([torch.cat([t, torch.ones(3, t.shape[1], 6)], 2) for t in tiles], 2))
    sep = torch.ones(3, 6, rows[0].shape[2])
    grid = torch.cat([rows[0], sep, rows[1], sep, rows[2]], 1)
    save_png(grid, args.out, min_size=0)
    print(f"wrote {args.out}: rows clean / corrupted / reconstructed, {len(idx)} test slices "
          f"(whole, and a contrast-stretched close-up; lesions outlined on the clean one)")


if __name__ == "__main__":
    main()
