"""fp32 against bf16 autocast on this machine's CPU: what `train.precision: auto` decides by.

Times a forward and backward pass of gan_brain's discriminator (batch 32 of 128 x 96 slices) and
of the lesion judge's classifier backbone, both precisions interleaved, on one thread, and
prints whether oneDNN reports native bf16 here (genlab.engine.step.native_bf16).

    python scripts/bench_precision.py [--threads 1] [--repeats 5]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from genlab.engine.step import native_bf16, resolve_precision
from genlab.nn.backbones import build_backbone
from genlab.nn.gan_blocks import Discriminator, gan_widths


def _time(net, x, bf16: bool, repeats: int) -> float:
    times = []
    for _ in range(repeats + 1):  # the first is a warm-up
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = net(x)
        out.float().sum().backward()
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cpu = torch.device("cpu")
    print(f"torch {torch.__version__}, capability {torch.backends.cpu.get_cpu_capability()}, "
          f"native bf16: {native_bf16(cpu)}; auto -> {resolve_precision('auto', cpu)[0]}")
    d = Discriminator([1, 128, 96], gan_widths(128, 96, 16, 128), 128, 0, True, 4)
    nets = {"gan_brain D": (lambda x: d(x, None, False), torch.rand(32, 1, 128, 96)),
            "vgg_sep backbone (the lesion judge's)": (build_backbone(
                "vgg_sep", [1, 128, 96], channels=[16, 32, 128, 256], stem_stride=2),
                                                      torch.rand(32, 1, 128, 96))}
    print(f"| net, batch 32, forward + backward, {args.threads} thread(s) | fp32 s | bf16 s | bf16 / fp32 |")
    print("|---|---:|---:|---:|")
    for name, (net, x) in nets.items():
        x.requires_grad_(True)
        f32 = _time(net, x, False, args.repeats)
        b16 = _time(net, x, True, args.repeats)
        print(f"| {name} | {f32:.3f} | {b16:.3f} | {b16 / f32:.1f}x |")


if __name__ == "__main__":
    main()
