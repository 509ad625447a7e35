"""TinyImageNet (tiny-imagenet-200): 200 ImageNet classes at 64x64, as the zip unpacks.

    <root>/wnids.txt                            the 200 class ids (n01443537, ...)
    <root>/words.txt                            id <TAB> names, for all of ImageNet's ids
    <root>/train/<wnid>/images/<wnid>_0.JPEG    500 per class (+ <wnid>_boxes.txt, unused)
    <root>/val/images/val_0.JPEG                10,000 images, labels in:
    <root>/val/val_annotations.txt              file <TAB> wnid <TAB> x0 y0 x1 y1 (a box)
    <root>/test/images/test_0.JPEG              no labels

genlab's splits: train from train/, val carved out of train/ by `val_fraction` (for model choice
and early stopping), test = the labelled val/ (50 per class). test/ carries no labels, so it is
never read, and pointing data.root at it is an error. Class order is the sorted wnids; class
names are each wnid's first name in words.txt (the wnid when that file is absent or two names
clash).
"""

from __future__ import annotations

from pathlib import Path

from genlab.core.errors import DataError
from genlab.data.layouts_base import Scan, images_in, listing, match_files, read_text, refuse_masks, subdirs

ANNOTATIONS = "val_annotations.txt"


def looks_like(root: Path) -> bool:
    if (root / "wnids.txt").is_file() or (root / "val" / ANNOTATIONS).is_file():
        return True
    train = root / "train"
    return train.is_dir() and any((d / "images").is_dir() for d in subdirs(train)[:3])


def refuse_unlabelled(root: Path) -> None:
    """TinyImageNet's test/ (or its images/) as data.root: no labels to train or evaluate with."""
    for d in (root, root.parent):
        if d.name == "test" and (d / "images").is_dir() and looks_like(d.parent):
            raise DataError(
                f"{root} is TinyImageNet's test folder, which has no labels: it cannot be used for "
                f"supervised training or evaluation; set data.root to {d.parent} (its labelled "
                f"val/ becomes genlab's test split)"
            )


def _names(root: Path, wnids: list[str]) -> list[str]:
    words = root / "words.txt"
    if not words.is_file():
        return list(wnids)
    table = {}
    for ln in read_text(words).splitlines():
        wnid, _, names = ln.partition("\t")
        table[wnid.strip()] = names.split(",")[0].strip()
    names = [table.get(w) or w for w in wnids]
    return [n if names.count(n) == 1 else w for n, w in zip(names, wnids)]


def scan_tiny(root: Path, exts: frozenset[str]) -> Scan:
    refuse_unlabelled(root)
    train = root / "train"
    if not train.is_dir():
        raise DataError(f"{root}: no train/ folder (expected TinyImageNet's train/<wnid>/images/)")
    folders = {d.name: d for d in subdirs(train)}
    listed = root / "wnids.txt"
    if listed.is_file():
        wnids = sorted({w.strip() for w in read_text(listed).splitlines() if w.strip()})
        missing = [w for w in wnids if w not in folders]
        if missing:
            raise DataError(f"{listed} names {len(missing)} class(es) with no folder in {train} "
                            f"(a class with no images): {listing(missing)}")
        extra = sorted(set(folders) - set(wnids))
        if extra:
            raise DataError(f"{train} has {len(extra)} folder(s) not in {listed}: {listing(extra)}")
    else:
        wnids = sorted(folders)
    files: dict[str, list[Path]] = {"train": []}
    ys: dict[str, list[int]] = {"train": []}
    for k, w in enumerate(wnids):
        d = folders[w] / "images"
        imgs = images_in(d, exts) if d.is_dir() else []
        if not imgs:
            raise DataError(f"class folder {d} holds no images (a class with no images)")
        refuse_masks(imgs, train)
        files["train"] += imgs
        ys["train"] += [k] * len(imgs)

    val = root / "val"
    notes = ["test: val/ (labelled; test/ has no labels and is not read)"]
    if val.is_dir():
        ann = val / ANNOTATIONS
        if not ann.is_file():
            raise DataError(f"{val} has no {ANNOTATIONS}: the labels of val/images are in it")
        index = {w: k for k, w in enumerate(wnids)}
        rows = []
        for n, ln in enumerate(read_text(ann).splitlines(), start=1):
            if not ln.strip():
                continue
            cells = ln.split("\t")
            if len(cells) < 2:
                raise DataError(f"{ann} line {n}: expected file<TAB>wnid<TAB>box, got {ln[:60]!r}")
            if cells[1].strip() not in index:
                raise DataError(f"{ann} line {n}: class {cells[1].strip()!r} is not one of the "
                                f"{len(wnids)} training classes")
            rows.append((Path(cells[0].strip()).stem, index[cells[1].strip()]))
        stems = [s for s, _ in rows]
        if len(set(stems)) != len(stems):
            dup = sorted({s for s in stems if stems.count(s) > 1})
            raise DataError(f"{ann} labels {listing(dup)} more than once")
        imgs = images_in(val / "images", exts) if (val / "images").is_dir() else []
        refuse_masks(imgs, val)
        path_of = match_files(stems, val / "images", imgs, ann)
        files["test"] = [path_of[s] for s, _ in rows]
        ys["test"] = [k for _, k in rows]
    else:
        notes = []
    return Scan("tinyimagenet", _names(root, wnids), files, ys, notes=notes)
