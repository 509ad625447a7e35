"""Trainer overhead: the same model, data and steps through genlab's Trainer and through a
minimal hand-written PyTorch loop, in one process, alternating, median over repeats.

    python scripts/bench_trainer.py                       # headline conv DAE on brain images
    python scripts/bench_trainer.py --recipe recipes/dae_digits.yaml --steps 400

Both loops do identical work per step: draw indices from the same sampler, build the batch,
corrupt it, forward, MSE, backward, clip the gradient norm, Adam step, LR schedule step. The
trainer additionally runs its cadence logic (finite-loss flag, loss sums, a log every
`log.every` steps with TensorBoard scalars). Evaluation, renders and checkpoints are pushed past
the measured steps, because the hand loop has none of them.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from genlab.core.recipe import load_recipe
from genlab.core.registry import get_dataset, get_family
from genlab.data.sampler import IndexSampler
from genlab.engine.checkpoints import seed_everything
from genlab.engine.trainer import Trainer
from genlab.nn.optim import build_optimizer, build_scheduler


def _overrides(steps: int) -> list[str]:
    far = steps * 10
    return [f"train.steps={far}", "train.warmup_steps=0", "train.device=cpu", "log.every=50",
            f"log.eval_every={far}", f"log.render_every={far}", f"log.checkpoint_every={far}"]


def run_trainer(recipe_path: str, steps: int, out: Path) -> float:
    rec = load_recipe(recipe_path, _overrides(steps))
    t = Trainer(rec, out_root=out, quiet=True, progress=False)
    t.render = lambda final=False: None  # the step-0 render is setup, not loop overhead
    t0 = time.perf_counter()
    t.run(stop_at=steps)
    dt = time.perf_counter() - t0
    t.tracker.close()
    return dt


def run_plain(recipe_path: str, steps: int) -> float:
    rec = load_recipe(recipe_path, _overrides(steps))
    seed_everything(rec.seed)
    data = get_dataset(rec.data_name)(rec.data, rec.seed, torch.device("cpu"))
    model = get_family(rec.family)(rec.model, data.info)
    opt = build_optimizer(model.parameters(), rec.train)
    sched = build_scheduler(opt, rec.train)
    sampler = IndexSampler(data.size("train"), rec.train.batch_size, rec.seed)
    corrupt = rec.model.corruption
    t0 = time.perf_counter()
    for _ in range(steps):
        x = data.get("train", sampler.next_batch())["x"]
        loss = F.mse_loss(model(corrupt(x)), x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), rec.train.grad_clip)
        opt.step()
        sched.step()
    loss.item()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="recipes/dae_brain.yaml")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    rec = load_recipe(args.recipe)
    if rec.family not in ("ae", "dae"):
        raise SystemExit("this benchmark's hand loop is an autoencoder loop: use an ae/dae recipe")
    ratios, tt, tp = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        run_plain(args.recipe, 10)  # warm-up: allocator, kernels, lazy imports
        run_trainer(args.recipe, 10, Path(tmp))
        for _ in range(args.repeats):
            a = run_plain(args.recipe, args.steps)
            b = run_trainer(args.recipe, args.steps, Path(tmp))
            tp.append(a)
            tt.append(b)
            ratios.append(b / a)
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
          f"torch {torch.__version__}, python {platform.python_version()}")
    print(f"command: python scripts/bench_trainer.py --recipe {args.recipe} --steps {args.steps} "
          f"--repeats {args.repeats}")
    for label, times in (("plain loop", tp), ("trainer   ", tt)):
        med = statistics.median(times)
        print(f"{label} : median {med:.3f} s  ({args.steps / med:.1f} steps/s)")
    print(f"ratio trainer/plain: median {statistics.median(ratios):.3f} (each: "
          + ", ".join(f"{r:.3f}" for r in ratios) + ")")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "plain_s": statistics.median(tp), "trainer_s": statistics.median(tt),
            "ratio": statistics.median(ratios), "ratios": ratios, "steps": args.steps,
            "threads": torch.get_num_threads()}, indent=2))


if __name__ == "__main__":
    main()
