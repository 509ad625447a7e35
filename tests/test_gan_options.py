"""The GAN options for drawing small class-specific details (the tumours): the AC-GAN class head
(ac_weight, ac_fakes), a D without the projection term (d_projection), the R1 penalty
(r1_gamma, r1_every), differentiable augmentation (d_augment) and generator layers at full
resolution (g_full_res). Each is checked on a small case with a known answer; resume stays
exact with all of them on."""
from __future__ import annotations

import pytest
import torch
from conftest import tiny_recipe

from genlab.core.errors import RecipeError
from genlab.core.recipe import from_mapping
from genlab.engine.trainer import Trainer
from genlab.nn.gan_augment import diff_augment, translate
from genlab.nn.gan_blocks import Discriminator, Generator, gan_widths, load_generator
from genlab.nn.gan_losses import r1_penalty

AC = {"conditional": True, "ac_weight": 1.0, "g_diversity": 0.0, "d_width": 32}


def _recipe(steps=6, model=None):
    r = tiny_recipe("gan", steps=steps)
    r["model"] = {**r["model"], **(model or {})}
    return r


def _trainer(runs, steps=6, model=None):
    return Trainer(from_mapping(_recipe(steps, model)), out_root=runs, quiet=True)


def _params(module):
    return {k: v.detach().clone() for k, v in module.named_parameters()}


