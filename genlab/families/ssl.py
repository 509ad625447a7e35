"""Self-supervised joint-embedding pretraining: family "ssl" (SimCLR or VICReg).

    image -> two random views (genlab.data.views) -> backbone -> (B, F) features
          -> projector MLP -> (B, D) embeddings -> loss between the two views' embeddings

Nothing is reconstructed: the backbone learns what stays the same between two nuisance-altered
views of one image (anatomy, lesions) and to ignore what changes (scale, shift, contrast, shade,
noise). The backbone is built exactly as the classifier family builds it (genlab.nn.backbones,
same keys: backbone, channels, stem_stride, clahe), and exported the same way (builder
"classifier_backbone", the classifier's own build arguments), so `model.init: <run>/export` of a
classifier with the same backbone settings loads every tensor. The projector is trained but not
exported: features before the projector transfer better (Chen et al. 2020).

Objectives:
    simclr  NT-Xent (Chen et al. 2020): each of the 2N embeddings must pick its partner among the
            other 2N - 1 by cosine similarity / temperature (cross-entropy). Random embeddings
            score log(2N - 1). Monitor: acc, how often the partner is the nearest.
    vicreg  (Bardes et al. 2022) 25 x invariance (MSE between partners) + 25 x variance (hinge
            keeping each dimension's std over the batch at 1) + 1 x covariance (squared
            off-diagonal covariances, decorrelating dimensions). Monitors: the three terms.
Both report emb_std: the per-dimension std of the L2-normalised embeddings over the batch,
averaged and times sqrt(D): about 1 when the embeddings spread over the sphere, 0 at collapse.

Data parallel: every rank computes the loss of the global batch (the other ranks' embeddings
gathered without gradient, its own with), scaled by the number of ranks; the trainer averages
the gradients, so each embedding gets exactly the gradient of the global loss (SimCLR's
negatives come from every rank). The projector's batch norm uses each rank's own batch.
"""
from __future__ import annotations

import contextlib
import itertools
import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from genlab.core.registry import register_family
from genlab.core.schema import param
from genlab.data.base import DataInfo
from genlab.data.views import Views
from genlab.families.backbone_config import BackboneChoice, exported_args
from genlab.families.base import EncoderSpec, Family, StepContext, eval_generator
from genlab.nn.backbones import build_backbone
from genlab.nn.blocks import first_layer
from genlab.nn.optim import build_optimizer
from genlab.viz.render import feature_maps, tile_kernels, triplets


