"""Data sources, corruptions and the index sampler: small, offline, fast."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from genlab.core import schema
from genlab.core.errors import DataError, RecipeError
from genlab.core.registry import DATASETS
from genlab.data.base import SPLITS, DataSource
from genlab.data.corrupt import Corruption, corrupt
from genlab.data.digits import DigitsData
from genlab.data.folders import FolderData
from genlab.data.sampler import IndexSampler, eval_batches, stratified_split
from genlab.data.torchvision_sets import FashionMNISTData, MNISTData


def _all(src, split):
    return src.get(split, torch.arange(src.size(split)))


# ----------------------------------------------------------------------------- digits


@pytest.fixture(scope="module")
def digits():
    return DigitsData(DigitsData.Config(), seed=0, device="cpu")


def test_digits_contract(digits):
    assert isinstance(digits, DataSource)
    assert DATASETS["digits"] is DigitsData
    assert digits.info.input_shape == (1, 8, 8) and digits.info.num_classes == 10
    b = digits.get("train", torch.tensor([0, 5, 7]))
    assert b["x"].shape == (3, 1, 8, 8) and b["x"].dtype == torch.float32
    assert b["y"].shape == (3,) and b["y"].dtype == torch.int64
    x = torch.cat([_all(digits, s)["x"] for s in SPLITS])
    assert x.min() == 0.0 and x.max() == 1.0


def test_digits_splits_disjoint_cover_stratified(digits):
    parts = [digits.split_indices[s] for s in SPLITS]
    everything = torch.cat(parts)
    assert len(everything) == 1797 and len(torch.unique(everything)) == 1797
    assert digits.size("val") == digits.size("test") == 269
    assert digits.class_counts("val").min() >= 26  # every class keeps its share
    assert digits.class_counts("train").sum() == digits.size("train")


def test_digits_deterministic_by_seed(digits):
    again = DigitsData(DigitsData.Config(), seed=0)
    other = DigitsData(DigitsData.Config(), seed=1)
    assert torch.equal(again.split_indices["val"], digits.split_indices["val"])
    assert torch.equal(_all(again, "test")["x"], _all(digits, "test")["x"])
    assert not torch.equal(other.split_indices["val"], digits.split_indices["val"])


def test_config_validation(tmp_path):
    with pytest.raises(ValueError, match="val_fraction"):
        DigitsData.Config(val_fraction=0.6, test_fraction=0.5)
    with pytest.raises(RecipeError, match=r"data\.test_fraction"):
        schema.build(DigitsData.Config, {"test_fraction": -0.1}, "data")
    with pytest.raises(RecipeError, match=r"data\.root"):
        schema.build(FolderData.Config, {"root": str(tmp_path / "nowhere")}, "data")
    with pytest.raises(RecipeError, match="channels"):
        schema.build(FolderData.Config, {"root": str(tmp_path), "channels": 2}, "data")
    cfg = schema.build(FolderData.Config, {"root": str(tmp_path), "size": [32, 24]}, "data")
    assert cfg.root == tmp_path and cfg.size == [32, 24] and cfg.channels == 1


def test_stratified_split_small_classes():
    y = torch.tensor([0] * 10 + [1] * 3 + [2])
    parts = stratified_split(y, 0.2, 0.2, seed=3)
    assert sorted(torch.cat(list(parts.values())).tolist()) == list(range(14))
    assert 13 in parts["train"].tolist()  # a single example stays in train


# ----------------------------------------------------------------------------- folders

COLORS = {"akiec": (200, 30, 30), "bkl": (30, 200, 30), "mel": (30, 30, 200)}


def _png(path: Path, rgb, size=(14, 10), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, rgb).save(path)


def _class_tree(root: Path, per_class=6):
    for c, rgb in COLORS.items():
        for i in range(per_class):
            _png(root / c / f"{c}_{i}.png", rgb)
    _png(root / "preview.png", (0, 0, 0))  # a file at top level: ignored
    _png(root / ".thumbs" / "x.png", (0, 0, 0))  # a hidden folder: ignored
    (root / "mel" / "notes.txt").write_text("not an image")
    return root


def _cfg(root, **kw):
    kw.setdefault("size", [8, 6])
    return FolderData.Config(root=root, **kw)


def test_folder_class_layout_gray(tmp_path):
    src = FolderData(_cfg(_class_tree(tmp_path)), seed=0)
    assert DATASETS["folder"] is FolderData and isinstance(src, DataSource)
    assert src.class_names == ["akiec", "bkl", "mel"] and src.layout == "classes"
    assert src.info.input_shape == (1, 8, 6)
    assert sum(src.size(s) for s in SPLITS) == 18
    assert src.size("val") == src.size("test") == 3  # round(6 * 0.15) = 1 per class
    files = [f for s in SPLITS for f in src.files[s]]
    assert len(set(files)) == 18
    b = _all(src, "train")
    assert b["x"].shape == (12, 1, 8, 6) and b["x"].dtype == torch.float32
    assert b["x"].device.type == "cpu" and 0 <= b["x"].min() and b["x"].max() <= 1
    gray = {c: 0.299 * r + 0.587 * g + 0.114 * bl for c, (r, g, bl) in COLORS.items()}
    for x, y in zip(b["x"], b["y"]):  # each image's gray level tells its class
        assert abs(x.mean().item() * 255 - gray[src.class_names[y]]) < 1.5
    assert src.class_counts("train").tolist() == [4, 4, 4]
    same = FolderData(_cfg(tmp_path), seed=0)
    assert same.files == src.files


def test_folder_rgb_and_uncached_agree(tmp_path):
    _class_tree(tmp_path)
    cached = FolderData(_cfg(tmp_path, channels=3), seed=1)
    lazy = FolderData(_cfg(tmp_path, channels=3, cache=False), seed=1)
    assert lazy._cache is None and cached._cache is not None
    idx = torch.tensor([3, 0, 7])
    a, b = cached.get("train", idx), lazy.get("train", idx)
    assert a["x"].shape == (3, 3, 8, 6)
    assert torch.equal(a["x"], b["x"]) and torch.equal(a["y"], b["y"])
    red = _all(cached, "train")
    akiec = red["x"][red["y"] == 0]
    assert torch.allclose(akiec[:, 0], torch.tensor(200 / 255)) and akiec[:, 1].max() < 0.2


def test_folder_split_layout(tmp_path):
    counts = {"train": 4, "valid": 2, "test": 3}  # 'valid' names the val split
    for split, n in counts.items():
        for c in ("NORMAL", "PNEUMONIA"):
            for i in range(n):
                _png(
                    tmp_path / split / c / f"{i}.jpeg",
                    (90, 90, 90) if c == "NORMAL" else (180,) * 3,
                )
    src = FolderData(_cfg(tmp_path, val_fraction=0.5), seed=0)
    assert src.layout == "splits" and src.class_names == ["NORMAL", "PNEUMONIA"]
    assert [src.size(s) for s in SPLITS] == [8, 4, 6]  # as given; val_fraction unused
    assert src.class_counts("val").tolist() == [2, 2]
    assert all("valid" in str(f) for f in src.files["val"])


def test_folder_split_layout_missing_class(tmp_path):
    for c in ("NORMAL", "PNEUMONIA"):
        _png(tmp_path / "train" / c / "a.png", (10, 10, 10))
    _png(tmp_path / "val" / "NORMAL" / "a.png", (10, 10, 10))
    with pytest.raises(DataError, match="PNEUMONIA"):
        FolderData(_cfg(tmp_path), seed=0)


def test_folder_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no class folders"):
        FolderData(_cfg(empty), seed=0)
    with pytest.raises(DataError, match="does not exist"):
        FolderData(_cfg(tmp_path / "nowhere"), seed=0)
    noimg = tmp_path / "noimg"
    (noimg / "cls").mkdir(parents=True)
    with pytest.raises(DataError, match="holds no images"):
        FolderData(_cfg(noimg), seed=0)
    bad = _class_tree(tmp_path / "bad")
    (bad / "bkl" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    with pytest.raises(DataError, match="broken.png"):
        FolderData(_cfg(bad), seed=0)


def test_folder_16bit_png_scaled(tmp_path):
    a = np.full((10, 14), 65535, dtype=np.uint16)
    for c in ("x", "y"):
        (tmp_path / c).mkdir()
        Image.fromarray(a).save(tmp_path / c / "hi.png")
    src = FolderData(_cfg(tmp_path, val_fraction=0.0, test_fraction=0.0), seed=0)
    assert torch.all(_all(src, "train")["x"] == 1.0)


# ----------------------------------------------------------------------------- torchvision


def _write_idx(raw: Path, n_train=50, n_test=20, h=28, w=28, gz=False):
    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, h, w), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        blobs = {
            f"{prefix}-images-idx3-ubyte": struct.pack(">iiii", 0x803, n, h, w) + images.tobytes(),
            f"{prefix}-labels-idx1-ubyte": struct.pack(">ii", 0x801, n) + labels.tobytes(),
        }
        for name, blob in blobs.items():
            if gz:
                with gzip.open(raw / (name + ".gz"), "wb") as f:
                    f.write(blob)
            else:
                (raw / name).write_bytes(blob)


def test_mnist_from_fake_idx(tmp_path):
    _write_idx(tmp_path / "MNIST" / "raw")
    src = MNISTData(MNISTData.Config(root=tmp_path, val_fraction=0.2), seed=0)
    assert DATASETS["mnist"] is MNISTData and isinstance(src, DataSource)
    assert [src.size(s) for s in SPLITS] == [40, 10, 20]
    assert src.info.input_shape == (1, 28, 28) and src.info.name == "mnist"
    b = src.get("test", torch.arange(5))
    assert b["x"].shape == (5, 1, 28, 28) and 0 <= b["x"].min() and b["x"].max() <= 1
    assert b["y"].tolist() == [0, 1, 2, 3, 4]
    assert src.class_counts("val").tolist() == [1] * 10


def test_fashion_mnist_from_gz(tmp_path):
    _write_idx(tmp_path / "FashionMNIST" / "raw", gz=True)
    src = FashionMNISTData(FashionMNISTData.Config(root=tmp_path), seed=0)
    assert src.size("test") == 20 and src.info.class_names[-1] == "Ankle boot"


def test_mnist_missing_files_error(tmp_path):
    with pytest.raises(DataError) as e:
        MNISTData(MNISTData.Config(root=tmp_path), seed=0)
    msg = str(e.value)
    assert str(tmp_path / "MNIST" / "raw") in msg and "download: true" in msg
    assert "train-images-idx3-ubyte" in msg


def test_mnist_download_offline_error(tmp_path, monkeypatch):
    import torchvision.datasets as tvd

    def no_network(self):
        raise RuntimeError(
            "Error downloading train-images-idx3-ubyte.gz:\nTried mirror, got:\n"
            "<urlopen error [Errno -3] Temporary failure in name resolution>"
        )

    monkeypatch.setattr(tvd.MNIST, "download", no_network)
    with pytest.raises(DataError, match="could not download MNIST"):
        MNISTData(MNISTData.Config(root=tmp_path, download=True), seed=0)


# ----------------------------------------------------------------------------- corruptions


def test_gaussian_noise_std():
    x = torch.full((200_000,), 0.5)
    out = corrupt(x, "gaussian", 0.1, torch.Generator().manual_seed(0))
    assert abs((out - x).std().item() - 0.1) < 0.002
    assert out.min() >= 0 and out.max() <= 1
    assert torch.all(x == 0.5)  # input untouched


def test_masking_fraction():
    out = corrupt(torch.ones(200_000), "masking", 0.3, torch.Generator().manual_seed(0))
    assert abs((out == 0).float().mean().item() - 0.3) < 0.005


def test_salt_pepper_fraction():
    out = corrupt(torch.full((200_000,), 0.5), "salt_pepper", 0.2, torch.Generator().manual_seed(0))
    salt, pepper = (out == 1).float().mean().item(), (out == 0).float().mean().item()
    assert abs(salt + pepper - 0.2) < 0.005 and abs(salt - pepper) < 0.005


def test_corruption_generator_determinism():
    x = torch.rand(4, 1, 8, 8)
    c = Corruption("masking", 0.5)
    a = c(x, torch.Generator().manual_seed(7))
    b = c(x, torch.Generator().manual_seed(7))
    d = c(x, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, d)
    assert torch.equal(corrupt(x, "none", 0.5), x)
    with pytest.raises(ValueError, match="level"):
        Corruption("salt_pepper", 1.5)
    with pytest.raises(ValueError, match="kind"):
        Corruption("speckle", 0.1)
    with pytest.raises(RecipeError, match=r"model\.corruption: level"):
        schema.build(Corruption, {"kind": "masking", "level": 1.5}, "model.corruption")


# ----------------------------------------------------------------------------- sampler


def _epoch(s: IndexSampler) -> torch.Tensor:
    return torch.cat([s.next_batch() for _ in range(s.batches_per_epoch)])


def test_sampler_epoch_is_a_permutation():
    s = IndexSampler(100, 10, seed=0, drop_last=False)
    e0, e1 = _epoch(s), _epoch(s)
    assert torch.equal(e0.sort().values, torch.arange(100))
    assert torch.equal(e1.sort().values, torch.arange(100)) and not torch.equal(e0, e1)
    s = IndexSampler(105, 10, seed=0)  # drop_last: 10 full batches, no repeats
    e = _epoch(s)
    assert s.batches_per_epoch == 10 and len(e) == 100 and len(e.unique()) == 100
    assert torch.equal(_epoch(IndexSampler(20, 5, seed=0, shuffle=False)), torch.arange(20))


def test_sampler_state_round_trip():
    a = IndexSampler(50, 8, seed=3)  # 6 batches per epoch
    for _ in range(10):
        a.next_batch()
    state = a.state_dict()
    assert state == {"epoch": 1, "batch": 4}
    expected = [a.next_batch() for _ in range(9)]  # crosses into epoch 2
    b = IndexSampler(50, 8, seed=3)
    b.load_state_dict(state)
    assert all(torch.equal(x, y) for x, y in zip(expected, [b.next_batch() for _ in range(9)]))


@pytest.mark.parametrize("size,drop_last", [(100, True), (103, False)])
def test_sampler_ranks_disjoint_and_cover(size, drop_last):
    ranks = [
        IndexSampler(size, 10, seed=0, rank=r, world_size=2, drop_last=drop_last) for r in (0, 1)
    ]
    assert ranks[0].batches_per_epoch == ranks[1].batches_per_epoch
    e0, e1 = (_epoch(r) for r in ranks)
    assert len(e0) == len(e1)
    if drop_last:
        assert not set(e0.tolist()) & set(e1.tolist())
    assert set(e0.tolist()) | set(e1.tolist()) == set(range(size))


def test_sampler_too_small_split():
    with pytest.raises(DataError, match="fewer than one global batch"):
        IndexSampler(5, 8, seed=0)


def test_eval_batches():
    got = list(eval_batches(25, 10))
    assert [len(b) for b in got] == [10, 10, 5] and torch.equal(torch.cat(got), torch.arange(25))
    assert torch.equal(torch.cat(list(eval_batches(25, 10, limit=12))), torch.arange(12))
    r0, r1 = (torch.cat(list(eval_batches(25, 4, rank=r, world_size=2))) for r in (0, 1))
    assert torch.equal(torch.cat([r0, r1]), torch.arange(25))
