"""`genlab probe`: a scikit-learn linear classifier on frozen encoder features (a fixed
feature extractor), reported with the metrics of `genlab eval`. CPU, small."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import tiny_recipe

from genlab.cli import main
from genlab.core import registry
from genlab.core.recipe import from_mapping
from genlab.engine.trainer import Trainer
from genlab.tools.probe import fit, fit_temperature

registry.load_all()


@pytest.fixture(scope="module")
def runs_of(tmp_path_factory):
    """Tiny digit runs: a conv DAE (exports a conv encoder), an RBM (a dense sigmoid encoder)
    and a classifier (its backbone)."""
    root = tmp_path_factory.mktemp("probe_runs")
    out = {}
    for fam in ("dae", "rbm", "classifier"):
        if fam not in registry.FAMILIES:
            continue
        t = Trainer(from_mapping(tiny_recipe(fam, steps=4)), out_root=root, quiet=True)
        t.run()
        out[fam] = t.run_dir
    return out


def _metrics(path):
    return json.loads(path.read_text())


@pytest.mark.parametrize("clf", ["svm", "logreg"])
def test_probe_reports_the_eval_metrics(clf, runs_of, capsys):
    run = runs_of["dae"]
    assert main(["probe", str(run), "--clf", clf, "--n-train", "400"]) == 0
    out = capsys.readouterr().out
    assert "chosen C =" in out and "accuracy (top-1)" in out and "rows = actual class" in out
    d = run / "probe" / clf / "test"
    for name in ("metrics.json", "confusion_matrix.png", "roc.png"):
        assert (d / name).is_file(), name
    m = _metrics(d / "metrics.json")
    assert m["n"] == 269 and m["num_classes"] == 10  # the digits test split (15 % of 1,797)
    assert m["accuracy"] > 0.3  # 10 classes: chance is 0.1
    assert 0.5 < m["auc"] <= 1 and m["ece"] is not None
    p = m["probe"]
    assert p["classifier"] == clf and p["n_train"] == 400 and p["feature_dim"] == 8  # the code
    assert p["C"] in [g["C"] for g in p["c_grid"]] and len(p["c_grid"]) == 7
    assert (p["temperature"] is not None) == (clf == "svm")
    assert m["confusion_matrix"]["convention"].startswith("rows = actual")


def test_pca_and_pool_change_the_features(runs_of, capsys):
    run = runs_of["dae"]
    dims = {}
    for args in ([], ["--pool", "mean"], ["--pool", "max"], ["--pool", "mean", "--pca", "4"]):
        assert main(["probe", str(run), "--clf", "logreg", "--n-train", "300", "--c", "1",
                     "--split", "val", *args]) == 0
        name = "logreg" + ("-pca4" if "--pca" in args else "") + (f"-pool{args[1]}" if args else "")
        p = _metrics(run / "probe" / name / "val" / "metrics.json")["probe"]
        dims[name] = (p["feature_dim"], p["input_dim"])
    capsys.readouterr()
    # the code has 8 numbers; the last conv map of the tiny DAE (channels [8, 16]) has 16 channels
    assert dims == {"logreg": (8, 8), "logreg-poolmean": (16, 16), "logreg-poolmax": (16, 16),
                    "logreg-pca4-poolmean": (16, 4)}


def test_probe_on_a_classifier_run(runs_of, capsys):
    run = runs_of["classifier"]
    assert main(["probe", str(run), "--clf", "svm", "--pool", "max", "--n-train", "300",
                 "--limit", "100"]) == 0
    m = _metrics(run / "probe" / "svm-poolmax" / "test" / "metrics.json")
    assert m["n"] == 100 and "classifier backbone" in m["encoder"]
    assert m["probe"]["feature_dim"] == 8  # vgg_sep's last block width
    capsys.readouterr()


def test_bad_input_is_a_clear_error(runs_of, tmp_path, capsys):
    dae = str(runs_of["dae"])
    assert main(["probe", dae, "--clf", "knn"]) == 2
    assert "knn" in capsys.readouterr().err
    assert main(["probe", dae]) == 2  # --clf is required
    assert "--clf" in capsys.readouterr().err
    assert main(["probe", dae, "--clf", "svm", "--pca", "50"]) == 2
    assert "--pca 50" in capsys.readouterr().err
    assert main(["probe", str(tmp_path), "--clf", "svm"]) == 2
    assert "not a genlab run folder" in capsys.readouterr().err
    assert main(["probe", dae, "--clf", "svm", "--pool", "avg"]) == 2
    capsys.readouterr()
    no_export = tmp_path / "no_export"
    shutil.copytree(dae, no_export)
    shutil.rmtree(no_export / "export")
    assert main(["probe", str(no_export), "--clf", "svm"]) == 2
    assert "genlab export" in capsys.readouterr().err
    if "rbm" in runs_of:  # a dense encoder has no feature map to pool
        assert main(["probe", str(runs_of["rbm"]), "--clf", "logreg", "--pool", "mean"]) == 2
        assert "no convolutional feature map" in capsys.readouterr().err
        assert main(["probe", str(runs_of["rbm"]), "--clf", "logreg", "--n-train", "300"]) == 0
        capsys.readouterr()


def test_svm_probabilities_keep_the_svm_decisions():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(m, 1.0, (60, 5)) for m in (0, 1.5, 3)])
    y = np.repeat([0, 1, 2], 60)
    res = fit("svm", x[::2], y[::2], x[1::2], y[1::2], c_grid=(0.01, 1.0))
    p = res.predict_proba(x, 3)
    assert np.allclose(p.sum(1), 1) and (p.argmax(1) == res.model.predict(x)).all()
    assert res.c in (0.01, 1.0) and res.temperature > 0
    # binary: a 1-D score, same rule
    rb = fit("svm", x[:120:2], y[:120:2], x[1:120:2], y[1:120:2])
    assert (rb.predict_proba(x[:120], 3).argmax(1) == rb.model.predict(x[:120])).all()
    # the temperature minimises the NLL: sharper scores for a perfectly separated set
    s = np.array([[0.0, 1.0], [1.0, 0.0]] * 10)
    t = fit_temperature(s, np.array([1, 0] * 10))
    assert t < 0.1
