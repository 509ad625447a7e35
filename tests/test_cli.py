"""The command line as a user meets it: every shipped recipe runs, bad input is one clear line
with exit code 2 and no traceback, and no run folder is left behind."""
from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from genlab.cli import main
from genlab.core import registry

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))
# train.steps=5 with the recipes' own warm-ups (up to 100 steps): scaled down, not refused; the
# online probe on 64 training images (its default 1,000 were half of a smoke run's time)
FAST = ["--set", "train.steps=5", "--set", "train.batch_size=8",
        "--set", "train.eval_batches=1", "--set", "log.probe_train=64",
        "--set", "log.every=1", "--set", "log.eval_every=4", "--set", "log.render_every=4",
        "--set", "log.checkpoint_every=4", "--set", "log.render_examples=8", "--device", "cpu"]


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_every_shipped_recipe_runs_a_few_steps(recipe, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    data = yaml.safe_load(recipe.read_text())
    root = data["data"].get("root")
    if root is not None and not (ROOT / root).exists():
        pytest.skip(f"{recipe.name}: data.root is a placeholder for a downloaded data set; "
                    "tests/test_layouts.py trains it on a fake copy of the release")
    extra = []
    fields = {f.name for f in dataclasses.fields(registry.get_dataset(data["data"]["name"]).Config)}
    for key in ("val_size", "test_size"):  # keep synthetic splits small for a smoke run
        if key in fields:
            extra += ["--set", f"data.{key}=8"]
    if "ais_betas" in data.get("model", {}):  # AIS at its recipe's 1,000-2,000 temperatures: seconds
        extra += ["--set", "model.ais_betas=50", "--set", "model.ais_runs=10"]
    if data.get("model", {}).get("backbone") == "brain_tumor_nn":  # 201 M weights at 128 x 96
        extra += ["--set", "data.size=[32,24]"]
    assert main(["train", str(recipe), "--out", str(tmp_path), "--quiet", *FAST, *extra]) == 0
    runs = list(tmp_path.glob(f"{recipe.stem}/*/metrics.json"))
    assert len(runs) == 1


def _bad(tmp_path, text: str) -> Path:
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    return p


GOOD = "family: ae\ndata: {name: digits}\nmodel: {arch: dense, hidden: [16], bottleneck: 4}\n"


@pytest.mark.parametrize("text, args, expected", [
    (GOOD + "trian: {steps: 3}\n", [], "unknown key 'trian'; did you mean 'train'"),
    (GOOD + "train: {stesp: 3}\n", [], "train.stesp: unknown key 'stesp'; did you mean 'steps'"),
    (GOOD + "train: {steps: many}\n", [], "train.steps: expected an integer"),
    (GOOD + "train: {lr: -0.1}\n", [], "train.lr: expected a number > 0, got -0.1"),
    (GOOD, ["--set", "train.lr=-1"], "--set: train.lr: expected a number > 0"),
    (GOOD, ["--set", "model.botleneck=3"], "did you mean 'bottleneck'"),
    (GOOD + "train: {steps: 3\n", [], "malformed YAML at line"),
    ("family: ae\ndata: {name: folder, root: /no/such/folder}\n", [], "data.root: file or folder not found"),
    ("family: aee\ndata: {name: digits}\n", [], "unknown family 'aee'; did you mean 'ae'"),
    ("family: ae\ndata: {name: digit}\n", [], "unknown data set 'digit'; did you mean 'digits'"),
    (GOOD.replace("bottleneck: 4", "bottleneck: 0"), [], "model.bottleneck: expected a number >= 1, got 0"),
])
def test_bad_recipes_give_one_clear_error(tmp_path, capsys, text, args, expected):
    recipe = _bad(tmp_path, text)
    out = tmp_path / "runs"
    assert main(["train", str(recipe), "--out", str(out), *args]) == 2
    err = capsys.readouterr().err
    assert expected in err, err
    assert err.startswith("error: ") and "Traceback" not in err
    assert not out.exists(), "a failed recipe must not leave a run folder"


def test_missing_recipe_file(tmp_path, capsys):
    assert main(["train", str(tmp_path / "nope.yaml")]) == 2
    assert "recipe file not found" in capsys.readouterr().err


def test_console_script_exit_code_and_no_traceback(tmp_path):
    recipe = _bad(tmp_path, GOOD + "train: {lr: -1}\n")
    proc = subprocess.run([sys.executable, "-m", "genlab", "train", str(recipe),
                           "--out", str(tmp_path / "r")],
                          check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "train.lr" in proc.stderr and "Traceback" not in proc.stderr


def test_help_explains_every_option_with_an_example(capsys):
    for cmd in (["train"], ["data", "brain"], ["export"], ["list"], ["cas"]):
        assert main([*cmd, "--help"]) == 0
        text = capsys.readouterr().out
        assert "Example" in text, cmd


def test_list_shows_families_data_and_recipes(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for word in ("ae", "dae", "digits", "brain", "folder", "dae_brain.yaml"):
        assert word in out
    assert main(["list", "--keys", "dae"]) == 0
    assert "model.corruption.level" in capsys.readouterr().out


def test_resume_and_export_commands(tmp_path, capsys):
    recipe = _bad(tmp_path, GOOD + "train: {steps: 6, batch_size: 8}\nlog: {checkpoint_every: 2}\n")
    assert main(["train", str(recipe), "--out", str(tmp_path / "runs"), "--quiet", "--device", "cpu"]) == 0
    run = next((tmp_path / "runs" / "bad").iterdir())
    (run / "export" / "encoder.json").unlink()
    assert main(["export", str(run)]) == 0
    assert (run / "export" / "encoder.json").is_file()
    assert main(["train", "--resume", str(run), "--set", "train.steps=8", "--quiet"]) == 0
    assert '"steps": 8' in (run / "metrics.json").read_text()
    assert main(["export", str(tmp_path)]) == 2
    assert main(["train", str(recipe), "--resume", str(run)]) == 2


# ----------------------------------------------------------------------------- sample
@pytest.fixture(scope="module")
def gibbs_runs(tmp_path_factory) -> dict[str, Path]:
    """rbm_digits and dbn_digits, a few steps each."""
    out = tmp_path_factory.mktemp("gibbs_runs")
    runs = {}
    for name in ("rbm_digits", "dbn_digits"):
        assert main(["train", str(ROOT / "recipes" / f"{name}.yaml"), "--out", str(out), "--quiet", *FAST,
                     "--set", "model.ais_runs=4", "--set", "model.ais_betas=20"]) == 0
        runs[name] = next((out / name).iterdir())
    return runs


@pytest.mark.parametrize("name", ["rbm_digits", "dbn_digits"])
def test_sample_writes_a_gibbs_grid_from_rbm_and_dbn_runs(gibbs_runs, name, tmp_path, capsys):
    from PIL import Image

    run = gibbs_runs[name]
    grid, again = tmp_path / "grid.png", tmp_path / "again.png"
    assert main(["sample", str(run), "--n", "16", "--nrow", "4", "--out", str(grid)]) == 0
    assert f"wrote 16 samples to {grid}" in capsys.readouterr().out
    with Image.open(grid) as im:
        assert im.format == "PNG" and im.size[0] == im.size[1]  # 4 x 4 square digits
    assert main(["sample", str(run), "--n", "16", "--nrow", "4", "--out", str(again)]) == 0
    assert grid.read_bytes() == again.read_bytes()  # the same seed gives the same grid
    capsys.readouterr()
    assert main(["sample", str(run), "--n", "4", "--out", str(tmp_path / "c.png"), "--class", "3"]) == 2
    assert "this model is unconditional" in capsys.readouterr().err


def test_sample_on_a_classifier_run_exits_2_with_one_line(tmp_path, capsys):
    recipe = _bad(tmp_path, "family: classifier\ndata: {name: digits}\n"
                            "model: {backbone: vgg_sep, channels: [4, 8, 8]}\n"
                            "train: {steps: 2, batch_size: 8, eval_batches: 1}\n")
    assert main(["train", str(recipe), "--out", str(tmp_path / "runs"), "--quiet", "--device", "cpu"]) == 0
    run = next((tmp_path / "runs" / "bad").iterdir())
    capsys.readouterr()
    assert main(["sample", str(run), "--out", str(tmp_path / "grid.png")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: genlab sample needs a family that draws new samples; 'classifier'")
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "grid.png").exists()
    assert main(["sample", str(tmp_path), "--out", str(tmp_path / "grid.png")]) == 2
    err = capsys.readouterr().err
    assert "not a genlab run folder" in err and err.count("\n") == 1


def test_sample_per_class_draws_one_row_per_class(gibbs_runs, tmp_path, capsys):
    """A conditional GAN's grid, one row per class in order; an unconditional model refuses."""
    from PIL import Image

    out = tmp_path / "runs"
    assert main(["train", str(ROOT / "recipes" / "gan_digits.yaml"), "--out", str(out), "--quiet", *FAST,
                 "--set", "model.conditional=true"]) == 0
    run = next((out / "gan_digits").iterdir())
    grid = tmp_path / "rows.png"
    assert main(["sample", str(run), "--per-class", "--n", "3", "--out", str(grid)]) == 0
    assert "3 samples of each class, one row per class" in capsys.readouterr().out
    with Image.open(grid) as im:  # 10 digit classes x 3 samples of 8 x 8 (+ padding)
        assert im.size[1] > 3 * im.size[0]
    assert main(["sample", str(run), "--per-class", "--class", "3", "--out", str(grid)]) == 2
    assert main(["sample", str(gibbs_runs["rbm_digits"]), "--per-class", "--out", str(grid)]) == 2
    assert "unconditional" in capsys.readouterr().err
