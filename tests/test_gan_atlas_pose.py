"""The atlas generator's pose drawn from the full covariance of the real poses
(model.g_pose_cov: full): the drawn poses have the fitted covariance (correlations kept, where
the diagonal draw loses them), the fit reads 1,024 training slices before the first step, a run
resumes bit for bit and exports, and a bad value or a missing atlas is a recipe error."""
from __future__ import annotations

import pytest
import torch
from test_gan_atlas import _atlas_export, _head, _recipe, exported_generator, resume_matches_full

from genlab.core.errors import RecipeError
from genlab.core.recipe import from_mapping
from genlab.data.sampler import eval_batches
from genlab.families.gan_atlas import POSE_FIT_IMAGES
from genlab.nn.gan_atlas import AtlasGenerator


def _correlated_poses(n: int) -> torch.Tensor:
    """Poses whose log gain and offset go together (correlation ~ -0.7), as the brain factory's."""
    g = torch.Generator().manual_seed(0)
    p = torch.randn(n, 6, generator=g) * torch.tensor([0.03, 0.03, 0.02, 0.02, 0.07, 0.02])
    p[:, 5] = -0.3 * p[:, 4] + 0.015 * torch.randn(n, generator=g)
    return p


@pytest.mark.parametrize("cov", ["full", "diagonal"])
def test_drawn_poses_have_the_fitted_covariance_only_when_full(cov):
    g = AtlasGenerator([1, 16, 12], [4], 2, code_dim=8, slots=3, pose_cov=cov)
    with torch.no_grad():
        g.atlas.template.copy_(_head(16, 12, 2))
    g.fit_template_frame()
    real = _correlated_poses(4000)
    g.atlas.pose = lambda x: real  # fit_pose reads the poses the atlas's pose net gives
    g.fit_pose(torch.zeros(4000, 1, 16, 12))
    u = torch.randn(20000, 6, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        p = g.draw_pose(torch.zeros(20000, 8), u)[:, 4:]  # gain and offset: not squashed by tanh
    want = torch.corrcoef(real[:, 4:].T)[0, 1]
    got = torch.corrcoef(p.T)[0, 1]
    assert float(want) < -0.6
    if cov == "full":
        torch.testing.assert_close(got, want, atol=0.03, rtol=0)
        torch.testing.assert_close(p.std(0), real[:, 4:].std(0), rtol=0.03, atol=0)
        assert "pose_chol" in g.state_dict()
    else:  # each number apart: their spread kept, their correlation lost
        assert abs(float(got)) < 0.03
        assert "pose_chol" not in g.state_dict()  # bundles written before the key load as they were
    with pytest.raises(ValueError, match="pose_cov: expected"):
        AtlasGenerator([1, 16, 12], [4], 2, code_dim=8, pose_cov="spherical")


def test_a_full_pose_recipe_fits_1024_training_slices_resumes_and_exports(tmp_path):
    model = {"conditional": True, "g_pose_cov": "full"}
    full = resume_matches_full(tmp_path, model)
    g, data = full.model.G, full.data
    n = min(POSE_FIT_IMAGES, data.size("train"))
    assert n > 32  # more than one batch
    x = torch.cat([data.get("train", idx)["x"].float() for idx in eval_batches(n, 256)])
    with torch.no_grad():
        p = g.atlas.pose(x)
    torch.testing.assert_close(g.pose_chol @ g.pose_chol.T, torch.cov(p.T), rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(full.model.G_ema.pose_chol, g.pose_chol)
    gen = exported_generator(full.model, tmp_path)
    assert gen.pose_cov == "full"
    with pytest.raises(RecipeError, match="g_pose_cov"):
        from_mapping(_recipe(_atlas_export(tmp_path / "c"), 2, {"g_pose_cov": "spherical"}))
    plain = _recipe(tmp_path, 2, {"g_pose_cov": "full"})
    plain["model"] = {k: v for k, v in plain["model"].items() if k != "g_atlas"}
    with pytest.raises(RecipeError, match="g_pose_cov: full needs g_atlas"):
        from_mapping(plain)
