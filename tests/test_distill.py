"""Family "distill": a classifier backbone learns to predict a frozen teacher's features.

The target statistics on hand-made features (constant dimensions leave the loss), a short run
whose loss falls and whose share of explained teacher variation rises, exact resume (the target
statistics are saved, not recomputed), an export that loads whole into the classifier, and the
errors for a missing or mismatched teacher."""
from __future__ import annotations

import pytest
import torch
from conftest import tiny_atlas_teacher

from genlab.core.errors import GenlabError
from genlab.core.recipe import from_mapping
from genlab.engine.trainer import Trainer


def _recipe(steps: int, teacher: str | None = None, **log) -> dict:
    return {"family": "distill", "seed": 0,
            "data": {"name": "brain", "mode": "easy", "size": [32, 24], "classes": "syndrome",
                     "val_size": 64, "test_size": 64},
            "model": {"teacher": teacher or tiny_atlas_teacher((1, 32, 24)), "channels": [8, 16, 16],
                      "stem_stride": 1, "target_images": 128},
            "train": {"steps": steps, "batch_size": 32, "lr": 3e-3, "device": "cpu", "eval_batches": 2},
            "log": {"every": 1, "eval_every": steps, "render_every": steps, "checkpoint_every": 4,
                    "keep_checkpoints": 3, "render_examples": 8, **log}}


def test_targets_are_standardised_and_constant_dimensions_leave_the_loss(runs):
    model = Trainer(from_mapping(_recipe(1)), out_root=runs, quiet=True, progress=False).model
    feats = torch.randn(200, model.head.out_features) * 3 + 5
    feats[:, 0] = 0.7  # a share above a contrast no image reaches: always the same
    model.set_target_stats(feats)
    assert not bool(model.target_used[0]) and bool(model.target_used[1:].all())
    z = (feats - model.target_mean) / model.target_std
    torch.testing.assert_close(z[:, 1:].mean(0), torch.zeros(feats.shape[1] - 1), rtol=0, atol=1e-5)
    torch.testing.assert_close(z[:, 1:].std(0), torch.ones(feats.shape[1] - 1), rtol=0, atol=1e-5)
    # the constant dimension costs nothing however wrong the prediction
    pred = torch.zeros_like(z)
    pred[:, 0] = 1e6
    torch.testing.assert_close(model._losses(pred, z), z[:, 1:].pow(2).mean(1))


def test_loss_falls_the_teacher_stays_frozen_and_the_prediction_explains_it(runs):
    t = Trainer(from_mapping(_recipe(60, probe_train=64, probe_val=64)), out_root=runs,
                quiet=True, progress=False)
    teacher = {k: v.clone() for k, v in t.model.teacher.state_dict().items()}
    stats = t.model.target_mean.clone()
    res = t.run()
    loss = [v for _, v in t.history["train/loss"]]
    assert sum(loss[-5:]) / 5 < 0.6 * sum(loss[:5]) / 5, loss
    for k, v in t.model.teacher.state_dict().items():
        assert torch.equal(v, teacher[k]), k  # never trained
    assert torch.equal(t.model.target_mean, stats) and bool(t.model.targets_ready)
    val = res["val"]
    assert {"loss", "explained", "probe_acc", "probe_lesion_auc"} <= val.keys()
    assert 0.3 < val["explained"] <= 1.0, val
    assert {"inputs", "filters", "feature_maps"} <= t.model.renders(t._batch("val", torch.arange(8))).keys()


def test_resume_reproduces_exactly(runs):
    full = Trainer(from_mapping(_recipe(10)), out_root=runs, quiet=True, progress=False)
    full.run(stop_at=10)
    cut = Trainer(from_mapping(_recipe(10)), out_root=runs, quiet=True, progress=False)
    cut.run(stop_at=6)
    resumed = Trainer(from_mapping(_recipe(10)), resume_dir=cut.run_dir, quiet=True, progress=False)
    assert resumed.step == 4
    resumed.run(stop_at=10)
    a, b = full.model.state_dict(), resumed.model.state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


def test_export_loads_whole_into_the_classifier(runs, tmp_path):
    t = Trainer(from_mapping(_recipe(4)), out_root=runs, quiet=True, progress=False)
    t.run()
    cls = {"family": "classifier", "seed": 0, "data": _recipe(1)["data"],
           "model": {"init": str(t.run_dir / "export"), "mode": "finetune", "backbone": "vgg_sep",
                     "channels": [8, 16, 16]},
           "train": {"steps": 1, "batch_size": 8, "device": "cpu"}}
    clf = Trainer(from_mapping(cls), out_root=tmp_path / "cls", quiet=True, progress=False).model
    r = clf.init_report
    assert r["family"] == "distill" and r["builder"] == "classifier_backbone"
    assert not r["skipped"] and not r["missing"]
    assert {d["name"] for d in r["loaded"]} == set(t.model.backbone.state_dict())  # no head, no teacher
    x = t._batch("val", torch.arange(4))["x"]
    t.model.eval(), clf.eval()
    with torch.no_grad():
        torch.testing.assert_close(clf.backbone(x), t.model.encode(x), rtol=0, atol=0)


def test_no_teacher_or_a_teacher_for_other_images_is_refused_with_the_key(runs, tmp_path):
    rec = _recipe(1)
    rec["model"]["teacher"] = None
    with pytest.raises(GenlabError, match="model.teacher.*exported encoder"):
        Trainer(from_mapping(rec), out_root=runs, quiet=True, progress=False)
    rec["model"]["teacher"] = tiny_atlas_teacher((1, 8, 8))
    with pytest.raises(GenlabError, match=r"model.teacher.*\[1, 8, 8\].*\[1, 32, 24\]"):
        Trainer(from_mapping(rec), out_root=runs, quiet=True, progress=False)
    rec["model"]["teacher"] = str(tmp_path / "nowhere")
    with pytest.raises(GenlabError, match="model.teacher"):
        from_mapping(rec)
    assert not runs.exists() or not any(runs.rglob("recipe.yaml"))  # no run folder left behind
