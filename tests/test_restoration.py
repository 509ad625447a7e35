"""Restoration corruptions (Models Genesis, MAE): what each destroys, its mask, reproducibility,
the loss on the corrupted pixels, the lesion monitors, and clear errors. CPU, small."""
from __future__ import annotations

import math
import time

import pytest
import torch

from genlab.core.errors import GenlabError, RecipeError
from genlab.core.schema import build
from genlab.data.base import DataInfo
from genlab.data.brain_factory import BrainFactory
from genlab.data.corrupt import MASKED_KINDS, REGION_KINDS, Corruption, corrupt, corrupt_with_mask
from genlab.families.ae import DAEConfig, DenoisingAutoencoder

NEW = ["inpaint", "outpaint", "local_shuffle", "intensity", "genesis", "patch_mask"]
LEVEL = {"inpaint": 0.4, "outpaint": 0.5, "local_shuffle": 0.5, "intensity": 0.8, "genesis": 0.5,
         "patch_mask": 0.5}


def _images(b=8, h=64, w=48, c=1, seed=0):
    """Smooth random images in [0.1, 0.9]: every pixel differs from its neighbours and from any
    fill value, so a pixel that was replaced or moved shows."""
    g = torch.Generator().manual_seed(seed)
    return 0.1 + 0.8 * torch.rand((b, c, h, w), generator=g)


def _gen(seed=1):
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- every new kind
@pytest.mark.parametrize("kind", NEW)
def test_shape_range_kept_input_untouched_and_changed(kind):
    x = _images()
    before = x.clone()
    out, mask = corrupt_with_mask(x, kind, LEVEL[kind], _gen())
    assert out.shape == x.shape and mask.shape == x.shape and mask.dtype == torch.bool
    assert out.dtype == x.dtype and out.min() >= 0 and out.max() <= 1
    assert torch.equal(x, before)  # a copy, never in place
    assert (out != x).float().mean() > 0.05
    assert torch.equal(corrupt(x, kind, LEVEL[kind], _gen()), out)  # the same draws


@pytest.mark.parametrize("kind", NEW)
def test_reproducible_with_a_generator_and_leaves_the_global_rng_alone(kind):
    x = _images()
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a, ma = corrupt_with_mask(x, kind, LEVEL[kind], _gen(5))
    assert torch.equal(torch.get_rng_state(), state)
    b, mb = corrupt_with_mask(x, kind, LEVEL[kind], _gen(5))
    c, _ = corrupt_with_mask(x, kind, LEVEL[kind], _gen(6))
    assert torch.equal(a, b) and torch.equal(ma, mb) and not torch.equal(a, c)
    torch.manual_seed(7)  # training: the global RNG, which the trainer seeds and checkpoints
    d = corrupt(x, kind, LEVEL[kind])
    torch.manual_seed(7)
    assert torch.equal(corrupt(x, kind, LEVEL[kind]), d)


@pytest.mark.parametrize("kind", NEW)
def test_level_zero_is_the_identity(kind):
    x = _images()
    out, mask = corrupt_with_mask(x, kind, 0.0, _gen())
    assert torch.equal(out, x) and not mask.any()


@pytest.mark.parametrize("fill", ["noise", "zero", "mean"])
@pytest.mark.parametrize("kind", ["inpaint", "outpaint", "patch_mask", "genesis"])
def test_mask_marks_exactly_the_filled_pixels(kind, fill):
    x = _images(c=3)
    out, mask = corrupt_with_mask(x, kind, LEVEL[kind], _gen(), fill=fill)
    assert mask.any() and not mask.all()
    assert (mask == mask[:, :1]).all()  # a region is the same in every channel
    if kind == "genesis":  # the intensity curve moves every pixel of an image it is applied to
        assert ((out != x) <= mask).all()
        return
    assert torch.equal(out[~mask], x[~mask])
    if fill == "zero":
        assert (out[mask] == 0).all()
    elif fill == "mean":
        assert torch.equal(out, torch.where(mask, x.mean((2, 3), keepdim=True).expand_as(x), x))
    else:
        assert (out[mask] != x[mask]).float().mean() > 0.99


def test_patch_mask_hits_exactly_the_share_of_whole_patches():
    x = _images(b=6, h=64, w=48)
    _, mask = corrupt_with_mask(x, "patch_mask", 0.75, _gen(), patch=16, fill="zero")
    grid = mask[:, 0].reshape(6, 4, 16, 3, 16)
    per_patch = grid.float().mean((2, 4))  # (B, 4, 3): each patch all or nothing
    assert ((per_patch == 0) | (per_patch == 1)).all()
    assert (per_patch.sum((1, 2)) == 9).all()  # round(0.75 * 12) in every image
    _, odd = corrupt_with_mask(_images(h=20, w=20), "patch_mask", 1.0, _gen(), patch=16)
    assert odd.all()  # edge patches cut by the border count as patches


