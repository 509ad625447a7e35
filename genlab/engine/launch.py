"""`genlab train --nproc N`: hand the same command to torchrun, PyTorch's own launcher.

torchrun starts N copies of `python -m genlab train ...` with RANK / WORLD_SIZE / LOCAL_RANK and a
rendezvous on a free local port (`--standalone`); the trainer joins the process group from
those variables (genlab.engine.distributed). If any process fails, torchrun stops the others and
exits non-zero; this wrapper turns that into one clear error line (the failing rank's own
message is printed above it). For several machines, call torchrun directly (README: multi-node).
"""
from __future__ import annotations

import os
import subprocess
import sys

from genlab.core.errors import GenlabError


def torchrun_command(nproc: int, genlab_args: list[str]) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc_per_node={nproc}", "-m", "genlab", *genlab_args]


def launch_torchrun(nproc: int, genlab_args: list[str]) -> None:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise GenlabError("--nproc was given inside a torchrun job; use one or the other")
    env = dict(os.environ)
    # torchrun would force 1 thread per process (with a warning); share the cores out instead.
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    cmd = torchrun_command(nproc, genlab_args)
    try:
        rc = subprocess.call(cmd, env=env)
    except KeyboardInterrupt:  # torchrun forwards the signal; the ranks report what they kept
        raise GenlabError("interrupted; the newest checkpoint in the run folder is kept (resume "
                          "with the same --nproc and --resume RUN_DIR)") from None
    if rc != 0:
        raise GenlabError(f"the {nproc}-process run failed (torchrun exit code {rc}); the failing "
                          f"rank's error is printed above")
