"""Full-state checkpoints: atomic writes and pickle-free loads.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so it loads with
`torch.load(weights_only=True)`: no arbitrary object is ever unpickled. Writes go to a temp
file in the same folder, are fsync'ed, then renamed over the target, so a kill mid-write
leaves the previous checkpoint intact.
"""
from __future__ import annotations

import os
import random
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from genlab.core.errors import CheckpointError

_STEP_FILE = re.compile(r"^step-(\d+)\.pt$")


def atomic_save(obj: Any, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp makes the file 0600; give it the permissions of any other file (the umask's)
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)  # make the rename itself durable
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _umask() -> int:
    """The process's umask (reading it means setting it: put straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def safe_load(path: Path, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint without unpickling arbitrary objects."""
    return torch.load(path, map_location=map_location, weights_only=True)


def step_path(ckpt_dir: Path, step: int) -> Path:
    return Path(ckpt_dir) / f"step-{step:08d}.pt"


def list_step_checkpoints(ckpt_dir: Path) -> list[Path]:
    """Step checkpoints, newest first."""
    d = Path(ckpt_dir)
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := _STEP_FILE.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def load_latest(ckpt_dir: Path, map_location="cpu") -> tuple[dict, Path]:
    """The newest checkpoint that loads; a corrupt newer one is skipped with a warning."""
    candidates = list_step_checkpoints(ckpt_dir)
    if not candidates:
        raise CheckpointError(f"no checkpoint found in {ckpt_dir}")
    for path in candidates:
        try:
            state = safe_load(path, map_location)
            if not isinstance(state, dict) or "step" not in state or "model" not in state:
                raise ValueError("not a genlab checkpoint")
            return state, path
        except Exception as e:  # noqa: BLE001 - any unreadable file falls back to an older one
            warnings.warn(f"checkpoint {path} is unreadable ({type(e).__name__}: {e}); "
                          f"falling back to the previous one", stacklevel=2)
    raise CheckpointError(f"every checkpoint in {ckpt_dir} is unreadable")


_checked: dict[str, tuple[int, int, bool]] = {}  # path -> (size, mtime, is_checkpoint)
_warned: set[Path] = set()  # junk files prune has warned about


def is_checkpoint(path: Path) -> bool:
    """Whether `path` reads as a genlab step checkpoint: its pickle loads (weights_only) into a
    dict with a step and a model. Tensors are memory-mapped, not read, so this is cheap; the
    answer is remembered while the file's size and mtime stay the same."""
    try:
        st = Path(path).stat()
    except OSError:
        return False
    seen = _checked.get(str(path))
    if seen is not None and seen[:2] == (st.st_size, st.st_mtime_ns):
        return seen[2]
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        ok = isinstance(state, dict) and "step" in state and "model" in state
    except Exception:  # noqa: BLE001 - whatever fails to load is not a checkpoint
        ok = False
    _checked[str(path)] = (st.st_size, st.st_mtime_ns, ok)
    return ok


def prune(ckpt_dir: Path, keep: int) -> None:
    """Delete all but the newest `keep` step checkpoints. Only files that read as checkpoints
    count and are deleted: a junk `step-*.pt` (a stray copy, a truncated file) is left alone,
    with one warning, and never pushes out a good checkpoint."""
    kept = 0
    for path in list_step_checkpoints(ckpt_dir):
        if not is_checkpoint(path):
            if path not in _warned:
                _warned.add(path)
                warnings.warn(f"{path} is not a readable genlab checkpoint; left alone (and not "
                              f"counted among the {keep} kept)", stacklevel=2)
            continue
        kept += 1
        if kept > keep:
            path.unlink(missing_ok=True)
            _checked.pop(str(path), None)


# -- random number generator state, as plain tensors and lists ---------------------------------
def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached"]))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
