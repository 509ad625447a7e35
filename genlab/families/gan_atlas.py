"""The GAN family's atlas generator (`model.g_atlas`): built from an exported atlas encoder.

The export is read with genlab.families.export.load_encoder, checked (an atlas, for images of
the data's shape) and its template and pose net copied into a genlab.nn.gan_atlas.AtlasGenerator,
where they stay frozen. Frozen, because the template is the healthy anatomy the atlas learnt
with an L1 loss (the median): trained adversarially it would be shared by every sample of every
class, so the only class cue G could paint into it is a tumour in every image, or a drift of the
anatomy D then has to chase; frozen, all of G's learning goes into pose, lesions and noise.
"""
from __future__ import annotations

from pathlib import Path

import torch

from genlab.core.errors import GenlabError, RecipeError
from genlab.data.base import DataInfo
from genlab.nn.gan_atlas import AtlasGenerator

KEY = "model.g_atlas"


def build_atlas_generator(path: Path, info: DataInfo, code_dim: int, num_classes: int,
                          slots: int) -> tuple[AtlasGenerator, dict]:
    """(generator, its constructor arguments) with the atlas of the export at `path`."""
    from genlab.families.export import load_encoder

    try:
        enc = load_encoder(path)
    except GenlabError as e:  # no bundle there, or a broken one: say which recipe key named it
        raise RecipeError(KEY, f"no usable atlas export at '{path}': {e}") from e
    meta = enc.bundle_meta
    if meta.get("builder") != "atlas_encoder" or not hasattr(enc, "atlas"):
        raise RecipeError(KEY, f"'{path}' holds a {meta.get('builder')!r} encoder (family "
                          f"{meta.get('family')!r}); expected an atlas export (family atlas)")
    shape = [int(v) for v in meta["input_shape"]]
    if shape != [int(v) for v in info.input_shape]:
        raise RecipeError(KEY, f"the atlas at '{path}' is for {tuple(shape)} images, the data are "
                          f"{tuple(info.input_shape)}")
    cfg = meta["config"]
    args = {"out_shape": shape, "widths": list(cfg["widths"]), "up": int(cfg["up"]), "code_dim": code_dim,
            "num_classes": num_classes, "slots": slots,
            "max_log_scale": float(cfg.get("max_log_scale", 0.3)),
            "max_shift": float(cfg.get("max_shift", 0.3))}
    gen = AtlasGenerator(**args)
    gen.atlas.load_state_dict(enc.atlas.state_dict())
    gen.fit_template_frame()
    return gen, args


@torch.no_grad()
def fit_atlas_pose(gen: AtlasGenerator, gen_ema: AtlasGenerator, real: torch.Tensor) -> None:
    """At a run's first step: the real batch's pose statistics into G and its EMA copy."""
    gen.fit_pose(real)
    for name in ("pose_mean", "pose_sd", "pose_ready"):
        getattr(gen_ema, name).copy_(getattr(gen, name))


__all__ = ["KEY", "build_atlas_generator", "fit_atlas_pose"]
