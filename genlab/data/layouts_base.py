"""What every native layout of an image data set returns, and the file scanning they share.

A layout reads a data set as it comes from its download (class folders, ISIC's CSV, PH2's table,
TinyImageNet's annotation file) into a `Scan`: the splits the data set itself gives, one class
index per image and, when the data set has them, one lesion mask per image. Splits it does not
give are carved out later by the folder source. Every mismatch between labels and files is a
`DataError` naming the file or folder, raised while scanning, before anything is trained.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from genlab.core.errors import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
SPLIT_ALIASES = {
    "train": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
}
IGNORED_DIRS = {"__MACOSX"}

# Names that segmentation masks and annotation maps carry in the releases genlab knows
# (ISIC *_segmentation.png / *_superpixels.png, PH2 IMDxxx_lesion/ and IMDxxx_roi/ with
# IMDxxx_R1_Label4.bmp, Kvasir-SEG masks/): such files among the inputs would be trained on.
_MASK_STEM = re.compile(
    r".*(_(mask|masks|segmentation|seg|lesion|superpixels?|gt|groundtruth|roi)|_r\d+_label\d+)$",
    re.IGNORECASE,
)
_MASK_DIR = re.compile(
    r"^(masks?|segmentations?|ground_?truth|annotations?)$"
    r"|.*_(lesion|roi|masks?|groundtruth|segmentation)$",
    re.IGNORECASE,
)


@dataclass
class Scan:
    """A data set as found on disk: the splits it gives, one label (and maybe a mask) per image."""

    layout: str
    class_names: list[str]
    files: dict[str, list[Path]]  # 'train' always; 'val' / 'test' when the data set gives them
    labels: dict[str, list[int]]  # index into class_names, one per file
    masks: dict[str, list[Path]] | None = None  # a lesion mask per file (same order), or None
    notes: list[str] = field(default_factory=list)  # how the data set's splits became genlab's


def subdirs(path: Path) -> list[Path]:
    """The visible sub-folders of `path`, sorted (hidden ones and __MACOSX left out)."""
    return sorted(
        d
        for d in path.iterdir()
        if d.is_dir() and not d.name.startswith(".") and d.name not in IGNORED_DIRS
    )


def images_under(folder: Path, exts: frozenset[str]) -> list[Path]:
    """All image files below `folder` (recursively, hidden entries skipped), in sorted order."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d not in IGNORED_DIRS)
        for f in sorted(filenames):
            if not f.startswith(".") and os.path.splitext(f)[1].lower() in exts:
                found.append(Path(dirpath) / f)
    return found


def images_in(folder: Path, exts: frozenset[str]) -> list[Path]:
    """The image files directly in `folder` (not below it), sorted."""
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in exts
    )


def mask_folder(name: str) -> bool:
    """Whether a folder named `name` is, by its name, a folder of masks."""
    return bool(_MASK_DIR.fullmatch(name))


def mask_like(path: Path, below: Path) -> bool:
    """Whether `path` is named like a segmentation mask (its name, or a folder between `below`
    and it)."""
    if _MASK_STEM.fullmatch(path.stem):
        return True
    try:
        parts = path.parent.relative_to(below).parts
    except ValueError:
        parts = ()
    return any(mask_folder(p) for p in parts)


def refuse_masks(files: list[Path], below: Path, hint: str = "") -> None:
    """A DataError naming the first file of `files` that is named like a mask."""
    bad = [p for p in files if mask_like(p, below)]
    if bad:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise DataError(
            f"{bad[0]} looks like a segmentation mask among the input images{more}: masks would "
            f"be trained on as images{'; ' + hint if hint else ''}"
        )


def listing(items, n: int = 3) -> str:
    """'a, b, c and 4 more' for error messages that name a few of many things."""
    items = [str(i) for i in items]
    head = ", ".join(items[:n])
    return head + (f" and {len(items) - n} more" if len(items) > n else "")


def read_text(path: Path) -> str:
    """A small text file (a label table); a DataError names it when it cannot be read."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from None
    for enc in ("utf-8-sig", "latin-1"):  # old releases were written on Windows
        try:
            return raw.decode(enc)
        except UnicodeDecodeError:
            continue
    raise DataError(f"cannot decode {path} as text")  # latin-1 decodes anything: unreachable


def match_files(
    ids: list[str], folder: Path, files: list[Path], table: Path
) -> dict[str, Path]:
    """{id: file} for the ids of a label table and the image files of its folder; an error names
    the ids with no file, the files with no label, and ids that two files share."""
    by_stem: dict[str, Path] = {}
    for p in files:
        if p.stem in by_stem:
            raise DataError(f"{folder} has two images for {p.stem}: {by_stem[p.stem].name}, {p.name}")
        by_stem[p.stem] = p
    missing = [i for i in ids if i not in by_stem]
    if missing:
        raise DataError(
            f"{table} labels {len(missing)} image(s) not found in {folder}: {listing(missing)}"
        )
    wanted = set(ids)
    extra = [p.name for p in files if p.stem not in wanted]
    if extra:
        raise DataError(
            f"{folder} has {len(extra)} image(s) with no label in {table}: {listing(extra)}"
        )
    return {i: by_stem[i] for i in ids}
