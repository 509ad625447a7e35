"""Encoder bundles: export/encoder.safetensors + export/encoder.json.

The JSON names a builder in `genlab.nn.ENCODER_BUILDERS` and its arguments, so
`load_encoder(path)` rebuilds the module with no access to the recipe or the family's code.
Weights are safetensors: loading never unpickles anything.
"""
from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from genlab.core.errors import CheckpointError

BUNDLE_VERSION = 1


def save_encoder(spec, out_dir: Path, *, family: str, info, recipe_name: str, step: int,
                 extra: dict | None = None) -> Path:
    """Write the encoder of `spec` (a families.base.EncoderSpec) to out_dir; returns out_dir."""
    from safetensors.torch import save_file

    import genlab

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in spec.module.state_dict().items()}
    tmp = out_dir / "encoder.safetensors.tmp"
    save_file(state, str(tmp))
    tmp.replace(out_dir / "encoder.safetensors")
    meta = {
        "format": "genlab-encoder", "version": BUNDLE_VERSION, "genlab_version": genlab.__version__,
        "family": family, "builder": spec.builder, "config": spec.config,
        "out_features": spec.out_features,
        "input_shape": list(info.input_shape), "value_range": list(info.value_range),
        "normalization": "inputs are float32 in value_range, shaped (B, *input_shape); no mean/std",
        "data": info.name, "class_names": list(info.class_names),
        "recipe": recipe_name, "step": step, **spec.extra, **(extra or {}),
    }
    (out_dir / "encoder.json").write_text(json.dumps(meta, indent=2) + "\n")
    return out_dir


def read_bundle_meta(path: Path) -> tuple[dict, Path]:
    """(metadata, weights path) of a bundle given its folder, its json or its safetensors file."""
    path = Path(path)
    if path.is_dir():
        folder = path / "export" if (path / "export" / "encoder.json").exists() else path
    else:
        folder = path.parent
    meta_path, weights = folder / "encoder.json", folder / "encoder.safetensors"
    if not meta_path.exists() or not weights.exists():
        raise CheckpointError(f"{path}: no encoder bundle (expected encoder.json and "
                              f"encoder.safetensors in {folder})")
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != "genlab-encoder":
        raise CheckpointError(f"{meta_path}: not a genlab encoder bundle")
    return meta, weights


def load_encoder(path: str | Path, map_location: str = "cpu", strict: bool = True) -> nn.Module:
    """Rebuild an exported encoder: (B, *input_shape) -> (B, out_features).

    Missing or unexpected tensors are reported by name; a shape mismatch is always an error.
    The returned module is in eval mode and carries `bundle_meta` (the JSON) as an attribute.
    """
    from safetensors.torch import load_file

    from genlab.nn import ENCODER_BUILDERS

    meta, weights = read_bundle_meta(Path(path))
    builder = ENCODER_BUILDERS.get(meta["builder"])
    if builder is None:
        raise CheckpointError(f"{path}: unknown encoder builder {meta['builder']!r} "
                              f"(known: {', '.join(sorted(ENCODER_BUILDERS))})")
    module = builder(**meta["config"])
    state = load_file(str(weights), device=str(map_location))
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
        import warnings

        warnings.warn(f"{weights}: missing tensors {missing}, unexpected tensors {unexpected}",
                      stacklevel=2)
    module.load_state_dict(state, strict=False)
    module.bundle_meta = meta
    return module.eval()
