"""Shared fixtures: tiny recipes that run in a second or two on a CPU."""
from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("MPLBACKEND", "Agg")
torch.set_num_threads(min(2, torch.get_num_threads()))

# One tiny model config per registered family; the contract test fails for a family that has
# none, so every new family must say how to build a small version of itself.
TINY_FAMILIES: dict[str, dict] = {
    "ae": {"family": "ae", "data": {"name": "digits"},
           "model": {"arch": "dense", "hidden": [32], "bottleneck": 8}},
    "dae": {"family": "dae", "data": {"name": "digits"},
            "model": {"arch": "conv", "channels": [8, 16], "bottleneck": 8,
                      "corruption": {"kind": "gaussian", "level": 0.25}}},
}


def tiny_recipe(family: str = "ae", steps: int = 12, **train) -> dict:
    base = dict(TINY_FAMILIES[family])
    base["seed"] = 0
    base["train"] = {"steps": steps, "batch_size": 16, "lr": 3e-3, "device": "cpu",
                     "eval_batches": 2, **train}
    base["log"] = {"every": 4, "eval_every": 6, "render_every": 6, "checkpoint_every": 4,
                   "keep_checkpoints": 3, "render_examples": 16}
    return base


@pytest.fixture
def runs(tmp_path):
    return tmp_path / "runs"
