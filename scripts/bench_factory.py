"""Throughput of the synthetic brain factory: hard-mode 96x128 float32 images/s into memory.

    python scripts/bench_factory.py                    # CPU (batches 1024, 4096), CUDA if present
    python scripts/bench_factory.py --threads 1 2      # CPU at several torch thread counts
    python scripts/bench_factory.py --device cuda --batch 65536

Each line: warm-up, then `--repeats` timed calls of `generate("train", indices)` on fresh
indices; prints the median and the best images/s. A reference line times `torch.rand(B,1,128,96)`
(one uniform per pixel, the cheapest "image" there is) under the same conditions, so the ratio
stays meaningful when other processes share the CPU.

On a CPU shared with other busy processes, OpenMP's default *active* wait (threads spin at the end
of every parallel region) makes 2-thread runs of many-op workloads like this one collapse; run
with `OMP_WAIT_POLICY=PASSIVE` (must be set before Python starts) to see the undisturbed ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch

from genlab.data.brain_factory import BrainFactory


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn, device: torch.device, repeats: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn(0)
    _sync(device)
    out = []
    for r in range(repeats):
        t0 = time.perf_counter()
        fn(r + 1)
        _sync(device)
        out.append(time.perf_counter() - t0)
    return out


def bench(device: torch.device, batch: int, repeats: int, warmup: int, mode: str) -> dict:
    fac = BrainFactory(mode=mode, seed=0, device=device)

    def gen(r: int):  # fresh indices every call: nothing can be cached between repeats
        idx = torch.arange(r * batch, (r + 1) * batch, device=device)
        return fac.generate("train", idx)

    def rand(_r: int):
        return torch.rand(batch, 1, 128, 96, device=device)

    tg = _time(gen, device, repeats, warmup)
    tr = _time(rand, device, repeats, warmup)
    med_g, med_r = batch / statistics.median(tg), batch / statistics.median(tr)
    return {
        "device": str(device),
        "threads": torch.get_num_threads(),
        "batch": batch,
        "median": med_g,
        "best": batch / min(tg),
        "rand_median": med_r,
        "rand_best": batch / min(tr),
        "ratio": med_g / med_r,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--device", nargs="*", default=None, help="cpu, cuda (default: cpu + cuda if any)"
    )
    ap.add_argument(
        "--batch",
        type=int,
        nargs="*",
        default=None,
        help="batch sizes (default: 1024 4096 on CPU, 65536 on CUDA)",
    )
    ap.add_argument(
        "--threads",
        type=int,
        nargs="*",
        default=None,
        help="torch CPU thread counts to try (default: the current one)",
    )
    ap.add_argument("--repeats", type=int, default=11)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--mode", default="hard", choices=("easy", "hard"))
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()

    devices = args.device or (["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    print(
        f"torch {torch.__version__}, python {platform.python_version()}, "
        f"{platform.machine()}, os.cpu_count()={os.cpu_count()}, "
        f"sched_getaffinity={len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else '?'}, "
        f"torch threads={torch.get_num_threads()}"
    )
    try:
        with open("/proc/cpuinfo") as f:
            print("cpu:", f.read().split("model name")[1].split("\n")[0].strip(" :\t"))
    except (OSError, IndexError):
        print("cpu:", platform.processor())
    print("OMP_WAIT_POLICY:", os.environ.get("OMP_WAIT_POLICY", "(unset: active spin)"))
    if hasattr(os, "getloadavg"):
        print("load average (1, 5, 15 min): {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    if torch.cuda.is_available():
        print("cuda:", torch.cuda.get_device_name(0))
    print(
        f"{'device':6} {'thr':>3} {'batch':>6} {'median img/s':>13} {'best img/s':>11} "
        f"{'rand median':>12} {'rand best':>10} {'ratio':>6}"
    )
    rows = []
    for dev in devices:
        device = torch.device(dev)
        if device.type == "cuda" and not torch.cuda.is_available():
            print("cuda: not available")
            continue
        batches = args.batch or ([65536] if device.type == "cuda" else [1024, 4096])
        threads = (
            (args.threads or [torch.get_num_threads()])
            if device.type == "cpu"
            else [torch.get_num_threads()]
        )
        for nt in threads:
            torch.set_num_threads(nt)
            for b in batches:
                r = bench(device, b, args.repeats, args.warmup, args.mode)
                print(
                    f"{r['device']:6} {r['threads']:>3} {r['batch']:>6} {r['median']:>13,.0f} "
                    f"{r['best']:>11,.0f} {r['rand_median']:>12,.0f} {r['rand_best']:>10,.0f} "
                    f"{r['ratio']:>6.2f}",
                    flush=True,
                )
                rows.append(r)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"mode": args.mode, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
