"""`genlab cas`: the Classification Accuracy Score of a class-conditional GAN run
(genlab.tools.cas): a classifier trained on its samples, scored on real test images, beside the
same classifier trained on as many real images."""
from __future__ import annotations

from pathlib import Path

import click

from genlab.cli.common import CONTEXT, device_option, run_dir_argument
from genlab.core.errors import GenlabError


@click.command("cas", context_settings=CONTEXT)
@run_dir_argument
@click.option("--recipe", type=click.Path(dir_okay=False, path_type=Path),
              default=Path("recipes/lesion_brain.yaml"), show_default=True,
              help="Classifier recipe whose model and optimiser are trained (its data section is "
                   "replaced by the GAN run's data). Example: --recipe recipes/lesion_brain.yaml")
@click.option("--n-train", type=click.IntRange(min=1), default=2000, show_default=True,
              help="Generated training images, and real labelled images for the baseline, the same "
                   "number per class. Example: --n-train 1000")
@click.option("--steps", type=click.IntRange(min=1), default=1500, show_default=True,
              help="Training budget of each classifier, in steps. Example: --steps 3000")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True,
              help="Images per step. Example: --batch-size 32")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seed of both classifiers: initial weights, batch order, the generated samples' "
                   "noise, the real labelled images and the val/test images. Example: --seed 1")
@click.option("--evals", type=click.IntRange(min=1), default=10, show_default=True,
              help="Validation evaluations per budget; the lowest val loss picks the checkpoint "
                   "scored on test. Example: --evals 20")
@click.option("--no-real", is_flag=True,
              help="Skip the real-data baseline (no ratio). Example: --no-real")
@click.option("--real-from", type=click.Path(path_type=Path), default=None,
              help="Reuse the real baseline of another run's cas.json (or its run folder); it must "
                   "have been trained with the same settings. A matching baseline in RUN_DIR/cas.json "
                   "is reused without asking. Example: --real-from runs/cgan_brain/A/cas.json")
@click.option("--judge", "judge", type=click.Path(path_type=Path), default=None,
              help="Lesion-judge folder: also report the share of generated images it assigns to "
                   "their class (agreement). Default: judges/lesion_judge_brain when it exists and "
                   "fits the data. Example: --judge judges/lesion_judge_brain")
@click.option("--no-judge", is_flag=True,
              help="No agreement, even with the default judge present. Example: --no-judge")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a key of the classifier recipe for both runs; repeatable. "
                   "Example: --set train.lr=1e-3")
@click.option("--checkpoint", type=click.Choice(["best", "last"]), default="last", show_default=True,
              help="The GAN's weights: the newest step checkpoint (as genlab sample draws from) or "
                   "best.pt (its best val monitor). Example: --checkpoint best")
@device_option("Device for the classifiers and the generator. Example: --device cuda", default="auto")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="CPU threads of torch (default: OMP_NUM_THREADS if set, else the CPUs other jobs "
                   "leave free). Example: --threads 1")
@click.option("--verbose", is_flag=True,
              help="Show the trainer's log lines of both classifiers. Example: --verbose")
def cas(run_dir, recipe, n_train, steps, batch_size, seed, evals, no_real, real_from, judge,
        no_judge, overrides, checkpoint, device, threads, verbose):
    """Classification Accuracy Score (Ravuri & Vinyals 2019) of a class-conditional GAN run.

    Trains a fresh classifier (the lesion recipe's backbone, a fixed budget) on --n-train images
    drawn from the run's EMA generator, each labelled by the class it was drawn for, and scores
    the checkpoint with the lowest val loss on the real test images of the run's data. Then the
    same classifier, budget and seed on as many real labelled images. CAS is the first test
    accuracy; the ratio CAS / real accuracy is 1 when the samples teach the classes as well as
    real images do, and near 1/K / real accuracy when they teach nothing.

    Writes RUN_DIR/cas.json (both classifiers' accuracy, per-class recall, lesion AUC, agreement)
    and the classifier runs under RUN_DIR/cas/.

    \b
    Examples:
      genlab cas runs/cgan_brain_easy/20260101-120000
      genlab cas runs/cgan_brain_easy/20260101-120000 --steps 3000 --n-train 4000
      genlab cas runs/cgan_brain/20260101-120000 --real-from runs/cgan_brain/20251231-090000
    """
    import torch

    from genlab.core.threads import choose_threads
    from genlab.tools import cas as tool

    if no_real and real_from is not None:
        raise GenlabError("--real-from: a reused baseline and --no-real contradict each other; give one")
    if judge is not None and no_judge:
        raise GenlabError("--judge and --no-judge contradict each other; give one")
    torch.set_num_threads(choose_threads(threads, torch.get_num_threads())[0])
    if judge is None and not no_judge and tool.resolve_path(tool.DEFAULT_JUDGE).is_dir():
        judge = tool.DEFAULT_JUDGE
    settings = tool.CASSettings(recipe=recipe, n_train=n_train, steps=steps, batch_size=batch_size,
                                seed=seed, evals=evals, sets=list(overrides), device=device)
    doc = tool.cas_for_run(run_dir, settings, checkpoint=checkpoint, no_real=no_real,
                           real_from=real_from, judge_path=judge, quiet=not verbose, say=click.echo)
    click.echo("\n" + tool.format_table(doc))
    click.echo(f"\nwrote {Path(doc['run']) / tool.CAS_FILE}")


COMMANDS = (cas,)
