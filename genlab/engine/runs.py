"""Loading a trained run, read-only: `genlab.load_run(run_dir)`.

Every command that reads a run (eval, predict, explain, probe, sample, play, export, serve) loads
it here: the run's resolved recipe.yaml, what the model knows of its data, the family model in
eval mode with the weights of one checkpoint, and what is known of the run. Nothing is trained,
and loading never writes, renames or deletes a file: a `.tmp` file in checkpoints/ (a write cut
short by a kill, or the in-flight checkpoint of a run that is still training) stays as it is.

    checkpoint="best"  checkpoints/best.pt (the best validation monitor) when the run has one,
                       else the newest step checkpoint
    checkpoint="last"  the newest step checkpoint that loads (an unreadable newer one is skipped
                       with a warning)

The data description (`info`: input shape, class names, value range) comes from the run's
export/encoder.json when there is one and the data options are not overridden, so loading
needs no access to the training data; otherwise from the data source, which is then built.
`data` itself is built on first use (or at once with need_data=True).
"""
from __future__ import annotations

import contextlib
import io
import json
import random
import warnings
from pathlib import Path

import numpy as np
import torch

from genlab.core.devices import select_device
from genlab.core.errors import CheckpointError, GenlabError
from genlab.core.files import require_run_dir
from genlab.core.recipe import Recipe, load_recipe
from genlab.core.registry import get_dataset, get_family
from genlab.data.base import DataInfo
from genlab.engine import checkpoints as ckpt

CHECKPOINTS = ("best", "last")


class LoadedRun:
    """A trained run, rebuilt: `recipe`, `info`, `data` (built on first use), `model` (eval
    mode), `checkpoint` (the file its weights came from), `step`, `device`, `run_dir` and
    `meta` ({"metrics": metrics.json or None; for best.pt also "monitor" and "value"})."""

    def __init__(self, run_dir: Path, recipe: Recipe, info: DataInfo, model: torch.nn.Module,
                 checkpoint: Path, step: int, device: torch.device, meta: dict, data=None):
        self.run_dir, self.recipe, self.info, self.model = run_dir, recipe, info, model
        self.checkpoint, self.step, self.device, self.meta = checkpoint, step, device, meta
        self._data = data

    @property
    def data(self):
        """The run's data source (from its recipe and any data overrides), built once."""
        if self._data is None:
            self._data = _build_data(self.recipe, self.device)
        return self._data

    def read_images(self, paths: list[Path]) -> torch.Tensor:
        """Image files as the model's input, (N, C, H, W) float32 in [0, 1] on the run's device.

        Read with Pillow and converted as the `folder` data source does: grayscale ('L') for a
        1-channel model, RGB for 3 channels (16-bit and float images are scaled, not clipped),
        resized to (H, W) with bilinear filtering (aspect ratio not kept), values / 255. A
        missing or unreadable file is an error naming it."""
        from genlab.data.folders import load_image

        c, h, w = self.info.input_shape
        out = []
        for p in paths:
            p = Path(p)
            if not p.is_file():
                raise GenlabError(f"image {p} not found")
            out.append(torch.from_numpy(load_image(p, c, (h, w))).float().div_(255.0))
        return torch.stack(out).to(self.device)

    def __repr__(self) -> str:
        return (f"LoadedRun({str(self.run_dir)!r}, family={self.recipe.family!r}, "
                f"checkpoint={self.checkpoint.name!r}, step={self.step}, device={str(self.device)!r})")


def load_run(run_dir: str | Path, checkpoint: str = "best", device: str | torch.device = "cpu",
             data_overrides: tuple[str, ...] | list[str] = (), need_data: bool = False,
             overrides: tuple[str, ...] | list[str] = ()) -> LoadedRun:
    """Rebuild the run in `run_dir` for use, read-only (see the module docstring).

    `data_overrides` are data options as KEY=VALUE ('data.' is optional: 'mode=easy'),
    `overrides` any other recipe keys as in `--set` (e.g. 'model.fid_extractor=PATH'; the
    checkpoint must still fit the model), both validated like the recipe. A folder that is not
    a run, or a run with no readable checkpoint, is a GenlabError with one line."""
    if checkpoint not in CHECKPOINTS:
        raise GenlabError(f"checkpoint {checkpoint!r}: expected one of {', '.join(CHECKPOINTS)}")
    run_dir = require_run_dir(run_dir)
    sets = [o if o.startswith("data.") else f"data.{o}" for o in data_overrides] + list(overrides)
    with _quiet():  # the recipe's warnings were shown when the run was trained
        recipe = load_recipe(run_dir / "recipe.yaml", sets)
    dev = device if isinstance(device, torch.device) else select_device(device)
    state, path = _read_checkpoint(run_dir / "checkpoints", checkpoint)

    data = info = None
    if not need_data and not any(o.startswith("data.") for o in sets):
        info = _info_from_export(run_dir / "export" / "encoder.json")
    if info is None:
        data = _build_data(recipe, dev)
        info = data.info
    # construction output (a classifier's init report) was shown at training
    with _quiet(), _seeded(recipe.seed, dev):
        model = get_family(recipe.family)(recipe.model, info)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        detail = "; ".join(line.strip() for line in str(e).splitlines() if line.strip())
        raise CheckpointError(f"{path}: does not fit the run's model: {detail}") from None
    model.to(dev).eval()

    meta: dict = {"metrics": _read_json(run_dir / "metrics.json")}
    if path.name == "best.pt":
        meta.update(monitor=state.get("monitor"), value=state.get("value"))
    return LoadedRun(run_dir, recipe, info, model, path, int(state.get("step", -1)), dev, meta, data)


# ----------------------------------------------------------------------------- helpers
def _read_checkpoint(ckpt_dir: Path, which: str) -> tuple[dict, Path]:
    best = ckpt_dir / "best.pt"
    if which == "best" and best.is_file():
        try:
            state = ckpt.safe_load(best, map_location="cpu")
        except Exception as e:  # noqa: BLE001 - a hostile or broken file: refused, and said why
            first = (str(e).strip().splitlines() or [""])[0]
            raise CheckpointError(f"{best}: unreadable ({type(e).__name__}: {first}); the newest "
                                  f"step checkpoint is used with --checkpoint last") from None
        if not isinstance(state, dict) or "model" not in state:
            raise CheckpointError(f"{best}: not a genlab checkpoint")
        return state, best
    return ckpt.load_latest(ckpt_dir, map_location="cpu")


def _info_from_export(path: Path) -> DataInfo | None:
    """The data description an encoder bundle records, or None when there is no usable one."""
    meta = _read_json(path)
    try:
        names = tuple(str(n) for n in meta["class_names"])
        return DataInfo(name=str(meta["data"]), input_shape=tuple(int(s) for s in meta["input_shape"]),
                        num_classes=len(names), class_names=names,
                        value_range=tuple(float(v) for v in meta.get("value_range", (0.0, 1.0))))
    except (KeyError, TypeError, ValueError):
        return None


def _read_json(path: Path) -> dict | None:
    try:
        obj = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def _build_data(recipe: Recipe, device: torch.device):
    with _seeded(recipe.seed, device):
        return get_dataset(recipe.data_name)(recipe.data, recipe.seed, device)


@contextlib.contextmanager
def _quiet():
    """No warnings and no printed output from what runs inside (it was all said at training)."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


@contextlib.contextmanager
def _seeded(seed: int, device: torch.device):
    """Build as the trainer does (python, numpy and torch seeded with the recipe's seed), and
    leave the caller's random state as it was."""
    py, npy = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(npy)


__all__ = ["CHECKPOINTS", "LoadedRun", "load_run"]
