"""Fine-tuning controls of the classifier: named-layer freezing, a dense head with dropout,
Grad-CAM at a named layer, the published Model 2 and brain_tumor_nn layouts, top-5 and the
random-guess baseline. CPU, small."""
from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_recipe
from torch import nn

from genlab.cli import main
from genlab.core import registry
from genlab.core.recipe import from_mapping
from genlab.engine.trainer import Trainer
from genlab.nn.backbones import build_backbone
from genlab.nn.layer_names import named_layers

registry.load_all()


def _digits(steps=4, **model):
    r = tiny_recipe("classifier", steps=steps)
    r["model"] = {**r["model"], **model}
    return r


FROZEN = ("block1", "features.1.0")


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """A tiny 10-digit run with two named layers frozen; `before` holds their state at the start
    (and that of a layer that trains)."""
    t = Trainer(from_mapping(_digits(steps=4, freeze=list(FROZEN))), out_root=tmp_path_factory.mktemp("ft"),
                quiet=True)
    layers = named_layers(t.model.backbone)
    t.before = {n: {k: v.clone() for k, v in layers[n].state_dict().items()}
                for n in (*FROZEN, "features.1.3")}
    t.in_optimizer = {id(p) for g in t.optimizers["main"].param_groups for p in g["params"]}
    t.model.train()
    t.train_modes = {n: layers[n].training for n in ("block1", "features.1")}
    t.run()
    return t


# ----------------------------------------------------------------------------- layouts
def _convs(bb):
    return [m.out_channels for m in bb.features.modules() if isinstance(m, nn.Conv2d)]


def test_model2_is_the_published_table():
    bb = build_backbone("model2", [3, 64, 64])
    assert _convs(bb) == [32, 32, 32, 64, 128, 128]
    kinds = [[type(m).__name__ for m in block] for block in bb.features]
    assert kinds == [["Conv2d", "ReLU", "Conv2d", "ReLU", "MaxPool2d", "BatchNorm2d", "Dropout"],
                     ["Conv2d", "ReLU", "Conv2d", "ReLU", "MaxPool2d", "BatchNorm2d", "Dropout"],
                     ["Conv2d", "ReLU", "MaxPool2d"],
                     ["Conv2d", "ReLU", "MaxPool2d", "BatchNorm2d"]]
    dense = [m.out_features for m in bb.neck if isinstance(m, nn.Linear)]
    assert dense == [512, 1024] and isinstance(bb.neck[1], nn.Dropout) and bb.num_features == 1024
    assert bb(torch.rand(2, 3, 64, 64)).shape == (2, 1024)
    assert _convs(build_backbone("model2", [1, 8, 8], channels=[4, 8])) == [4, 4, 4, 8]


def test_brain_tumor_nn_pools_between_its_convs():
    bb = build_backbone("brain_tumor_nn", [1, 16, 12])
    assert _convs(bb) == [16, 64, 256]
    pools = [sum(isinstance(m, nn.MaxPool2d) for m in block) for block in bb.features]
    assert pools == [1, 1, 0]  # between the convs, none after the last
    assert bb.neck[2].in_features == 256 * 4 * 3 and bb.num_features == 1024


# ----------------------------------------------------------------------------- freezing
def test_freeze_keeps_named_layers_bit_identical(digits_run):
    layers = named_layers(digits_run.model.backbone)
    assert not any(p.requires_grad for n in FROZEN for p in layers[n].parameters())
    assert not digits_run.in_optimizer & {id(p) for n in FROZEN for p in layers[n].parameters()}
    assert digits_run.train_modes == {"block1": False, "features.1": True}  # frozen: eval mode
    for n in FROZEN:  # weights and batch-norm statistics, after training
        for k, v in layers[n].state_dict().items():
            assert torch.equal(v, digits_run.before[n][k]), f"{n}.{k}"
    moving = digits_run.before["features.1.3"]
    assert any(not torch.equal(v, moving[k]) for k, v in layers["features.1.3"].state_dict().items())


