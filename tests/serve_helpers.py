"""A tiny trained brain classifier run for the serving and export tests (trained once per test
session: the run folder lives under pytest's session temp folder and is reused when present)."""
from __future__ import annotations

import contextlib
import io
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from conftest import tiny_recipe


def tiny_brain_recipe(steps: int = 6) -> dict:
    """A 4-syndrome classifier on hard-mode brain slices (1 x 128 x 96), a few seconds on a CPU."""
    r = tiny_recipe("classifier", steps=steps, eval_batches=1)
    r["name"] = "tiny_lesion_brain"
    r["data"] = {"name": "brain", "mode": "hard", "train_size": 256, "val_size": 32,
                 "test_size": 32}
    r["model"] = {"backbone": "vgg_sep", "channels": [4, 8, 8], "stem_stride": 2,
                  "localisation": False}
    r["log"].update(render_every=1000, eval_every=1000)
    return r


def tiny_brain_run(tmp_path_factory) -> Path:
    """The run folder of a trained tiny brain classifier (trained on first use per session)."""
    from genlab.core.recipe import from_mapping
    from genlab.engine.trainer import Trainer

    root = tmp_path_factory.getbasetemp() / "serve_tiny_runs"
    done = root / ".trained"
    if done.is_file():
        return Path(done.read_text().strip())
    with contextlib.redirect_stdout(io.StringIO()):
        t = Trainer(from_mapping(tiny_brain_recipe()), out_root=root, quiet=True, progress=False)
        t.run()
    done.write_text(str(t.run_dir))
    return t.run_dir


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(run_dir: Path, *args: str, log: Path, timeout: float = 60.0):
    """`genlab serve RUN_DIR --port <free>` in a subprocess (output to `log`); returns
    (process, base URL) once /v1/health answers. Stop it with process.terminate()."""
    import httpx

    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "genlab", "serve", str(run_dir), "--port",
                                 str(port), "--no-access-log", *args], env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"genlab serve exited: {Path(log).read_text()[-2000:]}")
        try:
            if httpx.get(url + "/v1/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"genlab serve did not come up: {Path(log).read_text()[-2000:]}")
