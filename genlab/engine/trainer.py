"""The one training loop every family shares.

The trainer owns seeding, device and precision, the step loop and its cadences (log, eval,
render, checkpoint), the finite-loss guard, progress and the end of a run. It hands the rest to
its neighbours: step.py (the context a family's step gets), evaluation.py (scoring a split),
state.py (the checkpointed state), renders.py (renders and figures), distributed.py (everything
DDP), tracking.py (TensorBoard, console lines, metrics.json).
A family only builds its optimizers and takes one step (see families/base.py).
"""
from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

import torch

from genlab.core.devices import select_device
from genlab.core.errors import GenlabError
from genlab.core.recipe import Recipe, save_recipe
from genlab.core.registry import get_dataset, get_family
from genlab.data.sampler import IndexSampler
from genlab.engine import evaluation, renders, resume, state
from genlab.engine.checkpoints import seed_everything
from genlab.engine.distributed import Dist
from genlab.engine.online_probe import OnlineProbe
from genlab.engine.step import StepContext, compile_model, resolve_precision
from genlab.engine.tracking import Console, LogWindow, Tracker, new_run_dir, write_outputs
from genlab.families.export import save_encoder
from genlab.nn.optim import build_scheduler, fit_warmup


class Trainer:
    """Builds data, model and optimizers from a recipe and runs (or resumes) the loop.
    `resume_dir` continues an existing run in place from its newest readable checkpoint."""

    def __init__(self, recipe: Recipe, *, out_root: Path = Path("runs"), device: str | None = None,
                 resume_dir: Path | None = None, tag: str | None = None,
                 progress: bool | None = None, quiet: bool = False):
        self.recipe, tc = recipe, recipe.train
        # What a resume's overrides change (refused at once if it cannot change mid-run)
        changed = resume.changes(resume_dir, recipe) if resume_dir is not None else []
        # torchrun's processes join one group here; a single process gets a no-op Dist.
        self.dist = Dist.from_env(device or tc.device)
        self.quiet = quiet or not self.dist.is_main  # only rank 0 talks, logs and writes
        if progress is None:
            progress = sys.stderr.isatty() and not self.quiet
        self.progress = progress and self.dist.is_main
        self.console = Console(self.quiet, self.progress)
        tc, note = fit_warmup(tc)  # a warm-up longer than the run is scaled down, and said so
        if note:
            self.recipe = recipe = dataclasses.replace(recipe, train=tc)
            self.console.say(note)
        if tc.threads:
            torch.set_num_threads(tc.threads)
        seed_everything(recipe.seed)
        self.device = self.dist.device(select_device(device or tc.device))
        if self.device.type == "cpu":
            torch.use_deterministic_algorithms(True, warn_only=True)
        if tc.precision == "fp16" and self.device.type == "cpu":
            self.console.say("warning: fp16 on CPU is slow and rarely useful; bf16 is the CPU "
                             "choice")
        self.precision, note = resolve_precision(tc.precision, self.device)
        if note:
            self.console.say(note)

        # Build everything that can fail on user input before a run directory exists.
        self.data = get_dataset(recipe.data_name)(recipe.data, recipe.seed, self.device)
        self.model = get_family(recipe.family)(recipe.model, self.data.info).to(self.device)
        if resume_dir is None:  # a fresh run: the family's one look at the data before step 0
            self.model.on_fit_start(self.data, self.device)
        if tc.channels_last and self.device.type == "cuda":
            self.model = self.model.to(memory_format=torch.channels_last)
        # The family sees the per-rank batch (what one process puts through its nets per step);
        # the recipe's train.batch_size is the global batch.
        self.rank_batch = self.dist.per_rank_batch(tc.batch_size)
        self.optimizers = self.model.configure_optimizers(
            dataclasses.replace(tc, batch_size=self.rank_batch))
        self.schedulers = {k: build_scheduler(o, tc) for k, o in self.optimizers.items()}
        self.scalers = {k: torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
                        for k in self.optimizers}
        n_train = self.data.size("train")
        if n_train < tc.batch_size:
            raise GenlabError(f"train.batch_size: {tc.batch_size} is larger than the training "
                              f"split ({n_train} examples)")
        self.sampler = IndexSampler(n_train, self.rank_batch, recipe.seed,
                                    rank=self.dist.rank, world_size=self.dist.world_size)
        self.dist.share_model(self.model, recipe.seed)
        if tc.compile:
            compile_model(self.model, self.device, self.console.say)
        self.ctx = StepContext(optimizers=self.optimizers, scalers=self.scalers, dist=self.dist,
                               device=self.device, precision=self.precision, grad_clip=tc.grad_clip)
        self.step = 0
        self.history: dict[str, list[list[float]]] = {}
        self.best: float | None = None
        self.evals_since_best = 0
        self.stopped_early = False
        self.probe = OnlineProbe.for_run(self.model, self.data, recipe.log, self.device)
        self._rendered_step: int | None = None  # the step of the newest render

        if resume_dir is not None:
            self.run_dir = Path(resume_dir)
            fresh = resume.snapshot(self)  # the recipe's optimizer settings, then the checkpoint
            self.console.say(f"resumed from {state.restore(self)} at step {self.step}")
            resume.apply(self, changed, fresh)  # the recipe's changes win over the checkpoint
        else:  # rank 0 makes the folder, with the recipe in it, and tells the others
            made = new_run_dir(out_root, recipe.name, tag) if self.dist.is_main else None
            if made is not None:
                save_recipe(recipe, made / "recipe.yaml")
            self.run_dir = Path(self.dist.broadcast_object(made and str(made)))
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.figures = self.run_dir / "figures"
        self.tracker = Tracker(self.run_dir, enabled=self.dist.is_main)

    # -- helpers ---------------------------------------------------------------------------------
    def _batch(self, split: str, idx: torch.Tensor) -> dict:
        return evaluation.load_batch(self.data, split, idx, self.device)

    def _record(self, tag: str, value: float) -> None:
        self.history.setdefault(tag, []).append([self.step, float(value)])

    def _due(self, every: int) -> bool:
        return bool(every) and self.step % every == 0 or self.step == self.recipe.train.steps

    # -- what the loop calls (each in its own module) --------------------------------------------
    def save_checkpoint(self) -> Path:
        """Rank 0 writes; under DDP every rank must call this (it gathers rank-local state)."""
        return state.save(self)

    def evaluate(self, split: str = "val", max_batches: int | None = None) -> dict[str, float]:
        """Metrics of the model over (part of) a split, the same on every rank (evaluation.py)."""
        tc = self.recipe.train
        return evaluation.evaluate(self.model, self.data, split,
                                   batch_size=tc.eval_batch_size or tc.batch_size,
                                   max_batches=max_batches, dist=self.dist, device=self.device)

    def evaluate_best(self) -> dict:
        """Full val and test metrics of checkpoints/best.pt, if it is not the final weights."""
        return evaluation.evaluate_best(self.model, self.ckpt_dir / "best.pt", step=self.step,
                                        dist=self.dist, evaluate_split=self.evaluate)

    def render(self, final: bool = False) -> None:
        """Renders to TensorBoard (rank 0); the first, middle and `final` ones kept as frames."""
        if not self.dist.is_main:
            return
        lc = self.recipe.log
        keep = final or self.step in renders.frame_steps(lc.render_every, self.recipe.train.steps)
        n = min(lc.render_examples, self.data.size("val"))
        renders.render(self.model, lambda: self._batch("val", torch.arange(n)), step=self.step,
                       device=self.device, tracker=self.tracker, histograms=lc.histograms,
                       frames_dir=self.figures / "frames" if keep else None)
        self._rendered_step = self.step

    def export(self) -> Path | None:
        if not self.model.can("encode"):
            return None
        return save_encoder(self.model.encoder_spec(), self.run_dir / "export",
                            family=self.recipe.family, info=self.data.info,
                            recipe_name=self.recipe.name, step=self.step)

    # -- the loop --------------------------------------------------------------------------------
    def run(self, stop_at: int | None = None) -> dict:
        """Train to train.steps (or until early stopping), then `finish()`: the metrics dict.
        `stop_at` ends the run after that step with no final work, exactly as a kill would
        (returns {}; tests use it to check that kill-and-resume equals an uninterrupted run)."""
        self._begin()
        try:
            while self.step < self.recipe.train.steps:
                self._train_step()
                if stop_at is not None and self.step >= stop_at:
                    return {}
                if self._after_step():
                    break
        except KeyboardInterrupt:
            state.interrupted(self)
        finally:
            self.console.close_bar()
        return self.finish()

    def _begin(self) -> None:
        if self.step == 0:  # a fresh run: the recipe as text, and the untrained model's renders
            recipe_text = (self.run_dir / "recipe.yaml").read_text()
            self.tracker.text("recipe", "```yaml\n" + recipe_text + "\n```")
            tc = self.recipe.train
            final = None if tc.final_eval_full else tc.eval_batches
            self.tracker.text("eval_scope", f"`eval/*`: {self._scope('val', tc.eval_batches)} at "
                              f"each evaluation; `hparams/val/*` and `hparams/test/*` (as in "
                              f"metrics.json): {self._scope('val', final)}, "
                              f"{self._scope('test', final)} at the end")
            self.render()
        self.model.train()
        self.console.open_bar(self.recipe.train.steps, self.step)
        self._window = LogWindow()
        self._first_bad = torch.full((), -1, dtype=torch.long, device=self.device)
        self._mid_step = False  # an interrupt inside a step may leave it half applied

    def _train_step(self) -> None:
        """One optimisation step of the family, its outputs summed into the log window."""
        self._mid_step = True
        idx = self.sampler.next_batch()
        # A family that makes its own experience (the DQN) sets uses_train_batches = False: it
        # gets the indices only, and no examples are built for nothing.
        batch = (self._batch("train", idx) if self.model.uses_train_batches
                 else {"index": idx.to(self.device)})
        self.ctx.step = self.step
        try:
            out = self.model.training_step(batch, self.ctx)
        except (RuntimeError, ValueError):
            # e.g. torch.bernoulli on a diverged RBM's NaN probabilities: stop as for a NaN loss
            self._check_finite_state()
            raise
        for s in self.schedulers.values():
            s.step()
        vals = torch.stack([v.detach().float() for v in out.values()])
        finite = torch.isfinite(vals).all()
        self._first_bad = torch.where((self._first_bad < 0) & ~finite, self.step, self._first_bad)
        self._window.add(out, self.recipe.train.batch_size)
        self.step += 1
        self._mid_step = False

    def _after_step(self) -> bool:
        """The cadence work after a step: log, evaluate, render, checkpoint. True when early
        stopping ends the run here."""
        lc = self.recipe.log
        if self._due(lc.every):
            self._log_train()
        started = time.perf_counter()
        if self._due(lc.eval_every) or self._due(lc.render_every):
            self._check_finite()  # a model past a non-finite loss is never scored nor drawn
        if self._due(lc.eval_every):
            self._log_eval(self.evaluate("val", self.recipe.train.eval_batches) | self._probe())
            if self._stops_early():
                return True
        if self._due(lc.render_every):
            self.render()
        if self._due(lc.checkpoint_every):
            self._check_finite()
            self.save_checkpoint()
        self._window.extra += time.perf_counter() - started
        self.console.step_done()
        return False

    def _stops_early(self) -> bool:
        patience = self.recipe.train.early_stopping_patience
        if not patience or self.evals_since_best < patience or self.step == self.recipe.train.steps:
            return False
        self.stopped_early = True
        self.console.say(f"early stopping at step {self.step}: no better val "
                  f"{self.model.monitor[0]} in {patience} evaluations")
        self._check_finite()
        self.save_checkpoint()
        return True

    def _check_finite(self) -> None:
        """Stop (every rank alike) at the first non-finite loss, before anything after it is
        saved."""
        bad = self.dist.earliest_step(self._first_bad)
        if bad >= 0:
            raise state.nonfinite_error(self, bad)

    def _check_finite_state(self) -> None:
        """After a step failed: if the model holds NaN or Inf, stop as for a non-finite loss
        (under DDP every rank holds the same weights, so every rank's step fails alike)."""
        if not state.finite(self.model):
            if int(self._first_bad) < 0:
                self._first_bad.fill_(self.step)
            self._check_finite()

    def _log_train(self) -> None:
        self._check_finite()
        w, self._window = self._window, LogWindow()
        means = self.dist.mean_over_ranks({k: v.float() / w.steps for k, v in w.sums.items()})
        sps = w.samples_per_s()
        self.tracker.scalars(means, self.step, "train/")
        charts = {"samples_per_s": sps,
                  **{f"lr/{k}": o.param_groups[0]["lr"] for k, o in self.optimizers.items()}}
        if self.model.env_steps_per_step:  # RL families: env steps/s
            charts["SPS"] = sps / self.recipe.train.batch_size * self.model.env_steps_per_step
        charts.update({f"grad_norm/{k}": v.item() for k, v in self.ctx.grad_norms.items()})
        self.tracker.scalars(charts, self.step, "charts/")
        for k, v in means.items():
            self._record(f"train/{k}", v)
        self.console.train_line(self.step, self.recipe.train.steps, means, sps)

    def _probe(self) -> dict[str, float]:
        """The online linear probe's scores (empty when the run has none; see online_probe)."""
        return self.probe.at(self.step, self.model) if self.probe is not None else {}

    def _log_eval(self, metrics: dict[str, float]) -> None:
        self.tracker.scalars(metrics, self.step, "eval/")
        for k, v in metrics.items():
            self._record(f"eval/{k}", v)
        state.note_eval(self, metrics)  # best.pt and early stopping's count
        self.console.eval_line(self.step, metrics, self._scope("val", self.recipe.train.eval_batches))
        self.tracker.flush()

    # -- the end of a run ------------------------------------------------------------------------
    def finish(self) -> dict:
        """Final renders and scores, metrics.json, figures and the export; leaves the group."""
        if self._rendered_step != self.step:  # e.g. early stopping: show the model as it ended
            self.render(final=True)
        tc = self.recipe.train
        final_val = self.evaluate("val", None if tc.final_eval_full else tc.eval_batches) | self._probe()
        final_test = self.evaluate("test", None if tc.final_eval_full else tc.eval_batches)
        best = {"monitor": self.model.monitor[0], "value": self.best}
        if tc.final_eval_best:
            best.update(self.evaluate_best())
        result = {
            "recipe": self.recipe.name, "family": self.recipe.family, "data": self.recipe.data_name,
            "seed": self.recipe.seed, "steps": self.step, "device": str(self.device),
            "world_size": self.dist.world_size, "stopped_early": self.stopped_early,
            "val": final_val, "test": final_test, "best": best,
            "train": {k: v[-1][1] for k, v in self.history.items() if k.startswith("train/")},
        }
        if self.dist.is_main:
            self._write_outputs(result)
        self.dist.barrier()  # the other ranks wait for rank 0's files, then all leave together
        self.dist.close()
        return result

    def _write_outputs(self, result: dict) -> None:
        export = self.export()
        if export is not None:
            result["export"] = str(export)
        write_outputs(self.run_dir, result, self.history, self.recipe.hparams(), self.tracker)
        renders.evolution_figures(self.figures, self.recipe.name, self.step)
        final = None if self.recipe.train.final_eval_full else self.recipe.train.eval_batches
        self.console.summary(result["test"], result["best"], self.run_dir, val=result["val"],
                             scopes={s: self._scope(s, final) for s in ("val", "test")})

    def _scope(self, split: str, max_batches: int | None) -> str:
        """On what an evaluation scores, in words: the printed lines say it, so that a subset's
        numbers are not taken for the whole split's (metrics.json's)."""
        tc = self.recipe.train
        return evaluation.scope(self.data, split, batch_size=tc.eval_batch_size or tc.batch_size,
                                max_batches=max_batches)
