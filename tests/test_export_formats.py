"""genlab export --format onnx|torchscript|safetensors: classifier and encoder runs, a dynamic
batch dimension, reloads that match PyTorch within 1e-4, the parity check's failure path, and
the unchanged default (the encoder bundle). CPU, small."""
from __future__ import annotations

import contextlib
import io
import json

import pytest
import torch
from conftest import tiny_recipe
from serve_helpers import tiny_brain_run

from genlab.cli import main
from genlab.core.recipe import from_mapping
from genlab.engine.trainer import Trainer
from genlab.tools.export_formats import PARITY_TOL, load_classifier

ort = pytest.importorskip("onnxruntime", reason="ONNX export needs the [serve] extra")
onnx = pytest.importorskip("onnx", reason="ONNX export needs the [serve] extra")


pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")


@pytest.fixture(scope="module")
def cls_run(tmp_path_factory):
    return tiny_brain_run(tmp_path_factory)


@pytest.fixture(scope="module")
def dae_run(tmp_path_factory):
    r = tiny_recipe("dae", steps=4)
    r["log"].update(render_every=1000, eval_every=1000)
    with contextlib.redirect_stdout(io.StringIO()):
        t = Trainer(from_mapping(r), out_root=tmp_path_factory.mktemp("dae"), quiet=True, progress=False)
        t.run()
    return t.run_dir


def _classifier_and_images(run_dir, n=5):
    """The run's classifier as `genlab predict` loads it, and test images it has not seen in the
    export's parity check (a different count: the batch dimension is free)."""
    import genlab

    run = genlab.load_run(run_dir, need_data=True)
    x = run.data.get("test", torch.arange(10, 10 + n))["x"]
    with torch.no_grad():
        logits = run.model(x)
    return run, x, logits


def test_classifier_onnx_reloads_and_matches(cls_run, capsys):
    assert main(["export", str(cls_run), "--format", "onnx"]) == 0
    out = capsys.readouterr().out
    assert "parity with PyTorch on 8 test images (batch sizes 8, 1)" in out
    path = cls_run / "export" / "classifier.onnx"
    model = onnx.load(str(path))
    meta = {p.key: json.loads(p.value) for p in model.metadata_props}
    assert meta["genlab.class_names"] == ["A", "B", "C", "Z"] and meta["genlab.input_shape"] == [1, 128, 96]
    assert meta["genlab.negative_classes"] == ["Z"] and meta["genlab.lesion_threshold"] == 0.5
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [1, 128, 96]  # dynamic batch
    _, x, logits = _classifier_and_images(cls_run)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got_logits, got_probs = sess.run(None, {"image": x.numpy()})
    assert got_logits.shape == (5, 4)
    assert float((torch.from_numpy(got_logits) - logits).abs().max()) <= PARITY_TOL
    assert float((torch.from_numpy(got_probs) - logits.softmax(1)).abs().max()) <= PARITY_TOL


def test_classifier_torchscript_reloads_and_matches(cls_run):
    assert main(["export", str(cls_run), "--format", "torchscript"]) == 0
    path = cls_run / "export" / "classifier.torchscript.pt"
    extra = {"genlab.json": ""}
    module = torch.jit.load(str(path), _extra_files=extra)
    assert json.loads(extra["genlab.json"])["class_names"] == ["A", "B", "C", "Z"]
    _, x, logits = _classifier_and_images(cls_run, n=3)
    with torch.no_grad():
        got_logits, _ = module(x)
    assert float((got_logits - logits).abs().max()) <= PARITY_TOL


def test_classifier_safetensors_reloads_without_pickle(cls_run):
    assert main(["export", str(cls_run), "--format", "safetensors"]) == 0
    meta = json.loads((cls_run / "export" / "classifier.json").read_text())
    assert meta["format"] == "genlab-classifier" and meta["num_classes"] == 4
    net = load_classifier(cls_run)
    assert not net.training and net.meta["class_names"] == ["A", "B", "C", "Z"]
    _, x, logits = _classifier_and_images(cls_run, n=4)
    with torch.no_grad():
        assert float((net(x) - logits).abs().max()) <= PARITY_TOL


@pytest.mark.parametrize("fmt", ["onnx", "torchscript", "safetensors"])
def test_encoder_exports_match(dae_run, fmt, tmp_path, capsys):
    import genlab

    out = tmp_path / fmt
    assert main(["export", str(dae_run), "--format", fmt, "--out", str(out)]) == 0
    assert "exported the encoder" in capsys.readouterr().out
    enc = genlab.load_encoder(dae_run)  # the bundle written at the end of the run
    x = torch.rand(6, *enc.bundle_meta["input_shape"])
    with torch.no_grad():
        ref = enc(x)
    if fmt == "onnx":
        sess = ort.InferenceSession(str(out / "encoder.onnx"), providers=["CPUExecutionProvider"])
        got = torch.from_numpy(sess.run(None, {"image": x.numpy()})[0])
    elif fmt == "torchscript":
        with torch.no_grad():
            got = torch.jit.load(str(out / "encoder.torchscript.pt"))(x)
    else:
        with torch.no_grad():
            got = genlab.load_encoder(out)(x)
    assert got.shape == ref.shape and float((got - ref).abs().max()) <= PARITY_TOL


def test_failed_parity_check_removes_the_file(cls_run, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("genlab.tools.export_formats.PARITY_TOL", -1.0)  # nothing can pass
    assert main(["export", str(cls_run), "--format", "onnx", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "parity check failed" in err and "file removed" in err
    assert list(tmp_path.iterdir()) == []


def test_bundle_stays_the_default(dae_run, capsys):
    bundle = dae_run / "export" / "encoder.safetensors"
    before = bundle.stat().st_mtime_ns
    assert main(["export", str(dae_run)]) == 0
    assert "exported the encoder at step 4" in capsys.readouterr().out
    assert bundle.stat().st_mtime_ns >= before
    assert main(["export", str(dae_run), "--out", "somewhere"]) == 2
    assert "--out applies to --format onnx" in capsys.readouterr().err
    assert main(["export", str(dae_run.parent / "nope"), "--format", "onnx"]) == 2
    assert "not a genlab run folder" in capsys.readouterr().err
