"""G's class term with a floor (model.g_ac_floor: real): only what a fake's cross-entropy lies
above the real batch's counts, so G is not pulled past the real images' confidence; with
model.g_ac_floor_from, only from that step on."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_recipe

from genlab.core.errors import RecipeError
from genlab.core.recipe import from_mapping
from genlab.engine.trainer import Trainer
from genlab.nn.gan_losses import g_class_loss

AC = {"conditional": True, "ac_weight": 1.0, "g_diversity": 0.0, "d_width": 32}


def test_the_floor_drops_the_fakes_clearer_than_the_real_images():
    y = torch.tensor([0, 1, 2])
    logits = torch.tensor([[4.0, 0, 0], [0.5, 0, 0], [0, 0, 9.0]], requires_grad=True)
    ce = F.cross_entropy(logits, y, reduction="none")  # ~0.04, ~0.97, ~0.0002
    assert torch.equal(g_class_loss(logits, y), F.cross_entropy(logits, y))  # no floor: AC-GAN
    floor = torch.tensor(0.5)
    loss = g_class_loss(logits, y, floor)
    assert loss.item() == pytest.approx((ce[1] - 0.5).item() / 3)  # only fake 1 is above the floor
    loss.backward()
    assert logits.grad[0].abs().sum() == 0 and logits.grad[2].abs().sum() == 0
    assert logits.grad[1, 1] < 0  # fake 1 is pushed toward its class, the others are left alone


def test_a_gan_trains_with_the_floor_and_the_key_needs_the_class_head(tmp_path):
    def trained(floor, start=0):
        r = tiny_recipe("gan", steps=3)
        r["model"] = {**r["model"], **AC, "g_ac_floor": floor, "g_ac_floor_from": start}
        t = Trainer(from_mapping(r), out_root=tmp_path / f"{floor}{start}", quiet=True)
        assert t.run()["steps"] == 3
        return t.model

    plain, floored, late = trained("none"), trained("real"), trained("real", start=3)
    assert torch.isfinite(floored._ac_real_ce) and floored._ac_real_ce > 0  # the real batch's CE
    g0 = dict(plain.G.named_parameters())  # the same seed and data: only G's class term differs
    assert any(not torch.allclose(p, g0[k]) for k, p in floored.G.named_parameters())
    # g_ac_floor_from: before that step G's term is the plain one, to the bit
    assert all(torch.equal(p, g0[k]) for k, p in late.G.named_parameters())
    r = tiny_recipe("gan", steps=3)
    r["model"] = {**r["model"], **AC, "ac_weight": 0.0, "g_ac_floor": "real"}
    with pytest.raises(RecipeError, match="g_ac_floor"):
        from_mapping(r)
    r["model"] = {**r["model"], **AC, "g_ac_floor": "none", "g_ac_floor_from": 100}
    with pytest.raises(RecipeError, match="g_ac_floor_from: 100 needs g_ac_floor: real"):
        from_mapping(r)
