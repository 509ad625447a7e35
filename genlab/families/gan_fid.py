"""The GAN family's Frechet judge (`model.fid_extractor`): a frozen feature net for the Frechet
distance and precision/recall of its samples, built once when the family is. An exported genlab
encoder trained on the same data (checked: it takes images of the data's shape), or, when the
key is null, "random_conv", a conv net with fixed random weights (genlab.nn.gan_losses)."""
from __future__ import annotations

from pathlib import Path

from torch import nn

from genlab.core.errors import RecipeError
from genlab.data.base import DataInfo
from genlab.families.gan_judge import judge_name
from genlab.nn.gan_losses import random_conv_judge


def build_fid_judge(path: Path | None, info: DataInfo) -> tuple[str, nn.Module]:
    """(name, frozen feature net) of the GAN's `fid_extractor`: an exported encoder bundle at
    `path` for images of the data's shape, or, when null, "random_conv" (fixed random weights)."""
    from genlab.families.export import load_encoder

    if path is None:
        return "random_conv", random_conv_judge(info.input_shape)
    net = load_encoder(path).requires_grad_(False)
    meta = net.bundle_meta
    if tuple(meta["input_shape"]) != tuple(info.input_shape):
        raise RecipeError("model.fid_extractor", f"the encoder takes {tuple(meta['input_shape'])} "
                          f"images, the data are {tuple(info.input_shape)}")
    return judge_name(meta.get("recipe") or meta.get("family")), net


__all__ = ["build_fid_judge"]
