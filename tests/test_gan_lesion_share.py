"""The unconditional atlas G's lesion gate (model.g_lesion_share): each sample carries its lesions
with a learnt probability. Checked on small cases with known answers: the share of latents that
draw lesions is the share; the paired rendering is the plain one split in two; the family's
share term has exactly the derivative of G's expected loss over the gate, and moves the share
toward what D prefers; a recipe trains, logs the share, exports and reloads; bad values are
recipe errors. The counted share (g_lesion_share_by: count): the census's arithmetic, and a D
head trained on G's own pairs that finds the share of "real" slices with lesions without labels.
And the drawn lesion gain (model.g_lesion_gain_draw) and noise amplitude (model.g_noise_range):
uniform in their ranges, each from one latent number per image."""
from __future__ import annotations

import contextlib

import pytest
import torch
from conftest import tiny_recipe
from test_gan_atlas import _atlas_export, _head, resume_matches_full

from genlab.core.errors import RecipeError
from genlab.core.recipe import from_mapping
from genlab.engine.trainer import Trainer
from genlab.families.gan_census import LesionCensus, Q
from genlab.nn.gan_atlas import SHARE_SCALE, AtlasGenerator
from genlab.nn.gan_blocks import DiscTrunk, load_generator
from genlab.nn.gan_losses import g_losses


def _gated(share=0.3):
    torch.manual_seed(0)
    g = AtlasGenerator([1, 16, 12], [4], 2, code_dim=8, slots=3, lesion_share=share)
    with torch.no_grad():
        g.atlas.template.copy_(_head(16, 12, 2))
    g.fit_template_frame()
    return g


def test_the_share_of_samples_with_lesions_is_the_share():
    g = _gated(0.3)
    assert g.z_dim == 8 + 6 + 2 + 2 * 3 + 1 + 1  # one more latent number: the gate
    torch.testing.assert_close(g.lesion_share(), torch.tensor(0.3))
    z = torch.randn(4000, g.z_dim)
    with torch.no_grad():
        with_l, without_l, on, share = g(z, pair=True)
        x = g(z)
    torch.testing.assert_close(share, torch.tensor(0.3))
    assert abs(on.float().mean().item() - 0.3) < 0.03
    # the plain forward is the pair, split by the gate; the two differ by the lesions alone
    torch.testing.assert_close(x, torch.where(on.view(-1, 1, 1, 1), with_l, without_l))
    assert (with_l - without_l).flatten(1).amax(1).min() > 0.05  # 4 visible discs at step 0
    assert (with_l >= without_l - 1e-6).all()
    torch.testing.assert_close(without_l, g.healthy(g.draw_pose(z[:, :8], z[:, 8:14]),
                                                    g.noise(z[:, -1], torch.nn.functional.softplus(
                                                        g.noise_amp(z[:, :8]))), None))


def test_an_ungated_or_conditional_g_refuses_the_gate():
    with pytest.raises(ValueError, match=r"forward\(pair=True\) needs a gated G"):
        AtlasGenerator([1, 16, 12], [4], 2, code_dim=8, slots=3)(torch.randn(2, 25), pair=True)
    with pytest.raises(ValueError, match=r"lesion_share: expected a share in \(0, 1\).*classes: 4"):
        AtlasGenerator([1, 16, 12], [4], 2, code_dim=8, slots=3, num_classes=4, lesion_share=0.5)


def _trainer(tmp_path, steps=2, **model):
    r = tiny_recipe("gan", steps=steps)
    r["model"] = {**r["model"], "g_atlas": str(_atlas_export(tmp_path)), "g_lesion_slots": 4,
                  "g_lesion_share": 0.5, **model}
    return Trainer(from_mapping(r), out_root=tmp_path / "runs", quiet=True)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_the_share_term_is_the_exact_derivative_and_follows_d(tmp_path, sign):
    """A stand-in D that scores brighter images higher (sign 1: it prefers lesions) or lower:
    the share's gradient is mean(l(with) - l(without)) times dshare/dparam, and its sign
    moves the share toward what D prefers."""
    t = _trainer(tmp_path)
    model, g = t.model, t.model.G
    g.fit_pose(torch.rand(8, 1, 8, 8))
    model._d = lambda x, y, with_class: (sign * 50 * x.flatten(1).mean(1), None)
    z = torch.randn(64, g.z_dim)
    fake, share_term = model._gated_fakes(z, None)
    d_fake, _ = model._d(fake, None, False)
    g.share_param.grad = None
    share_term(d_fake).backward()
    with torch.no_grad():
        with_l, without_l, _, share = g(z, pair=True)
        diff = (g_losses("hinge", model._d(with_l, None, False)[0])
                - g_losses("hinge", model._d(without_l, None, False)[0])).mean()
    want = diff * share * (1 - share) * SHARE_SCALE
    torch.testing.assert_close(g.share_param.grad, want)
    assert sign * float(g.share_param.grad) < 0  # gradient descent raises the share iff D likes lesions


