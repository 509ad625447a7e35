"""Real data sets in their own layouts, on small fake copies made here with the release's exact
file names and label formats: each loads with the right classes and counts, trains through
`genlab train recipes/<data set>.yaml`, and every malformed copy is one error line (exit 2)
naming the problem, with no run folder left behind."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from genlab.cli import main
from genlab.core.errors import DataError
from genlab.data.base import SPLITS
from genlab.data.folders import FolderData
from genlab.engine import tracking

ROOT = Path(__file__).resolve().parents[1]
ISIC18 = ["MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"]
KVASIR = ["dyed-lifted-polyps", "dyed-resection-margins", "esophagitis", "normal-cecum",
          "normal-pylorus", "normal-z-line", "polyps", "ulcerative-colitis"]
WNIDS = {"n01443537": "goldfish, Carassius auratus", "n01629819": "European fire salamander, "
         "Salamandra salamandra", "n01641577": "bullfrog, Rana catesbeiana"}


def _img(path: Path, k: int, mode: str = "RGB", fmt: str | None = None) -> Path:
    """An 8x8 image whose grey level tells its class k."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, (8, 8), (20 + 30 * k,) * (3 if mode == "RGB" else 1)).save(path, fmt)
    return path


# ----------------------------------------------------------------------------- fake releases
def isic2018(root: Path, per_class=(3, 1, 1)) -> Path:
    """Task 3's Training / Validation / Test Input folders and GroundTruth CSVs, as unzipped."""
    n = 24306
    for split, count in zip(("Training", "Validation", "Test"), per_class):
        inp = root / f"ISIC2018_Task3_{split}_Input"
        gt = root / f"ISIC2018_Task3_{split}_GroundTruth"
        rows = ["image," + ",".join(ISIC18)]
        for k in range(len(ISIC18)):
            for _ in range(count):
                _img(inp / f"ISIC_{n:07d}.jpg", k)
                rows.append(f"ISIC_{n:07d}," + ",".join("1.0" if j == k else "0.0" for j in range(7)))
                n += 1
        gt.mkdir(parents=True)
        for d in (inp, gt):
            (d / "ATTRIBUTION.txt").write_text("attribution\n")
            (d / "LICENSE.txt").write_text("CC-BY-NC\n")
        (gt / f"ISIC2018_Task3_{split}_GroundTruth.csv").write_text("\n".join(rows) + "\n")
    (root / "ISIC2018_Task3_Training_LesionGroupings.csv").write_text(
        "image,lesion_id,diagnosis_confirm_type\nISIC_0024306,HAM_0000118,histopathology\n")
    return root


def isic2017(root: Path) -> Path:
    """Part 3: ISIC-2017_Training_Data/ (with *_superpixels.png) + the melanoma / SK flags CSV."""
    data = root / "ISIC-2017_Training_Data"
    rows = ["image_id,melanoma,seborrheic_keratosis"]
    meta = ["image_id,age_approximate,sex"]
    for i, flags in enumerate([(0, 0)] * 6 + [(1, 0)] * 4 + [(0, 1)] * 4):
        name = f"ISIC_{i:07d}"
        _img(data / f"{name}.jpg", flags[0] + 2 * flags[1])
        _img(data / f"{name}_superpixels.png", 0)
        rows.append(f"{name},{flags[0]:.1f},{flags[1]:.1f}")
        meta.append(f"{name},55,female")
    (root / "ISIC-2017_Training_Part3_GroundTruth.csv").write_text("\n".join(rows) + "\n")
    (data / "ISIC-2017_Training_Data_metadata.csv").write_text("\n".join(meta) + "\n")
    return root


PH2_CASES = [(f"IMD{n:03d}", d) for n, d in zip(
    (2, 3, 4, 6, 8, 9, 10, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 24, 25, 27),
    [0] * 7 + [1] * 7 + [2] * 6)]


