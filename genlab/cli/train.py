"""`genlab train`: train the model a recipe describes, or resume a run."""
from __future__ import annotations

from pathlib import Path

import click

from genlab.cli.common import CONTEXT, device_option, require_run
from genlab.core.errors import GenlabError


@click.command(context_settings=CONTEXT)
@click.argument("recipe", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE",
              help="Override a recipe key, validated like the file; repeatable. "
                   "Example: --set train.lr=3e-4 --set data.mode=easy")
@click.option("--resume", "resume", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Continue an interrupted run in place from its newest readable checkpoint. "
                   "Example: --resume runs/dae_brain/20260101-120000")
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), default=Path("runs"),
              show_default=True, help="Folder under which runs/<recipe>/<timestamp>/ is created. "
                                      "Example: --out /tmp/runs")
@device_option("Override train.device. auto picks cuda, then mps, then cpu. Example: --device cpu",
               default=None)
@click.option("--tag", default=None, help="Suffix for the run folder name. Example: --tag lr3e-4")
@click.option("--quiet", is_flag=True, help="Print only errors and the final line.")
@click.option("--nproc", type=click.IntRange(min=1), default=1, show_default=True,
              help="Data-parallel processes on this machine: launches `torchrun --standalone "
                   "--nproc_per_node N -m genlab train ...` (one per GPU on CUDA, gloo on CPU). "
                   "train.batch_size stays the global batch. Example: --nproc 2")
def train(recipe, overrides, resume, out, device, tag, quiet, nproc):
    """Train the model a RECIPE describes (or --resume a run).

    \b
    Examples:
      genlab train recipes/dae_brain.yaml
      genlab train recipes/dae_brain.yaml --set train.steps=200 --set train.batch_size=32
      genlab train --resume runs/dae_brain/20260101-120000
      genlab train recipes/dae_brain.yaml --nproc 2
      torchrun --nproc_per_node 8 -m genlab train recipes/dae_brain.yaml   # the same, by hand
    """
    from genlab.core.recipe import load_recipe
    from genlab.engine.trainer import Trainer

    if nproc > 1:
        _launch(recipe, overrides, resume, out, device, tag, quiet, nproc)
        return
    if resume is not None:
        if recipe is not None:
            raise GenlabError("give either RECIPE or --resume RUN_DIR (a resumed run uses its own "
                              "saved recipe.yaml), not both")
        require_run(resume, "--resume needs the folder of an earlier run")
        rec = load_recipe(resume / "recipe.yaml", list(overrides))
        trainer = Trainer(rec, device=device, resume_dir=resume, quiet=quiet)
    else:
        if recipe is None:
            raise GenlabError("missing RECIPE (a YAML file, e.g. recipes/dae_brain.yaml); "
                              "see `genlab list` for the shipped recipes")
        rec = load_recipe(recipe, list(overrides))
        trainer = Trainer(rec, out_root=out, device=device, tag=tag, quiet=quiet)
    if not trainer.quiet:
        click.echo(f"run folder: {trainer.run_dir}")
        click.echo(f"watch it:   tensorboard --logdir {trainer.run_dir.parent}")
    trainer.run()


def _launch(recipe, overrides, resume, out, device, tag, quiet, nproc) -> None:
    """The same command under `torchrun` with `nproc` processes."""
    from genlab.core.recipe import load_recipe
    from genlab.engine.distributed import Dist
    from genlab.engine.launch import launch_torchrun

    # Check the recipe here, once, before N processes start (same errors, no launcher noise).
    path = (resume / "recipe.yaml") if resume is not None else recipe
    if path is not None and Path(path).is_file():
        Dist(world_size=nproc).per_rank_batch(load_recipe(path, list(overrides)).train.batch_size)
    args = ([str(recipe)] if recipe is not None else []) + [f"--set={o}" for o in overrides]
    args += (["--resume", str(resume)] if resume is not None else []) + ["--out", str(out)]
    args += (["--device", device] if device else []) + (["--tag", tag] if tag else [])
    args += ["--quiet"] if quiet else []
    launch_torchrun(nproc, ["train", *args])


COMMANDS = (train,)