def test_a_recipe_with_the_gate_trains_logs_the_share_exports_and_reloads(tmp_path):
    t = _trainer(tmp_path, steps=3)
    before = float(t.model.G.share_param)
    t.run()
    assert float(t.model.G.share_param) != before  # the share is learnt
    shares = [v for _, v in t.history["train/g_lesion_share"]]
    assert shares and all(0 < v < 1 for v in shares)
    gen = load_generator(t.model.export_generator(tmp_path / "gen"))
    assert gen.gated
    z = torch.randn(16, gen.z_dim)
    torch.testing.assert_close(gen(z), t.model.G_ema.eval()(z))
    x = t.model.sample(6)
    assert x.shape == (6, 1, 8, 8)


@pytest.mark.parametrize("model,pattern", [
    ({"g_lesion_share": 1.5}, r"model\.g_lesion_share"),
    ({"g_lesion_share": 0.5, "conditional": True},
     r"g_lesion_share: 0.5 needs g_atlas and conditional: false"),
])
def test_bad_values_name_key_value_and_expected(tmp_path, model, pattern):
    r = tiny_recipe("gan", steps=2)
    r["model"] = {**r["model"], "g_atlas": str(_atlas_export(tmp_path)), "g_lesion_slots": 4, **model}
    with pytest.raises(RecipeError, match=pattern):
        Trainer(from_mapping(r), out_root=tmp_path / "runs", quiet=True)


def test_the_gate_needs_the_atlas_generator():
    r = tiny_recipe("gan", steps=2)
    r["model"] = {**r["model"], "g_lesion_share": 0.5}
    with pytest.raises(RecipeError, match="g_lesion_share: 0.5 needs g_atlas"):
        from_mapping(r)


def test_a_gated_image_with_lesions_draws_at_least_one_disc():
    g = _gated(0.5)
    with torch.no_grad():
        g.area.bias[2] = -1e4  # the count G asks for: far below zero
        with_l, without_l, _, _ = g(torch.randn(32, g.z_dim), pair=True)
    assert (with_l - without_l).flatten(1).amax(1).min() > 0.05  # the gate, not the count, says whether


def test_a_drawn_gain_is_uniform_in_its_range_and_read_from_its_own_latent_number():
    torch.manual_seed(0)
    g = AtlasGenerator([1, 16, 12], [4], 2, code_dim=8, slots=3, lesion_gain=(0.2, 0.4), gain_draw=True)
    with torch.no_grad():
        g.atlas.template.copy_(_head(16, 12, 2))
        g.noise_amp.bias.fill_(-30.0)
    g.fit_template_frame()
    assert g.z_dim == 8 + 6 + 2 + 2 * 3 + 1 + 1
    with torch.no_grad():
        g(torch.randn(4000, g.z_dim))
        assert abs(float(g.last_stats["g_lesion_gain"]) - 0.3) < 0.005
        z = torch.randn(8, g.z_dim).repeat(2, 1)
        z[:8, 8 + 8 + 6], z[8:, 8 + 8 + 6] = -3.0, 3.0  # the gain's number: after z, pose, area, slots
        lo, hi = g(z).split(8)
    assert (hi >= lo - 1e-6).all() and (hi - lo).flatten(1).amax(1).min() > 0.05  # brighter lesions


def test_a_recipe_with_a_drawn_gain_trains_and_reloads_and_needs_its_range(tmp_path):
    t = _trainer(tmp_path, g_lesion_gain=[0.2, 0.4], g_lesion_gain_draw=True)
    t.run()
    gen = load_generator(t.model.export_generator(tmp_path / "gen"))
    assert gen.gain_draw and gen.gated
    z = torch.randn(8, gen.z_dim)
    torch.testing.assert_close(gen(z), t.model.G_ema.eval()(z))
    r = tiny_recipe("gan", steps=2)
    r["model"] = {**r["model"], "g_atlas": str(tmp_path / "atlas"), "g_lesion_gain_draw": True}
    with pytest.raises(RecipeError, match=r"g_lesion_gain_draw: true needs g_atlas and g_lesion_gain"):
        from_mapping(r)


