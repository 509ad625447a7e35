"""ISIC skin-lesion challenges: a flat folder of ISIC_<id>.jpg images and a ground-truth CSV.

Two ground-truth formats are read, as the challenges publish them:

    ISIC 2018 task 3   image,MEL,NV,BCC,AKIEC,BKL,DF,VASC        one-hot rows of 1.0 / 0.0
                       (ISIC 2019: image,MEL,NV,BCC,AK,BKL,DF,VASC,SCC,UNK the same way)
    ISIC 2017 part 3   image_id,melanoma,seborrheic_keratosis    0.0 / 1.0 flags; a row with
                       neither flag is a nevus (the challenge's third diagnosis)

Class names are the CSV's column names in its order (plus 'nevus' first for the 2017 flags, or
'other' for any other one- or two-flag table). The data set's root may hold the challenge's
folders as unzipped (ISIC2018_Task3_Training_Input/, ISIC2018_Task3_Training_GroundTruth/*.csv,
the same for Validation and Test) or be the image folder with the CSV in it; a CSV whose name says
Training / Validation / Test gives that split. Each CSV's images are looked for in the root and
the folders up to two levels below it, and must match the CSV exactly: a listed image with no
file, or an image file with no row, is an error naming them. ISIC 2017's *_superpixels.png files,
which the release puts beside the images, are skipped; any other mask-like file is an error.
"""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path

from genlab.core.errors import DataError
from genlab.data.layouts_base import (
    IMAGE_EXTENSIONS,
    Scan,
    images_in,
    listing,
    match_files,
    read_text,
    refuse_masks,
    subdirs,
)

log = logging.getLogger(__name__)

_ID_COLUMNS = ("image", "image_id")
_FLAGS = {"0": 0, "1": 1, "0.0": 0, "1.0": 1}
_NONE_CLASS_2017 = "nevus"  # ISIC 2017: neither melanoma nor seborrheic keratosis
_EMPTY_BY_DESIGN = {"UNK"}  # ISIC 2019's 'unknown' column, never set in its training CSV
_SPLIT_WORDS = (("train", "train"), ("valid", "val"), ("test", "test"), ("val", "val"))
HINT = "ISIC: image,MEL,NV,... one-hot or image_id,melanoma,seborrheic_keratosis"


def _head(path: Path) -> list[list[str]]:
    try:
        with open(path, newline="", encoding="utf-8-sig", errors="replace") as f:
            return [row for _, row in zip(range(2), csv.reader(f))]
    except OSError:
        return []


def header(path: Path) -> list[str]:
    """The first row of a CSV ([] when unreadable or empty)."""
    rows = _head(path)
    return rows[0] if rows else []


def is_table(path: Path) -> bool:
    """Whether `path` looks like an ISIC ground-truth CSV (a header image[_id],<class>... and a
    first row of 0/1 flags); metadata CSVs (ages, sexes, lesion ids) are not."""
    rows = _head(path)
    return (
        len(rows) == 2
        and len(rows[0]) >= 2
        and rows[0][0].strip().lower() in _ID_COLUMNS
        and len(rows[1]) == len(rows[0])
        and all(v.strip() in _FLAGS for v in rows[1][1:])
    )


def _folders(root: Path, depth: int = 2) -> list[Path]:
    out, level = [root], [root]
    for _ in range(depth):
        level = [d for p in level for d in subdirs(p)]
        out += level
    return out


def find_tables(root: Path) -> list[Path]:
    """The ground-truth CSVs in `root` and up to two folder levels below it."""
    return [
        p for d in _folders(root) for p in sorted(d.glob("*.csv"))
        if not p.name.startswith(".") and is_table(p)
    ]


def _split_of(path: Path, only: bool) -> str:
    name = path.name.lower()
    for word, split in _SPLIT_WORDS:
        if word in name:
            return split
    if only:
        return "train"
    raise DataError(
        f"{path}: cannot tell which split this ground-truth CSV is; its name should say "
        f"Training, Validation or Test as the challenge's do"
    )


def _read(path: Path) -> tuple[list[str], list[tuple[str, list[int], int]]]:
    """(class columns, [(image id, flags, line number)]) of one CSV; errors name file and line."""
    rows = list(csv.reader(io.StringIO(read_text(path))))
    header = [h.strip() for h in rows[0]]
    out = []
    for n, row in enumerate(rows[1:], start=2):
        if not row or not "".join(row).strip():
            continue
        if len(row) != len(header):
            raise DataError(f"{path} line {n}: {len(row)} fields, the header has {len(header)}")
        flags = []
        for col, v in zip(header[1:], row[1:]):
            if v.strip() not in _FLAGS:
                raise DataError(f"{path} line {n}: column {col} must be 0 or 1, got {v.strip()!r}")
            flags.append(_FLAGS[v.strip()])
        if sum(flags) > 1:
            raise DataError(
                f"{path} line {n}: {row[0]} has {sum(flags)} classes; genlab's classifiers take one "
                f"label per image"
            )
        image = row[0].strip()
        if Path(image).suffix.lower() in IMAGE_EXTENSIONS:  # some copies list 'ISIC_0024306.jpg'
            image = Path(image).stem
        out.append((image, flags, n))
    if not out:
        raise DataError(f"{path} has a header but no rows")
    return header[1:], out


