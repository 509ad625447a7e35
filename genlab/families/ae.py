"""Autoencoders: the feature autoencoder ("ae") and the denoising autoencoder ("dae").

Both map an image through an encoder to a bottleneck code and back; the code is the exported
feature. The DAE sees a corrupted input and is trained to reproduce the clean image, so the
gain in PSNR from corrupted input to reconstruction measures what it learned.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from genlab.core.registry import register_family
from genlab.core.schema import param
from genlab.data.base import DataInfo
from genlab.data.corrupt import Corruption
from genlab.families.base import EncoderSpec, Family, StepContext, eval_generator
from genlab.metrics.classification import psnr
from genlab.metrics.lesion import lesion_contrast, lesion_scores, masked_sq_error, psnr_from_mse
from genlab.nn.blocks import ConvDecoder, ConvEncoder, DenseDecoder, DenseEncoder, first_layer
from genlab.nn.optim import build_optimizer
from genlab.viz.render import feature_maps, tile_kernels, tile_weights, triplets


@dataclass
class AEConfig:
    arch: Literal["conv", "dense"] = param("conv", help="conv: stride-2 conv encoder/decoder; dense: MLP")
    channels: list[int] = param(default_factory=lambda: [16, 32, 64],
                                help="conv widths, one stride-2 layer each (arch: conv)")
    hidden: list[int] = param(default_factory=lambda: [256],
                              help="hidden widths of the MLP encoder, mirrored in the decoder (arch: dense)")
    bottleneck: int = param(64, ge=1, help="size of the code: the exported feature vector "
                            "(code: spatial: the channels of the code map)")
    code: Literal["dense", "spatial"] = param(
        "dense", help="dense: a vector code (a linear layer; it learns what every image shares "
        "and drops small local detail such as lesions); spatial: the last feature map is the "
        "code, so local detail survives; exported features are its channel means and maxima "
        "(arch: conv)")
    first_kernel: int = param(4, ge=2, help="first conv layer's kernel size (even); 8 learns "
                              "filters a person can read in the render (arch: conv)")
    first_init_scale: float = param(1.0, gt=0, help="multiplies the first layer's initial weights; "
                                    "< 1 lets learned structure, not init noise, fill the render")
    norm: Literal["none", "batch"] = param("none", help="normalisation after each conv (arch: conv)")
    activation: Literal["relu", "leaky_relu", "gelu", "sigmoid", "tanh"] = param(
        "leaky_relu", help="hidden activation")
    loss: Literal["mse", "bce"] = param("mse", help="reconstruction loss against the clean image")
    corruption: Corruption = param(default_factory=lambda: Corruption(kind="none", level=0.0),
                                   help="input corruption (a DAE needs one; kind none = plain AE)")

    def __post_init__(self):
        if self.arch == "conv" and not self.channels:
            raise ValueError("channels: a conv autoencoder needs at least one layer")
        if self.first_kernel % 2:
            raise ValueError(f"first_kernel: expected an even number, got {self.first_kernel}")


@dataclass
class DAEConfig(AEConfig):
    corruption: Corruption = param(default_factory=lambda: Corruption(kind="gaussian", level=0.25),
                                   help="input corruption; the target stays the clean image")

    def __post_init__(self):
        super().__post_init__()
        if self.corruption.kind == "none":
            raise ValueError("corruption.kind: a denoising autoencoder needs a corruption "
                             "(gaussian, masking or salt_pepper); use family 'ae' for none")


@register_family("ae")
class Autoencoder(Family):
    """Feature autoencoder: image -> bottleneck code -> image (dense or conv)."""
    capabilities = frozenset({"encode"})

    Config = AEConfig
    monitor = ("loss", "min")

    def __init__(self, cfg: AEConfig, info: DataInfo):
        super().__init__()
        self.cfg, self.info = cfg, info
        shape = list(info.input_shape)
        if cfg.arch == "conv":
            self._enc_args = {"in_shape": shape, "channels": list(cfg.channels),
                              "bottleneck": cfg.bottleneck, "norm": cfg.norm,
                              "activation": cfg.activation, "first_kernel": cfg.first_kernel}
            if cfg.code == "spatial":
                self._enc_args["code"] = "spatial"
            self.encoder = ConvEncoder(**self._enc_args)
            self.decoder = ConvDecoder(shape, list(cfg.channels), cfg.bottleneck, cfg.norm,
                                       cfg.activation, code=cfg.code)
            self._builder = "conv_encoder"
        else:
            self._enc_args = {"in_shape": shape, "hidden": list(cfg.hidden),
                              "bottleneck": cfg.bottleneck, "activation": cfg.activation}
            self.encoder = DenseEncoder(**self._enc_args)
            self.decoder = DenseDecoder(shape, list(cfg.hidden), cfg.bottleneck, cfg.activation)
            self._builder = "dense_encoder"
        with torch.no_grad():
            first_layer(self.encoder).weight.mul_(cfg.first_init_scale)

    # -- the contract ------------------------------------------------------------------------
    def configure_optimizers(self, train):
        return {"main": build_optimizer(self.parameters(), train)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spatial = self.cfg.arch == "conv" and self.cfg.code == "spatial"
        code = self.encoder.features(x) if spatial else self.encoder(x)
        return self.decoder(code)  # (B, C, H, W) in [0, 1]

    def _loss(self, recon: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
        if self.cfg.loss == "bce":
            return F.binary_cross_entropy(recon.float().clamp(1e-6, 1 - 1e-6), clean)
        return F.mse_loss(recon.float(), clean)

    def training_step(self, batch, ctx: StepContext):
        clean = batch["x"]
        noisy = self.cfg.corruption(clean)
        with ctx.autocast():
            recon = self(noisy)
        loss = self._loss(recon, clean)
        ctx.update("main", loss)
        return {"loss": loss.detach()}

    @torch.no_grad()
    def evaluate(self, batch):
        clean = batch["x"]
        noisy = self.cfg.corruption(clean, generator=eval_generator(batch, clean.device))
        recon = self(noisy).float()
        out = {"loss": self._loss(recon, clean), "mse": F.mse_loss(recon, clean),
               "psnr": psnr(recon, clean)}
        if self.cfg.corruption.kind != "none":
            out["psnr_input"] = psnr(noisy, clean)
            out["psnr_gain"] = out["psnr"] - out["psnr_input"]
        if "mask" in batch:  # data with lesion masks: per-image numbers for the lesion scores
            mask = batch["mask"]
            out["lesion_contrast_clean"] = lesion_contrast(clean, mask)
            out["lesion_contrast_recon"] = lesion_contrast(recon, mask)
            out["lesion_sq_err"], out["lesion_px"] = masked_sq_error(recon, clean, mask)
            if self.cfg.corruption.kind != "none":
                out["lesion_sq_err_input"] = masked_sq_error(noisy, clean, mask)[0]
        return out

    def summarize(self, collected):
        """Lesion retention and PSNR inside the lesion masks (and of the corrupted input there):
        a reconstruction can gain PSNR overall while erasing every lesion."""
        out = lesion_scores(collected)
        px = float(collected["lesion_px"].sum()) if "lesion_px" in collected else 0.0
        if "lesion_sq_err_input" in collected and px > 0:
            out["lesion_psnr_input"] = psnr_from_mse(float(collected["lesion_sq_err_input"].sum()) / px)
        return out

    @torch.no_grad()
    def renders(self, batch):
        clean = batch["x"][:8]
        noisy = self.cfg.corruption(clean, generator=eval_generator(batch, clean.device))
        recon = self(noisy).float()
        layer = first_layer(self.encoder)
        out = {}
        if isinstance(layer, torch.nn.Conv2d):
            out["filters"] = tile_kernels(layer.weight)
            out["feature_maps"] = feature_maps(self.encoder.features[:2](noisy[:1])[0])
        else:
            out["filters"] = tile_weights(layer.weight, self.info.input_shape)
        out["reconstructions"] = (
            triplets(clean, noisy, recon, labels=("clean", "noisy", "reconstructed"))
            if self.cfg.corruption.kind != "none"
            else triplets(clean, None, recon, labels=("input", "reconstructed")))
        return out

    @torch.no_grad()
    def histograms(self, batch):
        return {"code": self.encoder(batch["x"][:64])}

    # -- optional capabilities ---------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    @property
    def out_features(self) -> int:
        return self.cfg.bottleneck

    def encoder_spec(self) -> EncoderSpec:
        return EncoderSpec(builder=self._builder, config=self._enc_args, module=self.encoder,
                           out_features=self.cfg.bottleneck)


@register_family("dae")
class DenoisingAutoencoder(Autoencoder):
    """Denoising autoencoder: corrupted image -> code -> clean image; reports the PSNR gain."""

    Config = DAEConfig
