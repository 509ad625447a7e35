"""`genlab sample`: a grid of images from a trained generative run: a GAN's EMA generator, or
an RBM/DBN's Gibbs chains.

The model is loaded with genlab.load_run from the newest step checkpoint, so it works on
finished and interrupted runs alike.
"""
from __future__ import annotations

from pathlib import Path

import click

from genlab.cli.common import CONTEXT, device_option, run_dir_argument
from genlab.core.errors import GenlabError


def sample_run(run_dir: Path, n: int, out: Path, class_name: str | None = None, seed: int = 0,
               device: str = "cpu", nrow: int = 8, per_class: bool = False) -> Path:
    """Write an n-image grid from the run's sampler to `out` (PNG); returns `out`. With
    `per_class` (conditional models), n images of each class, one row per class, drawn in one
    batch (as in training, where a batch mixes the classes)."""
    import torch

    from genlab.engine.runs import load_run
    from genlab.families.base import require
    from genlab.viz.render import image_grid, save_png

    run = load_run(run_dir, "last", device)
    model, names = run.model, list(run.info.class_names)
    require(model, "sample", "genlab sample")
    labels = None
    if per_class:
        if class_name is not None:
            raise GenlabError("--per-class draws every class; leave out --class")
        if not model.conditional:
            raise GenlabError("--per-class: this model is unconditional (train it with "
                              "model.conditional: true to draw one row per class)")
        labels = torch.arange(len(names)).repeat_interleave(n)
        n, nrow = len(labels), n
    elif class_name is not None:
        if not model.conditional:
            raise GenlabError(f"--class {class_name}: this model is unconditional (train it with "
                              f"model.conditional: true to sample one class)")
        if class_name not in names:
            raise GenlabError(f"--class {class_name}: unknown class (known: {', '.join(names)})")
        labels = torch.full((n,), names.index(class_name), dtype=torch.long)
    images = model.sample(n, torch.Generator().manual_seed(seed), labels=labels)
    return save_png(image_grid(images, nrow=nrow), out)


@click.command(context_settings=CONTEXT)
@run_dir_argument
@click.option("--n", "n", type=click.IntRange(min=1), default=64, show_default=True,
              help="Number of samples in the grid. Example: --n 64")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="PNG file to write. Example: --out grid.png")
@click.option("--class", "class_name", default=None,
              help="Sample one class of a conditional model, by name. Example: --class B")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seed of the noise (the same seed gives the same grid). Example: --seed 1")
@click.option("--nrow", type=click.IntRange(min=1), default=8, show_default=True,
              help="Images per row. Example: --nrow 16")
@click.option("--per-class", is_flag=True, help="A conditional model's N samples of each class, one "
              "row per class (classes in order). Example: --per-class --n 8")
@device_option("Device used to rebuild the model. Example: --device cpu")
def sample(run_dir, n, out, class_name, seed, nrow, per_class, device):
    """Write a grid of N samples from RUN_DIR's model to a PNG: a GAN's EMA generator, an
    RBM/DBN's Gibbs chains.

    --class needs a conditional run (genlab train ... --set model.conditional=true).

    \b
    Examples:
      genlab sample runs/gan_brain/20260101-120000 --n 64 --out grid.png
      genlab sample runs/gan_brain/20260101-120000-cond --n 32 --out b.png --class B
      genlab sample runs/cgan_brain_easy/20260101-120000 --per-class --n 8 --out rows.png
      genlab sample runs/dbn_digits/20260101-120000 --n 64 --out dbn.png
    """
    path = sample_run(run_dir, n, out, class_name, seed, device, nrow, per_class)
    what = f"{n} samples of each class, one row per class," if per_class else f"{n} samples"
    click.echo(f"wrote {what} to {path}")


COMMANDS = (sample,)
