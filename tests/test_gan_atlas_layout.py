"""The atlas generator's lattice layout and lesion-gain range (model.g_lesion_layout,
model.g_lesion_gain; genlab.nn.gan_lesion_layout). Checked: the lattice's first points are a
compact cluster; whatever G has learnt, two discs of one cluster are never nearer than the
guaranteed minimum, and the count switches on exactly that many discs, within the slots; the
gain starts at the middle of its range and stays in it; a recipe with the keys trains, exports
and reloads with them, a bad range is a recipe error naming the key, and a G without them is
the one it was. A layout per class ({B: lattice}) draws each class exactly as the G of its one
layout would, and an unknown class or layout is a recipe error naming key, value and choices."""
from __future__ import annotations

import math

import pytest
import torch
from conftest import tiny_recipe
from test_gan_atlas import _atlas_export, _generator, _head, exported_generator

from genlab.core.errors import RecipeError
from genlab.core.recipe import from_mapping
from genlab.engine.trainer import Trainer
from genlab.nn.gan_atlas import COUNT_SCALE, AtlasGenerator
from genlab.nn.gan_lesion_layout import JITTER, SPACING, hex_points, min_distance


def _lattice_generator(slots=20, classes=3, gain=None) -> AtlasGenerator:
    torch.manual_seed(0)
    g = AtlasGenerator([1, 32, 24], [4], 2, code_dim=8, num_classes=classes, slots=slots,
                       layout="lattice", lesion_gain=gain)
    with torch.no_grad():
        g.atlas.template.copy_(_head(32, 24, 2))
    g.fit_template_frame()
    return g


def _discs(g: AtlasGenerator, n: int, seed: int = 1):
    torch.manual_seed(seed)
    latent = torch.randn(n, g.z_dim)
    parts = g.split_latent(latent)
    h = g.trunk(torch.cat([parts["z"], g.embed(torch.arange(n) % 3)], 1))
    return g.draw_discs(h, parts["area"], parts["slots"], parts["angle"])


def _pixels(g: AtlasGenerator, centres: torch.Tensor) -> torch.Tensor:
    _, h, w = g.out_shape
    return centres * torch.tensor([w / 2, h / 2])


def test_hex_points_nearest_first_one_apart():
    p = hex_points(19)
    r = p.norm(dim=-1)
    assert float(r[0]) == 0 and torch.allclose(r[1:7], torch.ones(6))  # the centre, then ring 1
    assert torch.allclose(r[7:19].min(), torch.tensor(math.sqrt(3)))  # ring 2's nearest
    assert bool((r[1:] >= r[:-1] - 1e-6).all())  # nearest first
    d = torch.cdist(p, p) + torch.eye(19) * 9
    assert abs(float(d.min()) - 1) < 1e-5  # neighbours exactly one apart
    assert hex_points(48).shape == (48, 2) and min_distance() == pytest.approx(3.0 * (1 - 0.6))


def test_discs_keep_the_minimum_distance_whatever_g_learnt():
    g = _lattice_generator(slots=20)
    with torch.no_grad():  # a G that has learnt anything: spacing and jitter all over their ranges
        g.area.weight.normal_(std=5.0)
        g.slot_out.weight.normal_(std=5.0)
    with torch.no_grad():
        centres = _discs(g, 256)[0]
    px = _pixels(g, centres)
    d = torch.cdist(px, px) + torch.eye(20) * 1e9
    assert float(d.min()) >= min_distance() - 1e-4
    # at the least spacing and the most jitter the bound is nearly reached, never crossed
    with torch.no_grad():
        g.area.weight.zero_()
        g.area.bias[0], g.area.bias[3] = -1e4, 1e4
        centres = _discs(g, 256)[0]
    d = torch.cdist(_pixels(g, centres), _pixels(g, centres)) + torch.eye(20) * 1e9
    least = SPACING[0] + (SPACING[1] - SPACING[0]) * torch.sigmoid(torch.tensor(-3.0))  # its floor
    assert min_distance(float(least), JITTER[1]) - 1e-4 <= float(d.min()) < float(least)
    # ... and with no jitter, neighbours stand exactly one spacing apart
    with torch.no_grad():
        g.area.bias[3] = -1e4
        centres = _discs(g, 8)[0]
    d = torch.cdist(_pixels(g, centres), _pixels(g, centres)) + torch.eye(20) * 1e9
    torch.testing.assert_close(d.min(2).values, torch.full((8, 20), float(least)), atol=1e-3, rtol=0)


