"""Image classifiers through the shared trainer: family "classifier".

    image (B, C, H, W) -> backbone (pre -> conv trunk -> neck) -> (B, F) -> head -> (B, K)

Head: dropout + linear (the default), or with `head: [1024, 512]` dense layers (ReLU, then
`head_dropout`) before the linear output: fc 1024 -> dropout -> fc 512 -> dropout -> logits.

Backbones: those of genlab.nn.backbones, or the encoder of an exported bundle (`init:` a bundle
folder or a run folder with export/) under a new head; genlab.families.init_from loads it and
prints what it loaded (a shape mismatch is an error unless `allow_shape_mismatch: true`);
`init_shrink` / `init_perturb` mix the loaded weights with fresh ones (shrink and perturb);
`init_reset` names layers that start fresh (only the layers below them are transferred).

Modes (what trains, `mode:`):
    scratch       everything, from random weights, at train.lr
    linear_probe  the backbone is frozen: requires_grad False and kept in eval mode (batch-norm
                  statistics and dropout frozen) even while the model trains; only the head learns
    finetune      everything; the backbone at train.lr x encoder_lr_mult
    gradual       head only for `unfreeze_every` steps, then one more backbone stage from the top
                  every `unfreeze_every` steps (ULMFiT-style); unfrozen stages at lr x encoder_lr_mult

Head start (`head_init:`): random, or probe: before the first step of a fresh run the linear head
is fitted as a logistic probe on the frozen features of the labelled training images (C chosen
on val) and training goes on from it, the mode deciding what trains: LP-FT with `finetune`
(genlab.families.head_init; a resume restores the head and fits nothing).

`freeze: [block1, features.1.0, ...]` freezes those backbone layers on top of the mode, by the
names of genlab.nn.layer_names.named_layers (`genlab probe RUN --list-layers` prints them): their
parameters are never trainable nor handed to the optimizer, and they stay in eval mode (frozen
batch-norm statistics, no dropout), so they end a run bit-identical to how they started.

Training loss: cross-entropy. With `label_fraction < 1` only the labelled examples of each batch
enter it (genlab.data.subset.labelled_mask of their train indices; a batch with none takes no
step). `class_weights: balanced` weighs class c by N / (K n_c), n_c counting the class-c examples
that entered the loss so far (buffer `class_seen`, kept in checkpoints): an estimate from the
batches seen, not the split's exact counts.

Validation: `loss` is the plain cross-entropy (no class weights, no smoothing) and the monitor.
`summarize` adds acc, top5 (K > 5; training logs it too), auc, ece, sens/<class>, spec/<class>
and, for lesion tasks, bin/{sens,spec,ppv,npv,f1,auc} of "any lesion class vs the negative classes"
(genlab.metrics.classification.report_scalars); on data with lesion masks, Grad-CAM of the
predicted class scored against the mask, loc/* (genlab.metrics.gradcam.localisation_summary).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from genlab.core.errors import RecipeError
from genlab.core.registry import register_family
from genlab.data.augment import AugmentConfig, build_augment
from genlab.data.base import DataInfo
from genlab.data.subset import labelled_mask
from genlab.families.base import EncoderSpec, Family, StepContext
from genlab.families.classifier_config import ClassifierConfig
from genlab.families.init_from import backbone_from_bundle, format_init_report
from genlab.metrics.classification import resolve_negative
from genlab.nn.backbones import build_backbone
from genlab.nn.blocks import first_layer
from genlab.nn.layer_names import find_layers
from genlab.nn.optim import build_optimizer


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
            try:
                self.backbone, self._backbone_args, self.init_report = backbone_from_bundle(
                    cfg.init, in_shape, pre, info.value_range, cfg.allow_shape_mismatch,
                    cfg.init_shrink, cfg.init_perturb, cfg.init_reset)
            except ValueError as e:  # an unknown layer name in init_reset
                raise RecipeError("model.init_reset", str(e)) from None
            _same_backbone(cfg, self._backbone_args["encoder"])
            print(format_init_report(self.init_report), flush=True)
        else:
            self._backbone_args = dict(name=cfg.name, in_shape=in_shape, channels=cfg.channels,
                                       pretrained=cfg.pretrained, stem_stride=cfg.stem_stride, **pre)
            self.backbone = build_backbone(**self._backbone_args)
        self.head = _head(self.backbone.num_features, k, cfg)
        self._frozen_layers = self._named_freeze(cfg.freeze)
        self._frozen_ids = {id(p) for m in self._frozen_layers for p in m.parameters()}
        self.negative = resolve_negative(cfg.negative_classes, tuple(info.class_names))
        # per-class count of the examples that entered the training loss (balanced weights)
        self.register_buffer("class_seen", torch.zeros(k, dtype=torch.float64))
        self._stages = self.backbone.stages()  # bottom (input side) first
        self._unfrozen = 0 if cfg.mode in ("linear_probe", "gradual") else len(self._stages)
        self._transform = build_augment(cfg.augment)
        self._apply_freeze()

    # -- freezing --------------------------------------------------------------------------------
    def _named_freeze(self, names: list[str]) -> list[nn.Module]:
        try:
            layers = find_layers(self.backbone, list(names))
        except ValueError as e:
            raise RecipeError("model.freeze", str(e)) from None
        empty = [n for n, m in zip(names, layers) if not any(True for _ in m.parameters())]
        if empty:
            raise RecipeError("model.freeze", f"{', '.join(empty)} ha{'ve' if len(empty) > 1 else 's'} "
                              f"no parameters to freeze (name a conv, dense or norm layer or a stage)")
        return layers

    def _frozen_stages(self) -> list[nn.Module]:
        return self._stages[: len(self._stages) - self._unfrozen]

    def _apply_freeze(self) -> None:
        if self._unfrozen >= len(self._stages) and self.cfg.mode != "linear_probe":
            trainable = set(map(id, self.backbone.parameters()))
        else:
            trainable = {id(p) for s in self._stages[len(self._stages) - self._unfrozen:]
                         for p in s.parameters()}
        for p in self.backbone.parameters():
            p.requires_grad_(id(p) in trainable and id(p) not in self._frozen_ids)
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
            for m in self._frozen_layers:
                m.eval()
        return self

    def unfrozen_at(self, step: int) -> int:
        """Backbone stages trainable at `step` (gradual: one more every unfreeze_every steps)."""
        if self.cfg.mode == "linear_probe":
            return 0
        if self.cfg.mode != "gradual":
            return len(self._stages)
        return min(len(self._stages), step // self.cfg.unfreeze_every)

    def class_weight(self) -> torch.Tensor | None:
        """Cross-entropy class weights: None, or N / (K n_c) from `class_seen` (balanced)."""
        if self.cfg.class_weights == "none":
            return None
        n = self.class_seen.clamp_min(1.0)
        return (n.sum() / (len(n) * n)).float()

    # -- the contract ----------------------------------------------------------------------------
    def configure_optimizers(self, train):
        head = list(self.head.parameters())
        body = [p for p in self.backbone.parameters() if id(p) not in self._frozen_ids]
        if self.cfg.mode == "linear_probe":
            return {"main": build_optimizer([{"params": head}], train)}
        if self.cfg.mode == "scratch":
            return {"main": build_optimizer(head + body, train)}
        groups = [{"params": head}, {"params": body, "lr": train.lr * self.cfg.encoder_lr_mult}]
        return {"main": build_optimizer([g for g in groups if g["params"]], train)}

    def on_fit_start(self, data, device: torch.device) -> None:
        """head_init probe: the head starts as the logistic probe of the frozen features."""
        if self.cfg.head_init == "probe":
            from genlab.families.head_init import describe, probe_head

            print(describe(probe_head(self, data, device, self.cfg.head_init_max_images)), flush=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))  # (B, K) logits

    def augment(self, x: torch.Tensor) -> torch.Tensor:
        """Per-image random transforms (training only; draws from the global torch RNG, which the
        trainer seeds and checkpoints)."""
        return x if self._transform is None else self._transform(x)

    def training_step(self, batch, ctx: StepContext):
        if self.cfg.mode == "gradual":
            n = self.unfrozen_at(ctx.step)
            if n != self._unfrozen:
                self._unfrozen = n
                self._apply_freeze()
        x, y = batch["x"], batch["y"]
        if self.cfg.label_fraction < 1.0:  # only the labelled examples enter the loss
            keep = labelled_mask(batch["index"], self.cfg.label_fraction, self.cfg.subset_seed)
            if not bool(keep.any()):  # no labelled example in this batch: no update
                zero = torch.zeros((), device=x.device)
                return {"loss": zero, "acc": zero, **({"top5": zero} if self.info.num_classes > 5 else {})}
            x, y = x[keep], y[keep]
        if self.cfg.class_weights == "balanced":
            self.class_seen += torch.bincount(y, minlength=len(self.class_seen)).to(self.class_seen)
        x = self.augment(x)
        with ctx.autocast():
            logits = self(x)
        loss = F.cross_entropy(logits.float(), y, weight=self.class_weight(),
                               label_smoothing=self.cfg.label_smoothing)
        ctx.update("main", loss)
        out = {"loss": loss.detach(), "acc": (logits.argmax(1) == y).float().mean()}
        if logits.shape[1] > 5:  # top-5 beside top-1, as the evaluation reports it
            out["top5"] = (logits.detach().topk(5, dim=1).indices == y[:, None]).any(1).float().mean()
        return out

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

    def gradcam(self, x: torch.Tensor, class_idx=None, layer: str | None = None) -> torch.Tensor:
        """(B, H, W) Grad-CAM maps in [0, 1] at the backbone's conv trunk, or at the backbone
        layer named `layer` (genlab.nn.layer_names.named_layers; ValueError when unknown or not a
        (B, C, h, w) map). Call in eval mode."""
        from genlab.metrics.gradcam import GradCAM

        target = self.backbone.cam_layer if layer is None else find_layers(self.backbone, [layer])[0]
        with GradCAM(self, target) as cam:
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
            from genlab.metrics.gradcam import localisation_columns

            cams = self.gradcam(x, pred)
            out.update(localisation_columns(cams, batch["mask"], pred, y, self.cfg.cam_tolerance_px))
        return out

    def report(self, probs: torch.Tensor, y: torch.Tensor) -> dict:
        """genlab.metrics.classification.classification_report for these predictions, with the
        lesion block ("any lesion class" against the negative classes)."""
        from genlab.metrics.classification import classification_report

        k = probs.shape[1]
        positive = [i for i in range(k) if i not in self.negative] if self.negative else None
        return classification_report(y.cpu(), probs.cpu(), list(self.info.class_names),
                                     positive=positive, top_k=(5,))

    def summarize(self, collected: dict[str, torch.Tensor]) -> dict[str, float]:
        from genlab.metrics.classification import report_scalars
        from genlab.metrics.gradcam import localisation_summary

        out = report_scalars(self.report(collected["probs"], collected["y"]))
        if "cam_mass" in collected:
            out.update(localisation_summary(collected))
        # undefined values (a class absent from the split) are left out, not NaN: metrics.json
        # is strict JSON and TensorBoard curves skip a missing point anyway
        return {k: v for k, v in out.items() if math.isfinite(v)}

    @torch.no_grad()
    def renders(self, batch):
        from genlab.metrics.classification import confusion_matrix, plot_confusion_matrix
        from genlab.viz.render import tile_kernels, tile_weights

        out = {}
        layer = first_layer(self.backbone)
        if isinstance(layer, nn.Conv2d):
            out["filters"] = tile_kernels(layer.weight, max_tiles=64)
        elif isinstance(layer, nn.Linear) and layer.weight.shape[1] == math.prod(self.info.input_shape):
            out["filters"] = tile_weights(layer.weight, self.info.input_shape, max_tiles=64)
        x = batch["x"]
        if self.can_explain:
            out["gradcam"] = self._gradcam_grid(x[:8], batch.get("mask"))
        pred = self(x).argmax(1)
        cm = confusion_matrix(batch["y"].cpu(), pred.cpu(), self.info.num_classes)
        img = plot_confusion_matrix(cm, list(self.info.class_names),
                                    title=f"render batch ({len(x)} val images)")
        out["confusion"] = torch.from_numpy(img).permute(2, 0, 1).float() / 255.0
        return out

    def _gradcam_grid(self, xs: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Rows: the images, their Grad-CAM overlays, and the lesion masks when there are any."""
        from genlab.metrics.gradcam import overlay
        from genlab.viz.render import image_grid, to_rgb

        cams = self.gradcam(xs).cpu()
        rows = [torch.stack([to_rgb(i) for i in xs.float().cpu().clamp(0, 1)]),
                torch.stack([overlay(i, c) for i, c in zip(xs.float().cpu(), cams)])]
        if mask is not None:
            rows.append(mask[:8].float().cpu().expand(-1, 3, -1, -1))
        return image_grid(torch.cat(rows), nrow=len(xs))

    @torch.no_grad()
    def histograms(self, batch):
        return {"features": self.backbone(batch["x"][:64])}

    # -- capability "encode" ---------------------------------------------------------------------
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


