"""The GAN's atlas generator (model.g_atlas): the image is a frozen atlas template at a drawn pose
plus drawn lesion discs and noise. Checked: with no lesion and no noise the image is the atlas's
own rendering; the separable disc sum equals the brute-force one on affine_grid's coordinates; a
disc lands where it was put; disc centres stay inside the head ellipse and are spread from step
0; bad exports are recipe errors naming the key; training moves G but not the atlas, resume is
exact, and the exported generator reloads."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_recipe

from genlab.core.errors import RecipeError
from genlab.core.recipe import from_mapping
from genlab.engine.trainer import Trainer
from genlab.families.base import EncoderSpec
from genlab.families.export import save_encoder
from genlab.nn.atlas import AtlasEncoder
from genlab.nn.gan_atlas import AtlasGenerator, into_disc, uniform_in_disc
from genlab.nn.gan_blocks import DiscTrunk, Generator, load_generator


def _head(h: int, w: int, up: int) -> torch.Tensor:
    """(1, 1, h up, w up): a bright ellipse (0.6) on a dark ground (0.02), as a brain template."""
    ys = (torch.arange(h * up) + 0.5) / (h * up) * 2 - 1
    xs = (torch.arange(w * up) + 0.5) / (w * up) * 2 - 1
    inside = (ys[:, None] / 0.8) ** 2 + (xs[None, :] / 0.7) ** 2 < 1
    return torch.where(inside, 0.6, 0.02)[None, None]


def _atlas_export(tmp_path, shape=(1, 8, 8), up=1, name="atlas"):
    args = {"in_shape": list(shape), "widths": [4], "up": up, "scales": [0.0],
            "thresholds": [0.1], "quantiles": [1.0]}
    torch.manual_seed(0)
    enc = AtlasEncoder(**args)
    with torch.no_grad():
        enc.atlas.template.copy_(_head(shape[1], shape[2], up))
        torch.nn.init.normal_(enc.atlas.pose_net.out.weight, std=0.3)  # poses that vary
    info = SimpleNamespace(input_shape=list(shape), value_range=[0.0, 1.0], name="tiny", class_names=[])
    return save_encoder(EncoderSpec("atlas_encoder", args, enc, enc.num_features), tmp_path / name,
                        family="atlas", info=info, recipe_name="tiny_atlas", step=0)


def _generator(shape=(1, 16, 12), up=2, slots=3, classes=0) -> AtlasGenerator:
    torch.manual_seed(0)
    g = AtlasGenerator(list(shape), [4], up, code_dim=8, num_classes=classes, slots=slots)
    with torch.no_grad():
        g.atlas.template.copy_(_head(shape[1], shape[2], up))
    g.fit_template_frame()
    return g


def _recipe(atlas, steps=6, model=None):
    r = tiny_recipe("gan", steps=steps)
    r["model"] = {**r["model"], "g_atlas": str(atlas), "g_lesion_slots": 4, **(model or {})}
    return r


def test_no_lesion_and_no_noise_is_the_atlas_rendering():
    g = _generator()
    pose = torch.tensor([[0.05, -0.1, 0.1, -0.05, 0.2, -0.1], [0.0] * 6])
    zero = torch.zeros(2, 1, 16, 12)
    torch.testing.assert_close(g.compose(pose, zero, zero), g.atlas.render(pose).clamp(0, 1))
    # the whole forward with the disc count at its floor and no noise: the rendering at the drawn
    # pose, but for disc 0, kept at 3e-4 of its amplitude (so that it can come back)
    with torch.no_grad():
        g.area.bias[2] = -1e4  # disc count
        g.noise_amp.bias.fill_(-1e4)
    g.fit_pose(torch.rand(6, 1, 16, 12))
    latent = torch.randn(5, g.z_dim)
    parts = g.split_latent(latent)
    expect = g.atlas.render(g.draw_pose(parts["z"], parts["pose"])).clamp(0, 1)
    out = g(latent)
    assert out.shape == (5, 1, 16, 12)
    torch.testing.assert_close(out, expect, atol=3e-3, rtol=0)
    assert float((out - expect).abs().max()) > 0


def test_separable_disc_sum_matches_brute_force_on_the_warp_grid():
    g = _generator(slots=3)
    pose = torch.tensor([[0.1, -0.05, 0.2, -0.1, 0.0, 0.0], [-0.2, 0.15, -0.1, 0.05, 0.3, 0.1]])
    centres = torch.tensor([[[0.1, 0.2], [-0.3, 0.0], [0.5, -0.4]], [[0.0, 0.0], [0.2, 0.6], [-0.5, -0.5]]])
    sigma = torch.tensor([[1.0, 2.0, 0.7], [3.0, 1.5, 1.0]])
    amp = torch.tensor([[1.0, 0.5, 2.0], [0.3, 4.0, 1.0]])
    fast = g.lesion_sum(pose, centres, sigma, amp)
    theta = torch.zeros(2, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1] = pose[:, 0].exp(), pose[:, 1].exp()
    theta[:, 0, 2], theta[:, 1, 2] = pose[:, 2], pose[:, 3]
    grid = F.affine_grid(theta, [2, 1, 16, 12], align_corners=False)  # template x, y of each pixel
    d2 = (((grid[:, None, ..., 0] - centres[..., 0, None, None]) * 6) ** 2
          + ((grid[:, None, ..., 1] - centres[..., 1, None, None]) * 8) ** 2)  # in pixels
    slow = (amp[..., None, None] * torch.exp(-d2 / (2 * sigma[..., None, None] ** 2))).sum(1)
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-6)


def test_a_disc_lands_where_it_was_put_and_brightens_by_the_gain():
    g = _generator(shape=(1, 16, 12), slots=1)
    pose = torch.zeros(1, 6)
    s = g.lesion_sum(pose, torch.tensor([[[-0.5, 0.25]]]), torch.tensor([[1.0]]), torch.tensor([[100.0]]))
    lesion = (0.3 * -torch.expm1(-s))[:, None]
    img = g.compose(pose, lesion, torch.zeros_like(lesion))
    base = g.atlas.render(pose)
    diff = (img - base)[0, 0]
    # normalised (-0.5, 0.25) is pixel x = (1 - 0.5) * 6 - 0.5 = 2.5, y = 1.25 * 8 - 0.5 = 9.5
    assert torch.allclose(diff[9:11, 2:4], torch.full((2, 2), 0.3), atol=1e-3)  # saturated: flat
    # saturated out to sigma sqrt(2 ln amp) = 3 px; 7 px away, S = 100 exp(-49 / 2) < 1e-8
    assert float(diff[:, 10:].abs().max()) < 1e-7 and float(diff[:3].abs().max()) < 1e-7


def test_disc_centres_stay_in_the_head_and_their_clusters_are_uniform_in_it():
    u = torch.randn(200_000, 2, generator=torch.Generator().manual_seed(0))
    q = uniform_in_disc(u)
    r = q.norm(dim=-1)
    assert float(r.max()) < 1
    # uniform in the unit disc: P(r < t) = t^2, and the quadrants equally often
    for t in (0.25, 0.5, 0.75, 0.9):
        assert abs(float((r < t).float().mean()) - t * t) < 0.005
    assert abs(float((q[:, 0] > 0).float().mean()) - 0.5) < 0.005
    far = torch.tensor([[3.0, 4.0], [0.3, 0.4]])
    torch.testing.assert_close(into_disc(far), torch.tensor([[0.6, 0.8], [0.3, 0.4]]))
    g = _generator(slots=8, classes=3)
    # the head is an ellipse of semi-axes (0.7, 0.8): 2 sd of its pixels' coordinates, x 0.7
    torch.testing.assert_close(g.area_axes, 0.7 * torch.tensor([0.7, 0.8]), atol=0.04, rtol=0)
    with torch.no_grad():  # a G that has learnt to throw its discs far: they stay in the head
        g.slot_out.weight.normal_(std=5.0)
        g.area.weight.normal_(std=5.0)
    torch.manual_seed(1)
    latent = torch.randn(256, g.z_dim) * 3
    parts = g.split_latent(latent)
    h = g.trunk(torch.cat([parts["z"], g.embed(torch.zeros(256, dtype=torch.long))], 1))
    centres, sigma, amp, gain = g.draw_discs(h, parts["area"], parts["slots"])
    rel = (centres - g.area_centre) / g.area_axes
    assert float(rel.norm(dim=-1).max()) <= 1 + 1e-6  # inside the ellipse fitted to the head
    # ... and not all on one point of its edge: a cluster is at most 0.3 from where it was drawn
    assert float(rel.reshape(-1, 2).std(0).min()) > 0.3
    assert sigma.shape == amp.shape == (256, 8) and gain.shape == (256,)
    # whatever G learnt, its clusters of one class are all over the head, not at one place
    with torch.no_grad():
        g.area.weight.zero_()
        g.slot_out.weight.zero_()
        g.area.bias[0] = -1e4  # discs at their cluster centre, but for the least spread
    centres = g.draw_discs(h, parts["area"], parts["slots"])[0]
    least = 0.08 + 0.52 * torch.sigmoid(torch.tensor(-3.0))  # the spread's floor
    expect = g.area_centre + g.area_axes * into_disc(0.8 * uniform_in_disc(parts["area"])[:, None]
                                                     + least * parts["slots"])
    torch.testing.assert_close(centres, expect)


def test_bad_or_missing_atlas_exports_are_recipe_errors_naming_the_key(tmp_path):
    with pytest.raises(RecipeError, match="model.g_atlas"):
        from_mapping(_recipe(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(RecipeError, match="model.g_atlas"):
        Trainer(from_mapping(_recipe(tmp_path / "empty")), out_root=tmp_path / "runs", quiet=True)
    wrong_shape = _atlas_export(tmp_path, shape=(1, 16, 12), name="wrong_shape")
    with pytest.raises(RecipeError, match=r"model.g_atlas.*\(1, 16, 12\) images.*\(1, 8, 8\)"):
        Trainer(from_mapping(_recipe(wrong_shape)), out_root=tmp_path / "runs", quiet=True)
    trunk = DiscTrunk([1, 8, 8], [4], 6)
    info = SimpleNamespace(input_shape=[1, 8, 8], value_range=[0.0, 1.0], name="tiny", class_names=[])
    not_atlas = save_encoder(EncoderSpec("gan_disc_trunk", {"in_shape": [1, 8, 8], "channels": [4],
                                                            "out_features": 6}, trunk, 6),
                             tmp_path / "trunk", family="gan", info=info, recipe_name="t", step=0)
    with pytest.raises(RecipeError, match="model.g_atlas.*expected an atlas export"):
        Trainer(from_mapping(_recipe(not_atlas)), out_root=tmp_path / "runs", quiet=True)
    with pytest.raises(RecipeError, match="g_full_res"):
        from_mapping(_recipe(_atlas_export(tmp_path), model={"g_full_res": 1}))


def test_training_moves_g_not_the_atlas_and_losses_are_finite(tmp_path):
    atlas = _atlas_export(tmp_path)
    t = Trainer(from_mapping(_recipe(atlas, steps=4, model={"conditional": True, "ac_weight": 1.0})),
                out_root=tmp_path / "runs", quiet=True)
    g = t.model.G
    assert isinstance(g, AtlasGenerator) and t.model.latent_dim == g.z_dim == 8 + 6 + 2 + 2 * 4 + 1
    before = {k: v.detach().clone() for k, v in g.state_dict().items()}
    assert not bool(g.pose_ready)
    t.run()
    assert bool(g.pose_ready) and bool(t.model.G_ema.pose_ready) and float(g.pose_sd.max()) > 0
    after = g.state_dict()
    for k, v in before.items():
        if k.startswith("atlas."):
            assert torch.equal(v, after[k]), k  # frozen
    moved = [k for k, v in g.named_parameters() if v.requires_grad and not torch.equal(before[k], v)]
    assert {"trunk.0.weight", "slot_out.weight", "pose.weight"} <= set(moved)
    losses = [v for k, hist in t.history.items() if k.startswith("train/") and "loss" in k
              for _, v in hist]
    assert losses and all(math.isfinite(v) for v in losses)
    x = t.model.sample(6, labels=torch.arange(6) % 10)
    assert x.shape == (6, 1, 8, 8) and 0 <= float(x.min()) and float(x.max()) <= 1


def resume_matches_full(tmp_path, model: dict) -> Trainer:
    """An atlas-G run to step 10, and the same run cut at step 6 (newest checkpoint: step 4) and
    resumed to 10: their state_dicts equal bit for bit. Returns the uninterrupted run."""
    atlas, runs = _atlas_export(tmp_path), tmp_path / "runs"
    full = Trainer(from_mapping(_recipe(atlas, 12, model)), out_root=runs, quiet=True)
    full.run(stop_at=10)
    cut = Trainer(from_mapping(_recipe(atlas, 12, model)), out_root=runs, quiet=True)
    cut.run(stop_at=6)
    resumed = Trainer(from_mapping(_recipe(atlas, 12, model)), resume_dir=cut.run_dir, quiet=True)
    assert resumed.step == 4
    resumed.run(stop_at=10)
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert "G.pose_mean" in a and "G.atlas.template" in a
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    return full


def exported_generator(model, tmp_path, n: int = 4) -> AtlasGenerator:
    """The run's exported generator, reloaded: it draws what the run's G_ema draws."""
    gen = load_generator(model.export_generator(tmp_path / "gen"))
    z, y = torch.randn(n, gen.z_dim), torch.arange(n)
    torch.testing.assert_close(gen(z, y), model.G_ema.eval()(z, y))
    return gen


def test_resume_is_exact_with_the_atlas_generator(tmp_path):
    resume_matches_full(tmp_path, {"conditional": True, "ac_weight": 1.0, "r1_gamma": 1.0, "r1_every": 2,
                                   "d_augment": ["translation"], "g_diversity": 0.5})


def test_exported_atlas_generator_reloads_and_the_default_is_the_conv_one(tmp_path):
    t = Trainer(from_mapping(_recipe(_atlas_export(tmp_path), steps=2, model={"conditional": True})),
                out_root=tmp_path / "runs", quiet=True)
    t.run()
    gen = load_generator(t.model.export_generator(tmp_path / "gen"))
    assert isinstance(gen, AtlasGenerator)
    # what `genlab cas` (genlab.data.generated) reads: the shape, the classes, z_dim to draw
    cfg = gen.bundle_meta["config"]
    assert cfg["out_shape"] == [1, 8, 8] and cfg["num_classes"] == 10 and gen.z_dim == t.model.latent_dim
    z, y = torch.randn(4, gen.z_dim), torch.arange(4)
    torch.testing.assert_close(gen(z, y), t.model.G_ema.eval()(z, y))
    plain = Trainer(from_mapping(tiny_recipe("gan", steps=1)), out_root=tmp_path / "runs", quiet=True)
    assert isinstance(plain.model.G, Generator) and plain.model.latent_dim == 8


def test_the_disc_count_stays_at_its_floor_ready_to_rise():
    from genlab.nn.bounded import FloorComeBack

    x = torch.tensor([-3.0, -0.5, 2.0], requires_grad=True)
    y = FloorComeBack.apply(x, -0.5)
    assert y.tolist() == [-0.5, -0.5, 2.0]
    (y * torch.tensor([1.0, 1.0, 1.0])).sum().backward()  # descent would lower every x
    assert x.grad.tolist() == [0.0, 1.0, 1.0]  # ... but the one below the floor stays put
    x.grad = None
    (-FloorComeBack.apply(x, -0.5)).sum().backward()  # descent would raise them: all may
    assert x.grad.tolist() == [-1.0, -1.0, -1.0]
