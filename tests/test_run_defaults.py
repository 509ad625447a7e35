"""What a newcomer meets on a first run: the thread count (chosen to share the machine, said on
the first line, set with --threads or train.threads), a warm-up that fits a short run, files
with the usual permissions, a progress bar on a terminal that reports no size, a suggestion for
a recipe named without its path, labelled reconstruction rows and log.keep_checkpoints."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import tiny_recipe

from genlab.cli import main
from genlab.core import threads
from genlab.core.recipe import from_mapping
from genlab.nn.optim import fit_warmup

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def keep_torch_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _recipe_file(tmp_path: Path, **train) -> Path:
    r = tiny_recipe("ae", **train)
    r["name"] = "tiny"
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(r))
    return path


# -- threads -------------------------------------------------------------------------------------
def test_auto_threads_leave_the_busy_cores_to_their_jobs(monkeypatch):
    monkeypatch.setattr(threads, "usable_cpus", lambda: 2)
    for busy, want in ((0.0, 2), (0.4, 2), (1.0, 1), (1.6, 1), (3.5, 1)):
        monkeypatch.setattr(threads, "busy_cpus", lambda usable, b=busy: (b, "busy"))
        assert threads.auto_threads()[0] == want, busy
    monkeypatch.setattr(threads, "usable_cpus", lambda: 16)
    assert threads.auto_threads(cap=8) == (8, "auto: 16 CPUs, 3.5 busy")


def test_an_explicit_choice_wins(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert threads.choose_threads(2, 5) == (2, "train.threads or --threads")
    assert threads.choose_threads(None, 5) == (5, "OMP_NUM_THREADS")
    monkeypatch.delenv("OMP_NUM_THREADS")
    n, why = threads.choose_threads(None, 64)
    assert 1 <= n <= threads.usable_cpus() and why.startswith("auto: ")


def test_busy_cpus_is_measured():
    busy, how = threads.busy_cpus(threads.usable_cpus(), window_s=0.05)
    assert busy >= 0 and how in ("busy", "load")


def test_the_command_line_waits_passively_unless_told_otherwise(monkeypatch):
    code = ("import os, sys, genlab.cli; assert 'torch' not in sys.modules; "
            "genlab.cli.main(['list', '--keys', 'train']); print(os.environ['OMP_WAIT_POLICY'])")
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd=ROOT, check=True, timeout=300)
    assert run.stdout.strip().endswith("PASSIVE") and "threads" in run.stdout
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    threads.passive_openmp()
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"


def test_train_says_its_threads_first_and_takes_threads_flag(tmp_path, capsys, keep_torch_threads):
    recipe = _recipe_file(tmp_path, steps=2)
    assert main(["train", str(recipe), "--out", str(tmp_path / "runs"), "--threads", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "tiny: 1 CPU thread (train.threads or --threads; choose with --threads N)"
    assert torch.get_num_threads() == 1
    [saved] = (tmp_path / "runs").glob("tiny/*/recipe.yaml")
    assert yaml.safe_load(saved.read_text())["train"]["threads"] == 1


# -- warm-up -------------------------------------------------------------------------------------
def test_a_warmup_longer_than_the_run_is_scaled_down_and_said(tmp_path, capsys, keep_torch_threads):
    tc = from_mapping(tiny_recipe("ae", steps=50, warmup_steps=100)).train
    fitted, note = fit_warmup(tc)
    assert fitted.warmup_steps == 5 and "scaled down to 5 steps" in note
    assert fit_warmup(from_mapping(tiny_recipe("ae", steps=50, warmup_steps=10)).train)[1] is None
    recipe = _recipe_file(tmp_path, steps=5, warmup_steps=100)
    assert main(["train", str(recipe), "--out", str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out
    assert "train.warmup_steps (100) is not below train.steps (5): warm-up scaled down to 0" in out
    [saved] = (tmp_path / "runs").glob("tiny/*/recipe.yaml")
    assert yaml.safe_load(saved.read_text())["train"]["warmup_steps"] == 0  # resumes alike


# -- run files -----------------------------------------------------------------------------------
def test_run_files_get_the_umask_and_keep_checkpoints_holds(tmp_path, keep_torch_threads):
    from genlab.engine.trainer import Trainer

    r = tiny_recipe("ae", steps=8)
    r["log"].update(checkpoint_every=2, keep_checkpoints=2)
    old = os.umask(0o022)
    try:
        t = Trainer(from_mapping(r), out_root=tmp_path, quiet=True, progress=False)
        t.run()
    finally:
        os.umask(old)
    steps = sorted(p.name for p in (t.run_dir / "checkpoints").glob("step-*.pt"))
    assert steps == ["step-00000006.pt", "step-00000008.pt"]
    files = [*(t.run_dir / "checkpoints").glob("*.pt"), *(t.run_dir / "export").iterdir(),
             t.run_dir / "metrics.json"]
    assert {oct(p.stat().st_mode & 0o777) for p in files} == {oct(0o644)}


def test_progress_bar_draws_on_a_terminal_that_reports_no_size():
    pty = pytest.importorskip("pty")
    import fcntl
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 0, 0, 0, 0))
    code = ("from genlab.engine.tracking import Console\n"
            "c = Console(quiet=False, progress=True)\nc.open_bar(5, 0)\n"
            "for _ in range(5): c.step_done()\nc.close_bar()\n")
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=slave, stdout=slave, stderr=slave,
                            env=env, cwd=ROOT)
    os.close(slave)
    out = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # the child closed its end
            break
        if not chunk:
            break
        out += chunk
    proc.wait(timeout=120)
    os.close(master)
    assert b"5/5" in out, out


def test_a_recipe_named_without_its_path_gets_a_suggestion(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    for given in ("dae_brain", "dae_brian.yaml"):
        assert main(["train", given]) == 2
        err = capsys.readouterr().err
        assert err.strip() == f"error: {given}: recipe file not found; did you mean recipes/dae_brain.yaml?"


def test_reconstruction_rows_are_labelled():
    from genlab.viz.render import triplets

    x = torch.rand(4, 1, 8, 8)
    plain = triplets(x, x, x, n=4)
    labelled = triplets(x, x, x, n=4, labels=("clean", "noisy", "reconstructed"))
    grid = labelled[..., -2 * plain.shape[-1]:]  # the rows, enlarged 2x for the 8-px digits
    assert torch.equal(grid, plain.repeat_interleave(2, -2).repeat_interleave(2, -1))
    column = labelled[0, :, :-grid.shape[-1]]
    bands = [column[4 + i * 20: 4 + i * 20 + 16] for i in range(3)]  # each row's height
    assert all(float(b.min()) < 0.5 for b in bands)  # some text in every band
    with pytest.raises(ValueError):
        triplets(x, None, x, labels=("clean", "noisy", "reconstructed"))
