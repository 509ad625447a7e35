"""Family "ssl" (SimCLR / VICReg on two views of each image) and its views: the views alter what
they promise and nothing else, the losses have their known values, training lowers the loss and
resumes exactly, the online probe reports, and the export loads into a classifier whole."""
from __future__ import annotations

import math

import pytest
import torch

from genlab.core.errors import RecipeError
from genlab.core.recipe import from_mapping
from genlab.data.views import Views
from genlab.engine.trainer import Trainer
from genlab.families.ssl import _global, embedding_std, nt_xent, vicreg_terms

TINY_SSL = {"family": "ssl", "data": {"name": "digits"},
            "model": {"channels": [4, 8, 8], "projector": [16, 8]}}


# Mild views: at 32 x 24 px the default ones leave little but the lesions to tell images apart,
# which a few dozen steps do not learn; the machinery is the same.
MILD = {"scale": [0.95, 1.05], "shift": 1, "gain": [0.9, 1.1], "shade": 0.02, "noise": [0, 0.02]}


def _brain_recipe(steps: int, objective: str = "simclr", **log) -> dict:
    return {"family": "ssl", "seed": 0,
            "data": {"name": "brain", "mode": "easy", "size": [32, 24], "val_size": 64, "test_size": 32},
            "model": {"objective": objective, "channels": [8, 16, 16], "projector": [32, 16],
                      "views": MILD},
            "train": {"steps": steps, "batch_size": 32, "lr": 3e-3, "optimizer": "adamw",
                      "device": "cpu", "eval_batches": 1},
            "log": {"every": 5, "eval_every": 0, "render_every": 0, "checkpoint_every": 4,
                    "keep_checkpoints": 3, "render_examples": 8, "histograms": False,
                    "probe_train": 0, **log}}


def _images(n=6, h=32, w=24, seed=0) -> torch.Tensor:
    from genlab.data.brain import BrainConfig, BrainData

    return BrainData(BrainConfig(size=[h, w]), seed=seed).get("train", torch.arange(n))["x"]


# -- views -----------------------------------------------------------------------------------
def test_views_keep_shape_and_range_differ_and_reproduce_with_a_generator():
    x = _images()
    v1, v2 = Views()(x, torch.Generator().manual_seed(3))
    assert v1.shape == v2.shape == x.shape
    assert float(torch.cat([v1, v2]).min()) >= 0 and float(torch.cat([v1, v2]).max()) <= 1
    assert (v1 - v2).abs().mean(dim=(1, 2, 3)).min() > 0.01  # every image's two views differ
    w1, w2 = Views()(x, torch.Generator().manual_seed(3))
    assert torch.equal(v1, w1) and torch.equal(v2, w2)
    rng = torch.get_rng_state()
    Views()(x, torch.Generator().manual_seed(4))
    assert torch.equal(torch.get_rng_state(), rng), "a given generator must leave the global RNG alone"


def test_views_draw_fresh_noise_and_a_blur_that_changes_pixels():
    flat = torch.full((4, 1, 16, 16), 0.5)
    plain = Views(scale=[1, 1], shift=0, gain=[1, 1], shade=0, noise=[0.0, 0.0])
    v1, _ = plain(flat, torch.Generator().manual_seed(0))
    inner = (..., slice(1, -1), slice(1, -1))  # the outer pixels blend in the outside (0)
    torch.testing.assert_close(v1[inner], flat[inner])  # resampling a flat image keeps it flat
    noisy = Views(scale=[1, 1], shift=0, gain=[1, 1], shade=0, noise=[0.05, 0.05])
    n1, n2 = noisy(flat, torch.Generator().manual_seed(0))
    assert 0.02 < float((n1[inner] - 0.5).abs().mean()) < 0.03  # uniform in +-0.05: mean |.| 0.025
    assert not torch.equal(n1, n2)
    dot = torch.zeros(2, 1, 15, 15)
    dot[:, :, 7, 7] = 1
    blurred = Views(scale=[1, 1], shift=0, gain=[1, 1], shade=0, noise=[0, 0], blur_prob=1.0).apply(
        dot, torch.Generator().manual_seed(0))
    assert float(blurred[:, :, 7, 7].max()) < 0.5 and float(blurred.sum()) > 0.5


