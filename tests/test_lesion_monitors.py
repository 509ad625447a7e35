"""The lesion-aware monitors on cases whose answer is known by construction."""
from __future__ import annotations

import math

import pytest
import torch

from genlab.core.recipe import from_mapping
from genlab.data.base import DataInfo
from genlab.engine.online_probe import OnlineProbe
from genlab.engine.trainer import Trainer
from genlab.metrics.lesion import lesion_contrast, lesion_scores, masked_sq_error, retention, ring


def _images(n=6, seed=0):
    """Gray slices with one bright disc each (the lesion) and its mask; the last has no lesion."""
    g = torch.Generator().manual_seed(seed)
    x = 0.3 + 0.05 * torch.rand((n, 1, 32, 32), generator=g)
    yy, xx = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
    mask = torch.zeros((n, 1, 32, 32), dtype=torch.bool)
    for i in range(n - 1):
        cy, cx = 8 + 3 * i, 10 + 2 * i
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= 9
        mask[i, 0] = disc
        x[i, 0][disc] += 0.2 + 0.05 * i
    return x, mask


def test_ring_surrounds_the_mask_without_touching_it():
    _, mask = _images()
    r = ring(mask, 3)
    assert not (r & mask).any()
    assert r[:-1].flatten(1).sum(1).min() > 0 and not r[-1].any()  # no lesion: no ring


def test_identity_reconstruction_retains_everything_and_a_constant_nothing():
    x, mask = _images()
    clean = lesion_contrast(x, mask)
    assert math.isnan(clean[-1]) and (clean[:-1] > 0.15).all()
    assert retention(lesion_contrast(x, mask), clean) == pytest.approx(1.0)
    flat = torch.full_like(x, 0.3)
    assert retention(lesion_contrast(flat, mask), clean) == pytest.approx(0.0, abs=1e-6)
    half = 0.3 + 0.5 * (x - 0.3)  # every contrast halved
    assert retention(lesion_contrast(half, mask), clean) == pytest.approx(0.5, abs=1e-5)


def test_lesion_scores_from_collected_outputs():
    x, mask = _images()
    err, px = masked_sq_error(x + 0.1 * mask, x, mask)
    out = lesion_scores({"lesion_contrast_clean": lesion_contrast(x, mask),
                         "lesion_contrast_recon": lesion_contrast(x, mask),
                         "lesion_sq_err": err, "lesion_px": px})
    assert out["lesion_retention"] == pytest.approx(1.0)
    assert out["lesion_psnr"] == pytest.approx(20.0, abs=1e-4)  # error 0.1 inside the masks only


class _Separable(torch.nn.Module):
    """An 'encoder' whose features are the labels themselves (one-hot, plus noise)."""

    def __init__(self, data):
        super().__init__()
        self.data = data

    def can(self, capability):
        return capability == "encode"

    def encode(self, x):
        return x.flatten(1)[:, :4]


class _Data:
    def __init__(self, n=400, informative=True):
        g = torch.Generator().manual_seed(0)
        self.y = {s: torch.randint(0, 4, (n,), generator=g) for s in ("train", "val")}
        self.noise = {s: torch.randn((n, 1, 4, 4), generator=g) for s in ("train", "val")}
        self.informative = informative
        self.info = DataInfo(name="toy", input_shape=(1, 4, 4), num_classes=4,
                             class_names=("A", "B", "C", "Z"))

    def size(self, split):
        return len(self.y[split])

    def get(self, split, idx):
        x = self.noise[split][idx].clone()
        if self.informative:
            x.view(len(idx), -1)[:, :4] += 4 * torch.nn.functional.one_hot(self.y[split][idx], 4)
        return {"x": x, "y": self.y[split][idx]}


def test_online_probe_reads_separable_features_perfectly_and_noise_at_chance():
    data = _Data()
    probe = OnlineProbe(data, n_train=300, n_val=100, device=torch.device("cpu"))
    out = probe(_Separable(data))
    assert out["probe_acc"] == 1.0 and out["probe_lesion_auc"] == 1.0
    noise = _Data(informative=False)
    out = OnlineProbe(noise, 300, 100, torch.device("cpu"))(_Separable(noise))
    assert 0.1 < out["probe_acc"] < 0.45 and 0.3 < out["probe_lesion_auc"] < 0.7


def test_dae_run_reports_lesion_scores_and_the_probe(tmp_path):
    rec = from_mapping({
        "family": "dae", "seed": 0,
        "data": {"name": "brain", "mode": "easy", "val_size": 64, "test_size": 64},
        "model": {"arch": "conv", "channels": [8, 16], "bottleneck": 8, "code": "spatial"},
        "train": {"steps": 6, "batch_size": 8, "eval_batches": 2},
        "log": {"every": 3, "eval_every": 3, "render_every": 0, "checkpoint_every": 0,
                "probe_train": 48, "probe_val": 32},
    })
    result = Trainer(rec, out_root=tmp_path, quiet=True).run()
    for key in ("lesion_retention", "lesion_psnr", "lesion_psnr_input", "probe_acc", "probe_lesion_auc"):
        assert key in result["val"] and math.isfinite(result["val"][key]), key
    assert "lesion_retention" in result["test"]