def ph2(root: Path, cases=PH2_CASES, txt: bool = True) -> Path:
    """'PH2 Dataset images/IMDxxx/...' and PH2_dataset.txt ('||' table + legend), .xlsx beside."""
    images = root / "PH2 Dataset images"
    lines = [("||   Name || Histological Diagnosis || Clinical Diagnosis || Asymmetry | Pigment "
              "Network | Dots/Globules | Streaks | Regression Areas | Blue-Whitish Veil ||"
              "           Colors ||")]
    for name, d in cases:
        case = images / name
        _img(case / f"{name}_Dermoscopic_Image" / f"{name}.bmp", d, fmt="BMP")
        mask = Image.new("L", (8, 8), 0)
        mask.paste(255, (2, 2, 6, 6))
        (case / f"{name}_lesion").mkdir(parents=True)
        mask.save(case / f"{name}_lesion" / f"{name}_lesion.bmp")
        _img(case / f"{name}_roi" / f"{name}_R1_Label4.bmp", 1, mode="L", fmt="BMP")
        hist = "Melanoma" if d == 2 else ""
        lines.append(f"|| {name} || {hist:>22} || {d:>18} ||         0 |               T |"
                     f"             A |       A |                A |                 A ||"
                     f"                4 ||")
    lines += ["", "Legends:", "Clinical Diagnosis:", "0 - Common Nevus;", "1 - Atypical Nevus;",
              "2 - Melanoma."]
    if txt:
        (root / "PH2_dataset.txt").write_text("\r\n".join(lines) + "\r\n", encoding="latin-1")
    (root / "PH2_dataset.xlsx").write_bytes(b"PK\x03\x04 not really a workbook")
    return root


def tinyimagenet(root: Path, train=6, val=2) -> Path:
    """tiny-imagenet-200/: wnids.txt, words.txt, train/<wnid>/images, val/ + annotations, test/."""
    (root / "wnids.txt").parent.mkdir(parents=True, exist_ok=True)
    (root / "wnids.txt").write_text("".join(f"{w}\n" for w in reversed(WNIDS)))
    (root / "words.txt").write_text("n00001740\tentity\n" + "".join(
        f"{w}\t{n}\n" for w, n in WNIDS.items()))
    ann = []
    for k, w in enumerate(sorted(WNIDS)):
        for i in range(train):
            _img(root / "train" / w / "images" / f"{w}_{i}.JPEG", k, fmt="JPEG")
        (root / "train" / w / f"{w}_boxes.txt").write_text(f"{w}_0.JPEG\t0\t0\t63\t63\n")
        for _ in range(val):
            name = f"val_{len(ann)}.JPEG"
            _img(root / "val" / "images" / name, k, fmt="JPEG")
            ann.append(f"{name}\t{w}\t0\t32\t44\t62")
    (root / "val" / "val_annotations.txt").write_text("\n".join(ann) + "\n")
    for i in range(3):
        _img(root / "test" / "images" / f"test_{i}.JPEG", 0, fmt="JPEG")
    return root


def kvasir(root: Path, per_class=7) -> Path:
    for k, c in enumerate(KVASIR):
        for i in range(per_class):
            _img(root / c / f"0a{k}{i:02d}f9e1-6f3c-4b1e-9d0a-3c8f2b7e{i:04d}.jpg", k)
    return root


def chest_xray(root: Path, counts=(4, 2, 2)) -> Path:
    for split, n in zip(("train", "val", "test"), counts):
        for i in range(n):
            _img(root / split / "NORMAL" / f"IM-{115 + i:04d}-0001.jpeg", 0, mode="L")
            _img(root / split / "PNEUMONIA" / f"person{i + 1}_bacteria_{i + 1}.jpeg", 3, mode="L")
    _img(root / "__MACOSX" / "train" / "NORMAL" / "._IM-0115-0001.jpeg", 0)
    return root


def _data(root: Path, **kw) -> FolderData:
    kw.setdefault("size", [8, 8])
    return FolderData(FolderData.Config(root=root, **kw), seed=0)


def _counts(src: FolderData) -> dict[str, list[int]]:
    return {s: src.class_counts(s).tolist() for s in SPLITS}


# ----------------------------------------------------------------------------- right classes
def test_isic2018_classes_from_the_csv_header_and_official_splits(tmp_path):
    src = _data(isic2018(tmp_path), channels=3)
    assert src.layout == "isic2018" and src.class_names == ISIC18
    assert _counts(src) == {"train": [3] * 7, "val": [1] * 7, "test": [1] * 7}
    b = src.get("train", torch.arange(src.size("train")))
    for x, y in zip(b["x"], b["y"]):  # each image's grey level tells the class its row names
        assert abs(x.mean().item() * 255 - (20 + 30 * y.item())) < 3
    assert "mask" not in b and not src.info.has_mask


