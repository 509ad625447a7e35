"""The atlas generator's ramp lesion profile (model.g_lesion_profile: ramp): flat discs with a
linear soft edge, drawn in windows and merged by a maximum. Checked: the windowed drawing equals
the brute-force one on the whole warp grid, values and gradients; the profile is flat inside
r - e, gone beyond r + e and overlapping discs do not add up; a recipe with it trains (G learns
the edge), resumes bit for bit, exports and reloads; a bad value or a missing atlas is a recipe
error naming the key."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_gan_atlas import _atlas_export, _head, _recipe, exported_generator, resume_matches_full

from genlab.core.errors import RecipeError
from genlab.core.recipe import from_mapping
from genlab.engine.trainer import Trainer
from genlab.nn.gan_atlas import AtlasGenerator
from genlab.nn.gan_lesion_profile import ramp_discs

H, W = 16, 12


def _brute(pose, centres, radius, edge, opacity):
    """The same discs drawn at every pixel of affine_grid's warp grid, the maximum over discs."""
    theta = torch.zeros(len(pose), 2, 3)
    theta[:, 0, 0], theta[:, 1, 1] = pose[:, 0].exp(), pose[:, 1].exp()
    theta[:, 0, 2], theta[:, 1, 2] = pose[:, 2], pose[:, 3]
    grid = F.affine_grid(theta, [len(pose), 1, H, W], align_corners=False)
    rho2 = (((grid[:, None, ..., 0] - centres[..., 0, None, None]) * W / 2) ** 2
            + ((grid[:, None, ..., 1] - centres[..., 1, None, None]) * H / 2) ** 2)
    r1 = (radius + edge)[..., None, None]
    r0 = (radius - edge).clamp_min(0)[..., None, None]
    return (opacity[..., None, None] * ((r1 ** 2 - rho2) / (r1 ** 2 - r0 ** 2)).clamp(0, 1)).amax(1)


def test_windowed_discs_equal_the_brute_force_maximum_with_their_gradients():
    pose = torch.tensor([[0.1, -0.05, 0.2, -0.1], [-0.2, 0.15, -0.1, 0.05]])
    centres = torch.tensor([[[0.1, 0.2], [-0.3, 0.0], [0.9, -0.95]],  # the last one half outside
                            [[0.0, 0.0], [0.1, 0.1], [-0.5, -0.5]]])  # two that overlap
    radius = torch.tensor([[1.0, 2.5, 2.0], [3.0, 1.5, 0.7]])
    opacity = torch.tensor([[1.0, 0.6, 0.9], [0.7, 0.95, 1.0]])
    grads = []
    for draw in (ramp_discs, _brute):
        leaves = [t.clone().requires_grad_() for t in (centres, radius, opacity)]
        c, r, o = leaves
        args = (pose, c, r, 0.4 + 0.12 * r, o)
        img = ramp_discs(*args, (H, W)) if draw is ramp_discs else draw(*args)
        (img * torch.linspace(0, 1, H * W).view(H, W)).sum().backward()  # a weighted sum: all pixels count
        grads.append((img.detach(), *(t.grad for t in leaves)))
    for fast, slow in zip(*grads):
        torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5)
    assert float(grads[0][0].amax()) > 0.9 and float(grads[0][1].abs().amax()) > 0  # something drawn, moved


def test_a_ramp_disc_is_flat_inside_gone_outside_and_overlaps_do_not_add_up():
    pose = torch.zeros(1, 4)
    # normalised (0, 0) is between the pixels 5 and 6 (x) and 7 and 8 (y): the four pixels at 0.71 px
    one = ramp_discs(pose, torch.zeros(1, 1, 2), torch.tensor([[3.0]]), torch.tensor([[1.0]]),
                     torch.tensor([[0.8]]), (H, W))[0]
    flat = torch.cat([one[6:10, 5:7].flatten(), one[7:9, 4:8].flatten()])  # within r - e = 2 px
    assert torch.allclose(flat, torch.full((16,), 0.8))
    assert float(one[:3].abs().max()) == 0 and float(one[:, :1].abs().max()) == 0  # past r + e = 4 px
    ring = one[7, 8:11]  # 2.5, 3.5, 4.5 px from the centre: falling linearly in rho^2
    rho2 = torch.tensor([2.5, 3.5, 4.5]) ** 2 + 0.5 ** 2
    torch.testing.assert_close(ring, 0.8 * ((16 - rho2) / (16 - 4)).clamp(0, 1))
    two = ramp_discs(pose, torch.zeros(1, 2, 2), torch.tensor([[3.0, 3.0]]), torch.tensor([[1.0, 1.0]]),
                     torch.tensor([[0.8, 0.8]]), (H, W))[0]
    torch.testing.assert_close(two, one)  # the brightest disc wins: no sum


