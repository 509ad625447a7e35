"""Data-parallel training (torchrun + gloo, 2 CPU processes): equal to one process, rank 0 alone
writes, a failing rank ends the job, resume continues exactly, and every family trains."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import tiny_recipe

from genlab.cli import main
from genlab.core.recipe import from_mapping
from genlab.data.sampler import IndexSampler
from genlab.engine import checkpoints as ckpt
from genlab.engine.trainer import Trainer

HERE = Path(__file__).parent
pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="no torch.distributed")


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", GENLAB_DIST_TIMEOUT_S="60", **extra)
    return env


def _genlab(args: list[str], cwd: Path, timeout: int = 240, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "genlab", *args], cwd=cwd, env=_env(**env),
                          capture_output=True, text=True, timeout=timeout, check=False)


def _write(tmp_path: Path, name: str, recipe: dict) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def _only_run(root: Path) -> Path:
    runs = [p for p in root.glob("*/*") if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


def _params(run: Path, step: int) -> dict[str, torch.Tensor]:
    state = ckpt.safe_load(ckpt.step_path(run / "checkpoints", step))
    return {k: v for k, v in state["model"].items() if v.is_floating_point()}


def test_rank_batches_together_are_the_single_process_batch():
    one = IndexSampler(100, 16, seed=3)
    ranks = [IndexSampler(100, 8, seed=3, rank=r, world_size=2) for r in range(2)]
    for _ in range(15):  # across an epoch boundary (6 batches per epoch)
        glob = one.next_batch()
        parts = torch.cat([s.next_batch() for s in ranks])
        assert sorted(glob.tolist()) == sorted(parts.tolist())


def test_gradients_become_views_of_one_persistent_bucket():
    from genlab.engine.distributed import Dist

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    params = list(net.parameters())
    d = Dist(world_size=2)
    net(torch.randn(5, 4)).sum().backward()
    want = [p.grad.clone() for p in params]
    flat = d._bucket(params)
    assert flat.numel() == sum(p.numel() for p in params)
    assert torch.equal(flat, torch.cat([g.flatten() for g in want]))
    for p in params:  # every .grad now lives inside the bucket
        assert flat.data_ptr() <= p.grad.data_ptr() < flat.data_ptr() + flat.numel() * flat.element_size()
    # the trainer zeroes in place under DDP; autograd then accumulates into the same views
    for p in params:
        p.grad.zero_()
    x = torch.randn(5, 4)
    net(x).sum().backward()
    assert d._bucket(params).data_ptr() == flat.data_ptr()
    fresh = torch.nn.Sequential(*[torch.nn.Linear(4, 3), torch.nn.Linear(3, 2)])
    fresh.load_state_dict(net.state_dict())
    fresh(x).sum().backward()
    assert torch.equal(flat, torch.cat([p.grad.flatten() for p in fresh.parameters()]))
    params[0].grad = torch.ones_like(params[0])  # a replaced .grad is copied back in
    assert float(d._bucket(params)[: params[0].numel()].sum()) == params[0].numel()


def test_global_batch_must_divide_over_the_processes(tmp_path, capsys):
    path = _write(tmp_path, "ae", tiny_recipe("ae", batch_size=15))
    assert main(["train", str(path), "--nproc", "2", "--out", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert "train.batch_size: 15 is the global batch" in err and "2 processes" in err
    assert not (tmp_path / "runs").exists()


def test_ddp_equals_one_process_and_only_rank0_writes(tmp_path):
    recipe = tiny_recipe("ae", steps=12)
    single = Trainer(from_mapping(recipe), out_root=tmp_path / "single", quiet=True, progress=False)
    single.run()

    work = tmp_path / "work"
    work.mkdir()
    path = _write(tmp_path, "ae", recipe)
    res = _genlab(["train", str(path), "--nproc", "2", "--out", "ddp"], cwd=work)
    assert res.returncode == 0, res.stderr[-3000:]
    # Rank 0 alone wrote: one run folder, one event file, nothing else in the working directory.
    assert sorted(p.name for p in work.iterdir()) == ["ddp"]
    run = _only_run(work / "ddp")
    assert len(list(run.glob("events.out.tfevents.*"))) == 1
    assert res.stdout.count("run written to") == 1

    a, b = _params(single.run_dir, 12), _params(run, 12)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6, msg=k)
    m1 = json.loads((single.run_dir / "metrics.json").read_text())
    m2 = json.loads((run / "metrics.json").read_text())
    assert m2["world_size"] == 2 and m1["world_size"] == 1
    for split in ("val", "test"):  # evaluation reduced over ranks = the one-process numbers
        for k, v in m1[split].items():
            assert m2[split][k] == pytest.approx(v, rel=1e-5, abs=1e-7), (split, k)
    h1 = ckpt.safe_load(ckpt.step_path(single.run_dir / "checkpoints", 12))["history"]
    h2 = ckpt.safe_load(ckpt.step_path(run / "checkpoints", 12))["history"]
    l1, l2 = [v for _, v in h1["train/loss"]], [v for _, v in h2["train/loss"]]
    assert len(l1) == len(l2) == 3 and l2 == pytest.approx(l1, rel=1e-5)


def test_ddp_resume_continues_exactly(tmp_path):
    # The DAE draws its corruption noise from each rank's own RNG stream: an exact resume needs
    # every rank's stream back, not only rank 0's.
    path = _write(tmp_path, "dae", tiny_recipe("dae", steps=12))
    res = _genlab(["train", str(path), "--nproc", "2", "--out", "runs"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    run = _only_run(tmp_path / "runs")
    state = ckpt.safe_load(ckpt.step_path(run / "checkpoints", 12))
    assert state["world_size"] == 2 and len(state["ranks"]) == 2
    assert not torch.equal(state["ranks"][0]["rng"]["torch"], state["ranks"][1]["rng"]["torch"])
    uninterrupted = _params(run, 12)
    ckpt.step_path(run / "checkpoints", 12).unlink()  # as if killed after the step-8 checkpoint
    res = _genlab(["train", "--resume", str(run), "--nproc", "2"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "resumed from" in res.stdout and "step-00000008.pt" in res.stdout
    resumed = _params(run, 12)
    for k in uninterrupted:
        torch.testing.assert_close(resumed[k], uninterrupted[k], rtol=0, atol=0, msg=k)


def test_a_failing_rank_ends_the_whole_job_with_its_error(tmp_path):
    recipe = tiny_recipe("ae", steps=40)
    recipe["family"] = "ae_fails_on_rank1"
    path = _write(tmp_path, "fails", recipe)
    t0 = time.monotonic()
    res = _genlab(["train", str(path), "--nproc", "2", "--out", "runs"], cwd=tmp_path, timeout=120,
                  GENLAB_PLUGINS="failing_plugin", PYTHONPATH=str(HERE / "ddp"))
    assert time.monotonic() - t0 < 90  # ended, not hung until the 60 s collective timeout and beyond
    assert res.returncode == 2
    assert "rank 1 fails on purpose at step 3" in res.stderr
    assert "error: the 2-process run failed" in res.stderr


def test_every_family_trains_under_ddp_with_equal_parameters(tmp_path):
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc_per_node=2", str(HERE / "ddp" / "all_families.py"), str(tmp_path)],
                         cwd=HERE, env=_env(), capture_output=True, text=True, timeout=400, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert reports[0].keys() >= {"ae", "dae", "gan", "classifier", "rbm", "dbn", "dqn"}
    for family, r in reports[0].items():
        assert r["steps"] == 8 and r["rank_batch"] == 8, family
        assert r["changed"], f"{family}: parameters did not move"
        assert r["params_equal"], f"{family}: ranks diverged"


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")
def test_leaving_the_group_stops_its_threads(tmp_path):
    # A group that outlives destroy_process_group keeps gloo's threads until interpreter exit,
    # where the process can abort (SIGABRT) after its work is done.
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc_per_node=2", str(HERE / "ddp" / "teardown.py")],
                         cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=120,
                         check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    lines = [ln for rank in (0, 1) for ln in (tmp_path / f"report-{rank}.txt").read_text().splitlines()]
    assert len(lines) == 4, lines
    assert all("gloo" in ln for ln in lines if " before " in ln)  # the check sees gloo's threads
    assert not any("gloo" in ln for ln in lines if " after " in ln), lines
