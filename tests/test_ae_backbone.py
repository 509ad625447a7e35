"""A classifier backbone as the encoder of a (denoising) autoencoder: it trains, resumes exactly,
reports the online probe, and its export loads into a classifier with every tensor. CPU, small."""
from __future__ import annotations

import contextlib
import copy

import pytest
import torch
from conftest import tiny_recipe

from genlab.cli import main
from genlab.core import registry
from genlab.core.errors import GenlabError, RecipeError
from genlab.core.recipe import from_mapping
from genlab.core.schema import build
from genlab.data.base import DataInfo
from genlab.engine.trainer import Trainer
from genlab.families.ae import DAEConfig, DenoisingAutoencoder
from genlab.families.classifier import Classifier, ClassifierConfig
from genlab.nn import ENCODER_BUILDERS
from genlab.nn.backbones import Backbone

registry.load_all()
BRAIN = {"name": "brain", "mode": "hard", "train_size": 256, "val_size": 32, "test_size": 32,
         "size": [64, 48]}
MODEL = {"arch": "backbone", "backbone": "vgg_sep", "backbone_channels": [4, 8, 8, 8], "stem_stride": 2,
         "loss_on": "corrupted", "corruption": {"kind": "patch_mask", "level": 0.5}}
INFO = DataInfo(name="brain", input_shape=(1, 64, 48), num_classes=4, class_names=("A", "B", "C", "Z"))


def _recipe(steps: int) -> dict:
    r = tiny_recipe("dae", steps=steps, lr=1e-2)
    r["data"], r["model"] = dict(BRAIN), dict(MODEL)
    r["log"] = {**r["log"], "eval_every": 8, "render_every": 16, "checkpoint_every": 4,
                "probe_train": 64, "probe_val": 32}
    return r


def _weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    t = Trainer(from_mapping(_recipe(16)), out_root=tmp_path_factory.mktemp("runs"), quiet=True)
    return t, t.run()


def test_trains_with_falling_loss_and_reports_the_online_probe(full):
    t, result = full
    loss = [v for _, v in t.history["train/loss"]]
    assert len(loss) == 4 and loss[-1] < 0.7 * loss[0]
    assert [s for s, _ in t.history["eval/probe_acc"]] == [8, 16]
    assert 0 <= result["val"]["probe_acc"] <= 1 and 0 <= result["val"]["probe_lesion_auc"] <= 1
    assert {"lesion_retention", "lesion_psnr", "psnr_gain"} <= result["test"].keys()
    assert isinstance(t.model.encoder, Backbone)


def test_resume_reproduces_the_uninterrupted_run(full, tmp_path):
    done, _ = full
    cut = Trainer(from_mapping(_recipe(16)), out_root=tmp_path, quiet=True)
    cut.run(stop_at=10)  # killed after step 10: resumes from the step-8 checkpoint
    resumed = Trainer(from_mapping(_recipe(16)), resume_dir=cut.run_dir, quiet=True)
    assert resumed.step == 8
    resumed.run()
    a, b = _weights(done.model), _weights(resumed.model)
    assert a.keys() == b.keys()
    for k in a:  # batch-norm running statistics included
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    assert resumed.history["train/loss"] == done.history["train/loss"]


def test_export_loads_into_a_classifier_with_every_tensor(full):
    t, _ = full
    dae = t.model.eval()
    cfg = build(ClassifierConfig, {"init": str(t.run_dir), "mode": "finetune"}, "model")
    clf = Classifier(cfg, INFO).eval()
    r = clf.init_report
    assert r["builder"] == "classifier_backbone" and not r["skipped"] and not r["missing"]
    assert len(r["loaded"]) == len(dae.encoder.state_dict())
    scratch = build(ClassifierConfig, {"backbone": "vgg_sep", "channels": [4, 8, 8, 8], "stem_stride": 2},
                    "model")
    own = Classifier(scratch, INFO).backbone
    assert own.state_dict().keys() == dae.encoder.state_dict().keys()  # the same module tree
    x = torch.rand(3, 1, 64, 48)
    with torch.no_grad():  # what the classifier's head sees is what the DAE exports
        torch.testing.assert_close(clf.backbone(x), dae.encode(x), rtol=0, atol=0)
    assert dae.out_features == clf.backbone.num_features == 16


def test_pretrain_recipe_drops_into_the_lesion_recipe(tmp_path, capsys):
    small = ["--set", "data.train_size=64", "--set", "data.val_size=8", "--set", "data.test_size=8",
             "--set", "train.batch_size=8", "--set", "train.eval_batches=1", "--out", str(tmp_path),
             "--quiet", "--device", "cpu"]
    assert main(["train", "recipes/pretrain_dae_brain.yaml", "--set", "train.steps=2",
                 "--set", "log.probe_train=0", *small]) == 0
    run = next((tmp_path / "pretrain_dae_brain").iterdir())
    capsys.readouterr()
    # the classifier takes the backbone from the bundle: its own backbone keys are set to null
    assert main(["train", "recipes/lesion_brain.yaml", "--set", f"model.init={run}/export",
                 "--set", "model.backbone=null", "--set", "model.channels=null",
                 "--set", "model.stem_stride=1", "--set", "model.mode=finetune",
                 "--set", "train.steps=1", *small]) == 0
    out = capsys.readouterr().out
    assert "builder classifier_backbone" in out and "tensors loaded, 0 skipped, 0 missing" in out, out