def test_a_ramp_recipe_trains_the_edge_resumes_exports_and_bad_values_name_the_key(tmp_path):
    model = {"conditional": True, "ac_weight": 1.0, "g_lesion_profile": "ramp",
             "g_lesion_min_sigma": {"3": 1.0}}
    full = resume_matches_full(tmp_path, model)
    g = full.model.G
    assert g.profile == "ramp" and float(g.class_min_sigma[3]) == 1.0
    fresh = Trainer(from_mapping(_recipe(_atlas_export(tmp_path / "b"), 2, model)),
                    out_root=tmp_path / "runs_b", quiet=True)
    edge0 = fresh.model.G.edge.detach().clone()
    fresh.run()
    assert not torch.equal(edge0, fresh.model.G.edge.detach())  # G learns its edge
    gen = exported_generator(fresh.model, tmp_path)
    assert gen.profile == "ramp"
    with pytest.raises(RecipeError, match="g_lesion_profile"):
        from_mapping(_recipe(_atlas_export(tmp_path / "c"), 2, {"g_lesion_profile": "box"}))
    plain = {"family": "gan", **{k: v for k, v in _recipe(tmp_path, 2).items() if k != "family"}}
    plain["model"] = {k: v for k, v in plain["model"].items() if k != "g_atlas"}
    plain["model"]["g_lesion_profile"] = "ramp"
    with pytest.raises(RecipeError, match="g_lesion_profile: ramp needs g_atlas"):
        from_mapping(plain)


def test_a_profile_per_class_draws_each_class_as_its_single_profile_g_would():
    """Class A on ramps, B and C Gaussian: each class's discs and images are those of a G of its
    one profile with the same weights (the ramp G's size and amplitude biases moved by what the
    mixed G adds for its ramp classes), and the ramp classes start where a ramp G starts."""
    mixed = AtlasGenerator([1, 32, 24], [4], 2, code_dim=8, num_classes=3, slots=12,
                           profile=["ramp", "gaussian", "gaussian"], min_sigma=[1.0, 0.5, 0.8])
    with torch.no_grad():
        mixed.atlas.template.copy_(_head(32, 24, 2))
        mixed.slot_out.weight.normal_(std=0.5)
    mixed.fit_template_frame()
    single = {}
    for name in ("ramp", "gaussian"):
        g = AtlasGenerator([1, 32, 24], [4], 2, code_dim=8, num_classes=3, slots=12, profile=name,
                           min_sigma=[1.0, 0.5, 0.8])
        g.load_state_dict(mixed.state_dict(), strict=name == "ramp")  # the Gaussian G has no edge
        if name == "ramp":
            with torch.no_grad():
                g.slot_out.bias.add_(mixed.class_logit_offset[0])
        g.fit_template_frame()
        single[name] = g
    torch.manual_seed(3)
    latent, y = torch.randn(12, mixed.z_dim), torch.arange(12) % 3
    a = y == 0
    with torch.no_grad():
        fresh = AtlasGenerator([1, 32, 24], [4], 2, code_dim=8, num_classes=3, slots=12, profile="ramp")
        parts = mixed.split_latent(latent)
        h = mixed.trunk(torch.cat([parts["z"], mixed.embed(y)], 1))
        got = mixed.draw_discs(h, parts["area"], parts["slots"], None, y)
        ramp = single["ramp"].draw_discs(h, parts["area"], parts["slots"], None, y)
        gauss = single["gaussian"].draw_discs(h, parts["area"], parts["slots"], None, y)
        for mine, r, g in zip(got, ramp, gauss):
            torch.testing.assert_close(mine[a], r[a], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(mine[~a], g[~a], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(mixed(latent, y)[a], single["ramp"](latent, y)[a], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(mixed(latent, y)[~a], single["gaussian"](latent, y)[~a],
                                   rtol=1e-5, atol=1e-5)
        # at step 0 (the heads' weights zero) A's discs have the ramp G's radius and opacity
        plain = AtlasGenerator([1, 32, 24], [4], 2, code_dim=8, num_classes=3, slots=12,
                               profile=["ramp", "gaussian", "gaussian"])
        start = plain.draw_discs(h, parts["area"], parts["slots"], None, y)
        first = fresh.draw_discs(h, parts["area"], parts["slots"], None, y)
        torch.testing.assert_close(start[1][a], first[1][a])
        torch.testing.assert_close(start[2][a], first[2][a])
    mixed(latent, y).sum().backward()
    assert float(mixed.edge.grad.abs().sum()) > 0  # A's ramps pass gradients to the shared edge
    with pytest.raises(ValueError, match="needs the classes"):
        mixed.draw_discs(h, parts["area"], parts["slots"])
    with pytest.raises(ValueError, match="one entry per class"):
        AtlasGenerator([1, 32, 24], [4], 2, code_dim=8, num_classes=3, profile=["ramp", "gaussian"])


def test_a_profile_per_class_recipe_trains_resumes_exports_and_bad_classes_name_the_key(tmp_path):
    model = {"conditional": True, "ac_weight": 1.0, "g_lesion_profile": {"0": "ramp"},
             "g_lesion_min_sigma": {"3": 0.7}}
    full = resume_matches_full(tmp_path, model)
    g = full.model.G
    assert g.profile == ["ramp"] + ["gaussian"] * (len(g.profile) - 1) and len(g.profile) > 2
    gen = exported_generator(full.model, tmp_path)
    assert gen.profile == g.profile
    with pytest.raises(RecipeError, match="g_lesion_profile.*unknown class 'X'"):
        bad = {**model, "g_lesion_profile": {"X": "ramp"}}
        Trainer(from_mapping(_recipe(_atlas_export(tmp_path / "c"), 2, bad)), out_root=tmp_path / "runs_c",
                quiet=True)
    with pytest.raises(RecipeError, match="a profile per class needs conditional"):
        from_mapping(_recipe(_atlas_export(tmp_path / "d"), 2, {"g_lesion_profile": {"0": "ramp"}}))
