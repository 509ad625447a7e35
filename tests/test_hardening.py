"""`genlab train` against bad input and bad luck: resume overrides that must take effect (and
keys that must not change), a diverging RBM, bad --out / RECIPE / --tag, junk checkpoint files."""
from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml
from conftest import tiny_recipe

from genlab.cli import main
from genlab.core.recipe import from_mapping, load_recipe
from genlab.core.registry import FAMILIES, register_family
from genlab.core.schema import param
from genlab.engine import checkpoints as ckpt
from genlab.engine.tracking import check_tag
from genlab.engine.trainer import Trainer
from genlab.families.base import Family
from genlab.nn.optim import lr_factor

ROOT = Path(__file__).resolve().parents[1]


def _train(tmp_path: Path, mapping: dict, *args: str, rc: int = 0) -> Path | None:
    """`genlab train` of `mapping` (as r.yaml) under tmp_path/runs; the run folder."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(mapping))
    assert main(["train", str(recipe), "--out", str(tmp_path / "runs"), "--quiet", *args]) == rc
    found = sorted((tmp_path / "runs" / "r").glob("*"))
    return found[-1] if found else None


def _one_error_line(err: str, *expected: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err and "Usage" not in err
    for e in expected:
        assert e in lines[0], err


def _files(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


# ---------------------------------------------------------------- resume overrides take effect
def test_resume_overrides_reach_optimizer_schedule_and_loop(tmp_path, capsys):
    run = _train(tmp_path, tiny_recipe("ae", steps=8, schedule="cosine", warmup_steps=2))
    capsys.readouterr()
    rec = load_recipe(run / "recipe.yaml", ["train.lr=0.05", "train.steps=12", "log.every=1",
                                            "train.grad_clip=0.5"])
    t = Trainer(rec, resume_dir=run)
    out = capsys.readouterr().out
    assert t.step == 8
    for line in ("resume: train.lr 0.003 -> 0.05 from step 8",
                 "resume: train.steps 8 -> 12 from step 8", "resume: log.every 4 -> 1 from step 8",
                 "resume: train.grad_clip 1 -> 0.5 from step 8"):
        assert line in out, out
    opt, sched = t.optimizers["main"], t.schedulers["main"]
    # the new base lr at step 8 of the new cosine schedule (over 12 steps), not the checkpoint's
    assert opt.param_groups[0]["lr"] == 0.05 * lr_factor(8, rec.train)
    assert sched.base_lrs == [0.05] and opt.param_groups[0]["initial_lr"] == 0.05
    assert t.ctx.grad_clip == 0.5
    t.run()
    assert [s for s, _ in t.history["train/loss"][-4:]] == [9, 10, 11, 12]  # log.every=1
    text = (run / "recipe.yaml").read_text()
    assert "# resumed from step 8: train.steps 8 -> 12, train.lr 0.003 -> 0.05" in text
    again = load_recipe(run / "recipe.yaml")  # still a valid recipe, with the new values
    assert again.train.lr == 0.05 and again.train.steps == 12 and again.log.every == 1


def test_recipe_lr_wins_after_a_kill_before_the_next_checkpoint(tmp_path):
    run = _train(tmp_path, tiny_recipe("ae", steps=8))  # checkpoints at steps 4 and 8
    t = Trainer(load_recipe(run / "recipe.yaml", ["train.lr=0.05", "train.steps=16"]),
                resume_dir=run, quiet=True)
    t.run(stop_at=10)  # killed before step 12's checkpoint: the newest still holds lr 0.003
    recorded = (run / "recipe.yaml").read_bytes()
    again = Trainer(load_recipe(run / "recipe.yaml"), resume_dir=run, quiet=True)
    assert again.step == 8 and again.optimizers["main"].param_groups[0]["lr"] == 0.05
    assert (run / "recipe.yaml").read_bytes() == recorded  # nothing new to record


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    return _train(tmp_path_factory.mktemp("frozen"), tiny_recipe("ae", steps=4))


@pytest.mark.parametrize("override, key", [
    ("model.bottleneck=4", "model.bottleneck"),
    ("train.batch_size=8", "train.batch_size"),
    ("train.optimizer=sgd", "train.optimizer"),
    ("train.precision=bf16", "train.precision"),
    ("seed=3", "seed"),
    ("data.val_fraction=0.3", "data.val_fraction"),
    ("name=other", "name"),
])
def test_keys_that_cannot_change_on_resume_are_refused_before_anything_is_written(
        finished_run, capsys, override, key):
    before = _files(finished_run)
    assert main(["train", "--resume", str(finished_run), "--set", override, "--quiet"]) == 2
    _one_error_line(capsys.readouterr().err, f"error: {key}", "cannot change when resuming")
    assert _files(finished_run) == before


def _finite_metrics(run: Path) -> dict:
    metrics = json.loads((run / "metrics.json").read_text())
    values = [metrics["train"]["train/loss"], *metrics["val"].values(), *metrics["test"].values()]
    assert all(v is not None and math.isfinite(v) for v in values), metrics
    return metrics


def test_nan_advice_works_resume_with_a_lower_lr_finishes_finite(tmp_path, capsys):
    fast = ["--set", "log.checkpoint_every=1", "--set", "train.schedule=constant"]
    run = _train(tmp_path, tiny_recipe("ae", steps=4), *fast)
    capsys.readouterr()
    # The lr explodes the weights in step 5; step 6's loss is NaN. Step 5's checkpoint holds the
    # weights that loss came from, so it is set aside: the last good checkpoint is step 4's.
    args = ["--set", "train.steps=30", "--set", "train.lr=1e15"]
    assert main(["train", "--resume", str(run), *args, "--quiet"]) == 2
    _one_error_line(capsys.readouterr().err, "non-finite loss (NaN or Inf) at step 6",
                    "step-00000004.pt", "lower lr")
    assert (run / "checkpoints" / "step-00000005.pt.nonfinite").is_file()
    assert main(["train", "--resume", str(run), "--set", "train.lr=1e-3"]) == 0
    out = capsys.readouterr().out
    assert "resume: train.lr 1e+15 -> 0.001 from step 4" in out, out
    metrics = _finite_metrics(run)
    assert metrics["steps"] == 30
    notes = [line for line in (run / "recipe.yaml").read_text().splitlines() if line.startswith("# resumed")]
    assert notes == ["# resumed from step 4: train.steps 4 -> 30, train.lr 0.003 -> 1e+15",
                     "# resumed from step 4: train.lr 1e+15 -> 0.001"]


def test_nan_at_the_second_step_leaves_nothing_to_resume_and_says_so(tmp_path, capsys):
    # the issue's repro: lr 1e15 from the start; step 1's weights already give a NaN loss
    mapping = tiny_recipe("ae", steps=300, lr=1e15, warmup_steps=0, schedule="constant")
    run = _train(tmp_path, mapping, "--set", "log.checkpoint_every=1", rc=2)
    _one_error_line(capsys.readouterr().err, "at step 2", "no checkpoint before it",
                    "start a new run with a lower train.lr")
    assert main(["train", "--resume", str(run), "--set", "train.lr=1e-3"]) == 2
    _one_error_line(capsys.readouterr().err, "no checkpoint found")


# ---------------------------------------------------------------- a diverging RBM stops cleanly
def test_diverging_rbm_stops_like_the_autoencoder(tmp_path, capsys):
    out = tmp_path / "runs"
    args = ["--set", "train.lr=1e6", "--set", "train.steps=300", "--set", "model.ais_runs=0",
            "--set", "log.checkpoint_every=5", "--set", "log.render_every=0"]
    assert main(["train", str(ROOT / "recipes" / "rbm_digits.yaml"), "--out", str(out),
                 "--quiet", *args]) == 2
    err = capsys.readouterr().err
    _one_error_line(err, "non-finite loss (NaN or Inf) at step", "the last good checkpoint is")
    good = Path(err.split("the last good checkpoint is ")[1].split()[0])
    state = ckpt.safe_load(good)
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


@dataclass
class _BoomConfig:
    boom_at: int = param(3, ge=1, help="step whose training_step raises")


@register_family("_boom_test")
class _BoomFamily(Family):
    """Test-only: a healthy linear model whose step raises a RuntimeError (a bug, not a NaN)."""

    Config = _BoomConfig

    def __init__(self, cfg, info):
        super().__init__()
        self.cfg, self.lin = cfg, torch.nn.Linear(64, 1)

    def configure_optimizers(self, train):
        return {"main": torch.optim.SGD(self.parameters(), lr=0.01)}

    def training_step(self, batch, ctx):
        if ctx.step + 1 == self.cfg.boom_at:
            raise RuntimeError("a bug in the family")
        loss = self.lin(batch["x"].flatten(1)).pow(2).mean()
        ctx.update("main", loss)
        return {"loss": loss.detach()}

    def evaluate(self, batch):
        return {"loss": self.lin(batch["x"].flatten(1)).pow(2).mean()}


def teardown_module(module):
    FAMILIES.pop("_boom_test", None)


def test_a_failing_step_with_a_finite_model_keeps_its_traceback(runs):
    t = Trainer(from_mapping({**tiny_recipe("ae"), "family": "_boom_test", "model": {}}),
                out_root=runs, quiet=True)
    with pytest.raises(RuntimeError, match="a bug in the family"):
        t.run()


# ---------------------------------------------------------------- --out, RECIPE, --tag
def test_out_below_a_file_is_one_line(tmp_path, capsys):
    f = tmp_path / "f"
    f.write_text("x\n")
    recipe = ROOT / "recipes" / "ae_digits.yaml"
    assert main(["train", str(recipe), "--out", str(f / "sub")]) == 2
    _one_error_line(capsys.readouterr().err, f"--out {f / 'sub'}: {f} is a file, not a folder")
    assert main(["train", str(recipe), "--out", str(f)]) == 2  # --out naming a file
    _one_error_line(capsys.readouterr().err, f"--out {f}: it is a file, not a folder")
    assert f.read_text() == "x\n" and sorted(tmp_path.iterdir()) == [f]


def test_a_folder_as_recipe_and_bad_values_are_one_line(tmp_path, capsys):
    assert main(["train", str(tmp_path)]) == 2
    _one_error_line(capsys.readouterr().err, "recipe path is a folder")
    assert main(["train", "--device", "tpu", str(tmp_path)]) == 2  # click's own value checks
    _one_error_line(capsys.readouterr().err, "Invalid value for '--device'")
    f = tmp_path / "f"
    f.write_text("x")
    assert main(["train", "--resume", str(f)]) == 2
    _one_error_line(capsys.readouterr().err, "not a genlab run folder")


@pytest.mark.parametrize("tag", ["../../../escaped", "a/b", "..", ".", "a\\b", "x" * 101, "sp ace"])
def test_a_tag_that_is_not_a_plain_name_is_refused_before_anything_is_made(tmp_path, capsys, tag):
    out = tmp_path / "deep" / "runs"
    assert main(["train", str(ROOT / "recipes" / "ae_digits.yaml"), "--out", str(out),
                 "--tag", tag]) == 2
    _one_error_line(capsys.readouterr().err, "--tag", "plain name")
    assert sorted(tmp_path.iterdir()) == []


def test_plain_tags_pass():
    for tag in ("lr3e-4", "run_2", "v1.2", "-x", None, ""):
        check_tag(tag)


# ---------------------------------------------------------------- junk checkpoint files
def _ckpt(d: Path, step: int) -> Path:
    path = ckpt.step_path(d, step)
    ckpt.atomic_save({"format": "genlab-checkpoint", "step": step, "model": {}}, path)
    return path


def test_prune_counts_only_checkpoints_and_leaves_junk_alone(tmp_path):
    d = tmp_path / "checkpoints"
    good = [_ckpt(d, s) for s in (1, 2, 3)]
    junk = [ckpt.step_path(d, 99999), ckpt.step_path(d, 99998), ckpt.step_path(d, 4)]
    junk[0].write_bytes(b"not a checkpoint")
    torch.save({"some": "dict"}, junk[1])  # loads, but is no genlab checkpoint
    junk[2].write_bytes(good[2].read_bytes()[:100])  # a truncated copy
    with pytest.warns(UserWarning, match="not a readable genlab checkpoint") as caught:
        ckpt.prune(d, keep=2)
    assert len(caught) == 3
    assert not good[0].exists() and good[1].exists() and good[2].exists()
    assert all(p.exists() for p in junk)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per file: no second warning
        ckpt.prune(d, keep=1)
    assert not good[1].exists() and good[2].exists()  # the newest loadable one stays


def test_a_stray_file_in_a_run_never_pushes_out_its_checkpoints(runs):
    mapping = tiny_recipe("ae", steps=8)
    mapping["log"] = {**mapping["log"], "checkpoint_every": 2, "keep_checkpoints": 2}
    t = Trainer(from_mapping(mapping), out_root=runs, quiet=True)
    stray = ckpt.step_path(t.ckpt_dir, 99999)
    stray.parent.mkdir(parents=True)
    stray.write_bytes(b"junk")
    with pytest.warns(UserWarning, match="not a readable genlab checkpoint"):
        t.run()
    names = [p.name for p in ckpt.list_step_checkpoints(t.ckpt_dir)]
    assert names == ["step-00099999.pt", "step-00000008.pt", "step-00000006.pt"]
    with pytest.warns(UserWarning, match="unreadable"):  # and resume skips it
        resumed = Trainer(from_mapping(mapping), resume_dir=t.run_dir, quiet=True)
    assert resumed.step == 8