def test_views_scale_x_and_y_independently():
    # A bright vertical bar and a horizontal bar: their widths measure the x and the y scale.
    n, size = 64, 64
    img = torch.zeros(n, 1, size, size)
    img[:, :, 8:56, 24:40] = 1.0  # 16 px wide in x
    only_scale = Views(scale=[0.7, 1.3], shift=0, gain=[1, 1], shade=0, noise=[0, 0])
    v = only_scale.apply(img, torch.Generator().manual_seed(0))
    width = v.sum(dim=3).amax(dim=(1, 2))   # px across the widest row: ~16 * sx
    height = v.sum(dim=2).amax(dim=(1, 2))  # px along the tallest column: ~48 * sy
    sx, sy = width / 16, height / 48
    assert float(sx.std()) > 0.1 and float(sy.std()) > 0.1
    assert abs(float(torch.corrcoef(torch.stack([sx, sy]))[0, 1])) < 0.35
    assert float((sx / sy).std()) > 0.1  # the aspect ratio changes: no image keeps its own


def test_bad_view_settings_are_refused_with_the_key():
    bad = dict(TINY_SSL, model={"views": {"scale": [1.2, 0.8]}})
    with pytest.raises(RecipeError, match=r"model.views: scale: expected \[low, high\] with low <= high"):
        from_mapping(bad)


# -- losses: known answers -------------------------------------------------------------------
def test_nt_xent_known_answers():
    n, d = 32, 2048
    g = torch.Generator().manual_seed(0)
    rand, acc = nt_xent(torch.randn(n, d, generator=g), torch.randn(n, d, generator=g), 1.0)
    assert float(rand) == pytest.approx(math.log(2 * n - 1), abs=0.05)
    eye = torch.eye(n, d)  # partners identical, everything else orthogonal
    aligned, acc = nt_xent(eye, eye.clone(), 0.05)
    assert float(aligned) < 1e-6 and float(acc) == 1.0


def test_vicreg_terms_known_answers():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(4096, 8, generator=g) * 2  # std 2 > 1, independent dimensions
    t = vicreg_terms(z, z.clone())
    assert float(t["invariance"]) == 0 and float(t["variance"]) == 0
    # sampling noise only: 2 branches x 56 off-diagonal entries of variance (2*2)^2/4096, / 8
    assert float(t["covariance"]) == pytest.approx(2 * 56 * 16 / 4096 / 8, rel=0.3)
    twins = torch.cat([z[:, :4], z[:, :4]], dim=1)  # 4 pairs of equal dimensions: cov 4 each
    assert float(vicreg_terms(twins, twins)["covariance"]) == pytest.approx(2 * 8 * 16 / 8, rel=0.1)
    const = torch.ones(64, 8)  # collapsed: std 0 -> hinge 1 (less sqrt(eps))
    assert float(vicreg_terms(const, const)["variance"]) == pytest.approx(1.0, abs=0.02)
    assert float(embedding_std(const)) == 0 and 0.8 < float(embedding_std(z)) < 1.2


class _Rank:
    """A StepContext's data-parallel part for one of two simulated ranks: `all_gather_cat` hands
    back the whole (detached) global tensor, as every rank would see it."""

    world_size = 2

    def __init__(self, rank: int, everything: torch.Tensor):
        self.rank, self.everything = rank, everything

    def all_gather_cat(self, t: torch.Tensor) -> torch.Tensor:
        return self.everything.detach()