@pytest.mark.parametrize("name", ["vgg_sep", "model2", "model1", "resnet18", "brain_tumor_nn"])
def test_every_backbone_reconstructs_the_full_image_and_rebuilds_from_its_spec(name):
    info = DataInfo(name="toy", input_shape=(1, 40, 24), num_classes=2, class_names=("Z", "A"))
    cfg = build(DAEConfig, {"arch": "backbone", "backbone": name,
                            "corruption": {"kind": "inpaint", "level": 0.3}}, "model")
    torch.manual_seed(0)
    m = DenoisingAutoencoder(cfg, info).eval()
    x = torch.rand(2, 1, 40, 24)
    recon = m(x)
    assert recon.shape == x.shape and 0 <= recon.min() and recon.max() <= 1
    assert torch.equal(recon, m.decoder(m.encoder.features(m.encoder.pre(x))))  # no skips
    assert m.encode(x).shape == (2, m.out_features)
    spec = m.encoder_spec()
    rebuilt = ENCODER_BUILDERS[spec.builder](**spec.config)
    rebuilt.load_state_dict(m.encoder.state_dict())  # strict: the same tensors
    torch.testing.assert_close(rebuilt.eval()(x), m.encode(x), rtol=0, atol=0)


@pytest.mark.parametrize("model,key", [
    ({"arch": "conv", "backbone_channels": [8]}, "model: backbone_channels: used only with arch 'backbone'"),
    ({"arch": "conv", "stem_stride": 2}, "model: stem_stride: used only with arch 'backbone'"),
    ({"arch": "dense", "bn_stats": "corrupted"}, "model: bn_stats: used only with arch 'backbone'"),
    ({"arch": "backbone", "backbone": "resnet18", "stem_stride": 2}, "model: stem_stride: not used by"),
    ({"arch": "backbone", "backbone": "encoder"}, "model.backbone: expected one of 'vgg_sep'"),
    ({"arch": "backbone", "backbone_channels": []}, "model: backbone_channels: expected at least one"),
])
def test_bad_backbone_keys_are_one_line_errors(model, key):
    with pytest.raises(RecipeError) as e:
        build(DAEConfig, model, "model")
    assert str(e.value).startswith(key) and "\n" not in str(e.value)


def test_batch_norm_statistics_follow_clean_images():
    class Ctx:  # the trainer's step context, reduced to what the family uses
        step, device = 0, torch.device("cpu")

        def autocast(self):
            return contextlib.nullcontext()

        def update(self, name, loss):
            opt.zero_grad()
            loss.backward()
            opt.step()

    x = torch.rand(4, 1, 64, 48)
    for stats in ("clean", "corrupted"):
        m = DenoisingAutoencoder(build(DAEConfig, {**MODEL, "bn_stats": stats}, "model"), INFO).train()
        opt = torch.optim.SGD(m.parameters(), lr=0.1)
        conv, bn = m.encoder.features[0][0], m.encoder.features[0][1]
        before = copy.deepcopy(conv)
        torch.manual_seed(0)
        noisy = m.cfg.corruption(x)
        torch.manual_seed(0)  # the step draws the same corruption
        m.training_step({"x": x}, Ctx())
        with torch.no_grad():  # clean: a pass after the update; corrupted: the training pass
            seen = conv(x) if stats == "clean" else before(noisy)
            inputs = before(noisy).mean((0, 2, 3))
        torch.testing.assert_close(bn.running_mean, 0.1 * seen.mean((0, 2, 3)))  # exported
        if stats == "clean":  # the inputs' own statistics, for the autoencoder's evaluation
            torch.testing.assert_close(m.input_bn0_mean, 0.1 * inputs)
            m.eval()
            with m._input_stats():
                torch.testing.assert_close(bn.running_mean, 0.1 * inputs)
            torch.testing.assert_close(bn.running_mean, 0.1 * seen.mean((0, 2, 3)))


def test_decoder_widths_must_match_the_upsampling_steps():
    cfg = build(DAEConfig, {"arch": "backbone", "backbone_channels": [4, 8, 8, 8], "stem_stride": 2,
                            "decoder_channels": [8, 8]}, "model")
    with pytest.raises(GenlabError, match=r"^model.decoder_channels: expected 4 widths .* 4 x 3 map"):
        DenoisingAutoencoder(cfg, INFO)
    cfg = build(DAEConfig, {"arch": "backbone", "backbone_channels": [4, 8, 8, 8], "stem_stride": 2,
                            "decoder_channels": [8, 8, 8, 8]}, "model")
    assert [u[0].out_channels for u in DenoisingAutoencoder(cfg, INFO).decoder.ups] == [8, 8, 8, 8]
