"""Benchmark: BatchedMaze steps/s vs the Gymnasium MouseMazeEnv stepped in a Python loop.

    .venv/bin/python scripts/bench_maze.py                 # 4,096 mazes, CPU (+ CUDA if present)
    .venv/bin/python scripts/bench_maze.py --repeats 9 --steps 300 --threads 2

Every configuration is timed `--repeats` times; the repeats are interleaved (config A, B, ...,
gym, A, B, ...) so that load from other processes hits all of them alike. Reported: median and
best steps/s (one step = one maze advancing one action), and the ratio of each batched
configuration's median to the Gymnasium loop's median. Batched actions are drawn with
torch.randint inside the timed loop; the Gymnasium loop steps pre-drawn random actions and
resets on termination/truncation.

Batched configurations (default maze: MazeConfig(), 9x9, 3 food, 3 shocks, 100 steps):
    pool/view     layout pool (1,024 layouts), copy_obs=False: obs is the internal buffer
    pool/copy     layout pool, copy_obs=True: fresh obs and final_obs tensors every step
    pool/copy/u8  as pool/copy with obs_dtype=uint8 (4x smaller copies)
    pool/view/T2  as pool/view but stepping with torch's thread count (BatchedMaze threads=None)
                  instead of the default single thread
    stream/view   a new numpy-generated maze at every autoreset, copy_obs=False
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import gymnasium as gym
import numpy as np
import torch

import genlab.envs  # noqa: F401
from genlab.envs.batched import BatchedMaze
from genlab.envs.maze import MazeConfig, MouseMazeEnv, generate_pool


def machine_info(threads: int) -> str:
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count()
    load = " ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    cuda = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return (f"cpu: {model}; os.cpu_count={os.cpu_count()} usable={affinity}; load avg {load}\n"
            f"torch {torch.__version__} (threads {threads}), numpy {np.__version__}, "
            f"gymnasium {gym.__version__}, python {platform.python_version()}; cuda: {cuda}")


class BatchedRunner:
    def __init__(self, name, n, cfg, device, steps, **kw):
        self.name, self.n, self.steps, self.device = name, n, steps, torch.device(device)
        self.env = BatchedMaze(n, cfg, device=device, **kw)
        self.env.reset(0)
        self.gen = torch.Generator(device=self.device).manual_seed(0)
        self.run(20)  # warm-up (allocations, autoresets under way)

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def run(self, steps=None) -> float:
        steps = steps or self.steps
        env, n, gen, dev = self.env, self.n, self.gen, self.device
        self._sync()
        t0 = time.perf_counter()
        for _ in range(steps):
            env.step(torch.randint(0, 3, (n,), generator=gen, device=dev))
        self._sync()
        return n * steps / (time.perf_counter() - t0)


class GymRunner:
    def __init__(self, name, cfg, steps, make):
        self.name, self.steps = name, steps
        self.env = gym.make("genlab/MouseMaze-v0", config=cfg) if make else MouseMazeEnv(cfg)
        self.env.reset(seed=0)
        self.actions = np.random.default_rng(0).integers(0, 3, steps).tolist()
        self.run()

    def run(self) -> float:
        env = self.env
        t0 = time.perf_counter()
        for a in self.actions:
            _, _, term, trunc, _ = env.step(a)
            if term or trunc:
                env.reset()
        return len(self.actions) / (time.perf_counter() - t0)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--num-envs", type=int, default=4096)
    p.add_argument("--steps", type=int, default=100, help="batched steps per repeat")
    p.add_argument("--gym-steps", type=int, default=20_000, help="Gymnasium env steps per repeat")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--pool", type=int, default=1024, help="layouts in the pool")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--devices", default="cpu,cuda", help="comma list; cuda skipped if absent")
    p.add_argument("--no-stream", action="store_true", help="skip the slow seed-stream config")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(machine_info(torch.get_num_threads()))
    cfg = MazeConfig()
    print(f"maze: {cfg}")
    pool = generate_pool(cfg, args.pool, seed=0)
    n, steps = args.num_envs, args.steps
    runners = []
    for dev in args.devices.split(","):
        if dev == "cuda" and not torch.cuda.is_available():
            continue
        runners += [
            BatchedRunner(f"{dev} pool/view", n, cfg, dev, steps, layouts=pool, copy_obs=False),
            BatchedRunner(f"{dev} pool/copy", n, cfg, dev, steps, layouts=pool, copy_obs=True),
            BatchedRunner(f"{dev} pool/copy/u8", n, cfg, dev, steps, layouts=pool, copy_obs=True,
                          obs_dtype=torch.uint8),
        ]
        if dev == "cpu" and torch.get_num_threads() > 1:
            runners.append(BatchedRunner(f"{dev} pool/view/T{torch.get_num_threads()}", n, cfg, dev,
                                         steps, layouts=pool, copy_obs=False, threads=None))
        if not args.no_stream:
            runners.append(BatchedRunner(f"{dev} stream/view", n, cfg, dev, max(20, steps // 4),
                                         copy_obs=False))
    gym_make = GymRunner("gym.make loop", cfg, args.gym_steps, make=True)
    gym_raw = GymRunner("raw env loop", cfg, args.gym_steps, make=False)
    runners += [gym_make, gym_raw]
    results = {r.name: [] for r in runners}
    for _ in range(args.repeats):
        for r in runners:
            results[r.name].append(r.run())
    ref = statistics.median(results[gym_make.name])
    print(f"\n{args.num_envs} mazes x {steps} steps per batched repeat, {args.gym_steps} steps per "
          f"Gymnasium repeat, {args.repeats} repeats (interleaved)")
    print(f"{'config':<19} {'median steps/s':>15} {'best steps/s':>14} {'x gym.make':>11}")
    for name, xs in results.items():
        med = statistics.median(xs)
        print(f"{name:<19} {med:>15,.0f} {max(xs):>14,.0f} {med / ref:>10.1f}x")
    print("load avg after:", " ".join(f"{x:.2f}" for x in os.getloadavg()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"num_envs": n, "gym_median": ref, "configs": {
                k: {"median": statistics.median(v), "best": max(v), "x_gym": statistics.median(v) / ref}
                for k, v in results.items()}}, f, indent=2)


if __name__ == "__main__":
    main()