@pytest.mark.parametrize("count", [1, 6, 20])
def test_the_count_switches_on_that_many_discs_in_one_compact_cluster(count):
    g = _lattice_generator(slots=20)
    with torch.no_grad():
        g.area.weight.zero_()
        g.area.bias[2] = count / COUNT_SCALE
        centres, _, amp, _ = _discs(g, 64)
    on = amp > 1
    assert on.sum(1).tolist() == [count] * 64
    assert bool(on[:, :count].all())  # the first `count` lattice points: a compact cluster
    if count > 1:  # no disc of the cluster is further from the centre disc than the lattice allows
        px = _pixels(g, centres)
        reach = float(hex_points(count).norm(dim=-1).max()) + 2 * JITTER[1]
        spacing = float(SPACING[0] + (SPACING[1] - SPACING[0]) * torch.sigmoid(g.area.bias[0]))
        assert float((px[:, :count] - px[:, :1]).norm(dim=-1).max()) <= reach * spacing + 1e-3
    with torch.no_grad():  # whatever the count's head says, between none and every slot
        g.area.bias[2] = 1e4
        assert int((_discs(g, 4)[2] > 1).sum(1).max()) == 20
        g.area.bias[2] = -1e4
        assert int((_discs(g, 4)[2] > 1).sum(1).max()) == 0


def test_the_gain_starts_at_the_middle_of_its_range_and_stays_in_it():
    g = _lattice_generator(gain=[0.04, 0.2])
    with torch.no_grad():
        assert torch.allclose(_discs(g, 8)[3], torch.full((8,), 0.12))
        g.area.weight.normal_(std=50.0)
        gain = _discs(g, 256)[3]
    assert 0.04 - 1e-6 <= float(gain.min()) < 0.06 and 0.18 < float(gain.max()) <= 0.2 + 1e-6
    with torch.no_grad():  # the default: the easy-mode range, starting at 0.35
        plain = _generator(slots=3, classes=3)
        torch.manual_seed(0)
        parts = plain.split_latent(torch.randn(4, plain.z_dim))
        h = plain.trunk(torch.cat([parts["z"], plain.embed(torch.zeros(4, dtype=torch.long))], 1))
        assert torch.allclose(plain.draw_discs(h, parts["area"], parts["slots"])[3], torch.full((4,), 0.35))
    assert plain.z_dim == 8 + 6 + 2 + 2 * 3 + 1 and "angle" not in parts  # the layout as it was
    with pytest.raises(ValueError, match="lesion_gain"):
        AtlasGenerator([1, 32, 24], [4], 2, code_dim=8, lesion_gain=[0.2, 0.1])
    with pytest.raises(ValueError, match="layout"):
        AtlasGenerator([1, 32, 24], [4], 2, code_dim=8, layout="grid")


def test_a_lattice_recipe_trains_exports_and_reloads_and_bad_keys_name_themselves(tmp_path):
    atlas = _atlas_export(tmp_path)
    model = {"conditional": True, "ac_weight": 1.0, "g_lesion_layout": "lattice",
             "g_lesion_gain": [0.05, 0.25]}
    r = tiny_recipe("gan", steps=3)
    r["model"] = {**r["model"], "g_atlas": str(atlas), "g_lesion_slots": 4, **model}
    t = Trainer(from_mapping(r), out_root=tmp_path / "runs", quiet=True)
    assert t.model.G.layout == "lattice" and t.model.latent_dim == 8 + 6 + 2 + 2 * 4 + 1 + 1
    t.run()
    gen = exported_generator(t.model, tmp_path)
    assert gen.layout == "lattice" and gen.gain_range == (0.05, 0.25)
    for bad in ([0.3, 0.1], [0.1], [0.0, 0.2]):
        r["model"]["g_lesion_gain"] = bad
        with pytest.raises(RecipeError, match="g_lesion_gain"):
            from_mapping(r)
    r["model"]["g_lesion_gain"], r["model"]["g_lesion_layout"] = None, "grid"
    with pytest.raises(RecipeError, match="g_lesion_layout"):
        from_mapping(r)


