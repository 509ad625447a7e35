"""`genlab export`: the encoder bundle of a run, a deployable model (onnx, torchscript,
safetensors) checked against PyTorch (genlab.tools.export_formats), or a classifier run as a
GAN's lesion judge (genlab.tools.judge_export)."""
from __future__ import annotations

from pathlib import Path

import click

from genlab.cli.common import CONTEXT, device_option, run_dir_argument
from genlab.core.errors import GenlabError


@click.command(context_settings=CONTEXT)
@run_dir_argument
@device_option("Device used to rebuild the model. Example: --device cpu")
@click.option("--format", "fmt", type=click.Choice(["bundle", "onnx", "torchscript", "safetensors", "judge"]),
              default="bundle", show_default=True,
              help="bundle: the encoder bundle below. onnx, torchscript, safetensors: the classifier "
                   "(classifier runs, best.pt) or the encoder, any batch size, built on the CPU and "
                   "checked against PyTorch on test images (max |diff| <= 1e-4; see "
                   "genlab.tools.export_formats). judge: a classifier run (best.pt) as a GAN's "
                   "lesion judge (encoder + head bundles, parity-checked; default folder "
                   "RUN_DIR/judge). Example: --format onnx")
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder for onnx/torchscript/safetensors files (default RUN_DIR/export) or "
                   "for the judge (default RUN_DIR/judge). Example: --out judges/lesion_judge_brain")
def export(run_dir, device, fmt, out):
    """(Re-)write RUN_DIR/export/ (encoder.safetensors + encoder.json) from the newest checkpoint.

    Works on finished and interrupted runs. Load the result with genlab.load_encoder(path).
    With --format onnx|torchscript|safetensors: a deployable model, parity-checked.
    With --format judge: a classifier run as a GAN's lesion judge, parity-checked.

    \b
    Examples:
      genlab export runs/dae_brain/20260101-120000
      genlab export runs/lesion_brain/20260101-120000 --format onnx
      genlab export runs/lesion_judge_brain/20260101-120000 --format judge --out judges/lesion_judge_brain
    """
    if fmt == "judge":
        from genlab.tools.judge_export import export_judge

        res = export_judge(run_dir, out)
        click.echo(f"exported the lesion judge (step {res.step}) to {res.files[0].parent}: "
                   f"{', '.join(f.name for f in res.files)}")
        click.echo(f"parity with PyTorch on {res.parity_inputs} (batch sizes "
                   f"{', '.join(map(str, res.batch_sizes))}): max |diff| {res.max_abs_diff:.2e}")
        return
    if fmt != "bundle":
        from genlab.tools.export_formats import export_run

        res = export_run(run_dir, fmt, out)
        click.echo(f"exported the {res.kind} (step {res.step}) as {fmt}: "
                   f"{', '.join(str(f) for f in res.files)}")
        click.echo(f"parity with PyTorch on {res.parity_inputs} (batch sizes "
                   f"{', '.join(map(str, res.batch_sizes))}): max |diff| {res.max_abs_diff:.2e}")
        return
    if out is not None:
        raise GenlabError("--out applies to --format onnx, torchscript, safetensors or judge; the bundle "
                          "is always RUN_DIR/export/")
    from genlab.engine.runs import load_run
    from genlab.families.base import require
    from genlab.families.export import save_encoder
    from genlab.families.gan import GAN

    run = load_run(run_dir, "last", device)
    require(run.model, "encode", "genlab export")
    # the arguments the trainer's own export uses at the end of a run
    path = save_encoder(run.model.encoder_spec(), run.run_dir / "export", family=run.recipe.family,
                        info=run.info, recipe_name=run.recipe.name, step=run.step)
    click.echo(f"exported the encoder at step {run.step} to {path}")
    if isinstance(run.model, GAN):  # a GAN's EMA generator too
        click.echo(f"exported the generator to {run.model.export_generator(path)}")


COMMANDS = (export,)
