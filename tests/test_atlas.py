"""Family "atlas": the residual statistics on hand-made residuals, the warp at known poses, and a
short run on brain slices that learns the anatomy, leaves the lesions in the residual, resumes
exactly and exports an encoder that reloads to the same features."""
from __future__ import annotations

import pytest
import torch

from genlab import load_encoder
from genlab.core.errors import GenlabError
from genlab.core.recipe import from_mapping
from genlab.engine.trainer import Trainer
from genlab.nn.atlas import Atlas, ResidualStats, blur, gaussian_kernel


def test_residual_stats_count_area_above_thresholds_and_order_statistics():
    stats = ResidualStats(scales=[0.0], thresholds=[0.05, 0.2], quantiles=[0.5, 1.0])
    r = torch.zeros(2, 1, 40, 40)
    r[1, 0, 5:15, 5:15] = 0.1  # 100 of 1,600 pixels at 0.1
    f = stats(r)
    assert f.shape == (2, stats.num_features) == (2, 2 * (2 + 2 + 1))
    assert torch.equal(f[0], torch.zeros(10))
    # positive side: share > 0.05, share > 0.2, median, max, positive mean
    torch.testing.assert_close(f[1, :5], torch.tensor([100 / 1600, 0.0, 0.0, 0.1, 0.1 * 100 / 1600]))
    assert torch.equal(f[1, 5:], torch.zeros(5))  # nothing darker than the atlas
    g = stats(-r)[1]  # a dark finding shows on the other side
    torch.testing.assert_close(g[5:], f[1, :5])


def test_smoothing_keeps_mass_and_separates_blob_sizes():
    stats = ResidualStats(scales=[2.0], thresholds=[0.03], quantiles=[1.0])
    big, small = torch.zeros(1, 1, 48, 48), torch.zeros(1, 1, 48, 48)
    big[..., 20:28, 20:28] = 0.1   # one 8 x 8 blob
    small[..., 10, 10::6] = 0.1    # the same kind of finding as scattered single pixels
    sb = blur(big, gaussian_kernel(2.0))
    torch.testing.assert_close(sb.sum(), big.sum(), rtol=1e-4, atol=0)  # the blob is far from the border
    # after smoothing, the big blob stays above the threshold, single pixels do not
    assert stats(big)[0, 0] > 0 and stats(small)[0, 0] == 0


def test_identity_pose_renders_the_template_and_gain_offset_act_on_intensity():
    atlas = Atlas([1, 16, 12], widths=[4], up=1)
    img = torch.rand(1, 1, 16, 12)
    with torch.no_grad():
        atlas.template.copy_(img)
    pose = torch.zeros(2, 6)
    pose[1, 4], pose[1, 5] = torch.log(torch.tensor(2.0)), 0.1  # gain 2, offset 0.1
    out = atlas.render(pose)
    torch.testing.assert_close(out[0], img[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(out[1], 2 * img[0] + 0.1, rtol=0, atol=1e-5)
    # a fresh pose net predicts the identity pose for any image
    assert torch.equal(atlas.pose(torch.rand(3, 1, 16, 12)), torch.zeros(3, 6))


def test_a_shift_of_the_pose_moves_the_template_by_that_many_pixels():
    atlas = Atlas([1, 16, 16], widths=[4], up=1)
    img = torch.zeros(1, 1, 16, 16)
    img[..., 8, 4] = 1.0
    with torch.no_grad():
        atlas.template.copy_(img)
    pose = torch.zeros(1, 6)
    pose[0, 2] = -2 * 2 / 16  # sampling 2 px to the left of each output pixel: the image moves right
    out = atlas.render(pose)[0, 0]
    assert out.argmax().item() == 8 * 16 + 6


def _brain_recipe(steps: int, **log) -> dict:
    return {"family": "atlas", "seed": 0,
            "data": {"name": "brain", "mode": "easy", "size": [64, 48], "val_size": 64, "test_size": 64},
            "model": {"pose_widths": [8, 16, 16], "scales": [0.0, 1.0]},
            "train": {"steps": steps, "batch_size": 16, "lr": 3e-3, "device": "cpu", "eval_batches": 2},
            "log": {"every": 1, "eval_every": steps, "render_every": steps, "checkpoint_every": 4,
                    "keep_checkpoints": 3, "render_examples": 8, **log}}


def test_loss_falls_and_the_residual_holds_the_easy_lesions(runs):
    t = Trainer(from_mapping(_brain_recipe(80, probe_train=64, probe_val=64)), out_root=runs,
                quiet=True, progress=False)
    res = t.run()
    loss = [v for _, v in t.history["train/loss"]]
    assert sum(loss[-5:]) / 5 < 0.7 * sum(loss[:5]) / 5, loss
    val = res["val"]
    assert {"lesion_residual", "anomaly_auc", "probe_acc", "probe_lesion_auc"} <= val.keys()
    # the template is the healthy anatomy: most of each bright easy-mode tumour is left over
    assert val["lesion_residual"] > 0.5 and val["anomaly_auc"] > 0.8, val
    assert (t.run_dir / "figures" / "template.png").exists()


def test_resume_reproduces_exactly(runs):
    full = Trainer(from_mapping(_brain_recipe(10)), out_root=runs, quiet=True, progress=False)
    full.run(stop_at=10)
    cut = Trainer(from_mapping(_brain_recipe(10)), out_root=runs, quiet=True, progress=False)
    cut.run(stop_at=6)  # stopped after step 6: the newest checkpoint is step 4
    resumed = Trainer(from_mapping(_brain_recipe(10)), resume_dir=cut.run_dir, quiet=True, progress=False)
    assert resumed.step == 4
    resumed.run(stop_at=10)
    a, b = full.model.state_dict(), resumed.model.state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


def test_export_reloads_to_the_same_features(runs):
    t = Trainer(from_mapping(_brain_recipe(4)), out_root=runs, quiet=True, progress=False)
    t.run()
    enc = load_encoder(t.run_dir / "export")
    x = t._batch("val", torch.arange(8))["x"]
    t.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(enc(x), t.model.encode(x), rtol=0, atol=0)
    assert enc(x).shape == (8, t.model.out_features)


@pytest.mark.parametrize("key,value", [("scales", []), ("thresholds", [0.0]), ("up", 0)])
def test_bad_settings_name_the_key(key, value):
    rec = _brain_recipe(2)
    rec["model"][key] = value
    with pytest.raises(GenlabError, match=key):
        from_mapping(rec)


def test_a_pose_net_deeper_than_the_image_is_refused_with_the_key(runs):
    rec = _brain_recipe(2)
    rec["model"]["pose_widths"] = [4] * 7  # 64 x 48 halved seven times
    with pytest.raises(GenlabError, match="model.pose_widths.*at most 5"):
        Trainer(from_mapping(rec), out_root=runs, quiet=True, progress=False)
    assert not runs.exists() or not any(runs.rglob("recipe.yaml"))  # no run folder left behind
