"""`genlab train`: train the model a recipe describes, or resume a run."""
from __future__ import annotations

import os
from pathlib import Path

import click

from genlab.cli.common import CONTEXT, device_option, require_run
from genlab.core.errors import GenlabError


@click.command(context_settings=CONTEXT)
@click.argument("recipe", required=False, type=click.Path(path_type=Path))
@click.option("--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE",
              help="Override a recipe key, validated like the file; repeatable. "
                   "Example: --set train.lr=3e-4 --set data.mode=easy")
@click.option("--resume", "resume", type=click.Path(path_type=Path), default=None,
              help="Continue a run in place from its newest readable checkpoint; --set then "
                   "changes what can change mid-run (train.lr, train.steps, log.*, ...). "
                   "Example: --resume runs/dae_brain/20260101-120000 --set train.lr=1e-4")
@click.option("--out", "out", type=click.Path(path_type=Path), default=Path("runs"),
              show_default=True, help="Folder under which runs/<recipe>/<timestamp>/ is created. "
                                      "Example: --out /tmp/runs")
@device_option("Override train.device. auto picks cuda, then mps, then cpu. Example: --device cpu",
               default=None)
@click.option("--tag", default=None, help="Suffix for the run folder name. Example: --tag lr3e-4")
@click.option("--quiet", is_flag=True, help="Print only errors and the final line.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="CPU threads of torch (sets train.threads; default: OMP_NUM_THREADS if set, "
                   "else the CPUs other jobs leave free, printed on the first line). "
                   "Example: --threads 1")
@click.option("--nproc", type=click.IntRange(min=1), default=1, show_default=True,
              help="Data-parallel processes on this machine: launches `torchrun --standalone "
                   "--nproc_per_node N -m genlab train ...` (one per GPU on CUDA, gloo on CPU). "
                   "train.batch_size stays the global batch. Example: --nproc 2")
def train(recipe, overrides, resume, out, device, tag, quiet, threads, nproc):
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
    from genlab.engine.renders import tensorboard_images_flag
    from genlab.engine.tracking import check_out_root, check_tag
    from genlab.engine.trainer import Trainer

    # Paths and tag are checked here (one line each, exit 2), before anything is built or made;
    # RECIPE, --resume and --out take any path so that click adds no usage block to the error.
    if resume is None:
        check_tag(tag)
        check_out_root(out)
    if threads is not None:
        overrides = (*overrides, f"train.threads={threads}")
    if nproc > 1:
        _launch(recipe, overrides, resume, out, device, tag, quiet, nproc)
        return
    if resume is not None:
        if recipe is not None:
            raise GenlabError("give either RECIPE or --resume RUN_DIR (a resumed run uses its own "
                              "saved recipe.yaml), not both")
        require_run(resume, "--resume needs the folder of an earlier run")
        rec = load_recipe(resume / "recipe.yaml", list(overrides))
        _set_threads(rec, quiet)
        trainer = Trainer(rec, device=device, resume_dir=resume, quiet=quiet)
    else:
        if recipe is None:
            raise GenlabError("missing RECIPE (a YAML file, e.g. recipes/dae_brain.yaml); "
                              "see `genlab list` for the shipped recipes")
        _suggest_recipe(recipe)
        rec = load_recipe(recipe, list(overrides))
        _set_threads(rec, quiet)
        trainer = Trainer(rec, out_root=out, device=device, tag=tag, quiet=quiet)
    if not trainer.quiet:
        click.echo(f"run folder: {trainer.run_dir}")
        lc = trainer.recipe.log
        flag = tensorboard_images_flag(lc.render_every, trainer.recipe.train.steps)
        click.echo(f"watch it:   {_tensorboard_command()} --logdir {trainer.run_dir.parent} {flag}")
    trainer.run()


def _tensorboard_command() -> str:
    """`tensorboard` as the user's shell can run it: the bare name when it is on PATH (an
    activated environment), else the path next to this Python (e.g. .venv/bin/tensorboard)."""
    import shutil
    import sys

    if shutil.which("tensorboard"):
        return "tensorboard"
    beside = Path(sys.executable).parent / "tensorboard"
    if beside.is_file():
        try:
            return str(beside.relative_to(Path.cwd()))
        except ValueError:
            return str(beside)
    return "tensorboard"


def _suggest_recipe(path: Path) -> None:
    """A RECIPE that is not there, when the file meant is plain (`dae_brain` for
    recipes/dae_brain.yaml, a typo of a shipped recipe's name): one line naming it."""
    import difflib

    if path.exists():
        return
    name = path.name if path.suffix in (".yaml", ".yml") else f"{path.name}.yaml"
    shipped = Path("recipes")
    meant = next((p for p in (path.with_name(name), shipped / name) if p.is_file()), None)
    if meant is None and shipped.is_dir():
        close = difflib.get_close_matches(Path(name).stem, [p.stem for p in shipped.glob("*.yaml")],
                                          n=1)
        meant = shipped / f"{close[0]}.yaml" if close else None
    if meant is not None:
        raise GenlabError(f"{path}: recipe file not found; did you mean {meant}?")


def _set_threads(rec, quiet: bool) -> None:
    """torch's CPU thread count for this run (genlab.core.threads), said on the run's first
    line: a run slows down a lot when its threads outnumber the cores other jobs leave free."""
    import torch

    from genlab.core.threads import choose_threads

    n, why = choose_threads(rec.train.threads, torch.get_num_threads())
    torch.set_num_threads(n)
    if not quiet and os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 speaks
        click.echo(f"{rec.name}: {n} CPU thread{'s' if n != 1 else ''} ({why}; "
                   f"choose with --threads N)")


def _launch(recipe, overrides, resume, out, device, tag, quiet, nproc) -> None:
    """The same command under `torchrun` with `nproc` processes."""
    from genlab.core.recipe import load_recipe
    from genlab.engine.distributed import Dist
    from genlab.engine.launch import launch_torchrun
    from genlab.engine.resume import changes as resume_changes

    # Check the recipe here, once, before N processes start (same errors, no launcher noise).
    path = (resume / "recipe.yaml") if resume is not None else recipe
    if path is not None and Path(path).is_file():
        rec = load_recipe(path, list(overrides))
        Dist(world_size=nproc).per_rank_batch(rec.train.batch_size)
        if resume is not None:  # a key that cannot change on resume
            resume_changes(resume, rec)
    args = ([str(recipe)] if recipe is not None else []) + [f"--set={o}" for o in overrides]
    args += (["--resume", str(resume)] if resume is not None else []) + ["--out", str(out)]
    args += (["--device", device] if device else []) + (["--tag", tag] if tag else [])
    args += ["--quiet"] if quiet else []
    launch_torchrun(nproc, ["train", *args])


COMMANDS = (train,)