def test_class_head_learns_separable_classes():
    # 4 classes of 16x16 images: one 3x3 blob at a random place, as bright as 0.2 (k + 1) for
    # class k. Only the class head's loss is trained; pooled over positions, it must read the
    # blob wherever it is.
    gen = torch.Generator().manual_seed(0)
    y = torch.arange(4).repeat(32)
    x = 0.05 * torch.rand(128, 1, 16, 16, generator=gen)
    at = torch.randint(0, 13, (128, 2), generator=gen)
    for i in range(128):
        r, c = at[i].tolist()
        x[i, :, r:r + 3, c:c + 3] += 0.2 * (y[i] + 1)
    torch.manual_seed(0)
    d = Discriminator([1, 16, 16], gan_widths(16, 16, 8, 16), 16, num_classes=4, spectral_norm=True,
                      ac_classes=4)
    assert d.classify.in_features == 8 + 16  # one max per channel of each conv layer
    opt = torch.optim.Adam(d.parameters(), lr=1e-2)
    losses = []
    for _ in range(150):
        score, logits = d(x, y, with_class=True)
        assert score.shape == (128,) and logits.shape == (128, 4)
        loss = torch.nn.functional.cross_entropy(logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    acc = (logits.argmax(1) == y).float().mean().item()
    assert losses[0] > 1.2 and losses[-1] < 0.3 and acc > 0.9, (losses[0], losses[-1], acc)
    with pytest.raises(ValueError, match="no auxiliary classifier"):
        Discriminator([1, 8, 8], [8], 16, num_classes=4)(x[:, :, :8, :8], y, with_class=True)


def test_d_step_trains_the_class_head_on_real_labels(runs):
    t = _trainer(runs, model={**AC, "ac_weight": 5.0})
    m, batch = t.model, t._batch("train", torch.arange(32))
    assert m.D.classify.out_features == 10  # digits
    first = m.d_step(batch["x"], batch["y"], t.ctx)
    for _ in range(80):
        last = m.d_step(batch["x"], batch["y"], t.ctx)
    # ln 10 = 2.30 at chance; the head must separate many of the 32 digits
    assert first["d_ac"] > 2.0 and last["d_ac"] < 0.75 * first["d_ac"], (first["d_ac"], last["d_ac"])
    assert last["d_ac_acc"] >= 0.5 > first["d_ac_acc"]
    assert last["d_ac_acc"] > first["d_ac_acc"]


def test_generator_learns_from_the_class_head_alone(runs, monkeypatch):
    import genlab.families.gan as gan_mod

    # with the adversarial term zeroed, all of G's gradient comes from the AC term
    monkeypatch.setattr(gan_mod, "g_loss_fn", lambda kind, d_fake: 0 * d_fake.sum())
    t = _trainer(runs, model={**AC, "ac_weight": 5.0})
    m, batch = t.model, t._batch("train", torch.arange(32))
    for _ in range(80):  # a class head that reads the real digits
        m.d_step(batch["x"], batch["y"], t.ctx)
    d0, g0 = _params(m.D), _params(m.G)
    first = m.g_step(32, batch["y"], t.ctx)
    assert all(not torch.equal(g0[k], p) for k, p in m.G.named_parameters()), "a G weight got no AC gradient"
    for _ in range(60):
        last = m.g_step(32, batch["y"], t.ctx)
    assert all(torch.equal(d0[k], p) for k, p in m.D.named_parameters()), "the G step changed D"
    # ln 10 = 2.30 at chance: G learns to draw digits the frozen head reads as their class
    assert last["g_ac"] < 0.8 * first["g_ac"], (first["g_ac"], last["g_ac"])
    assert last["g_ac_acc"] >= 0.4 > first["g_ac_acc"]


def test_ac_on_fakes_adds_their_class_or_the_generated_class(runs, monkeypatch):
    import genlab.families.gan as gan_mod

    seen = []  # (number of logits, targets) of each cross-entropy in D's loss
    real_ce = torch.nn.functional.cross_entropy
    monkeypatch.setattr(gan_mod.F, "cross_entropy",
                        lambda a, b: seen.append((a.shape[1], b.clone())) or real_ce(a, b))
    for fakes in ("off", "class", "fake"):
        seen.clear()
        t = _trainer(runs, model={**AC, "ac_fakes": fakes})
        batch = t._batch("train", torch.arange(8))
        t.model.d_step(batch["x"], batch["y"], t.ctx)
        k = 11 if fakes == "fake" else 10  # digits: 10 classes (+ "generated")
        assert [n for n, _ in seen] == [k] * (1 if fakes == "off" else 2)
        assert torch.equal(seen[0][1], batch["y"])
        if fakes == "class":
            assert torch.equal(seen[1][1], batch["y"])
        if fakes == "fake":
            assert torch.equal(seen[1][1], torch.full((8,), 10))
            seen.clear()
            t.model.g_step(8, batch["y"], t.ctx)  # G asks for its class, never "generated"
            assert len(seen) == 1 and torch.equal(seen[0][1], batch["y"])


def test_without_projection_the_score_ignores_the_class(runs):
    t = _trainer(runs, model={**AC, "d_projection": False})
    m, batch = t.model, t._batch("train", torch.arange(8))
    assert m.D.head.embed is None
    m.D.eval()
    a, b = m.D(batch["x"], batch["y"]), m.D(batch["x"], (batch["y"] + 1) % 10)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    with_proj = _trainer(runs, model=AC).model.D.eval()
    assert not torch.equal(with_proj(batch["x"], batch["y"]), with_proj(batch["x"], (batch["y"] + 1) % 10))


def test_r1_penalty_of_a_linear_critic_is_its_squared_weight_norm():
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(9, generator=gen).requires_grad_(True)
    real = torch.rand(5, 1, 3, 3, generator=gen).requires_grad_(True)
    scores = real.flatten(1) @ w + 0.7
    r1 = r1_penalty(scores, real)
    torch.testing.assert_close(r1, w.pow(2).sum())
    r1.backward()  # differentiable (create_graph): d r1 / d w = 2 w
    torch.testing.assert_close(w.grad, 2 * w.detach())
    # a quadratic critic D(x) = sum x^2: grad 2x, penalty mean |2x|^2
    x = torch.rand(4, 1, 2, 2, generator=gen).requires_grad_(True)
    expect = (2 * x).pow(2).flatten(1).sum(1).mean()
    torch.testing.assert_close(r1_penalty(x.pow(2).flatten(1).sum(1), x), expect)


def test_lazy_r1_runs_every_k_steps_and_enters_the_loss(runs, monkeypatch):
    t = _trainer(runs, model={"r1_gamma": 4.0, "r1_every": 3})
    m, batch = t.model, t._batch("train", torch.arange(8))
    losses = []  # the loss each d_step hands the optimizer (no update is taken)
    monkeypatch.setattr(t.ctx, "update", lambda name, loss: losses.append(loss.item()))
    logs = {}
    for step in range(4):
        t.ctx.step = step
        logs[step] = m.d_step(batch["x"], None, t.ctx)
    assert [("r1" in logs[s]) for s in range(4)] == [True, False, False, True]
    # the same D and G, the same fake noise, R1 off: the losses differ by r1_every * gamma / 2 * r1
    plain = _trainer(runs, model={"r1_gamma": 0.0})
    plain.model.load_state_dict(m.state_dict())
    monkeypatch.setattr(plain.ctx, "update", lambda name, loss: losses.append(loss.item()))
    t.ctx.step = plain.ctx.step = 0
    torch.manual_seed(5)
    out_r1 = m.d_step(batch["x"], None, t.ctx)
    torch.manual_seed(5)
    out_plain = plain.model.d_step(batch["x"], None, plain.ctx)
    assert out_r1["r1"] > 0 and "r1" not in out_plain
    assert out_plain["d_loss"].item() == pytest.approx(out_r1["d_loss"].item(), rel=1e-6)
    assert losses[-2] - losses[-1] == pytest.approx(3 * 4.0 / 2 * out_r1["r1"].item(), rel=1e-4)


def test_translate_shifts_by_whole_pixels_and_lets_zeros_in():
    x = torch.arange(1, 13, dtype=torch.float32).view(1, 1, 3, 4).repeat(2, 1, 1, 1)
    out = translate(x, torch.tensor([1, 0]), torch.tensor([0, -2]))
    expect0 = torch.cat([torch.zeros(1, 4), x[0, 0, :2]])  # down by one row
    expect1 = torch.cat([x[1, 0, :, 2:], torch.zeros(3, 2)], 1)  # left by two columns
    torch.testing.assert_close(out[0, 0], expect0)
    torch.testing.assert_close(out[1, 0], expect1)


def test_augmentations_keep_their_ranges_and_pass_gradients():
    torch.manual_seed(0)
    x = torch.rand(64, 1, 16, 8)
    assert diff_augment(x, []) is x
    b = diff_augment(x, ["brightness"]) - x  # one offset per image, within +-0.25
    assert torch.allclose(b, b[:, :1, :1, :1].expand_as(b), atol=1e-6) and b.abs().max() <= 0.25
    assert b[:, 0, 0, 0].std() > 0.05
    c = diff_augment(x, ["contrast"])
    torch.testing.assert_close(c.mean(dim=(1, 2, 3)), x.mean(dim=(1, 2, 3)))  # the mean is kept
    ratio = (c - c.mean(dim=(1, 2, 3), keepdim=True)).std(dim=(1, 2, 3)) / x.std(dim=(1, 2, 3))
    assert ratio.min() >= 0.5 - 1e-5 and ratio.max() <= 1.5 + 1e-5
    xg = x.clone().requires_grad_(True)
    diff_augment(xg, ["translation", "brightness", "contrast"]).sum().backward()
    assert xg.grad is not None and xg.grad.abs().sum() > 0


def test_augmentation_reaches_d_in_both_updates(runs, monkeypatch):
    import genlab.families.gan as gan_mod

    calls = []
    monkeypatch.setattr(gan_mod, "diff_augment", lambda x, policy: calls.append(list(policy)) or x)
    t = _trainer(runs, model={"d_augment": ["translation", "contrast"]})
    m, batch = t.model, t._batch("train", torch.arange(8))
    m.d_step(batch["x"], None, t.ctx)
    assert calls == [["translation", "contrast"]] * 2  # real and fake
    m.g_step(8, None, t.ctx)
    assert len(calls) == 3


@pytest.mark.parametrize("model,match", [
    ({"ac_weight": 1.0}, "needs conditional"),
    ({"conditional": True, "ac_fakes": "class"}, "ac_fakes"),
    ({"d_augment": ["cutout"]}, "d_augment"),
    ({"d_augment": ["contrast", "contrast"]}, "at most once"),
    ({"r1_every": 0}, "r1_every"),
])
def test_bad_settings_are_refused_naming_the_key(model, match):
    with pytest.raises(RecipeError, match=match):
        from_mapping(_recipe(model=model))


def test_resume_is_exact_with_the_class_head_r1_and_augmentation(runs):
    model = {**AC, "ac_fakes": "fake", "r1_gamma": 1.0, "r1_every": 2,
             "d_augment": ["translation", "brightness", "contrast"], "d_projection": False}
    full = _trainer(runs, steps=12, model=model)
    full.run(stop_at=10)
    cut = _trainer(runs, steps=12, model=model)
    cut.run(stop_at=6)  # the newest checkpoint is step 4
    resumed = Trainer(from_mapping(_recipe(12, model)), resume_dir=cut.run_dir, quiet=True)
    assert resumed.step == 4
    resumed.run(stop_at=10)
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert any(k.startswith("D.classify.") for k in a)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


def test_full_resolution_layers_draw_at_full_resolution_and_export(runs, tmp_path):
    torch.manual_seed(0)
    base = Generator([1, 16, 12], [4, 8], z_dim=8, upsample="nearest")
    g = Generator([1, 16, 12], [4, 8], z_dim=8, upsample="nearest", full_res=2)
    convs = [m for m in g.body if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == len([m for m in base.body if isinstance(m, torch.nn.Conv2d)]) + 2
    # the last upsampling conv and the first extra one make g_width maps; the last, the image
    assert [(m.in_channels, m.out_channels) for m in convs[-3:]] == [(4, 4), (4, 4), (4, 1)]
    x = g(torch.randn(5, 8))
    assert x.shape == (5, 1, 16, 12) and 0 <= float(x.min()) and float(x.max()) <= 1
    t = _trainer(runs, steps=2, model={"g_full_res": 2, "conditional": True})
    t.run()
    path = t.model.export_generator(tmp_path / "gen")
    gen = load_generator(path)
    z, y = torch.randn(4, 8), torch.arange(4)
    torch.testing.assert_close(gen(z, y), t.model.G_ema.eval()(z, y))
    assert load_generator(path).bundle_meta["config"]["full_res"] == 2
