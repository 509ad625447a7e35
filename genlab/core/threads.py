"""How many CPU threads a run uses, chosen so that it shares a machine gracefully.

Two defaults, both skipped where the user decided already:

- OpenMP threads wait passively (`OMP_WAIT_POLICY=PASSIVE`): a thread with nothing to do sleeps
  instead of spinning. A spinning team is fast on an idle machine, but beside another busy
  process the spinners take the core that the thread they wait for needs, and a run can fall to
  a tenth of its speed (docs/benchmarks.md, "Sharing the cores"). OpenMP reads the variable once,
  when torch loads it, so `passive_openmp()` runs in the command-line entry before torch is
  imported (an `OMP_WAIT_POLICY` already in the environment is kept).
- The thread count: `--threads N` or the recipe's `train.threads`; else OMP_NUM_THREADS when the
  user set it; else `auto_threads()`: the CPUs this process may run on less those other
  processes keep busy right now, at least 1.

This module does not import torch (it must be usable before torch is loaded).
"""
from __future__ import annotations

import os


def passive_openmp() -> None:
    """OMP_WAIT_POLICY=PASSIVE unless it is set; call before the first `import torch`."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask; all of the machine's where unknown)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def _cpu_times() -> tuple[int, int] | None:
    """(busy, total) jiffies of all the machine's CPUs since boot (Linux), else None."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = sum(ticks[3:5])  # idle and iowait
    total = sum(ticks[:8])  # guest time is counted inside user time already
    return total - idle, total


def busy_cpus(usable: int, window_s: float = 0.3) -> tuple[float, str]:
    """How many of `usable` CPUs other processes keep busy, and how that was measured: the
    machine's CPU use over the next `window_s` seconds (Linux; this process sleeps meanwhile),
    else the 1-minute load average (which still counts a job that ended a minute ago); either
    scaled to this process's share of the machine when its affinity mask is smaller."""
    import time

    total_cpus = max(usable, os.cpu_count() or usable)
    before = _cpu_times()
    if before is not None:
        time.sleep(window_s)
        after = _cpu_times()
        if after is not None and after[1] > before[1]:
            share = (after[0] - before[0]) / (after[1] - before[1])
            return max(0.0, share) * usable, "busy"
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return 0.0, "load"
    return max(0.0, load) * usable / total_cpus, "load"


def auto_threads(cap: int | None = None) -> tuple[int, str]:
    """(threads, why): the usable CPUs less the busy ones, rounded, at least 1 and at most
    `cap` (torch's own default, usually the physical cores)."""
    usable = usable_cpus()
    busy, how = busy_cpus(usable)
    n = max(1, min(usable, int(usable - busy + 0.5)))
    if cap is not None:
        n = max(1, min(n, cap))
    return n, (f"auto: {usable} CPU{'s' if usable != 1 else ''}, "
               f"{busy:.1f} {'busy' if how == 'busy' else 'load average'}")


def choose_threads(asked: int | None, default: int) -> tuple[int, str]:
    """The thread count of a run and where it came from. `asked`: --threads or train.threads
    (None: not given); `default`: torch's thread count before genlab changed it."""
    if asked is not None:
        return asked, "train.threads or --threads"
    if os.environ.get("OMP_NUM_THREADS"):
        return default, "OMP_NUM_THREADS"
    return auto_threads(cap=default)
