"""Reusable networks and their maths: blocks and backbones, RBMs and DBN stacks, GAN nets and
losses, the DQN's Q-network, optimizers, and the encoder builders an exported bundle names.

`ENCODER_BUILDERS` and `register_encoder_builder` live in genlab.nn.builders and are reachable
from here too (loaded on first use, so importing a submodule of this package stays light and the
package never imports its own submodules while it is being imported).
"""
from __future__ import annotations

import importlib

_LAZY = {"ENCODER_BUILDERS": "genlab.nn.builders", "register_encoder_builder": "genlab.nn.builders"}

__all__ = ["ENCODER_BUILDERS", "register_encoder_builder"]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'genlab.nn' has no attribute {name!r}")
