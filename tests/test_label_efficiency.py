"""The label-efficiency study (scripts/label_efficiency.py): class-balanced nested labelled sets,
the same images for every initialisation of a seed, the paired summary on hand-made results,
and an end-to-end run with tiny budgets that a rerun does not repeat. CPU, small images."""
from __future__ import annotations

import contextlib
import importlib.util
import io
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from genlab.core import registry
from genlab.core.errors import DataError
from genlab.core.recipe import load_recipe
from genlab.core.registry import get_dataset, get_family
from genlab.data.brain import BrainConfig, BrainData
from genlab.data.subset import balanced_subset, labelled_mask
from genlab.families.export import save_encoder

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "lesion_brain.yaml"
SMALL = ["data.size=[32,24]", "model.channels=[4,4,8,8]"]  # 4x cheaper images, a tiny vgg_sep
registry.load_all()
_spec = importlib.util.spec_from_file_location("label_efficiency", ROOT / "scripts" / "label_efficiency.py")
le = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(le)  # puts scripts/ on sys.path for its report module
import label_efficiency_report as report


def test_balanced_subset_is_balanced_nested_and_seeded():
    g = torch.Generator().manual_seed(0)
    labels = torch.multinomial(torch.tensor([0.7, 0.2, 0.1]), 2000, replacement=True, generator=g)
    prev = set()
    for n in (9, 30, 31, 100, 300):
        s = balanced_subset(labels, n, seed=3, num_classes=3)
        counts = torch.bincount(labels[s], minlength=3)
        assert len(s) == len(set(s.tolist())) == n and int(counts.max() - counts.min()) <= 1
        assert prev <= set(s.tolist())  # nested: the smaller set is inside the larger
        prev = set(s.tolist())
    other = balanced_subset(labels, 30, seed=4)
    assert set(other.tolist()) != set(balanced_subset(labels, 30, seed=3).tolist())
    masks = [labelled_mask(torch.arange(1000), 0.3, seed) for seed in (0, 1, 2**40)]  # any seed works
    assert all(0.25 < float(m.float().mean()) < 0.35 for m in masks) and not torch.equal(masks[0], masks[1])
    short = int(torch.bincount(labels)[2])
    with pytest.raises(DataError, match=r"data.labelled: .* class 2 has"):
        balanced_subset(labels, 3 * short + 3, seed=0, what="data.labelled")


