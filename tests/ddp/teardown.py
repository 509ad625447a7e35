"""Run by tests/test_distributed.py under torchrun (2 gloo processes): the trainer's process group
is really gone after Dist.close(), even though torch.use_deterministic_algorithms (which the trainer
calls on CPU) imports torch modules that could keep a reference to it. Prints the names of the
process's native threads before and after into report-<rank>.txt in the working directory (one
file per rank: with PYTHONUNBUFFERED set, print writes a line and its newline separately, so two
ranks sharing one stdout interleave their lines)."""
import os
import time

import torch

from genlab.engine.distributed import Dist


def threads() -> list[str]:
    tasks = os.listdir("/proc/self/task")
    return sorted(open(f"/proc/self/task/{t}/comm").read().strip() for t in tasks)


d = Dist.from_env("cpu")
torch.use_deterministic_algorithms(True, warn_only=True)  # as the trainer does on CPU
d.sum_(torch.ones(3))
before = threads()
d.close()
# gloo's threads end asynchronously after the group is destroyed: on a loaded machine give them
# a few seconds (the bug this guards against kept them alive until the interpreter exited)
deadline = time.monotonic() + 10
while any("gloo" in t for t in threads()) and time.monotonic() < deadline:
    time.sleep(0.05)
with open(f"report-{d.rank}.txt", "w") as f:
    f.write(f"rank {d.rank} before {before}\nrank {d.rank} after {threads()}\n")
