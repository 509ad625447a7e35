"""The synthetic brain-tumour factory: determinism, syndromes, easy/hard twins, the data source."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from genlab.core.errors import DataError
from genlab.core.registry import DATASETS
from genlab.data import brain_factory
from genlab.data.base import DataSource
from genlab.data.brain import BrainData
from genlab.data.brain_factory import SYNDROMES, BrainFactory
from genlab.data.brain_folder import write_image_folder

H, W = 128, 96


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # The factory issues many short parallel ops; on a CPU shared with other busy processes,
    # OpenMP's spin-waiting makes 2-thread runs of them crawl. One thread keeps this file fast;
    # test_same_bits_on_any_thread_count checks that the thread count changes nothing.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def hard():
    return BrainFactory(mode="hard", seed=0)


@pytest.fixture(scope="module")
def easy():
    return BrainFactory(mode="easy", seed=0)


@pytest.fixture(scope="module")
def val_hard(hard):
    return hard.generate("val", torch.arange(600))


@pytest.fixture(scope="module")
def val_easy(easy):
    return easy.generate("val", torch.arange(600))


def _splitmix_ref(z: int) -> int:
    m = (1 << 64) - 1
    z &= m
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & m
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & m
    return z ^ (z >> 31)


def test_hash_matches_unsigned_splitmix64():
    zs = [0, 1, 12345, (1 << 63) - 1, 1 << 63, (1 << 64) - 1, 0x9E3779B97F4A7C15]
    got = brain_factory._mix64(torch.tensor([brain_factory._i64(z) for z in zs], dtype=torch.long))
    assert [v & ((1 << 64) - 1) for v in got.tolist()] == [_splitmix_ref(z) for z in zs]


def test_shapes_dtypes_range(hard):
    out = hard.generate("train", torch.arange(40))
    assert out["x"].shape == (40, 1, H, W) and out["x"].dtype == torch.float32
    assert out["y"].shape == (40,) and out["y"].dtype == torch.int64
    assert out["mask"].shape == (40, 1, H, W) and out["mask"].dtype == torch.bool
    assert 0.0 <= float(out["x"].min()) and float(out["x"].max()) <= 1.0
    assert int(out["y"].min()) >= 0 and int(out["y"].max()) <= 3
    # the background stays dark, the brain does not
    assert float(out["x"][:, :, :3, :3].mean()) < 0.15
    assert float(out["x"][:, :, 54:74, 30:40].mean()) > 0.4


def test_pure_function_of_index(hard):
    idx = torch.arange(100, 164)
    ref = hard.generate("train", idx)
    perm = torch.randperm(64, generator=torch.Generator().manual_seed(1))
    shuffled = hard.generate("train", idx[perm])
    assert torch.equal(shuffled["x"], ref["x"][perm])
    assert torch.equal(shuffled["mask"], ref["mask"][perm])
    assert torch.equal(shuffled["y"], ref["y"][perm])
    alone = hard.generate("train", idx[37:38])
    assert torch.equal(alone["x"][0], ref["x"][37])
    # another instance with different internal chunking gives the same bits
    other = BrainFactory(mode="hard", seed=0, chunk=16, sub_chunk=5)
    again = other.generate("train", idx)
    for k in ("x", "y", "mask"):
        assert torch.equal(again[k], ref[k])
    assert torch.equal(hard.labels("train", idx), ref["y"])
    other._mask_bytewise = False  # the mask path used on CUDA gives the same mask
    assert torch.equal(other.generate("train", idx)["mask"], ref["mask"])
    # a different seed is a different data set
    assert not torch.equal(BrainFactory(mode="hard", seed=1).generate("train", idx)["x"], ref["x"])


def test_same_bits_on_any_thread_count(hard):
    idx = torch.arange(500, 548)
    one = hard.generate("test", idx)
    torch.set_num_threads(2)
    try:
        two = hard.generate("test", idx)
    finally:
        torch.set_num_threads(1)
    for k in ("x", "y", "mask"):
        assert torch.equal(one[k], two[k])


def test_splits_are_different(hard):
    n = 200
    seen = {}
    for split in ("train", "val", "test"):
        x = hard.generate(split, torch.arange(n))["x"]
        keys = {x[i].numpy().tobytes() for i in range(n)}
        assert len(keys) == n  # no duplicate inside a split either
        seen[split] = keys
    assert not seen["train"] & seen["val"]
    assert not seen["train"] & seen["test"]
    assert not seen["val"] & seen["test"]


def test_labels_roughly_balanced(hard):
    for split in ("train", "val"):
        counts = torch.bincount(hard.labels(split, torch.arange(4000)), minlength=4).float()
        frac = counts / counts.sum()
        assert torch.all((frac > 0.21) & (frac < 0.29)), frac


def _components(mask: np.ndarray) -> tuple[int, int]:
    ndimage = pytest.importorskip("scipy.ndimage")
    _, n = ndimage.label(mask)
    return n, int(mask.sum())


@pytest.mark.parametrize("mode", ["easy", "hard"])
def test_syndromes_differ_as_specified(mode, val_easy, val_hard):
    out = val_easy if mode == "easy" else val_hard
    y, m = out["y"], out["mask"][:, 0].numpy()
    comps, per_comp = {}, {}
    for c, s in enumerate(SYNDROMES):
        sel = torch.nonzero(y == c).squeeze(1).tolist()[:100]
        assert len(sel) >= 90
        stats = np.array([_components(m[i]) for i in sel])  # (n, [components, area])
        if s == "Z":
            assert stats.sum() == 0  # healthy: empty mask
            continue
        assert stats[:, 0].min() >= 1 and stats[:, 1].min() > 20  # every sick image has a lesion
        comps[s] = stats[:, 0].mean()
        per_comp[s] = stats[:, 1].sum() / stats[:, 0].sum()
    assert comps["C"] > 1.8 * comps["B"] and comps["B"] > 1.8 * comps["A"], comps
    assert comps["A"] < 1.5 and comps["C"] > 6, comps
    assert per_comp["A"] > 1.5 * per_comp["B"] > 2.25 * per_comp["C"], per_comp


def test_tumours_inside_the_brain(val_easy):
    # lesions never reach the skull ring or the background: they stay in a central ellipse
    m = val_easy["mask"][:, 0]
    yy, xx = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    rho = ((xx - (W - 1) / 2) / (0.445 * W * 0.88)) ** 2 + (
        (yy - (H - 1) / 2) / (0.445 * H * 0.88)
    ) ** 2
    assert not bool(m[:, rho > 1].any())


def test_hard_twin_differs_only_under_the_tumours(easy, hard, val_easy, val_hard):
    xe, xh, me = val_easy["x"][:300], val_hard["x"][:300], val_easy["mask"][:300]
    assert torch.equal(val_easy["y"], val_hard["y"])
    near = F.max_pool2d(me.float(), kernel_size=5, stride=1, padding=2) > 0  # dilated by 2 px
    assert torch.equal(xe[~near], xh[~near])
    healthy = val_easy["y"][:300] == SYNDROMES.index("Z")
    assert torch.equal(xe[healthy], xh[healthy])
    sick = ~healthy
    assert bool(((xe - xh).abs().flatten(1).amax(1)[sick] > 0.02).all())
    # hard tumours: smaller (mask inside the easy one) and much fainter
    assert not bool((val_hard["mask"][:300] & ~me).any())
    assert float(xe[me].mean()) > float(xh[me].mean()) + 0.05


def test_ghost_blur_forced(easy):
    ghost = BrainFactory(mode="easy", seed=0, ghost_prob=1.0)
    idx = torch.arange(12)
    a, b = easy.generate("train", idx), ghost.generate("train", idx)
    assert torch.equal(a["y"], b["y"]) and torch.equal(a["mask"], b["mask"])
    diff = (a["x"] - b["x"]).abs().flatten(1).amax(1)
    assert bool((diff > 0.05).all())
    assert 0.0 <= float(b["x"].min()) and float(b["x"].max()) <= 1.0
    assert torch.equal(ghost.generate("train", idx[5:7])["x"], b["x"][5:7])  # still pure
    # healthy ghost samples stay identical across modes too
    ghost_h = BrainFactory(mode="hard", seed=0, ghost_prob=1.0).generate("train", idx)
    z = b["y"] == 3
    assert bool(z.any()) and torch.equal(ghost_h["x"][z], b["x"][z])


def test_data_source_contract():
    src = BrainData(BrainData.Config(train_size=50, val_size=20, test_size=30), seed=3)
    assert isinstance(src, DataSource) and DATASETS["brain"] is BrainData
    assert src.info.input_shape == (1, H, W) and src.info.num_classes == 4
    assert src.info.class_names == SYNDROMES and src.info.has_mask
    assert [src.size(s) for s in ("train", "val", "test")] == [50, 20, 30]
    b = src.get("val", torch.tensor([0, 19]))
    assert b["x"].shape == (2, 1, H, W) and b["mask"].shape == (2, 1, H, W)
    for bad in ([-1], [20], [0, 25]):
        with pytest.raises(DataError, match="indices"):
            src.get("val", torch.tensor(bad))
    with pytest.raises(DataError, match="split"):
        src.get("nope", torch.tensor([0]))
    assert int(src.class_counts("train").sum()) == 50
    for f in dataclasses.fields(BrainData.Config):
        assert f.metadata.get("help"), f.name
    lesion = BrainData(BrainData.Config(classes="lesion", val_size=200), seed=3)
    assert lesion.info.num_classes == 2 and lesion.info.class_names == ("healthy", "lesion")
    yl = lesion.get("val", torch.arange(200))
    ys = src.factory.generate("val", torch.arange(200))["y"]
    assert torch.equal(yl["y"], (ys != 3).long())
    assert torch.equal(yl["mask"].flatten(1).any(1), yl["y"].bool())


def test_downscaled_source_is_the_area_average_of_the_full_images():
    from genlab.core.errors import RecipeError
    from genlab.core.recipe import from_mapping

    full = BrainData(BrainData.Config(val_size=12), seed=1)
    half = BrainData(BrainData.Config(val_size=12, size=[64, 48]), seed=1)
    assert half.info.input_shape == (1, 64, 48)
    a, b = full.get("val", torch.arange(12)), half.get("val", torch.arange(12))
    assert b["x"].shape == (12, 1, 64, 48) and b["mask"].shape == (12, 1, 64, 48)
    assert b["mask"].dtype == torch.bool and torch.equal(a["y"], b["y"])
    blocks = a["x"].view(12, 1, 64, 2, 48, 2)
    torch.testing.assert_close(b["x"], blocks.mean((3, 5)))
    assert torch.equal(b["mask"], a["mask"].view(12, 1, 64, 2, 48, 2).any(5).any(3))
    assert bool(b["mask"].any())
    odd = BrainData(BrainData.Config(val_size=2, size=[50, 40]), seed=1).get("val", torch.arange(2))
    assert odd["x"].shape == (2, 1, 50, 40) and 0 <= float(odd["x"].min()) <= float(odd["x"].max()) <= 1
    same = BrainData(BrainData.Config(val_size=2, size=[H, W]), seed=1).get("val", torch.arange(2))
    assert torch.equal(same["x"], a["x"][:2])
    rec = from_mapping({"family": "ae", "data": {"name": "brain"}}, ["data.size=[32,24]"])
    assert rec.data.size == [32, 24]
    for bad in ("[64]", "[0,48]", "[256,192]"):
        with pytest.raises(RecipeError, match="size"):
            from_mapping({"family": "ae", "data": {"name": "brain"}}, [f"data.size={bad}"])


def test_write_image_folder(tmp_path):
    out = tmp_path / "brains"
    assert write_image_folder(out, n=20, mode="hard", seed=0, split="val", batch=8) == out
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert "preview.png" in files and len(files) == 21
    labels = BrainFactory(mode="hard", seed=0).labels("val", torch.arange(20)).tolist()
    expected = sorted(f"{SYNDROMES[c]}/val_{i:06d}.png" for i, c in enumerate(labels))
    assert sorted(f for f in files if f != "preview.png") == expected
    im = Image.open(out / expected[0])
    assert im.mode == "L" and im.size == (W, H)
    ref = BrainFactory(mode="hard", seed=0).generate(
        "val", torch.tensor([int(expected[0][-10:-4])])
    )
    assert np.abs(np.asarray(im) / 255.0 - ref["x"][0, 0].numpy()).max() <= 0.5 / 255 + 1e-6
    # a previous output may be rewritten (smaller n: the old files go)
    write_image_folder(out, n=5, mode="easy", seed=0, split="val", preview=False)
    assert len(list(out.rglob("val_*.png"))) == 5
    # a user's folder is never touched
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="not empty"):
        write_image_folder(mine, n=4)
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
