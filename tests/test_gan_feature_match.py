"""G's per-class feature match (model.g_feature_match). Checked: the term pulls each class's mean
features to the real class's and not the spread within the class (noisy 8-example batches, the
spread unchanged); its gradient is the moving-average gap over the class's count, zero for a class
not yet seen on both sides; a recipe with it trains, logs the gap, resumes bit for bit, and is off
(no buffers, the same state) by default."""
from __future__ import annotations

import math

import torch
from conftest import tiny_recipe
from test_gan_atlas import resume_matches_full

from genlab.core.recipe import from_mapping
from genlab.engine.trainer import Trainer
from genlab.families.gan_feature_match import DECAY, ClassFeatureMatch


def test_the_term_pulls_class_means_to_the_real_ones_and_keeps_the_spread():
    torch.manual_seed(0)
    k, f, n = 3, 5, 24
    real_means = torch.randn(k, f) * 2
    centre = torch.zeros(k, f, requires_grad=True)  # G's "features": its centre plus fixed noise
    opt = torch.optim.SGD([centre], lr=0.5)
    fm = ClassFeatureMatch(k, f)
    for _ in range(300):
        y = torch.arange(n) % k
        fm.observe_real(real_means[y] + torch.randn(n, f), y)
        spread = torch.randn(n, f)  # the within-class spread G draws: not a parameter here
        term, _ = fm.loss(centre[y] + spread, y)
        opt.zero_grad()
        term.backward()
        opt.step()
    assert float((centre - real_means).abs().max()) < 0.3  # from 2-5 away
    _, gap = fm.loss(centre[torch.arange(n) % k] + torch.randn(n, f), torch.arange(n) % k)
    assert float(gap) < 0.5


def test_the_gradient_is_the_averaged_gap_over_the_class_count_and_zero_for_an_unseen_class():
    fm = ClassFeatureMatch(3, 2)
    fm.observe_real(torch.tensor([[1.0, 0.0], [3.0, 0.0]]), torch.tensor([0, 0]))  # class 0: mean (2, 0)
    fm.observe_real(torch.tensor([[0.0, 4.0]]), torch.tensor([0]))  # -> 0.9 (2, 0) + 0.1 (0, 4)
    torch.testing.assert_close(fm.real[0], torch.tensor([2 * DECAY, 0.4]))
    feats = torch.tensor([[0.0, 0.0], [2.0, 2.0], [5.0, 5.0]], requires_grad=True)
    y = torch.tensor([0, 0, 1])  # class 1 has no real average yet: no pull
    term, gap = fm.loss(feats, y)
    term.backward()
    expect = torch.tensor([1.0, 1.0]) - fm.real[0]  # the fake average (its first batch) - the real
    torch.testing.assert_close(feats.grad[:2], (expect / 2).expand(2, 2))
    assert torch.equal(feats.grad[2], torch.zeros(2))
    torch.testing.assert_close(gap, expect.pow(2).sum())


def test_a_feature_match_recipe_trains_logs_the_gap_and_resumes_exactly(tmp_path):
    full = resume_matches_full(tmp_path, {"conditional": True, "ac_weight": 1.0, "g_feature_match": 1.0})
    state = full.model.state_dict()
    assert {"feature_match.real", "feature_match.fake", "feature_match.seen"} <= set(state)
    assert bool(state["feature_match.seen"].any())
    gaps = [v for _, v in full.history["train/g_feature_gap"]]
    assert gaps and all(math.isfinite(v) and v >= 0 for v in gaps)
    plain = Trainer(from_mapping(tiny_recipe("gan", steps=1)), out_root=tmp_path / "plain", quiet=True)
    assert plain.model.feature_match is None
    assert not any(k.startswith("feature_match") for k in plain.model.state_dict())
