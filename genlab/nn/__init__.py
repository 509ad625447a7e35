"""Reusable blocks and the encoder builders an exported bundle names.

`ENCODER_BUILDERS[name](**config)` rebuilds an exported encoder with no access to the
family or the recipe that trained it (see genlab.export).
"""
from __future__ import annotations

from collections.abc import Callable

from torch import nn

from genlab.nn.blocks import ConvEncoder, DenseEncoder

ENCODER_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "conv_encoder": ConvEncoder,
    "dense_encoder": DenseEncoder,
}


def register_encoder_builder(name: str, fn: Callable[..., nn.Module]) -> None:
    ENCODER_BUILDERS[name] = fn
