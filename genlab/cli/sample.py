"""`genlab sample`: images from a trained generative run (the GAN's EMA generator).

The model is rebuilt from RUN_DIR/recipe.yaml and the newest step checkpoint, exactly as
`genlab export` does, so it works on finished and interrupted runs alike.
"""
from __future__ import annotations

from pathlib import Path

import click

from genlab.cli import CONTEXT
from genlab.core.errors import GenlabError


def sample_run(run_dir: Path, n: int, out: Path, class_name: str | None = None, seed: int = 0,
               device: str = "cpu", nrow: int = 8) -> Path:
    """Write an n-image grid from the run's generator to `out` (PNG); returns `out`."""
    import torch

    from genlab.core.recipe import load_recipe
    from genlab.engine.trainer import Trainer
    from genlab.viz.render import image_grid, save_png

    run_dir = Path(run_dir)
    if not (run_dir / "recipe.yaml").is_file():
        raise GenlabError(f"{run_dir}: not a genlab run folder (no recipe.yaml)")
    rec = load_recipe(run_dir / "recipe.yaml")
    trainer = Trainer(rec, device=device, resume_dir=run_dir, quiet=True)
    model, names = trainer.model, list(trainer.data.info.class_names)
    if not hasattr(model, "sample"):
        raise GenlabError(f"{run_dir}: family {rec.family!r} is not generative (it has no sampler)")
    labels = None
    if class_name is not None:
        if not getattr(model, "conditional", False):
            raise GenlabError(f"--class {class_name}: this model is unconditional (train it with "
                              f"model.conditional: true to sample one class)")
        if class_name not in names:
            raise GenlabError(f"--class {class_name}: unknown class (known: {', '.join(names)})")
        labels = torch.full((n,), names.index(class_name), dtype=torch.long)
    model.eval()
    images = model.sample(n, torch.Generator().manual_seed(seed), labels=labels)
    return save_png(image_grid(images, nrow=nrow), out)


def register(cli: click.Group) -> None:
    @cli.command(context_settings=CONTEXT)
    @click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
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
    @click.option("--device", type=click.Choice(["auto", "cpu", "cuda", "mps"]), default="cpu",
                  show_default=True, help="Device used to rebuild the model. Example: --device cpu")
    def sample(run_dir, n, out, class_name, seed, nrow, device):
        """Write a grid of N samples from RUN_DIR's generator (its EMA weights) to a PNG.

        --class needs a conditional run (genlab train ... --set model.conditional=true).

        \b
        Examples:
          genlab sample runs/gan_brain/20260101-120000 --n 64 --out grid.png
          genlab sample runs/gan_brain/20260101-120000-cond --n 32 --out b.png --class B
        """
        path = sample_run(run_dir, n, out, class_name, seed, device, nrow)
        click.echo(f"wrote {n} samples to {path}")