@dataclass
class SSLConfig(BackboneChoice):
    objective: Literal["simclr", "vicreg"] = param(
        "simclr", help="simclr: NT-Xent contrastive loss; vicreg: variance-invariance-covariance")
    projector: list[int] = param(default_factory=lambda: [512, 128], ge=1, help=(
        "projector MLP widths, the last one the embedding size; Linear + BatchNorm + ReLU between "
        "them (trained, not exported)"))
    temperature: float = param(0.2, gt=0, help="simclr: softmax temperature of the cosine similarities")
    sim_weight: float = param(25.0, ge=0, help="vicreg: weight of the invariance (MSE) term")
    var_weight: float = param(25.0, ge=0, help="vicreg: weight of the variance (std hinge) term")
    cov_weight: float = param(1.0, ge=0, help="vicreg: weight of the covariance term")
    views: Views = param(default_factory=Views, help="how the two views of an image are made "
                         "(genlab.data.views)")

    def __post_init__(self):
        super().__post_init__()
        if not self.projector:
            raise ValueError("projector: expected at least one width (the embedding size)")


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """SimCLR's loss of partners z1[i] <-> z2[i] (N, D) against the other 2N - 2 embeddings, and the
    share of the 2N embeddings whose most similar other one is their partner."""
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    n = len(z1)
    sim = z @ z.T / temperature
    sim.fill_diagonal_(float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
    return F.cross_entropy(sim, target), (sim.argmax(1) == target).float().mean()


def vicreg_terms(z1: torch.Tensor, z2: torch.Tensor, eps: float = 1e-4) -> dict[str, torch.Tensor]:
    """VICReg's three terms for partners z1[i] <-> z2[i] (N, D): invariance (MSE), variance (mean
    hinge 1 - std per dimension, both branches averaged), covariance (squared off-diagonal
    covariances / D, both branches summed)."""
    z1, z2 = z1.float(), z2.float()
    n, d = z1.shape
    inv = F.mse_loss(z1, z2)
    var, cov = z1.new_zeros(()), z1.new_zeros(())
    for z in (z1, z2):
        z = z - z.mean(0)
        var = var + F.relu(1 - torch.sqrt(z.var(0) + eps)).mean() / 2
        c = (z.T @ z) / max(n - 1, 1)
        cov = cov + (c.pow(2).sum() - c.diagonal().pow(2).sum()) / d
    return {"invariance": inv, "variance": var, "covariance": cov}


def embedding_std(z: torch.Tensor) -> torch.Tensor:
    """Mean per-dimension std of the L2-normalised embeddings x sqrt(D): ~1 spread, 0 collapsed."""
    z = F.normalize(z.float(), dim=1)
    return z.std(0).mean() * math.sqrt(z.shape[1])


@register_family("ssl")
class SelfSupervised(Family):
    """A classifier backbone pretrained by SimCLR or VICReg on two views of each image."""
    capabilities = frozenset({"encode"})

    Config = SSLConfig
    monitor = ("loss", "min")

    def __init__(self, cfg: SSLConfig, info: DataInfo):
        super().__init__()
        self.cfg, self.info = cfg, info
        # the classifier's own build arguments (genlab.families.classifier), so the export
        # rebuilds the same module there
        self._backbone_args = cfg.backbone_args(info.input_shape)
        self.backbone = build_backbone(**self._backbone_args)
        layers: list[nn.Module] = []
        widths = [self.backbone.num_features, *cfg.projector]
        for i, (a, b) in enumerate(itertools.pairwise(widths)):
            layers.append(nn.Linear(a, b, bias=i == len(widths) - 2))
            if i < len(widths) - 2:
                layers += [nn.BatchNorm1d(b), nn.ReLU(inplace=True)]
        self.projector = nn.Sequential(*layers)

    # -- the objective -------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.backbone(x))  # (B, D) embeddings

    def views(self, x: torch.Tensor, generator: torch.Generator | None = None):
        return self.cfg.views(x, generator, self.info.value_range)

    def _embed(self, x: torch.Tensor, generator: torch.Generator | None, autocast):
        v1, v2 = self.views(x, generator)
        with autocast():
            z = self(torch.cat([v1, v2]))  # one pass: batch norm sees both views together
        return z[: len(x)].float(), z[len(x):].float()

    def _loss(self, z1: torch.Tensor, z2: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {"emb_std": embedding_std(torch.cat([z1, z2]).detach())}
        if self.cfg.objective == "simclr":
            out["loss"], out["acc"] = nt_xent(z1, z2, self.cfg.temperature)
        else:
            terms = vicreg_terms(z1, z2)
            out["loss"] = (self.cfg.sim_weight * terms["invariance"] + self.cfg.var_weight
                           * terms["variance"] + self.cfg.cov_weight * terms["covariance"])
            out.update(terms)
        return out

    # -- the contract --------------------------------------------------------------------------
    def configure_optimizers(self, train):
        return {"main": build_optimizer(self.parameters(), train)}

    def training_step(self, batch, ctx: StepContext):
        z1, z2 = self._embed(batch["x"], None, ctx.autocast)
        if ctx.world_size > 1:  # the global batch's loss; see the module docstring
            z1, z2 = _global(z1, ctx), _global(z2, ctx)
        out = self._loss(z1, z2)
        ctx.update("main", out["loss"] * ctx.world_size)
        return {k: v.detach() for k, v in out.items()}

    @torch.no_grad()
    def evaluate(self, batch):
        x = batch["x"]
        z1, z2 = self._embed(x, eval_generator(batch, x.device), contextlib.nullcontext)
        return self._loss(z1, z2)

    @torch.no_grad()
    def renders(self, batch):
        x = batch["x"][:8]
        v1, v2 = self.views(x, eval_generator(batch, x.device))
        out = {"views": triplets(x, v1, v2, labels=("image", "view 1", "view 2"))}
        layer = first_layer(self.backbone)
        if isinstance(layer, nn.Conv2d):
            out["filters"] = tile_kernels(layer.weight, max_tiles=64)
        out["feature_maps"] = feature_maps(self.backbone.features[0](self.backbone.pre(v1[:1]))[0])
        return out

    @torch.no_grad()
    def histograms(self, batch):
        feats = self.backbone(batch["x"][:64])
        return {"features": feats, "embedding": self.projector(feats)}

    # -- capability "encode" -------------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)  # (B, num_features): the pooled features, not the projection

    @property
    def out_features(self) -> int:
        return self.backbone.num_features

    def encoder_spec(self) -> EncoderSpec:
        config = exported_args(self._backbone_args)
        extra = {"ssl": {"objective": self.cfg.objective, "backbone": self.cfg.backbone,
                         "projector": list(self.cfg.projector)}}
        return EncoderSpec(builder="classifier_backbone", config=config, module=self.backbone,
                           out_features=self.backbone.num_features, extra=extra)


def _global(z: torch.Tensor, ctx: StepContext) -> torch.Tensor:
    """Every rank's `z` in rank order, this rank's block still carrying its gradient."""
    every = ctx.all_gather_cat(z.detach())
    n = len(z)
    return torch.cat([every[: ctx.rank * n], z, every[(ctx.rank + 1) * n:]])


__all__ = ["SSLConfig", "SelfSupervised", "embedding_std", "nt_xent", "vicreg_terms"]
