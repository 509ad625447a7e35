"""Weight bundles: NAME.safetensors + NAME.json in one folder.

The one format genlab uses to hand a network to someone else (encoders, a GAN's generator,
a classifier, a DQN's Q-network): tensors in safetensors, so loading never unpickles
anything, and a JSON document that says what the tensors are and how to rebuild the module.
Both files are written atomically; the JSON is written last, so a bundle whose JSON exists is
complete.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from genlab.core.errors import CheckpointError
from genlab.core.files import atomic_write_bytes, json_text


def save_bundle(out_dir: Path, name: str, tensors: dict, meta: dict[str, Any]) -> Path:
    """Write out_dir/NAME.safetensors and out_dir/NAME.json; returns the JSON's path.
    `meta` must carry a "format" key (e.g. "genlab-encoder") that `load_bundle` checks."""
    from safetensors.torch import save

    if "format" not in meta:
        raise ValueError("bundle metadata needs a 'format' key")
    out_dir = Path(out_dir)
    state = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    atomic_write_bytes(out_dir / f"{name}.safetensors", save(state))
    return atomic_write_bytes(out_dir / f"{name}.json", json_text(meta).encode())


def find_bundle(path: Path, name: str) -> tuple[Path, Path]:
    """(json path, weights path) of bundle NAME given its folder, a run folder (looks in
    export/), or either of its two files; a clear error when it is not there."""
    path = Path(path)
    if path.is_dir():
        folder = path / "export" if (path / "export" / f"{name}.json").is_file() else path
    else:
        folder = path.parent
    meta_path, weights = folder / f"{name}.json", folder / f"{name}.safetensors"
    if not meta_path.is_file() or not weights.is_file():
        raise CheckpointError(f"{path}: no {name} bundle (expected {name}.json and "
                              f"{name}.safetensors in {folder})")
    return meta_path, weights


def read_bundle_meta(path: Path, name: str, fmt: str) -> tuple[dict, Path]:
    """(metadata, weights path) of bundle NAME; its JSON must say format `fmt`."""
    meta_path, weights = find_bundle(path, name)
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{meta_path}: unreadable bundle metadata ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != fmt:
        raise CheckpointError(f"{meta_path}: not a genlab {name} bundle (format {fmt!r} expected)")
    return meta, weights


def load_bundle(path: Path, name: str, fmt: str, map_location: str = "cpu") -> tuple[dict, dict]:
    """(metadata, tensors) of bundle NAME, checked to be of format `fmt`."""
    from safetensors.torch import load_file

    meta, weights = read_bundle_meta(path, name, fmt)
    try:
        tensors = load_file(str(weights), device=str(map_location))
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
        raise CheckpointError(f"{weights}: unreadable weights ({type(e).__name__}: {e})") from None
    return meta, tensors