def test_the_atlas_view_amplifies_what_a_slice_adds_to_the_anatomy(tmp_path):
    from genlab.families.gan_atlas import atlas_view

    g = _generator(shape=(1, 16, 12), slots=1)
    with torch.no_grad():  # a pose net that always answers the template's own pose
        g.atlas.pose_net.out.weight.zero_()
        g.atlas.pose_net.out.bias.zero_()
    anatomy = g.atlas.render(torch.zeros(2, 6)).clamp(0, 1)
    torch.testing.assert_close(atlas_view(g, anatomy, 3.0), anatomy)  # nothing added: unchanged
    faint = torch.zeros_like(anatomy)
    faint[:, :, 6:9, 4:7] = 0.08  # a hard-mode tumour's brightness
    x = (anatomy + faint).requires_grad_(True)
    view = atlas_view(g, x, 3.0)
    torch.testing.assert_close(view - anatomy, 4.0 * faint)  # seen 1 + k times as bright
    view.sum().backward()  # the rendering is a constant: D's gradient reaches x times 1 + k
    torch.testing.assert_close(x.grad, torch.full_like(x, 4.0))
    torch.testing.assert_close(atlas_view(g, x, 0.0), x)
    # in a run: D trains on the view; the key needs an atlas
    r = tiny_recipe("gan", steps=2)
    r["model"] = {**r["model"], "d_atlas_view": 2.0}
    with pytest.raises(RecipeError, match="d_atlas_view.*g_atlas"):
        from_mapping(r)
    r["model"].update(g_atlas=str(_atlas_export(tmp_path)), g_lesion_slots=4, conditional=True,
                      ac_weight=1.0, r1_gamma=1.0, r1_every=1)
    t = Trainer(from_mapping(r), out_root=tmp_path / "runs", quiet=True)
    t.run()
    losses = [v for k, hist in t.history.items() if k.startswith("train/") for _, v in hist]
    assert losses and all(math.isfinite(v) for v in losses)


def _mixed_and_single(layouts):
    """A G with one layout per class and, for each layout, a single-layout G with the same
    weights (the area head's rows where each reads them: spread, gain, count, jitter, spacing)."""
    mixed = AtlasGenerator([1, 32, 24], [4], 2, code_dim=8, num_classes=3, slots=12, layout=layouts)
    with torch.no_grad():
        mixed.atlas.template.copy_(_head(32, 24, 2))
        mixed.area.weight.normal_(std=0.5)
        mixed.area.bias.normal_(std=0.5)
        mixed.slot_out.weight.normal_(std=0.5)
    mixed.fit_template_frame()
    single = {}
    for name, rows in (("slots", [0, 1, 2]), ("lattice", [4, 1, 2, 3])):
        g = AtlasGenerator([1, 32, 24], [4], 2, code_dim=8, num_classes=3, slots=12, layout=name)
        own = {k: v for k, v in mixed.state_dict().items() if not k.startswith("area.")}
        g.load_state_dict(own, strict=False)
        with torch.no_grad():
            g.area.weight.copy_(mixed.area.weight[rows])
            g.area.bias.copy_(mixed.area.bias[rows])
        g.fit_template_frame()
        single[name] = g
    return mixed, single