@pytest.mark.parametrize("objective", ["simclr", "vicreg"])
def test_each_rank_gets_exactly_the_global_gradient_of_its_embeddings(objective):
    # Each rank computes the global loss with the other rank's embeddings gathered without
    # gradient: its own embeddings then get exactly their gradient of the global loss.
    def loss(z1, z2):
        return nt_xent(z1, z2, 0.5)[0] if objective == "simclr" else sum(vicreg_terms(z1, z2).values())

    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(8, 5, generator=g), torch.randn(8, 5, generator=g)
    full1, full2 = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    whole = loss(full1, full2)
    whole.backward()
    for rank in (0, 1):
        rows = slice(4 * rank, 4 * rank + 4)
        own1, own2 = z1[rows].clone().requires_grad_(), z2[rows].clone().requires_grad_()
        part = loss(_global(own1, _Rank(rank, z1)), _global(own2, _Rank(rank, z2)))
        torch.testing.assert_close(part, whole.detach())
        part.backward()
        torch.testing.assert_close(own1.grad, full1.grad[rows])
        torch.testing.assert_close(own2.grad, full2.grad[rows])


# -- training --------------------------------------------------------------------------------
@pytest.mark.parametrize("objective", ["simclr", "vicreg"])
def test_loss_falls_and_parameters_change(objective, runs):
    t = Trainer(from_mapping(_brain_recipe(30, objective, every=1)), out_root=runs, quiet=True,
                progress=False)
    before = {k: v.clone() for k, v in t.model.state_dict().items()}
    t.run(stop_at=30)
    loss = [v for _, v in t.history["train/loss"]]
    first, last = sum(loss[:5]) / 5, sum(loss[-5:]) / 5
    assert last < first - (0.5 if objective == "simclr" else 2.0), loss
    if objective == "simclr":
        acc = [v for _, v in t.history["train/acc"]]
        assert sum(acc[-5:]) > sum(acc[:5])
    else:
        assert {"train/invariance", "train/variance", "train/covariance", "train/emb_std"} <= t.history.keys()
    after = t.model.state_dict()
    assert all(not torch.equal(before[k], after[k]) for k in before if k.endswith("weight"))


def test_resume_reproduces_exactly(runs):
    full = Trainer(from_mapping(_brain_recipe(12)), out_root=runs, quiet=True, progress=False)
    full.run(stop_at=12)
    cut = Trainer(from_mapping(_brain_recipe(12)), out_root=runs, quiet=True, progress=False)
    cut.run(stop_at=10)  # killed after step 10: the newest checkpoint is step 8
    resumed = Trainer(from_mapping(_brain_recipe(12)), resume_dir=cut.run_dir, quiet=True, progress=False)
    assert resumed.step == 8
    resumed.run(stop_at=12)
    a, b = full.model.state_dict(), resumed.model.state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


def test_online_probe_reports_and_export_loads_whole_into_a_classifier(runs, tmp_path):
    t = Trainer(from_mapping(_brain_recipe(4, probe_train=64, probe_val=64)), out_root=runs,
                quiet=True, progress=False)
    res = t.run()
    assert {"probe_acc", "probe_lesion_auc", "loss", "acc", "emb_std"} <= res["val"].keys()
    cls = {"family": "classifier", "seed": 0, "data": _brain_recipe(1)["data"],
           "model": {"init": str(t.run_dir / "export"), "mode": "finetune"},
           "train": {"steps": 1, "batch_size": 8, "device": "cpu"}}
    clf = Trainer(from_mapping(cls), out_root=tmp_path / "cls", quiet=True, progress=False).model
    r = clf.init_report
    assert r["family"] == "ssl" and r["builder"] == "classifier_backbone"
    assert not r["skipped"] and not r["missing"]
    assert {d["name"] for d in r["loaded"]} == set(t.model.backbone.state_dict())  # no projector
    x = t._batch("val", torch.arange(4))["x"]
    t.model.eval(), clf.eval()
    with torch.no_grad():
        torch.testing.assert_close(clf.backbone(x), t.model.encode(x), rtol=0, atol=0)
    assert {"views", "filters", "feature_maps"} <= t.model.renders(t._batch("val", torch.arange(8))).keys()
