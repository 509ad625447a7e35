"""The classifier's head fitted before fine-tuning starts: LP-FT (Kumar et al., ICLR 2022,
"Fine-Tuning can Distort Pretrained Features and Underperform Out-of-Distribution").

A fresh linear head starts at random: its first gradients are large and point nowhere useful,
they flow into the pretrained backbone, and fine-tuning rewrites part of the features before the
head is any good. In the label-efficiency study the fine-tuned DAE ended below its own frozen
logistic probe for that reason. LP-FT first solves the linear probe on the frozen features
(convex, to convergence) and fine-tunes from there: at step 0 the classifier is the probe.

    labelled training images -> backbone in eval mode (no gradients) -> features (N, F)
      -> standardise -> logistic regression, C chosen on the validation images
         (genlab.metrics.linear_probe.fit, the fit of `genlab probe --clf logreg`)
      -> folded into the head's linear layer: weight = coef / scale, bias = intercept - weight @ mean

The labelled training images are the data's train split (with `data.labelled: N`, those N), less
the examples `label_fraction` leaves unlabelled, at most `max_images` of them; the validation
images are the first `max_images` of the val split. The features are those the head reads at
evaluation (backbone in eval mode: batch-norm running statistics, no dropout), so eval-mode
logits at step 0 equal the probe's decision scores. The fit draws no random numbers from the
run's streams: apart from the head, an LP-FT run's steps are those of a `finetune` run.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from genlab.core.errors import RecipeError
from genlab.data.sampler import eval_batches
from genlab.data.subset import labelled_mask
from genlab.metrics.linear_probe import DEFAULT_C_GRID, fit, linear_layer

BATCH = 256  # images encoded at once (no gradients, so larger batches are cheaper)


@torch.no_grad()
def frozen_features(model, data, split: str, max_images: int, device: torch.device,
                    label_fraction: float = 1.0, subset_seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(features (N, F) float64, labels (N,)) of the first `max_images` labelled examples of
    `split`, through `model.backbone` as it stands (the caller puts it in eval mode)."""
    feats, ys, kept = [], [], 0
    for idx in eval_batches(data.size(split), BATCH):
        if kept >= max_images:
            break
        if label_fraction < 1.0:  # the examples the classifier's loss leaves out are not seen here
            idx = idx[labelled_mask(idx, label_fraction, subset_seed)]
        idx = idx[: max_images - kept]
        if len(idx) == 0:
            continue
        batch = data.get(split, idx)
        feats.append(model.backbone(batch["x"].to(device).float()).flatten(1).double().cpu())
        ys.append(batch["y"].long().cpu())
        kept += len(idx)
    if not feats:
        return np.zeros((0, model.backbone.num_features)), np.zeros(0, dtype=np.int64)
    return torch.cat(feats).numpy(), torch.cat(ys).numpy()


def probe_head(model, data, device: torch.device, max_images: int) -> dict:
    """Fit the logistic probe on `model`'s frozen features and copy it into the last layer of
    `model.head` (an nn.Linear after at most a dropout: a linear head). Returns what was fitted:
    {"train_images", "val_images", "features", "C", "val_acc"}."""
    linear = model.head[-1]
    if not isinstance(linear, nn.Linear) or any(isinstance(m, nn.Linear) for m in model.head[:-1]):
        raise RecipeError("model.head_init", "probe fits a linear head, but model.head has dense "
                          "layers; set model.head: [] or model.head_init: random")
    cfg, k = model.cfg, linear.out_features
    was_training = model.training
    model.eval()
    try:  # a forked RNG: encoding (a data source may draw) leaves the run's random numbers alone
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            x_tr, y_tr = frozen_features(model, data, "train", max_images, device,
                                         cfg.label_fraction, cfg.subset_seed)
            x_va, y_va = frozen_features(model, data, "val", max_images, device)
    finally:
        model.train(was_training)
    if len(np.unique(y_tr)) < 2:
        raise RecipeError("model.head_init", f"probe: the labelled training images hold "
                          f"{'no' if len(y_tr) == 0 else 'one'} class ({np.unique(y_tr).tolist()}); "
                          f"a logistic probe needs at least two")
    if not (np.isfinite(x_tr).all() and np.isfinite(x_va).all()):
        raise RecipeError("model.head_init", "probe: the backbone's features hold NaN or Inf")
    # C on the validation images, as the study's frozen-probe rows; without any, C = 1 (no choice)
    grid, (xv, yv) = (DEFAULT_C_GRID, (x_va, y_va)) if len(y_va) else ((1.0,), (x_tr, y_tr))
    res = fit("logreg", x_tr, y_tr, xv, yv, c_grid=grid)
    weight, bias = linear_layer(res, k)
    with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(weight))
        linear.bias.copy_(torch.from_numpy(bias))
    return {"train_images": len(y_tr), "val_images": len(y_va), "features": int(x_tr.shape[1]),
            "C": res.c, "val_acc": res.val_accuracy[res.c] if len(y_va) else None}


def describe(r: dict) -> str:
    """The line printed when a run starts from a fitted head."""
    val = (f"C {r['C']:g} chosen on {r['val_images']:,} val images (val accuracy {r['val_acc']:.3f})"
           if r["val_acc"] is not None else "C 1 (no val images to choose it on)")
    return (f"head_init probe: logistic regression on the frozen features ({r['features']} numbers) "
            f"of {r['train_images']:,} labelled train images, {val}")


__all__ = ["describe", "frozen_features", "probe_head"]