def test_unknown_freeze_name_is_one_line_and_no_run(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(json.dumps(_digits(freeze=["block1", "blockX"])))
    assert main(["train", str(recipe), "--out", str(tmp_path / "runs"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "model.freeze" in err and "blockX" in err and "block1" in err
    assert not (tmp_path / "runs").exists()
    recipe.write_text(json.dumps(_digits(freeze=["features.0.2"])))  # a ReLU: nothing to freeze
    assert main(["train", str(recipe), "--out", str(tmp_path / "runs"), "--quiet"]) == 2
    assert "no parameters" in capsys.readouterr().err


# ----------------------------------------------------------------------------- head
def test_dense_head_with_dropout():
    from genlab.data.base import DataInfo
    from genlab.families.classifier import Classifier, ClassifierConfig

    info = DataInfo(name="x", input_shape=(1, 8, 8), num_classes=10, class_names=tuple("0123456789"))
    torch.manual_seed(0)
    plain = Classifier(ClassifierConfig(backbone="vgg_sep", channels=[4, 8, 8]), info)
    assert [type(m) for m in plain.head] == [nn.Identity, nn.Linear]  # the linear head, as before
    assert list(plain.head.state_dict()) == ["1.weight", "1.bias"]
    torch.manual_seed(0)
    m = Classifier(ClassifierConfig(backbone="vgg_sep", channels=[4, 8, 8], head=[32, 16],
                                    head_dropout=0.5), info)
    assert [type(x).__name__ for x in m.head] == ["Identity", "Linear", "ReLU", "Dropout", "Linear",
                                                  "ReLU", "Dropout", "Linear"]
    assert [x.out_features for x in m.head if isinstance(x, nn.Linear)] == [32, 16, 10]
    x = torch.rand(6, 1, 8, 8)
    m.train()
    assert m(x).shape == (6, 10) and not torch.equal(m(x), m(x))  # dropout is on in training
    m.eval()
    assert torch.equal(m(x), m(x))


# ----------------------------------------------------------------------------- explain, metrics
def test_explain_at_a_named_layer(digits_run, tmp_path, capsys):
    run = str(digits_run.run_dir)
    cams = digits_run.model.eval().gradcam(torch.rand(2, 1, 8, 8), layer="block1")
    assert cams.shape == (2, 8, 8) and float(cams.max()) <= 1
    assert main(["explain", run, "--split", "test", "--n", "2", "--layer", "block1",
                 "--out", str(tmp_path / "x")]) == 0
    assert len(list((tmp_path / "x").glob("test_*_gradcam.png"))) == 2
    assert "layer block1" in capsys.readouterr().out
    for bad, says in (("block7", "block1"), ("neck", "not a (C, h, w) map")):
        assert main(["explain", run, "--split", "test", "--layer", bad, "--out", str(tmp_path)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and says in err


def test_top5_and_the_random_guess_baseline(digits_run, tmp_path, capsys):
    hist = digits_run.history
    assert "train/top5" in hist and "eval/top5" in hist  # 10 digits
    assert main(["eval", str(digits_run.run_dir), "--limit", "50"]) == 0
    out = capsys.readouterr().out
    assert "random guess 0.100" in out and "random guess 0.500" in out  # 1/10 and 5/10
    r = tiny_recipe("classifier", steps=2)
    r["data"] = {"name": "brain", "mode": "hard", "val_size": 16, "test_size": 16, "train_size": 64,
                 "size": [32, 24]}
    r["model"] = {"backbone": "vgg_sep", "channels": [4, 8, 8]}
    t = Trainer(from_mapping(r), out_root=tmp_path, quiet=True)
    t.run()
    assert not any("top5" in k for k in t.history)  # 4 syndromes: no top-5
    assert main(["eval", str(t.run_dir), "--limit", "16"]) == 0
    out = capsys.readouterr().out
    assert "random guess 0.250" in out and "top-5" not in out


def test_init_beside_the_same_named_backbone(digits_run, capsys):
    from genlab.core.errors import RecipeError
    from genlab.core.schema import build
    from genlab.families.classifier import Classifier, ClassifierConfig

    bundle = str(digits_run.run_dir / "export")
    info = digits_run.data.info
    ok = build(ClassifierConfig, {"init": bundle, "backbone": "vgg_sep", "channels": [4, 8, 8],
                                  "mode": "finetune"}, "model")
    m = Classifier(ok, info)
    assert not m.init_report["missing"] and not m.init_report["skipped"]
    bad = build(ClassifierConfig, {"init": bundle, "backbone": "vgg_sep", "channels": [4, 8, 16],
                                   "mode": "finetune"}, "model")
    with pytest.raises(RecipeError, match=r"model.channels: \[4, 8, 16\], but the bundle"):
        Classifier(bad, info)
    with pytest.raises(RecipeError, match="model.mode=finetune"):
        build(ClassifierConfig, {"init": bundle, "backbone": "vgg_sep"}, "model")
    capsys.readouterr()


def test_shrink_and_perturb_mixes_loaded_and_fresh_weights(digits_run, capsys):
    """init_shrink / init_perturb: every loaded parameter = shrink x loaded + perturb x the fresh
    initialisation the same seed draws; batch-norm statistics stay as loaded; (1, 0) is a plain
    load and (0, 1) the fresh network."""
    from genlab.core.schema import build
    from genlab.families.classifier import Classifier, ClassifierConfig

    bundle, info = str(digits_run.run_dir / "export"), digits_run.data.info

    def make(**mix):
        torch.manual_seed(3)
        cfg = build(ClassifierConfig, {"init": bundle, "mode": "finetune", **mix}, "model")
        return Classifier(cfg, info).backbone.encoder

    plain, fresh = make(), make(init_shrink=0.0, init_perturb=1.0)
    mixed = make(init_shrink=0.4, init_perturb=0.1)
    exported = digits_run.model.backbone.state_dict()
    for (name, p), (_, f), (_, m) in zip(plain.named_parameters(), fresh.named_parameters(),
                                         mixed.named_parameters()):
        assert torch.equal(p, exported[name])                      # a plain load is the export
        torch.testing.assert_close(m, 0.4 * p + 0.1 * f)
        if p.dim() > 1:
            assert not torch.allclose(f, p)                        # fresh weights are not the export
    for (name, b), (_, bm) in zip(plain.named_buffers(), mixed.named_buffers()):
        assert torch.equal(b, bm), name                            # statistics as loaded
    capsys.readouterr()


def test_shrink_and_perturb_needs_init_and_a_random_head(digits_run):
    from genlab.core.schema import build
    from genlab.families.classifier import ClassifierConfig

    with pytest.raises(Exception, match="init is not set"):
        build(ClassifierConfig, {"init_shrink": 0.5}, "model")
    with pytest.raises(Exception, match="batch-norm statistics"):
        build(ClassifierConfig, {"init": str(digits_run.run_dir / "export"), "mode": "finetune",
                                 "init_perturb": 0.1, "head_init": "probe"}, "model")
    with pytest.raises(Exception, match="init_shrink"):
        build(ClassifierConfig, {"init": str(digits_run.run_dir / "export"), "mode": "finetune",
                                 "init_shrink": 1.5}, "model")


def test_init_reset_transfers_only_the_layers_below(digits_run, capsys):
    """init_reset: the named stage starts from the fresh initialisation the seed draws (weights
    and batch-norm statistics), every other tensor is the export's; the report says which."""
    from genlab.core.errors import RecipeError
    from genlab.core.schema import build
    from genlab.families.classifier import Classifier, ClassifierConfig

    bundle, info = str(digits_run.run_dir / "export"), digits_run.data.info

    def make(**more):
        torch.manual_seed(5)
        cfg = build(ClassifierConfig, {"init": bundle, "mode": "finetune", **more}, "model")
        return Classifier(cfg, info)

    top = [n for n in named_layers(make().backbone) if n.startswith("features.")][-1].split(".")[:2]
    top = ".".join(top)  # the last stage of the encoder, e.g. features.2
    fresh = make(init_shrink=0.0, init_perturb=1.0).backbone.encoder.state_dict()  # params only
    m = make(init_reset=[top])
    exported = digits_run.model.backbone.state_dict()
    reset = {d["name"] for d in m.init_report["reset"]}
    assert reset and all(n.startswith(top + ".") for n in reset)
    assert not {d["name"] for d in m.init_report["loaded"]} & reset
    for name, t in m.backbone.encoder.state_dict().items():
        if name in reset and not name.endswith(("running_mean", "running_var", "num_batches_tracked")):
            assert torch.equal(t, fresh[name]), name                # fresh weights
        elif name in reset:
            assert not torch.equal(t, exported[name]) or "num_batches" in name  # fresh statistics
        else:
            assert torch.equal(t, exported[name]), name             # transferred
    assert "reset" in capsys.readouterr().out
    # two stages (as the study's 8,000-label row resets features.2 and features.3): both fresh,
    # everything below still the export's
    stages = sorted({".".join(n.split(".")[:2]) for n in named_layers(make().backbone)
                     if n.startswith("features.")})
    two = stages[-2:]
    assert len(two) == 2 and two[0] != top
    m2 = make(init_reset=two)
    reset2 = {d["name"] for d in m2.init_report["reset"]}
    assert {".".join(n.split(".")[:2]) for n in reset2} == set(two)
    for name, t in m2.backbone.encoder.state_dict().items():
        if not any(name.startswith(s + ".") for s in two):
            assert torch.equal(t, exported[name]), name
    with pytest.raises(RecipeError, match=r"model.init_reset: unknown layer nope"):
        make(init_reset=["nope"])
