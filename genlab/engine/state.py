"""A training run's full state in and out of checkpoints (checkpoints.py holds the file format).

A step checkpoint holds everything an exact resume needs: the model, every optimizer, scheduler
and gradient scaler, the data sampler's position, the random streams, the logged history and the
best-checkpoint bookkeeping; under DDP also each rank's own random stream and rank-local buffers.
The keys below are the checkpoint format: checkpoints written before must keep loading.

`t` is the Trainer (genlab.engine.trainer); these functions read and set its attributes.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch

from genlab.core.errors import GenlabError, NonFiniteLossError
from genlab.engine import checkpoints as ckpt


def capture(t) -> dict:
    """The trainer's full state as a plain dict (no pickled objects)."""
    return {
        "format": "genlab-checkpoint", "step": t.step,
        "model": t.model.state_dict(),
        "optimizers": {k: o.state_dict() for k, o in t.optimizers.items()},
        "schedulers": {k: s.state_dict() for k, s in t.schedulers.items()},
        "scalers": {k: s.state_dict() for k, s in t.scalers.items()},
        "sampler": t.sampler.state_dict(),
        "rng": ckpt.rng_state(),
        "history": t.history, "best": t.best, "evals_since_best": t.evals_since_best,
    }


def save(t) -> Path:
    """Write checkpoints/step-<step>.pt and prune old ones. Rank 0 writes; under DDP every rank
    must call this (it gathers rank-local state)."""
    path = ckpt.step_path(t.ckpt_dir, t.step)
    ranks = t.dist.gather_rank_local(t.model)
    if t.dist.is_main:
        state = capture(t)
        if t.dist.enabled:
            state["world_size"], state["ranks"] = t.dist.world_size, ranks
        ckpt.atomic_save(state, path)
        ckpt.prune(t.ckpt_dir, t.recipe.log.keep_checkpoints)
    return path


def restore(t) -> Path:
    """Load the newest readable checkpoint of t.run_dir into the trainer; returns its path.

    Rank 0 reads and sends (no shared filesystem needed across nodes), after removing what a
    kill cut short: hidden `.*.tmp` files of an unfinished write (this run is being resumed,
    so nothing else is writing them)."""
    state = path = None
    ckpt_dir = Path(t.run_dir) / "checkpoints"
    if t.dist.is_main:
        for stale in ckpt_dir.glob(".*.tmp"):
            stale.unlink(missing_ok=True)
        try:
            state, path = ckpt.load_latest(ckpt_dir, map_location="cpu")
        except Exception as e:  # noqa: BLE001 - handed to every rank, raised on every rank
            state, path = e, None
    if t.dist.enabled:
        state, path = t.dist.broadcast_object((state, path))
    if isinstance(state, Exception):
        raise state
    t.model.load_state_dict(state["model"])
    for k, o in t.optimizers.items():
        o.load_state_dict(state["optimizers"][k])
    for k, s in t.schedulers.items():
        s.load_state_dict(state["schedulers"][k])
    for k, s in t.scalers.items():
        s.load_state_dict(state["scalers"][k])
    t.sampler.load_state_dict(state["sampler"])
    ckpt.set_rng_state(state["rng"])
    t.dist.restore_rank_local(state, t.model, t.recipe.seed)
    t.step, t.history, t.best = state["step"], state["history"], state["best"]
    t.evals_since_best = state.get("evals_since_best", 0)
    return path


def finite(model: torch.nn.Module) -> bool:
    """Whether every floating-point parameter and buffer of `model` is finite."""
    return all(bool(torch.isfinite(v).all()) for v in model.state_dict().values()
               if v.is_floating_point())


def nonfinite_error(t, bad: int) -> NonFiniteLossError:
    """The error that stops a run whose loss was first non-finite at (0-based) step `bad`.

    Checkpoint `step-<bad>` holds the weights that loss came from: a resume from it meets the
    same loss whatever it overrides, so rank 0 sets it aside (renamed to `.pt.nonfinite`, kept
    for inspection) and the message names the newest checkpoint before it."""
    spoiled = ckpt.step_path(t.ckpt_dir, bad)
    aside = ""
    if t.dist.is_main and spoiled.is_file():
        spoiled.replace(spoiled.with_name(spoiled.name + ".nonfinite"))
        aside = f" (step {bad}'s checkpoint, whose weights gave it, is set aside as .nonfinite)"
    good = ckpt.list_step_checkpoints(t.ckpt_dir)
    where = (f"the last good checkpoint is {good[0]} (resume with `genlab train --resume "
             f"{t.run_dir} --set train.lr=...` with a lower lr, or with train.grad_clip set)"
             if good else "no checkpoint before it to resume from: start a new run with a lower "
             "train.lr or with train.grad_clip set")
    return NonFiniteLossError(f"non-finite loss (NaN or Inf) at step {bad + 1}{aside}; training "
                              f"stopped and nothing after it was saved; {where}")


def note_eval(t, metrics: dict[str, float]) -> None:
    """Best-checkpoint bookkeeping after an evaluation: a better value of the family's monitor
    becomes t.best and checkpoints/best.pt (rank 0 writes); otherwise t.evals_since_best (what
    early stopping counts) grows. A missing or non-finite value changes nothing."""
    name, mode = t.model.monitor
    value = metrics.get(name)
    if value is None or not math.isfinite(value):
        return
    better = t.best is None or (value < t.best if mode == "min" else value > t.best)
    t.evals_since_best = 0 if better else t.evals_since_best + 1
    if better:
        t.best = value
        if t.dist.is_main:
            ckpt.atomic_save({"format": "genlab-best", "step": t.step, "monitor": name,
                              "value": value, "model": t.model.state_dict()},
                             t.ckpt_dir / "best.pt")


def interrupted(t) -> None:
    """Ctrl-C: keep what can be kept and say how to continue (always raises GenlabError)."""
    t.console.close_bar()
    t.tracker.close()
    good = ckpt.list_step_checkpoints(t.ckpt_dir)
    kept = f"the newest checkpoint is {good[0]}" if good else "no checkpoint was written"
    if t.dist.enabled:  # the other ranks may be anywhere: no collective, no new save
        raise GenlabError(f"interrupted near step {t.step}; {kept}; continue with the "
                          f"same launch and `--resume {t.run_dir}`") from None
    if t._mid_step:  # a step half applied is never saved
        raise GenlabError(f"interrupted during step {t.step + 1}; {kept}; continue with "
                          f"`genlab train --resume {t.run_dir}`") from None
    t._check_finite()
    path = t.save_checkpoint()
    raise GenlabError(f"interrupted at step {t.step}; saved {path}; continue with "
                      f"`genlab train --resume {t.run_dir}`") from None
