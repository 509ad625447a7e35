"""`genlab export RUN_DIR --format onnx|torchscript|safetensors`: deployable models with a parity check.

What is exported:
    classifier runs  the whole classifier (preprocessing, backbone, head) from best.pt (else the
                     newest checkpoint), as `serve` and `predict` use it:
                     image (B, C, H, W) float32 in [0, 1] -> logits (B, K), probabilities (B, K)
    other runs       the encoder of the newest checkpoint (what `genlab export` bundles):
                     image (B, *input_shape) -> features (B, out_features)

Formats (files go to RUN_DIR/export/ unless --out says otherwise):
    onnx         <kind>.onnx: dynamic batch dimension (input 'image', outputs 'logits' and
                 'probabilities' or 'features'); the run's metadata (classes, input shape,
                 preprocessing, lesion rule) in the model's metadata_props
    torchscript  <kind>.torchscript.pt (torch.jit.trace; any batch size), the same metadata as
                 the extra file 'genlab.json'
    safetensors  classifier: classifier.safetensors + classifier.json, rebuilt by
                 `load_classifier(path)` with no pickle and no recipe; other runs: the encoder
                 bundle (encoder.safetensors + encoder.json, `genlab.load_encoder`)
    bundle       the encoder bundle (plus a GAN's generator), with no parity check

Parity: every export except `bundle` is reloaded (onnxruntime for ONNX) and run on a batch of
the run's test images (random inputs in the data's value range when the data cannot be built,
said in the result) and on a single image, so the dynamic batch dimension is exercised too. The
largest absolute difference from PyTorch on every output must be at most 1e-4; otherwise the
file is removed and the export fails. Exports run on the CPU in eval mode.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from genlab.core.errors import CheckpointError, GenlabError

FORMATS = ("bundle", "onnx", "torchscript", "safetensors")
PARITY_TOL = 1e-4
CLASSIFIER_FORMAT = "genlab-classifier"  # classifier.json's "format"
CLASSIFIER_FORMAT_VERSION = 1


class ExportError(GenlabError):
    """An export failed its parity check or a format's package is missing."""


@dataclass
class ExportResult:
    format: str
    kind: str                      # "classifier" or "encoder"
    files: list[Path]
    step: int
    max_abs_diff: float | None = None
    parity_inputs: str = ""
    batch_sizes: list[int] = field(default_factory=list)