def test_a_drawn_noise_amplitude_is_uniform_in_its_range_and_read_from_its_own_latent_number():
    torch.manual_seed(0)
    g = AtlasGenerator([1, 16, 12], [4], 2, code_dim=8, slots=3, lesion_gain=(0.2, 0.4), gain_draw=True,
                       noise_range=(0.0, 0.05))
    with torch.no_grad():
        g.atlas.template.copy_(_head(16, 12, 2))
    g.fit_template_frame()
    assert g.z_dim == 8 + 6 + 2 + 2 * 3 + 1 + 1 + 1 and g.noise_amp is None
    with torch.no_grad():
        g(torch.randn(4000, g.z_dim))
        assert abs(float(g.last_stats["g_noise_amp"]) - 0.025) < 0.001  # the middle of [0, 0.05]
        z = torch.randn(8, g.z_dim).repeat(2, 1)
        z[:, 8 + 8 + 6] = 0.0  # the gain's number, then the amplitude's: after z, pose, area, slots
        z[:8, 8 + 8 + 6 + 1], z[8:, 8 + 8 + 6 + 1] = -6.0, 6.0
        quiet, loud = g(z).split(8)
        healthy = g.atlas.render(g.draw_pose(z[:8, :8], z[:8, 8:14])).clamp(0, 1)
    # amplitude ~0: the rendering up to the lesions; ~0.05: the noise's own spread (+-0.05 uniform)
    inside = healthy > 0.1
    assert float((loud - quiet)[inside].std()) == pytest.approx(0.05 / 3 ** 0.5, rel=0.15)
    with pytest.raises(ValueError, match=r"noise_range: expected 0 <= low < high <= 0.5"):
        AtlasGenerator([1, 16, 12], [4], 2, code_dim=8, slots=3, noise_range=(0.05, 0.01))


def test_a_recipe_with_a_drawn_noise_amplitude_trains_logs_it_and_reloads(tmp_path):
    t = _trainer(tmp_path, g_noise_range=[0.01, 0.03])
    t.run()
    amps = [v for _, v in t.history["train/g_noise_amp"]]
    assert amps and all(0.01 <= v <= 0.03 for v in amps)
    gen = load_generator(t.model.export_generator(tmp_path / "gen"))
    assert gen.noise_range == (0.01, 0.03)
    z = torch.randn(8, gen.z_dim)
    torch.testing.assert_close(gen(z), t.model.G_ema.eval()(z))
    r = tiny_recipe("gan", steps=2)
    r["model"] = {**r["model"], "g_noise_range": [0.0, 0.05]}
    with pytest.raises(RecipeError, match=r"g_noise_range: \[0.0, 0.05\] needs g_atlas"):
        from_mapping(r)


def test_the_feature_matched_share_finds_the_share_of_real_images_with_lesions(tmp_path):
    """'Real' slices drawn by the same G with 80 % carrying lesions: matching the batch mean of
    an untrained D's max-pooled maps, the share alone climbs from 0.5 to near 0.8."""
    t = _trainer(tmp_path, g_lesion_share_by="features")
    model, g = t.model, t.model.G
    g.fit_pose(torch.rand(8, 1, 8, 8))
    torch.manual_seed(1)
    with torch.no_grad():
        z = torch.randn(2000, g.z_dim)
        with_l, without_l, _, _ = g(z, pair=True)
        real = torch.where((torch.rand(2000) < 0.8).view(-1, 1, 1, 1), with_l, without_l)
        model._real_pooled = model._pooled(real).mean(0)
    opt = torch.optim.Adam([g.share_param], lr=0.01)
    for _ in range(150):
        _, share_term = model._gated_fakes(torch.randn(256, g.z_dim), None)
        opt.zero_grad()
        share_term(None).backward()
        opt.step()
    assert abs(float(g.lesion_share()) - 0.8) < 0.05, float(g.lesion_share())


def test_a_recipe_with_the_feature_matched_share_trains(tmp_path):
    t = _trainer(tmp_path, steps=3, g_lesion_share_by="features")
    before = float(t.model.G.share_param)
    t.run()
    assert float(t.model.G.share_param) != before
    r = tiny_recipe("gan", steps=2)
    r["model"] = {**r["model"], "g_lesion_share_by": "features"}
    with pytest.raises(RecipeError, match="g_lesion_share_by: features needs g_lesion_share"):
        from_mapping(r)


