"""Which layout a data set folder has, and the class-folder layouts (Kvasir, chest X-ray, yours).

`data.layout` names one, or `auto` (the default) recognises it from the files, in this order:

    ph2            'PH2 Dataset images/IMDxxx/IMDxxx_Dermoscopic_Image/' (+ PH2_dataset.txt)
    tinyimagenet   wnids.txt, val/val_annotations.txt or train/<wnid>/images/
    isic2018       a ground-truth CSV (image,MEL,NV,... or image_id,melanoma,...) up to two
                   folder levels down, beside a flat folder of ISIC_<id>.jpg
    class_folders  anything else:
                   <root>/<class>/**/*.png                    val/test carved out by seed
                   <root>/{train,val,test}/<class>/**/*.png   the splits as given ('valid' /
                                                              'validation' also name val)

`kvasir` (Kvasir v1/v2: one folder per finding, no splits) and `chest_xray` (Kermany's
train/ val/ test/ of NORMAL and PNEUMONIA) are class_folders that must have that shape. In class
folders, hidden entries, __MACOSX and files lying in <root> itself (a preview.png, a README) are
ignored; a class folder with no images, a folder of masks or a mask-named file among the images
is an error.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from genlab.core.errors import DataError
from genlab.data import layouts_isic, layouts_ph2, layouts_tiny
from genlab.data.layouts_base import (
    SPLIT_ALIASES,
    Scan,
    images_under,
    mask_folder,
    refuse_masks,
    subdirs,
)

LAYOUTS = ("auto", "class_folders", "isic2018", "ph2", "tinyimagenet", "kvasir", "chest_xray")
_HINT = "expected <root>/<class>/*.png, or <root>/train/<class>/*.png with val/ and test/ beside it"


def detect(root: Path, labels: Path | None = None) -> str:
    """The layout of the data set folder `root` (and label table `labels`), from their files."""
    layouts_tiny.refuse_unlabelled(root)
    if labels is not None and layouts_isic.is_table(labels):
        return "isic2018"
    if layouts_ph2.case_root(root) is not None:
        return "ph2"
    if layouts_tiny.looks_like(root):
        return "tinyimagenet"
    if layouts_isic.find_tables(root):
        return "isic2018"
    return "class_folders"


def _unread_label_table(root: Path) -> None:
    """A CSV in root that labels images by id, which class folders would silently ignore
    (HAM10000's metadata beside its image_part folders, say)."""
    for p in sorted(root.glob("*.csv")):
        head = layouts_isic.header(p)
        if {h.strip().lower() for h in head} & {"image", "image_id", "image_name", "filename"}:
            raise DataError(
                f"{p} labels images by id, but it is not a ground-truth table genlab reads "
                f"({layouts_isic.HINT}); its sub-folders would be taken as the classes. If they "
                f"are, set data.layout: class_folders"
            )


def scan(root: Path, layout: str, exts: frozenset[str], labels: Path | None = None) -> Scan:
    """Read the data set folder `root` in `layout` ('auto': detected)."""
    if layout == "auto":
        layout = detect(root, labels)
        if layout == "class_folders":
            _unread_label_table(root)
    if labels is not None and layout not in ("isic2018", "ph2"):
        raise DataError(f"data.labels is read by the isic2018 and ph2 layouts, not {layout}")
    if layout == "isic2018":
        return layouts_isic.scan_isic(root, exts, labels)
    if layout == "ph2":
        return layouts_ph2.scan_ph2(root, exts, labels)
    if layout == "tinyimagenet":
        return layouts_tiny.scan_tiny(root, exts)
    found = scan_class_folders(root, exts)
    if layout == "kvasir" and found.layout != "classes":
        raise DataError(f"{root}: kvasir expects one folder per class (kvasir-dataset-v2/<finding>/"
                        f"*.jpg), found train/val/test folders")
    if layout == "chest_xray" and not {"train", "test"} <= set(found.files):
        raise DataError(f"{root}: chest_xray expects train/ and test/ folders of NORMAL and "
                        f"PNEUMONIA (the Kaggle chest_xray folder)")
    return found


def _scan_classes(folder: Path, exts: frozenset[str]) -> dict[str, list[Path]]:
    """{class name: files} for the class folders of `folder`; errors for empty ones and masks."""
    classes = {}
    for d in subdirs(folder):
        nested = [s.name for s in subdirs(d) if s.name.lower() in SPLIT_ALIASES]
        if nested:
            raise DataError(
                f"{d} holds split folders ({', '.join(nested)}): it looks like the data set root "
                f"is one level down; set data.root to {d}"
            )
        files = images_under(d, exts)
        if mask_folder(d.name):
            raise DataError(f"{d} looks like a folder of segmentation masks, not a class: masks "
                            f"would be trained on as images (a segmentation release; genlab "
                            f"classifies, so point data.root at a classification release)")
        if not files:
            raise DataError(f"class folder {d} holds no images with suffix {', '.join(sorted(exts))}")
        refuse_masks(files, folder)
        classes[d.name] = files
    return classes


def _no_classes_error(root: Path, exts: frozenset[str]) -> DataError:
    loose = [p for p in root.iterdir() if p.is_file() and p.suffix.lower() in exts]
    if loose:
        return DataError(
            f"{root} has {len(loose)} image(s) but no class folders and no label table "
            f"(ISIC CSV, PH2_dataset.txt); {_HINT}"
        )
    return DataError(f"{root} has no class folders; {_HINT}")


def scan_class_folders(root: Path, exts: frozenset[str]) -> Scan:
    top = subdirs(root)
    split_dirs: dict[str, Path] = {}
    for d in top:
        alias = SPLIT_ALIASES.get(d.name.lower())
        if alias is None:
            continue
        if alias in split_dirs:
            raise DataError(
                f"{root} has two folders for the {alias} split: {split_dirs[alias].name}, {d.name}"
            )
        split_dirs[alias] = d

    if "train" not in split_dirs:
        classes = _scan_classes(root, exts) if top else {}
        if not classes:
            raise _no_classes_error(root, exts)
        names = sorted(classes)
        return Scan("classes", names, {"train": [p for c in names for p in classes[c]]},
                    {"train": [k for k, c in enumerate(names) for _ in classes[c]]})

    others = [d.name for d in top if d.name.lower() not in SPLIT_ALIASES]
    if others:
        warnings.warn(f"{root}: using the train/val/test folders; ignoring {', '.join(others)}")
    train = _scan_classes(split_dirs["train"], exts)
    if not train:
        raise DataError(f"{split_dirs['train']} has no class folders; {_HINT}")
    names = sorted(train)
    given = {"train": train}
    for s in ("val", "test"):
        if s not in split_dirs:
            continue
        if "images" in {d.name for d in subdirs(split_dirs[s])} and "images" not in train:
            raise DataError(
                f"{split_dirs[s] / 'images'} is not a class folder: it looks like TinyImageNet's "
                f"{split_dirs[s].name}/ (images/ + an annotation file); use data.layout: tinyimagenet"
            )
        cls = _scan_classes(split_dirs[s], exts)
        extra = sorted(set(cls) - set(train))
        if extra:
            raise DataError(f"{split_dirs[s]} has class folder(s) {extra} that train/ lacks")
        missing = sorted(set(train) - set(cls))
        if missing:
            raise DataError(
                f"{split_dirs[s]} lacks class folder(s) {missing} present in {split_dirs['train']}"
            )
        given[s] = cls
    files = {s: [p for c in names for p in cls[c]] for s, cls in given.items()}
    ys = {s: [k for k, c in enumerate(names) for _ in cls[c]] for s, cls in given.items()}
    return Scan("splits", names, files, ys)
