"""Writing files safely: atomic replacement, strict JSON, run folders.

Every file genlab writes for a user goes through here, so that a kill never leaves half a file
(writes go to a hidden temp file in the same folder, then `os.replace`), JSON is strict
(NaN and infinities become null) and files get the user's umask like any other file.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from genlab.core.errors import GenlabError


def jsonable(x: Any) -> Any:
    """`x` with NaN/Inf floats as None, tuples as lists and 0-d tensors/numpy scalars as
    numbers, recursively: what strict JSON can hold."""
    if isinstance(x, dict):
        return {str(k) if not isinstance(k, str) else k: jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, bool) or x is None or isinstance(x, (int, str)):
        return x
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if hasattr(x, "tolist"):  # numpy scalars and arrays, tensors: Python numbers and lists
        return jsonable(x.tolist())
    if isinstance(x, os.PathLike):
        return os.fspath(x)
    return None  # anything else has no JSON form: null, as metrics.json always wrote it


def json_text(obj: Any) -> str:
    """Strict, indented JSON of `obj` (see `jsonable`), ending with a newline."""
    return json.dumps(jsonable(obj), indent=2, allow_nan=False) + "\n"


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    """Write `data` to `path` through a temp file in the same folder; returns `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def write_json(path: Path, obj: Any) -> Path:
    """Atomically write `obj` as strict JSON (NaN/Inf -> null)."""
    return atomic_write_bytes(path, json_text(obj).encode())


def require_run_dir(run_dir: Path, needs: str = "") -> Path:
    """`run_dir` as a Path if it is a genlab run folder (it holds recipe.yaml), else a clear
    error; `needs` says what the caller wanted it for."""
    run_dir = Path(run_dir)
    if not (run_dir / "recipe.yaml").is_file():
        why = "no such folder" if not run_dir.exists() else "no recipe.yaml in it"
        raise GenlabError(f"{run_dir}: not a genlab run folder ({why})" + (f"; {needs}" if needs else ""))
    return run_dir
