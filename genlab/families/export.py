"""Encoder bundles: export/encoder.safetensors + export/encoder.json.

A bundle in genlab's one weight-bundle format (`genlab.core.bundle`, format "genlab-encoder").
The JSON names a builder in `genlab.nn.ENCODER_BUILDERS` and its arguments, so
`load_encoder(path)` rebuilds the module with no access to the recipe or the family's code.
Weights are safetensors: loading never unpickles anything.

To start another model from a bundle (a new head, a report of what loaded) see
`genlab.families.init_from`.
"""
from __future__ import annotations

import warnings
from pathlib import Path

from torch import nn

from genlab.core import bundle
from genlab.core.errors import CheckpointError

BUNDLE_NAME = "encoder"  # encoder.safetensors + encoder.json
BUNDLE_FORMAT = "genlab-encoder"  # the JSON's "format"
BUNDLE_VERSION = 1


def save_encoder(spec, out_dir: Path, *, family: str, info, recipe_name: str, step: int,
                 extra: dict | None = None) -> Path:
    """Write the encoder of `spec` (a families.base.EncoderSpec) to out_dir; returns out_dir."""
    import genlab

    meta = {
        "format": BUNDLE_FORMAT, "version": BUNDLE_VERSION, "genlab_version": genlab.__version__,
        "family": family, "builder": spec.builder, "config": spec.config,
        "out_features": spec.out_features,
        "input_shape": list(info.input_shape), "value_range": list(info.value_range),
        "normalization": "inputs are float32 in value_range, shaped (B, *input_shape); no mean/std",
        "data": info.name, "class_names": list(info.class_names),
        "recipe": recipe_name, "step": step, **spec.extra, **(extra or {}),
    }
    out_dir = Path(out_dir)
    bundle.save_bundle(out_dir, BUNDLE_NAME, spec.module.state_dict(), meta)
    return out_dir


def read_bundle_meta(path: Path) -> tuple[dict, Path]:
    """(metadata, weights path) of an encoder bundle given its folder, a run folder (looks in
    export/), its json or its safetensors file."""
    return bundle.read_bundle_meta(Path(path), BUNDLE_NAME, BUNDLE_FORMAT)


def load_encoder(path: str | Path, map_location: str = "cpu", strict: bool = True) -> nn.Module:
    """Rebuild an exported encoder: (B, *input_shape) -> (B, out_features).

    Missing or unexpected tensors are reported by name (an error when `strict`, else a
    warning); a shape mismatch is always an error. The returned module is in eval mode and
    carries `bundle_meta` (the JSON) as an attribute.
    """
    from genlab.nn import ENCODER_BUILDERS

    meta, state = bundle.load_bundle(Path(path), BUNDLE_NAME, BUNDLE_FORMAT, map_location)
    _, weights = bundle.find_bundle(Path(path), BUNDLE_NAME)  # named in the messages below
    builder = ENCODER_BUILDERS.get(meta.get("builder"))
    if builder is None:
        raise CheckpointError(f"{path}: unknown encoder builder {meta.get('builder')!r} "
                              f"(known: {', '.join(sorted(ENCODER_BUILDERS))})")
    module = builder(**meta["config"])
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = [f"{k}: bundle {tuple(state[k].shape)} vs module {tuple(own[k].shape)}"
                  for k in own.keys() & state.keys() if own[k].shape != state[k].shape]
    if mismatched:
        raise CheckpointError(f"{weights}: shape mismatch: " + "; ".join(sorted(mismatched)))
    if strict and (missing or unexpected):
        raise CheckpointError(f"{weights}: missing tensors {missing}, unexpected tensors {unexpected}")
    if missing or unexpected:
        warnings.warn(f"{weights}: missing tensors {missing}, unexpected tensors {unexpected}",
                      stacklevel=2)
    module.load_state_dict(state, strict=False)
    module.bundle_meta = meta
    return module.eval()
