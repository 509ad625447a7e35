"""Autoencoders: the feature autoencoder ("ae") and the denoising autoencoder ("dae").

Both map an image through an encoder to a bottleneck code and back; the code is the exported
feature. The DAE sees a corrupted input and is trained to reproduce the clean image, so the
gain in PSNR from corrupted input to reconstruction measures what it learned.

`arch: backbone` makes the encoder a classifier backbone (genlab.nn.backbones, built with the
classifier's own keys), so the exported encoder drops into `model.init` of a classifier with
every tensor loaded: the decoder reconstructs from the backbone's last feature map (before its
pooling neck), and the exported features are the pooled vector the classifier's head would see.
With a region corruption (genlab.data.corrupt), `loss_on: corrupted` scores only the destroyed
pixels, as MAE does.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from genlab.core.errors import RecipeError
from genlab.core.registry import register_family
from genlab.core.schema import param
from genlab.data.base import DataInfo
from genlab.data.corrupt import KINDS, MASKED_KINDS, REGION_KINDS, Corruption
from genlab.families.base import EncoderSpec, Family, StepContext, eval_generator
from genlab.metrics.classification import psnr
from genlab.metrics.lesion import lesion_contrast, lesion_scores, masked_sq_error, psnr_from_mse
from genlab.nn.backbones import build_backbone
from genlab.nn.blocks import (
    ConvDecoder,
    ConvEncoder,
    DenseDecoder,
    DenseEncoder,
    UpDecoder,
    first_layer,
    upsample_sizes,
)
from genlab.nn.optim import build_optimizer
from genlab.viz.render import feature_maps, tile_kernels, tile_weights, triplets


@dataclass
class AEConfig:
    arch: Literal["conv", "dense", "backbone"] = param(
        "conv", help="conv: stride-2 conv encoder/decoder; dense: MLP; backbone: a classifier "
        "backbone (model.backbone) as the encoder, an upsampling decoder from its last feature map")
    backbone: Literal["vgg_sep", "model2", "resnet18", "model1", "brain_tumor_nn"] = param(
        "vgg_sep", help="arch backbone: which classifier backbone (the classifier's model.backbone)")
    backbone_channels: list[int] | None = param(
        None, ge=1, help="arch backbone: conv widths of vgg_sep/model1/model2/brain_tumor_nn, the "
        "classifier's model.channels (null: the published ones)")
    stem_stride: int = param(1, ge=1, le=4, help="arch backbone: stride of the first conv (not "
                             "resnet18), the classifier's model.stem_stride")
    bn_stats: Literal["clean", "corrupted"] = param(
        "clean", help="arch backbone: the images the encoder's batch-norm running statistics (the "
        "exported ones) are estimated on: clean (what a classifier and the probe feed it; a second "
        "set from the corrupted inputs serves the autoencoder's own evaluation; one more encoder "
        "pass per step, without gradients) or corrupted (the training inputs)")
    decoder_channels: list[int] | None = param(
        None, ge=1, help="arch backbone: widths of the decoder's x2 upsampling steps, smallest "
        "map first (null: the encoder's widths at the same sizes)")
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
    loss_on: Literal["all", "corrupted"] = param(
        "all", help="all: every pixel; corrupted: only the pixels the corruption replaced or moved "
        "(MAE's choice; a corruption that leaves some pixels intact: " + ", ".join(MASKED_KINDS) + ")")
    corruption: Corruption = param(default_factory=lambda: Corruption(kind="none", level=0.0),
                                   help="input corruption (a DAE needs one; kind none = plain AE)")

    def __post_init__(self):
        if self.arch == "conv" and not self.channels:
            raise ValueError("channels: a conv autoencoder needs at least one layer")
        if self.first_kernel % 2:
            raise ValueError(f"first_kernel: expected an even number, got {self.first_kernel}")
        for key, unset in (("backbone_channels", None), ("stem_stride", 1), ("decoder_channels", None),
                           ("bn_stats", "clean")):
            if self.arch != "backbone" and getattr(self, key) != unset:
                raise ValueError(f"{key}: used only with arch 'backbone', got arch {self.arch!r}")
        if self.arch == "backbone" and self.backbone == "resnet18":
            for key, unset in (("backbone_channels", None), ("stem_stride", 1)):
                if getattr(self, key) != unset:
                    raise ValueError(f"{key}: not used by backbone 'resnet18', got {getattr(self, key)!r}")
        for key in ("backbone_channels", "decoder_channels"):
            if getattr(self, key) == []:
                raise ValueError(f"{key}: expected at least one width, or null")
        if self.loss_on == "corrupted" and self.corruption.kind not in MASKED_KINDS:
            raise ValueError(f"loss_on: 'corrupted' needs a corruption that leaves some pixels intact "
                             f"({', '.join(MASKED_KINDS)}), got corruption.kind {self.corruption.kind!r}")


@dataclass
class DAEConfig(AEConfig):
    corruption: Corruption = param(default_factory=lambda: Corruption(kind="gaussian", level=0.25),
                                   help="input corruption; the target stays the clean image")

    def __post_init__(self):
        super().__post_init__()
        if self.corruption.kind == "none":
            raise ValueError("corruption.kind: a denoising autoencoder needs a corruption ("
                             + ", ".join(k for k in KINDS if k != "none") + "); use family 'ae' for none")


@register_family("ae")
class Autoencoder(Family):
    """Feature autoencoder: image -> bottleneck code -> image (dense, conv or a classifier backbone)."""
    capabilities = frozenset({"encode"})

    Config = AEConfig
    monitor = ("loss", "min")

    def __init__(self, cfg: AEConfig, info: DataInfo):
        super().__init__()
        self.cfg, self.info = cfg, info
        shape = list(info.input_shape)
        self._clean_bns: list[torch.nn.Module] = []  # batch norms with two sets of statistics
        try:
            cfg.corruption.check_shape(shape)
        except ValueError as e:
            raise RecipeError("model.corruption", str(e)) from None
        if cfg.arch == "backbone":
            self._build_backbone(cfg, shape)
        elif cfg.arch == "conv":
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

    def _build_backbone(self, cfg: AEConfig, shape: list[int]) -> None:
        """The encoder is exactly the backbone a classifier builds from the same keys (the same
        arguments, so the same module tree and tensor names); the decoder starts from its trunk."""
        args = {"name": cfg.backbone, "in_shape": shape, "channels": cfg.backbone_channels,
                "pretrained": False, "stem_stride": cfg.stem_stride, "clahe": False,
                "clahe_clip": 2.0, "clahe_grid": [8, 8]}
        self._enc_args = {k: v for k, v in args.items() if v is not None}
        try:
            self.encoder = build_backbone(**self._enc_args)
        except ValueError as e:
            raise RecipeError("model.backbone", str(e)) from None
        widths, (fc, fh, fw) = _trunk_widths(self.encoder, shape)
        sizes = upsample_sizes((fh, fw), tuple(shape[1:]))
        if cfg.decoder_channels is not None:
            if len(cfg.decoder_channels) != len(sizes):
                raise RecipeError("model.decoder_channels", f"expected {len(sizes)} widths (one per "
                                  f"x2 step from the {fh} x {fw} map to {shape[1]} x {shape[2]}), got "
                                  f"{len(cfg.decoder_channels)}")
            dec = list(cfg.decoder_channels)
        else:  # the encoder's width at each size on the way up; half the last one above it
            dec, prev = [], fc
            for size in sizes:
                prev = widths.get(size, max(8, prev // 2))
                dec.append(prev)
        self.decoder = UpDecoder(fc, (fh, fw), shape, dec, cfg.norm, cfg.activation)
        self._builder = "classifier_backbone"
        if cfg.bn_stats == "clean" and cfg.corruption.kind != "none":  # (else the inputs are clean)
            self._clean_bns = [m for m in self.encoder.modules()
                               if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
            for i, m in enumerate(self._clean_bns):  # the corrupted inputs' statistics (checkpointed)
                self.register_buffer(f"input_bn{i}_mean", m.running_mean.clone())
                self.register_buffer(f"input_bn{i}_var", m.running_var.clone())

    @contextmanager
    def _input_stats(self):
        """Within: the encoder's batch norms hold the corrupted inputs' running statistics (used in
        evaluation, updated in training); outside: the clean images' (bn_stats: clean). The
        tensors are exchanged, not copied: autograd keeps what a training pass saved."""
        pairs = [(m, name, f"input_bn{i}_{name[8:]}") for i, m in enumerate(self._clean_bns)
                 for name in ("running_mean", "running_var")]

        def swap():
            for m, name, own in pairs:
                m._buffers[name], self._buffers[own] = self._buffers[own], m._buffers[name]

        swap()
        try:
            yield
        finally:
            swap()

    def _trunk(self, x: torch.Tensor) -> torch.Tensor:
        """The backbone's last feature map, before its pooling neck (arch backbone)."""
        return self.encoder.features(self.encoder.pre(x))

    # -- the contract ------------------------------------------------------------------------
    def configure_optimizers(self, train):
        return {"main": build_optimizer(self.parameters(), train)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.cfg.arch == "backbone":
            return self.decoder(self._trunk(x))
        spatial = self.cfg.arch == "conv" and self.cfg.code == "spatial"
        code = self.encoder.features(x) if spatial else self.encoder(x)
        return self.decoder(code)  # (B, C, H, W) in [0, 1]

    def _corrupt(self, clean: torch.Tensor, generator=None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(corrupted input, mask of the pixels the loss scores: None for all of them)."""
        if self.cfg.loss_on == "corrupted":
            return self.cfg.corruption.with_mask(clean, generator)
        return self.cfg.corruption(clean, generator), None

    def _loss(self, recon: torch.Tensor, clean: torch.Tensor, mask: torch.Tensor | None = None
              ) -> torch.Tensor:
        if mask is None:
            if self.cfg.loss == "bce":
                return F.binary_cross_entropy(recon.float().clamp(1e-6, 1 - 1e-6), clean)
            return F.mse_loss(recon.float(), clean)
        if self.cfg.loss == "bce":
            err = F.binary_cross_entropy(recon.float().clamp(1e-6, 1 - 1e-6), clean, reduction="none")
        else:
            err = (recon.float() - clean) ** 2
        # the mean over the scored pixels (0, and no gradient, when a batch has none)
        return (err * mask).sum() / mask.sum().clamp_min(1)

    def training_step(self, batch, ctx: StepContext):
        clean = batch["x"]
        noisy, mask = self._corrupt(clean)
        with ctx.autocast(), self._input_stats():
            recon = self(noisy)
        loss = self._loss(recon, clean, mask)
        ctx.update("main", loss)
        if self._clean_bns:  # the running statistics follow clean images only
            with torch.no_grad(), ctx.autocast():
                self._trunk(clean)
        return {"loss": loss.detach()}

    @torch.no_grad()
    def evaluate(self, batch):
        clean = batch["x"]
        noisy, mask = self._corrupt(clean, eval_generator(batch, clean.device))
        with self._input_stats():
            recon = self(noisy).float()
        out = {"loss": self._loss(recon, clean, mask), "mse": F.mse_loss(recon, clean),
               "psnr": psnr(recon, clean)}
        if self.cfg.corruption.kind != "none":
            # over the images the corruption changed: a region mix (genesis) leaves the odd image
            # intact, whose infinite input PSNR would make the batch mean infinite
            hit = (noisy != clean).flatten(1).any(1)
            if bool(hit.all()) or not bool(hit.any()):
                out["psnr_input"] = psnr(noisy, clean)
                out["psnr_gain"] = out["psnr"] - out["psnr_input"]
            else:
                out["psnr_input"] = psnr(noisy[hit], clean[hit])
                out["psnr_gain"] = psnr(recon[hit], clean[hit]) - out["psnr_input"]
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
        with self._input_stats():
            recon = self(noisy).float()
        layer = first_layer(self.encoder)
        out = {}
        if isinstance(layer, torch.nn.Conv2d):
            out["filters"] = tile_kernels(layer.weight)
            first = noisy[:1] if self.cfg.arch != "backbone" else self.encoder.pre(noisy[:1])
            out["feature_maps"] = feature_maps(self.encoder.features[:2](first)[0])
        else:
            out["filters"] = tile_weights(layer.weight, self.info.input_shape)
        out["reconstructions"] = (
            triplets(clean, noisy, recon, labels=("clean", "corrupted" if self.cfg.corruption.kind
                                                  in REGION_KINDS else "noisy", "reconstructed"))
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
        return self.encoder.out_features  # a spatial code exports 2 x bottleneck (means, maxima)

    def encoder_spec(self) -> EncoderSpec:
        return EncoderSpec(builder=self._builder, config=self._enc_args, module=self.encoder,
                           out_features=self.encoder.out_features)


def _trunk_widths(backbone, shape: list[int]) -> tuple[dict[tuple[int, int], int], tuple[int, int, int]]:
    """({(h, w): channels of the last conv output of that size}, (C, h, w) of the trunk's output)
    of a backbone, from one forward pass of a blank image in eval mode."""
    widths: dict[tuple[int, int], int] = {}

    def record(_m, _i, o):
        widths[tuple(o.shape[-2:])] = o.shape[1]

    hooks = [m.register_forward_hook(record) for m in backbone.modules() if isinstance(m, torch.nn.Conv2d)]
    was = backbone.training
    try:
        backbone.eval()
        with torch.no_grad():
            trunk = backbone.features(backbone.pre(torch.zeros(1, *shape)))
    finally:
        backbone.train(was)
        for h in hooks:
            h.remove()
    if trunk.dim() != 4:
        raise RecipeError("model.backbone", f"its trunk gives {tuple(trunk.shape)}, not a feature map")
    return widths, tuple(trunk.shape[1:])


@register_family("dae")
class DenoisingAutoencoder(Autoencoder):
    """Denoising autoencoder: corrupted image -> code -> clean image; reports the PSNR gain."""

    Config = DAEConfig
