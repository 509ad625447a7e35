"""The GAN family: which parameters each update touches, the gradient penalty, the Fréchet
distance and precision/recall maths, the EMA formula, resume of both optimizers and the EMA,
depth adaptation, the exported trunk and generator, and `genlab sample`."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import tiny_recipe

from genlab import load_encoder
from genlab.cli import main
from genlab.core.errors import RecipeError
from genlab.core.recipe import from_mapping
from genlab.engine.trainer import Trainer
from genlab.families.gan import GAN
from genlab.families.gan_scores import stratified_order
from genlab.metrics import generative as gen_metrics
from genlab.nn.gan_blocks import (
    DiscHead,
    DiscTrunk,
    Generator,
    gan_depth,
    gan_widths,
    load_generator,
    save_generator,
)
from genlab.nn.gan_losses import ema_beta, gradient_penalty, mode_seeking_ratio


def _recipe(steps=6, model=None, **train):
    r = tiny_recipe("gan", steps=steps, **train)
    r["model"] = {**r["model"], **(model or {})}
    return r


def _trainer(runs, steps=6, model=None, **train):
    return Trainer(from_mapping(_recipe(steps, model, **train)), out_root=runs, quiet=True)


def _params(module):
    return {k: v.detach().clone() for k, v in module.named_parameters()}


def _same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


def _all_changed(a, b):
    return all(not torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("loss", ["ns", "hinge", "wgan-gp"])
def test_d_step_leaves_g_untouched_and_g_step_leaves_d_untouched(runs, loss):
    t = _trainer(runs, model={"loss": loss, "spectral_norm": loss == "hinge", "conditional": loss == "ns",
                              "d_mbstd": 4 if loss == "hinge" else 0,
                              "g_diversity": 0.2 if loss == "hinge" else 0.0})
    m, batch = t.model, t._batch("train", torch.arange(16))
    g0, e0, d0 = _params(m.G), _params(m.G_ema), _params(m.D)
    m.d_step(batch["x"], batch["y"] if m.conditional else None, t.ctx)
    g1, e1, d1 = _params(m.G), _params(m.G_ema), _params(m.D)
    grads = {k: p.grad.clone() for k, p in m.D.named_parameters()}
    assert all(p.grad is None for p in m.G.parameters()), "the D step backpropagated into G"
    assert _same(g0, g1) and _same(e0, e1), "the D step changed the generator"
    # (not every tensor: with hinge loss and all margins active the head bias gets 1 - 1 = 0)
    assert not _same(d0, d1), "the D step changed no discriminator weight"
    m.g_step(16, batch["y"] if m.conditional else None, t.ctx)
    g2, e2, d2 = _params(m.G), _params(m.G_ema), _params(m.D)
    assert _same(d1, d2), "the G step changed the discriminator"
    assert _all_changed(g1, g2) and _all_changed(e1, e2)
    assert _same(grads, {k: p.grad for k, p in m.D.named_parameters()}), "G's step touched D's grads"


def test_gradient_penalty_matches_hand_computation():
    gen = torch.Generator().manual_seed(0)
    real, fake = torch.rand(5, 1, 3, 3, generator=gen), torch.rand(5, 1, 3, 3, generator=gen)
    eps = torch.rand(5, 1, 1, 1, generator=gen)
    # linear critic D(x) = <w, x> + b: the gradient is w everywhere -> (|w| - 1)^2
    w = torch.randn(9, generator=gen)
    gp = gradient_penalty(lambda x: x.flatten(1) @ w + 0.3, real, fake, eps)
    torch.testing.assert_close(gp, (w.norm() - 1) ** 2)
    # quadratic critic D(x) = sum x^2: the gradient is 2 x_hat -> mean (2 |x_hat| - 1)^2
    x_hat = (eps * real + (1 - eps) * fake).flatten(1)
    gp = gradient_penalty(lambda x: (x ** 2).flatten(1).sum(1), real, fake, eps)
    torch.testing.assert_close(gp, ((2 * x_hat.norm(dim=1) - 1) ** 2).mean())
    # differentiable in the critic's parameters: d/dw (|w| - 1)^2 = 2 (|w| - 1) w / |w|
    lin = torch.nn.Linear(9, 1)
    gradient_penalty(lambda x: lin(x.flatten(1)).squeeze(1), real, fake, eps).backward()
    wv = lin.weight.detach()
    torch.testing.assert_close(lin.weight.grad, 2 * (wv.norm() - 1) * wv / wv.norm())


def test_frechet_distance_self_is_zero_and_matches_closed_form():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 6)) @ rng.normal(size=(6, 6))
    assert gen_metrics.frechet_distance(x, x) == pytest.approx(0.0, abs=1e-8)
    # diagonal covariances: |mu1 - mu2|^2 + sum (sqrt(a) - sqrt(b))^2
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 1.0])
    want = 1 + 0 + 4 + (1 + 1 + 4)
    assert gen_metrics.frechet_from_stats(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(want)
    # non-commuting covariances against scipy's matrix square root of S1 S2
    from scipy.linalg import sqrtm

    q = np.array([[2.0, 0.5], [0.5, 1.0]])
    s1, s2 = q @ q.T, np.array([[1.0, -0.3], [-0.3, 0.5]])
    ref = np.trace(s1 + s2 - 2 * sqrtm(s1 @ s2).real)
    assert gen_metrics.frechet_from_stats([0, 0], s1, [0, 0], s2) == pytest.approx(ref, rel=1e-9)
    # large samples of two known Gaussians approach the closed form
    xa = rng.normal(size=(20000, 3)) * np.sqrt(a) + mu1
    xb = rng.normal(size=(20000, 3)) * np.sqrt(b) + mu2
    assert gen_metrics.frechet_distance(xa, xb) == pytest.approx(want, rel=0.05)


def test_precision_recall_and_diversity_see_mode_collapse():
    rng = np.random.default_rng(1)
    real = rng.normal(size=(300, 4))
    assert gen_metrics.precision_recall(real, real) == (1.0, 1.0)
    good = rng.normal(size=(300, 4))
    p, r = gen_metrics.precision_recall(real, good)
    assert p > 0.8 and r > 0.8
    collapsed = real[:1] + 0.01 * rng.normal(size=(300, 4))  # every sample near one real point
    p, r = gen_metrics.precision_recall(real, collapsed)
    assert p == 1.0 and r < 0.05
    assert gen_metrics.diversity(collapsed) < 0.05 * gen_metrics.diversity(real)


def test_ema_follows_the_formula(runs):
    t = _trainer(runs, model={"ema_decay": 0.9})
    m, batch = t.model, t._batch("train", torch.arange(16))
    assert ema_beta(0, 0.9) == pytest.approx(0.1) and ema_beta(1000, 0.9) == 0.9
    m.d_step(batch["x"], None, t.ctx)
    for step in (0, 200):
        t.ctx.step = step
        before = _params(m.G_ema)
        m.g_step(16, None, t.ctx)
        beta = min(0.9, (1 + step) / (10 + step))
        for (k, pe), (_, p) in zip(m.G_ema.named_parameters(), m.G.named_parameters()):
            torch.testing.assert_close(pe, beta * before[k] + (1 - beta) * p, msg=k)


def test_resume_restores_both_optimizers_and_the_ema(runs):
    # stop_at=12 ends both runs after step 12 without the end-of-run work (plots, export)
    model = {"loss": "wgan-gp", "d_steps": 2, "lr_d": 4e-3, "lr_g": 1e-3}
    full = _trainer(runs, steps=16, model=model)
    full.run(stop_at=12)
    cut = _trainer(runs, steps=16, model=model)
    cut.run(stop_at=10)  # killed after step 10: the newest checkpoint is step 8
    resumed = Trainer(from_mapping(_recipe(16, model)), resume_dir=cut.run_dir, quiet=True)
    assert resumed.step == 8
    assert resumed.optimizers["d"].param_groups[0]["lr"] == pytest.approx(4e-3)
    assert resumed.optimizers["g"].param_groups[0]["lr"] == pytest.approx(1e-3)
    resumed.run(stop_at=12)
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert any(k.startswith("G_ema.") for k in a)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    for name in ("d", "g"):
        sa, sb = full.optimizers[name].state_dict()["state"], resumed.optimizers[name].state_dict()["state"]
        assert sa.keys() == sb.keys() and sa
        for i in sa:
            for k in sa[i]:
                torch.testing.assert_close(sa[i][k], sb[i][k], rtol=0, atol=0)


@pytest.mark.parametrize("shape,depth", [((1, 8, 8), 1), ((1, 28, 28), 2), ((3, 64, 64), 4),
                                         ((1, 128, 96), 4)])
def test_depth_adapts_to_the_input_shape(shape, depth):
    _, h, w = shape
    assert gan_depth(h, w) == depth
    g = Generator(list(shape), gan_widths(h, w, 4, 16), z_dim=8, num_classes=3)
    with torch.no_grad():
        x = g(torch.randn(2, 8), torch.tensor([0, 2]))
    assert x.shape == (2, *shape) and 0 <= float(x.min()) and float(x.max()) <= 1
    trunk = DiscTrunk(list(shape), gan_widths(h, w, 4, 16), 12, spectral_norm=True)
    with torch.no_grad():
        assert trunk(x).shape == (2, 12)


def test_trunk_and_generator_export_and_reload(runs, tmp_path):
    t = _trainer(runs, steps=8, model={"spectral_norm": True, "conditional": True})
    t.run(stop_at=3)
    t.export()
    x = t._batch("val", torch.arange(8))["x"]
    enc = load_encoder(t.run_dir / "export")
    assert enc.bundle_meta["builder"] == "gan_disc_trunk"
    with torch.no_grad():
        torch.testing.assert_close(enc(x), t.model.encode(x), rtol=0, atol=0)
        assert t.model.encode(x).shape == (8, t.model.out_features)
    t.model.export_generator(tmp_path / "gen")
    gen = load_generator(tmp_path / "gen")
    z, y = torch.randn(4, 8), torch.tensor([0, 1, 2, 3])
    with torch.no_grad():
        torch.testing.assert_close(gen(z, y), t.model.G_ema(z, y), rtol=0, atol=0)


def test_fid_extractor_bundle_names_the_metric(runs):
    ae = Trainer(from_mapping(tiny_recipe("ae", steps=2)), out_root=runs, quiet=True)
    ae.export()
    t = _trainer(runs, steps=2, model={"fid_extractor": str(ae.run_dir / "export")})
    assert t.model.monitor == ("fid/recipe", "min")  # named after the encoder's recipe
    v = t.evaluate("val", max_batches=2)
    assert {"fid/recipe", "fid_floor/recipe", "fid_ratio", "precision", "recall"} <= set(v)
    assert v["fid_samples"] == 8 and math.isfinite(v["fid/recipe"]) and v["fid_floor/recipe"] >= 0
    bad = _recipe(2, {"fid_extractor": str(runs / "nowhere")})
    with pytest.raises(RecipeError, match="model.fid_extractor"):
        from_mapping(bad)


def test_stratified_order_cuts_class_matched_halves():
    y = torch.randint(4, (301,), generator=torch.Generator().manual_seed(0))
    order, n = stratified_order(y, 150)
    assert sorted(order.tolist()) == list(range(301)) and n <= 150 and n >= 150 - 2
    first, second = order[:n], order[n:2 * n]
    assert torch.equal(torch.bincount(y[first], minlength=4), torch.bincount(y[second], minlength=4))
    assert torch.all(first.diff() > 0) and torch.all(second.diff() > 0)  # each set in split order
    share = torch.bincount(y[first], minlength=4) / n
    assert torch.allclose(share, torch.bincount(y, minlength=4) / 301, atol=0.02)  # the split's mix
    assert stratified_order(torch.zeros(5, dtype=torch.long), 4)[1] == 2  # one class: pairs only


def test_the_fd_floor_compares_class_matched_halves(runs):
    """Features that are the class (one-hot x 10) plus a little noise, the split's first half all
    class 0 and the second all class 1: the first-n cut scores the class mix (|mean shift|^2 ~ 200),
    the stratified cut only the noise; a generator that returns the real image drawn for each
    label scores exactly its floor either way."""
    t = _trainer(runs, steps=1)
    y = torch.cat([torch.zeros(8), torch.ones(8)]).long()  # fid_samples 8: n = 8
    feats = torch.nn.functional.one_hot(y, 2).float() * 10
    feats = torch.cat([feats, 0.1 * torch.randn(16, 6, generator=torch.Generator().manual_seed(0))], 1)
    collected = {"feat_real": feats, "feat_fake": feats.clone(), "y": y}
    strat = t.model.summarize(collected)
    t.model.cfg.fid_halves = "first"
    first = t.model.summarize(collected)
    assert (strat["fid_samples"], first["fid_samples"]) == (8, 8)
    assert first["fid_floor/random_conv"] > 150 and strat["fid_floor/random_conv"] < 1
    for out in (strat, first):
        assert out["fid/random_conv"] == pytest.approx(out["fid_floor/random_conv"])


def test_sample_cli_writes_a_png_and_rejects_a_bad_class(runs, tmp_path, capsys):
    unc = _trainer(runs, steps=2)
    unc.save_checkpoint()  # `genlab sample` rebuilds from the newest checkpoint
    out = tmp_path / "grid.png"
    assert main(["sample", str(unc.run_dir), "--n", "16", "--out", str(out)]) == 0
    assert out.is_file() and out.stat().st_size > 0
    assert main(["sample", str(unc.run_dir), "--out", str(out), "--class", "3"]) == 2
    assert "unconditional" in capsys.readouterr().err
    cond = _trainer(runs, steps=2, model={"conditional": True})
    cond.save_checkpoint()
    assert main(["sample", str(cond.run_dir), "--n", "8", "--out", str(out), "--class", "3"]) == 0
    assert main(["sample", str(cond.run_dir), "--out", str(out), "--class", "Q"]) == 2
    assert "unknown class" in capsys.readouterr().err
    assert main(["sample", str(tmp_path), "--out", str(out)]) == 2


def test_sample_is_reproducible_and_conditional_labels_matter(runs):
    t = _trainer(runs, steps=2, model={"conditional": True})
    m = t.model.eval()
    a = m.sample(8, torch.Generator().manual_seed(3), labels=torch.zeros(8, dtype=torch.long))
    b = m.sample(8, torch.Generator().manual_seed(3), labels=torch.zeros(8, dtype=torch.long))
    c = m.sample(8, torch.Generator().manual_seed(3), labels=torch.ones(8, dtype=torch.long))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert isinstance(m, GAN)


def test_warnings_for_a_winning_discriminator_and_collapsed_samples(runs, monkeypatch):
    import genlab.families.gan as gan_mod

    t = _trainer(runs, steps=2)
    m, batch = t.model, t._batch("train", torch.arange(16))
    monkeypatch.setattr(gan_mod, "D_WINS_STEPS", 3)
    monkeypatch.setattr(m, "d_step", lambda *a: {"d_loss": torch.tensor(0.001)})
    monkeypatch.setattr(m, "g_step", lambda *a: {"g_loss": torch.tensor(9.0)})
    for step in range(49):
        t.ctx.step = step
        m.training_step(batch, t.ctx)
    t.ctx.step = 49  # the streak is checked every 50 steps
    with pytest.warns(RuntimeWarning, match="wins outright"):
        m.training_step(batch, t.ctx)
    real = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))
    fake = real[:1].repeat(64, 1) + 1e-3 * real  # every sample near one real point
    with pytest.warns(RuntimeWarning, match="collapsed"):
        out = m.summarize({"feat_real": real, "feat_fake": fake})
    assert out["recall"] < 0.2 and out["diversity"] < 0.5 and out["fid_samples"] == 8


def test_clamped_output_stays_in_range_and_passes_gradients():
    g = Generator([1, 28, 28], gan_widths(28, 28, 4, 16), z_dim=8, output="clamp")
    with torch.no_grad():  # push the pre-activation far outside [0, 1]
        g.body[-1].bias.fill_(5.0)
    x = g(torch.randn(4, 8))
    assert float(x.min()) >= 0 and float(x.max()) <= 1
    x.sum().backward()
    assert g.fc.weight.grad.abs().sum() > 0  # a plain clamp would pass no gradient here


def test_minibatch_std_sees_a_collapsed_batch_and_keeps_the_trunk_per_example():
    gen = torch.Generator().manual_seed(0)
    varied = torch.randn(8, 5, generator=gen)
    same = varied[:1].repeat(8, 1)
    s = DiscHead.minibatch_std(varied, 4)  # groups {0, 2, 4, 6} and {1, 3, 5, 7}
    want = varied.view(4, 2, 5).std(0, unbiased=False).mean(1)
    torch.testing.assert_close(s.view(-1), want.repeat(4))
    assert float(DiscHead.minibatch_std(same, 4).max()) < 1e-3
    assert DiscHead.minibatch_std(varied[:6], 4).shape == (6, 1)  # group 3: largest divisor <= 4
    head = DiscHead(5, mbstd=4)
    assert head(varied).shape == (8,)
    # the score of one example depends on its group, the head's input size grew by one
    assert head.out.in_features == 6
    a, b = head(varied)[0], head(torch.cat([varied[:1], same[1:]]))[0]
    assert not torch.equal(a, b)


def test_mode_seeking_ratio_is_zero_for_a_collapsed_batch_and_matches_by_hand():
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(6, 4, generator=gen)
    x = torch.rand(6, 1, 16, 8, generator=gen, requires_grad=True)
    p = torch.nn.functional.avg_pool2d(x, 4)
    want = (p[:3] - p[3:]).abs().mean() / (z[:3] - z[3:]).abs().mean()
    got = mode_seeking_ratio(x, z)
    torch.testing.assert_close(got, want + 1e-8)
    got.backward()
    assert x.grad.abs().sum() > 0
    same = torch.rand(1, 1, 16, 8, generator=gen).repeat(6, 1, 1, 1)
    assert float(mode_seeking_ratio(same, z)) < 1e-6


def test_class_norm_starts_as_plain_batch_norm_and_then_follows_the_class(tmp_path):
    """Conditional batch norm: per-class gain and bias start at (1, 0), so at step 0 the
    generator is exactly the plain-BN one with the same weights; once a class's gain moves, only
    that class's images change. It survives the generator's export."""
    shape, z, y = [1, 28, 28], torch.randn(6, 8), torch.tensor([0, 1, 2, 0, 1, 2])
    torch.manual_seed(0)
    plain = Generator(shape, gan_widths(28, 28, 4, 16), z_dim=8, num_classes=3)
    torch.manual_seed(0)
    cbn = Generator(shape, gan_widths(28, 28, 4, 16), z_dim=8, num_classes=3, class_norm=True)
    cbn.load_state_dict({**plain.state_dict(), **{k: v for k, v in cbn.state_dict().items()
                                                   if ".gamma." in k or ".beta." in k}}, strict=False)
    with torch.no_grad():
        torch.testing.assert_close(cbn(z, y), plain(z, y), rtol=1e-6, atol=1e-6)
        before = cbn(z, y)
        cbn.body[0].beta.weight[2] += 0.5  # class 2's bias at the first norm
        after = cbn(z, y)
    moved = (after - before).abs().flatten(1).amax(1)
    assert bool((moved[[2, 5]] > 1e-4).all())
    # batch statistics mix the batch, so the other classes move too, but far less
    assert float(moved[[0, 1, 3, 4]].max()) < float(moved[[2, 5]].min())
    save_generator(cbn, {"out_shape": shape, "channels": gan_widths(28, 28, 4, 16), "z_dim": 8,
                         "num_classes": 3, "class_norm": True}, tmp_path / "g")
    with torch.no_grad():
        torch.testing.assert_close(load_generator(tmp_path / "g")(z, y), after, rtol=0, atol=0)
    with pytest.raises(ValueError, match="class_norm"):
        Generator(shape, gan_widths(28, 28, 4, 16), z_dim=8, class_norm=True)


def test_conditional_mode_seeking_pairs_share_a_class():
    """The mode-seeking term pairs example i with i + B/2; in a conditional step both must be
    drawn for one class, or the class difference alone would satisfy the term."""
    from genlab.families.gan import same_class_pairs

    for y in (torch.tensor([0, 1, 2, 3, 3, 2, 1, 0]), torch.tensor([2, 0, 1, 3, 1, 0, 2])):
        p, h = same_class_pairs(y), len(y) // 2
        assert p.shape == y.shape and torch.equal(p[:h], p[h:2 * h]) and torch.equal(p[:h], y[:h])


def test_conditional_minibatch_std_sees_only_variety_within_a_class():
    """A conditional D's minibatch-std feature: one image per class (a G that ignores its noise)
    gives 0 however different the classes are; real variety inside a class gives more than 0."""
    head = DiscHead(6, num_classes=2, mbstd=4)
    y = torch.tensor([0, 1, 0, 1, 0, 1, 0, 1])
    per_class = torch.randn(2, 6) * 5
    collapsed = per_class[y]
    spread = head.minibatch_std(head.class_residual(collapsed, y, 2), 4)
    assert float(spread.abs().max()) < 1e-3
    varied = collapsed + torch.randn(8, 6)
    assert float(head.minibatch_std(head.class_residual(varied, y, 2), 4).min()) > 0.1
    assert head(torch.randn(8, 6), y).shape == (8,)
