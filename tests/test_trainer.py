"""The shared trainer: determinism, resume, checkpoints, the finite-loss guard, run outputs."""
from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch
from conftest import tiny_recipe

from genlab.core.errors import NonFiniteLossError
from genlab.core.recipe import from_mapping
from genlab.core.registry import FAMILIES, register_family
from genlab.core.schema import param
from genlab.engine import checkpoints as ckpt
from genlab.engine.trainer import Trainer
from genlab.families.base import Family


def _train(mapping, runs, **kw):
    t = Trainer(from_mapping(mapping), out_root=runs, quiet=True, **kw)
    return t, t.run()


def _weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_same_seed_same_numbers(runs):
    _, a = _train(tiny_recipe("dae"), runs)
    _, b = _train(tiny_recipe("dae"), runs)
    assert a["val"] == b["val"] and a["test"] == b["test"] and a["train"] == b["train"]
    _, c = _train({**tiny_recipe("dae"), "seed": 1}, runs)
    assert c["val"] != a["val"]


def test_loss_falls_and_outputs_written(runs):
    t, _res = _train(tiny_recipe("ae", steps=60, lr=1e-2), runs)
    hist = t.history["train/loss"]
    assert hist[-1][1] < 0.7 * hist[0][1]
    run = t.run_dir
    assert (run / "recipe.yaml").is_file() and (run / "metrics.json").is_file()
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == 60 and metrics["test"]["psnr"] > 0
    for name in ("curves.png", "filters.png", "filters_evolution.png", "reconstructions.png"):
        assert (run / "figures" / name).is_file(), name
    frames = sorted((run / "figures" / "frames").glob("filters-step*.png"))
    assert [p.name for p in frames] == ["filters-step00000000.png", "filters-step00000030.png",
                                        "filters-step00000060.png"]
    assert (run / "export" / "encoder.safetensors").is_file()
    assert list(run.glob("events.out.tfevents.*"))
    assert len(ckpt.list_step_checkpoints(run / "checkpoints")) == 3  # keep_checkpoints
    assert (run / "checkpoints" / "best.pt").is_file()


def test_tensorboard_has_scalars_images_text_and_hparams(runs):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    t, _ = _train(tiny_recipe("dae"), runs)
    acc = EventAccumulator(str(t.run_dir), size_guidance={"images": 0, "histograms": 0, "tensors": 0})
    acc.Reload()
    tags = acc.Tags()
    assert {"train/loss", "eval/psnr", "eval/psnr_gain", "charts/samples_per_s"} <= set(tags["scalars"])
    assert {"renders/filters", "renders/reconstructions", "renders/feature_maps"} <= set(tags["images"])
    assert any(tag.startswith("weights/") for tag in tags["histograms"])
    assert "activations/code" in tags["histograms"]
    assert any("recipe" in tag for tag in tags["tensors"])
    assert any("hparams" in tag for tag in tags["tensors"]) or "hparams/val/loss" in tags["scalars"]
    assert len(acc.Images("renders/filters")) == 3  # steps 0, 6 and 12


def test_kill_and_resume_equals_uninterrupted(runs):
    full, _ = _train(tiny_recipe("dae", steps=12), runs)
    # "kill" right after step 10: the newest checkpoint is step 8, so steps 9-10 are redone.
    cut = Trainer(from_mapping(tiny_recipe("dae", steps=12)), out_root=runs, quiet=True)
    cut.run(stop_at=10)
    resumed = Trainer(from_mapping(tiny_recipe("dae", steps=12)), resume_dir=cut.run_dir, quiet=True)
    assert resumed.step == 8
    resumed.run()
    a, b = _weights(full.model), _weights(resumed.model)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    assert resumed.history["train/loss"] == full.history["train/loss"]


def test_corrupt_newest_checkpoint_falls_back_with_warning(runs):
    t = Trainer(from_mapping(tiny_recipe("ae", steps=12)), out_root=runs, quiet=True)
    t.run(stop_at=9)
    newest = ckpt.list_step_checkpoints(t.run_dir / "checkpoints")[0]
    assert newest.name == "step-00000008.pt"
    newest.write_bytes(newest.read_bytes()[:100])  # a torn write
    with pytest.warns(UserWarning, match="unreadable"):
        r = Trainer(from_mapping(tiny_recipe("ae", steps=12)), resume_dir=t.run_dir, quiet=True)
    assert r.step == 4
    r.run()
    assert r.step == 12