def test_local_shuffle_moves_pixels_inside_their_cells_only():
    x = _images(b=4, h=32, w=32)
    out, mask = corrupt_with_mask(x, "local_shuffle", 0.5, _gen(), window=8)
    assert torch.equal(out[~mask], x[~mask])

    def cells(t):  # (4, 1, 32, 32) -> (4, 16 cells, 64 pixels)
        return t[:, 0].reshape(4, 4, 8, 4, 8).permute(0, 1, 3, 2, 4).reshape(4, 16, 64)

    hit = cells(mask).all(-1)
    assert (cells(mask).any(-1) == hit).all()  # whole cells
    assert (hit.sum(1) == 8).all()  # half the 16 cells of every image
    assert torch.equal(cells(out).sort(-1).values, cells(x).sort(-1).values)  # same values, moved
    assert (out[mask] != x[mask]).float().mean() > 0.9


def test_intensity_is_a_monotone_curve_fixing_black_and_white():
    ramp = torch.linspace(0, 1, 64 * 48).reshape(1, 1, 64, 48).repeat(16, 1, 1, 1)
    out, mask = corrupt_with_mask(ramp, "intensity", 1.0, _gen())
    flat = out.flatten(1)
    assert mask.all()
    assert (flat.diff(dim=1) >= -1e-6).all()  # order of intensities kept: a lesion stays brighter
    assert flat[:, 0].abs().max() < 1e-6 and (flat[:, -1] - 1).abs().max() < 1e-6
    assert (flat - ramp.flatten(1)).abs().amax(1).min() > 0.02  # and every curve bends
    assert len({tuple(r[::500].tolist()) for r in flat}) == 16  # each image its own curve
    weak = corrupt(ramp, "intensity", 0.1, _gen())
    assert (weak - ramp).abs().max() < (out - ramp).abs().max()


def test_genesis_mixes_the_components_per_image():
    torch.manual_seed(0)
    x = _images(b=64)
    out, mask = corrupt_with_mask(x, "genesis", 0.5, _gen())
    changed = (out != x).flatten(1)
    whole = changed.all(1)  # the intensity curve touched the whole image
    assert 0.75 < whole.float().mean() < 1.0  # p 0.9 (binomial: 64 images)
    painted = (~whole & (mask.flatten(1).float().mean(1) > 0.05))  # no curve, but a region
    assert painted.any()
    untouched = ~changed.any(1)
    assert untouched.float().mean() < 0.05  # p(no component at all) = 0.5 * 0.1 * 0.1


# ----------------------------------------------------------------------------- the old kinds
def _old_corrupt(x, kind, level, generator=None):
    """The implementation before the restoration kinds: they must not change a single value."""
    def rand(normal=False):
        device = x.device if generator is None else generator.device
        draw = torch.randn if normal else torch.rand
        return draw(x.shape, generator=generator, device=device, dtype=x.dtype).to(x.device)

    if kind == "none" or level == 0:
        return x.clone()
    if kind == "gaussian":
        return (x + level * rand(normal=True)).clamp_(0.0, 1.0)
    u = rand()
    if kind == "masking":
        return x * (u >= level)
    out = x.clone()
    out[u < level] = 0.0
    out[u < level / 2] = 1.0
    return out


@pytest.mark.parametrize("kind,level", [("gaussian", 0.25), ("masking", 0.3), ("salt_pepper", 0.2),
                                        ("none", 0.0)])
def test_existing_kinds_are_bit_identical(kind, level):
    x = _images()
    assert torch.equal(corrupt(x, kind, level, _gen(3)), _old_corrupt(x, kind, level, _gen(3)))
    assert torch.equal(Corruption(kind, level)(x, _gen(3)), _old_corrupt(x, kind, level, _gen(3)))
    torch.manual_seed(11)
    a = corrupt(x, kind, level)
    torch.manual_seed(11)
    assert torch.equal(a, _old_corrupt(x, kind, level))
    out, mask = corrupt_with_mask(x, kind, level, _gen(3))
    assert torch.equal(out, a if kind == "none" else _old_corrupt(x, kind, level, _gen(3)))
    if kind in ("masking", "salt_pepper"):
        assert torch.equal(out[~mask], x[~mask]) and 0.1 < mask.float().mean() < 0.4


