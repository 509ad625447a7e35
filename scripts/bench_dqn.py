"""Benchmark: DQN training speed through the shared trainer (env steps/s and TD updates/s).

    .venv/bin/python scripts/bench_dqn.py                                  # recipes/dqn_maze.yaml
    .venv/bin/python scripts/bench_dqn.py --recipe recipes/dqn_maze_fixed.yaml
    .venv/bin/python scripts/bench_dqn.py --set model.num_envs=64 --threads 2 --repeats 5

The DQN is built from a recipe exactly as `genlab train` builds it and stepped with the trainer's
own loop (`Trainer.run(stop_at=...)`), with logging, evaluation, renders and checkpoints turned
off, so the numbers are what a training run spends per step. Two phases:
    collect  trainer steps before learning starts: acting (epsilon-greedy forward pass of the
             online net for num_envs mazes, env step, n-step window, replay writes) only
    train    trainer steps after learning starts: acting plus one TD update per step
             (minibatch from the replay buffer, online + target forward passes, backward, Adam)
Reported per phase: the median and best of `--repeats` timings of `--steps` trainer steps, as
env steps/s (= steps x num_envs x env_steps_per_update / s) and, for train, updates/s
(= trainer steps / s). The collect repeats run first (the train phase needs a filled buffer),
so on a shared machine compare medians taken at similar load (printed before and after).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch

from genlab.core.recipe import load_recipe
from genlab.engine.trainer import Trainer


def machine_info() -> str:
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"cpu: {model}; cores {os.cpu_count()}; load avg {load}; torch {torch.__version__} "
            f"(threads {torch.get_num_threads()}); python {platform.python_version()}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--recipe", default="recipes/dqn_maze.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="recipe override, as for genlab train (repeatable)")
    p.add_argument("--steps", type=int, default=100, help="trainer steps per timed repeat")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    fixed = ["train.steps=1000000000", "log.every=1000000000", "log.eval_every=0",
             "log.render_every=0", "log.checkpoint_every=0", "log.histograms=false"]
    rec = load_recipe(Path(args.recipe), [*args.overrides, *fixed])
    print(machine_info())
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the huge train.steps trips the exploration warning
        t = Trainer(rec, out_root=Path(tmp), device=args.device, quiet=True)
        m = t.model
        per_step = m.cfg.num_envs * m.cfg.env_steps_per_update
        start = m.learning_start(rec.train.batch_size)
        print(f"recipe {args.recipe} {' '.join(args.overrides)}: arch {m.cfg.arch}, num_envs "
              f"{m.cfg.num_envs} x {m.cfg.env_steps_per_update} env steps per update, batch "
              f"{rec.train.batch_size}, learning starts after {start} transitions; "
              f"{sum(p.numel() for p in m.q.parameters()):,} parameters; device {t.device}")

        def timed(steps: int) -> float:
            if t.device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            t.run(stop_at=t.step + steps)
            if t.device.type == "cuda":
                torch.cuda.synchronize()
            return time.perf_counter() - t0

        t.run(stop_at=2)  # warm-up (the first render, allocations)
        collect = []
        for _ in range(args.repeats):
            if len(m.replay) + args.steps * per_step >= start:
                break
            collect.append(timed(args.steps))
        need = max(0, -(-(start - len(m.replay)) // per_step) + m.cfg.n_step)
        t.run(stop_at=t.step + need)  # fill the buffer up to learning_starts
        timed(5)  # warm-up of the update path
        train = [timed(args.steps) for _ in range(args.repeats)]
    print(f"\n{args.repeats} repeats of {args.steps} trainer steps")
    print(f"{'phase':<9} {'median env steps/s':>19} {'best env steps/s':>17} {'median updates/s':>17}")
    for name, xs in (("collect", collect), ("train", train)):
        if not xs:
            print(f"{name:<9} (skipped: learning starts too early for a collect-only repeat)")
            continue
        rates = [args.steps / x for x in xs]
        upd = f"{statistics.median(rates):>17,.1f}" if name == "train" else f"{'-':>17}"
        med, best = statistics.median(rates) * per_step, max(rates) * per_step
        print(f"{name:<9} {med:>19,.0f} {best:>17,.0f} {upd}")
    print("load avg after:", " ".join(f"{x:.2f}" for x in os.getloadavg()))
    if args.json:
        out = {name: {"median_env_steps_per_s": statistics.median(args.steps / x for x in xs) * per_step,
                      "median_updates_per_s": statistics.median(args.steps / x for x in xs)}
               for name, xs in (("collect", collect), ("train", train)) if xs}
        with open(args.json, "w") as f:
            json.dump({"recipe": args.recipe, **out}, f, indent=2)


if __name__ == "__main__":
    main()