@pytest.mark.parametrize("classes", ["syndrome", "lesion"])
def test_brain_labelled_split(classes):
    def data(n, seed):
        return BrainData(BrainConfig(train_size=3000, labelled=n, classes=classes, size=[32, 24]), seed)

    k = 4 if classes == "syndrome" else 2
    small, big = data(40, 0), data(200, 0)
    assert small.size("train") == 40 and big.size("train") == 200
    assert small.class_counts("train").tolist() == [40 // k] * k
    assert torch.bincount(small.get("train", torch.arange(40))["y"], minlength=k).tolist() == [40 // k] * k
    assert set(small._train_idx.tolist()) <= set(big._train_idx.tolist())
    # the labelled image i of the split is factory image _train_idx[i] of the whole train split
    whole = BrainData(BrainConfig(train_size=3000, classes=classes, size=[32, 24]), 0)
    first = small.get("train", torch.arange(3))["x"]
    assert torch.equal(first, whole.get("train", small._train_idx[:3])["x"])
    assert not torch.equal(data(40, 1).get("train", torch.arange(3))["x"], first)  # another seed
    with pytest.raises(ValueError, match="labelled"):
        BrainConfig(train_size=10, labelled=11)


def _args(bundle):
    return SimpleNamespace(labels=[8, 16], budgets={8: 4, 16: 6}, eval_points=3, patience=2, pool=200,
                           val_size=16, test_size=16, device="cpu", batch_size=64, lr=None, set=list(SMALL),
                           inits={"enc": bundle}, encoder_lr_mult=0.1, gradual=[], lpft=[],
                           shrink_perturb={}, init_reset={})


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """An exported encoder: the tiny classifier's untrained backbone, as `genlab export` writes it."""
    rec = load_recipe(RECIPE, [*SMALL, "data.train_size=8", "data.val_size=8", "data.test_size=8"])
    info = get_dataset(rec.data_name)(rec.data, 0, "cpu").info
    out = tmp_path_factory.mktemp("encoder") / "export"
    with contextlib.redirect_stdout(io.StringIO()):
        model = get_family(rec.family)(rec.model, info)
    return save_encoder(model.encoder_spec(), out, family="classifier", info=info, recipe_name="tiny", step=0)


def test_same_images_for_every_initialisation_of_a_seed(bundle):
    args = _args(bundle)
    shapes = {"scratch": [32, 24], "enc": [32, 24]}

    def images(row, seed):
        rec = load_recipe(RECIPE, le.overrides(args, row, 16, seed, shapes))
        d = get_dataset(rec.data_name)(rec.data, rec.seed, "cpu")
        return [d.get(s, torch.arange(d.size(s)))["x"] for s in ("train", "val", "test")]

    ref = images("scratch", 0)
    for row in ("enc", "enc/probe", "enc/lpft"):
        assert all(torch.equal(a, b) for a, b in zip(ref, images(row, 0)))
    assert not any(torch.equal(a, b) for a, b in zip(ref, images("scratch", 1)))
    # an encoder trained on another input size sees the same images at its size
    assert "data.size=[16,12]" in le.overrides(args, "enc", 16, 0, shapes | {"enc": [16, 12]})


def test_shrink_perturb_rows_mix_the_encoder_and_only_they(bundle):
    args = _args(bundle)
    args.shrink_perturb = {"enc": (0.4, 0.1)}
    shapes = {"scratch": [32, 24], "enc": [32, 24]}
    ov = le.overrides(args, "enc", 16, 0, shapes)
    assert ov[-2:] == ["model.init_shrink=0.4", "model.init_perturb=0.1"]
    rec = load_recipe(RECIPE, ov)
    assert (rec.model.init_shrink, rec.model.init_perturb) == (0.4, 0.1)
    for row in ("scratch", "enc/probe"):
        assert not any("init_shrink" in o for o in le.overrides(args, row, 16, 0, shapes))
    args.shrink_perturb, args.init_reset = {}, {"enc": ["features.1", "features.2"]}
    ov = le.overrides(args, "enc", 16, 0, shapes)
    assert ov[-1] == "model.init_reset=[features.1,features.2]"
    assert load_recipe(RECIPE, ov).model.init_reset == ["features.1", "features.2"]


@pytest.mark.parametrize("value, message", [("enc:0.4", "expected NAME:SHRINK:PERTURB"),
                                            ("other:0.4:0.1", "not an --init NAME")])
def test_bad_shrink_perturb_is_named(bundle, value, message, capsys):
    with pytest.raises(SystemExit) as e:
        le.main(["--init", f"enc={bundle}", "--shrink-perturb", value, "--report-only",
                 "--results", "/nonexistent/r.jsonl"])
    assert e.value.code == 2 and message in capsys.readouterr().err


def _row(row, n, seed, acc, auc, best=None):
    r = {"row": row, "n": n, "seed": seed, "acc": acc, "lesion_auc": auc, "seconds": 1.0,
         "backbone": "b", "input": "32x24"}
    if best is not None:
        r.update(best_step=best, budget=100, stopped_early=best < 80, batch=32, eval_every=10, patience=3)
    return r


def test_summary_and_table_on_known_results(tmp_path):
    rows = [_row("scratch", 40, s, a, 0.5, b) for s, a, b in ((0, 0.5, 20), (1, 0.6, 40), (2, 0.7, 100))]
    rows += [_row("enc", 40, s, a, u, 30) for s, a, u in ((0, 0.6, 0.6), (1, 0.6, 0.4), (2, 0.9, 0.7))]
    rows += [_row("enc/probe", 40, s, 0.4, 0.5) for s in (0, 1)]
    s = report.summarise(rows)
    mean, sd, k = s["cells"][("scratch", 40)]["acc"]
    assert (round(mean, 6), round(sd, 6), k) == (0.6, 0.1, 3)
    d = s["diffs"][("enc", 40)]["acc"]
    assert {k: round(v, 6) for k, v in d["per_seed"].items()} == {0: 0.1, 1: 0.0, 2: 0.2}
    assert (round(d["mean"], 6), round(d["sd"], 6), d["positive"], d["k"]) == (0.1, 0.1, 2, 3)
    assert s["diffs"][("enc/probe", 40)]["acc"]["k"] == 2  # only the seeds both rows have
    assert [round(f, 2) for f, _ in s["conv"][("scratch", 40)].values()] == [0.2, 0.4, 1.0]
    md = report.markdown(rows, "lesion_brain.yaml", "test", "le.png")
    assert "| enc: fine-tuned | 40 | +0.100 ± 0.100 | +0.100 +0.000 +0.200 | 2/3 |" in md
    assert "0.600 ± 0.100" in md and "**at end**" in md and "enc: frozen, logistic probe" in md
    assert "LP-FT" not in md  # no LP-FT rows, no word of them
    # LP-FT rows: between the fine-tuned and the probe rows, paired with scratch like the others
    rows += [_row("enc/lpft", 40, s, a, 0.8, 90) for s, a in ((0, 0.8), (1, 0.7), (2, 0.8))]
    assert report.row_order(rows) == ["scratch", "enc", "enc/lpft", "enc/probe"]
    md = report.markdown(rows, "lesion_brain.yaml", "test", "le.png")
    assert "| enc: LP-FT | 40 | +0.167 ± 0.115 | +0.300 +0.100 +0.100 | 3/3 |" in md
    assert "LP-FT rows fine-tune from the encoder with that probe as the starting head" in md
    report.plot(rows, tmp_path / "le.png", "t", 0.25)
    assert (tmp_path / "le.png").stat().st_size > 0


def test_end_to_end_writes_lines_and_table_and_resumes(tmp_path, bundle, capsys):
    out = tmp_path / "study"
    argv = ["--init", f"enc={bundle}", "--labels", "8", "16", "--steps", "4", "6", "--seeds", "0",
            "--eval-points", "2", "--patience", "2", "--pool", "200", "--val-size", "16",
            "--test-size", "16", "--runs", str(out / "runs"), "--results", str(out / "r.jsonl"),
            "--md", str(out / "le.md"), "--png", str(out / "le.png")]
    argv += [a for s in SMALL for a in ("--set", s)]
    assert le.main(argv) == 0
    lines = [json.loads(x) for x in (out / "r.jsonl").read_text().splitlines()]
    assert sorted((r["row"], r["n"]) for r in lines) == sorted(
        (row, n) for row in ("scratch", "enc", "enc/probe") for n in (8, 16))
    for r in lines:
        assert 0 <= r["acc"] <= 1 and 0 <= r["lesion_auc"] <= 1
        if r["row"] != "enc/probe":
            assert r["curve"] and 1 <= r["best_step"] <= r["budget"]
    md = (out / "le.md").read_text()
    assert "## Paired difference to scratch" in md and "| enc: fine-tuned | 8 |" in md
    assert (out / "le.png").stat().st_size > 0
    capsys.readouterr()
    assert le.main(argv) == 0  # a rerun trains nothing
    assert "0 runs to do" in capsys.readouterr().out
    assert len((out / "r.jsonl").read_text().splitlines()) == 6
    with pytest.raises(SystemExit) as e:
        le.main(["--init", "enc", "--report-only"])
    assert e.value.code == 2
    # --lpft adds one row per label count and seed; the rows already there are not trained again
    assert le.main([*argv, "--lpft", "enc"]) == 0
    assert "2 runs to do (6 done" in capsys.readouterr().out
    lines = [json.loads(x) for x in (out / "r.jsonl").read_text().splitlines()]
    assert sorted((r["row"], r["n"]) for r in lines[6:]) == [("enc/lpft", 8), ("enc/lpft", 16)]
    assert all("model.head_init=probe" in r["overrides"] and r["curve"] for r in lines[6:])
    assert "| enc: LP-FT | 8 |" in (out / "le.md").read_text()
    with pytest.raises(SystemExit) as e:
        le.main([*argv, "--lpft", "other"])
    assert e.value.code == 2 and "--lpft other: not an --init NAME" in capsys.readouterr().err


def test_gradual_rows_fine_tune_with_the_gradual_mode(bundle):
    args = _args(bundle)
    shapes = {"scratch": [32, 24], "enc": [32, 24]}
    assert "model.mode=finetune" in le.overrides(args, "enc", 16, 0, shapes)
    args.gradual = ["enc"]
    assert "model.mode=gradual" in le.overrides(args, "enc", 16, 0, shapes)
    assert "model.mode=linear_probe" in le.overrides(args, "enc/probe", 16, 0, shapes)  # probe row unchanged


def test_lpft_row_is_the_fine_tuned_row_with_the_probe_as_its_head(bundle):
    args = _args(bundle)
    shapes = {"scratch": [32, 24], "enc": [32, 24]}
    for gradual in ([], ["enc"]):
        args.gradual = gradual
        assert le.overrides(args, "enc/lpft", 16, 0, shapes) == [*le.overrides(args, "enc", 16, 0, shapes),
                                                                  "model.head_init=probe"]
    assert not any("head_init" in o for row in ("scratch", "enc", "enc/probe")
                   for o in le.overrides(args, row, 16, 0, shapes))