def test_fast_on_a_cpu_batch():
    x = torch.rand(64, 1, 128, 96)
    for kind in REGION_KINDS:
        corrupt(x, kind, 0.5)
        t = time.perf_counter()
        corrupt(x, kind, 0.5)
        assert time.perf_counter() - t < 2.0, kind  # ~0.03 s for genesis on one idle core


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize("fields,key", [
    ({"kind": "inpaint", "level": 1.5}, "model.corruption: level: inpaint level is a share in [0, 1]"),
    ({"kind": "patch_mask", "patch": 0}, "model.corruption.patch: expected a number >= 1"),
    ({"kind": "local_shuffle", "window": 1}, "model.corruption.window: expected a number >= 2"),
    ({"kind": "inpaint", "fill": "blur"}, "model.corruption.fill: expected one of 'noise'"),
    ({"kind": "paint"}, "model.corruption.kind: expected one of"),
])
def test_bad_values_name_key_value_and_expected(fields, key):
    with pytest.raises(RecipeError) as e:
        build(DAEConfig, {"corruption": fields}, "model")
    assert str(e.value).startswith(key) and "\n" not in str(e.value)


def test_cross_checks_are_one_line_errors():
    with pytest.raises(RecipeError, match=r"^model: loss_on: 'corrupted' needs .* got corruption.kind "
                                          r"'gaussian'$"):
        build(DAEConfig, {"loss_on": "corrupted", "corruption": {"kind": "gaussian"}}, "model")
    cfg = build(DAEConfig, {"corruption": {"kind": "local_shuffle", "window": 40}}, "model")
    info = DataInfo(name="digits", input_shape=(1, 8, 8), num_classes=10,
                    class_names=tuple("0123456789"))
    with pytest.raises(GenlabError, match=r"^model.corruption: window: 40 px cells do not fit the 8 x 8"):
        DenoisingAutoencoder(cfg, info)
    with pytest.raises(ValueError, match="needs images"):
        corrupt(torch.rand(4, 64), "patch_mask", 0.5)
    with pytest.raises(ValueError, match="level must be in"):
        corrupt(_images(), "outpaint", 2.0)


# ----------------------------------------------------------------------------- in the family
def _dae(kind, **model):
    info = DataInfo(name="brain", input_shape=(1, 128, 96), num_classes=4, class_names=("A", "B", "C", "Z"))
    cfg = build(DAEConfig, {"arch": "conv", "channels": [4, 8], "code": "spatial", "bottleneck": 8,
                            "corruption": {"kind": kind, "level": LEVEL.get(kind, 0.3)}, **model}, "model")
    torch.manual_seed(0)
    return DenoisingAutoencoder(cfg, info).eval()


def test_loss_on_corrupted_scores_only_the_destroyed_pixels():
    m = _dae("patch_mask", loss_on="corrupted")
    x = _images(h=128, w=96)
    _, mask = m._corrupt(x, _gen())
    off = x + 0.3 * (~mask)  # wrong only where nothing was destroyed
    assert m._loss(off, x, mask).item() == 0.0
    assert m._loss(off, x, None).item() > 0.01
    on = x + 0.3 * mask
    assert m._loss(on, x, mask).item() == pytest.approx(0.09, rel=1e-5)


@pytest.mark.parametrize("kind", MASKED_KINDS[2:] + ("intensity",))
def test_lesion_monitors_and_renders_work_for_the_new_kinds(kind):
    batch = BrainFactory(mode="hard", seed=0).generate("val", torch.arange(8))
    batch["index"] = torch.arange(8)
    m = _dae(kind, loss_on="corrupted" if kind in MASKED_KINDS else "all")
    out = m.evaluate(batch)
    assert {"lesion_contrast_recon", "lesion_sq_err_input", "psnr_gain"} <= out.keys()
    scores = m.summarize({k: v for k, v in out.items() if torch.is_tensor(v) and v.dim() == 1})
    assert math.isfinite(scores["lesion_retention"]) and math.isfinite(scores["lesion_psnr"])
    assert "lesion_psnr_input" in scores  # NaN (infinite) when no lesion pixel was destroyed
    assert torch.equal(m.evaluate(batch)["loss"], out["loss"])  # evaluation noise is fixed
    grid = m.renders(batch)["reconstructions"]
    assert grid.dim() == 3 and grid.shape[-1] > 8 * 96  # clean / corrupted / reconstructed, labelled
