"""Three options of the hard-mode conditional GAN: the atlas G's anatomy residual
(model.g_anatomy_residual), a least disc count and sigma per class (model.g_lesion_min_count,
g_lesion_min_sigma, g_lesion_min_spacing) and D's class
head pooled by the mean beside the maximum (model.ac_pool). Checked on small cases with known
answers: the residual is zero at step 0 (G unchanged), moves and scales with the pose as the
template does, is the same for every class, stays within R_MAX and reaches its maps' gradients; a class with a
least count draws that many discs even where G asks for none, one with a least sigma no smaller
ones (the other classes as before); the mean-pooled features of the
first conv layer count identical separate discs where the maximum cannot; recipes with all three
train, export and reload, and bad values are recipe errors naming key, value and expected."""
from __future__ import annotations

import pytest
import torch
from conftest import tiny_recipe
from test_gan_atlas import _atlas_export, _generator, _head

from genlab.core.errors import RecipeError
from genlab.core.recipe import from_mapping
from genlab.engine.trainer import Trainer
from genlab.nn.gan_anatomy import R_MAX, warp_like_atlas
from genlab.nn.gan_atlas import AtlasGenerator
from genlab.nn.gan_blocks import Discriminator, DiscTrunk, load_generator


def _pair(classes=3, maps=3, min_count=None, min_sigma=None):
    """(plain atlas G, the same G with an anatomy residual), the same weights where they share them."""
    plain = _generator(classes=classes)
    torch.manual_seed(0)
    res = AtlasGenerator([1, 16, 12], [4], 2, code_dim=8, num_classes=classes, slots=3,
                         anatomy_maps=maps, min_count=min_count, min_sigma=min_sigma)
    missing, unexpected = res.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("anatomy.") for k in missing)
    for g in (plain, res):
        with torch.no_grad():
            g.noise_amp.bias.fill_(-30.0)  # no noise: the images differ by the residual alone
    return plain, res


def test_the_residual_is_zero_at_step_0_and_the_same_for_every_class():
    plain, res = _pair()
    z = torch.randn(6, res.z_dim)
    y0, y1 = torch.zeros(6, dtype=torch.long), torch.full((6,), 2)
    torch.testing.assert_close(res(z, y0), plain(z, y0))  # maps start at zero: G is as it was
    with torch.no_grad():
        res.anatomy.maps.normal_(0.0, 1.0)
    d0, d1 = res(z, y0) - plain(z, y0), res(z, y1) - plain(z, y1)
    assert d0.abs().max() > 0.01  # the residual shows in the image ...
    torch.testing.assert_close(d0, d1)  # ... and is the same whatever the class
    z2 = z.clone()
    z2[:, :8] = torch.randn(6, 8)  # another code: maps 1.. weigh in differently
    assert (res(z2, y0) - plain(z2, y0) - d0).abs().max() > 1e-3


def test_the_residual_warps_and_scales_as_the_atlas_renders_the_template():
    g = _generator()
    pose = torch.tensor([[0.05, -0.1, 0.1, -0.05, 0.2, 0.0], [0.0, 0.0, 0.0, 0.0, -0.3, 0.1]])
    maps = _head(16, 12, 2).expand(2, -1, -1, -1)
    # the template's own rendering, less the offset: exactly what the atlas does with the template
    want = g.atlas.render(pose) - pose[:, 5].view(-1, 1, 1, 1)
    torch.testing.assert_close(warp_like_atlas(maps, pose, 2, (16, 12)), want)
    const = torch.full((2, 1, 32, 24), 0.04)  # a constant map: the gain times it, everywhere
    out = warp_like_atlas(const, pose, 2, (16, 12))
    torch.testing.assert_close(out, 0.04 * torch.exp(pose[:, 4]).view(-1, 1, 1, 1).expand(-1, 1, 16, 12))


def test_the_residual_never_passes_its_bound():
    _, res = _pair(maps=2)
    with torch.no_grad():
        res.anatomy.maps.fill_(100.0)  # far past anything G should learn
    r = res.anatomy(torch.randn(5, 8))
    assert r.abs().max() <= R_MAX and r.abs().max() > 0.9 * R_MAX


def test_every_residual_map_gets_a_gradient_from_the_first_step():
    _, res = _pair(maps=3)
    z, y = torch.randn(8, res.z_dim), torch.arange(8) % 3
    res(z, y).sum().backward()
    per_map = res.anatomy.maps.grad.flatten(1).abs().sum(1)
    assert (per_map > 0).all(), per_map  # map 0 by its coefficient 1, maps 1.. by random ones


def test_a_least_count_per_class_switches_on_that_many_discs_even_when_g_asks_for_none():
    _, g = _pair(min_count=[0, 3, 2.0], maps=1)
    with torch.no_grad():
        g.area.bias[2] = -5.0  # G's own count: -20 discs, at the floor for every class
    z, y = torch.randn(9, g.z_dim), torch.arange(9) % 3
    parts = g.split_latent(z)
    h = g.trunk(torch.cat([parts["z"], g.embed(y)], 1))
    amp = g.draw_discs(h, parts["area"], parts["slots"], None, y)[2]
    on = (amp > 1).sum(1)
    assert on.tolist() == [0, 3, 2] * 3