def test_atomic_save_never_leaves_a_torn_file(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    ckpt.atomic_save({"step": 1, "model": {}}, path)

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError):
        ckpt.atomic_save({"step": 2, "model": {}}, path)
    assert ckpt.safe_load(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


@dataclass
class _NanConfig:
    nan_at: int = param(5, ge=0, help="step whose loss is NaN")


@register_family("_nan_test")
class _NanFamily(Family):
    """Test-only: a linear model whose loss turns NaN at a chosen step."""

    Config = _NanConfig

    def __init__(self, cfg, info):
        super().__init__()
        self.cfg, self.lin = cfg, torch.nn.Linear(64, 1)

    def configure_optimizers(self, train):
        return {"main": torch.optim.SGD(self.parameters(), lr=0.01)}

    def training_step(self, batch, ctx):
        loss = self.lin(batch["x"].flatten(1)).pow(2).mean()
        if ctx.step + 1 == self.cfg.nan_at:
            loss = loss * float("nan")
        ctx.update("main", loss)
        return {"loss": loss.detach()}

    def evaluate(self, batch):
        return {"loss": self.lin(batch["x"].flatten(1)).pow(2).mean()}


def test_nan_loss_stops_with_step_and_keeps_last_good_checkpoint(runs):
    mapping = {**tiny_recipe("ae", steps=12), "family": "_nan_test", "model": {"nan_at": 7}}
    t = Trainer(from_mapping(mapping), out_root=runs, quiet=True)
    with pytest.raises(NonFiniteLossError, match=r"step 7\b.*step-00000004\.pt"):
        t.run()
    kept = ckpt.list_step_checkpoints(t.run_dir / "checkpoints")
    assert [p.name for p in kept] == ["step-00000004.pt"]
    state = ckpt.safe_load(kept[0])
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def teardown_module(module):
    FAMILIES.pop("_nan_test", None)


def test_ctrl_c_between_steps_saves_a_checkpoint_and_mid_step_does_not(runs):
    from genlab.core.errors import GenlabError

    t = Trainer(from_mapping(tiny_recipe("ae", steps=12)), out_root=runs, quiet=True)
    real_render = t.render

    def interrupt_at_6():
        if t.step == 6:
            raise KeyboardInterrupt
        real_render()

    t.render = interrupt_at_6
    with pytest.raises(GenlabError, match="interrupted at step 6; saved .*step-00000006.pt"):
        t.run()
    assert ckpt.list_step_checkpoints(t.ckpt_dir)[0].name == "step-00000006.pt"

    t2 = Trainer(from_mapping(tiny_recipe("ae", steps=12)), out_root=runs, quiet=True)
    real_step = t2.model.training_step

    def interrupt_in_step_7(batch, ctx):
        out = real_step(batch, ctx)  # the update is applied, the step not yet counted
        if ctx.step == 6:
            raise KeyboardInterrupt
        return out

    t2.model.training_step = interrupt_in_step_7
    with pytest.raises(GenlabError,
                       match="interrupted during step 7; the newest checkpoint is .*step-00000004.pt"):
        t2.run()
    assert ckpt.list_step_checkpoints(t2.ckpt_dir)[0].name == "step-00000004.pt"


def test_best_checkpoint_scored_on_test_and_last_weights_kept(runs):
    t, res = _train(tiny_recipe("ae", steps=60, lr=1e-2), runs)
    assert res["best"]["monitor"] == "loss" and "step" in res["best"]
    if res["best"]["step"] != 60:  # best.pt is an earlier step: its own full scores are there
        assert set(res["best"]["test"]) == set(res["test"])
    # make best.pt an earlier, different state: the oldest kept step checkpoint's weights
    early = ckpt.safe_load(ckpt.list_step_checkpoints(t.ckpt_dir)[-1])
    assert early["step"] < 60
    ckpt.atomic_save({"format": "genlab-best", "step": early["step"], "monitor": "loss", "value": 1.0,
                      "model": early["model"]}, t.ckpt_dir / "best.pt")
    last = _weights(t.model)
    best = t.evaluate_best()
    assert best["step"] == early["step"] and best["test"]["loss"] != res["test"]["loss"]
    assert all(torch.equal(v, t.model.state_dict()[k]) for k, v in last.items())  # put back
    t.model.load_state_dict(early["model"])
    assert best["test"] == t.evaluate("test", None)


@pytest.mark.parametrize("render_every", [10, 7])  # the stop step is a render step, or is not
def test_early_stop_keeps_the_final_model_as_last_frame_and_figure(runs, render_every):
    import numpy as np
    from PIL import Image

    mapping = tiny_recipe("ae", steps=60, early_stopping_patience=1)
    mapping["log"].update(eval_every=4, render_every=render_every)
    t, res = _train(mapping, runs)
    assert res["stopped_early"] and t.step < 60
    frames = sorted((t.figures / "frames").glob("filters-step*.png"))
    assert int(frames[-1].stem.rsplit("-step", 1)[1]) == t.step  # the model as it ended
    figure, last, first = (np.asarray(Image.open(p))
                           for p in (t.figures / "filters.png", frames[-1], frames[0]))
    assert np.array_equal(figure, last)
    assert not np.array_equal(figure, first)  # not the untrained model
    assert (t.figures / "filters_evolution.png").is_file()
