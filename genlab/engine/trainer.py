"""The one training loop every family shares.

The trainer owns seeding, device and precision, the step loop and its cadences (log, eval,
render, checkpoint), the finite-loss guard, progress, TensorBoard, full-state checkpoints and
the encoder export. A family only builds its optimizers and takes one step (see families/base.py).
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

from genlab.core.devices import select_device
from genlab.core.errors import GenlabError, NonFiniteLossError
from genlab.core.recipe import Recipe, save_recipe
from genlab.core.registry import get_dataset, get_family
from genlab.data.sampler import IndexSampler, derive_seed, eval_batches
from genlab.engine import checkpoints as ckpt
from genlab.engine.distributed import (
    BATCH_NORMS,
    Dist,
    all_gather_cat,
    rank_local_buffers,
    warn_world_change,
)
from genlab.engine.tracking import Tracker, new_run_dir, plot_curves, write_json
from genlab.families.export import save_encoder
from genlab.nn.optim import build_scheduler

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def load_png(path: Path) -> torch.Tensor:
    """A PNG as a (1|3, H, W) float tensor in [0, 1]."""
    from PIL import Image

    with Image.open(path) as im:
        a = np.asarray(im.convert("L" if im.mode in ("L", "I", "1") else "RGB"), dtype=np.float32) / 255.0
    t = torch.from_numpy(a)
    return t.unsqueeze(0) if t.dim() == 2 else t.permute(2, 0, 1)


class _StepContext:
    """What a family's training_step sees: autocast, and update(name, loss) for each optimizer."""

    def __init__(self, trainer: Trainer):
        self.t = trainer
        self.step = 0
        self.device = trainer.device
        self.rank, self.world_size = trainer.dist.rank, trainer.dist.world_size
        self.grad_norms: dict[str, torch.Tensor] = {}
        dtype = PRECISIONS[trainer.recipe.train.precision]
        self._autocast_kw = {"device_type": trainer.device.type, "dtype": dtype, "enabled": dtype is not None}

    def autocast(self):
        if not self._autocast_kw["enabled"]:
            return contextlib.nullcontext()
        return torch.autocast(**self._autocast_kw)

    def all_gather_cat(self, t: torch.Tensor) -> torch.Tensor:
        return all_gather_cat(t)  # the global batch under DDP; t itself for one process

    def update(self, name: str, loss: torch.Tensor) -> None:
        opt, scaler = self.t.optimizers[name], self.t.scalers[name]
        # under DDP the gradients are views of flat all_reduce buckets: zero them in place
        opt.zero_grad(set_to_none=not self.t.dist.enabled)
        scaler.scale(loss).backward()
        # Data parallel: every rank applies the same, rank-averaged gradient (no-op for one process).
        self.t.dist.average_gradients([p for g in opt.param_groups for p in g["params"]])
        clip = self.t.recipe.train.grad_clip
        if clip:
            scaler.unscale_(opt)
            params = [p for g in opt.param_groups for p in g["params"] if p.grad is not None]
            self.grad_norms[name] = torch.nn.utils.clip_grad_norm_(params, clip)
        scaler.step(opt)
        scaler.update()


