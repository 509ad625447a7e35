"""Real images augmented with a class-conditional generator's samples: does a classifier trained
on few labelled images gain from them? (scripts/augmentation_study.py runs it over seeds.)

The pair is the CAS measurement's (genlab.tools.cas) with the real images kept: the classifier
recipe with the fixed budget of `CASSettings`, trained once on the `s.n_train` class-balanced
real labelled images alone (`data.labelled`, picked by the seed) and once on the same images
followed by `n` generated ones (data source "generated" with `with_real_train`), both scored on the
same real test images with best.pt chosen on the same real val images. Everything but the
training images is the same, so the difference in test accuracy is what the samples add (or take
away). Batches are drawn uniformly from the joined train split: with 1,000 real and 2,000
generated images a third of each batch is real, and the budget in steps is the same, so the
augmented run sees each real image a third as often.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from genlab.core.recipe import Recipe
from genlab.tools.cas import CASSettings, classifier_recipe, real_recipe, train_scored


def augmented_recipe(s: CASSettings, real_data: dict[str, Any], gen_source: dict[str, Any],
                     n_generated: int) -> Recipe:
    """The classifier on `s.n_train` real labelled images of `real_data` then `n_generated`
    images of generated source `gen_source` (e.g. {"name": "generated", "generator": DIR})."""
    data = {**gen_source, "real": {**real_data, "labelled": s.n_train}, "train_size": n_generated,
            "with_real_train": True}
    return classifier_recipe(s, data, f"augmented_{n_generated}")


def paired_runs(s: CASSettings, real_data: dict[str, Any], gen_source: dict[str, Any],
                generated: list[int], out_root, *, real: dict | None = None, train_real: bool = True,
                quiet: bool = True, say: Callable[[str], None] = print) -> dict:
    """Train the real-only classifier (unless `real`, its scores from before, is given, or
    `train_real` is False) and one augmented classifier per count in `generated`. Returns
    {"real": scores | None, "augmented": {n: scores}, "gain": {n: augmented acc - real acc}}
    (scores: genlab.tools.cas.train_scored; no gain without a real-only run)."""
    recipes = {n: augmented_recipe(s, real_data, gen_source, n) for n in generated}  # checked first
    if real is None and train_real:
        say(f"training on {s.n_train} real images ({s.steps} steps of {s.batch_size}) ...")
        real, _ = train_scored(real_recipe(s, real_data), out_root, quiet)
        say(f"  test accuracy {real['acc']:.4f}  ({real['seconds']:.0f} s, {real['run']})")
    augmented = {}
    for n, rec in recipes.items():
        say(f"training on {s.n_train} real + {n} generated images ...")
        augmented[n], _ = train_scored(rec, out_root, quiet)
        say(f"  test accuracy {augmented[n]['acc']:.4f}  ({augmented[n]['seconds']:.0f} s)")
    gain = {n: a["acc"] - real["acc"] for n, a in augmented.items()} if real else {}
    return {"real": real, "augmented": augmented, "gain": gain}


__all__ = ["augmented_recipe", "paired_runs"]
