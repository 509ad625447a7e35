"""The `genlab` command line: train, data, export, list.

A problem with the user's input prints one line starting with 'error:' and exits with code 2;
genlab never answers bad input with a traceback.
"""
from __future__ import annotations

import sys
from pathlib import Path

import click

from genlab.core.errors import GenlabError, RecipeError

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@click.group(context_settings=CONTEXT)
@click.version_option(package_name="genlab")
def cli():
    """genlab: autoencoders, RBMs/DBNs, GANs and a DQN maze agent, one trainer, YAML recipes.

    \b
    Start here:
      genlab train recipes/dae_brain.yaml
      tensorboard --logdir runs
    """


# -- train -------------------------------------------------------------------------------------
@cli.command(context_settings=CONTEXT)
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
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda", "mps"]), default=None,
              help="Override train.device. auto picks cuda, then mps, then cpu. Example: --device cpu")
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
        return

    if resume is not None:
        if recipe is not None:
            raise GenlabError("give either RECIPE or --resume RUN_DIR (a resumed run uses its own "
                              "saved recipe.yaml), not both")
        if not (resume / "recipe.yaml").is_file():
            raise GenlabError(f"--resume {resume}: not a genlab run folder (no recipe.yaml)")
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


# -- data --------------------------------------------------------------------------------------
@cli.group(context_settings=CONTEXT)
def data():
    """Write data sets to disk (image folders you can look at or train on)."""


