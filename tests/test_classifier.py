"""The classifier family: backbones, transfer from every kind of exported encoder, training
modes (linear probe, fine-tune, gradual unfreezing), the eval/predict/explain commands and the
image-folder errors. CPU, small."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_FAMILIES, tiny_recipe
from PIL import Image

from genlab.cli import main
from genlab.core import registry
from genlab.core.errors import CheckpointError, GenlabError, RecipeError
from genlab.core.recipe import from_mapping
from genlab.core.schema import build
from genlab.data.base import DataInfo
from genlab.data.subset import labelled_mask, subset_indices
from genlab.engine.trainer import Trainer
from genlab.families.classifier import Classifier, ClassifierConfig
from genlab.families.init_from import load_bundle_weights
from genlab.nn.backbones import BACKBONES, build_backbone, clahe

registry.load_all()
CONV = [b for b in BACKBONES if b != "encoder"]


def _train(mapping, runs, **kw):
    t = Trainer(from_mapping(mapping), out_root=runs, quiet=True, **kw)
    return t, t.run()


def _cls(model=None, data=None, steps=6, **train):
    """The tiny classifier recipe; `model` is merged into its model section, or replaces it
    when it names its own backbone or init."""
    r = tiny_recipe("classifier", steps=steps, **train)
    if model is not None:
        r["model"] = model if ("init" in model or "backbone" in model) else {**r["model"], **model}
    if data is not None:
        r["data"] = data
    return r


def _cfg(**kw) -> ClassifierConfig:
    return build(ClassifierConfig, kw, "model")


# ----------------------------------------------------------------------------- backbones
@pytest.mark.parametrize("shape", [(1, 128, 96), (1, 8, 8), (3, 64, 64)], ids=str)
@pytest.mark.parametrize("name", CONV)
def test_backbone_builds_and_runs(name, shape):
    if name == "brain_tumor_nn" and shape != (1, 8, 8):
        # its dense layer reads the whole map after two poolings: 201 M weights at 128 x 96
        pytest.skip("covered by the 8 x 8 shape and the recipe smoke run at 32 x 24")
    torch.manual_seed(0)
    bb = build_backbone(name, list(shape)).eval()
    with torch.no_grad():
        f = bb(torch.rand(2, *shape))
    assert f.shape == (2, bb.num_features) and torch.isfinite(f).all()
    assert bb.cam_layer is not None and bb.stages()
    acts = []
    h = bb.cam_layer.register_forward_hook(lambda m, i, o: acts.append(o))
    with torch.no_grad():
        bb(torch.rand(1, *shape))
    h.remove()
    assert acts[0].dim() == 4  # Grad-CAM needs a spatial map


def test_resnet18_pretrained_never_downloads(tmp_path):
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path))
    try:
        with pytest.raises(GenlabError, match="never downloads"):
            build_backbone("resnet18", [1, 128, 96], pretrained=True)
    finally:
        torch.hub.set_dir(old)


def test_clahe_equalises_and_passes_gradients():
    g = torch.Generator().manual_seed(0)
    x = 0.4 + 0.1 * torch.rand(2, 1, 32, 24, generator=g)  # low contrast
    y = clahe(x, clip_limit=4.0, grid=(4, 4))
    assert y.shape == x.shape and 0 <= y.min() and y.max() <= 1
    assert y.std() > 2 * x.std()
    flat = clahe(torch.full((1, 1, 16, 16), 0.3), grid=(2, 2))
    assert torch.allclose(flat, flat.flatten()[0].expand_as(flat))  # a flat image stays flat
    bb = build_backbone("vgg_sep", [1, 32, 24], channels=[4, 8], clahe=True)
    xi = x.clone().requires_grad_(True)
    bb(xi).sum().backward()
    assert xi.grad is not None and xi.grad.abs().sum() > 0


# ----------------------------------------------------------------------------- transfer
ENCODER_FAMILIES = [f for f in ("ae", "dae", "dbn", "gan")
                    if f in registry.FAMILIES and f in TINY_FAMILIES]


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    """One exported encoder per family that exports one, trained a few steps on digits."""
    runs = tmp_path_factory.mktemp("bundles")
    out = {}
    for fam in ENCODER_FAMILIES:
        t = Trainer(from_mapping(tiny_recipe(fam, steps=4)), out_root=runs, quiet=True)
        t.run()
        out[fam] = t.run_dir
    return out


@pytest.mark.parametrize("family", ENCODER_FAMILIES)
def test_every_exported_encoder_loads_with_a_report(family, bundles, runs, capsys):
    from safetensors.torch import load_file

    run_dir = bundles[family]
    t, res = _train(_cls({"init": str(run_dir), "mode": "linear_probe"}, steps=4), runs)
    printed = capsys.readouterr().out
    rep = t.model.init_report
    bundle = load_file(str(run_dir / "export" / "encoder.safetensors"))
    assert {d["name"] for d in rep["loaded"]} == set(bundle)
    assert rep["skipped"] == [] and rep["missing"] == []
    assert f"{len(bundle)} tensors loaded, 0 skipped, 0 missing" in printed
    own = t.model.backbone.encoder.state_dict()
    for k, v in bundle.items():  # frozen: still exactly the bundle's weights after training
        torch.testing.assert_close(own[k], v, rtol=0, atol=0)
    assert math.isfinite(res["test"]["acc"])
    meta = json.loads((t.run_dir / "export" / "encoder.json").read_text())
    assert meta["init_report"]["loaded"] == rep["loaded"]


def test_sigmoid_mlp_bundle_loads(tmp_path, monkeypatch):
    """A DBN-style encoder (Linear + Sigmoid stack), exported without the DBN family."""
    from genlab.families.base import EncoderSpec
    from genlab.families.export import save_encoder
    from genlab.nn import ENCODER_BUILDERS
    from genlab.nn.dbn import sigmoid_mlp

    if "sigmoid_mlp" not in ENCODER_BUILDERS:
        monkeypatch.setitem(ENCODER_BUILDERS, "sigmoid_mlp", sigmoid_mlp)
    info = DataInfo("digits", (1, 8, 8), 10, tuple(str(i) for i in range(10)))
    enc = sigmoid_mlp([64, 32, 16], [1, 8, 8])
    save_encoder(EncoderSpec("sigmoid_mlp", {"sizes": [64, 32, 16], "input_shape": [1, 8, 8]}, enc, 16),
                 tmp_path, family="dbn", info=info, recipe_name="x", step=1)
    m = Classifier(_cfg(init=str(tmp_path), mode="finetune"), info)
    assert len(m.init_report["loaded"]) == 4 and m.backbone.num_features == 16
    assert not m.can_explain  # no conv trunk: no Grad-CAM
    assert m(torch.rand(3, 1, 8, 8)).shape == (3, 10)
    assert len(m.backbone.stages()) == 2


def _old_bundle(folder: Path) -> tuple[torch.nn.Module, dict]:
    """An encoder bundle exactly as genlab 0.1.0 wrote it before the bundle code was shared:
    safetensors.save_file, then json.dumps(meta, indent=2)."""
    from safetensors.torch import save_file

    from genlab.nn.blocks import ConvEncoder

    args = {"in_shape": [1, 16, 16], "channels": [4, 8], "bottleneck": 6}
    enc = ConvEncoder(**args)
    meta = {"format": "genlab-encoder", "version": 1, "genlab_version": "0.1.0", "family": "ae",
            "builder": "conv_encoder", "config": args, "out_features": 6,
            "input_shape": [1, 16, 16], "value_range": [0.0, 1.0],
            "normalization": "inputs are float32 in value_range, shaped (B, *input_shape); no mean/std",
            "data": "digits", "class_names": ["a", "b"], "recipe": "x", "step": 3}
    folder.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in enc.state_dict().items()}, str(folder / "encoder.safetensors"))
    (folder / "encoder.json").write_text(json.dumps(meta, indent=2) + "\n")
    return enc, meta


def test_bundles_written_before_load_and_new_ones_match_them(tmp_path):
    """Bundles from before genlab.core.bundle still load (run folder, folder or file), and a
    bundle written now has the same files and the same JSON."""
    from genlab import load_encoder
    from genlab.families.base import EncoderSpec
    from genlab.families.export import read_bundle_meta, save_encoder

    torch.manual_seed(0)
    enc, meta = _old_bundle(tmp_path / "run" / "export")
    x = torch.rand(3, 1, 16, 16)
    for where in (tmp_path / "run", tmp_path / "run" / "export",
                  tmp_path / "run" / "export" / "encoder.json"):
        got = load_encoder(where)
        assert got.bundle_meta == meta
        torch.testing.assert_close(got(x), enc.eval()(x), rtol=0, atol=0)
    assert read_bundle_meta(tmp_path / "run")[0] == meta
    m = Classifier(_cfg(init=str(tmp_path / "run"), mode="linear_probe"),
                   DataInfo("digits", (1, 16, 16), 2, ("a", "b")))
    assert len(m.init_report["loaded"]) == len(enc.state_dict()) and not m.init_report["missing"]
    # written now: same names, same JSON text (keys and order) as the old writer gave
    info = DataInfo("digits", (1, 16, 16), 2, ("a", "b"))
    save_encoder(EncoderSpec("conv_encoder", meta["config"], enc, 6), tmp_path / "new",
                 family="ae", info=info, recipe_name="x", step=3)
    new_meta = json.loads((tmp_path / "new" / "encoder.json").read_text())
    assert list(new_meta) == list(meta)
    assert {k: v for k, v in new_meta.items() if k != "genlab_version"} == \
        {k: v for k, v in meta.items() if k != "genlab_version"}
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == ["encoder.json", "encoder.safetensors"]
    # not a bundle / another format: one clear CheckpointError
    with pytest.raises(CheckpointError, match="no encoder bundle"):
        load_encoder(tmp_path)
    (tmp_path / "new" / "encoder.json").write_text(json.dumps({**meta, "format": "other"}))
    with pytest.raises(CheckpointError, match="not a genlab encoder bundle"):
        load_encoder(tmp_path / "new")


def _folder(root: Path, size=(16, 16), per_class=14, classes=("a", "b"), mode="L", skew=None) -> Path:
    rng = np.random.default_rng(0)
    for i, c in enumerate(classes):
        (root / c).mkdir(parents=True, exist_ok=True)
        n = per_class if skew is None else skew[i]
        for j in range(n):
            shape = (size[0], size[1], 3) if mode == "RGB" else size
            a = (rng.random(shape) * 120 + 100 * i).astype(np.uint8)
            Image.fromarray(a, mode).save(root / c / f"{j:03d}.png")
    return root


def test_shape_mismatch_is_an_error_unless_allowed(bundles, tmp_path, capsys):
    if "dae" not in bundles:
        pytest.skip("needs the conv autoencoder")
    root = _folder(tmp_path / "imgs")
    data = {"name": "folder", "root": str(root), "size": [16, 16], "channels": 1}
    with pytest.raises(CheckpointError, match="allow_shape_mismatch"):
        Trainer(from_mapping(_cls({"init": str(bundles["dae"]), "mode": "finetune"}, data=data)),
                out_root=tmp_path / "runs", quiet=True)
    mapping = _cls({"init": str(bundles["dae"]), "mode": "finetune", "allow_shape_mismatch": True},
                   data=data)
    t = Trainer(from_mapping(mapping), out_root=tmp_path / "runs", quiet=True)
    rep = t.model.init_report
    skipped = {d["name"]: d["reason"] for d in rep["skipped"]}
    assert list(skipped) == ["head.1.weight"] and "shape differs" in skipped["head.1.weight"]
    assert "head.1.bias" in {d["name"] for d in rep["loaded"]}
    assert any("rebuilt for input [1, 16, 16]" in n for n in rep["notes"])
    assert "skipped: head.1.weight" in capsys.readouterr().out
    # the loader itself: a mismatching tensor fails, missing ones are reported
    from genlab.nn.blocks import ConvEncoder

    cfg = TINY_FAMILIES["dae"]["model"]
    wider = ConvEncoder([1, 16, 16], cfg["channels"], cfg["bottleneck"])
    weights = Path(bundles["dae"]) / "export" / "encoder.safetensors"
    with pytest.raises(CheckpointError, match="shape mismatch: head.1.weight"):
        load_bundle_weights(wider, weights, False)
    bad = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 4))
    r = load_bundle_weights(bad, weights, True)
    assert r["loaded"] == [] and {d["name"] for d in r["missing"]} == {"0.weight", "0.bias"}


# ----------------------------------------------------------------------------- modes
def _bn_state(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def test_linear_probe_freezes_parameters_and_batchnorm(runs):
    t = Trainer(from_mapping(_cls({"backbone": "model2", "channels": [4, 8], "mode": "linear_probe"},
                                  steps=6)), out_root=runs, quiet=True)
    m = t.model
    before, head_before = _bn_state(m.backbone), _bn_state(m.head)
    assert any("running_mean" in k for k in before)
    assert not any(p.requires_grad for p in m.backbone.parameters())
    assert [len(g["params"]) for g in t.optimizers["main"].param_groups] == [2]  # the head only
    m.train()
    assert m.training and not any(x.training for x in m.backbone.modules())
    t.run()
    after = m.backbone.state_dict()
    for k, v in before.items():
        assert torch.equal(v, after[k]), k  # weights and running statistics unchanged
    assert any(not torch.equal(v, m.head.state_dict()[k]) for k, v in head_before.items())


def test_finetune_uses_the_encoder_lr_multiplier(runs):
    t = Trainer(from_mapping(_cls({"mode": "finetune", "encoder_lr_mult": 0.25}, lr=4e-3)),
                out_root=runs, quiet=True)
    groups = t.optimizers["main"].param_groups
    assert [g["lr"] for g in groups] == pytest.approx([4e-3, 1e-3])
    head = {id(p) for p in t.model.head.parameters()}
    assert {id(p) for p in groups[0]["params"]} == head
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in t.model.backbone.parameters()}


def test_gradual_unfreezing_follows_the_schedule(runs):
    t = Trainer(from_mapping(_cls({"mode": "gradual", "unfreeze_every": 2}, steps=8)),
                out_root=runs, quiet=True)
    m = t.model
    stages = m._stages
    assert len(stages) == 3  # vgg_sep's three conv blocks (its pooling neck has no parameters)
    init = [_bn_state(s) for s in stages]
    assert [m.unfrozen_at(s) for s in range(0, 10, 2)] == [0, 1, 2, 3, 3]
    assert not any(p.requires_grad for p in m.backbone.parameters())
    t.run(stop_at=5)  # steps 0..4 taken: the last one (step 4) had the top 2 stages unfrozen
    trainable = [all(p.requires_grad for p in s.parameters()) for s in stages]
    assert trainable == [False, True, True]
    for k, v in stages[0].state_dict().items():  # the still-frozen stage never moved (BN stats too)
        assert torch.equal(v, init[0][k]), k
    assert any(not torch.equal(v, init[2][k]) for k, v in stages[2].state_dict().items())


def test_config_cross_checks():
    with pytest.raises(RecipeError, match="needs init"):
        _cfg(backbone="encoder")
    with pytest.raises(RecipeError, match="scratch"):
        _cfg(init=".", mode="scratch")
    with pytest.raises(RecipeError, match="resnet18"):
        _cfg(backbone="vgg_sep", pretrained=True, mode="finetune")
    with pytest.raises(RecipeError, match="model.init: file or folder not found"):
        _cfg(init="/no/such/bundle", mode="finetune")


# ----------------------------------------------------------------------------- data hooks
def test_label_subset_is_nested_and_keeps_every_class():
    y = torch.arange(1000) % 5
    small, big = subset_indices(y, 0.1, 0), subset_indices(y, 0.3, 0)
    assert set(small.tolist()) <= set(big.tolist())
    assert 60 < len(small) < 140 and set(y[small].tolist()) == set(range(5))
    assert subset_indices(y[:7], 0.01, 0).numel() == 5  # at least one per class
    mask = labelled_mask(torch.arange(1000), 0.1, 0)
    assert set(torch.nonzero(mask).flatten().tolist()) <= set(small.tolist())


# ----------------------------------------------------------------------------- commands
@pytest.fixture(scope="module")
def brain_run(tmp_path_factory):
    """A tiny 4-syndrome brain run (a few steps: the numbers mean nothing, the plumbing does)."""
    runs = tmp_path_factory.mktemp("brain_runs")
    r = tiny_recipe("classifier", steps=4)
    r["data"] = {"name": "brain", "mode": "hard", "val_size": 16, "test_size": 24, "train_size": 64}
    r["model"] = {"backbone": "vgg_sep", "channels": [4, 8, 8, 8], "stem_stride": 2}
    t = Trainer(from_mapping(r), out_root=runs, quiet=True)
    t.run()
    return t.run_dir


def test_eval_writes_metrics_and_figures(brain_run, capsys):
    assert main(["eval", str(brain_run), "--split", "test"]) == 0
    out = capsys.readouterr().out
    assert "rows = actual class, columns = predicted class" in out and "pointing game" in out
    d = brain_run / "eval" / "test"
    for name in ("metrics.json", "confusion_matrix.png", "roc.png", "roc_lesion.png"):
        assert (d / name).is_file(), name
    m = json.loads((d / "metrics.json").read_text())
    assert m["n"] == 24 and m["confusion_matrix"]["convention"].startswith("rows = actual")
    assert m["binary"]["positive"] == "A+B+C" and "auc" in m["binary"]
    loc = m["localisation"]
    assert 0 <= loc["mass_base"] < 0.1 and loc["n"] > 0
    assert main(["eval", str(brain_run), "--split", "val", "--data", "mode=easy", "--limit", "8"]) == 0
    assert json.loads((brain_run / "eval" / "val" / "metrics.json").read_text())["n"] == 8


def test_predict_on_a_png_from_genlab_data_brain(brain_run, tmp_path, capsys):
    assert main(["data", "brain", "--out", str(tmp_path / "png"), "--n", "4", "--split", "test"]) == 0
    pngs = sorted((tmp_path / "png").glob("*/*.png"))
    assert len(pngs) == 4
    capsys.readouterr()
    assert main(["predict", str(brain_run), *map(str, pngs)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4 and all("P(lesion)" in line and "Z " in line for line in lines)
    assert main(["predict", str(brain_run), str(pngs[0]), "--json"]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["class"] in "ABCZ" and abs(sum(rec["probabilities"].values()) - 1) < 1e-5
    assert isinstance(rec["lesion"], bool) and 0 <= rec["p_lesion"] <= 1


def test_explain_writes_overlays(brain_run, tmp_path, capsys):
    img = tmp_path / "scan.png"
    Image.fromarray((np.random.default_rng(0).random((200, 150)) * 255).astype(np.uint8)).save(img)
    assert main(["explain", str(brain_run), str(img), "--out", str(tmp_path / "x")]) == 0
    assert (tmp_path / "x" / "scan_gradcam.png").is_file()
    assert main(["explain", str(brain_run), "--split", "test", "--n", "3", "--out",
                 str(tmp_path / "y"), "--class", "A"]) == 0
    assert len(list((tmp_path / "y").glob("test_*_gradcam.png"))) == 3


def test_bad_inputs_name_the_file(brain_run, tmp_path, capsys):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really" * 5)
    assert main(["predict", str(brain_run), str(broken)]) == 2
    assert "broken.png" in capsys.readouterr().err
    assert main(["explain", str(brain_run), "--out", str(tmp_path)]) == 2
    assert main(["eval", str(tmp_path)]) == 2
    assert "not a genlab run folder" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["corrupt", "wrong_mode"])
def test_folder_with_a_bad_file_names_it(kind, tmp_path, capsys):
    root = _folder(tmp_path / "imgs")
    if kind == "corrupt":  # a truncated PNG
        (root / "b" / "bad_one.png").write_bytes((root / "a" / "000.png").read_bytes()[:60])
    else:  # a valid TIFF in a colour mode (CIE Lab) that Pillow cannot convert to grayscale
        Image.new("LAB", (16, 16)).save(root / "b" / "bad_one.tif")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(json.dumps(_cls(data={"name": "folder", "root": str(root), "size": [16, 16]})))
    assert main(["train", str(recipe), "--out", str(tmp_path / "runs"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "bad_one." in err and "cannot read image" in err
    assert not (tmp_path / "runs").exists()


def test_folder_rgb_with_augmentation_clahe_and_weights(tmp_path, runs):
    root = _folder(tmp_path / "rgb", mode="RGB", skew=(24, 12))
    data = {"name": "folder", "root": str(root), "size": [16, 16], "channels": 3}
    model = {"backbone": "model1", "channels": [4, 8], "clahe": True, "class_weights": "balanced",
             "augment": {"hflip": True, "degrees": 10, "translate": 0.1, "brightness": 0.2}}
    t, res = _train(_cls(model, data=data, steps=4), runs)
    assert math.isfinite(res["test"]["loss"]) and t.model.class_seen.sum() > 0
    assert t.model.backbone.pre.__class__.__name__ == "CLAHE"


def test_label_fraction_masks_the_loss(runs):
    """label_fraction < 1: only the labelled examples of each batch enter the loss."""
    t = Trainer(from_mapping(_cls({"label_fraction": 0.25}, steps=4)), out_root=runs, quiet=True)
    seen = []
    orig = t.model.augment
    t.model.augment = lambda x: (seen.append(len(x)), orig(x))[1]  # batch size after the mask
    res = t.run()
    assert seen and all(0 < n < 16 for n in seen) and math.isfinite(res["test"]["loss"])
