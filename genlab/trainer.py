"""The one training loop every family shares.

The trainer owns seeding, device and precision, the step loop and its cadences (log, eval,
render, checkpoint), the finite-loss guard, progress, TensorBoard, full-state checkpoints and
the encoder export. A family only builds its optimizers and takes one step (see families/base.py).
"""
from __future__ import annotations

import contextlib
import math
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

from genlab import checkpoint as ckpt
from genlab.data.sampler import IndexSampler, eval_batches
from genlab.errors import GenlabError, NonFiniteLossError
from genlab.export import save_encoder
from genlab.optim import build_scheduler
from genlab.recipe import Recipe, save_recipe
from genlab.registry import get_dataset, get_family
from genlab.tracking import Tracker, new_run_dir, plot_curves, write_json

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def select_device(name: str) -> torch.device:
    """'auto' picks cuda, then mps, then cpu; an explicit device that is absent is an error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise GenlabError("device 'cuda' was asked for but torch sees no CUDA GPU (use --device auto or cpu)")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise GenlabError("device 'mps' was asked for but is not available (use --device auto or cpu)")
    return torch.device(name)


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

    def __init__(self, trainer: "Trainer"):
        self.t = trainer
        self.step = 0
        self.device = trainer.device
        self.grad_norms: dict[str, torch.Tensor] = {}
        dtype = PRECISIONS[trainer.recipe.train.precision]
        self._autocast_kw = dict(device_type=trainer.device.type, dtype=dtype, enabled=dtype is not None)

    def autocast(self):
        if not self._autocast_kw["enabled"]:
            return contextlib.nullcontext()
        return torch.autocast(**self._autocast_kw)

    def update(self, name: str, loss: torch.Tensor) -> None:
        opt, scaler = self.t.optimizers[name], self.t.scalers[name]
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
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
        self.recipe, self.quiet = recipe, quiet
        tc = recipe.train
        seed_everything(recipe.seed)
        self.device = select_device(device or tc.device)
        if self.device.type == "cpu":
            torch.use_deterministic_algorithms(True, warn_only=True)
        if tc.precision == "fp16" and self.device.type == "cpu":
            self._say("warning: fp16 on CPU is slow and rarely useful; bf16 is the CPU choice")

        # Build everything that can fail on user input before a run directory exists.
        data_cls = get_dataset(recipe.data_name)
        self.data = data_cls(recipe.data, recipe.seed, self.device)
        family_cls = get_family(recipe.family)
        self.model = family_cls(recipe.model, self.data.info).to(self.device)
        self.optimizers = self.model.configure_optimizers(tc)
        self.schedulers = {k: build_scheduler(o, tc) for k, o in self.optimizers.items()}
        self.scalers = {k: torch.amp.GradScaler(self.device.type, enabled=tc.precision == "fp16")
                        for k in self.optimizers}
        n_train = self.data.size("train")
        if n_train < tc.batch_size:
            raise GenlabError(f"train.batch_size: {tc.batch_size} is larger than the training split "
                              f"({n_train} examples)")
        self.sampler = IndexSampler(n_train, tc.batch_size, recipe.seed)
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
            self.run_dir = new_run_dir(out_root, recipe.name, tag)
            save_recipe(recipe, self.run_dir / "recipe.yaml")
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.figures = self.run_dir / "figures"
        self.tracker = Tracker(self.run_dir)
        if progress is None:
            progress = sys.stderr.isatty() and not quiet
        self.progress = progress

    # -- helpers ---------------------------------------------------------------------------------
    def _say(self, msg: str) -> None:
        if not self.quiet:
            print(msg, flush=True)

    def _to_device(self, batch: dict) -> dict:
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
        path = ckpt.step_path(self.ckpt_dir, self.step)
        ckpt.atomic_save(self._state(), path)
        ckpt.prune(self.ckpt_dir, self.recipe.log.keep_checkpoints)
        return path

    def _restore(self) -> None:
        for stale in (self.run_dir / "checkpoints").glob(".*.tmp"):  # a write cut short by a kill
            stale.unlink(missing_ok=True)
        state, path = ckpt.load_latest(self.run_dir / "checkpoints", map_location=self.device)
        self.model.load_state_dict(state["model"])
        for k, o in self.optimizers.items():
            o.load_state_dict(state["optimizers"][k])
        for k, s in self.schedulers.items():
            s.load_state_dict(state["schedulers"][k])
        for k, s in self.scalers.items():
            s.load_state_dict(state["scalers"][k])
        self.sampler.load_state_dict(state["sampler"])
        ckpt.set_rng_state(state["rng"])
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
        """
        tc = self.recipe.train
        bs = tc.eval_batch_size or tc.batch_size
        sums: dict[str, torch.Tensor] = {}
        collected: dict[str, list[torch.Tensor]] = {}
        count = 0
        self.model.eval()
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            limit = None if max_batches is None else max_batches * bs
            for idx in eval_batches(self.data.size(split), bs, limit=limit):
                out = self.model.evaluate(self._batch(split, idx))
                n = len(idx)
                for k, v in out.items():  # tensors or floats
                    v = torch.as_tensor(v).detach()
                    if v.dim() == 0:
                        sums[k] = sums.get(k, 0.0) + v.float() * n
                    else:
                        collected.setdefault(k, []).append(v)
                count += n
            metrics = {k: (v / max(count, 1)).item() for k, v in sums.items()}
            if collected and hasattr(self.model, "summarize"):
                metrics.update(self.model.summarize({k: torch.cat(v) for k, v in collected.items()}))
        self.model.train()
        return metrics

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
        from genlab.render import save_png

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
                batch = (self._batch("train", idx) if getattr(self.model, "uses_train_batches", True)
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
                    means = {k: (v.float() / n_acc).item() for k, v in sums.items()}
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

    def _log_train(self, means: dict[str, float], sps: float, bar) -> None:
        self.tracker.scalars(means, self.step, "train/")
        lrs = {f"lr/{k}": o.param_groups[0]["lr"] for k, o in self.optimizers.items()}
        charts = {"samples_per_s": sps, **lrs}
        env_steps = getattr(self.model, "env_steps_per_step", None)  # RL families: env steps/s
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
        result = {
            "recipe": self.recipe.name, "family": self.recipe.family, "data": self.recipe.data_name,
            "seed": self.recipe.seed, "steps": self.step, "device": str(self.device),
            "stopped_early": self.stopped_early,
            "val": final_val, "test": final_test,
            "best": {"monitor": self.model.monitor[0], "value": self.best},
            "train": {k: v[-1][1] for k, v in self.history.items() if k.startswith("train/")},
        }
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
        self._say(f"run written to {self.run_dir}")
        return result

    def export(self) -> Path | None:
        if not hasattr(self.model, "encoder_spec"):
            return None
        return save_encoder(self.model.encoder_spec(), self.run_dir / "export",
                            family=self.recipe.family, info=self.data.info,
                            recipe_name=self.recipe.name, step=self.step)

    def _evolution_figures(self) -> None:
        from genlab.render import save_png, side_by_side

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
