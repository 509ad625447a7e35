"""Recipes: one YAML file per experiment, loaded strictly into typed dataclasses.

    name: dae_brain            # run folder: runs/<name>/<timestamp>/  (default: the file's stem)
    family: dae                # a registered family (genlab list)
    seed: 0
    data:  {name: brain, ...}  # a registered data set and its options
    model: {...}               # the family's Config
    train: {...}               # TrainConfig below
    log:   {...}               # LogConfig below

`data` and `model` are validated against the Config of the data set and family they name, so
every key in a recipe is checked, with the same messages for the file and for `--set`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from genlab.core import schema
from genlab.core.devices import DEVICE_NAMES
from genlab.core.errors import RecipeError
from genlab.core.registry import get_dataset, get_family
from genlab.core.schema import param


@dataclass
class TrainConfig:
    steps: int = param(1000, ge=1, help="optimizer steps to train for")
    batch_size: int = param(64, ge=1, help="examples per step (the global batch)")
    optimizer: Literal["adam", "adamw", "sgd"] = param("adam", help="optimizer for every family optimizer")
    lr: float = param(1e-3, gt=0, help="base learning rate")
    weight_decay: float = param(0.0, ge=0, help="L2 weight decay (decoupled for adamw)")
    betas: list[float] = param(default_factory=lambda: [0.9, 0.999], ge=0, lt=1, help="Adam betas")
    momentum: float = param(0.9, ge=0, lt=1, help="SGD momentum")
    nesterov: bool = param(True, help="Nesterov momentum for SGD")
    schedule: Literal["constant", "cosine", "step"] = param(
        "constant", help="learning-rate schedule after warm-up")
    warmup_steps: int = param(0, ge=0, help="linear warm-up steps from lr/warmup_steps to lr (one as "
                              "long as the run or longer is scaled down to a tenth of train.steps)")
    min_lr_ratio: float = param(0.0, ge=0, le=1, help="cosine: final lr as a fraction of lr")
    step_size: int = param(1000, ge=1, help="step schedule: multiply lr by gamma every step_size steps")
    gamma: float = param(0.1, gt=0, le=1, help="step schedule: decay factor")
    grad_clip: float | None = param(1.0, gt=0, help="clip the global gradient norm to this (null: off)")
    precision: Literal["fp32", "bf16", "fp16", "auto"] = param(
        "fp32", help="fp32; bf16 autocast; fp16 autocast with a grad scaler; auto: bf16 where the "
        "device computes it natively (a CUDA GPU with bf16, a CPU with AVX-512), else fp32")
    device: Literal[DEVICE_NAMES] = param("auto", help="auto: cuda, then mps, then cpu")
    compile: bool = param(False, help="torch.compile each submodule in place (falls back to eager "
                          "with a warning where it cannot compile)")
    channels_last: bool = param(False, help="CUDA: keep conv weights/activations in channels-last "
                                "(NHWC) layout, faster for bf16/fp16 convs on tensor cores")
    eval_batches: int | None = param(8, ge=1, help="validation batches per evaluation (null: whole split)")
    eval_batch_size: int | None = param(None, ge=1, help="batch size for evaluation (null: batch_size)")
    final_eval_full: bool = param(True, help="evaluate the whole val and test splits at the end")
    final_eval_best: bool = param(True, help="also score checkpoints/best.pt on the whole val and "
                                  "test splits at the end when it is not the last step (metrics.json "
                                  "best.val / best.test)")
    early_stopping_patience: int | None = param(None, ge=1, help="stop after this many evaluations "
                                                "without a better val monitor metric (null: off)")
    threads: int | None = param(None, ge=1, help="CPU threads of torch (null: the command line "
                                "picks: OMP_NUM_THREADS if set, else the CPUs other jobs leave free; "
                                "`genlab train --threads N` sets it)")

    def __post_init__(self):
        if len(self.betas) != 2:
            raise ValueError(f"betas: expected two numbers, got {len(self.betas)}")


@dataclass
class LogConfig:
    every: int = param(50, ge=1, help="steps between training-scalar logs and progress updates")
    eval_every: int = param(500, ge=0, help="steps between evaluations on val (0: only at the end)")
    render_every: int = param(500, ge=0, help="steps between renders to TensorBoard (0: only at the end)")
    checkpoint_every: int = param(500, ge=0, help="steps between checkpoints (0: only at the end)")
    keep_checkpoints: int = param(3, ge=1, help="step checkpoints kept, the newest (older ones are "
                                  "deleted; each holds the weights and the optimizer state, about 3x "
                                  "the weights with Adam; best.pt, the weights alone, is kept besides)")
    histograms: bool = param(True, help="weight and activation histograms at each render")
    render_examples: int = param(64, ge=1, help="validation examples used for renders")
    probe_train: int = param(1000, ge=0, help="online linear probe at each evaluation of a family "
                             "that exports an encoder, on labelled data: a logistic regression "
                             "fit on the frozen features of this many training examples "
                             "(eval/probe_acc, eval/probe_lesion_auc; 0: off)")
    probe_val: int = param(500, ge=1, help="validation examples the online probe is scored on")


@dataclass
class _Head:
    """The recipe's fixed top level; `data` and `model` are checked against registered Configs."""

    family: str = param(help="model family (see `genlab list`)")
    data: dict[str, Any] = param(help="data set: `name` plus its options (see `genlab list`)")
    name: str | None = param(None, help="run name: runs/<name>/<timestamp>/ (default: file stem)")
    description: str = param("", help="one line on what this recipe is for")
    seed: int = param(0, ge=0, help="seed for python, numpy, torch and the data")
    model: dict[str, Any] | None = param(None, help="the family's options (see `genlab list`)")
    train: TrainConfig = param(default_factory=TrainConfig, help="the training loop")
    log: LogConfig = param(default_factory=LogConfig,
                           help="cadences of logs, evaluations, renders, checkpoints")


