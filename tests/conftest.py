"""Shared fixtures: tiny recipes that run in a second or two on a CPU."""
from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

os.environ.setdefault("MPLBACKEND", "Agg")
# Under pytest-xdist (`-n 2`, the default) each worker gets one core: one torch thread each
# avoids oversubscription, which costs small models far more than it gains.
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else min(2, torch.get_num_threads()))
# ... and `genlab train` called in a test keeps that count (it picks its own only when
# OMP_NUM_THREADS is unset: genlab.core.threads).
os.environ.setdefault("OMP_NUM_THREADS", str(torch.get_num_threads()))


def tiny_atlas_teacher(in_shape=(1, 8, 8), seed: int = 0) -> str:
    """The path of an exported atlas encoder (random pose net, a random template) for family
    distill's teacher: built once per shape in a temporary folder removed at exit."""
    key = tuple(in_shape)
    if key not in _TEACHERS:
        from genlab.families.base import EncoderSpec
        from genlab.families.export import save_encoder
        from genlab.nn.atlas import AtlasEncoder

        args = {"in_shape": list(in_shape), "widths": [4], "up": 1, "scales": [0.0, 1.0],
                "thresholds": [0.05, 0.2], "quantiles": [0.5, 1.0]}
        with torch.random.fork_rng(devices=[]):  # the tests' own random streams stay untouched
            torch.manual_seed(seed)
            enc = AtlasEncoder(**args)
            with torch.no_grad():
                enc.atlas.template.copy_(0.5 * torch.rand_like(enc.atlas.template))
        info = SimpleNamespace(input_shape=list(in_shape), value_range=[0.0, 1.0], name="tiny",
                               class_names=[])
        out = Path(tempfile.mkdtemp(prefix="genlab_teacher_"))
        atexit.register(shutil.rmtree, out, True)
        save_encoder(EncoderSpec("atlas_encoder", args, enc, enc.num_features), out, family="atlas",
                     info=info, recipe_name="tiny_teacher", step=0)
        _TEACHERS[key] = str(out)
    return _TEACHERS[key]


_TEACHERS: dict[tuple, str] = {}

# One tiny model config per registered family; the contract test fails for a family that has
# none, so every new family must say how to build a small version of itself.
TINY_FAMILIES: dict[str, dict] = {
    "ae": {"family": "ae", "data": {"name": "digits"},
           "model": {"arch": "dense", "hidden": [32], "bottleneck": 8}},
    "dae": {"family": "dae", "data": {"name": "digits"},
            "model": {"arch": "conv", "channels": [8, 16], "bottleneck": 8,
                      "corruption": {"kind": "gaussian", "level": 0.25}}},
    "gan": {"family": "gan", "data": {"name": "digits"},
            "model": {"g_width": 8, "d_width": 8, "features": 16, "z_dim": 8, "fid_samples": 8}},
    "classifier": {"family": "classifier", "data": {"name": "digits"},
                   "model": {"backbone": "vgg_sep", "channels": [4, 8, 8]}},
    "rbm": {"family": "rbm", "data": {"name": "digits"},
            "model": {"hidden": 16, "ais_runs": 8, "ais_betas": 30, "sample_gibbs_steps": 20}},
    "dbn": {"family": "dbn", "data": {"name": "digits"},
            "model": {"layers": [16, 8], "finetune_steps": 2, "ais_runs": 8, "ais_betas": 30,
                      "sample_gibbs_steps": 20}},
    "atlas": {"family": "atlas", "data": {"name": "digits"},
              "model": {"pose_widths": [4, 8], "scales": [0.0, 1.0], "thresholds": [0.05, 0.1],
                        "quantiles": [0.5, 1.0]}},
    "distill": {"family": "distill", "data": {"name": "digits"},
                "model": {"teacher": tiny_atlas_teacher(), "channels": [4, 8, 8], "target_images": 64}},
    "ssl": {"family": "ssl", "data": {"name": "digits"},
            "model": {"channels": [4, 8, 8], "projector": [16, 8]}},
    "dqn": {"family": "dqn",
            "data": {"name": "maze", "env": {"size": 7, "n_food": 2, "n_shock": 1, "max_steps": 30},
                     "val_size": 8, "test_size": 8},
            "model": {"channels": [4], "hidden": [16], "num_envs": 4, "buffer_size": 64,
                      "learning_starts": 16, "n_step": 2, "target_update_every": 2,
                      "exploration_fraction": 1.0, "explore_repeat": 3}},
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
