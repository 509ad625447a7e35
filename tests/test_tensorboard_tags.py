"""What TensorBoard shows of a run is what the README promises: the tag names its "Watching a run
in TensorBoard" section lists are tags the headline run writes, every render keeps its step-0
frame in a TensorBoard started as printed, and every family (the DQN included) renders its
first-layer filters and feature maps."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import yaml
from conftest import tiny_recipe

from genlab.cli import main
from genlab.core.recipe import from_mapping, load_recipe
from genlab.engine.renders import TENSORBOARD_IMAGES, render_steps, tensorboard_images_flag

ROOT = Path(__file__).resolve().parents[1]
TB_SIZES = {"images": 0, "histograms": 0, "tensors": 0, "scalars": 0}

# Recipes that render more often than TensorBoard keeps by default; the README's section on
# each tells the reader to start TensorBoard with the flag the run prints.
MANY_RENDERS = {"dbn_digits", "rbm_digits", "dbn_mnist"}


def _readme_tags() -> list[str]:
    """The backticked tag names of the README's bullet list under "Watching a run in
    TensorBoard" (e.g. `train/loss`, `renders/filters`, `weights/*`)."""
    text = (ROOT / "README.md").read_text()
    m = re.search(r"^#+ Watching a run in TensorBoard\n(.*?)^#", text, re.DOTALL | re.MULTILINE)
    assert m, "README.md has no section 'Watching a run in TensorBoard'"
    bullets = "\n".join(ln for ln in m.group(1).splitlines()
                        if ln.startswith(("- ", "  ")) and not ln.startswith("    "))
    tags = [t for t in re.findall(r"`([^`\s]+)`", bullets)
            if re.fullmatch(r"[a-z_]+(/[A-Za-z0-9_.*]+)+", t)]
    assert len(tags) >= 8, tags
    return tags


def _event_tags(run_dir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance=TB_SIZES)
    acc.Reload()
    return acc, {t for kind in ("scalars", "images", "histograms", "tensors")
                 for t in acc.Tags()[kind]}


def test_readme_tag_names_are_the_tags_the_headline_run_writes(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    small = ["--set", "train.steps=4", "--set", "train.batch_size=4", "--set", "train.eval_batches=1",
             "--set", "data.val_size=8", "--set", "data.test_size=8", "--set", "log.every=2",
             "--set", "log.eval_every=2", "--set", "log.render_every=2", "--set", "log.checkpoint_every=4",
             "--set", "log.render_examples=4", "--set", "log.probe_train=16", "--set", "log.probe_val=8",
             "--device", "cpu"]
    assert main(["train", "recipes/dae_brain.yaml", "--out", str(tmp_path), *small]) == 0
    out = capsys.readouterr().out
    assert "--samples_per_plugin images=100" in out  # the printed TensorBoard command
    [run_dir] = [p.parent for p in tmp_path.glob("dae_brain/*/metrics.json")]
    acc, written = _event_tags(run_dir)
    missing = [t for t in _readme_tags()
               if not (any(w.startswith(t[:-1]) for w in written) if t.endswith("*") else t in written)]
    assert not missing, f"README names tags the run does not write: {missing}; it writes {sorted(written)}"
    for tag in acc.Tags()["images"]:  # every render from the untrained model (step 0) to the end
        assert [e.step for e in acc.Images(tag)] == [0, 2, 4], tag


@pytest.mark.parametrize("recipe", sorted((ROOT / "recipes").glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_recipes_keep_step_0_in_tensorboard(recipe):
    raw = yaml.safe_load(recipe.read_text())
    root = raw["data"].get("root")
    # a downloaded data set's recipe names a placeholder root; any existing folder lets it load
    sets = [f"data.root={ROOT}"] if root is not None and not (ROOT / root).exists() else []
    rec = load_recipe(recipe, sets)
    n = len(render_steps(rec.log.render_every, rec.train.steps))
    if rec.name not in MANY_RENDERS:
        assert n <= TENSORBOARD_IMAGES, f"{rec.name}: {n} renders per tag, TensorBoard keeps 10"
    flag = tensorboard_images_flag(rec.log.render_every, rec.train.steps)
    assert int(flag.rsplit("=", 1)[1]) >= n


def test_images_flag_grows_with_the_render_count():
    assert tensorboard_images_flag(250, 1500) == "--samples_per_plugin images=100"
    assert tensorboard_images_flag(100, 20_000) == "--samples_per_plugin images=300"  # 201 renders


def test_dqn_run_renders_its_first_layer_filters_and_feature_maps(tmp_path):
    from genlab.engine.trainer import Trainer

    r = tiny_recipe("dqn", steps=6)
    t = Trainer(from_mapping(r), out_root=tmp_path, quiet=True, progress=False)
    t.run()
    acc, _ = _event_tags(t.run_dir)
    images = set(acc.Tags()["images"])
    assert {"renders/filters", "renders/feature_maps", "renders/episode",
            "renders/q_heatmap"} <= images
    assert acc.Images("renders/filters")[0].step == 0
    assert (t.run_dir / "figures" / "filters.png").is_file()


@pytest.mark.parametrize("arch, extra, channels, maps", [
    ("conv", {}, 8, 3), ("mlp", {}, 8, 1), ("plan", {"plan_iters": 3}, 3, 3),
    ("mlp", {"hidden": []}, 8, 1)])
def test_every_q_network_shows_its_first_layer(arch, extra, channels, maps):
    from genlab.envs.maze import MazeConfig, generate_layout
    from genlab.nn.qnet import QNet, QNetConfig
    from genlab.viz.maze import qnet_filters, qnet_maps, start_observation

    cfg = MazeConfig()
    obs = start_observation(generate_layout(cfg, 3), torch.device("cpu"), cfg)
    net = QNet(tuple(obs.shape[1:]), QNetConfig(arch=arch, **extra))
    kernels, read, acts = net.first_layer(obs)
    assert kernels.shape[1] == len(read) == channels and acts.dim() == maps
    for img in (qnet_filters(kernels, read), qnet_maps(acts)):
        assert img.shape[0] == 1 and img.min() >= 0 and img.max() <= 1
