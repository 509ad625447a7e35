"""A learned atlas and what it cannot explain: family "atlas".

The brain slices are one anatomy under a global nuisance (scale, shift, contrast, shade, noise)
plus the lesions. A denoising autoencoder that keeps the lesions mixes them into features of the
whole anatomy, and no pooling of those features counts tumours; one that erases them has the
lesions nowhere. This family separates the two: a template image and a pose network that warps
and re-lights it to each input are trained together to reconstruct the inputs (genlab.nn.atlas);
with an L1 loss the template becomes the median, healthy anatomy, so the residual, input minus
reconstruction, holds the lesions. The exported encoder maps an image to fixed statistics of its
residual at several scales (shares above thresholds, quantiles): how much lesion area there is,
at which blob size, how strong. No labels are used; the statistics are fixed, not learned.

Monitors on data with lesion masks, beside the reconstruction loss and PSNR:
    lesion_residual  median over lesion-bearing images of the lesion's contrast against a 3-px
                     ring in the residual / the same in the input (1: the atlas drew none of the
                     lesion, all of it is in the residual; 0: the atlas drew it, nothing is left)
    anomaly_auc      median over lesion-bearing images of the pixel ROC AUC of the residual
                     (smoothed at 1 px) against the lesion mask: how well the residual alone
                     segments the lesions
and the trainer's online probe on the exported features (probe_acc, probe_lesion_auc).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from genlab.core.errors import RecipeError
from genlab.core.registry import register_family
from genlab.core.schema import param
from genlab.data.base import DataInfo
from genlab.families.base import EncoderSpec, Family, StepContext
from genlab.metrics.classification import psnr, roc_auc_binary
from genlab.metrics.lesion import lesion_contrast, retention
from genlab.nn.atlas import POSE, AtlasEncoder, blur, gaussian_kernel
from genlab.nn.blocks import first_layer
from genlab.nn.optim import build_optimizer
from genlab.viz.render import image_grid, label_rows, tile_kernels

AUC_SMOOTH_SIGMA = 1.0  # px: the residual is smoothed this much before its pixel AUC (noise)
AUC_MAX_IMAGES = 64  # per evaluation batch: the pixel AUC ranks every pixel, keep it cheap


@dataclass
class AtlasConfig:
    pose_widths: list[int] = param(default_factory=lambda: [16, 32, 64, 64], ge=1, help=(
        "channels of the pose network's stride-2 4x4 convolutions"))
    up: int = param(2, ge=1, le=4, help="template resolution as a multiple of the input's (the "
                    "warped template is area-downsampled: sub-pixel shifts stay sharp)")
    loss: Literal["l1", "l2"] = param("l1", help="l1: the template becomes the median anatomy and "
                                      "rare lesions stay out of it; l2: the mean, lesions smeared in")
    template_lr_mult: float = param(3.0, gt=0, help="learning rate of the template pixels / train.lr")
    init_template: bool = param(True, help="start the template at the median of the first batch")
    max_log_scale: float = param(0.3, gt=0, help="bound on |log scale| of the warp, per axis")
    max_shift: float = param(0.3, gt=0, help="bound on the warp's shift, in half-widths of the image")
    scales: list[float] = param(default_factory=lambda: [0.0, 1.0, 2.0, 4.0], ge=0, help=(
        "Gaussian sigmas (px) the residual is smoothed at before its statistics (0: as it is)"))
    thresholds: list[float] = param(default_factory=lambda: [0.01, 0.02, 0.03, 0.05, 0.08], gt=0,
                                    help="residual levels (image units) whose exceedance shares are features")
    quantiles: list[float] = param(default_factory=lambda: [0.9, 0.99, 0.999, 1.0], ge=0, le=1,
                                   help="quantiles of the residual that are features")

    def __post_init__(self):
        for key in ("pose_widths", "scales", "thresholds", "quantiles"):
            if not getattr(self, key):
                raise ValueError(f"{key}: expected at least one value")


@register_family("atlas")
class AtlasFamily(Family):
    """Learned atlas: a template warped and re-lit to each image; encoder = statistics of the residual."""
    capabilities = frozenset({"encode"})

    Config = AtlasConfig
    monitor = ("loss", "min")

    def __init__(self, cfg: AtlasConfig, info: DataInfo):
        super().__init__()
        self.cfg, self.info = cfg, info
        shape = [int(v) for v in info.input_shape]
        if len(shape) != 3:
            raise RecipeError("data.name", f"family atlas needs images (C, H, W); {info.name!r} "
                              f"gives {shape}")
        n = len(cfg.pose_widths)
        if shape[1] >> n < 1 or shape[2] >> n < 1:
            raise RecipeError("model.pose_widths", f"{n} stride-2 layers shrink a {shape[1]}x{shape[2]} "
                              f"image below 1 pixel; use at most {min(shape[1:]).bit_length() - 1}")
        self._args = {"in_shape": shape, "widths": list(cfg.pose_widths), "up": cfg.up,
                      "scales": list(cfg.scales), "thresholds": list(cfg.thresholds),
                      "quantiles": list(cfg.quantiles), "max_log_scale": cfg.max_log_scale,
                      "max_shift": cfg.max_shift}
        self.encoder = AtlasEncoder(**self._args)
        self.register_buffer("template_ready", torch.tensor(not cfg.init_template))

    @property
    def atlas(self):
        return self.encoder.atlas

    def configure_optimizers(self, train):
        rest = [p for p in self.parameters() if p is not self.atlas.template]
        return {"main": build_optimizer([{"params": rest}, {"params": [self.atlas.template],
                                         "lr": train.lr * self.cfg.template_lr_mult}], train)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.atlas(x)[0]

    def _loss(self, recon: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        recon = recon.float()
        return F.l1_loss(recon, x) if self.cfg.loss == "l1" else F.mse_loss(recon, x)

    def training_step(self, batch, ctx: StepContext):
        x = batch["x"].float()
        if not bool(self.template_ready):  # the first step of a fresh run (a resume has it saved)
            self.atlas.init_template(ctx.all_gather_cat(x))
            self.template_ready.fill_(True)
        with ctx.autocast():
            recon, pose = self.atlas(x)
        loss = self._loss(recon, x)
        ctx.update("main", loss)
        out = {"loss": loss.detach()}
        for i, name in enumerate(POSE):
            out[f"pose_{name}_sd"] = pose[:, i].detach().float().std()
        return out

    @torch.no_grad()
    def evaluate(self, batch):
        x = batch["x"].float()
        recon = self(x).float()
        out = {"loss": self._loss(recon, x), "mse": F.mse_loss(recon, x), "psnr": psnr(recon, x)}
        if "mask" in batch:
            mask = batch["mask"]
            resid = x - recon
            out["lesion_contrast_input"] = lesion_contrast(x, mask)
            out["lesion_contrast_residual"] = lesion_contrast(resid, mask)
            out["anomaly_auc"] = pixel_aucs(resid, mask)
        return out

    def summarize(self, collected):
        if "lesion_contrast_input" not in collected:
            return {}
        aucs = collected["anomaly_auc"]
        aucs = aucs[torch.isfinite(aucs)]
        return {"lesion_residual": retention(collected["lesion_contrast_residual"],
                                             collected["lesion_contrast_input"]),
                "anomaly_auc": float(aucs.median()) if len(aucs) else math.nan}

    @torch.no_grad()
    def renders(self, batch):
        x = batch["x"][:8].float()
        recon = self(x).float()
        resid = (0.5 + 2.5 * (x - recon)).clamp(0, 1)  # grey = 0; bright = more than the atlas
        rows = [x, recon, resid]
        k = len(x)
        grid = image_grid(torch.cat([r[:k] for r in rows]), nrow=k, pad=2)
        out = {"reconstructions": label_rows(grid, ["input", "atlas", "residual x2.5"],
                                             row_height=int(x.shape[-2]), pad=2),
               "template": image_grid(self.atlas.template.detach().clamp(0, 1), nrow=1, pad=0)}
        layer = first_layer(self.atlas.pose_net)
        if layer is not None:
            out["filters"] = tile_kernels(layer.weight, max_tiles=64)
        return out

    @torch.no_grad()
    def histograms(self, batch):
        x = batch["x"][:64].float()
        return {"pose": self.atlas.pose(x), "residual": (x - self(x)).flatten()}

    # -- capability "encode" -------------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    @property
    def out_features(self) -> int:
        return self.encoder.num_features

    def encoder_spec(self) -> EncoderSpec:
        return EncoderSpec(builder="atlas_encoder", config=dict(self._args), module=self.encoder,
                           out_features=self.encoder.num_features,
                           extra={"atlas": {"loss": self.cfg.loss, "features": "residual statistics"}})


def pixel_aucs(resid: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B,) ROC AUC of the residual (channel mean, smoothed at AUC_SMOOTH_SIGMA px) as a per-pixel
    lesion score against the mask; NaN for an image without lesion (and past AUC_MAX_IMAGES)."""
    score = blur(resid.float().mean(1, keepdim=True), gaussian_kernel(AUC_SMOOTH_SIGMA).to(resid.device))
    m = mask.bool().any(1, keepdim=True)
    out = torch.full((len(resid),), math.nan)
    for i in range(min(len(resid), AUC_MAX_IMAGES)):
        if m[i].any() and not m[i].all():
            out[i] = roc_auc_binary(m[i].flatten().cpu().numpy(), score[i].flatten().cpu().numpy())
    return out


__all__ = ["AtlasConfig", "AtlasFamily", "pixel_aucs"]
