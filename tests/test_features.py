"""A frozen network as a fixed feature extractor (genlab.tools.features, features_compare and
`genlab probe --list-layers / --layer / --scales / --vlad / --report`). CPU, small."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import tiny_recipe

from genlab.cli import main
from genlab.core import registry
from genlab.core.recipe import from_mapping
from genlab.engine.trainer import Trainer
from genlab.tools import features as F
from genlab.tools.probe import fit, load_source

registry.load_all()


@pytest.fixture(scope="module")
def runs_of(tmp_path_factory):
    """A tiny digit classifier (vgg_sep 4-8-8) and a tiny conv DAE, a few steps each."""
    root = tmp_path_factory.mktemp("feature_runs")
    out = {}
    for fam in ("classifier", "dae"):
        t = Trainer(from_mapping(tiny_recipe(fam, steps=3)), out_root=root, quiet=True)
        t.run()
        out[fam] = t.run_dir
    return out


@pytest.fixture(scope="module")
def sources(runs_of):
    return {k: load_source(v, torch.device("cpu")) for k, v in runs_of.items()}


# ----------------------------------------------------------------------------- layers
def test_list_layers_names_and_shapes(sources, runs_of, capsys):
    rows = {r["name"]: r for r in F.list_layers(sources["classifier"].backbone, (1, 8, 8))}
    assert {"block1", "block2", "block3", "features.0.0", "features.1.6", "neck", "output"} <= rows.keys()
    assert rows["block1"]["type"] == "stage = features.0" and rows["block1"]["shape"] == (4, 4, 4)
    assert rows["features.0.0"]["shape"] == (4, 8, 8) and rows["output"]["shape"] == (16,)
    dae = {r["name"]: r for r in F.list_layers(sources["dae"].backbone, (1, 8, 8))}
    assert dae["features.2"]["shape"] == (16, 2, 2) and dae["head.1"]["shape"] == (8,)
    assert not any(n.startswith(("encoder", "pre")) for n in dae)  # the encoder's own paths
    assert main(["probe", str(runs_of["dae"]), "--list-layers"]) == 0  # no --clf needed
    out = capsys.readouterr().out
    assert "head.1" in out and "Linear" in out and "16x2x2" in out


def test_layer_and_scale_extraction_shapes(sources):
    x = torch.rand(3, 1, 8, 8)
    taps = F.LayerTaps(sources["classifier"].backbone, ["block2", "features.0.0", "output"], (1, 8, 8))
    one = taps(x, 1.0)
    assert one["block2"].shape == (3, 8, 2, 2) and one["features.0.0"].shape == (3, 4, 8, 8)
    assert one["output"].shape == (3, 16, 1, 1)  # a vector is a 1x1 map
    two = F.LayerTaps(sources["classifier"].backbone, ["block2", "features.0.0"], (1, 8, 8))(x, 2.0)
    assert two["block2"].shape == (3, 8, 4, 4) and two["features.0.0"].shape == (3, 4, 16, 16)
    # a conv that an in-place ReLU follows is caught before the ReLU changes it
    assert (one["features.0.0"] < 0).any()


def test_dense_layer_runs_fully_convolutionally(sources):
    bb = sources["dae"].backbone
    x = torch.rand(4, 1, 8, 8)
    taps = F.LayerTaps(bb, ["head.1"], (1, 8, 8))
    with torch.no_grad():
        direct = bb(x)  # the DAE encoder's output is head.1
    assert torch.allclose(taps(x, 1.0)["head.1"][:, :, 0, 0], direct, atol=1e-6)
    fmap = taps._dense_as_conv("head.1", bb.encoder.features(x))  # the conv form at scale 1
    assert fmap.shape == (4, 8, 1, 1) and torch.allclose(fmap[:, :, 0, 0], direct, atol=1e-5)
    big = taps(x, 2.0)["head.1"]  # 16x16 -> a 4x4 map under a 2x2 kernel: 3x3 positions
    assert big.shape == (4, 8, 3, 3)
    with pytest.raises(Exception, match="at least"):
        taps(x, 0.5)


def test_pooling_and_normalisation():
    fmap = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).view(2, 3, 2, 2)
    assert torch.equal(F.pool(fmap, "mean"), fmap.mean(dim=(2, 3)))
    assert torch.equal(F.pool(fmap, "max"), fmap.amax(dim=(2, 3)))
    assert F.pool(fmap, "meanmax").shape == (2, 6)
    assert F.descriptors(fmap).shape == (2, 4, 3)
    desc = torch.randn(5, 30, 4)
    v = F.vlad(desc, torch.randn(6, 4))
    assert v.shape == (5, 24) and torch.allclose(v.norm(dim=1), torch.ones(5), atol=1e-5)
    for b in v.view(5, 6, 4).norm(dim=2):  # intra-normalised: every used block had norm 1 before
        used = b > 1e-9                      # the global L2, so now each has 1 / sqrt(blocks used)
        assert torch.allclose(b[used], torch.full((int(used.sum()),), float(used.sum()) ** -0.5), atol=1e-5)


def test_vlad_on_hand_made_descriptors():
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    desc = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [11.0, 1.0], [9.0, -2.0]]])
    sums = F.vlad_sums(desc, centres)
    # centre 0 takes (1,0) and (0,1): residuals add to (1,1); centre 1: (1,1) + (-1,-2) = (0,-1);
    # centre 2 takes nothing
    assert torch.allclose(sums[0], torch.tensor([[1.0, 1.0], [0.0, -1.0], [0.0, 0.0]]))
    v = F.vlad_normalise(sums)[0]
    r = float(1 / np.sqrt(2))
    expected = torch.tensor([r, r, 0.0, -1.0, 0.0, 0.0]).float() * r  # blocks to unit length, then all
    assert torch.allclose(v, expected, atol=1e-6)
    got = F.fit_codebook(np.concatenate([np.random.default_rng(0).normal(c, 0.05, (50, 2))
                                         for c in ([0, 0], [10, 0], [0, 10])]), 3)
    assert sorted(map(tuple, np.round(got).astype(int).tolist())) == [(0, 0), (0, 10), (10, 0)]


@pytest.mark.parametrize("norm", ["standard", "l2", "power_l2"])
@pytest.mark.parametrize("clf", ["linear_svm", "logreg"])
def test_probe_on_separable_features_is_perfect(clf, norm):
    rng = np.random.default_rng(0)
    means = np.eye(3, 16) * 8
    x = np.concatenate([rng.normal(m, 0.5, (40, 16)) + 1 for m in means])
    y = np.repeat([0, 1, 2], 40)
    res = fit(clf, x[::2], y[::2], x[1::2], y[1::2], c_grid=(0.1, 1.0), norm=norm)
    assert (res.predict_proba(x[1::2], 3).argmax(1) == y[1::2]).mean() == 1.0
    if norm != "standard":  # the pipeline's first steps give unit vectors
        z = res.model[:-1].transform(x[:5])
        assert np.allclose(np.linalg.norm(z, axis=1), 1)


# ----------------------------------------------------------------------------- the command
@pytest.mark.parametrize("fam,layer", [("classifier", "block2"), ("dae", "features.2")])
def test_probe_compares_layers_scales_and_vlad(fam, layer, runs_of, tmp_path, capsys):
    report = tmp_path / "f.md"
    # no --clf: a comparison defaults to the linear SVM
    args = ["probe", str(runs_of[fam]), "--layer", layer, "--layer", "output",
            "--vlad", "8", "--scales", "1,1.5", "--report", str(report), "--n-train", "200",
            "--limit", "60", "--c", "0.1", "--c", "1"]
    if fam == "dae":  # the DAE's output is dense: name the dense layer to run it at 1.5
        args[args.index("output")] = "head.1"
    assert main(args) == 0
    capsys.readouterr()
    table = report.read_text().strip().splitlines()
    rows = [line for line in table if line.startswith("| ") and "---" not in line][1:]
    assert len(rows) == 2 * 3 * 2  # 2 layers x (1, 1.5, 1+1.5) x (mean, VLAD k=8)
    assert {r.split("|")[2].strip() for r in rows} == {"1", "1.5", "1+1.5"}
    data = json.loads((runs_of[fam] / "probe" / "compare" / "test" / "table.json").read_text())
    for r in data["rows"]:
        assert 0 <= r["accuracy"] <= 1 and r["dim"] > 0 and r["top5"] is not None
    assert data["header"]["classifier"] in ("svm", "linear_svm")
    vlad_dim = {r["dim"] for r in data["rows"] if r["layer"] == layer and r["features"] == "VLAD k=8"}
    assert vlad_dim == {8 * (8 if fam == "classifier" else 16)}  # k x channels


def test_bad_layer_and_scale_are_one_line(runs_of, capsys):
    run = str(runs_of["classifier"])
    assert main(["probe", run, "--clf", "svm", "--layer", "block9"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "block9" in err and "block1" in err
    assert main(["probe", run, "--clf", "svm", "--scales", "1,zero"]) == 2
    assert "--scales" in capsys.readouterr().err
    assert main(["probe", run, "--clf", "svm", "--layer", "block1", "--pool", "none"]) == 2
    assert "mean" in capsys.readouterr().err
    assert main(["probe", str(runs_of["dae"]), "--clf", "svm", "--layer", "output", "--scales", "2"]) == 2
    assert "fully convolutionally" in capsys.readouterr().err
