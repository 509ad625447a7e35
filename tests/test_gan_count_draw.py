"""The atlas generator's drawn disc counts (model.g_lesion_count_draw): for the classes given a
[least, most], each image's count is a whole number drawn uniformly in it from its own latent
number. Checked: the drawn classes' counts cover their range, whole and about uniform, whatever
h says, and pass h no gradient; the classes not named draw as a G without the option does with
the same weights; a recipe with it resumes bit for bit and exports; bad ranges, unknown classes,
a class also given a least count and an unconditional G are recipe errors naming the key."""
from __future__ import annotations

import pytest
import torch
from test_gan_atlas import _atlas_export, _head, _recipe, exported_generator, resume_matches_full

from genlab.core.errors import RecipeError
from genlab.core.recipe import from_mapping
from genlab.engine.trainer import Trainer
from genlab.nn.gan_atlas import AtlasGenerator


def _pair():
    """A G drawing class 1's count in [3, 9] and a plain G with the same weights."""
    args = {"out_shape": [1, 32, 24], "widths": [4], "up": 2, "code_dim": 8, "num_classes": 3, "slots": 12}
    drawn = AtlasGenerator(**args, count_range=[None, [3, 9], None])
    plain = AtlasGenerator(**args)
    with torch.no_grad():
        drawn.atlas.template.copy_(_head(32, 24, 2))
        drawn.area.weight.normal_(std=0.5)  # counts that depend on h
    plain.load_state_dict(drawn.state_dict())
    for g in (drawn, plain):
        g.fit_template_frame()
    return drawn, plain


def test_drawn_counts_cover_their_range_whole_and_uniform_and_the_other_classes_are_untouched():
    drawn, plain = _pair()
    assert drawn.z_dim == plain.z_dim + 1
    torch.manual_seed(0)
    n = 2100
    latent, y = torch.randn(n, drawn.z_dim), torch.arange(n) % 3
    with torch.no_grad():
        parts = drawn.split_latent(latent)
        h = drawn.trunk(torch.cat([parts["z"], drawn.embed(y)], 1))
        amp = drawn.draw_discs(h, parts["area"], parts["slots"], None, y, parts["count"])[2]
        same = plain.draw_discs(h, parts["area"], parts["slots"], None, y)
        got = drawn.draw_discs(h, parts["area"], parts["slots"], None, y, parts["count"])
    counts = (amp[y == 1] > 1.0).sum(1)  # a disc that is on is at e^3 at step 0's amplitude
    assert int(counts.min()) == 3 and int(counts.max()) == 9
    share = torch.bincount(counts, minlength=10)[3:].float() / len(counts)
    assert torch.all((share - 1 / 7).abs() < 0.05), share  # 700 images: each count ~1/7
    off = amp[y == 1][(amp[y == 1] > 1e-3) & (amp[y == 1] < 1.0)]
    assert float(off.max()) < 0.05 * float(amp.max())  # only the disc past the count, faint
    for mine, theirs in zip(got, same):  # classes 0 and 2 draw as the plain G does
        torch.testing.assert_close(mine[y != 1], theirs[y != 1])
    # the drawn count passes nothing back to the count's head
    h = h.detach().requires_grad_()
    ones = torch.ones(n, dtype=torch.long)
    drawn.draw_discs(h, parts["area"], parts["slots"], None, ones, parts["count"])[2].sum().backward()
    assert float(drawn.area.weight.grad[2].abs().sum()) == 0
    with pytest.raises(ValueError, match="u_count"):
        drawn.draw_discs(h, parts["area"], parts["slots"], None, y)
    with pytest.raises(ValueError, match="whole numbers"):
        AtlasGenerator([1, 32, 24], [4], 2, code_dim=8, num_classes=3, slots=12,
                       count_range=[None, [3, 13], None])


def test_a_count_draw_recipe_resumes_exports_and_bad_values_name_the_key(tmp_path):
    model = {"conditional": True, "ac_weight": 1.0, "g_lesion_count_draw": {"1": [2, 4]}}
    full = resume_matches_full(tmp_path, model)
    g = full.model.G
    assert g.class_count_drawn.tolist()[:3] == [False, True, False]
    assert g.class_count_range[1].tolist() == [2.0, 4.0]
    gen = exported_generator(full.model, tmp_path)
    assert gen.class_count_drawn.tolist() == g.class_count_drawn.tolist()
    atlas = _atlas_export(tmp_path / "b")
    for bad, match in [({"1": [3, 5]}, r"g_lesion_count_draw: expected \[least, most\].*g_lesion_slots = 4"),
                       ({"1": [3, 2]}, r"g_lesion_count_draw: expected \[least, most\]"),
                       ({"1": 3}, "g_lesion_count_draw.1: expected a list")]:
        with pytest.raises(RecipeError, match=match):
            from_mapping(_recipe(atlas, 2, {**model, "g_lesion_count_draw": bad}))
    with pytest.raises(RecipeError, match="g_lesion_count_draw.*unknown class 'X'"):
        Trainer(from_mapping(_recipe(atlas, 2, {**model, "g_lesion_count_draw": {"X": [1, 2]}})),
                out_root=tmp_path / "runs_b", quiet=True)
    with pytest.raises(RecipeError, match="both name class '1'"):
        from_mapping(_recipe(atlas, 2, {**model, "g_lesion_min_count": {"1": 2}}))
    with pytest.raises(RecipeError, match="needs g_atlas and conditional: true"):
        from_mapping(_recipe(atlas, 2, {"g_lesion_count_draw": {"1": [1, 2]}}))
