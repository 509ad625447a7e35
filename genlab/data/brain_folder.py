"""The brain factory's images as a folder of PNGs (`genlab data brain`), and its preview sheet.

    write_image_folder("data/brain", n=400, mode="hard")   # data/brain/<syndrome>/train_000000.png
    save_preview("preview.png")                             # rows: syndrome x mode; column 0: base

A folder written here is an image-folder data set (data source "folder") with one sub-folder
per syndrome; it carries a marker file so that writing again replaces only its own files.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from genlab.core.errors import DataError
from genlab.data.base import SPLITS
from genlab.data.brain_factory import HEIGHT, SYNDROMES, WIDTH, BrainFactory

_MARKER = ".genlab-brain.json"
_OUR_PNG = re.compile(r"(train|val|test)_\d{6,}\.png")


def _to_u8(x: torch.Tensor):
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


def save_preview(
    path: str | Path,
    seed: int = 0,
    split: str = "train",
    modes: tuple[str, ...] = ("easy", "hard"),
    per_class: int = 7,
    indices: dict[str, list[int]] | None = None,
    title: str | None = None,
    scale: int = 2,
) -> Path:
    """A labelled PNG grid: one row per (syndrome, mode), the unaltered base in column 0, then
    `per_class` samples of that syndrome (the same indices in every mode: easy/hard twins)."""
    from PIL import Image, ImageDraw, ImageFont

    fac = {md: BrainFactory(mode=md, seed=seed) for md in modes}
    first = next(iter(fac.values()))
    if indices is None:  # the first per_class indices of each syndrome
        lab = first.labels(split, torch.arange(64 * per_class))
        indices = {
            s: torch.nonzero(lab == i).squeeze(1)[:per_class].tolist()
            for i, s in enumerate(SYNDROMES)
        }
    rows = [(s, md) for s in SYNDROMES for md in modes]
    try:
        font = ImageFont.load_default(size=6 * scale)
    except TypeError:  # Pillow < 10.1: fixed bitmap font
        font = ImageFont.load_default()
    tw, th, lab_w, cap_h, head_h, gap = (
        WIDTH * scale,
        HEIGHT * scale,
        40 * scale,
        8 * scale,
        12 * scale,
        2 * scale,
    )
    cols = 1 + per_class
    sheet = Image.new(
        "L", (lab_w + cols * (tw + gap), head_h + len(rows) * (th + cap_h + gap)), 255
    )
    draw = ImageDraw.Draw(sheet)
    draw.text(
        (gap, gap),
        title
        or f"brain factory, seed {seed}, {split}: rows = syndrome / "
        f"mode (Z = healthy); column 0 = base",
        fill=0,
        font=font,
    )
    base_u8 = Image.fromarray(_to_u8(first.base)).resize((tw, th), Image.NEAREST)
    for r, (s, md) in enumerate(rows):
        y0 = head_h + r * (th + cap_h + gap)
        draw.text(
            (gap, y0 + cap_h + th // 2), f"{s} {md}" if len(modes) > 1 else s, fill=0, font=font
        )
        idx = list(indices.get(s, []))[:per_class]
        tiles = [("base", base_u8)]
        if idx:
            imgs = _to_u8(fac[md].generate(split, torch.tensor(idx, dtype=torch.long))["x"][:, 0])
            tiles += [
                (f"{split} {i}", Image.fromarray(im).resize((tw, th), Image.NEAREST))
                for i, im in zip(idx, imgs)
            ]
        for cidx, (cap, tile) in enumerate(tiles):
            x0 = lab_w + cidx * (tw + gap)
            draw.text((x0, y0), cap, fill=0, font=font)
            sheet.paste(tile, (x0, y0 + cap_h))
    path = Path(path)
    sheet.save(path)
    return path


def write_image_folder(
    out_dir: str | Path,
    n: int,
    mode: str = "hard",
    seed: int = 0,
    split: str = "train",
    batch: int = 512,
    preview: bool = True,
) -> Path:
    """Write samples 0..n-1 of `split` as `out_dir/<syndrome>/<split>_<index:06d>.png`
    (8-bit grayscale) plus `out_dir/preview.png` (unless preview=False); returns out_dir.

    Refuses (DataError) a non-empty directory that is not a previous output of this function
    (recognised by its marker file), so a user's files are never clobbered. Writing again into
    a previous output first removes that output's own files (and only those).
    """
    from PIL import Image

    out = Path(out_dir)
    if mode not in ("easy", "hard"):
        raise DataError(f"brain: mode must be 'easy' or 'hard', got {mode!r}")
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; expected one of {SPLITS}")
    if n < 1:
        raise DataError(f"brain: n must be >= 1, got {n}")
    if out.exists() and not out.is_dir():
        raise DataError(f"{out} exists and is not a directory")
    marker = out / _MARKER
    if out.exists() and any(out.iterdir()):
        if not marker.is_file():
            raise DataError(
                f"{out} is not empty and was not written by the brain factory; "
                f"refusing to write into it (choose an empty or new directory)"
            )
        _remove_previous(out)
    out.mkdir(parents=True, exist_ok=True)
    # the marker's content is informational (only its presence is checked); "generator" keeps
    # the module name that folders written before carry
    marker.write_text(
        json.dumps(
            {"generator": "genlab.data.brain", "n": n, "mode": mode, "seed": seed, "split": split},
            indent=1,
        )
    )
    for s in SYNDROMES:
        (out / s).mkdir(exist_ok=True)
    fac = BrainFactory(mode=mode, seed=seed)
    firsts: dict[str, list[int]] = {s: [] for s in SYNDROMES}
    for b0 in range(0, n, batch):
        idx = torch.arange(b0, min(n, b0 + batch))
        got = fac.generate(split, idx)
        imgs, ys = _to_u8(got["x"][:, 0]), got["y"].tolist()
        for k, (i, yk) in enumerate(zip(idx.tolist(), ys)):
            s = SYNDROMES[yk]
            Image.fromarray(imgs[k]).save(out / s / f"{split}_{i:06d}.png")
            if len(firsts[s]) < 8:
                firsts[s].append(i)
    if not preview:
        return out
    modes = (mode,) if mode == "easy" else ("hard", "easy")
    save_preview(
        out / "preview.png",
        seed=seed,
        split=split,
        modes=modes,
        per_class=8,
        indices=firsts,
        title=f"brain {mode}, seed {seed}, {split}: first images of "
        f"each syndrome (Z = healthy); column 0 = base"
        + ("; easy rows = twins" if mode == "hard" else ""),
    )
    return out


def _remove_previous(out: Path) -> None:
    """Delete what a previous write_image_folder left (its PNGs, preview, marker), nothing else."""
    for s in SYNDROMES:
        d = out / s
        if d.is_dir():
            for f in d.glob("*.png"):
                if _OUR_PNG.fullmatch(f.name):
                    f.unlink()
            try:
                d.rmdir()
            except OSError:
                pass  # something else lives there: keep it
    for name in ("preview.png", _MARKER):
        p = out / name
        if p.is_file():
            p.unlink()


__all__ = ["save_preview", "write_image_folder"]