def _image_folder(ids: list[str], root: Path, exts: frozenset[str], table: Path) -> Path:
    """The folder (root or up to two levels below) holding the most images named by `ids`."""
    wanted, best, hits = set(ids), None, 0
    for d in _folders(root):
        n = sum(p.stem in wanted for p in images_in(d, exts))
        if n > hits:
            best, hits = d, n
    if best is None:
        raise DataError(
            f"no image named like the rows of {table} (e.g. {ids[0]}.jpg) in {root} or the "
            f"folders up to two levels below it"
        )
    return best


def scan_isic(root: Path, exts: frozenset[str], labels: Path | None) -> Scan:
    tables = [labels] if labels is not None else find_tables(root)
    if not tables:
        raise DataError(
            f"{root}: no ISIC ground-truth CSV (header image,MEL,NV,... or "
            f"image_id,melanoma,seborrheic_keratosis) in it or two levels below; set data.labels"
        )
    if labels is not None and not is_table(labels):
        raise DataError(f"data.labels {labels} is not an ISIC ground-truth CSV ({HINT})")
    by_split: dict[str, Path] = {}
    for t in tables:
        s = _split_of(t, only=len(tables) == 1)
        if s in by_split:
            raise DataError(f"two ground-truth CSVs for the {s} split: {by_split[s]}, {t}")
        by_split[s] = t

    parsed = {s: _read(t) for s, t in by_split.items()}
    columns = parsed["train" if "train" in parsed else next(iter(parsed))][0]
    for s, (cols, _) in parsed.items():
        if cols != columns:
            raise DataError(f"{by_split[s]} has columns {cols}, the other CSV {columns}")
    if "train" not in parsed:
        raise DataError(f"no Training ground-truth CSV among {listing(by_split.values())}")
    offset = 0
    if any(sum(f) == 0 for _, rows in parsed.values() for _, f, _ in rows):
        if len(columns) > 2:  # a one-hot table must set one class in every row
            s, n = next((s, n) for s, (_, rows) in parsed.items() for _, f, n in rows if sum(f) == 0)
            raise DataError(f"{by_split[s]} line {n}: a one-hot row with no class set")
        two017 = [c.lower() for c in columns] == ["melanoma", "seborrheic_keratosis"]
        columns, offset = [_NONE_CLASS_2017 if two017 else "other", *columns], 1

    def label(flags: list[int]) -> int:
        return 0 if sum(flags) == 0 else flags.index(1) + offset

    used = {columns[label(f)] for _, f, _ in parsed["train"][1]}
    empty = [c for c in columns if c not in used]
    if set(empty) - _EMPTY_BY_DESIGN:
        raise DataError(
            f"{by_split['train']}: class(es) {listing([c for c in empty if c not in _EMPTY_BY_DESIGN])} "
            f"mark no training image"
        )
    names = [c for c in columns if c in used]

    seen: dict[str, Path] = {}
    folders: dict[Path, list[str]] = {}
    for s, (_, rows) in parsed.items():
        for i, f, n in rows:
            if i in seen:
                raise DataError(f"{by_split[s]} line {n}: {i} is also labelled in {seen[i]}")
            if columns[label(f)] not in used:
                raise DataError(f"{by_split[s]} line {n}: {i} is labelled {columns[label(f)]}, "
                                f"a class with no training image")
            seen[i] = by_split[s]
        ids = [i for i, _, _ in rows]
        folders.setdefault(_image_folder(ids, root, exts, by_split[s]), []).append(s)

    files: dict[str, list[Path]] = {}
    ys: dict[str, list[int]] = {}
    for folder, splits in folders.items():
        found = images_in(folder, exts)
        skipped = [p for p in found if p.stem.endswith("_superpixels")]
        if skipped:
            log.info("%s: skipping %d *_superpixels files (ISIC 2017)", folder, len(skipped))
            found = [p for p in found if not p.stem.endswith("_superpixels")]
        refuse_masks(found, folder, "ISIC's input folders hold only the lesion images")
        table = " + ".join(str(by_split[s]) for s in splits)
        path_of = match_files([i for s in splits for i, _, _ in parsed[s][1]], folder, found, table)
        for s in splits:
            files[s] = [path_of[i] for i, _, _ in parsed[s][1]]
            ys[s] = [names.index(columns[label(f)]) for _, f, _ in parsed[s][1]]
    notes = [f"{s}: {by_split[s].name}" for s in ("train", "val", "test") if s in parsed]
    return Scan("isic2018", names, files, ys, notes=notes)