def _same_backbone(cfg: ClassifierConfig, encoder: dict) -> None:
    """A recipe that names a conv backbone beside init must describe the bundle's backbone: the
    same name, widths and stem stride (so a pretrained and a scratch run differ only by init)."""
    from genlab.nn.backbones import DEFAULT_CHANNELS

    if cfg.backbone in (None, "encoder"):
        return
    conf = encoder.get("config", {})
    if encoder.get("builder") != "classifier_backbone" or conf.get("name") in (None, "encoder"):
        raise RecipeError("model.backbone", f"{cfg.backbone}, but {cfg.init} holds a "
                          f"{encoder.get('builder')!r} encoder, not a {cfg.backbone} backbone; set "
                          f"model.backbone: null to use it")
    name = conf["name"]
    pairs = {"backbone": (name, cfg.backbone),
             "channels": (conf.get("channels") or DEFAULT_CHANNELS.get(name),
                          cfg.channels or DEFAULT_CHANNELS.get(cfg.backbone)),
             "stem_stride": (int(conf.get("stem_stride", 1)), cfg.stem_stride)}
    for key, (bundle, recipe) in pairs.items():
        if (list(bundle) if isinstance(bundle, (list, tuple)) else bundle) != (
                list(recipe) if isinstance(recipe, (list, tuple)) else recipe):
            raise RecipeError(f"model.{key}", f"{recipe}, but the bundle {cfg.init} was built with "
                              f"{bundle}; make them equal, or set model.backbone: null")


def _head(width: int, k: int, cfg: ClassifierConfig) -> nn.Sequential:
    """[dropout] -> (dense + ReLU + dropout) per `cfg.head` width -> linear to K logits."""
    layers: list[nn.Module] = [nn.Dropout(cfg.dropout) if cfg.dropout else nn.Identity()]
    for units in cfg.head:
        layers += [nn.Linear(width, units), nn.ReLU(inplace=True),
                   nn.Dropout(cfg.head_dropout) if cfg.head_dropout else nn.Identity()]
        width = units
    return nn.Sequential(*layers, nn.Linear(width, k))


__all__ = ["AugmentConfig", "Classifier", "ClassifierConfig", "resolve_negative"]
