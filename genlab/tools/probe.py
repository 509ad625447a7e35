"""Classical probe (a fixed feature extractor): a scikit-learn linear classifier on frozen
encoder features. The command is `genlab probe` (genlab/cli/probe.py).

    run folder -> frozen encoder (its export/ bundle, or a classifier run's best.pt backbone)
               -> features of the run's own data (train / val / report split)
               -> standardise -> [PCA] -> LinearSVC or LogisticRegression
               -> class probabilities -> genlab.metrics.classification.classification_report

Features: the encoder's output vector (the exported code), or with `pool` the global mean or
max (or both, meanmax) of its last convolutional feature map, (B, C, h, w) -> (B, C) — the
Grad-CAM layer of a classifier backbone, the last layer of a conv AE/DAE or GAN-discriminator
trunk. Any other layer, several image scales and VLAD: genlab.tools.features and
genlab.tools.features_compare.

Normalisation before the classifier (`norm`): standard (StandardScaler, fitted on the training
features), l2 (each vector scaled to unit length) or power_l2 (signed square root of every number,
then unit length).

Model selection: C is chosen on the validation split (highest accuracy; ties go to the smaller C,
the stronger regularisation); the final model is the one fitted on the training images with that
C. The report split is touched once.

Probabilities: logistic regression gives them itself. A linear SVM gives scores, turned into
probabilities by temperature scaling, softmax(score / T) (binary: sigmoid(score / T)), with T
fitted on the validation split; a temperature never changes the argmax, so the accuracy and the
confusion matrix are the SVM's own and the ROC AUC is that of its scores.
"""
from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from genlab.core.errors import GenlabError

# the fit itself (C on val, an SVM's temperature) lives in genlab.metrics.linear_probe, where the
# classifier's LP-FT head (genlab.families.head_init) uses it too; re-exported for the probe's callers
from genlab.metrics.linear_probe import (
    CLASSIFIERS,
    CLF_ALIASES,
    DEFAULT_C_GRID,
    NORMS,
    ProbeResult,
    fit,
    fit_temperature,
)

POOLS = ("none", "mean", "max", "meanmax")


@dataclass
class ProbeSource:
    """A run's frozen encoder and its data: `backbone` maps (B, *input_shape) to (B, F)."""

    run_dir: Path
    recipe: object
    data: object
    info: object
    backbone: nn.Module
    origin: str                              # where the weights came from (for the report)
    negative: list[int] = field(default_factory=list)
    step: int = -1

    @property
    def pool_layer(self) -> nn.Module | None:
        """The module whose (B, C, h, w) output --pool reduces (None: no conv trunk)."""
        return getattr(self.backbone, "cam_layer", None)


def load_source(run_dir: Path, device: torch.device, checkpoint: str = "best",
                data_overrides: tuple[str, ...] = ()) -> ProbeSource:
    """The encoder of RUN_DIR and the data of its recipe.

    A classifier run gives its backbone with the weights `genlab eval` uses (best.pt, or the
    newest step checkpoint; genlab.load_run); any other run gives its exported encoder bundle
    (export/).
    """
    from genlab.core.files import require_run_dir
    from genlab.core.recipe import load_recipe
    from genlab.core.registry import get_dataset
    from genlab.families.export import read_bundle_meta
    from genlab.metrics.classification import resolve_negative
    from genlab.nn.backbones import build_backbone

    run_dir = require_run_dir(run_dir, "the probe needs a run that exported an encoder (export/) "
                                       "or a classifier run")
    overrides = [o if o.startswith("data.") else f"data.{o}" for o in data_overrides]
    if load_recipe(run_dir / "recipe.yaml").family == "classifier":
        from genlab.engine.runs import load_run

        run = load_run(run_dir, checkpoint, device, data_overrides, need_data=True)
        return ProbeSource(run_dir, run.recipe, run.data, run.info, run.model.backbone.eval(),
                           f"classifier backbone, {run.checkpoint.name} (step {run.step})",
                           list(run.model.negative), run.step)
    rec = load_recipe(run_dir / "recipe.yaml", overrides)
    if not (run_dir / "export" / "encoder.json").is_file():
        raise GenlabError(f"{run_dir}: a {rec.family!r} run without an exported encoder "
                          f"(no export/encoder.json); run `genlab export {run_dir}` first, or give "
                          f"a run of a family that exports one (ae, dae, rbm, dbn, gan)")
    meta, weights = read_bundle_meta(run_dir)
    data = get_dataset(rec.data_name)(rec.data, rec.seed, device)
    info = data.info
    shape = [int(s) for s in meta.get("input_shape", info.input_shape)]
    if shape != list(info.input_shape):
        raise GenlabError(f"{run_dir}: the encoder takes inputs {shape}, the data gives "
                          f"{list(info.input_shape)} (check --data)")
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            bb = build_backbone("encoder", list(info.input_shape),
                                encoder={"builder": meta["builder"], "config": meta.get("config", {})})
    except (ValueError, TypeError, RuntimeError) as e:
        raise GenlabError(f"{run_dir}: cannot rebuild its encoder: {e}") from None
    from genlab.families.init_from import load_bundle_weights

    rep = load_bundle_weights(bb.encoder, weights, False)
    if rep["missing"] or rep["skipped"]:
        raise GenlabError(f"{weights}: the bundle does not fill its own encoder (missing "
                          f"{[d['name'] for d in rep['missing']]}, skipped "
                          f"{[d['name'] for d in rep['skipped']]})")
    negative = resolve_negative(None, tuple(info.class_names))
    return ProbeSource(run_dir, rec, data, info, bb.to(device).eval(),
                       f"{meta.get('family')} encoder bundle {meta['builder']!r}, step {meta.get('step')}",
                       negative, int(meta.get("step") or -1))


