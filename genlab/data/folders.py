"""Image folders with one sub-folder per class: ISIC, PH2, chest X-ray, Kvasir, `genlab data brain`.

Two layouts are read:

    <root>/<class>/**/*.png                       class layout: val/test carved out by seed
    <root>/{train,val,test}/<class>/**/*.png      split layout: the splits are used as given
                                                  ('valid' / 'validation' also name val)

Class names are the sorted sub-folder names (of `train/` in the split layout). Hidden files and
folders, `__MACOSX`, and files lying directly in `<root>` (a preview.png, a README) are ignored.
In the split layout a missing val/ or test/ folder is carved out of train/ by `val_fraction` /
`test_fraction`, stratified by class and seeded, like the class layout.

Every image is converted to grayscale (`channels: 1`) or RGB (`channels: 3`) and resized to
`size` = [H, W] (bilinear, antialiased, aspect ratio not kept). With `cache: true` all images are
decoded once into a uint8 tensor in memory when that takes under 2 GiB; otherwise each `get`
decodes its files. `get` returns CPU tensors; the trainer moves them.
"""

from __future__ import annotations

import logging
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from genlab.core.errors import DataError
from genlab.core.registry import register_dataset
from genlab.core.schema import param
from genlab.data.base import SPLITS, DataInfo, check_split
from genlab.data.digits import check_fractions
from genlab.data.sampler import stratified_split

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
SPLIT_ALIASES = {
    "train": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
}
CACHE_LIMIT_BYTES = 2 * 1024**3
_IGNORED_DIRS = {"__MACOSX"}
_LAYOUT_HINT = (
    "expected <root>/<class>/*.png, or <root>/train/<class>/*.png with val/ and test/ beside it"
)


@dataclass
class FolderConfig:
    root: Path = param(
        must_exist=True, help="folder of class sub-folders, or of train/val/test folders of them"
    )
    size: list[int] = param([128, 96], ge=1, help="[height, width] each image is resized to")
    channels: int = param(1, ge=1, le=3, help="1 = convert to grayscale, 3 = convert to RGB")
    val_fraction: float = param(
        0.15, ge=0, lt=1, help="share of each class held out for validation (no val/ folder)"
    )
    test_fraction: float = param(
        0.15, ge=0, lt=1, help="share of each class held out for testing (no test/ folder)"
    )
    extensions: list[str] = param(
        list(IMAGE_EXTENSIONS), help="file suffixes read as images (any case)"
    )
    cache: bool = param(True, help="decode all images once into memory (uint8) when under 2 GiB")

    def __post_init__(self):
        self.root = Path(self.root).expanduser()
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


# ----------------------------------------------------------------------------- scanning


def _subdirs(path: Path) -> list[Path]:
    return sorted(
        d
        for d in path.iterdir()
        if d.is_dir() and not d.name.startswith(".") and d.name not in _IGNORED_DIRS
    )