def test_the_census_counts_real_slices_that_score_like_healthy_twins():
    """The healthy twins' scores set the threshold (their Q-quantile); the real slices below it
    are counted healthy, and the share is 1 - that count / Q, once the head separates the pairs."""
    c = LesionCensus(DiscTrunk([1, 8, 8], [4], 8))
    healthy = -1 - torch.arange(100) / 100  # scores of G's healthy twins: -1.99 ... -1.00
    real = torch.cat([torch.full((30,), -1.5), torch.full((70,), 5.0)])  # 30 % score like them
    c.update(real, healthy, healthy)  # the head cannot yet tell G's pairs apart: no estimate
    share, counts = c.estimate()
    assert float(counts) == 0 and float(c.share_loss(torch.tensor(0.2))) == 0
    c = LesionCensus(DiscTrunk([1, 8, 8], [4], 8))
    for _ in range(3):  # the first updates: their plain mean
        c.update(real, torch.full((100,), 3.0), healthy)
    torch.testing.assert_close(c.stats, torch.tensor([0.3, 1.0, 0.0]))
    share, counts = c.estimate()
    assert float(counts) == 1
    torch.testing.assert_close(share, torch.tensor(1 - 0.3 / Q))  # 0.684
    torch.testing.assert_close(c.share_loss(torch.tensor(0.5)), (0.5 - share) ** 2)
    c.update(torch.full((100,), -1.5), torch.full((100,), 3.0), healthy)  # all below: 4 updates' mean
    torch.testing.assert_close(c.stats[0], torch.tensor((3 * 0.3 + 1.0) / 4))
    for _ in range(100):
        c.update(real, torch.full((100,), 3.0), healthy)
    c.update(torch.full((100,), -1.5), torch.full((100,), 3.0), healthy)  # later: one step moves it 5 %
    torch.testing.assert_close(c.stats[0], torch.tensor(0.3 + 0.05 * 0.7), atol=1e-3, rtol=0)


class _Ctx:
    """The trainer's step context, reduced to what d_step and g_step use."""
    device, rank, world_size, step = torch.device("cpu"), 0, 1, 1

    def __init__(self, opts):
        self.opts = opts

    def autocast(self):
        return contextlib.nullcontext()

    def update(self, name, loss):
        self.opts[name].zero_grad()
        loss.backward()
        self.opts[name].step()


def _counted_share(tmp_path, truth: float, steps: int = 150) -> tuple[float, float]:
    """'Real' slices drawn by a fresh G with a share `truth` carrying lesions; the census (D's
    step) and G's share (G's step) trained on them: (the census's estimate, G's share)."""
    t = _trainer(tmp_path / str(truth), g_lesion_share_by="count", d_mbstd=0)
    model, g = t.model, t.model.G
    g.fit_pose(torch.rand(8, 1, 8, 8))
    torch.manual_seed(1)
    with torch.no_grad():
        with_l, without_l, _, _ = g(torch.randn(2000, g.z_dim), pair=True)
        real = torch.where((torch.rand(2000) < truth).view(-1, 1, 1, 1), with_l, without_l)
    ctx = _Ctx({"d": torch.optim.Adam([*model.D.parameters(), *model.census.parameters()], lr=1e-2),
                "g": torch.optim.Adam([g.share_param], lr=0.01)})  # only the share learns in G
    for i in range(steps):
        logs = model.d_step(real[(i * 64) % 1920:][:64], None, ctx)
        model.g_step(64, None, ctx)
    assert float(logs["census_tpr"]) - float(logs["census_fpr"]) > 0.7  # the head sees G's lesions
    return float(logs["g_lesion_share_target"]), float(g.lesion_share())


def test_the_counted_share_follows_the_share_of_real_images_with_lesions(tmp_path):
    """No labels are read: the census learns lesions from G's own pairs and counts the real
    slices that score like G's healthy twins. On 8 x 8 toys its head is imperfect (some lesion
    slices score among the healthy, so it reads low), but it follows the truth, and G's share
    follows it from 0.5."""
    (high, share_high), (low, share_low) = _counted_share(tmp_path, 0.8), _counted_share(tmp_path, 0.3)
    assert abs(high - 0.8) < 0.2 and abs(low - 0.3) < 0.15, (high, low)  # here 0.66 and 0.27
    assert high - low > 0.25
    assert abs(share_high - high) < 0.05 and abs(share_low - low) < 0.05, (share_high, share_low)


def test_a_recipe_with_the_counted_share_trains_logs_the_census_and_resumes_exactly(tmp_path):
    full = resume_matches_full(tmp_path, {"g_lesion_share": 0.5, "g_lesion_share_by": "count"})
    for key in ("census_real_healthy", "census_tpr", "census_fpr", "g_lesion_share_target", "d_census_bce"):
        assert full.history[f"train/{key}"] and all(0 <= v <= 1 for _, v in full.history[f"train/{key}"]), key
    state = full.model.state_dict()
    assert float(state["census.seen"]) == 10 and "census.head.weight" in state  # the counts and the net


