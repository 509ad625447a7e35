"""Image data sets on disk, in their own layouts: class folders, ISIC, PH2, TinyImageNet, ...

`data.layout` (default `auto`, recognised from the files) picks how the folder is read; see
genlab/data/layouts.py for the layouts and how each is recognised:

    class_folders  <root>/<class>/*.png, or <root>/{train,val,test}/<class>/*.png
                   (Kvasir, chest X-ray, `genlab data brain`; `kvasir` / `chest_xray` insist on
                   their shape)
    isic2018       ISIC_<id>.jpg + the challenge's ground-truth CSV (2018 task 3, 2017 part 3)
    ph2            PH2's IMDxxx folders + PH2_dataset.txt; lesion masks as batch["mask"]
    tinyimagenet   train/<wnid>/images, val/images + val_annotations.txt (test/ has no labels)

Splits a data set does not give are carved out of its training images by `val_fraction` /
`test_fraction`, stratified by class and seeded. A data set that would load wrong (one class, a
class with no images, labels that do not match the files, masks among the images) is a DataError
naming the file or folder, raised here, before a run folder exists. `binary: <class>` merges the
other classes into `not_<class>` (e.g. melanoma against the rest); `unlabelled: true` accepts a
single class folder for models that ignore labels (autoencoders, GANs).

Every image is converted to grayscale (`channels: 1`) or RGB (`channels: 3`) and resized to
`size` = [H, W] (bilinear, antialiased, aspect ratio not kept); masks are resized the same way
and thresholded at half. With `cache: true` all images are decoded once into a uint8 tensor in
memory when that takes under 2 GiB; otherwise each `get` decodes its files. `get` returns CPU
tensors; the trainer moves them.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image

from genlab.core.errors import DataError
from genlab.core.registry import register_dataset
from genlab.core.schema import param
from genlab.data.base import SPLITS, DataInfo, check_split
from genlab.data.digits import check_fractions
from genlab.data.layouts import scan
from genlab.data.layouts_base import IMAGE_EXTENSIONS, Scan
from genlab.data.sampler import stratified_split

log = logging.getLogger(__name__)

CACHE_LIMIT_BYTES = 2 * 1024**3
Layout = Literal["auto", "class_folders", "isic2018", "ph2", "tinyimagenet", "kvasir", "chest_xray"]


@dataclass
class FolderConfig:
    root: Path = param(
        must_exist=True, help="the data set's folder as downloaded (class folders, train/val/test "
        "folders of them, ISIC, PH2, TinyImageNet)"
    )
    layout: Layout = param(
        "auto", help="how root is read: auto (recognised from its files), class_folders, isic2018, "
        "ph2, tinyimagenet, kvasir, chest_xray"
    )
    labels: Path | None = param(
        None, must_exist=True, help="isic2018 / ph2: the label table (ground-truth CSV, "
        "PH2_dataset.txt) when it is not in root (null: found in root)"
    )
    binary: str | None = param(
        None, help="one class against the rest: this class and not_<class> (null: all classes)"
    )
    unlabelled: bool = param(
        False, help="accept a single class folder (autoencoders, GANs); else one class is an error"
    )
    size: list[int] = param([128, 96], ge=1, help="[height, width] each image is resized to")
    channels: int = param(1, ge=1, le=3, help="1 = convert to grayscale, 3 = convert to RGB")
    val_fraction: float = param(
        0.15, ge=0, lt=1, help="share of each class held out for validation (no val split given)"
    )
    test_fraction: float = param(
        0.15, ge=0, lt=1, help="share of each class held out for testing (no test split given)"
    )
    extensions: list[str] = param(
        list(IMAGE_EXTENSIONS), help="file suffixes read as images (any case)"
    )
    cache: bool = param(True, help="decode all images once into memory (uint8) when under 2 GiB")

    def __post_init__(self):
        self.root = Path(self.root).expanduser()
        if self.labels is not None:
            self.labels = Path(self.labels).expanduser()
        if len(self.size) != 2 or any(int(s) < 1 for s in self.size):
            raise ValueError(
                f"size: expected [height, width] of positive integers, got {self.size!r}"
            )
        self.size = [int(s) for s in self.size]
        if self.channels not in (1, 3):
            raise ValueError(f"channels: expected 1 (grayscale) or 3 (RGB), got {self.channels!r}")
        if not self.extensions:
            raise ValueError("extensions: name at least one file suffix, e.g. [.png]")
        check_fractions(self.val_fraction, self.test_fraction)


# ----------------------------------------------------------------------------- decoding


def _to_mode(im: Image.Image, channels: int) -> Image.Image:
    """Convert to 'L' or 'RGB'; 16-bit and float grayscale are scaled, not clipped."""
    if im.mode.startswith("I") or im.mode == "F":
        a = np.asarray(im, dtype=np.float64)
        top = a.max(initial=0.0)
        if im.mode.startswith("I;16"):
            scale = 65535.0
        elif im.mode == "F":
            scale = max(1.0, top)
        else:  # 32-bit int: 8-bit or 16-bit content stored wide, or something else
            scale = 255.0 if top <= 255 else 65535.0 if top <= 65535 else top
        im = Image.fromarray(np.clip(a / scale * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    return im.convert("L" if channels == 1 else "RGB")


def load_image(path: Path, channels: int, size: tuple[int, int]) -> np.ndarray:
    """Decode one file to a (C, H, W) uint8 array; a DataError names the file if it cannot."""
    h, w = size
    try:
        with Image.open(path) as im:
            im.draft("L" if channels == 1 else "RGB", (w, h))  # JPEG: decode at reduced scale
            im = _to_mode(im, channels)
            if im.size != (w, h):
                im = im.resize((w, h), Image.Resampling.BILINEAR)
            a = np.array(im, dtype=np.uint8)  # a writable copy
    # PIL raises many types on corrupt files (OSError, SyntaxError, struct.error, ...)
    except Exception as e:  # noqa: BLE001
        raise DataError(f"cannot read image {path}: {type(e).__name__}: {e}") from None
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)


def load_mask(path: Path, size: tuple[int, int]) -> np.ndarray:
    """Decode a lesion mask to a (1, H, W) bool array (resized like the images, then > half)."""
    h, w = size
    try:
        with Image.open(path) as im:
            im = _to_mode(im, 1)
            if im.size != (w, h):
                im = im.resize((w, h), Image.Resampling.BILINEAR)
            a = np.array(im, dtype=np.uint8)
    except Exception as e:  # noqa: BLE001
        raise DataError(f"cannot read mask {path}: {type(e).__name__}: {e}") from None
    return (a >= 128)[None]


def _binary(found: Scan, positive: str) -> Scan:
    """`found` with every class but `positive` merged into not_<positive> (class 0)."""
    if positive not in found.class_names:
        raise DataError(f"data.binary: no class {positive!r} in the data set "
                        f"(classes: {', '.join(found.class_names)})")
    k = found.class_names.index(positive)
    ys = {s: [int(y == k) for y in v] for s, v in found.labels.items()}
    return Scan(found.layout, [f"not_{positive}", positive], found.files, ys, found.masks,
                found.notes + [f"binary: {positive} against the rest"])


def _check_classes(found: Scan, root: Path, unlabelled: bool) -> None:
    names = found.class_names
    counts = [found.labels["train"].count(k) for k in range(len(names))]
    empty = [c for c, n in zip(names, counts) if n == 0]
    if empty:
        raise DataError(f"{root}: class(es) {', '.join(empty)} have no training images")
    if len(names) < 2 and not unlabelled:
        raise DataError(
            f"{root} holds one class only ({names[0]}, {found.layout} layout): a classifier "
            f"would learn nothing; for unlabelled images (autoencoder, GAN) set data.unlabelled: true"
        )


# ----------------------------------------------------------------------------- the source


@register_dataset("folder")
class FolderData:
    """Images of a data set on disk: x (B, C, H, W) float32 in [0, 1] on the CPU, y (B,) int64,
    and mask (B, 1, H, W) bool when the data set has lesion masks (PH2)."""

    Config = FolderConfig

    def __init__(self, cfg: FolderConfig, seed: int, device: torch.device | str = "cpu"):
        self.cfg = cfg
        root = Path(cfg.root)
        if not root.is_dir():
            raise DataError(f"data.root {root} does not exist or is not a folder")
        exts = frozenset(
            e.lower() if e.startswith(".") else "." + e.lower() for e in cfg.extensions
        )
        self._shape = (cfg.channels, cfg.size[0], cfg.size[1])

        found = scan(root, cfg.layout, exts, cfg.labels)
        if cfg.binary is not None:
            found = _binary(found, cfg.binary)
        _check_classes(found, root, cfg.unlabelled)
        self.layout, self.class_names = found.layout, found.class_names
        self.notes = list(found.notes)
        self.files, self.labels, self.masks = self._splits(found, seed)
        for s, share in (("val", cfg.val_fraction), ("test", cfg.test_fraction)):
            if s not in found.files:
                self.notes.append(f"{s}: {share:.0%} of each class carved from train (seeded)")
        self.info = DataInfo(
            name="folder",
            input_shape=self._shape,
            num_classes=len(self.class_names),
            class_names=tuple(self.class_names),
            has_mask=self.masks is not None,
        )

        total = sum(len(f) for f in self.files.values())
        per = int(np.prod(self._shape)) + (cfg.size[0] * cfg.size[1] if self.masks else 0)
        nbytes = total * per
        self._cache: dict[str, torch.Tensor] | None = None
        self._mask_cache: dict[str, torch.Tensor] | None = None
        if cfg.cache and nbytes <= CACHE_LIMIT_BYTES:
            log.info(
                "decoding %d images from %s into memory (%.1f MiB)", total, root, nbytes / 2**20
            )
            self._cache = {s: self._decode(self.files[s]) for s in SPLITS}
            if self.masks is not None:
                self._mask_cache = {s: self._decode(self.masks[s], mask=True) for s in SPLITS}
        elif cfg.cache:
            log.info(
                "%d images need %.1f GiB > 2 GiB: decoding on each batch", total, nbytes / 2**30
            )
        log.info("%s", self.describe())

    # -- splits --------------------------------------------------------------------------------

    def _splits(self, found: Scan, seed: int):
        """Per split: files, labels (int64) and masks; splits the data set lacks carved from train."""
        pool_y = torch.tensor(found.labels["train"], dtype=torch.long)
        carve_val = 0.0 if "val" in found.files else self.cfg.val_fraction
        carve_test = 0.0 if "test" in found.files else self.cfg.test_fraction
        parts = stratified_split(pool_y, carve_val, carve_test, seed, tag="folder-split")
        files, labels, masks = {}, {}, {} if found.masks is not None else None
        for s in SPLITS:
            src = s if s in found.files and s != "train" else "train"
            idx = parts[s].tolist() if src == "train" else list(range(len(found.files[s])))
            files[s] = [found.files[src][i] for i in idx]
            labels[s] = torch.tensor([found.labels[src][i] for i in idx], dtype=torch.long)
            if masks is not None:
                masks[s] = [found.masks[src][i] for i in idx]
        return files, labels, masks

    # -- decoding ------------------------------------------------------------------------------

    def _decode(self, paths: list[Path], mask: bool = False) -> torch.Tensor:
        """(N, C, H, W) uint8 for `paths` (masks: (N, 1, H, W) bool), decoded on a few threads
        (PIL releases the GIL)."""
        size = self._shape[1:]
        if mask:
            out = torch.empty((len(paths), 1, *size), dtype=torch.bool)
            read = lambda p: load_mask(p, size)
        else:
            out = torch.empty((len(paths), *self._shape), dtype=torch.uint8)
            read = lambda p: load_image(p, self.cfg.channels, size)
        if not paths:
            return out
        workers = min(8, os.cpu_count() or 1, len(paths))
        if workers <= 1:
            for i, p in enumerate(paths):
                out[i] = torch.from_numpy(read(p))
            return out
        with ThreadPoolExecutor(workers) as pool:
            for i, a in enumerate(pool.map(read, paths)):
                out[i] = torch.from_numpy(a)
        return out

    # -- the DataSource contract ---------------------------------------------------------------

    def size(self, split: str) -> int:
        check_split(split)
        return len(self.files[split])

    def get(self, split: str, indices: torch.Tensor) -> dict[str, torch.Tensor]:
        check_split(split)
        idx = torch.as_tensor(indices, dtype=torch.long).cpu()
        if self._cache is not None:
            x8 = self._cache[split][idx]
        else:
            x8 = self._decode([self.files[split][i] for i in idx.tolist()])
        out = {"x": x8.float().div_(255.0), "y": self.labels[split][idx]}
        if self.masks is not None:
            if self._mask_cache is not None:
                out["mask"] = self._mask_cache[split][idx]
            else:
                out["mask"] = self._decode([self.masks[split][i] for i in idx.tolist()], mask=True)
        return out

    def class_counts(self, split: str) -> torch.Tensor:
        """(num_classes,) int64 images per class in `split` (for class weights)."""
        check_split(split)
        return torch.bincount(self.labels[split], minlength=self.info.num_classes)

    def describe(self) -> str:
        """A small table of images per split and class."""
        lines = [f"{self.cfg.root} ({self.layout} layout), {self.info.input_shape} per image"
                 + (", with lesion masks" if self.masks is not None else "")]
        lines += [f"  {n}" for n in self.notes]
        width = max(len(c) for c in self.class_names)
        lines.append(f"{'class':<{width}}  " + "  ".join(f"{s:>6}" for s in SPLITS))
        counts = {s: self.class_counts(s).tolist() for s in SPLITS}
        for i, c in enumerate(self.class_names):
            lines.append(f"{c:<{width}}  " + "  ".join(f"{counts[s][i]:>6}" for s in SPLITS))
        return "\n".join(lines)