@data.command("brain", context_settings=CONTEXT)
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder to create: <out>/<syndrome>/*.png and <out>/preview.png. Example: --out data/brain")
@click.option("--n", "n", required=True, type=click.IntRange(min=1),
              help="Number of images. Example: --n 1000")
@click.option("--mode", type=click.Choice(["easy", "hard"]), default="hard", show_default=True,
              help="hard: faint, smaller tumours (the realistic setting). Example: --mode easy")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Factory seed; image i is a pure function of (seed, split, i). Example: --seed 1")
@click.option("--split", type=click.Choice(["train", "val", "test"]), default="train", show_default=True,
              help="Which split's images to write (splits are disjoint). Example: --split test")
def data_brain(out, n, mode, seed, split):
    """Write synthetic brain-MRI slices with tumours (syndromes A, B, C, healthy Z) as PNGs.

    \b
    Example:
      genlab data brain --out data/brain --n 400 --mode hard --seed 0
    """
    from genlab.data.brain import write_image_folder

    path = write_image_folder(out, n=n, mode=mode, seed=seed, split=split)
    click.echo(f"wrote {n} images to {path} (one folder per syndrome); preview: {path / 'preview.png'}")


# -- export ------------------------------------------------------------------------------------
@cli.command(context_settings=CONTEXT)
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda", "mps"]), default="cpu",
              show_default=True, help="Device used to rebuild the model. Example: --device cpu")
@click.option("--format", "fmt", type=click.Choice(["bundle", "onnx", "torchscript", "safetensors"]),
              default="bundle", show_default=True,
              help="bundle: the encoder bundle below. onnx, torchscript, safetensors: the classifier "
                   "(classifier runs, best.pt) or the encoder, any batch size, built on the CPU and "
                   "checked against PyTorch on test images (max |diff| <= 1e-4; see "
                   "genlab.tools.export_formats). Example: --format onnx")
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder for onnx/torchscript/safetensors files (default RUN_DIR/export). "
                   "Example: --out dist/")
def export(run_dir, device, fmt, out):
    """(Re-)write RUN_DIR/export/ (encoder.safetensors + encoder.json) from the newest checkpoint.

    Works on finished and interrupted runs. Load the result with genlab.load_encoder(path).
    With --format onnx|torchscript|safetensors: a deployable model, parity-checked.

    \b
    Examples:
      genlab export runs/dae_brain/20260101-120000
      genlab export runs/lesion_brain/20260101-120000 --format onnx
    """
    if fmt != "bundle":
        from genlab.tools.export_formats import export_run

        res = export_run(run_dir, fmt, out)
        click.echo(f"exported the {res.kind} (step {res.step}) as {fmt}: "
                   f"{', '.join(str(f) for f in res.files)}")
        click.echo(f"parity with PyTorch on {res.parity_inputs} (batch sizes "
                   f"{', '.join(map(str, res.batch_sizes))}): max |diff| {res.max_abs_diff:.2e}")
        return
    if out is not None:
        raise GenlabError("--out applies to --format onnx, torchscript or safetensors; the bundle "
                          "is always RUN_DIR/export/")
    from genlab.core.recipe import load_recipe
    from genlab.engine.trainer import Trainer

    if not (run_dir / "recipe.yaml").is_file():
        raise GenlabError(f"{run_dir}: not a genlab run folder (no recipe.yaml)")
    rec = load_recipe(run_dir / "recipe.yaml")
    trainer = Trainer(rec, device=device, resume_dir=run_dir, quiet=True)
    path = trainer.export()
    if path is None:
        raise GenlabError(f"family {rec.family!r} has no encoder to export")
    click.echo(f"exported the encoder at step {trainer.step} to {path}")
    if hasattr(trainer.model, "export_generator"):  # generative runs: the generator too
        click.echo(f"exported the generator to {trainer.model.export_generator(path)}")


# -- list --------------------------------------------------------------------------------------
@cli.command("list", context_settings=CONTEXT)
@click.option("--keys", "keys", default=None, metavar="NAME",
              help="Document every recipe key of a family or data set, or 'train' / 'log'. "
                   "Example: --keys dae")
@click.option("--recipes-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("recipes"),
              show_default=True, help="Where to look for recipes. Example: --recipes-dir my_recipes")
def list_(keys, recipes_dir):
    """Show the registered families and data sets, and the recipes in recipes/.

    \b
    Examples:
      genlab list
      genlab list --keys dae
    """
    from genlab.core import registry, schema
    from genlab.core.recipe import LogConfig, TrainConfig

    registry.load_all()
    if keys:
        table = {"train": TrainConfig, "log": LogConfig}
        prefix = {"train": "train", "log": "log"}
        for n, c in registry.FAMILIES.items():
            table[n], prefix[n] = c.Config, "model"
        for n, c in registry.DATASETS.items():
            table.setdefault(n, c.Config)
            prefix.setdefault(n, "data")
        if keys not in table:
            raise GenlabError(f"--keys {keys}: unknown name (known: {', '.join(sorted(table))})")
        rows = schema.describe(table[keys], prefix[keys])
        width = max(len(r[0]) for r in rows)
        for key, typ, default, help_ in rows:
            click.echo(f"{key:<{width}}  {typ}  [default: {default}]\n{'':<{width}}  {help_}")
        return
    click.echo("families:")
    for n, c in sorted(registry.FAMILIES.items()):
        click.echo(f"  {n:<14} {(c.__doc__ or '').strip().splitlines()[0] if c.__doc__ else ''}")
    click.echo("data sets:")
    for n, c in sorted(registry.DATASETS.items()):
        doc = (c.__doc__ or "").strip().splitlines()
        click.echo(f"  {n:<14} {doc[0] if doc else ''}")
    click.echo(f"recipes in {recipes_dir}/:")
    found = sorted(recipes_dir.glob("*.yaml")) if recipes_dir.is_dir() else []
    for p in found:
        desc = _recipe_description(p)
        click.echo(f"  {p!s:<32} {desc}")
    if not found:
        click.echo("  (none)")
    click.echo("keys of a family or data set: genlab list --keys NAME")


def _recipe_description(path: Path) -> str:
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
        return str(data.get("description", "")) if isinstance(data, dict) else ""
    except (yaml.YAMLError, OSError):
        return "(unreadable)"


# -- eval, predict, explain (classifier runs) --------------------------------------------------
from genlab.cli.classifier import register as _register_classifier_commands

_register_classifier_commands(cli)

# -- sample (generative runs) ------------------------------------------------------------------
from genlab.cli.sample import register as _register_gan_commands

_register_gan_commands(cli)

# -- play (DQN maze runs) ----------------------------------------------------------------------
from genlab.cli.play import register as _register_play_commands

_register_play_commands(cli)

# -- serve (classifier runs as a REST API) -----------------------------------------------------
from genlab.cli.serve import register as _register_serve_commands

_register_serve_commands(cli)


def main(argv: list[str] | None = None) -> int:
    """Console entry point: user errors exit 2 with one clear line, never a traceback."""
    try:
        rv = cli.main(args=argv, prog_name="genlab", standalone_mode=False)
        return rv if isinstance(rv, int) else 0
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except click.ClickException as e:
        e.show()
        return e.exit_code
    except RecipeError as e:
        click.echo(f"error: {e}", err=True)
        return e.exit_code
    except GenlabError as e:
        click.echo(f"error: {e}", err=True)
        return e.exit_code


if __name__ == "__main__":
    sys.exit(main())
