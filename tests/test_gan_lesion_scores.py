"""The lesion judge and the GAN scores it gives: the maths on hand-made logits, a judge made from a
tiny classifier run that gives the run's own logits, a conditional GAN run whose metrics hold
the new scores, a "generator" that returns the real images (agreement = the judge's accuracy,
lesion rate = the real one), and the errors for a bad judge."""
from __future__ import annotations

import contextlib
import io
import json
import math

import numpy as np
import pytest
import torch
import yaml
from conftest import tiny_recipe

from genlab.cli import main
from genlab.core.errors import CheckpointError, RecipeError
from genlab.core.recipe import from_mapping
from genlab.engine.runs import load_run
from genlab.engine.trainer import Trainer
from genlab.families.gan_judge import LesionJudge, load_lesion_judge
from genlab.families.gan_scores import LesionScores
from genlab.metrics import generative as gen_metrics

# a few steps of a GAN draw collapsed samples, and the family says so
pytestmark = pytest.mark.filterwarnings("ignore:samples look collapsed:RuntimeWarning")

SMALL_BRAIN = {"name": "brain", "mode": "hard", "train_size": 256, "val_size": 32, "test_size": 32,
               "size": [32, 24]}


def _quiet_run(recipe: dict, out_root):
    with contextlib.redirect_stdout(io.StringIO()):
        t = Trainer(from_mapping(recipe), out_root=out_root, quiet=True, progress=False)
        t.run()
    return t


@pytest.fixture(scope="module")
def judge_run(tmp_path_factory):
    """A 4-syndrome classifier on 32 x 24 brain slices with a dense head and dropout (which the
    judge must drop: it runs in eval mode), trained 6 steps, and its judge in RUN/judge."""
    r = tiny_recipe("classifier", steps=6, eval_batches=1)
    r["name"] = "tiny_lesion_judge"
    r["data"] = dict(SMALL_BRAIN)
    r["model"] = {"backbone": "vgg_sep", "channels": [4, 8, 8], "stem_stride": 2, "localisation": False,
                  "dropout": 0.3, "head": [8], "head_dropout": 0.5}
    r["log"].update(render_every=1000, eval_every=1000)
    t = _quiet_run(r, tmp_path_factory.mktemp("judge_runs"))
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["export", str(t.run_dir), "--format", "judge"]) == 0
    return t.run_dir


def _gan_recipe(judge_dir, conditional=True, steps=3) -> dict:
    r = tiny_recipe("gan", steps=steps)
    r["data"] = dict(SMALL_BRAIN)
    r["model"] = {**r["model"], "conditional": conditional, "lesion_judge": str(judge_dir)}
    r["log"].update(render_every=1000)
    return r


# -- the maths ------------------------------------------------------------------------------------
def test_lesion_rate_and_agreement_on_hand_made_logits():
    classes = torch.tensor([0, 1, 2, 3, 3, 0])
    logits = torch.nn.functional.one_hot(classes, 4).float() * 5 - 1  # argmax = classes
    assert gen_metrics.lesion_rate(logits, [3]) == pytest.approx(4 / 6)
    assert gen_metrics.lesion_rate(logits, [0, 3]) == pytest.approx(2 / 6)
    overall, per = gen_metrics.class_agreement(logits, classes, 4)
    assert overall == 1.0 and per.tolist() == [1.0, 1.0, 1.0, 1.0]
    # labels that disagree on two of the six: class 0 half right, class 3 all wrong, class 5 absent
    labels = np.array([0, 1, 2, 2, 2, 1])
    overall, per = gen_metrics.class_agreement(logits, labels, 5)
    assert overall == pytest.approx(3 / 6)
    assert per[0] == 1.0 and per[1] == 0.5 and per[2] == pytest.approx(1 / 3)
    assert math.isnan(per[3]) and math.isnan(per[4])
    assert math.isnan(gen_metrics.lesion_rate(torch.zeros(0, 4), [3]))
    with pytest.raises(ValueError, match="one label per row"):
        gen_metrics.class_agreement(logits, labels[:3], 4)