def test_isic2017_flags_give_nevus_melanoma_sk_and_binary_melanoma(tmp_path):
    src = _data(isic2017(tmp_path), val_fraction=0.25, test_fraction=0.25)
    assert src.layout == "isic2018"
    assert src.class_names == ["nevus", "melanoma", "seborrheic_keratosis"]
    assert [sum(c) for c in zip(*_counts(src).values())] == [6, 4, 4]
    assert all("superpixels" not in f.name for s in SPLITS for f in src.files[s])
    two = _data(tmp_path, binary="melanoma", val_fraction=0.25, test_fraction=0.25)
    assert two.class_names == ["not_melanoma", "melanoma"]
    assert [sum(c) for c in zip(*_counts(two).values())] == [10, 4]


def test_ph2_labels_from_its_table_and_lesion_masks(tmp_path):
    src = _data(ph2(tmp_path / "PH2Dataset"), channels=3, val_fraction=0.2, test_fraction=0.2)
    assert src.layout == "ph2" and src.class_names == ["common_nevus", "atypical_nevus", "melanoma"]
    assert [sum(c) for c in zip(*_counts(src).values())] == [7, 7, 6]
    assert src.info.has_mask
    b = src.get("val", torch.arange(src.size("val")))
    assert b["mask"].shape == (src.size("val"), 1, 8, 8) and b["mask"].dtype == torch.bool
    assert b["mask"][:, 0, 2:6, 2:6].all() and b["mask"].sum() == 16 * src.size("val")
    assert all(f.parent.name.endswith("_Dermoscopic_Image") for s in SPLITS for f in src.files[s])
    lazy = _data(tmp_path / "PH2Dataset" / "PH2 Dataset images", cache=False, val_fraction=0.2,
                 test_fraction=0.2)  # the images folder itself, table one level up
    assert torch.equal(lazy.get("val", torch.arange(2))["mask"], b["mask"][:2])


def test_tinyimagenet_val_annotations_and_names_from_words(tmp_path):
    src = _data(tinyimagenet(tmp_path / "tiny-imagenet-200"), val_fraction=1 / 3)
    assert src.layout == "tinyimagenet"
    assert src.class_names == ["goldfish", "European fire salamander", "bullfrog"]
    assert _counts(src) == {"train": [4] * 3, "val": [2] * 3, "test": [2] * 3}
    assert all(f.parent == tmp_path / "tiny-imagenet-200" / "val" / "images" for f in src.files["test"])
    assert not any("test_" in f.name for s in SPLITS for f in src.files[s])
    b = src.get("test", torch.arange(6))
    assert [round((x.mean().item() * 255 - 20) / 30) for x in b["x"]] == b["y"].tolist()


def test_kvasir_and_chest_xray_stay_class_folders(tmp_path):
    kv = _data(kvasir(tmp_path / "kvasir-dataset-v2"), layout="kvasir")
    assert kv.class_names == KVASIR and _counts(kv)["val"] == [1] * 8
    assert _data(tmp_path / "kvasir-dataset-v2").layout == "classes"
    cx = _data(chest_xray(tmp_path / "chest_xray"), layout="chest_xray")
    assert cx.class_names == ["NORMAL", "PNEUMONIA"]
    assert _counts(cx) == {"train": [4, 4], "val": [2, 2], "test": [2, 2]}
    with pytest.raises(DataError, match="chest_xray expects train/ and test/"):
        _data(tmp_path / "kvasir-dataset-v2", layout="chest_xray")


def test_labels_binary_and_unlabelled_keys(tmp_path):
    isic = isic2018(tmp_path / "isic")
    csv = isic / "ISIC2018_Task3_Training_GroundTruth" / "ISIC2018_Task3_Training_GroundTruth.csv"
    src = _data(isic / "ISIC2018_Task3_Training_Input", labels=csv, val_fraction=0.34, test_fraction=0.34)
    assert src.class_names == ISIC18 and _counts(src)["test"] == [1] * 7
    with pytest.raises(DataError, match=r"data.binary: no class 'melanoma' .*classes: MEL, NV"):
        _data(isic, binary="melanoma")
    mel = _data(isic, binary="MEL")
    assert mel.class_names == ["not_MEL", "MEL"] and _counts(mel)["train"] == [18, 3]
    _one_class(tmp_path / "one")
    assert _data(tmp_path / "one", unlabelled=True).info.num_classes == 1


