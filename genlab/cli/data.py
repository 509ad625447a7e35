"""`genlab data`: write data sets to disk."""
from __future__ import annotations

from pathlib import Path

import click

from genlab.cli.common import CONTEXT


@click.group(context_settings=CONTEXT)
def data():
    """Write data sets to disk (image folders you can look at or train on)."""


@data.command("brain", context_settings=CONTEXT)
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder to create: <out>/<syndrome>/*.png and <out>/preview.png. "
                   "Example: --out data/brain")
@click.option("--n", "n", required=True, type=click.IntRange(min=1),
              help="Number of images. Example: --n 1000")
@click.option("--mode", type=click.Choice(["easy", "hard"]), default="hard", show_default=True,
              help="hard: faint, smaller tumours (the realistic setting). Example: --mode easy")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Factory seed; image i is a pure function of (seed, split, i). Example: --seed 1")
@click.option("--split", type=click.Choice(["train", "val", "test"]), default="train",
              show_default=True,
              help="Which split's images to write (splits are disjoint). Example: --split test")
def data_brain(out, n, mode, seed, split):
    """Write synthetic brain-MRI slices with tumours (syndromes A, B, C, healthy Z) as PNGs.

    \b
    Example:
      genlab data brain --out data/brain --n 400 --mode hard --seed 0
    """
    from genlab.data.brain_folder import write_image_folder

    path = write_image_folder(out, n=n, mode=mode, seed=seed, split=split)
    click.echo(f"wrote {n} images to {path} (one folder per syndrome); preview: {path / 'preview.png'}")


COMMANDS = (data,)
