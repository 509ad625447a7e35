"""The encoder builders an exported bundle names.

`ENCODER_BUILDERS[name](**config)` rebuilds an exported encoder with no access to the
family or the recipe that trained it (see genlab.families.export). Also reachable as
`genlab.nn.ENCODER_BUILDERS`.
"""
from __future__ import annotations

from collections.abc import Callable

from torch import nn

from genlab.nn.atlas import AtlasEncoder
from genlab.nn.blocks import ConvEncoder, DenseEncoder
from genlab.nn.dbn import sigmoid_mlp
from genlab.nn.gan_blocks import DiscTrunk

ENCODER_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "atlas_encoder": AtlasEncoder,
    "conv_encoder": ConvEncoder,
    "dense_encoder": DenseEncoder,
    "gan_disc_trunk": DiscTrunk,
    "sigmoid_mlp": sigmoid_mlp,
}


def _classifier_backbone(**config) -> nn.Module:  # imported late: backbones looks builders up
    from genlab.nn.backbones import build_backbone

    return build_backbone(**config)


ENCODER_BUILDERS["classifier_backbone"] = _classifier_backbone


def register_encoder_builder(name: str, fn: Callable[..., nn.Module]) -> None:
    ENCODER_BUILDERS[name] = fn
