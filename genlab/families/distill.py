"""Feature distillation into the classifier's own backbone: family "distill".

    image -> frozen teacher encoder (an exported bundle, trained without labels) -> (B, T) targets
          -> standardised with the targets' mean and sd over the first training images
    image -> backbone (the classifier's, e.g. vgg_sep) -> (B, F) -> linear head -> (B, T)
    loss: mean squared error between the two, over the target dimensions that vary

Why: an unsupervised encoder can carry the lesions in a form that is not a network the classifier
can be initialised from. The learned atlas (family "atlas") is one: its features are statistics of
the residual between an image and the registered healthy template, which a linear probe reads to
0.96 on the 4 syndromes, but they come from a pose net, a template and fixed statistics, not from
a vgg_sep. Fine-tuning needs the classifier's own architecture with weights that already see the
lesions. So the backbone learns, on unlabelled images, to predict the teacher's features from the
raw image: every step is a regression onto 80 numbers that measure the tumours (areas above
contrast levels, quantiles, at four smoothing scales), a much denser signal than 4 labels. No label
is read in pretraining: the teacher saw none, and the student sees only the teacher.

The head is linear on purpose: the backbone's pooled features must hold the teacher's features
linearly, which is what a linear probe and an LP-FT head read. It is trained, not exported.

Standardisation: every target dimension is centred and scaled by its mean and sd over the first
`target_images` training images (encoded once before step 0 and saved with the weights, so a
resume and a loaded run use the same numbers); dimensions that never vary there (sd 0: a share
above a contrast no image reaches) are left out of the loss.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from genlab.core.errors import RecipeError
from genlab.core.registry import register_family
from genlab.core.schema import param
from genlab.data.base import DataInfo
from genlab.data.sampler import eval_batches
from genlab.families.backbone_config import BackboneChoice, exported_args
from genlab.families.base import EncoderSpec, Family, StepContext
from genlab.families.export import load_encoder
from genlab.nn.backbones import build_backbone
from genlab.nn.blocks import first_layer
from genlab.nn.optim import build_optimizer
from genlab.viz.render import feature_maps, image_grid, tile_kernels

BATCH = 256  # images encoded at once for the target statistics (no gradients)


@dataclass
class DistillConfig(BackboneChoice):
    teacher: Path | None = param(None, must_exist=True, help=(
        "the exported encoder whose features the backbone learns to predict: a run folder, its "
        "export/ or a bundle (e.g. runs/pretrain_atlas_brain/<stamp>); trained without labels"))
    loss: Literal["mse", "smooth_l1"] = param(
        "mse", help="regression loss on the standardised teacher features (smooth_l1: Huber, beta 1)")
    target_images: int = param(512, ge=2, help="first training images whose teacher features set "
                               "each target's mean and sd (encoded once before step 0)")


@register_family("distill")
class Distill(Family):
    """A classifier backbone trained to predict a frozen, label-free teacher's features."""
    capabilities = frozenset({"encode"})

    Config = DistillConfig
    monitor = ("loss", "min")

    def __init__(self, cfg: DistillConfig, info: DataInfo):
        super().__init__()
        self.cfg, self.info = cfg, info
        self.teacher = self._load_teacher(cfg, info)
        t = int(self.teacher.bundle_meta["out_features"])
        self._backbone_args = cfg.backbone_args(info.input_shape)
        self.backbone = build_backbone(**self._backbone_args)
        self.head = nn.Linear(self.backbone.num_features, t)
        self.register_buffer("target_mean", torch.zeros(t))
        self.register_buffer("target_std", torch.ones(t))
        self.register_buffer("target_used", torch.ones(t, dtype=torch.bool))
        self.register_buffer("targets_ready", torch.tensor(False))

    @staticmethod
    def _load_teacher(cfg: DistillConfig, info: DataInfo) -> nn.Module:
        if cfg.teacher is None:
            raise RecipeError("model.teacher", "family distill needs a teacher: an exported encoder "
                              "trained without labels, e.g. --set model.teacher=runs/"
                              "pretrain_atlas_brain/<stamp>")
        teacher = load_encoder(cfg.teacher)
        meta = teacher.bundle_meta
        shape = [int(s) for s in meta.get("input_shape", [])]
        if shape != [int(s) for s in info.input_shape]:
            raise RecipeError("model.teacher", f"{cfg.teacher}: the teacher reads inputs {shape}, "
                              f"the data gives {list(info.input_shape)}; train both on the same data")
        vr = meta.get("value_range")
        if vr is not None and [float(v) for v in vr] != [float(v) for v in info.value_range]:
            raise RecipeError("model.teacher", f"{cfg.teacher}: the teacher reads values in {vr}, "
                              f"the data gives {list(info.value_range)}")
        if meta.get("input_shape") is None or "out_features" not in meta:
            raise RecipeError("model.teacher", f"{cfg.teacher}: the bundle names no input_shape / "
                              f"out_features")
        for p in teacher.parameters():
            p.requires_grad_(False)
        return teacher.eval()

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()  # frozen: its batch norms (if any) never update
        return self

    # -- targets -------------------------------------------------------------------------------
    @torch.no_grad()
    def on_fit_start(self, data, device: torch.device) -> None:
        """The targets' mean and sd over the first `target_images` training images."""
        n = min(self.cfg.target_images, data.size("train"))
        feats = []
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            for idx in eval_batches(n, BATCH):
                x = data.get("train", idx)["x"].to(device).float()
                feats.append(self.teacher(x).float())
        self.set_target_stats(torch.cat(feats))

    @torch.no_grad()
    def set_target_stats(self, feats: torch.Tensor) -> None:
        """Mean and sd of teacher features (N, T); a dimension with sd ~0 leaves the loss."""
        std = feats.std(0)
        self.target_used.copy_(std > 1e-6 * max(float(std.max()), 1e-12))
        self.target_mean.copy_(feats.mean(0))
        self.target_std.copy_(torch.where(self.target_used, std, torch.ones_like(std)))
        self.targets_ready.fill_(True)

    @torch.no_grad()
    def targets(self, x: torch.Tensor) -> torch.Tensor:
        return (self.teacher(x.float()).float() - self.target_mean) / self.target_std

    # -- the objective -------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))  # (B, T) predicted standardised teacher features

    def _losses(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """(B,) per-image loss over the used target dimensions."""
        pred, target = pred.float()[:, self.target_used], target[:, self.target_used]
        if self.cfg.loss == "mse":
            return F.mse_loss(pred, target, reduction="none").mean(1)
        return F.smooth_l1_loss(pred, target, reduction="none", beta=1.0).mean(1)

    def _check_ready(self):
        if not bool(self.targets_ready):
            raise RuntimeError("distill: the target statistics are not set; the trainer calls "
                               "on_fit_start(data, device) before the first step")

    # -- the contract --------------------------------------------------------------------------
    def configure_optimizers(self, train):
        return {"main": build_optimizer([*self.backbone.parameters(), *self.head.parameters()], train)}

    def training_step(self, batch, ctx: StepContext):
        self._check_ready()
        x = batch["x"]
        target = self.targets(x)
        with ctx.autocast():
            pred = self(x)
        loss = self._losses(pred, target).mean()
        ctx.update("main", loss)
        return {"loss": loss.detach()}

    @torch.no_grad()
    def evaluate(self, batch):
        self._check_ready()
        x = batch["x"]
        pred, target = self(x).float(), self.targets(x)
        err = (pred - target)[:, self.target_used].pow(2)
        return {"loss": self._losses(pred, target).mean(), "sq_err": err.sum(1),
                "target_sq": target[:, self.target_used].pow(2).sum(1)}

    def summarize(self, collected):
        """explained: 1 - (squared error / squared standardised target), over the split: the
        share of the teacher features' variation the backbone predicts (1 perfect, 0 the mean)."""
        sq, tot = collected["sq_err"].sum(), collected["target_sq"].sum()
        return {"explained": float(1 - sq / tot.clamp_min(1e-12))}

    @torch.no_grad()
    def renders(self, batch):
        x = batch["x"][:16]
        out = {"inputs": image_grid(x)}
        layer = first_layer(self.backbone)
        if isinstance(layer, nn.Conv2d):
            out["filters"] = tile_kernels(layer.weight, max_tiles=64)
        out["feature_maps"] = feature_maps(self.backbone.features[0](self.backbone.pre(x[:1]))[0])
        return out

    @torch.no_grad()
    def histograms(self, batch):
        x = batch["x"][:64]
        feats = self.backbone(x)
        return {"features": feats, "prediction": self.head(feats), "target": self.targets(x)}

    # -- capability "encode" -------------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    @property
    def out_features(self) -> int:
        return self.backbone.num_features

    def encoder_spec(self) -> EncoderSpec:
        meta = self.teacher.bundle_meta
        extra = {"distill": {"teacher": str(self.cfg.teacher), "teacher_family": meta.get("family"),
                             "teacher_builder": meta.get("builder"), "teacher_step": meta.get("step"),
                             "targets_used": int(self.target_used.sum())}}
        return EncoderSpec(builder="classifier_backbone", config=exported_args(self._backbone_args),
                           module=self.backbone, out_features=self.backbone.num_features, extra=extra)


__all__ = ["Distill", "DistillConfig"]
