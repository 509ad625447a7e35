"""Compose any frames of a logged render into one side-by-side figure.

The trainer keeps the first, middle and last frame of every render in figures/; TensorBoard
holds all of them (one per `log.render_every`). This picks the frames at the steps you name,
e.g. for a DBN, whose first layer stops changing once its greedy phase is over:

    .venv/bin/python scripts/render_frames.py runs/dbn_digits/<stamp> --tag filters \\
        --steps 0,250,3000 --out docs/figures/dbn_digits_filters.png

A step that was not logged is replaced by the nearest logged one (the label says which).
The README's docs/figures/dbn_digits_filters.png is made by the command above (with
--title "dbn_digits: first-layer filters (layer 0 trains during steps 0-3000)") from a fresh
`genlab train recipes/dbn_digits.yaml` run; the recipe is deterministic on CPU, so the PNG comes
out byte-identical.
"""
from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np
import torch


def load_frames(run_dir: Path, tag: str) -> dict[int, torch.Tensor]:
    """{step: (C, H, W) float image in [0, 1]} of TensorBoard image tag `renders/<tag>`."""
    from PIL import Image
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"images": 0})
    acc.Reload()
    full = tag if tag.startswith("renders/") else f"renders/{tag}"
    if full not in acc.Tags()["images"]:
        raise SystemExit(f"no image tag {full!r} in {run_dir} (have: {acc.Tags()['images']})")
    frames = {}
    for ev in acc.Images(full):
        a = np.asarray(Image.open(io.BytesIO(ev.encoded_image_string)).convert("RGB"), np.float32) / 255
        frames[ev.step] = torch.from_numpy(a).permute(2, 0, 1)
    return frames


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--tag", default="filters", help="render name (renders/<tag> in TensorBoard)")
    ap.add_argument("--steps", required=True, help="comma-separated steps, e.g. 0,250,3000")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--title", default=None)
    args = ap.parse_args()

    from genlab.viz.render import save_png, side_by_side

    frames = load_frames(args.run_dir, args.tag)
    chosen = [min(frames, key=lambda s: abs(s - int(w))) for w in args.steps.split(",")]
    title = args.title or f"{args.run_dir.parent.name}: {args.tag}"
    fig = side_by_side([frames[s] for s in chosen], [f"step {s}" for s in chosen], title=title)
    save_png(fig, args.out, min_size=0)
    print(f"wrote {args.out} (steps {chosen})")


if __name__ == "__main__":
    main()
