"""Real images augmented with generated ones (data source "generated" with `with_real_train`,
genlab.tools.augmentation): the joined train split is the real labelled images, then the samples,
each image from its own source; and the paired measurement credits samples that teach the
classes and not samples that carry none. CPU, 32 x 24 images of easy mode."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_cas import REAL, K, _settings

from genlab.core.registry import register_dataset
from genlab.core.schema import build
from genlab.data.generated import GeneratedConfig, GeneratedData, build_real
from genlab.tools import augmentation, cas

LABELLED = {**REAL, "labelled": 200}


@register_dataset("augmentation_test_real_images")
class OtherRealImages(GeneratedData):
    """A "generator" that returns real training images of the class asked for, from the data built
    with another seed (none is one of the labelled images): samples as good as real ones."""

    def sampler(self, cfg):
        real = {k: v for k, v in cfg.real.items() if k != "labelled"}
        pool = build_real(real, self.seed + 1000, "cpu").get("train", torch.arange(4 * cfg.train_size))
        by_class = [torch.nonzero(pool["y"] == c).flatten().tolist() for c in range(K)]

        def draw(labels, g):
            return pool["x"][[by_class[c].pop() for c in labels.tolist()]]

        return draw


@register_dataset("augmentation_test_noise")
class Noise(GeneratedData):
    def sampler(self, cfg):
        return lambda labels, g: torch.rand(len(labels), *self.info.input_shape, generator=g)


def test_the_joined_train_split_is_the_labelled_images_then_the_samples():
    cfg = build(GeneratedConfig, {"real": LABELLED, "train_size": 10, "block": 4,
                                  "with_real_train": True}, "data")
    joined = Noise(cfg, 0)
    alone = Noise(build(GeneratedConfig, {"real": LABELLED, "train_size": 10, "block": 4}, "data"), 0)
    real = build_real(LABELLED, 0, "cpu")  # the labelled 200 a real-only run of seed 0 trains on
    assert joined.size("train") == 210 and real.size("train") == 200
    first = joined.get("train", torch.arange(200))
    want = real.get("train", torch.arange(200))
    assert torch.equal(first["x"], want["x"]) and torch.equal(first["y"], want["y"])
    rest = joined.get("train", torch.arange(200, 210))
    assert torch.equal(rest["x"], alone.get("train", torch.arange(10))["x"])
    mixed = joined.get("train", torch.tensor([205, 3, 200, 199]))  # a batch from both, in order
    assert torch.equal(mixed["x"][0], rest["x"][5]) and torch.equal(mixed["x"][1], first["x"][3])
    assert torch.equal(mixed["x"][2], rest["x"][0]) and torch.equal(mixed["x"][3], first["x"][199])
    assert mixed["y"].tolist() == [5 % K, int(want["y"][3]), 0, int(want["y"][199])]
    assert torch.equal(joined.class_counts("train"),
                       real.class_counts("train") + alone.class_counts("train"))
    assert torch.equal(joined.get("test", torch.arange(4))["x"], real.get("test", torch.arange(4))["x"])


def test_samples_as_good_as_real_images_pay_and_noise_does_not(tmp_path):
    """200 labelled images and the CAS tests' budget (300 steps of 32): alone the classifier stays
    near chance (0.255 measured), with 800 more real images of another draw as "samples" it reaches
    the accuracy of 1,000 real images (0.55), with 800 noise images it gains little (0.31)."""
    s = _settings(n_train=200)
    say = lambda _: None
    good = augmentation.paired_runs(s, REAL, {"name": "augmentation_test_real_images"}, [800],
                                    tmp_path, say=say)
    assert good["augmented"][800]["images"] == 1000 and good["real"]["images"] == 200
    assert good["gain"][800] >= 0.15, good["gain"]
    noise = augmentation.paired_runs(s, REAL, {"name": "augmentation_test_noise"}, [800], tmp_path,
                                     real=good["real"], say=say)
    assert noise["real"] is good["real"]  # a given baseline is not trained again
    assert noise["gain"][800] <= good["gain"][800] - 0.15, (noise["gain"], good["gain"])
    # the augmented recipe is the CAS classifier with the real images kept: only the data differ
    rec = augmentation.augmented_recipe(s, REAL, {"name": "augmentation_test_noise"}, 800)
    assert rec.to_dict()["train"] == cas.real_recipe(s, REAL).to_dict()["train"]


# -- the study script -------------------------------------------------------------------------------
def _study():
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "scripts" / "augmentation_study.py"
    spec = importlib.util.spec_from_file_location("augmentation_study", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_study_report_pairs_by_seed_and_bad_options_exit_2(tmp_path, capsys):
    study = _study()

    def scores(acc, b):
        return {"acc": acc, "lesion_auc": 0.9, "recall": {"A": 0.5, "B": b}, "steps": 100, "best_step": 50,
                "test_images": 400, "key": {}}

    rows = [{"kind": "real", "seed": 0, "generated": 0, "scores": scores(0.60, 0.4)},
            {"kind": "real", "seed": 1, "generated": 0, "scores": scores(0.50, 0.4)}]
    rows += [{"kind": "augmented", "seed": s, "generated": 2000, "gan": "g", "gan_step": 2000,
              "checkpoint": "best", "agreement": None, "scores": scores(acc, 0.6)}
             for s, acc in ((0, 0.65), (1, 0.47))]
    md = study.report(rows, "test machine")
    assert "| 0 | 2000 | 0.600 | 0.650 | +0.050 |" in md and "| 1 | 2000 | 0.500 | 0.470 | -0.030 |" in md
    assert md.count("|---") == 11  # one per column: seed ... GAN step, a recall per class
    assert "paired gain in test accuracy +0.010 ± 0.057 over 2 seeds, positive on 1 of 2" in md
    for argv, words in ((["--gan", "zero=" + str(tmp_path)], "SEED=RUN_FOLDER"),
                        (["--gan", f"0={tmp_path / 'none'}"], "is not a folder"),
                        ([], "at least one"),
                        (["--gan", f"0={tmp_path}", "--generated", "0"], "positive counts")):
        try:
            study.main(argv + ["--results", str(tmp_path / "r.jsonl"), "--md", str(tmp_path / "r.md")])
        except SystemExit as e:
            assert e.code == 2, argv
        else:
            raise AssertionError(f"{argv}: no error")
        assert words in capsys.readouterr().err, argv


def test_the_study_on_a_tiny_gan_run_trains_each_pair_once_and_checks_the_gan(tmp_path, capsys):
    from genlab.cli import main

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "gan"
    assert main(["train", str(root / "recipes" / "gan_brain.yaml"), "--out", str(out), "--quiet",
                 "--set", "model.conditional=true", "--set", "data.mode=easy", "--set", "data.labelled=32",
                 "--set", "data.size=[32,24]", "--set", "data.val_size=32", "--set", "data.test_size=64",
                 "--set", "model.fid_extractor=null", "--set", "model.lesion_judge=null",
                 "--set", "model.fid_samples=8", "--set", "model.g_width=4", "--set", "model.d_width=4",
                 "--set", "train.steps=2", "--set", "train.batch_size=8", "--set", "train.precision=fp32",
                 "--set", "train.device=cpu", "--set", "log.eval_every=0", "--set", "log.render_every=0",
                 "--set", "log.histograms=false"]) == 0
    run = next((out / "gan_brain").iterdir())
    results, md = tmp_path / "r.jsonl", tmp_path / "r.md"
    argv = ["--labels", "32", "--generated", "16", "--steps", "4", "--batch-size", "8", "--evals", "2",
            "--checkpoint", "last", "--judge", "", "--set", "model.channels=[4,4,8,8]",
            "--out", str(tmp_path / "runs"), "--results", str(results), "--md", str(md)]
    study = _study()
    assert study.main(["--gan", f"0={run}", "--augmented-only", *argv]) == 0
    assert "| 0 | 16 |" not in md.read_text()  # no real-only partner yet: nothing to pair
    assert study.main(["--gan", f"0={run}", *argv]) == 0  # trains only the missing real-only run
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    assert [(r["kind"], r["generated"]) for r in rows] == [("augmented", 16), ("real", 0)]
    assert rows[1]["scores"]["images"] == 32 and rows[0]["scores"]["images"] == 48
    assert rows[0]["gan_step"] == 2 and "| 0 | 16 |" in md.read_text()
    assert study.main(["--gan", f"0={run}", *argv]) == 0  # the same settings: nothing trained again
    assert len(results.read_text().splitlines()) == 2
    with pytest.raises(SystemExit) as e:  # seed 1's labelled images are not the ones this GAN saw
        study.main(["--gan", f"1={run}", *argv])
    assert e.value.code == 2 and "trained with seed 0 on data.labelled=32" in capsys.readouterr().err