# -- the judge ------------------------------------------------------------------------------------
def test_judge_from_a_classifier_run_gives_the_runs_own_logits(judge_run):
    judge = load_lesion_judge(judge_run / "judge")
    assert isinstance(judge, LesionJudge) and judge.name == "tiny_lesion_judge"
    assert judge.class_names == ["A", "B", "C", "Z"] and judge.negative == [3]
    assert judge.input_shape == (1, 32, 24) and judge.num_classes == 4
    run = load_run(judge_run, "best", "cpu", need_data=True)
    x = run.data.get("test", torch.arange(10, 26))["x"]  # not the export's parity images
    with torch.no_grad():
        f, lg = judge.features_and_logits(x)
        torch.testing.assert_close(lg, run.model(x), rtol=0, atol=1e-6)
        torch.testing.assert_close(judge.logits(x), lg, rtol=0, atol=0)
        torch.testing.assert_close(f, run.model.encode(x), rtol=0, atol=0)
        assert judge.features(x).shape == (16, judge.num_features)
    # small files, no optimizer state: the backbone bundle and the head bundle only
    files = sorted(p.name for p in (judge_run / "judge").iterdir())
    assert files == ["encoder.json", "encoder.safetensors", "head.json", "head.safetensors"]
    assert sum(p.stat().st_size for p in (judge_run / "judge").iterdir()) < 50_000
    head = json.loads((judge_run / "judge" / "head.json").read_text())
    assert head["widths"] == [judge.num_features, 8, 4] and head["negative_classes"] == ["Z"]


