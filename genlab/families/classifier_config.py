"""The classifier family's recipe keys (`model:` of a family "classifier" recipe), validated on
load; what the modes, heads and freezing do is in genlab.families.classifier."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from genlab.core.schema import param
from genlab.data.augment import AugmentConfig


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
    head_init: Literal["random", "probe"] = param(
        "random", help="where the linear head starts: random, or probe: a logistic regression fitted "
        "on the frozen features of the labelled training images before step 0 (LP-FT with finetune)")
    head_init_max_images: int = param(10_000, ge=2, help="head_init probe: at most this many train "
                                      "(and val, to choose C) images")
    init_shrink: float = param(1.0, ge=0, le=1, help="init: each loaded parameter x this (with "
                               "init_perturb: shrink and perturb, a warm start that keeps learning)")
    init_perturb: float = param(0.0, ge=0, le=1, help="init: plus this x the parameter's fresh random "
                                "initialisation")
    init_reset: list[str] = param(default_factory=list, help="init: these layers or stages (names: "
                                  "`genlab probe RUN --list-layers`) start from fresh weights, e.g. "
                                  "[features.3]: transfer only the layers below")
    encoder_lr_mult: float = param(0.1, gt=0, help="backbone lr = train.lr x this (finetune, gradual)")
    unfreeze_every: int = param(200, ge=1, help="gradual: steps between unfreezing backbone stages")
    allow_shape_mismatch: bool = param(False, help="init: rebuild the encoder for the data's input "
                                       "shape and skip tensors whose shapes differ (else an error)")
    class_weights: Literal["none", "balanced"] = param(
        "none", help="balanced: cross-entropy weight N / (K n_c) per class against imbalance, "
        "n_c counted over the training batches seen so far")
    label_smoothing: float = param(0.0, ge=0, lt=1, help="label smoothing of the training loss")
    dropout: float = param(0.0, ge=0, lt=1, help="dropout before the linear head")
    head: list[int] = param(default_factory=list, ge=1, help="widths of dense layers (ReLU + "
                            "head_dropout each) before the output layer, e.g. [1024, 512]; [] = linear")
    head_dropout: float = param(0.5, ge=0, lt=1, help="dropout after each dense layer of `head`")
    freeze: list[str] = param(default_factory=list, help="backbone layers or stages kept frozen "
                              "(names: `genlab probe RUN --list-layers`), e.g. [block1, block2]")
    augment: AugmentConfig = param(default_factory=AugmentConfig,
                                   help="training-time augmentation (torchvision.transforms.v2)")
    clahe: bool = param(False, help="CLAHE contrast equalisation of every input (train, eval, predict)")
    clahe_clip: float = param(2.0, gt=0, help="CLAHE clip limit (OpenCV's clipLimit)")
    clahe_grid: list[int] = param(default_factory=lambda: [8, 8], ge=1, help="CLAHE tiles [rows, cols]")
    label_fraction: float = param(1.0, gt=0, le=1, help="train on this fraction of the training "
                                  "labels (a fixed, nested, class-independent subset; the other "
                                  "examples of a batch are left out of the loss)")
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
            # a conv backbone named beside init must be the bundle's own (checked on loading)
            if self.mode == "scratch":
                raise ValueError("mode: 'scratch' trains from random weights, but init loads an exported "
                                 "encoder; use finetune, linear_probe or gradual (--set model.mode=finetune)")
            if self.head_init == "probe" and (self.init_shrink != 1.0 or self.init_perturb != 0.0):
                raise ValueError("head_init: 'probe' fits the head on the backbone in eval mode, whose "
                                 "batch-norm statistics are the bundle's and do not match shrunk or "
                                 "perturbed weights; use head_init: random with init_shrink/init_perturb")
        elif self.init_shrink != 1.0 or self.init_perturb != 0.0 or self.init_reset:
            raise ValueError("init_shrink/init_perturb/init_reset: change a loaded encoder, but "
                             "init is not set")
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
        if self.head_init == "probe" and self.head:
            raise ValueError(f"head_init: 'probe' fits a linear head, but head has dense layers "
                             f"{self.head}; set head: [] or head_init: random")
        if len(self.clahe_grid) != 2:
            raise ValueError(f"clahe_grid: expected [rows, cols], got {self.clahe_grid}")

    @property
    def name(self) -> str:
        """The backbone actually built."""
        return self.backbone or ("encoder" if self.init is not None else "vgg_sep")


__all__ = ["ClassifierConfig"]