def _images_under(folder: Path, exts: frozenset[str]) -> list[Path]:
    """All image files below `folder` (recursively, hidden entries skipped), in sorted order."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(
            d for d in dirnames if not d.startswith(".") and d not in _IGNORED_DIRS
        )
        for f in sorted(filenames):
            if not f.startswith(".") and os.path.splitext(f)[1].lower() in exts:
                found.append(Path(dirpath) / f)
    return found


def _scan_classes(folder: Path, exts: frozenset[str]) -> dict[str, list[Path]]:
    """{class name: files} for the class folders of `folder`; errors for empty ones."""
    classes = {}
    for d in _subdirs(folder):
        nested = [s.name for s in _subdirs(d) if s.name.lower() in SPLIT_ALIASES]
        if nested:
            raise DataError(
                f"{d} holds split folders ({', '.join(nested)}): it looks like the data set "
                f"root is "
                f"one level down; set data.root to {d}"
            )
        files = _images_under(d, exts)
        if not files:
            raise DataError(
                f"class folder {d} holds no images with suffix {', '.join(sorted(exts))}"
            )
        classes[d.name] = files
    return classes


def _no_classes_error(root: Path, exts: frozenset[str]) -> DataError:
    loose = [p for p in root.iterdir() if p.is_file() and p.suffix.lower() in exts]
    if loose:
        return DataError(
            f"{root} has {len(loose)} image(s) but no class folders; {_LAYOUT_HINT} "
            f"(one folder is enough for unlabelled images)"
        )
    return DataError(f"{root} has no class folders; {_LAYOUT_HINT}")


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


# ----------------------------------------------------------------------------- the source


@register_dataset("folder")
class FolderData:
    """Images from class folders: x (B, C, H, W) float32 in [0, 1] on the CPU, y (B,) int64."""

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

        files, labels, self.layout = self._scan(root, exts, seed)
        self.files: dict[str, list[Path]] = files
        self.labels: dict[str, torch.Tensor] = labels
        self.info = DataInfo(
            name="folder",
            input_shape=self._shape,
            num_classes=len(self.class_names),
            class_names=tuple(self.class_names),
        )

        total = sum(len(f) for f in files.values())
        nbytes = total * int(np.prod(self._shape))
        self._cache: dict[str, torch.Tensor] | None = None
        if cfg.cache and nbytes <= CACHE_LIMIT_BYTES:
            log.info(
                "decoding %d images from %s into memory (%.1f MiB)", total, root, nbytes / 2**20
            )
            self._cache = {s: self._decode(files[s]) for s in SPLITS}
        elif cfg.cache:
            log.info(
                "%d images need %.1f GiB > 2 GiB: decoding on each batch", total, nbytes / 2**30
            )

    # -- layout --------------------------------------------------------------------------------

    def _scan(self, root: Path, exts: frozenset[str], seed: int):
        top = _subdirs(root)
        split_dirs: dict[str, Path] = {}
        for d in top:
            alias = SPLIT_ALIASES.get(d.name.lower())
            if alias is None:
                continue
            if alias in split_dirs:
                raise DataError(
                    f"{root} has two folders for the {alias} split: "
                    f"{split_dirs[alias].name}, {d.name}"
                )
            split_dirs[alias] = d

        if "train" in split_dirs:
            layout = "splits"
            others = [d.name for d in top if d.name.lower() not in SPLIT_ALIASES]
            if others:
                warnings.warn(
                    f"{root}: using the train/val/test folders; ignoring {', '.join(others)}"
                )
            train = _scan_classes(split_dirs["train"], exts)
            if not train:
                raise DataError(f"{split_dirs['train']} has no class folders; {_LAYOUT_HINT}")
            self.class_names = sorted(train)
            given = {"train": train}
            for s in ("val", "test"):
                if s not in split_dirs:
                    continue
                cls = _scan_classes(split_dirs[s], exts)
                extra = sorted(set(cls) - set(train))
                if extra:
                    raise DataError(
                        f"{split_dirs[s]} has class folder(s) {extra} that train/ lacks"
                    )
                missing = sorted(set(train) - set(cls))
                if missing:
                    raise DataError(
                        f"{split_dirs[s]} lacks class folder(s) {missing} "
                        f"present in {split_dirs['train']}"
                    )
                given[s] = cls
        else:
            layout = "classes"
            classes = _scan_classes(root, exts) if top else {}
            if not classes:
                raise _no_classes_error(root, exts)
            self.class_names = sorted(classes)
            given = {"train": classes}

        index = {c: i for i, c in enumerate(self.class_names)}

        def flat(cls: dict[str, list[Path]]) -> tuple[list[Path], torch.Tensor]:
            paths = [p for c in self.class_names for p in cls[c]]
            ys = torch.tensor(
                [index[c] for c in self.class_names for _ in cls[c]], dtype=torch.long
            )
            return paths, ys

        files, labels = {}, {}
        pool_paths, pool_y = flat(given["train"])
        carve_val = 0.0 if "val" in given else self.cfg.val_fraction
        carve_test = 0.0 if "test" in given else self.cfg.test_fraction
        parts = stratified_split(pool_y, carve_val, carve_test, seed, tag="folder-split")
        for s in SPLITS:
            if s in given and s != "train":
                files[s], labels[s] = flat(given[s])
            else:
                files[s] = [pool_paths[i] for i in parts[s].tolist()]
                labels[s] = pool_y[parts[s]]
        return files, labels, layout

    # -- decoding ------------------------------------------------------------------------------

    def _decode(self, paths: list[Path]) -> torch.Tensor:
        """(N, C, H, W) uint8 for `paths`, decoded on a few threads (PIL releases the GIL)."""
        out = torch.empty((len(paths), *self._shape), dtype=torch.uint8)
        if not paths:
            return out
        size = self._shape[1:]
        workers = min(8, os.cpu_count() or 1, len(paths))
        if workers <= 1:
            arrays = (load_image(p, self.cfg.channels, size) for p in paths)
            for i, a in enumerate(arrays):
                out[i] = torch.from_numpy(a)
            return out
        with ThreadPoolExecutor(workers) as pool:
            for i, a in enumerate(
                pool.map(lambda p: load_image(p, self.cfg.channels, size), paths)
            ):
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
        return {"x": x8.float().div_(255.0), "y": self.labels[split][idx]}

    def class_counts(self, split: str) -> torch.Tensor:
        """(num_classes,) int64 images per class in `split` (for class weights)."""
        check_split(split)
        return torch.bincount(self.labels[split], minlength=self.info.num_classes)

    def describe(self) -> str:
        """A small table of images per split and class."""
        lines = [f"{self.cfg.root} ({self.layout} layout), {self.info.input_shape} per image"]
        width = max(len(c) for c in self.class_names)
        lines.append(f"{'class':<{width}}  " + "  ".join(f"{s:>6}" for s in SPLITS))
        counts = {s: self.class_counts(s).tolist() for s in SPLITS}
        for i, c in enumerate(self.class_names):
            lines.append(f"{c:<{width}}  " + "  ".join(f"{counts[s][i]:>6}" for s in SPLITS))
        return "\n".join(lines)