def test_a_label_csv_beside_class_folders_is_not_ignored(tmp_path):
    """HAM10000 as Kaggle ships it: two image_part folders that are not classes, and a CSV."""
    for part, k in (("HAM10000_images_part_1", 0), ("HAM10000_images_part_2", 1)):
        for i in range(3):
            _img(tmp_path / part / f"ISIC_{24306 + 3 * k + i:07d}.jpg", k)
    (tmp_path / "HAM10000_metadata.csv").write_text(
        "lesion_id,image_id,dx,dx_type,age,sex,localization\n"
        "HAM_0000118,ISIC_0024306,bkl,histo,80.0,male,scalp\n")
    with pytest.raises(DataError, match="HAM10000_metadata.csv labels images by id"):
        _data(tmp_path)
    assert _data(tmp_path, layout="class_folders").info.num_classes == 2  # the user said so


# ----------------------------------------------------------------------------- the recipes run
FAST = ["--set", "train.steps=2", "--set", "train.batch_size=4", "--set", "train.eval_batches=1",
        "--set", "train.warmup_steps=0", "--set", "data.size=[16,16]", "--set", "log.every=1",
        "--set", "log.eval_every=0", "--set", "log.render_every=0", "--set", "log.checkpoint_every=0",
        "--set", "log.render_examples=4", "--set", "log.probe_train=0", "--set", "log.histograms=false",
        "--device", "cpu", "--quiet"]
RECIPES = {
    "isic2018": (isic2018, []),
    "ph2": (ph2, ["--set", "data.val_fraction=0.2", "--set", "data.test_fraction=0.2"]),
    "tinyimagenet": (tinyimagenet, ["--set", "model.channels=[8,16]"]),
    "kvasir": (kvasir, []),
    "chest_xray": (chest_xray, ["--set", "model.channels=[8,16]"]),
}


@pytest.mark.parametrize("name", RECIPES)
def test_each_recipe_trains_on_its_fake_release(name, tmp_path, monkeypatch):
    make, extra = RECIPES[name]
    monkeypatch.chdir(ROOT)
    # the loss-curve figure takes seconds of matplotlib and says nothing about the data set
    monkeypatch.setattr(tracking, "plot_curves", lambda history, path: None)
    data = make(tmp_path / "data")
    out = tmp_path / "runs"
    args = ["train", f"recipes/{name}.yaml", "--set", f"data.root={data}", "--out", str(out)]
    assert main(args + FAST + extra) == 0
    assert len(list(out.glob(f"{name}/*/metrics.json"))) == 1


# ----------------------------------------------------------------------------- nothing loads wrong
def _isic_missing(r):
    (isic2018(r) / "ISIC2018_Task3_Training_Input" / "ISIC_0024306.jpg").unlink()


def _isic_extra(r):
    _img(isic2018(r) / "ISIC2018_Task3_Training_Input" / "ISIC_0099999.jpg", 0)


def _isic_mask(r):
    _img(isic2018(r) / "ISIC2018_Task3_Training_Input" / "ISIC_0024306_segmentation.png", 0)


def _isic_no_melanoma(r):
    """No training row (and no image) of MEL, the CSV's first class."""
    csv = isic2018(r) / "ISIC2018_Task3_Training_GroundTruth" / "ISIC2018_Task3_Training_GroundTruth.csv"
    lines = csv.read_text().splitlines()
    mel = [ln.split(",")[0] for ln in lines[1:] if ln.split(",")[1] == "1.0"]
    csv.write_text("\n".join(ln for ln in lines if ln.split(",")[0] not in mel) + "\n")
    for name in mel:
        (r / "ISIC2018_Task3_Training_Input" / f"{name}.jpg").unlink()


def _one_class(r):
    for i in range(4):
        _img(r / "NORMAL" / f"IM-{i:04d}-0001.jpeg", 0)


def _empty_class(r):
    kvasir(r)
    for p in (r / "polyps").iterdir():
        p.unlink()