@torch.no_grad()
def extract(src: ProbeSource, split: str, n: int | None, pool: str = "none",
            batch_size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """(features (N, F) float64, labels (N,) int64) of the first n images of `split`."""
    from genlab.data.sampler import eval_batches

    if pool not in POOLS:
        raise GenlabError(f"--pool {pool}: expected one of {', '.join(POOLS)}")
    size = src.data.size(split)
    n = size if n is None else min(int(n), size)
    layer, grabbed = None, []
    if pool != "none":
        layer = src.pool_layer
        if layer is None:
            raise GenlabError(f"--pool {pool}: the encoder of {src.run_dir} has no convolutional "
                              f"feature map to pool (a dense encoder: use its output, no --pool)")
    hook = layer.register_forward_hook(lambda m, i, o: grabbed.append(o)) if layer is not None else None
    feats, ys = [], []
    device = next((p.device for p in src.backbone.parameters()), torch.device("cpu"))
    try:
        with torch.random.fork_rng(devices=[]):
            for idx in eval_batches(n, batch_size):
                batch = src.data.get(split, idx)
                if "y" not in batch:
                    raise GenlabError(f"{src.run_dir}: data {src.info.name!r} has no labels to probe")
                grabbed.clear()
                out = src.backbone(batch["x"].to(device).float())
                if layer is not None:
                    fmap = grabbed[-1]
                    if fmap.dim() != 4:
                        raise GenlabError(f"--pool {pool}: the encoder's last conv output has shape "
                                          f"{tuple(fmap.shape)}, not (B, C, h, w)")
                    from genlab.tools.features import pool as pool_map

                    out = pool_map(fmap, pool)
                feats.append(out.flatten(1).double().cpu())
                ys.append(batch["y"].long().cpu())
    finally:
        if hook is not None:
            hook.remove()
    return torch.cat(feats).numpy(), torch.cat(ys).numpy()


def describe(pool: str, pca: int | None, feat_dim: int, norm: str = "standard") -> str:
    what = "encoder output" if pool == "none" else f"global {pool} of the last conv map"
    return (f"{what} ({feat_dim} numbers)" + (f", {norm} normalised" if norm != "standard" else "")
            + (f" -> PCA {pca}" if pca is not None else ""))


def probe_name(clf: str, pca: int | None, pool: str, norm: str = "standard") -> str:
    """Folder / TensorBoard name of one probe setting, e.g. svm-pca128-poolmean."""
    return (CLF_ALIASES.get(clf, clf) + (f"-{norm}" if norm != "standard" else "")
            + (f"-pca{pca}" if pca is not None else "") + (f"-pool{pool}" if pool != "none" else ""))


def jsonable_grid(val_acc: dict[float, float]) -> list[dict]:
    return [{"C": c, "val_accuracy": a} for c, a in val_acc.items()]


__all__ = ["CLASSIFIERS", "CLF_ALIASES", "DEFAULT_C_GRID", "NORMS", "POOLS", "ProbeResult", "ProbeSource",
           "describe", "extract", "fit", "fit_temperature", "jsonable_grid", "load_source", "probe_name"]