class Trainer:
    """Builds data, model and optimizers from a recipe and runs (or resumes) the loop.

    `resume_dir` continues an existing run in place from its newest readable checkpoint.
    `stop_at` ends the loop after that step without any final work, exactly as a kill would
    (used by tests to check that kill-and-resume equals an uninterrupted run).
    """

    def __init__(self, recipe: Recipe, *, out_root: Path = Path("runs"), device: str | None = None,
                 resume_dir: Path | None = None, tag: str | None = None, progress: bool | None = None,
                 quiet: bool = False):
        self.recipe = recipe
        tc = recipe.train
        # torchrun's processes join one group here; a single process gets a no-op Dist.
        self.dist = Dist.from_env(device or tc.device)
        self.quiet = quiet or not self.dist.is_main  # only rank 0 talks, logs and writes
        seed_everything(recipe.seed)
        self.device = self.dist.device(select_device(device or tc.device))
        if self.device.type == "cpu":
            torch.use_deterministic_algorithms(True, warn_only=True)
        if tc.precision == "fp16" and self.device.type == "cpu":
            self._say("warning: fp16 on CPU is slow and rarely useful; bf16 is the CPU choice")

        # Build everything that can fail on user input before a run directory exists.
        data_cls = get_dataset(recipe.data_name)
        self.data = data_cls(recipe.data, recipe.seed, self.device)
        family_cls = get_family(recipe.family)
        self.model = family_cls(recipe.model, self.data.info).to(self.device)
        if tc.channels_last and self.device.type == "cuda":
            self.model = self.model.to(memory_format=torch.channels_last)
        # The family sees the per-rank batch (what one process puts through its nets per step);
        # the recipe's train.batch_size is the global batch.
        self.rank_batch = self.dist.per_rank_batch(tc.batch_size)
        self.optimizers = self.model.configure_optimizers(dataclasses.replace(tc, batch_size=self.rank_batch))
        self.schedulers = {k: build_scheduler(o, tc) for k, o in self.optimizers.items()}
        self.scalers = {k: torch.amp.GradScaler(self.device.type, enabled=tc.precision == "fp16")
                        for k in self.optimizers}
        n_train = self.data.size("train")
        if n_train < tc.batch_size:
            raise GenlabError(f"train.batch_size: {tc.batch_size} is larger than the training split "
                              f"({n_train} examples)")
        self.sampler = IndexSampler(n_train, self.rank_batch, recipe.seed,
                                    rank=self.dist.rank, world_size=self.dist.world_size)
        if self.dist.enabled:
            self.model.set_rank(self.dist.rank, self.dist.world_size)
            # Same init everywhere (seeded alike, and made sure of), then each rank its own random
            # stream for what is rank-local by design: corruption noise, Gibbs chains, exploration.
            self.dist.broadcast_module(self.model)
            seed_everything(derive_seed(recipe.seed, "rank", self.dist.rank))
        if tc.compile:
            self._compile()
        self.ctx = _StepContext(self)
        self.step = 0
        self.history: dict[str, list[list[float]]] = {}
        self.best: float | None = None
        self.evals_since_best = 0
        self.stopped_early = False

        if resume_dir is not None:
            self.run_dir = Path(resume_dir)
            self._restore()
        else:
            run_dir = None
            if self.dist.is_main:
                run_dir = new_run_dir(out_root, recipe.name, tag)
                save_recipe(recipe, run_dir / "recipe.yaml")
            self.run_dir = Path(self.dist.broadcast_object(str(run_dir) if run_dir else None))
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.figures = self.run_dir / "figures"
        self.tracker = Tracker(self.run_dir, enabled=self.dist.is_main)
        if progress is None:
            progress = sys.stderr.isatty() and not self.quiet
        self.progress = progress and self.dist.is_main

    def _compile(self) -> None:
        """torch.compile each top-level submodule in place (state_dict keys unchanged); where
        compilation fails (no compiler toolchain, an unsupported op), warn and run eagerly."""
        import torch._dynamo

        torch._dynamo.config.suppress_errors = True  # a graph that cannot compile runs eagerly
        try:
            probe = torch.compile(lambda t: t * 2 + 1)
            probe(torch.ones(2, device=self.device))
        except Exception as e:  # noqa: BLE001 - any failure means: fall back, and say why
            self._say(f"warning: train.compile=true but torch.compile does not work here "
                      f"({type(e).__name__}: {str(e).splitlines()[0][:160]}); training eagerly")
            return
        for child in self.model.children():
            if any(True for _ in child.parameters()):
                child.compile()

    # -- helpers ---------------------------------------------------------------------------------
    def _say(self, msg: str) -> None:
        if not self.quiet:
            print(msg, flush=True)

    def _to_device(self, batch: dict) -> dict:
        if self.device.type == "cuda":  # page-locked host memory: the copy can overlap compute
            return {k: (v.pin_memory() if v.device.type == "cpu" else v).to(self.device, non_blocking=True)
                    for k, v in batch.items()}
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    def _batch(self, split: str, idx: torch.Tensor) -> dict:
        batch = self._to_device(self.data.get(split, idx))
        batch["index"] = idx.to(self.device)
        return batch

    def _record(self, tag: str, value: float) -> None:
        self.history.setdefault(tag, []).append([self.step, float(value)])

    # -- checkpoints -----------------------------------------------------------------------------
    def _state(self) -> dict:
        return {
            "format": "genlab-checkpoint", "step": self.step,
            "model": self.model.state_dict(),
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "schedulers": {k: s.state_dict() for k, s in self.schedulers.items()},
            "scalers": {k: s.state_dict() for k, s in self.scalers.items()},
            "sampler": self.sampler.state_dict(),
            "rng": ckpt.rng_state(),
            "history": self.history, "best": self.best, "evals_since_best": self.evals_since_best,
        }

    def save_checkpoint(self) -> Path:
        """Rank 0 writes; under DDP every rank must call this (it gathers rank-local state)."""
        path = ckpt.step_path(self.ckpt_dir, self.step)
        if self.dist.enabled:
            self.dist.broadcast_module(self.model, BATCH_NORMS)
            local = {"rng": ckpt.rng_state(), "buffers": rank_local_buffers(self.model)}
            ranks = self.dist.gather_objects(local)
        if self.dist.is_main:
            state = self._state()
            if self.dist.enabled:
                state["world_size"], state["ranks"] = self.dist.world_size, ranks
            ckpt.atomic_save(state, path)
            ckpt.prune(self.ckpt_dir, self.recipe.log.keep_checkpoints)
        return path

    def _restore(self) -> None:
        state = path = None
        if self.dist.is_main:  # rank 0 reads and sends: no shared filesystem needed across nodes
            for stale in (self.run_dir / "checkpoints").glob(".*.tmp"):  # a write cut short by a kill
                stale.unlink(missing_ok=True)
            try:
                state, path = ckpt.load_latest(self.run_dir / "checkpoints", map_location="cpu")
            except GenlabError as e:
                state, path = e, None
        if self.dist.enabled:
            state, path = self.dist.broadcast_object((state, path))
        if isinstance(state, Exception):
            raise state
        self.model.load_state_dict(state["model"])
        for k, o in self.optimizers.items():
            o.load_state_dict(state["optimizers"][k])
        for k, s in self.schedulers.items():
            s.load_state_dict(state["schedulers"][k])
        for k, s in self.scalers.items():
            s.load_state_dict(state["scalers"][k])
        self.sampler.load_state_dict(state["sampler"])
        ckpt.set_rng_state(state["rng"])
        saved_world = state.get("world_size", 1)
        if self.dist.enabled or saved_world > 1:
            ranks = state.get("ranks") or [{"rng": state["rng"]}]
            if self.dist.rank < len(ranks):  # this rank's own stream, replay buffer, chains
                mine = ranks[self.dist.rank]
                ckpt.set_rng_state(mine["rng"])
                if "buffers" in mine:
                    self.model.load_state_dict(mine["buffers"], strict=False)
            else:
                seed_everything(derive_seed(self.recipe.seed, "rank", self.dist.rank, state["step"]))
            if saved_world != self.dist.world_size and self.dist.is_main:
                warn_world_change(saved_world, self.dist.world_size)
        self.step, self.history, self.best = state["step"], state["history"], state["best"]
        self.evals_since_best = state.get("evals_since_best", 0)
        self._say(f"resumed from {path} at step {self.step}")

    # -- evaluation and renders ------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, split: str = "val", max_batches: int | None = None) -> dict[str, float]:
        """Metrics of the model over (part of) a split.

        Scalar outputs of the family's `evaluate(batch)` are averaged, weighted by batch size.
        Outputs with a batch dimension (e.g. probabilities and labels) are concatenated and
        handed to the family's optional `summarize(collected) -> dict[str, float]`, for metrics
        that need the whole split at once (ROC AUC, Frechet distance).

        Under DDP each rank evaluates its contiguous block of the same examples; sums, counts and
        the collected outputs are gathered so that every rank returns the same numbers as one
        process would (and so takes the same early-stopping and best-checkpoint decisions).
        """
        tc = self.recipe.train
        bs = tc.eval_batch_size or tc.batch_size
        sums: dict[str, torch.Tensor] = {}
        collected: dict[str, list[torch.Tensor]] = {}
        count = 0
        self.dist.broadcast_module(self.model, BATCH_NORMS)
        self.model.eval()
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            limit = None if max_batches is None else max_batches * bs
            for idx in eval_batches(self.data.size(split), bs, limit=limit,
                                    rank=self.dist.rank, world_size=self.dist.world_size):
                out = self.model.evaluate(self._batch(split, idx))
                n = len(idx)
                for k, v in out.items():  # tensors or floats
                    v = torch.as_tensor(v).detach()
                    if v.dim() == 0:
                        sums[k] = sums.get(k, 0.0) + v.float() * n
                    else:
                        collected.setdefault(k, []).append(v)
                count += n
            if self.dist.enabled:
                sums, collected, count = self._gather_eval(sums, collected, count)
            metrics = {k: (v / max(count, 1)).item() for k, v in sums.items()}
            if collected:
                metrics.update(self.model.summarize({k: torch.cat(v) for k, v in collected.items()}))
        self.model.train()
        return metrics

    def _gather_eval(self, sums: dict, collected: dict, count: int) -> tuple[dict, dict, int]:
        """Every rank's evaluation sums added, its collected outputs concatenated in rank order
        (= example order: the ranks hold consecutive blocks)."""
        mine = ({k: float(v) for k, v in sums.items()},
                {k: torch.cat(v).cpu() for k, v in collected.items()}, count)
        parts = self.dist.all_gather_objects(mine)
        total = {}
        for s, _, _ in parts:
            for k, v in s.items():
                total[k] = total.get(k, 0.0) + v
        keys = [k for _, c, _ in parts for k in c]
        coll = {k: [c[k].to(self.device) for _, c, _ in parts if k in c] for k in dict.fromkeys(keys)}
        return ({k: torch.tensor(v, dtype=torch.float64) for k, v in total.items()}, coll,
                sum(n for _, _, n in parts))

    def _render_batch(self) -> dict:
        n = min(self.recipe.log.render_examples, self.data.size("val"))
        return self._batch("val", torch.arange(n))

    def _frame_steps(self) -> set[int]:
        """First, middle and last render steps: kept as PNGs for a side-by-side evolution figure."""
        every, steps = self.recipe.log.render_every, self.recipe.train.steps
        points = sorted({0, *range(every, steps + 1, every), steps}) if every else [0, steps]
        mid = min(points, key=lambda s: abs(s - steps / 2))
        return {0, mid, steps}

    @torch.no_grad()
    def render(self) -> None:
        from genlab.viz.render import save_png

        if not self.dist.is_main:
            return
        self.model.eval()
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            batch = self._render_batch()
            images = self.model.renders(batch)
            hists = self.model.histograms(batch) if self.recipe.log.histograms else {}
        self.model.train()
        keep = self.step in self._frame_steps()
        for name, img in images.items():
            img = img.detach().float().cpu()
            self.tracker.image(f"renders/{name}", img, self.step)
            if keep:
                save_png(img, self.figures / "frames" / f"{name}-step{self.step:08d}.png")
        if self.recipe.log.histograms:
            for name, p in self.model.named_parameters():
                self.tracker.histogram(f"weights/{name}", p, self.step)
            for name, act in hists.items():
                self.tracker.histogram(f"activations/{name}", act, self.step)

    # -- the loop --------------------------------------------------------------------------------
    def _check_finite(self, first_bad: torch.Tensor) -> None:
        if self.dist.enabled:  # the earliest bad step of any rank stops every rank alike
            never = torch.iinfo(torch.long).max
            flag = torch.where(first_bad < 0, torch.full_like(first_bad, never), first_bad).clone()
            flag = self.dist.min_(flag)
            first_bad = torch.where(flag == never, torch.full_like(flag, -1), flag)
        bad = int(first_bad.item())
        if bad >= 0:
            good = ckpt.list_step_checkpoints(self.ckpt_dir)
            where = (f"the last good checkpoint is {good[0]} (resume with "
                     f"`genlab train --resume {self.run_dir}` after lowering train.lr or setting "
                     f"train.grad_clip)") if good else "no checkpoint had been written yet"
            raise NonFiniteLossError(f"non-finite loss (NaN or Inf) at step {bad + 1}; training "
                                     f"stopped and nothing after it was saved; {where}")

    def run(self, stop_at: int | None = None) -> dict:
        tc, lc = self.recipe.train, self.recipe.log
        model = self.model
        model.train()
        if self.step == 0:  # a fresh run: the recipe as text, and the untrained model's renders
            self.tracker.text("recipe", "```yaml\n" + (self.run_dir / "recipe.yaml").read_text() + "\n```")
            self.render()
        bar = None
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(total=tc.steps, initial=self.step, unit="step", dynamic_ncols=True)
        sums: dict[str, torch.Tensor] = {}
        n_acc = 0
        first_bad = torch.full((), -1, dtype=torch.long, device=self.device)
        t_last, t_extra, samples = time.perf_counter(), 0.0, 0  # t_extra: eval/render/ckpt time
        mid_step = False  # an interrupt inside a step may leave it half applied: never save that
        try:
            while self.step < tc.steps:
                mid_step = True
                idx = self.sampler.next_batch()
                # A family that makes its own experience (the DQN) sets uses_train_batches =
                # False: it gets the indices only, and no examples are built for nothing.
                batch = (self._batch("train", idx) if self.model.uses_train_batches
                         else {"index": idx.to(self.device)})
                self.ctx.step = self.step
                out = self.model.training_step(batch, self.ctx)
                for s in self.schedulers.values():
                    s.step()
                vals = torch.stack([v.detach().float() for v in out.values()])
                finite = torch.isfinite(vals).all()
                first_bad = torch.where((first_bad < 0) & ~finite, self.step, first_bad)
                for k, v in out.items():
                    sums[k] = sums[k] + v.detach() if k in sums else v.detach().clone()
                n_acc += 1
                samples += tc.batch_size
                self.step += 1
                mid_step = False
                if stop_at is not None and self.step >= stop_at:
                    return {}
                last = self.step == tc.steps
                if self.step % lc.every == 0 or last:
                    self._check_finite(first_bad)
                    means = self._mean_over_ranks({k: v.float() / n_acc for k, v in sums.items()})
                    sps = samples / max(time.perf_counter() - t_last - t_extra, 1e-9)
                    self._log_train(means, sps, bar)
                    sums, n_acc, samples = {}, 0, 0
                    t_last, t_extra = time.perf_counter(), 0.0
                t_extras_start = time.perf_counter()
                if (lc.eval_every and self.step % lc.eval_every == 0) or last:
                    metrics = self.evaluate("val", tc.eval_batches)
                    self._log_eval(metrics, bar)
                    patience = tc.early_stopping_patience
                    if patience and self.evals_since_best >= patience and not last:
                        self.stopped_early = True
                        self._say(f"early stopping at step {self.step}: no better val "
                                  f"{self.model.monitor[0]} in {patience} evaluations")
                        self._check_finite(first_bad)
                        self.save_checkpoint()
                        break
                if (lc.render_every and self.step % lc.render_every == 0) or last:
                    self.render()
                if (lc.checkpoint_every and self.step % lc.checkpoint_every == 0) or last:
                    self._check_finite(first_bad)
                    self.save_checkpoint()
                t_extra += time.perf_counter() - t_extras_start
                if bar is not None:
                    bar.update(1)
        except KeyboardInterrupt:
            if bar is not None:
                bar.close()
            self.tracker.close()
            if self.dist.enabled:  # the other ranks may be anywhere: no collective, no new save
                good = ckpt.list_step_checkpoints(self.ckpt_dir)
                kept = f"the newest checkpoint is {good[0]}" if good else "no checkpoint was written"
                raise GenlabError(f"interrupted near step {self.step}; {kept}; continue with the same "
                                  f"launch and `--resume {self.run_dir}`") from None
            if mid_step:
                good = ckpt.list_step_checkpoints(self.ckpt_dir)
                kept = f"the newest checkpoint is {good[0]}" if good else "no checkpoint was written"
                raise GenlabError(f"interrupted during step {self.step + 1}; {kept}; continue with "
                                  f"`genlab train --resume {self.run_dir}`") from None
            self._check_finite(first_bad)
            path = self.save_checkpoint()
            raise GenlabError(f"interrupted at step {self.step}; saved {path}; continue with "
                              f"`genlab train --resume {self.run_dir}`") from None
        finally:
            if bar is not None:
                bar.close()
        return self.finish()

    def _mean_over_ranks(self, values: dict[str, torch.Tensor]) -> dict[str, float]:
        if not values:
            return {}
        keys = list(values)  # the same insertion order on every rank
        stacked = torch.stack([values[k].detach().float().reshape(()) for k in keys])
        stacked = self.dist.sum_(stacked) / self.dist.world_size
        return dict(zip(keys, stacked.tolist()))

    def _log_train(self, means: dict[str, float], sps: float, bar) -> None:
        self.tracker.scalars(means, self.step, "train/")
        lrs = {f"lr/{k}": o.param_groups[0]["lr"] for k, o in self.optimizers.items()}
        charts = {"samples_per_s": sps, **lrs}
        env_steps = self.model.env_steps_per_step  # RL families: env steps/s
        if env_steps:
            charts["SPS"] = sps / self.recipe.train.batch_size * env_steps
        charts.update({f"grad_norm/{k}": v.item() for k, v in self.ctx.grad_norms.items()})
        self.tracker.scalars(charts, self.step, "charts/")
        for k, v in means.items():
            self._record(f"train/{k}", v)
        if bar is not None:
            bar.set_postfix({**{k: f"{v:.4g}" for k, v in list(means.items())[:3]},
                             "samples/s": f"{sps:.0f}"}, refresh=False)
        elif not self.quiet:
            items = "  ".join(f"{k} {v:.4g}" for k, v in means.items())
            self._say(f"step {self.step:>6}/{self.recipe.train.steps}  {items}  {sps:,.0f} samples/s")

    def _log_eval(self, metrics: dict[str, float], bar) -> None:
        self.tracker.scalars(metrics, self.step, "eval/")
        for k, v in metrics.items():
            self._record(f"eval/{k}", v)
        name, mode = self.model.monitor
        value = metrics.get(name)
        if value is not None and math.isfinite(value):
            better = self.best is None or (value < self.best if mode == "min" else value > self.best)
            self.evals_since_best = 0 if better else self.evals_since_best + 1
            if better:
                self.best = value
            if better and self.dist.is_main:
                ckpt.atomic_save({"format": "genlab-best", "step": self.step, "monitor": name,
                                  "value": value, "model": self.model.state_dict()},
                                 self.ckpt_dir / "best.pt")
        msg = "  ".join(f"{k} {v:.4g}" for k, v in metrics.items())
        (bar.write if bar is not None else self._say)(f"eval  step {self.step:>6}  {msg}")
        self.tracker.flush()

    # -- the end of a run ------------------------------------------------------------------------
    def finish(self) -> dict:
        tc = self.recipe.train
        final_val = self.evaluate("val", None if tc.final_eval_full else tc.eval_batches)
        final_test = self.evaluate("test", None if tc.final_eval_full else tc.eval_batches)
        best = {"monitor": self.model.monitor[0], "value": self.best}
        if tc.final_eval_best:
            best.update(self._evaluate_best())
        result = {
            "recipe": self.recipe.name, "family": self.recipe.family, "data": self.recipe.data_name,
            "seed": self.recipe.seed, "steps": self.step, "device": str(self.device),
            "world_size": self.dist.world_size, "stopped_early": self.stopped_early,
            "val": final_val, "test": final_test,
            "best": best,
            "train": {k: v[-1][1] for k, v in self.history.items() if k.startswith("train/")},
        }
        if not self.dist.is_main:
            self.dist.barrier()  # wait for rank 0's files, then leave the group together
            self.dist.close()
            return result
        export = self.export()
        if export is not None:
            result["export"] = str(export)
        write_json(self.run_dir / "metrics.json", result)
        plot_curves(self.history, self.figures / "curves.png")
        self._evolution_figures()
        self.tracker.hparams(self.recipe.hparams(), {f"val/{k}": v for k, v in final_val.items()}
                             | {f"test/{k}": v for k, v in final_test.items()})
        self.tracker.close()
        self._say("test  " + "  ".join(f"{k} {v:.4g}" for k, v in final_test.items()))
        if "test" in best:
            self._say(f"test of best.pt (step {best['step']}, chosen on val {best['monitor']}):  "
                      + "  ".join(f"{k} {v:.4g}" for k, v in best["test"].items()))
        self._say(f"run written to {self.run_dir}")
        self.dist.barrier()
        self.dist.close()
        return result

    def _evaluate_best(self) -> dict:
        """Full val and test metrics of checkpoints/best.pt when it is not the final weights.

        Selection on val, report on test: for a run whose monitor swings (DQN) the best
        checkpoint, not the last step, is what `genlab play` / `genlab eval` use, so its test
        score belongs in metrics.json. The final weights are put back afterwards (export,
        resume and the figures stay those of the last step)."""
        state = None
        if self.dist.is_main:  # rank 0 reads and sends, as in _restore
            path = self.ckpt_dir / "best.pt"
            if path.is_file():
                state = ckpt.safe_load(path, map_location="cpu")
        if self.dist.enabled:
            state = self.dist.broadcast_object(state)
        if state is None or state.get("step") == self.step:
            return {"step": self.step} if state is not None else {}
        last = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.model.load_state_dict(state["model"])
        try:
            return {"step": state["step"], "val": self.evaluate("val", None),
                    "test": self.evaluate("test", None)}
        finally:
            self.model.load_state_dict(last)

    def export(self) -> Path | None:
        if not self.model.can("encode"):
            return None
        return save_encoder(self.model.encoder_spec(), self.run_dir / "export",
                            family=self.recipe.family, info=self.data.info,
                            recipe_name=self.recipe.name, step=self.step)

    def _evolution_figures(self) -> None:
        from genlab.viz.render import save_png, side_by_side

        frames_dir = self.figures / "frames"
        if not frames_dir.is_dir():
            return
        by_name: dict[str, list[Path]] = {}
        for p in sorted(frames_dir.glob("*-step*.png")):
            by_name.setdefault(p.name.rsplit("-step", 1)[0], []).append(p)
        for name, paths in by_name.items():
            save_png(load_png(paths[-1]), self.figures / f"{name}.png")
            if len(paths) >= 2:
                labels = [f"step {int(p.stem.rsplit('-step', 1)[1])}" for p in paths]
                fig = side_by_side([load_png(p) for p in paths], labels, title=f"{self.recipe.name}: {name}")
                save_png(fig, self.figures / f"{name}_evolution.png", min_size=0)