# ----------------------------------------------------------------------------- exported modules
class ClassifierNet(nn.Module):
    """backbone -> head: (B, C, H, W) -> (B, K) logits; the module `load_classifier` returns.
    `head` is Sequential(Identity, Linear) so its tensor names match the family's (head.1.*)."""

    def __init__(self, backbone: nn.Module, num_classes: int):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Sequential(nn.Identity(), nn.Linear(backbone.num_features, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


class _ClassifierOutputs(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor):
        logits = self.model(image).float()
        return logits, torch.softmax(logits, dim=1)


class _Features(nn.Module):
    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, image: torch.Tensor):
        return self.encoder(image)


# ----------------------------------------------------------------------------- loading a run
@dataclass
class _Source:
    kind: str
    module: nn.Module           # returns a tensor or a tuple of tensors
    outputs: list[str]
    meta: dict
    step: int
    parity_x: torch.Tensor
    parity_inputs: str
    input_shape: tuple
    classifier: object | None = None   # the family module (classifier runs)
    run: object | None = None          # the loaded run (genlab.engine.runs.LoadedRun)


def _test_images(build, n: int, input_shape, value_range) -> tuple[torch.Tensor, str]:
    try:
        x = build(n).float().cpu()
        if tuple(x.shape[1:]) == tuple(input_shape):
            return x, f"{len(x)} test images"
        reason = f"test batch shape {tuple(x.shape[1:])}"
    except Exception as e:  # noqa: BLE001 - any data problem: fall back, and say so
        reason = f"{type(e).__name__}: {e}"
    gen = torch.Generator().manual_seed(0)
    lo, hi = (float(v) for v in value_range)
    x = torch.rand(n, *input_shape, generator=gen) * (hi - lo) + lo
    return x, f"{n} random inputs (test data unavailable: {str(reason)[:120]})"


def _load(run_dir: Path, n: int) -> _Source:
    """The module to export and its parity inputs: a classifier run's classifier (best.pt), any
    other run's encoder (newest checkpoint), loaded read-only on the CPU (genlab.load_run)."""
    import genlab
    from genlab.core.files import require_run_dir
    from genlab.core.recipe import load_recipe
    from genlab.core.registry import get_family
    from genlab.engine.runs import load_run
    from genlab.families.base import require

    run_dir = require_run_dir(run_dir)
    with warnings.catch_warnings():  # the recipe's warnings were shown at training
        warnings.simplefilter("ignore")
        classifier = get_family(load_recipe(run_dir / "recipe.yaml").family).can("classify")
    run = load_run(run_dir, "best" if classifier else "last", "cpu")
    rec, info, model = run.recipe, run.info, run.model
    base = {"genlab_version": genlab.__version__, "recipe": rec.name, "family": rec.family,
            "run": run_dir.name}

    def build(k):
        return run.data.get("test", torch.arange(min(k, run.data.size("test"))))["x"]

    x, said = _test_images(build, n, info.input_shape, info.value_range)
    if classifier:
        spec = model.encoder_spec()
        meta = {**base, "kind": "classifier", "checkpoint": run.checkpoint.name, "step": run.step,
                "class_names": list(info.class_names), "input_shape": list(info.input_shape),
                "value_range": list(info.value_range),
                "preprocessing": "float32 in value_range, (B, *input_shape); images: grayscale or "
                                 "RGB, resized (bilinear) to (H, W), / 255 (see genlab serve)",
                "negative_classes": [info.class_names[i] for i in model.negative],
                "lesion_threshold": model.cfg.lesion_threshold,
                "lesion_rule": "P(lesion) = 1 - sum P(negative classes) >= lesion_threshold",
                "backbone": {"builder": spec.builder, "config": spec.config},
                "num_features": int(model.backbone.num_features)}
        # the wrappers are put in eval mode: exporters restore the mode they find, recursively
        return _Source("classifier", _ClassifierOutputs(model).eval(), ["logits", "probabilities"],
                       meta, run.step, x, said, tuple(info.input_shape), classifier=model, run=run)
    require(model, "encode", "genlab export --format")
    spec = model.encoder_spec()
    meta = {**base, "kind": "encoder", "step": run.step, "input_shape": list(info.input_shape),
            "value_range": list(info.value_range), "out_features": spec.out_features,
            "builder": spec.builder, "config": spec.config}
    return _Source("encoder", _Features(spec.module.eval()).eval(), ["features"], meta, run.step, x,
                   said, tuple(info.input_shape), run=run)


# ----------------------------------------------------------------------------- parity
def _as_list(out) -> list[torch.Tensor]:
    return list(out) if isinstance(out, (tuple, list)) else [out]


def _check(src: _Source, run_other, what: str) -> tuple[float, list[int]]:
    """Largest |difference| between PyTorch and `run_other(x) -> list of arrays/tensors` on the
    parity batch and on one image; ExportError above PARITY_TOL (the caller removes its file)."""
    worst, sizes = 0.0, []
    for x in (src.parity_x, src.parity_x[:1]):
        with torch.no_grad():
            ref = [t.float() for t in _as_list(src.module(x))]
        got = [torch.as_tensor(t).float() for t in run_other(x)]
        if len(got) != len(ref) or any(g.shape != r.shape for g, r in zip(got, ref)):
            raise ExportError(f"{what}: outputs {[tuple(g.shape) for g in got]} differ in shape from "
                              f"PyTorch's {[tuple(r.shape) for r in ref]} (file removed)")
        worst = max([worst] + [float((g - r).abs().max()) for g, r in zip(got, ref)])
        sizes.append(len(x))
    if not worst <= PARITY_TOL:
        raise ExportError(f"{what}: parity check failed: max |{what} - PyTorch| = {worst:.3g} > "
                          f"{PARITY_TOL:g} (file removed)")
    return worst, sizes


@contextlib.contextmanager
def _removed_on_failure(path: Path):
    """`path` is deleted when the block fails (a failed export leaves no file behind)."""
    try:
        yield path
    except BaseException:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        raise


def _staged_bundle(out: Path, name: str, write, reload, src: _Source, what: str):
    """Write bundle NAME (genlab.core.bundle) into a hidden folder in `out` with `write(folder)`,
    check the module `reload(folder)` gives, then move it into `out`, the JSON last (a bundle
    whose JSON exists is complete). Returns ([weights, json], max |diff|, batch sizes)."""
    stage = Path(tempfile.mkdtemp(prefix=f".{name}-", suffix=".tmp", dir=out))
    try:
        write(stage)
        module = reload(stage)

        def run(x):
            with torch.no_grad():
                return _as_list(module(x))

        worst, sizes = _check(src, run, what)
        files = [out / f"{name}.safetensors", out / f"{name}.json"]
        for f in files:
            os.replace(stage / f.name, f)
        return files, worst, sizes
    finally:
        shutil.rmtree(stage, ignore_errors=True)


# ----------------------------------------------------------------------------- formats
def _onnx(src: _Source, path: Path) -> tuple[float, list[int]]:
    try:
        import onnx
        import onnxruntime as ort
    except ImportError as e:
        raise ExportError(f"ONNX export needs the [serve] extra ({e.name} is missing): "
                          f"pip install -e '.[serve]'") from None
    example = src.parity_x[:2].contiguous()
    dynamic = {"image": {0: "batch"}, **{o: {0: "batch"} for o in src.outputs}}
    kw = {"input_names": ["image"], "output_names": src.outputs}
    with _removed_on_failure(path.with_name(path.name + ".tmp")) as tmp:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            try:  # the TorchScript-based exporter: fast, and takes dynamic_axes
                torch.onnx.export(src.module, (example,), str(tmp), dynamo=False,
                                  dynamic_axes=dynamic, opset_version=17, **kw)
            except TypeError:  # torch < 2.5 has no `dynamo` argument
                torch.onnx.export(src.module, (example,), str(tmp), dynamic_axes=dynamic,
                                  opset_version=17, **kw)
            except Exception:  # noqa: BLE001 - a torch without it: the torch.export-based exporter
                batch = torch.export.Dim("batch", min=1, max=65536)
                torch.onnx.export(src.module, (example,), str(tmp), dynamo=True,
                                  dynamic_shapes={"image": {0: batch}}, **kw)
        model = onnx.load(str(tmp))
        for k, v in src.meta.items():
            entry = model.metadata_props.add()
            entry.key, entry.value = f"genlab.{k}", json.dumps(v)
        onnx.save(model, str(tmp))
        sess = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        result = _check(src, lambda x: sess.run(None, {"image": x.numpy()}), "onnxruntime")
    os.replace(tmp, path)
    return result


def _torchscript(src: _Source, path: Path) -> tuple[float, list[int]]:
    with _removed_on_failure(path.with_name(path.name + ".tmp")) as tmp:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(src.module, (src.parity_x[:2].contiguous(),), check_trace=False)
            torch.jit.save(traced, str(tmp), _extra_files={"genlab.json": json.dumps(src.meta)})
            loaded = torch.jit.load(str(tmp), map_location="cpu").eval()

        def run(x):
            with torch.no_grad():
                return _as_list(loaded(x))

        result = _check(src, run, "TorchScript")
    os.replace(tmp, path)
    return result


def _classifier_safetensors(src: _Source, out: Path) -> tuple[list[Path], float, list[int]]:
    from genlab.core.bundle import save_bundle

    state = {k: v for k, v in src.classifier.state_dict().items()
             if k.startswith(("backbone.", "head."))}
    meta = {"format": CLASSIFIER_FORMAT, "version": CLASSIFIER_FORMAT_VERSION, **src.meta,
            "num_classes": len(src.meta["class_names"])}

    def write(folder):
        save_bundle(folder, "classifier", state, meta)

    def reload(folder):  # (logits, probabilities), as the exported module
        return _ClassifierOutputs(load_classifier(folder)).eval()

    return _staged_bundle(out, "classifier", write, reload, src, "safetensors reload")


def load_classifier(path: str | Path) -> ClassifierNet:
    """Rebuild a classifier exported with --format safetensors (its folder, a run folder, its
    .json or .safetensors): an eval-mode module (B, C, H, W) in [0, 1] -> (B, K) logits, with
    `.meta` (class names, input shape, negative classes, lesion threshold). Nothing is unpickled."""
    from genlab.core.bundle import find_bundle, load_bundle
    from genlab.nn import ENCODER_BUILDERS

    meta, state = load_bundle(Path(path), "classifier", CLASSIFIER_FORMAT)
    _, weights = find_bundle(Path(path), "classifier")
    bb = meta.get("backbone") or {}
    builder = ENCODER_BUILDERS.get(bb.get("builder"))
    if builder is None:
        raise CheckpointError(f"{weights}: unknown backbone builder {bb.get('builder')!r}")
    net = ClassifierNet(builder(**bb["config"]), int(meta["num_classes"]))
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as e:
        detail = "; ".join(line.strip() for line in str(e).splitlines() if line.strip())
        raise CheckpointError(f"{weights}: does not fit the classifier it describes: {detail}") from None
    net.meta = meta
    return net.eval()


def _encoder_safetensors(src: _Source, out: Path) -> tuple[list[Path], float, list[int]]:
    from genlab.families.export import load_encoder, save_encoder

    run = src.run

    def write(folder):
        save_encoder(run.model.encoder_spec(), folder, family=run.recipe.family, info=run.info,
                     recipe_name=run.recipe.name, step=run.step)

    return _staged_bundle(out, "encoder", write, load_encoder, src, "bundle reload")


# ----------------------------------------------------------------------------- entry point
def export_run(run_dir: str | Path, fmt: str, out: str | Path | None = None,
               parity_n: int = 8) -> ExportResult:
    """Export `run_dir` as `fmt` (onnx, torchscript or safetensors; see the module docstring)
    into `out` (default RUN_DIR/export) and check parity on `parity_n` test images."""
    if fmt not in FORMATS or fmt == "bundle":
        raise GenlabError(f"--format {fmt}: export_run writes onnx, torchscript or safetensors")
    run_dir = Path(run_dir)
    src = _load(run_dir, parity_n)
    out = Path(out) if out is not None else run_dir / "export"
    out.mkdir(parents=True, exist_ok=True)
    res = ExportResult(fmt, src.kind, [], src.step, parity_inputs=src.parity_inputs)
    if fmt == "onnx":
        path = out / f"{src.kind}.onnx"
        res.max_abs_diff, res.batch_sizes = _onnx(src, path)
        res.files = [path]
    elif fmt == "torchscript":
        path = out / f"{src.kind}.torchscript.pt"
        res.max_abs_diff, res.batch_sizes = _torchscript(src, path)
        res.files = [path]
    elif src.kind == "classifier":
        res.files, res.max_abs_diff, res.batch_sizes = _classifier_safetensors(src, out)
    else:
        res.files, res.max_abs_diff, res.batch_sizes = _encoder_safetensors(src, out)
    return res


__all__ = ["FORMATS", "PARITY_TOL", "ClassifierNet", "ExportError", "ExportResult", "export_run",
           "load_classifier"]
