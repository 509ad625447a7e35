"""PH2 dermoscopy (Hospital Pedro Hispano): 200 lesions, each in its own folder, with a mask.

The release, as unzipped:

    <root>/PH2_dataset.txt                                   the labels (also PH2_dataset.xlsx)
    <root>/PH2 Dataset images/IMD003/IMD003_Dermoscopic_Image/IMD003.bmp     the input
    <root>/PH2 Dataset images/IMD003/IMD003_lesion/IMD003_lesion.bmp         the lesion mask
    <root>/PH2 Dataset images/IMD003/IMD003_roi/...                          colour regions (unused)

PH2_dataset.txt is a '||'-separated table whose header names the columns (Name, Histological
Diagnosis, Clinical Diagnosis, ...); 'Clinical Diagnosis' is 0 common nevus, 1 atypical nevus,
2 melanoma, the classes here in that order. Only the text table is read: the .xlsx would need
openpyxl, which genlab does not depend on. data.root may also be the 'PH2 Dataset images' folder
with the table beside it, and data.labels may name the table. Every lesion folder must have a row
and every row a folder, each with its image and lesion mask.
"""

from __future__ import annotations

import re
from pathlib import Path

from genlab.core.errors import DataError
from genlab.data.layouts_base import Scan, images_in, listing, read_text, refuse_masks, subdirs

IMAGES = "PH2 Dataset images"
TABLE = "PH2_dataset.txt"
CLASSES = ("common_nevus", "atypical_nevus", "melanoma")
_CASE = re.compile(r"IMD\d+")


def case_root(root: Path) -> Path | None:
    """The folder of IMDxxx lesion folders: root/'PH2 Dataset images' or root itself."""
    for d in (root / IMAGES, root):
        if d.is_dir() and any(
            _CASE.fullmatch(c.name) and (c / f"{c.name}_Dermoscopic_Image").is_dir()
            for c in subdirs(d)
        ):
            return d
    return None


def _table(root: Path, cases: Path, given: Path | None) -> Path:
    if given is not None:
        return given
    for d in dict.fromkeys((root, cases.parent)):
        if (d / TABLE).is_file():
            return d / TABLE
    xlsx = [d / "PH2_dataset.xlsx" for d in (root, cases.parent) if (d / "PH2_dataset.xlsx").is_file()]
    if xlsx:
        raise DataError(
            f"PH2: found {xlsx[0]} but no {TABLE} beside it; genlab reads the labels from the "
            f"text table the release ships (reading .xlsx would need openpyxl, which genlab does "
            f"not depend on): put {TABLE} there or set data.labels to it"
        )
    raise DataError(f"PH2: no {TABLE} (the release's label table) in {root}; set data.labels to it")


def read_table(path: Path) -> dict[str, int]:
    """{lesion name: clinical diagnosis 0/1/2} from PH2_dataset.txt; errors name file and line."""
    lines = read_text(path).splitlines()
    header = next((i for i, ln in enumerate(lines) if "||" in ln and "Name" in ln), None)
    if header is None:
        raise DataError(f"{path}: no header row with a Name column (expected PH2's '||' table)")
    cols = [c.strip().lower() for c in lines[header].split("||")]
    if "name" not in cols or "clinical diagnosis" not in cols:
        raise DataError(f"{path} line {header + 1}: expected columns Name and Clinical Diagnosis")
    i_name, i_diag = cols.index("name"), cols.index("clinical diagnosis")
    out: dict[str, int] = {}
    for n, ln in enumerate(lines[header + 1:], start=header + 2):
        cells = [c.strip() for c in ln.split("||")]
        if len(cells) <= max(i_name, i_diag) or not _CASE.fullmatch(cells[i_name]):
            continue  # the legend below the table, blank lines
        name, diag = cells[i_name], cells[i_diag]
        if diag not in ("0", "1", "2"):
            raise DataError(f"{path} line {n}: Clinical Diagnosis of {name} must be 0, 1 or 2, "
                            f"got {diag!r}")
        if name in out:
            raise DataError(f"{path} line {n}: {name} is listed twice")
        out[name] = int(diag)
    if not out:
        raise DataError(f"{path}: no IMDxxx rows under the header")
    return out


def _one(folder: Path, want: str, exts: frozenset[str]) -> Path:
    if not folder.is_dir():
        raise DataError(f"PH2: {folder} is missing")
    files = images_in(folder, exts)
    exact = [p for p in files if p.stem == want]
    if not exact:
        raise DataError(f"PH2: no {want}.bmp (or another image suffix) in {folder}")
    return exact[0]


def scan_ph2(root: Path, exts: frozenset[str], labels: Path | None) -> Scan:
    cases = case_root(root)
    if cases is None:
        raise DataError(f"{root}: no PH2 lesion folders (expected '{IMAGES}/IMDxxx/"
                        f"IMDxxx_Dermoscopic_Image/IMDxxx.bmp')")
    table = _table(root, cases, labels)
    diag = read_table(table)
    folders = {d.name: d for d in subdirs(cases) if _CASE.fullmatch(d.name)}
    missing = sorted(set(diag) - set(folders))
    if missing:
        raise DataError(f"{table} lists {len(missing)} lesion(s) with no folder in {cases}: "
                        f"{listing(missing)}")
    extra = sorted(set(folders) - set(diag))
    if extra:
        raise DataError(f"{cases} has {len(extra)} lesion folder(s) with no row in {table}: "
                        f"{listing(extra)}")
    files, masks, ys = [], [], []
    for name in sorted(diag):
        d = folders[name]
        image_dir = d / f"{name}_Dermoscopic_Image"
        image = _one(image_dir, name, exts)
        refuse_masks(images_in(image_dir, exts), d, f"PH2's masks belong in {name}_lesion/")
        files.append(image)
        masks.append(_one(d / f"{name}_lesion", f"{name}_lesion", exts))
        ys.append(diag[name])
    empty = [CLASSES[k] for k in range(3) if k not in ys]
    if empty:
        raise DataError(f"{table}: no lesion has Clinical Diagnosis {listing(empty)}: a class with "
                        f"no images (0 common nevus, 1 atypical nevus, 2 melanoma)")
    return Scan("ph2", list(CLASSES), {"train": files}, {"train": ys}, {"train": masks},
                notes=[f"labels: {table.name} (Clinical Diagnosis)", "masks: IMDxxx_lesion"])
