"""The layers of a backbone by name, for freezing, Grad-CAM and feature extraction.

Names: the stage names of a genlab.nn.backbones backbone's conv trunk (block1, block2, ...;
resnet18: stem, layer1 ... layer4), then every module's dotted path ("features.1.0", "neck").
An exported encoder wrapped as a backbone keeps its own paths (no "encoder." prefix); the input
preprocessing and weight parametrizations (spectral norm) are left out.
"""
from __future__ import annotations

import torch
from torch import nn

from genlab.nn.backbones import EncoderBackbone


def named_layers(backbone: nn.Module) -> dict[str, nn.Module]:
    """Every layer a user can name: the stage names (block1 ..., or stem, layer1 ...), then the
    dotted module paths in registration order. An exported encoder's layers keep its own paths
    (no "encoder." prefix); the preprocessing and weight parametrizations are left out."""
    root = backbone.encoder if isinstance(backbone, EncoderBackbone) else backbone
    out = dict(getattr(backbone, "stage_names", {}))
    for name, module in root.named_modules():
        top = name.split(".", 1)[0]
        if name and top != "pre" and "parametrizations" not in name.split("."):
            out.setdefault(name, module)
    return out


def layer_path(backbone: nn.Module, module: nn.Module) -> str:
    """The dotted path of a layer `named_layers` holds (a stage name resolves to its path)."""
    for name, m in named_layers(backbone).items():
        if m is module and name not in getattr(backbone, "stage_names", {}):
            return name
    return next(n for n, m in named_layers(backbone).items() if m is module)


def find_layers(backbone: nn.Module, names: list[str] | tuple[str, ...]) -> list[nn.Module]:
    """The layers called `names`; an unknown name is a ValueError listing the valid ones."""
    layers = named_layers(backbone)
    bad = [n for n in names if n not in layers]
    if bad:
        raise ValueError(f"unknown layer{'s' if len(bad) > 1 else ''} {', '.join(bad)} "
                         f"(layers: {', '.join(layers)})")
    return [layers[n] for n in names]


@torch.no_grad()
def layer_shapes(backbone: nn.Module, input_shape) -> dict[str, tuple[int, ...] | None]:
    """The output shape (batch dimension left out) of every named layer for one zero input of
    `input_shape` (None: the layer did not run or gave no tensor). The forward runs in eval mode
    (no batch-norm statistics move); every module's mode is restored afterwards."""
    layers = named_layers(backbone)
    seen: dict[int, tuple[int, ...] | None] = {}

    def grab(module, inputs, output):
        seen.setdefault(id(module), tuple(output.shape[1:]) if isinstance(output, torch.Tensor) else None)

    unique = {id(m): m for m in layers.values()}
    hooks = [m.register_forward_hook(grab) for m in unique.values()]
    modes = [(m, m.training) for m in backbone.modules()]
    device = next((p.device for p in backbone.parameters()), torch.device("cpu"))
    try:
        backbone.eval()
        backbone(torch.zeros(1, *[int(v) for v in input_shape], device=device))
    finally:
        for h in hooks:
            h.remove()
        for m, mode in modes:
            m.training = mode
    return {name: seen.get(id(m)) for name, m in layers.items()}


__all__ = ["find_layers", "layer_path", "layer_shapes", "named_layers"]