def test_a_least_sigma_per_class_starts_that_class_s_range_there_and_leaves_the_others_as_they_were():
    plain, g = _pair(min_sigma=[0.5, 2.0, 0.5], maps=1)
    z, y = torch.randn(9, g.z_dim), torch.arange(9) % 3
    parts = g.split_latent(z)
    for raw in (-30.0, 0.0, 30.0):  # G asking for the smallest, a middle and the largest discs
        with torch.no_grad():
            for m in (g, plain):
                m.slot_out.bias[2] = raw
        h = g.trunk(torch.cat([parts["z"], g.embed(y)], 1))
        sigma = g.draw_discs(h, parts["area"], parts["slots"], None, y)[1]
        same = plain.draw_discs(h, parts["area"], parts["slots"], None, y)[1]
        assert (sigma[y == 1] >= 2.0 - 1e-6).all() and (sigma <= 8.0 + 1e-6).all()
        torch.testing.assert_close(sigma[y != 1], same[y != 1])  # the classes not named: unchanged
    assert sigma[y == 1].min() > 7.9  # the top of the range is still reachable
    with pytest.raises(ValueError, match=r"min_sigma: expected one number in \[0.5, 8.0\) per class"):
        AtlasGenerator([1, 16, 12], [4], 2, code_dim=8, num_classes=3, min_sigma=[0.5, 9.0, 0.5])


def test_a_least_lattice_spacing_per_class_holds_that_class_s_discs_apart_and_leaves_the_others():
    torch.manual_seed(0)
    plain = AtlasGenerator([1, 16, 12], [4], 2, code_dim=8, num_classes=3, slots=3, layout="lattice")
    g = AtlasGenerator([1, 16, 12], [4], 2, code_dim=8, num_classes=3, slots=3, layout="lattice",
                       min_spacing=[3.0, 6.0, 3.0])
    g.load_state_dict(plain.state_dict())
    z, y = torch.randn(9, g.z_dim), torch.arange(9) % 3
    parts = g.split_latent(z)
    for m in (g, plain):
        with torch.no_grad():
            m.area.bias[0], m.area.bias[3] = -30.0, -30.0  # G asks for the least spacing, no jitter
    h = g.trunk(torch.cat([parts["z"], g.embed(y)], 1))
    args = (h, parts["area"], parts["slots"], parts["angle"], y)
    px = g.draw_discs(*args)[0] * torch.tensor([6.0, 8.0])  # normalised -> px: half of 12 x 16
    gap = (px[:, 0] - px[:, 1]).norm(dim=1)  # disc 0 at the centre, disc 1 on the first ring
    least = torch.tensor([3.0, 6.0, 3.0] * 3)  # the spacing's logit stops at -3 (it can come back)
    want = least + (12 - least) * torch.sigmoid(torch.tensor(-3.0))
    torch.testing.assert_close(gap, want, atol=1e-3, rtol=0)
    torch.testing.assert_close(g.draw_discs(*args)[0][y != 1], plain.draw_discs(*args)[0][y != 1])
    with pytest.raises(ValueError, match=r"min_spacing: expected one number in \[3.0, 12.0\) per class"):
        AtlasGenerator([1, 16, 12], [4], 2, code_dim=8, num_classes=3, layout="lattice",
                       min_spacing=[3.0, 2.0, 3.0])


def test_the_floor_passes_only_the_gradient_that_raises_the_count():
    _, g = _pair(min_count=[0, 2, 0], maps=1)
    with torch.no_grad():
        g.area.bias[2] = -5.0
    y = torch.ones(4, dtype=torch.long)
    z = torch.randn(4, g.z_dim)
    parts = g.split_latent(z)
    h = g.trunk(torch.cat([parts["z"], g.embed(y)], 1))
    for sign, moves in ((1.0, False), (-1.0, True)):  # minimising +count: blocked; -count: passes
        g.zero_grad()
        amp = g.draw_discs(h, parts["area"], parts["slots"], None, y)[2]
        (sign * amp.sum()).backward(retain_graph=True)
        assert (g.area.bias.grad[2].abs() > 0) == moves


def test_a_mean_pooled_class_head_counts_separate_discs_where_the_max_cannot():
    torch.manual_seed(0)
    channels = [4, 8]
    trunk = DiscTrunk([1, 32, 32], channels, 8)
    with torch.no_grad():
        trunk.features[0].weight.abs_()  # a first layer that fires on bright blobs
    img = torch.zeros(3, 1, 32, 32)
    spots = [(6, 6), (6, 22), (22, 6), (22, 22)]  # far apart, on the stride-2 grid
    for n, image in zip((0, 1, 4), img):
        for r, c in spots[:n]:
            image[0, r:r + 2, c:c + 2] = 1.0
    _, pooled = trunk.forward_pooled(img, mean=True)
    first_max, first_mean = pooled[:, :4], pooled[:, sum(channels):sum(channels) + 4]
    torch.testing.assert_close(first_max[1], first_max[2])  # one disc or four: the same maximum
    torch.testing.assert_close(first_mean[2] - first_mean[0], 4 * (first_mean[1] - first_mean[0]))
    assert (first_mean[1] > first_mean[0]).all()
    # the head takes both halves; the default stays the max alone, with its old initial weights
    d = Discriminator([1, 32, 32], channels, 8, num_classes=3, ac_classes=3, ac_pool="max+mean")
    assert d.classify.in_features == 2 * sum(channels)
    torch.manual_seed(0)
    plain = Discriminator([1, 32, 32], channels, 8, num_classes=3, ac_classes=3)
    assert plain.classify.in_features == sum(channels) and not plain.ac_mean
    with pytest.raises(ValueError, match=r"ac_pool: expected one of max, max\+mean, got 'mean'"):
        Discriminator([1, 32, 32], channels, 8, ac_classes=3, ac_pool="mean")


