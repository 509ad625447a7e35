"""Lesion classifiers through the shared trainer (SPECS §5, §6): "classifier".

    image (B, C, H, W) -> backbone (pre -> conv trunk -> neck) -> (B, F) -> dropout + linear -> (B, K)

Backbones (genlab.nn.backbones): the seed's brain_tumor_nn, seed 004's model1 / model2, a VGG-like
net with depthwise-separable convs (vgg_sep), ResNet-18 (resnet18), or any exported encoder
bundle (`init:` a bundle folder or a run folder with export/) with a new head.

Modes (what trains, `mode:`):
    scratch       everything, from random weights, at train.lr
    linear_probe  the backbone is frozen: requires_grad False and kept in eval mode (batch-norm
                  statistics and dropout frozen) even while the model trains; only the head learns
    finetune      everything; the backbone at train.lr x encoder_lr_mult
    gradual       head only for `unfreeze_every` steps, then one more backbone stage from the top
                  every `unfreeze_every` steps (ULMFiT-style); unfrozen stages at lr x encoder_lr_mult

Loading a bundle prints which tensors were loaded, skipped or missing (and records it in the
run's export/encoder.json as `init_report`); a shape mismatch (e.g. another input size) is an
error unless `allow_shape_mismatch: true`, which rebuilds the encoder for the data's shape and
skips the tensors whose shape then differs.

Validation: `loss` is the plain cross-entropy (no class weights, no smoothing) and is the
monitor (best.pt, early stopping). `summarize` adds whole-split metrics: acc, auc (macro
one-vs-rest for K > 2), ece, top5 (K > 5), sens/<class>, spec/<class>, and for lesion tasks
bin/{sens,spec,ppv,npv,f1,auc} of "any lesion class vs the negative classes". On data with
lesion masks (the brain factory) Grad-CAM of the predicted class is scored against the mask:
loc/mass (share of CAM mass inside the mask), loc/point (pointing game), each beside its
uniform-map baseline, over lesion images (and loc/*_correct over the correctly classified ones).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from genlab.core.errors import CheckpointError, RecipeError
from genlab.core.registry import register_family
from genlab.core.schema import param
from genlab.data.base import DataInfo
from genlab.data.subset import LabelSubset, labelled_mask
from genlab.families.base import EncoderSpec, Family, StepContext
from genlab.nn.backbones import BACKBONES, build_backbone
from genlab.nn.blocks import first_layer
from genlab.nn.optim import build_optimizer

# class names (case-insensitive) taken as "no lesion" when negative_classes is not given
NEGATIVE_NAMES = ("z", "healthy", "normal", "benign", "negative", "no_lesion", "nolesion", "none")


@dataclass
class AugmentConfig:
    hflip: bool = param(False, help="random horizontal flip (p 0.5)")
    vflip: bool = param(False, help="random vertical flip (p 0.5)")
    degrees: float = param(0.0, ge=0, le=180, help="random rotation in [-degrees, degrees]")
    translate: float = param(0.0, ge=0, lt=1, help="random shift up to this fraction of W and H")
    scale: list[float] = param(default_factory=lambda: [1.0, 1.0], gt=0,
                               help="random zoom factor range [lo, hi]")
    brightness: float = param(0.0, ge=0, help="ColorJitter brightness (factor in [1-b, 1+b])")
    contrast: float = param(0.0, ge=0, help="ColorJitter contrast (factor in [1-c, 1+c])")

    def __post_init__(self):
        if len(self.scale) != 2 or self.scale[0] > self.scale[1]:
            raise ValueError(f"scale: expected [lo, hi] with lo <= hi, got {self.scale}")

    @property
    def enabled(self) -> bool:
        return bool(self.hflip or self.vflip or self.degrees or self.translate
                    or list(self.scale) != [1.0, 1.0] or self.brightness or self.contrast)


@dataclass
class ClassifierConfig:
    backbone: Literal["brain_tumor_nn", "model1", "model2", "vgg_sep", "resnet18", "encoder"] | None = param(
        None, help="network before the head (null: vgg_sep, or encoder when init is set)")
    channels: list[int] | None = param(None, ge=1, help="conv widths of brain_tumor_nn/model1/model2/"
                                       "vgg_sep (null: the published ones)")
    stem_stride: int = param(1, ge=1, le=4, help="stride of the first conv (brain_tumor_nn, model1, "
                             "model2, vgg_sep): 2 makes full-size images ~4x cheaper")
    pretrained: bool = param(False, help="resnet18: ImageNet weights from the local torch hub cache "
                             "(never downloaded; a clear error when absent)")
    init: Path | None = param(None, must_exist=True, help="exported encoder bundle (a folder with "
                              "encoder.json, or a run folder with export/) to start the backbone from")
    mode: Literal["scratch", "linear_probe", "finetune", "gradual"] = param(
        "scratch", help="what trains: all from scratch; head only; all with a backbone lr multiplier; "
        "head then backbone stages top-down")
    encoder_lr_mult: float = param(0.1, gt=0, help="backbone lr = train.lr x this (finetune, gradual)")
    unfreeze_every: int = param(200, ge=1, help="gradual: steps between unfreezing backbone stages")
    allow_shape_mismatch: bool = param(False, help="init: rebuild the encoder for the data's input "
                                       "shape and skip tensors whose shapes differ (else an error)")
    class_weights: Literal["none", "balanced"] = param(
        "none", help="balanced: cross-entropy weight N / (K n_c) per class against imbalance")
    label_smoothing: float = param(0.0, ge=0, lt=1, help="label smoothing of the training loss")
    dropout: float = param(0.0, ge=0, lt=1, help="dropout before the linear head")
    augment: AugmentConfig = param(default_factory=AugmentConfig,
                                   help="training-time augmentation (torchvision.transforms.v2)")
    clahe: bool = param(False, help="CLAHE contrast equalisation of every input (train, eval, predict)")
    clahe_clip: float = param(2.0, gt=0, help="CLAHE clip limit (OpenCV's clipLimit)")
    clahe_grid: list[int] = param(default_factory=lambda: [8, 8], ge=1, help="CLAHE tiles [rows, cols]")
    label_fraction: float = param(1.0, gt=0, le=1, help="train on this fraction of the training "
                                  "labels (a fixed, nested, class-independent subset)")
    subset_seed: int = param(0, ge=0, help="which labelled subset (label_fraction < 1)")
    negative_classes: list[str] | None = param(None, help="classes meaning 'no lesion' for the "
                                               "binary metrics and the lesion call (null: Z, healthy, "
                                               "normal, benign ...; class 0 of a 2-class task)")
    lesion_threshold: float = param(0.5, gt=0, lt=1, help="P(lesion) at or above this: lesion call")
    localisation: bool = param(True, help="score Grad-CAM against lesion masks when the data has them")
    cam_tolerance_px: int = param(8, ge=0, help="pointing game: the peak may miss the mask by this many "
                                  "px (8 ~ the usual 15 px at 224 px; half a cell of a 16-px Grad-CAM map)")

    def __post_init__(self):
        if self.init is not None:
            if self.backbone not in (None, "encoder"):
                raise ValueError(f"backbone: init loads an exported encoder, so backbone must be "
                                 f"'encoder' or null, not {self.backbone!r}")
            if self.mode == "scratch":
                raise ValueError("mode: 'scratch' trains from random weights; with init use "
                                 "linear_probe, finetune or gradual")
        elif self.backbone == "encoder":
            raise ValueError("backbone: 'encoder' needs init (an exported encoder bundle)")
        if self.pretrained and self.name != "resnet18":
            raise ValueError("pretrained: ImageNet weights exist only for backbone resnet18")
        if self.pretrained and self.mode == "scratch":
            raise ValueError("mode: 'scratch' means random weights; with pretrained use "
                             "linear_probe, finetune or gradual")
        if self.channels is not None and self.name in ("resnet18", "encoder"):
            raise ValueError(f"channels: not used by backbone {self.name!r}")
        if self.stem_stride != 1 and self.name in ("resnet18", "encoder"):
            raise ValueError(f"stem_stride: not used by backbone {self.name!r}")
        if len(self.clahe_grid) != 2:
            raise ValueError(f"clahe_grid: expected [rows, cols], got {self.clahe_grid}")

    @property
    def name(self) -> str:
        """The backbone actually built."""
        return self.backbone or ("encoder" if self.init is not None else "vgg_sep")


# ----------------------------------------------------------------------------- bundle loading
def _bundle_for_data(path: Path, in_shape: list[int], allow: bool) -> tuple[dict, Path, dict, list[str]]:
    """(meta, weights path, builder config for `in_shape`, notes)."""
    from genlab.families.export import read_bundle_meta

    meta, weights = read_bundle_meta(Path(path))
    config, notes = dict(meta.get("config", {})), []
    bundle_shape = [int(s) for s in meta.get("input_shape", in_shape)]
    if bundle_shape != list(in_shape):
        key = next((k for k in ("in_shape", "input_shape") if k in config), None)
        if not allow:
            raise CheckpointError(
                f"{path}: the encoder was trained on inputs {bundle_shape}, the data gives "
                f"{list(in_shape)}; set model.allow_shape_mismatch: true to rebuild it for the data's "
                f"shape (tensors whose shape then differs are skipped and start from scratch)")
        if key is None:
            raise CheckpointError(f"{path}: builder {meta['builder']!r} has no in_shape/input_shape "
                                  f"argument, so it cannot be rebuilt for inputs {list(in_shape)}")
        config[key] = list(in_shape)
        notes.append(f"rebuilt for input {list(in_shape)} (bundle: {bundle_shape})")
    return meta, weights, config, notes


def load_bundle_weights(module: nn.Module, weights: Path, allow_shape_mismatch: bool) -> dict:
    """Copy a bundle's tensors into `module` by name and say what happened to each.

    loaded: same name and shape; skipped: in the bundle but not used (no such tensor in the
    module, or a different shape when allowed); missing: in the module but not in the bundle
    (left at their fresh initialisation). A shape mismatch is a CheckpointError unless allowed.
    """
    from safetensors.torch import load_file

    state = load_file(str(weights), device="cpu")
    own = module.state_dict()
    loaded, skipped, mismatched = [], [], []
    for k, v in state.items():
        if k not in own:
            skipped.append({"name": k, "shape": list(v.shape), "reason": "not in the module"})
        elif own[k].shape != v.shape:
            mismatched.append(f"{k}: bundle {list(v.shape)} vs module {list(own[k].shape)}")
            skipped.append({"name": k, "shape": list(v.shape),
                            "reason": f"shape differs (module {list(own[k].shape)})"})
        else:
            loaded.append({"name": k, "shape": list(v.shape)})
    if mismatched and not allow_shape_mismatch:
        raise CheckpointError(f"{weights}: shape mismatch: " + "; ".join(sorted(mismatched))
                              + " (set model.allow_shape_mismatch: true to skip these tensors)")
    missing = [{"name": k, "shape": list(own[k].shape)} for k in own if k not in state]
    module.load_state_dict({d["name"]: state[d["name"]] for d in loaded}, strict=False)
    return {"loaded": loaded, "skipped": skipped, "missing": missing}


def format_init_report(r: dict) -> str:
    def names(items):
        return ", ".join(f"{d['name']} {tuple(d['shape'])}" + (f" [{d['reason']}]" if "reason" in d else "")
                         for d in items) or "-"

    head = (f"init from {r['bundle']} (family {r.get('family')}, builder {r['builder']}, "
            f"step {r.get('step')}): {len(r['loaded'])} tensors loaded, {len(r['skipped'])} "
            f"skipped, {len(r['missing'])} missing")
    lines = [head]
    lines += [f"  loaded:  {names(r['loaded'])}", f"  skipped: {names(r['skipped'])}",
              f"  missing: {names(r['missing'])}"]
    lines += [f"  note:    {n}" for n in r.get("notes", [])]
    return "\n".join(lines)


def resolve_negative(given: list[str] | None, class_names: tuple[str, ...]) -> list[int]:
    """Indices of the 'no lesion' classes (see ClassifierConfig.negative_classes)."""
    names = list(class_names)
    if given is not None:
        bad = [c for c in given if c not in names]
        if bad:
            raise RecipeError("model.negative_classes", f"unknown class(es) {bad} (classes: {names})")
        return sorted(names.index(c) for c in given)
    found = [i for i, c in enumerate(names) if c.lower() in NEGATIVE_NAMES]
    if not found and len(names) == 2:
        found = [0]
    return found if len(found) < len(names) else []


# ----------------------------------------------------------------------------- the family
@register_family("classifier")
class Classifier(Family):
    """Image classifier: a conv backbone (or an exported encoder) and a linear head."""
    capabilities = frozenset({"classify", "encode"})

    Config = ClassifierConfig
    monitor = ("loss", "min")

    def __init__(self, cfg: ClassifierConfig, info: DataInfo):
        super().__init__()
        self.cfg, self.info = cfg, info
        in_shape, k = list(info.input_shape), info.num_classes
        pre = {"clahe": cfg.clahe, "clahe_clip": cfg.clahe_clip, "clahe_grid": list(cfg.clahe_grid)}
        self.init_report: dict | None = None
        if cfg.init is not None:
            meta, weights, enc_cfg, notes = _bundle_for_data(cfg.init, in_shape, cfg.allow_shape_mismatch)
            if pre["clahe"] and enc_cfg.get("clahe"):  # another classifier's backbone: CLAHE inside
                pre["clahe"] = False
                notes.append("the bundle's backbone applies CLAHE itself; not applied twice")
            self._backbone_args = dict(name="encoder", in_shape=in_shape,
                                       encoder={"builder": meta["builder"], "config": enc_cfg}, **pre)
            try:
                self.backbone = build_backbone(**self._backbone_args)
            except (ValueError, TypeError, RuntimeError) as e:
                raise CheckpointError(f"{cfg.init}: cannot rebuild its encoder: {e}") from None
            report = load_bundle_weights(self.backbone.encoder, weights, cfg.allow_shape_mismatch)
            vr = meta.get("value_range")
            if vr is not None and [float(v) for v in vr] != [float(v) for v in info.value_range]:
                notes.append(f"bundle value_range {vr} differs from the data's {list(info.value_range)}")
            self.init_report = {"bundle": str(cfg.init), "family": meta.get("family"),
                                "builder": meta["builder"], "step": meta.get("step"),
                                "notes": notes, **report}
            print(format_init_report(self.init_report), flush=True)
        else:
            self._backbone_args = dict(name=cfg.name, in_shape=in_shape, channels=cfg.channels,
                                       pretrained=cfg.pretrained, stem_stride=cfg.stem_stride, **pre)
            self.backbone = build_backbone(**self._backbone_args)
        self.head = nn.Sequential(nn.Dropout(cfg.dropout) if cfg.dropout else nn.Identity(),
                                  nn.Linear(self.backbone.num_features, k))
        self.negative = resolve_negative(cfg.negative_classes, tuple(info.class_names))
        # classes seen in training batches: balanced class weights until bind_data gives exact counts
        self.register_buffer("class_seen", torch.zeros(k, dtype=torch.float64))
        self._counts_exact = False
        self._subset_by_data = False
        self._stages = self.backbone.stages()  # bottom (input side) first
        self._unfrozen = 0 if cfg.mode in ("linear_probe", "gradual") else len(self._stages)
        self._transform = self._build_augment(cfg.augment)
        self._apply_freeze()

    # -- freezing --------------------------------------------------------------------------------
    def _frozen_stages(self) -> list[nn.Module]:
        return self._stages[: len(self._stages) - self._unfrozen]

    def _apply_freeze(self) -> None:
        if self._unfrozen >= len(self._stages) and self.cfg.mode != "linear_probe":
            trainable = set(map(id, self.backbone.parameters()))
        else:
            trainable = {id(p) for s in self._stages[len(self._stages) - self._unfrozen:]
                         for p in s.parameters()}
        for p in self.backbone.parameters():
            p.requires_grad_(id(p) in trainable)
        self.train(self.training)

    def train(self, mode: bool = True):
        """As nn.Module.train, but frozen backbone stages stay in eval mode (frozen batch-norm
        statistics, no dropout), so a linear probe's features never move."""
        super().train(mode)
        if mode and hasattr(self, "_stages"):
            if self._unfrozen == 0:
                self.backbone.eval()
            for s in self._frozen_stages():
                s.eval()
        return self

    def unfrozen_at(self, step: int) -> int:
        """Backbone stages trainable at `step` (gradual: one more every unfreeze_every steps)."""
        if self.cfg.mode == "linear_probe":
            return 0
        if self.cfg.mode != "gradual":
            return len(self._stages)
        return min(len(self._stages), step // self.cfg.unfreeze_every)

    # -- data hook -------------------------------------------------------------------------------
    def bind_data(self, data):
        """Optional hook for the trainer (call it on the training data right after building the
        family): returns the data to train on (the labelled subset when label_fraction < 1) and
        takes exact class counts for balanced weights. Without it the family masks its loss to
        the labelled examples and estimates class counts from the batches it sees."""
        if self.cfg.label_fraction < 1.0:
            data = LabelSubset(data, self.cfg.label_fraction, self.cfg.subset_seed)
            self._subset_by_data = True
        counts = getattr(data, "class_counts", None)
        if self.cfg.class_weights == "balanced" and callable(counts):
            self.class_seen.copy_(counts("train").to(self.class_seen))
            self._counts_exact = True
        return data

    def class_weight(self) -> torch.Tensor | None:
        if self.cfg.class_weights == "none":
            return None
        n = self.class_seen.clamp_min(1.0)
        return (n.sum() / (len(n) * n)).float()

    # -- the contract ----------------------------------------------------------------------------
    def configure_optimizers(self, train):
        head, body = list(self.head.parameters()), list(self.backbone.parameters())
        if self.cfg.mode == "linear_probe":
            return {"main": build_optimizer([{"params": head}], train)}
        if self.cfg.mode == "scratch":
            return {"main": build_optimizer(head + body, train)}
        return {"main": build_optimizer([{"params": head},
                                         {"params": body, "lr": train.lr * self.cfg.encoder_lr_mult}],
                                        train)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))  # (B, K) logits

    @staticmethod
    def _build_augment(a: AugmentConfig):
        if not a.enabled:
            return None
        from torchvision.transforms import v2

        ts = []
        if a.hflip:
            ts.append(v2.RandomHorizontalFlip())
        if a.vflip:
            ts.append(v2.RandomVerticalFlip())
        if a.degrees or a.translate or list(a.scale) != [1.0, 1.0]:
            ts.append(v2.RandomAffine(degrees=a.degrees,
                                      translate=(a.translate, a.translate) if a.translate else None,
                                      scale=tuple(a.scale) if list(a.scale) != [1.0, 1.0] else None))
        if a.brightness or a.contrast:
            ts.append(v2.ColorJitter(brightness=a.brightness or None, contrast=a.contrast or None))
        return v2.Compose(ts)

    def augment(self, x: torch.Tensor) -> torch.Tensor:
        """Per-image random transforms (training only; draws from the global torch RNG, which the
        trainer seeds and checkpoints)."""
        if self._transform is None:
            return x
        return torch.stack([self._transform(img) for img in x]).clamp_(0, 1)

    def training_step(self, batch, ctx: StepContext):
        if self.cfg.mode == "gradual":
            n = self.unfrozen_at(ctx.step)
            if n != self._unfrozen:
                self._unfrozen = n
                self._apply_freeze()
        x, y = batch["x"], batch["y"]
        if self.cfg.label_fraction < 1.0 and not self._subset_by_data:
            keep = labelled_mask(batch["index"], self.cfg.label_fraction, self.cfg.subset_seed)
            if not bool(keep.any()):  # no labelled example in this batch: no update
                zero = torch.zeros((), device=x.device)
                return {"loss": zero, "acc": zero}
            x, y = x[keep], y[keep]
        if self.cfg.class_weights == "balanced" and not self._counts_exact:
            self.class_seen += torch.bincount(y, minlength=len(self.class_seen)).to(self.class_seen)
        x = self.augment(x)
        with ctx.autocast():
            logits = self(x)
        loss = F.cross_entropy(logits.float(), y, weight=self.class_weight(),
                               label_smoothing=self.cfg.label_smoothing)
        ctx.update("main", loss)
        return {"loss": loss.detach(), "acc": (logits.argmax(1) == y).float().mean()}

    @torch.no_grad()
    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self(x).float(), dim=1)

    def lesion_probability(self, probs: torch.Tensor) -> torch.Tensor | None:
        """(B,) P(any lesion class) = 1 - P(negative classes); None when no class is negative."""
        if not self.negative:
            return None
        return 1.0 - probs[:, self.negative].sum(1)

    @property
    def can_explain(self) -> bool:
        return self.backbone.cam_layer is not None

    def gradcam(self, x: torch.Tensor, class_idx=None) -> torch.Tensor:
        """(B, H, W) Grad-CAM maps in [0, 1] at the backbone's conv trunk (call in eval mode)."""
        from genlab.metrics.gradcam import GradCAM

        with GradCAM(self, self.backbone.cam_layer) as cam:
            return cam(x, class_idx)

    @torch.no_grad()
    def evaluate(self, batch):
        x, y = batch["x"], batch["y"]
        logits = self(x).float()
        probs = torch.softmax(logits, dim=1)
        pred = probs.argmax(1)
        out = {"loss": F.cross_entropy(logits, y), "acc": (pred == y).float().mean(),
               "probs": probs, "y": y}
        if self.cfg.localisation and "mask" in batch and self.can_explain:
            out.update(self._localisation(x, batch["mask"], pred, y))
        return out

    def _localisation(self, x, mask, pred, y) -> dict[str, torch.Tensor]:
        """Per-image Grad-CAM scores against the lesion mask (NaN for images without a lesion)."""
        from genlab.metrics.gradcam import localisation_scores

        cams = self.gradcam(x, pred).cpu()
        m = mask[:, 0].bool().cpu()
        has = m.flatten(1).any(1)
        s = localisation_scores(cams, m, self.cfg.cam_tolerance_px)
        nan = torch.full((len(x),), float("nan"))

        def col(v):
            return torch.where(has, torch.as_tensor(np.asarray(v), dtype=torch.float32), nan).to(x.device)

        return {"cam_mass": col(s["mass_in_mask"]), "cam_mass_base": col(s["mass_baseline"]),
                "cam_point": col(s["pointing_game"]), "cam_point_base": col(s["pointing_baseline"]),
                "cam_correct": (pred == y).float()}

    def report(self, probs: torch.Tensor, y: torch.Tensor) -> dict:
        """genlab.metrics.classification.classification_report for these predictions, with the lesion block."""
        from genlab.metrics.classification import classification_report

        k = probs.shape[1]
        positive = [i for i in range(k) if i not in self.negative] if self.negative else None
        return classification_report(y.cpu(), probs.cpu(), list(self.info.class_names),
                                     positive=positive, top_k=(5,))

    def summarize(self, collected: dict[str, torch.Tensor]) -> dict[str, float]:
        rep = self.report(collected["probs"], collected["y"])
        nan = float("nan")

        def f(v):
            return nan if v is None else float(v)

        out = {"acc": f(rep["accuracy"]), "auc": f(rep["auc"]), "ece": f(rep["ece"])}
        if rep["num_classes"] > 2:
            out["auc_macro"] = f(rep["macro"]["auc"])
        if "5" in rep["top_k_accuracy"]:
            out["top5"] = f(rep["top_k_accuracy"]["5"])
        for row in rep["per_class"]:
            out[f"sens/{row['class']}"] = f(row["sensitivity"])
            out[f"spec/{row['class']}"] = f(row["specificity"])
        if rep["binary"]:
            b = rep["binary"]
            for key in ("sensitivity", "specificity", "ppv", "npv", "f1", "auc"):
                out[f"bin/{key[:4] if key in ('sensitivity', 'specificity') else key}"] = f(b[key])
        if "cam_mass" in collected:
            out.update(localisation_summary(collected))
        # undefined values (a class absent from the split) are left out, not NaN: metrics.json
        # is strict JSON and TensorBoard curves skip a missing point anyway
        return {k: v for k, v in out.items() if math.isfinite(v)}

    @torch.no_grad()
    def renders(self, batch):
        from genlab.metrics.classification import confusion_matrix, plot_confusion_matrix
        from genlab.viz.render import image_grid, tile_kernels, tile_weights, to_rgb

        out = {}
        layer = first_layer(self.backbone)
        if isinstance(layer, nn.Conv2d):
            out["filters"] = tile_kernels(layer.weight, max_tiles=64)
        elif isinstance(layer, nn.Linear) and layer.weight.shape[1] == math.prod(self.info.input_shape):
            out["filters"] = tile_weights(layer.weight, self.info.input_shape, max_tiles=64)
        x = batch["x"]
        if self.can_explain:
            from genlab.metrics.gradcam import overlay

            xs = x[:8]
            cams = self.gradcam(xs).cpu()
            rows = [torch.stack([to_rgb(i) for i in xs.float().cpu().clamp(0, 1)]),
                    torch.stack([overlay(i, c) for i, c in zip(xs.float().cpu(), cams)])]
            if "mask" in batch:
                rows.append(batch["mask"][:8].float().cpu().expand(-1, 3, -1, -1))
            out["gradcam"] = image_grid(torch.cat(rows), nrow=len(xs))
        pred = self(x).argmax(1)
        cm = confusion_matrix(batch["y"].cpu(), pred.cpu(), self.info.num_classes)
        img = plot_confusion_matrix(cm, list(self.info.class_names),
                                    title=f"render batch ({len(x)} val images)")
        out["confusion"] = torch.from_numpy(img).permute(2, 0, 1).float() / 255.0
        return out

    @torch.no_grad()
    def histograms(self, batch):
        return {"features": self.backbone(batch["x"][:64])}

    # -- optional capabilities -------------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)  # (B, num_features), preprocessing included

    @property
    def out_features(self) -> int:
        return self.backbone.num_features

    def encoder_spec(self) -> EncoderSpec:
        config = {k: v for k, v in self._backbone_args.items() if v is not None}
        config["pretrained"] = False  # the weights are in the bundle
        extra = {"classifier": {"backbone": self.cfg.name, "mode": self.cfg.mode,
                                "negative_classes": [self.info.class_names[i] for i in self.negative],
                                "preprocess": {"clahe": self.cfg.clahe, "clahe_clip": self.cfg.clahe_clip,
                                               "clahe_grid": list(self.cfg.clahe_grid)}}}
        if self.init_report is not None:
            extra["init_report"] = self.init_report
        return EncoderSpec(builder="classifier_backbone", config=config, module=self.backbone,
                           out_features=self.backbone.num_features, extra=extra)


def localisation_summary(collected: dict[str, torch.Tensor]) -> dict[str, float]:
    """Means of the per-image Grad-CAM scores over lesion images (and correct ones)."""
    mass = collected["cam_mass"].double().cpu()
    has = ~torch.isnan(mass)
    correct = collected["cam_correct"].cpu().bool() & has
    out = {"loc/n": float(has.sum())}
    for key, name in (("cam_mass", "mass"), ("cam_mass_base", "mass_base"),
                      ("cam_point", "point"), ("cam_point_base", "point_base")):
        v = collected[key].double().cpu()
        out[f"loc/{name}"] = float(v[has].mean()) if has.any() else float("nan")
        if name in ("mass", "point"):
            out[f"loc/{name}_correct"] = float(v[correct].mean()) if correct.any() else float("nan")
    return out


__all__ = ["BACKBONES", "AugmentConfig", "Classifier", "ClassifierConfig", "format_init_report",
           "load_bundle_weights", "localisation_summary", "resolve_negative"]