def test_bad_judges_are_one_line_errors(judge_run, tmp_path, capsys):
    with pytest.raises(CheckpointError, match="no such lesion-judge folder"):
        load_lesion_judge(tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match="not a lesion judge"):
        load_lesion_judge("judges/dae_judge_brain")  # an encoder bundle alone
    with pytest.raises(RecipeError, match="model.lesion_judge"):
        from_mapping(_gan_recipe(tmp_path / "nowhere"))
    with pytest.raises(RecipeError, match="model.lesion_judge: .*not a lesion judge"):
        Trainer(from_mapping(_gan_recipe("judges/dae_judge_brain")), out_root=tmp_path, quiet=True)
    digits = tiny_recipe("gan", steps=2)  # 1 x 8 x 8 digits against a 1 x 32 x 24 judge
    digits["model"] = {**digits["model"], "lesion_judge": str(judge_run / "judge")}
    with pytest.raises(RecipeError, match=r"takes \(1, 32, 24\) images"):
        Trainer(from_mapping(digits), out_root=tmp_path, quiet=True)
    recipe = tmp_path / "gan.yaml"
    recipe.write_text(yaml.safe_dump(_gan_recipe("judges/dae_judge_brain")))
    assert main(["train", str(recipe), "--out", str(tmp_path / "runs"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "model.lesion_judge" in err and "not a lesion judge" in err and "Traceback" not in err
    gan = _quiet_run(tiny_recipe("gan", steps=2), tmp_path / "gan_runs")
    assert main(["export", str(gan.run_dir), "--format", "judge"]) == 2
    assert "made from a classifier run" in capsys.readouterr().err


# -- the scores -----------------------------------------------------------------------------------
def test_conditional_gan_with_a_lesion_judge_logs_the_new_scores(judge_run, tmp_path):
    t = _quiet_run(_gan_recipe(judge_run / "judge"), tmp_path)
    metrics = json.loads((t.run_dir / "metrics.json").read_text())
    val, test = metrics["val"], metrics["test"]
    name = "tiny_lesion_judge"
    want = {f"{k}/{name}" for k in ("fid", "fid_floor", "fid_ratio", "precision", "recall",
                                    "precision_floor", "recall_floor")}
    want |= {"lesion_rate", "lesion_rate_real", "lesion_share_real", "judge_accuracy_real",
             "agreement", "agreement_min", "agreement_mean", "fid/random_conv"}
    want |= {f"agreement/{c}" for c in "ABCZ"} | {f"judge_accuracy_real/{c}" for c in "ABCZ"}
    assert want <= set(val), sorted(want - set(val))
    assert want <= set(test), sorted(want - set(test))
    assert all(0 <= val[k] <= 1 for k in want if k.startswith(("lesion_", "agreement", "judge_")))
    assert val["agreement_min"] <= val["agreement_mean"] <= 1


def test_a_gated_g_is_scored_on_both_twins_of_its_samples(judge_run, tmp_path):
    """An unconditional atlas G with a lesion gate: each sample is one of its latent's two renders
    (with lesions, without), so the judge's logits on it are exactly those of one twin, and the
    twin rates are the judge's lesion calls on each render."""
    from test_gan_atlas import _atlas_export

    r = _gan_recipe(judge_run / "judge", conditional=False, steps=2)
    r["model"] = {**r["model"], "g_atlas": str(_atlas_export(tmp_path, shape=(1, 32, 24))),
                  "g_lesion_slots": 4, "g_lesion_share": 0.5}
    t = _quiet_run(r, tmp_path)
    val = json.loads((t.run_dir / "metrics.json").read_text())["val"]
    assert 0 <= val["lesion_rate_g_with"] <= 1 and 0 <= val["lesion_rate_g_without"] <= 1
    batch = t.data.get("val", torch.arange(32))
    cols = t.model.evaluate(batch)
    fake, with_, without = cols["lj_logits_fake"], cols["lj_logits_with"], cols["lj_logits_without"]
    def same(a, b):  # the same images in another batch: equal up to the kernels' rounding
        return torch.isclose(a, b, rtol=1e-4, atol=1e-5).all(1)

    from_with = same(fake, with_)
    assert (from_with | same(fake, without)).all()
    assert 0 < int(from_with.sum()) < len(fake)  # both twins are drawn (share 0.5, 32 samples)
    out = t.model.summarize(cols)
    negative = t.model._lesion.judge.negative
    assert out["lesion_rate_g_with"] == gen_metrics.lesion_rate(with_, negative)
    assert out["lesion_rate_g_without"] == gen_metrics.lesion_rate(without, negative)


@pytest.mark.parametrize("best_on", ["agreement", "lesion_fd"])
def test_best_checkpoint_chosen_on_the_lesion_judge(judge_run, tmp_path, best_on):
    """best.pt holds the evaluation with the highest agreement, or the lowest lesion-judge FD
    ratio: the value it records is that extreme of the run's evaluations."""
    r = _gan_recipe(judge_run / "judge", steps=4)
    r["model"]["best_on"] = best_on
    r["log"].update(eval_every=2)
    t = _quiet_run(r, tmp_path)
    name, mode = t.model.monitor
    want = "agreement_mean" if best_on == "agreement" else f"fid_ratio/{t.model._lesion.judge.name}"
    assert (name, mode) == (want, "max" if best_on == "agreement" else "min")
    best = torch.load(t.run_dir / "checkpoints" / "best.pt", weights_only=True)
    assert best["monitor"] == want
    seen = [v for _, v in t.history[f"eval/{want}"]]
    assert len(seen) == 2
    assert best["value"] == pytest.approx(max(seen) if mode == "max" else min(seen))
    bad = tiny_recipe("gan", steps=1)
    bad["model"] = {**bad["model"], "conditional": True, "best_on": best_on}
    with pytest.raises(RecipeError, match=f"best_on: {best_on} needs .*lesion_judge"):
        from_mapping(bad)


def _scores(judge_run, conditional=True) -> LesionScores:
    from genlab.data.brain import BrainConfig, BrainData

    data = BrainData(BrainConfig(**{k: v for k, v in SMALL_BRAIN.items() if k != "name"}))
    return LesionScores(judge_run / "judge", data.info, conditional), data


def test_a_generator_that_returns_the_real_images_scores_like_the_real_images(judge_run):
    scores, data = _scores(judge_run)
    batch = data.get("val", torch.arange(32))
    cols = scores.columns(batch["x"], batch["x"].clone(), batch["y"])  # fake = real
    out = scores.summarize(cols, n=16, k=3)
    assert out["agreement"] == out["judge_accuracy_real"]
    for c in "ABCZ":
        if f"agreement/{c}" in out:
            assert out[f"agreement/{c}"] == out[f"judge_accuracy_real/{c}"]
    assert out["lesion_rate"] == out["lesion_rate_real"]
    assert out["lesion_share_real"] == pytest.approx(float((batch["y"] != 3).float().mean()))
    name = scores.judge.name
    assert out[f"precision/{name}"] == out[f"precision_floor/{name}"]
    assert out[f"fid/{name}"] == pytest.approx(out[f"fid_floor/{name}"])
    # the judge's accuracy is its calls against the truth, by hand
    with torch.no_grad():
        calls = scores.judge.logits(batch["x"]).argmax(1)
    assert out["judge_accuracy_real"] == pytest.approx(float((calls == batch["y"]).float().mean()))
    assert out["lesion_rate_real"] == pytest.approx(float((calls != 3).float().mean()))


def test_call_scores_on_known_logits_and_an_unconditional_run(judge_run):
    scores, _ = _scores(judge_run)
    y = torch.tensor([0, 0, 1, 1, 2, 3, 3, 3])
    real = torch.nn.functional.one_hot(y, 4).float()  # the judge is right on every real image
    fake = torch.nn.functional.one_hot(torch.tensor([0, 1, 1, 1, 3, 3, 3, 0]), 4).float()
    out = scores.call_scores(real, fake, y)
    assert out["judge_accuracy_real"] == 1.0 and out["lesion_rate_real"] == 5 / 8
    assert out["lesion_share_real"] == 5 / 8 and out["lesion_rate"] == 5 / 8
    assert (out["agreement/A"], out["agreement/B"], out["agreement/C"], out["agreement/Z"]) == (
        0.5, 1.0, 0.0, 2 / 3)
    assert out["agreement"] == 5 / 8 and out["agreement_min"] == 0.0
    assert out["agreement_mean"] == pytest.approx((0.5 + 1 + 0 + 2 / 3) / 4)
    unconditional, _ = _scores(judge_run, conditional=False)
    out = unconditional.call_scores(real, fake, y)
    assert "agreement" not in out and "agreement_min" not in out and out["judge_accuracy_real"] == 1.0
    calls = {f"calls{side}/{c}" for side in ("", "_real") for c in scores.judge.class_names}
    assert set(unconditional.call_scores(real, fake, None)) == {"lesion_rate", "lesion_rate_real"} | calls
    assert (out["calls/A"], out["calls/B"], out["calls/C"], out["calls/Z"]) == (2 / 8, 3 / 8, 0, 3 / 8)
    assert (out["calls_real/A"], out["calls_real/Z"]) == (2 / 8, 3 / 8)


def test_judge_accuracy_script_measures_the_judge_on_both_modes(judge_run):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "judge_accuracy.py"
    spec = importlib.util.spec_from_file_location("judge_accuracy", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    judge = load_lesion_judge(judge_run / "judge")
    from genlab.data.brain import BrainConfig, BrainData

    for mode in ("hard", "easy"):
        got = script.measure(judge, mode, n=24, seed=0, batch_size=10)
        b = BrainData(BrainConfig(mode=mode, test_size=24, size=[32, 24])).get("test", torch.arange(24))
        with torch.no_grad():
            calls = judge.logits(b["x"]).argmax(1)
        assert got["accuracy"] == pytest.approx(float((calls == b["y"]).float().mean()))
        assert got["lesion_rate"] == pytest.approx(float((calls != 3).float().mean()))
        assert got["lesion_share"] == pytest.approx(float((b["y"] != 3).float().mean()))


def test_gan_score_draws_reads_disjoint_parts_and_the_mean_fd_over_the_mean_floor(judge_run, tmp_path):
    """scripts/gan_score.py --draws K: K readings on disjoint parts of the split (each its own
    real slices and generator noise), and the ratio of their sums; part 0 reads as a plain
    evaluation of a split of one part's size."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "gan_score.py"
    spec = importlib.util.spec_from_file_location("gan_score", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    t = _quiet_run(_gan_recipe(judge_run / "judge", steps=2), tmp_path)
    per = 2 * t.model.cfg.fid_samples
    run = load_run(t.run_dir, "last", data_overrides=[f"val_size={3 * per}"])
    out = script.draws(run, "val", 3)
    name = t.model._lesion.judge.name
    fd, floor = out[f"draws_fid/{name}"], out[f"draws_fid_floor/{name}"]
    assert out["draw_size"] == per and len(fd) == len(floor) == 3 and len(set(fd)) == 3
    assert out[f"draws_fid_ratio/{name}"] == pytest.approx(sum(fd) / sum(floor))
    first = script.evaluate(load_run(t.run_dir, "last", data_overrides=[f"val_size={per}"]), "val")
    assert first[f"fid/{name}"] == pytest.approx(fd[0], rel=1e-4)
    assert first[f"fid_floor/{name}"] == pytest.approx(floor[0], rel=1e-4)