def test_a_layout_per_class_draws_each_class_as_its_single_layout_g_would():
    mixed, single = _mixed_and_single(["slots", "lattice", "slots"])  # classes A, B, C: B on the lattice
    assert mixed.per_class and mixed.z_dim == single["lattice"].z_dim  # the lattice's angle too
    torch.manual_seed(3)
    latent, y = torch.randn(12, mixed.z_dim), torch.arange(12) % 3
    parts = mixed.split_latent(latent)
    with torch.no_grad():
        h = mixed.trunk(torch.cat([parts["z"], mixed.embed(y)], 1))
        got = mixed.draw_discs(h, parts["area"], parts["slots"], parts["angle"], y)
        lat = single["lattice"].draw_discs(h, parts["area"], parts["slots"], parts["angle"])
        slo = single["slots"].draw_discs(h, parts["area"], parts["slots"])
    b = y == 1
    # the same weights in heads of different widths (5 outputs, 3 or 4) round differently on some
    # CPUs (AVX2: amplitudes up to e^8 differed by 9e-5, 6e-6 relative): equal within float error
    for mine, on_lattice, on_slots in zip(got, lat, slo):
        torch.testing.assert_close(mine[b], on_lattice[b], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(mine[~b], on_slots[~b], rtol=1e-4, atol=1e-4)
    # B's discs keep the lattice's minimum distance; the slots of A and C do not have to
    px = _pixels(mixed, got[0][b])
    d = torch.cdist(px, px) + torch.eye(12) * 1e9
    assert float(d.min()) >= min_distance() - 1e-4
    with torch.no_grad():  # the whole generator, and a class picks its layout in forward too
        images = mixed(latent, y)
    assert images.shape == (12, 1, 32, 24) and bool(torch.isfinite(images).all())
    with pytest.raises(ValueError, match="needs the classes"):
        mixed.draw_discs(h, parts["area"], parts["slots"], parts["angle"])
    with pytest.raises(ValueError, match="one entry per class"):
        AtlasGenerator([1, 32, 24], [4], 2, code_dim=8, num_classes=3, layout=["slots", "lattice"])
    with pytest.raises(ValueError, match="'slots' or 'lattice'"):
        AtlasGenerator([1, 32, 24], [4], 2, code_dim=8, num_classes=2, layout=["slots", "grid"])


def test_a_layout_per_class_recipe_trains_exports_and_bad_values_name_key_value_and_expected(tmp_path):
    atlas = _atlas_export(tmp_path)
    r = tiny_recipe("gan", steps=2)  # digits: classes "0" ... "9"
    r["model"] = {**r["model"], "g_atlas": str(atlas), "g_lesion_slots": 4, "conditional": True,
                  "ac_weight": 1.0, "g_lesion_layout": {"3": "lattice", "7": "slots"}}
    t = Trainer(from_mapping(r), out_root=tmp_path / "runs", quiet=True)
    assert t.model.G.layout == ["slots"] * 3 + ["lattice"] + ["slots"] * 6
    t.run()
    gen = exported_generator(t.model, tmp_path, 10)
    assert gen.layout == t.model.G.layout and gen.per_class
    unknown_class = r"model\.g_lesion_layout: unknown class 'Q'.*expected class names of the data: 0, 1, 2"
    bad = [  # the value, and what the message must say: the key, the value, what is expected
        ({"Q": "lattice"}, unknown_class),
        ({"3": "grid"}, r"model\.g_lesion_layout\.3.*'slots', 'lattice'.*'grid'"),
        ("grid", r"model\.g_lesion_layout.*'slots', 'lattice'.*'grid'"),
    ]
    for value, pattern in bad:
        r["model"]["g_lesion_layout"] = value
        with pytest.raises(RecipeError, match=pattern):
            Trainer(from_mapping(r), out_root=tmp_path / "bad", quiet=True)
    r["model"].update(g_lesion_layout={"3": "lattice"}, conditional=False, ac_weight=0.0)
    with pytest.raises(RecipeError, match="g_lesion_layout.*per class needs conditional"):
        from_mapping(r)
