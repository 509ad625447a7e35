"""LP-FT: the classifier's `head_init: probe` (genlab.families.head_init). Before the first step of
a fresh run the linear head becomes the logistic probe of the frozen features: at step 0 its
logits are the probe's decision scores and its accuracy the probe's; a resume fits nothing; a
dense head is refused. CPU, the tiny digits classifier (seconds)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import tiny_recipe

from genlab.core import registry
from genlab.core.errors import RecipeError
from genlab.core.recipe import from_mapping
from genlab.core.registry import get_dataset
from genlab.core.schema import build
from genlab.data.base import DataInfo
from genlab.engine.trainer import Trainer
from genlab.families import head_init
from genlab.families.classifier import Classifier, ClassifierConfig
from genlab.metrics.linear_probe import DEFAULT_C_GRID, fit, linear_layer

registry.load_all()


def _recipe(steps=8, **model):
    r = tiny_recipe("classifier", steps=steps)
    r["model"] = {**r["model"], "mode": "finetune", "head_init": "probe", **model}
    return r


def _features(model, data, split):
    model.eval()
    with torch.no_grad():
        batch = data.get(split, torch.arange(data.size(split)))
        f = model.backbone(batch["x"]).double().numpy()
    return f, batch["y"].numpy()


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    """A fresh LP-FT trainer before its first step, and the probe fitted by hand on its features."""
    t = Trainer(from_mapping(_recipe()), out_root=tmp_path_factory.mktemp("runs"), quiet=True)
    (xtr, ytr), (xva, yva) = (_features(t.model, t.data, s) for s in ("train", "val"))
    return t, fit("logreg", xtr, ytr, xva, yva), (xva, yva)


def test_step_0_logits_are_the_probe_decision_scores(fresh):
    t, probe, (xva, _) = fresh
    assert probe.c in DEFAULT_C_GRID
    with torch.no_grad():
        logits = t.model.eval()(t.data.get("val", torch.arange(t.data.size("val")))["x"]).double().numpy()
    want = probe.model.decision_function(xva)
    assert logits.shape == want.shape == (len(xva), 10)
    np.testing.assert_allclose(logits, want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(torch.softmax(torch.from_numpy(logits), 1).numpy(),
                               probe.model.predict_proba(xva), atol=1e-5)


def test_step_0_accuracy_is_the_probes_and_beats_a_random_head(fresh, tmp_path):
    t, probe, _ = fresh
    acc = t.evaluate("val")["acc"]
    assert acc == pytest.approx(probe.val_accuracy[probe.c], abs=1e-9)
    assert acc > 0.5  # random conv features of digits are far from chance under a solved probe
    plain = Trainer(from_mapping(_recipe(head_init="random")), out_root=tmp_path, quiet=True)
    assert plain.evaluate("val")["acc"] < 0.3  # the same backbone under its random head
    for k, v in plain.model.backbone.state_dict().items():  # only the head differs
        assert torch.equal(v, t.model.backbone.state_dict()[k]), k


def test_the_fit_leaves_the_run_random_numbers_alone():
    cfg = build(ClassifierConfig, {"backbone": "vgg_sep", "channels": [4, 8, 8], "head_init": "probe"},
                "model")
    source = get_dataset("digits")
    data = source(build(source.Config, {}, "data"), 0, "cpu")
    model = Classifier(cfg, data.info)
    before = torch.get_rng_state()
    model.on_fit_start(data, torch.device("cpu"))
    assert torch.equal(before, torch.get_rng_state())
    assert model.training  # put back in training mode


def test_separable_toy_features_probe_to_1_at_step_0():
    """Two far-apart Gaussian blobs per class, the backbone an identity: the head alone must
    classify them all, at step 0, with no SGD."""
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[4.0, 0.0], [-4.0, 0.0], [0.0, 4.0]])

    class Blobs:  # the data-source protocol the hook reads: size and get
        def __init__(self):
            self.xs = {s: (torch.arange(n) % 3, n) for s, n in (("train", 60), ("val", 30))}
            self.pts = {s: centres[y] + 0.3 * torch.randn(n, 2, generator=g) for s, (y, n) in self.xs.items()}

        def size(self, split):
            return self.xs[split][1]

        def get(self, split, idx):
            return {"x": self.pts[split][idx], "y": self.xs[split][0][idx]}

    data = Blobs()
    model = Classifier(build(ClassifierConfig, {"backbone": "vgg_sep", "channels": [4, 8, 8],
                                                "head_init": "probe"}, "model"),
                       DataInfo(name="d", input_shape=(1, 8, 8), num_classes=4, class_names=tuple("abcd")))
    model.backbone = _Identity(2)
    model.head = torch.nn.Sequential(torch.nn.Identity(), torch.nn.Linear(2, 4))
    report = head_init.probe_head(model, data, torch.device("cpu"), max_images=1000)
    assert report["train_images"] == 60 and report["val_images"] == 30 and report["val_acc"] == 1.0
    with torch.no_grad():
        probs = torch.softmax(model.eval()(data.pts["val"]), 1)
    assert torch.equal(probs.argmax(1), data.xs["val"][0])
    assert float(probs[:, 3].max()) < 1e-6  # class d has no training example: probability 0
    capped = head_init.probe_head(model, data, torch.device("cpu"), max_images=12)
    assert capped["train_images"] == capped["val_images"] == 12


class _Identity(torch.nn.Module):
    def __init__(self, n):
        super().__init__()
        self.num_features = n

    def forward(self, x):
        return x


def test_binary_probe_becomes_a_two_logit_layer():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(80, 5)) * [1, 10, 0.1, 1, 1] + [0, 5, 0, 0, 0]
    y = (x[:, 0] + 0.1 * x[:, 1] > 0.5).astype(int)
    res = fit("logreg", x, y, x, y, c_grid=(1.0,))
    w, b = linear_layer(res, 2)
    logits = x @ w.T + b
    np.testing.assert_allclose(logits[:, 1] - logits[:, 0], res.model.decision_function(x), atol=1e-9)
    np.testing.assert_allclose(res.model.predict_proba(x)[:, 1],
                               1 / (1 + np.exp(-(logits[:, 1] - logits[:, 0]))), atol=1e-9)


def test_resume_restores_the_head_and_fits_nothing(tmp_path, monkeypatch):
    done = Trainer(from_mapping(_recipe(12)), out_root=tmp_path / "a", quiet=True)
    done.run()
    cut = Trainer(from_mapping(_recipe(12)), out_root=tmp_path / "b", quiet=True)
    cut.run(stop_at=6)  # killed after step 6: resumes from the step-4 checkpoint

    def refit(*a, **k):
        raise AssertionError("a resume must not fit the head again")

    monkeypatch.setattr(head_init, "probe_head", refit)
    resumed = Trainer(from_mapping(_recipe(12)), resume_dir=cut.run_dir, quiet=True)
    assert resumed.step == 4
    resumed.run()
    a, b = done.model.state_dict(), resumed.model.state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


def test_a_dense_head_is_refused_in_one_line(tmp_path):
    with pytest.raises(RecipeError, match=r"model: head_init: 'probe' fits a linear head.*head: \[\]"):
        Trainer(from_mapping(_recipe(head=[16])), out_root=tmp_path, quiet=True)
    assert not (tmp_path / "classifier").exists()
    with pytest.raises(RecipeError, match="head_init"):
        build(ClassifierConfig, {"head_init": "probe", "head": [8]}, "model")