def _kvasir_seg(r):
    for i in range(3):
        _img(r / "images" / f"cju0qkwl35piu0993l0dewei2{i}.jpg", 1)
        _img(r / "masks" / f"cju0qkwl35piu0993l0dewei2{i}.jpg", 0)


def _mask_in_class(r):
    kvasir(r)
    _img(r / "polyps" / "polyp_0001_mask.png", 0)


def _ph2_xlsx_only(r):
    ph2(r, txt=False)


def _ph2_missing_case(r):
    ph2(r, cases=PH2_CASES + [("IMD437", 2)])
    import shutil
    shutil.rmtree(r / "PH2 Dataset images" / "IMD437")


def _ph2_mask_among_images(r):
    ph2(r)
    _img(r / "PH2 Dataset images" / "IMD002" / "IMD002_Dermoscopic_Image" / "IMD002_lesion.bmp", 0)


def _tiny_missing_class(r):
    tinyimagenet(r)
    (r / "wnids.txt").write_text((r / "wnids.txt").read_text() + "n01644900\n")


def _tiny_val_extra(r):
    _img(tinyimagenet(r) / "val" / "images" / "val_99.JPEG", 0, fmt="JPEG")


def _tiny_test_root(r):
    return tinyimagenet(r) / "test"


BAD = {  # name: (make(root) -> data.root or None for root, extra args, words of the error line)
    "isic-missing-file": (_isic_missing, [], ["labels 1 image(s) not found", "ISIC_0024306"]),
    "isic-extra-file": (_isic_extra, [], ["ISIC_0099999.jpg", "no label"]),
    "isic-mask": (_isic_mask, [], ["ISIC_0024306_segmentation.png", "segmentation mask"]),
    "isic-empty-class": (_isic_no_melanoma, ["--set", "data.layout=isic2018"],
                         ["MEL mark no training image"]),
    "one-class": (_one_class, ["--set", "data.layout=class_folders"], ["one class only", "NORMAL"]),
    "empty-class": (_empty_class, [], ["polyps holds no images"]),
    "kvasir-seg": (_kvasir_seg, [], ["masks looks like a folder of segmentation masks"]),
    "mask-in-class": (_mask_in_class, [], ["polyp_0001_mask.png"]),
    "ph2-xlsx-only": (_ph2_xlsx_only, [], ["PH2_dataset.xlsx", "no PH2_dataset.txt", "openpyxl"]),
    "ph2-missing-case": (_ph2_missing_case, [], ["IMD437", "no folder"]),
    "ph2-mask-among-images": (_ph2_mask_among_images, [], ["IMD002_lesion.bmp", "mask"]),
    "tiny-missing-class": (_tiny_missing_class, [], ["n01644900", "no images"]),
    "tiny-val-extra": (_tiny_val_extra, [], ["val_99.JPEG", "no label", "val_annotations.txt"]),
    "tiny-val-images-as-class": (tinyimagenet, ["--set", "data.layout=class_folders"],
                                 ["val/images is not a class folder", "tinyimagenet"]),
    "tiny-test-root": (_tiny_test_root, [], ["test folder", "no labels"]),
}


@pytest.mark.parametrize("case", BAD)
def test_malformed_release_is_one_error_line_and_no_run_folder(case, tmp_path, capsys):
    make, extra, words = BAD[case]
    root = tmp_path / "data"
    root.mkdir()
    root = make(root) or root
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"family: classifier\ndata: {{name: folder, root: '{root}', size: [8, 8]}}\n"
                      f"train: {{steps: 2, batch_size: 2}}\n")
    out = tmp_path / "runs"
    assert main(["train", str(recipe), "--out", str(out), "--quiet", *extra]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    for w in words:
        assert w in lines[0], err
    assert not out.exists(), "a data error must not leave a run folder"


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_placeholder_root_is_a_clear_error(name, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    placeholder = yaml.safe_load((ROOT / "recipes" / f"{name}.yaml").read_text())["data"]["root"]
    if Path(placeholder).exists():
        pytest.skip(f"{placeholder} exists here")
    out = tmp_path / "runs"
    assert main(["train", f"recipes/{name}.yaml", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "data.root: file or folder not found" in err, err
    assert placeholder in err
    assert not out.exists()
