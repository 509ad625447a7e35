"""A real kill: SIGKILL a `genlab train` process mid-run, resume it from the CLI, and get the
same final weights as a run that was never interrupted."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from genlab.cli import main
from genlab.engine.checkpoints import list_step_checkpoints, safe_load

RECIPE = """family: dae
seed: 3
data: {name: digits}
model: {arch: dense, hidden: [64], bottleneck: 8, corruption: {kind: masking, level: 0.3}}
train: {steps: 400, batch_size: 16, lr: 3.0e-3, device: cpu, eval_batches: 1}
log: {every: 10, eval_every: 200, render_every: 0, checkpoint_every: 10, histograms: false}
"""


def _final_model(run: Path) -> dict:
    return safe_load(list_step_checkpoints(run / "checkpoints")[0])["model"]


def test_sigkill_then_resume_matches_uninterrupted(tmp_path):
    recipe = tmp_path / "killme.yaml"
    recipe.write_text(RECIPE)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "genlab", "train", str(recipe), "--out",
                             str(tmp_path / "killed"), "--quiet"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    ckpts: list[Path] = []
    while time.time() < deadline and proc.poll() is None:
        ckpts = list((tmp_path / "killed").glob("killme/*/checkpoints/step-*.pt"))
        if len(ckpts) >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed: make it longer"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    run = next((tmp_path / "killed" / "killme").iterdir())
    assert not (run / "metrics.json").exists()
    killed_at = safe_load(list_step_checkpoints(run / "checkpoints")[0])["step"]
    assert 0 < killed_at < 400

    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    assert main(["train", str(recipe), "--out", str(tmp_path / "clean"), "--quiet"]) == 0
    clean = next((tmp_path / "clean" / "killme").iterdir())
    a, b = _final_model(run), _final_model(clean)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