def _recipe(atlas, **model):
    r = tiny_recipe("gan", steps=2)  # digits: classes "0" ... "9"
    r["model"] = {**r["model"], "g_atlas": str(atlas), "g_lesion_slots": 4, "conditional": True,
                  "ac_weight": 1.0, **model}
    return r


def test_a_recipe_with_all_three_trains_exports_and_reloads(tmp_path):
    atlas = _atlas_export(tmp_path)
    r = _recipe(atlas, g_anatomy_residual=2, g_lesion_min_count={"3": 2}, ac_pool="max+mean",
                g_lesion_min_sigma={"3": 1.5}, g_lesion_layout={"3": "lattice"},
                g_lesion_min_spacing={"3": 6.0})
    t = Trainer(from_mapping(r), out_root=tmp_path / "runs", quiet=True)
    assert t.model.G.min_count == [0, 0, 0, 2] + [0] * 6 and t.model.D.ac_mean
    before = t.model.G.anatomy.maps.detach().clone()
    t.run()
    assert not torch.equal(t.model.G.anatomy.maps, before)  # the residual is learnt
    gen = load_generator(t.model.export_generator(tmp_path / "gen"))
    assert gen.anatomy is not None and gen.min_count == t.model.G.min_count
    assert gen.min_sigma == [0.5] * 3 + [1.5] + [0.5] * 6
    assert gen.min_spacing == [3.0] * 3 + [6.0] + [3.0] * 6
    z, y = torch.randn(10, gen.z_dim), torch.arange(10)
    torch.testing.assert_close(gen(z, y), t.model.G_ema.eval()(z, y))


@pytest.mark.parametrize("model,pattern", [
    ({"g_lesion_min_count": {"Q": 4}},
     r"model\.g_lesion_min_count: unknown class 'Q'.*expected class names of the data: 0, 1, 2"),
    ({"g_lesion_min_count": {"3": 9}}, r"g_lesion_min_count.*\[0, g_lesion_slots = 4\].*'3': 9"),
    ({"g_lesion_min_count": {"3": 2}, "conditional": False, "ac_weight": 0.0},
     r"g_lesion_min_count.*needs conditional"),
    ({"g_anatomy_residual": -1}, r"g_anatomy_residual"),
    ({"g_lesion_min_sigma": {"Q": 1.0}}, r"model\.g_lesion_min_sigma: unknown class 'Q'.*0, 1, 2"),
    ({"g_lesion_min_sigma": {"3": 0.2}}, r"g_lesion_min_sigma.*\[0.5, 8\) px.*'3': 0.2"),
    ({"g_lesion_min_spacing": {"3": 6.0}}, r"g_lesion_min_spacing.*needs.*a lattice in g_lesion_layout"),
    ({"g_lesion_layout": "lattice", "g_lesion_min_spacing": {"3": 2.0}},
     r"g_lesion_min_spacing: expected spacings in \[3, 12\) px.*'3': 2.0"),
    ({"g_lesion_layout": "lattice", "g_lesion_min_spacing": {"Q": 6.0}},
     r"model\.g_lesion_min_spacing: unknown class 'Q'"),
    ({"g_lesion_layout": {"3": "lattice"}, "g_lesion_min_spacing": {"4": 6.0}},
     r"model\.g_lesion_min_spacing: class '4' is drawn as slots.*expected classes on the lattice"),
    ({"ac_pool": "mean"}, r"model\.ac_pool.*'max', 'max\+mean'.*'mean'"),
    ({"ac_pool": "max+mean", "ac_weight": 0.0}, r"ac_pool: max\+mean needs ac_weight > 0"),
])
def test_bad_values_name_key_value_and_expected(tmp_path, model, pattern):
    r = _recipe(_atlas_export(tmp_path), **model)
    with pytest.raises(RecipeError, match=pattern):
        Trainer(from_mapping(r), out_root=tmp_path / "runs", quiet=True)


def test_the_residual_and_the_least_count_need_the_atlas_generator():
    r = tiny_recipe("gan", steps=2)
    for model in ({"g_anatomy_residual": 2}, {"conditional": True, "g_lesion_min_count": {"3": 2}}):
        r["model"] = {**r["model"], **model}
        with pytest.raises(RecipeError, match="need g_atlas"):
            from_mapping(r)
        r = tiny_recipe("gan", steps=2)