@dataclass
class Recipe:
    name: str
    family: str
    seed: int
    description: str
    data_name: str
    data: Any  # the data set's Config instance
    model: Any  # the family's Config instance
    train: TrainConfig
    log: LogConfig

    def to_dict(self) -> dict:
        return {"name": self.name, "description": self.description, "family": self.family,
                "seed": self.seed, "data": {"name": self.data_name, **schema.to_dict(self.data)},
                "model": schema.to_dict(self.model), "train": schema.to_dict(self.train),
                "log": schema.to_dict(self.log)}

    def hparams(self) -> dict:
        """Flat scalar settings for TensorBoard's HParams tab."""
        flat: dict[str, Any] = {"family": self.family, "data": self.data_name, "seed": self.seed}
        for prefix, section in (("data", self.data), ("model", self.model), ("train", self.train)):
            for f in fields(section):
                v = getattr(section, f.name)
                if is_dataclass(v):
                    for g in fields(v):
                        flat[f"{prefix}.{f.name}.{g.name}"] = getattr(v, g.name)
                elif isinstance(v, (int, float, str, bool)):
                    flat[f"{prefix}.{f.name}"] = v
                elif isinstance(v, (list, tuple)):
                    flat[f"{prefix}.{f.name}"] = str(list(v))
        return flat


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def from_mapping(data: dict, overrides: list[str] = (), *, where: str | None = None,
                 default_name: str = "recipe") -> Recipe:
    """Validate a recipe mapping (with `--set` overrides applied) into a Recipe."""
    overrides = list(overrides)
    overridden = schema.override_keys(overrides)
    raw = schema.apply_overrides(data, overrides)
    try:
        head = schema.build(_Head, raw)
        name = head.name or default_name
        if not _NAME.match(name):
            raise RecipeError("name", f"expected letters, digits, '_', '.' or '-', got {name!r}")
        family_cls = get_family(head.family)
        data_raw = dict(head.data)
        data_name = data_raw.pop("name", None)
        if not isinstance(data_name, str):
            raise RecipeError("data.name", "missing data set name (e.g. `name: brain`; see `genlab list`)")
        data_cls = get_dataset(data_name)
        data_cfg = schema.build(data_cls.Config, data_raw, "data")
        model_cfg = schema.build(family_cls.Config, head.model or {}, "model")
    except RecipeError as e:
        raise schema.blame(e, overridden, where) from None
    return Recipe(name=name, family=head.family, seed=head.seed, description=head.description,
                  data_name=data_name, data=data_cfg, model=model_cfg, train=head.train, log=head.log)


def load_recipe(path: str | Path, overrides: list[str] = ()) -> Recipe:
    """Load and validate a recipe file; every problem is a RecipeError naming file and key."""
    path = Path(path)
    data = schema.load_yaml(path)
    return from_mapping(data, overrides, where=str(path), default_name=path.stem)


def recipe_text(recipe: Recipe, notes: list[str] = ()) -> str:
    """The fully resolved recipe as YAML (defaults filled, overrides applied), reloadable as is;
    `notes` become comment lines under the header (e.g. what a resume changed, and when)."""
    text = yaml.safe_dump(recipe.to_dict(), sort_keys=False, default_flow_style=None)
    comments = "".join(f"# {n}\n" for n in notes)
    return "# fully resolved recipe: defaults filled in, --set overrides applied\n" + comments + text


def save_recipe(recipe: Recipe, path: Path) -> None:
    """Write `recipe_text(recipe)` to `path`."""
    Path(path).write_text(recipe_text(recipe))
