"""DDP scaling: samples/s of one recipe with N data-parallel processes versus one process.

    python scripts/bench_ddp.py                                   # headline DAE, 1 vs 2 processes
    python scripts/bench_ddp.py --nproc 1 2 --threads 1 --steps 60 --repeats 3 --json out.json
    python scripts/bench_ddp.py --device cuda --nproc 1 8 --set train.precision=bf16

Every measurement is a real torchrun launch (`python -m torch.distributed.run --standalone`) of
this script, which builds the trainer from the recipe exactly as `genlab train` does, takes
`--warmup` steps, then times `--steps` steps between two barriers (evaluation, renders and
checkpoints pushed past the measured steps; the log cadence and its collectives stay). The
global batch is the recipe's, so N processes each push batch/N examples per step: the figure is
global samples/s. Launches alternate between the process counts; the median over `--repeats`
is reported with the efficiency speed-up(N) / N.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def worker(args) -> None:
    import torch
    import torch.distributed as dist

    from genlab.core.recipe import load_recipe
    from genlab.engine.trainer import Trainer

    far = (args.warmup + args.steps) * 10
    overrides = [f"train.steps={far}", "train.warmup_steps=0", f"train.device={args.device}",
                 "log.every=50", f"log.eval_every={far}", f"log.render_every={far}",
                 f"log.checkpoint_every={far}", *args.set]
    rec = load_recipe(args.recipe, overrides)
    with tempfile.TemporaryDirectory() as tmp:
        t = Trainer(rec, out_root=Path(tmp), quiet=True, progress=False)
        t.run(stop_at=args.warmup)
        t.dist.barrier()
        t0 = time.perf_counter()
        t.run(stop_at=args.warmup + args.steps)
        if t.device.type == "cuda":
            torch.cuda.synchronize()
        t.dist.barrier()
        dt = time.perf_counter() - t0
        if t.dist.is_main:
            Path(args.result).write_text(json.dumps({
                "seconds": dt, "samples_per_s": args.steps * rec.train.batch_size / dt,
                "world_size": t.dist.world_size, "threads": torch.get_num_threads()}))
        if dist.is_initialized():
            dist.destroy_process_group()


def launch(args, nproc: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "result.json"
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
            env.pop(k, None)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               __file__, "--worker", "--result", str(result), "--recipe", args.recipe,
               "--steps", str(args.steps), "--warmup", str(args.warmup), "--device", args.device]
        for s in args.set:
            cmd += ["--set", s]
        subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=not args.verbose)
        return json.loads(result.read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="recipes/dae_brain.yaml")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--nproc", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--threads", type=int, default=1, help="torch/OpenMP threads per process")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--verbose", action="store_true", help="show the workers' output")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)

    print(f"python {platform.python_version()}, {platform.machine()}, os.cpu_count()={os.cpu_count()}, "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    cmd = f"python scripts/bench_ddp.py --recipe {args.recipe} --nproc {' '.join(map(str, args.nproc))} " \
          f"--threads {args.threads} --steps {args.steps} --repeats {args.repeats} --device {args.device}" + \
          "".join(f" --set {s}" for s in args.set)
    print("command:", cmd)
    runs: dict[int, list[float]] = {n: [] for n in args.nproc}
    for _ in range(args.repeats):  # interleaved, so that outside load hits every count alike
        for n in args.nproc:
            runs[n].append(launch(args, n)["samples_per_s"])
    base = statistics.median(runs[min(args.nproc)]) / min(args.nproc)
    rows = []
    print(f"{'processes':>9} {'threads each':>12} {'median samples/s':>17} {'each run':>28} "
          f"{'speed-up':>8} {'efficiency':>10}")
    for n in args.nproc:
        med = statistics.median(runs[n])
        rows.append({"nproc": n, "threads": args.threads, "median_samples_per_s": med, "runs": runs[n],
                     "speedup": med / statistics.median(runs[min(args.nproc)]),
                     "efficiency": med / (base * n)})
        print(f"{n:>9} {args.threads:>12} {med:>17,.1f} {', '.join(f'{x:,.1f}' for x in runs[n]):>28} "
              f"{rows[-1]['speedup']:>8.2f} {rows[-1]['efficiency']:>10.2f}")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.json:
        Path(args.json).write_text(json.dumps({"command": cmd, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
