"""Every benchmark the project keeps, in one run, as one Markdown table.

    python scripts/bench.py                         # all, CPU; writes bench-results.md
    python scripts/bench.py --only factory ddp      # a subset
    python scripts/bench.py --device cuda --out docs/bench-gpu.md

Each benchmark is its own script under scripts/ (run by hand for more options); this one runs
them one after another as subprocesses with `--json`, keeps each one's full output in
<out>.log, and writes a table: benchmark, headline figure (a median over repeats), goal, the
exact command. The machine (CPU model, cores, load average before and after, torch, CUDA device)
heads the file. Nothing is timed while another benchmark runs; run it on an otherwise idle
machine, or the figures say more about the neighbours than about genlab.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _factory(j, dev):
    r = max(j["rows"], key=lambda r: r["median"])
    return (f"{r['median']:,.0f} images/s (batch {r['batch']}, {r['threads']} threads; "
            f"{r['ratio']:.2f}x torch.rand)")


def _trainer(j, dev):
    return f"trainer/plain time ratio {j['ratio']:.3f} ({j['steps']} steps)"


def _rbm(j, dev):
    pll = {k: sum(v) / len(v) for k, v in j["pll_exact"].items()}
    return (f"genlab/sklearn wall time {j['ratio_wall']:.2f}; PLL genlab {pll['genlab']:.2f} vs "
            f"sklearn {pll['sklearn']:.2f}")


def _maze(j, dev):
    best = max((v for k, v in j["configs"].items() if "pool/view" in k and "/T" not in k),
               key=lambda v: v["median"])
    return f"{best['median']:,.0f} steps/s, {best['x_gym']:.1f}x the Gymnasium loop ({j['num_envs']} mazes)"


def _dqn(j, dev):
    return f"{j['train']['median_env_steps_per_s']:,.0f} env steps/s while training " \
           f"({j['train']['median_updates_per_s']:,.1f} updates/s)"


def _ddp(j, dev):
    rows = {r["nproc"]: r for r in j["rows"]}
    top = rows[max(rows)]
    return (f"{top['nproc']} processes: {top['median_samples_per_s']:,.0f} samples/s = "
            f"{top['speedup']:.2f}x one process ({rows[min(rows)]['median_samples_per_s']:,.0f})")


# name: (script arguments, summary of its JSON, goal)
BENCHES = {
    "factory": (lambda d: ["scripts/bench_factory.py", "--device", d], _factory,
                ">= 10,000 images/s (2-core CPU); >= 1,000,000 (H100)"),
    "trainer": (lambda d: ["scripts/bench_trainer.py"], _trainer, "<= 1.05"),
    "rbm": (lambda d: ["scripts/bench_rbm.py", "--skip-accuracy"], _rbm,
            "<= 0.5 at equal or better PLL"),
    "maze": (lambda d: ["scripts/bench_maze.py", "--devices", d], _maze, ">= 1,000,000 steps/s"),
    "dqn": (lambda d: ["scripts/bench_dqn.py", "--device", d], _dqn, "(recorded)"),
    "ddp": (lambda d: ["scripts/bench_ddp.py", "--device", d] + (["--nproc", "1", "2"] if d == "cpu" else []),
            _ddp, ">= 1.6x with 2 one-thread CPU processes"),
}


def machine() -> str:
    import torch

    try:
        cpu = Path("/proc/cpuinfo").read_text().split("model name")[1].split("\n")[0].strip(" :\t")
    except (OSError, IndexError):
        cpu = platform.processor() or platform.machine()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return (f"{cpu}, {os.cpu_count()} logical CPUs; GPU: {gpu}; torch {torch.__version__}, "
            f"python {platform.python_version()}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="+", choices=list(BENCHES), default=list(BENCHES))
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--out", default="bench-results.md")
    args = ap.parse_args()
    out = Path(args.out)
    log = out.with_suffix(".log")
    load0 = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory() as tmp, log.open("w") as logf:
        for name in args.only:
            argv, summary, goal = BENCHES[name]
            cmd = ["python", *argv(args.device)]
            js = Path(tmp) / f"{name}.json"
            print(f"[bench] {name}: {' '.join(cmd)}", flush=True)
            t0 = time.perf_counter()
            res = subprocess.run([sys.executable, *cmd[1:], "--json", str(js)], cwd=ROOT,
                                 capture_output=True, text=True, check=False)
            took = time.perf_counter() - t0
            logf.write(f"$ {' '.join(cmd)}\n{res.stdout}{res.stderr}\n")
            if res.returncode != 0 or not js.exists():
                figure = f"FAILED (exit {res.returncode}; see {log.name})"
            else:
                figure = summary(json.loads(js.read_text()), args.device)
            print(f"[bench] {name}: {figure}  ({took:.0f} s)", flush=True)
            rows.append((name, figure, goal, " ".join(cmd), took))
    load1 = os.getloadavg()
    lines = [
        f"# genlab benchmarks ({time.strftime('%Y-%m-%d %H:%M')})", "",
        (f"Machine: {machine()}. Device: {args.device}. Load average before "
        f"{load0[0]:.2f}, after {load1[0]:.2f}. Full outputs: {log.name}."), "",
        "| benchmark | median | goal | command | wall |", "|---|---|---|---|---|",
        *[f"| {n} | {f} | {g} | `{c}` | {t:.0f} s |" for n, f, g, c, t in rows], "",
    ]
    out.write_text("\n".join(lines))
    print(f"wrote {out} and {log}")


if __name__ == "__main__":
    main()