def test_the_census_look_pulls_g_lesions_to_the_real_ones_and_resumes_exactly(tmp_path):
    """g_lesion_look: G's term is the gap between the census's mean score of its with-lesion
    renders and the real lesion-bearing slices', in units of their distance from the healthy
    twins, zero until there is a count; a run with it logs both sides and resumes bit for bit."""
    c = LesionCensus(DiscTrunk([1, 8, 8], [4, 8], 8), look=True)
    c.look.copy_(torch.tensor([3.0, -1.0]))
    c.stats.copy_(torch.tensor([0.3, 0.9, 0.1]))  # a count: tpr - fpr >= MIN_GAP
    logit = torch.tensor([1.0, 1.0], requires_grad=True)
    loss = c.look_loss(logit)
    assert float(loss) == pytest.approx(((1.0 - 3.0) / 4.0) ** 2)
    loss.backward()
    assert logit.grad.tolist() == pytest.approx([2 * (1.0 - 3.0) / 16 / 2] * 2)  # up, toward real
    c.stats.copy_(torch.tensor([0.3, 0.5, 0.4]))  # no count yet: no pull
    assert float(c.look_loss(logit)) == 0.0
    full = resume_matches_full(tmp_path, {"g_lesion_share": 0.5, "g_lesion_share_by": "count",
                                          "g_lesion_look": 1.0})
    for key in ("census_real_lesion_logit", "census_healthy_twin_logit", "census_g_lesion_logit"):
        assert full.history[f"train/{key}"], key
    r = tiny_recipe("gan", steps=2)
    r["model"] = {**r["model"], "g_atlas": str(tmp_path / "atlas"), "g_lesion_share": 0.5,
                  "g_lesion_look": 1.0}
    with pytest.raises(RecipeError, match=r"g_lesion_look: 1.0 needs g_lesion_share_by: count"):
        from_mapping(r)


def test_the_quantile_look_asks_for_the_real_spread_of_lesion_scores(tmp_path):
    """g_lesion_look_by quantiles: a census keeps 8 quantiles of the real lesion-bearing slices'
    scores; G's renders that all score the real mean (zero loss for the mean look) are pulled
    apart, up at the top and down at the bottom, and renders spread as the real ones cost nothing.
    A run with it resumes bit for bit; the key needs the look."""
    c = LesionCensus(DiscTrunk([1, 8, 8], [4, 8], 8), look=True, look_by="quantiles")
    real = torch.linspace(0.0, 14.0, 33)[:32]  # real slices' lesion scores, spread
    twins = torch.full((32,), -4.0)
    for _ in range(60):  # folded in as the moving averages do
        c.update(real, real, twins)
    assert c.look_q.tolist() == pytest.approx(torch.quantile(real, c.levels).tolist(), abs=1e-4)
    c.stats.copy_(torch.tensor([0.3, 0.9, 0.1]))  # a count: tpr - fpr >= MIN_GAP
    one_kind = torch.full((32,), float(real.mean()), requires_grad=True)
    loss = c.look_loss(one_kind)
    assert float(loss) > 0.05
    loss.backward()
    g = one_kind.grad
    assert float(g.sum()) == pytest.approx(0.0, abs=1e-5)  # no net pull: the mean is right
    mean_look = LesionCensus(DiscTrunk([1, 8, 8], [4, 8], 8), look=True)
    mean_look.look.copy_(c.look)
    mean_look.stats.copy_(c.stats)
    assert float(mean_look.look_loss(one_kind)) < 1e-6  # what the mean look asks is met already
    assert float(c.look_loss(real)) < 1e-6
    with pytest.raises(ValueError, match="look_by 'median'"):
        LesionCensus(DiscTrunk([1, 8, 8], [4, 8], 8), look=True, look_by="median")
    full = resume_matches_full(tmp_path, {"g_lesion_share": 0.5, "g_lesion_share_by": "count",
                                          "g_lesion_look": 1.0, "g_lesion_look_by": "quantiles"})
    assert full.history["train/census_real_lesion_logit_spread"]
    r = tiny_recipe("gan", steps=2)
    r["model"] = {**r["model"], "g_atlas": str(tmp_path / "atlas"), "g_lesion_share": 0.5,
                  "g_lesion_share_by": "count", "g_lesion_look_by": "quantiles"}
    with pytest.raises(RecipeError, match=r"g_lesion_look_by: quantiles needs g_lesion_look > 0"):
        from_mapping(r)
