"""What a resumed run may change: `genlab train --resume RUN --set KEY=VALUE`.

A run resumes with its own recipe.yaml. Overrides given on resume are compared with it:

- keys that shape what the checkpoints hold (family, model.*, data.*, seed, name,
  train.batch_size / optimizer / precision) cannot change: `changes` refuses them with one
  line, before anything is built or written;
- everything else takes effect from the step the run resumes at: the loop reads the recipe
  (train.steps, grad_clip, early stopping, eval settings, log.* cadences), and `apply` puts the
  optimizer settings into the restored optimizers and schedulers, which would otherwise bring
  back the checkpoint's learning rate. Each change is said in the log and recorded as a comment
  in recipe.yaml ("resumed from step N: train.lr 1e+15 -> 0.001"), whose values become the new
  ones, so a later resume continues with them.

The learning rate the recipe gives always wins over the checkpoint's (the two only differ when
the recipe changed it); a healthy resume changes nothing and continues bit for bit.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from genlab.core.errors import GenlabError
from genlab.core.files import atomic_write_bytes
from genlab.core.recipe import Recipe, load_recipe, recipe_text

#: train.* keys a resume may change (all of log.* may change too, and `description`)
MUTABLE_TRAIN = frozenset({
    "steps", "lr", "weight_decay", "betas", "momentum", "nesterov", "schedule", "warmup_steps",
    "min_lr_ratio", "step_size", "gamma", "grad_clip", "device", "compile", "channels_last",
    "eval_batches", "eval_batch_size", "final_eval_full", "final_eval_best",
    "early_stopping_patience", "threads",
})
#: train.* keys the learning rate at a step depends on (through the scheduler's lambda)
SCHEDULE = frozenset({"lr", "schedule", "warmup_steps", "min_lr_ratio", "step_size", "gamma",
                      "steps"})
#: train.* key -> the optimizer param-group entries it sets (SGD's nesterov needs momentum > 0)
GROUP_KEYS = {"weight_decay": ("weight_decay",), "betas": ("betas",),
              "momentum": ("momentum", "nesterov"), "nesterov": ("momentum", "nesterov")}

Change = tuple[str, Any, Any]  # (dotted key, value in the run's recipe.yaml, new value)


def _flat(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(_flat(v, key + ".") if isinstance(v, dict) else {key: v})
    return out


def _mutable(key: str) -> bool:
    section, _, rest = key.partition(".")
    return key == "description" or section == "log" or (section == "train" and rest in MUTABLE_TRAIN)


def show(value: Any) -> str:
    """A value on one short line: 1e+15, 0.001, [0.5, 0.999], null."""
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(show(v) for v in value) + "]"
    return "null" if value is None else " ".join(str(value).split())


def changes(run_dir: Path, recipe: Recipe) -> list[Change]:
    """What `recipe` changes from the run's recipe.yaml, in recipe order. GenlabError (one line,
    naming the keys) if any of them cannot change on resume."""
    saved = _flat(load_recipe(Path(run_dir) / "recipe.yaml").to_dict())
    new = _flat(recipe.to_dict())
    keys = list(new) + [k for k in saved if k not in new]
    diff = [(k, saved.get(k), new.get(k)) for k in keys if saved.get(k) != new.get(k)]
    frozen = [c for c in diff if not _mutable(c[0])]
    if frozen:
        key, old, value = frozen[0]
        more = f" (and {', '.join(c[0] for c in frozen[1:])})" if len(frozen) > 1 else ""
        raise GenlabError(f"{key}{more}: cannot change when resuming (the run has {show(old)}, "
                          f"asked {show(value)}); its checkpoints depend on it: start a new run "
                          f"to change it")
    return diff


def snapshot(t) -> dict[str, tuple[list[dict], list[float]]]:
    """Before restoring: what the recipe gives each optimizer (param-group settings, and the
    scheduler's base learning rates), which the checkpoint is about to overwrite."""
    keys = {k for ks in GROUP_KEYS.values() for k in ks}
    return {name: ([{k: g[k] for k in keys if k in g} for g in opt.param_groups],
                   list(t.schedulers[name].base_lrs))
            for name, opt in t.optimizers.items()}


def apply(t, diff: list[Change], fresh: dict) -> None:
    """After restoring at step t.step: the changed settings into the optimizers and schedulers,
    one log line each, and recipe.yaml rewritten with them (rank 0)."""
    step, steps = t.step, t.recipe.train.steps
    if steps < step:
        raise GenlabError(f"train.steps: {steps} is below step {step}, where the run resumes")
    names = {k.partition(".")[2] for k, _, _ in diff if k.startswith("train.")}
    for k, old, new in diff:
        t.console.say(f"resume: {k} {show(old)} -> {show(new)} from step {step}")
    for name, opt in t.optimizers.items():
        groups, base = fresh[name]
        for entry in {e for key in names & GROUP_KEYS.keys() for e in GROUP_KEYS[key]}:
            for g, f in zip(opt.param_groups, groups):
                if entry in f:
                    g[entry] = f[entry]
        sched = t.schedulers[name]
        if sched.base_lrs != base and "lr" not in names:  # e.g. recipe.yaml edited by hand
            t.console.say(f"resume: optimizer {name!r} base lr {show(sched.base_lrs)} -> "
                          f"{show(base)} (the recipe's) from step {step}")
        if sched.base_lrs != base or names & SCHEDULE:
            _set_lrs(opt, sched, base)
    if diff and t.dist.is_main:
        _record(t.run_dir / "recipe.yaml", t.recipe, step, diff)


def _set_lrs(opt: torch.optim.Optimizer, sched, base: list[float]) -> None:
    """Base learning rates `base`, and each group's lr at the scheduler's current step, as a
    scheduler built with them and stepped to here would hold."""
    sched.base_lrs = list(base)
    for g, b, factor in zip(opt.param_groups, base, sched.lr_lambdas):
        g["initial_lr"] = b
        lr = b * factor(sched.last_epoch)
        if isinstance(g["lr"], torch.Tensor):
            g["lr"].fill_(lr)
        else:
            g["lr"] = lr
    sched._last_lr = [g["lr"] for g in opt.param_groups]


def _record(path: Path, recipe: Recipe, step: int, diff: list[Change]) -> None:
    """recipe.yaml with the new values, its earlier resume notes and one for this resume."""
    notes = [line[2:] for line in path.read_text().splitlines() if line.startswith("# resumed ")]
    notes.append(f"resumed from step {step}: "
                 + ", ".join(f"{k} {show(old)} -> {show(new)}" for k, old, new in diff))
    atomic_write_bytes(path, recipe_text(recipe, notes).encode())
