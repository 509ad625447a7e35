"""The recipe keys that choose a classifier backbone for a family that pretrains one.

A family that pretrains the lesion classifier's own network (ssl, distill) builds it exactly as
the classifier family does (genlab.nn.backbones, the same keys and meanings), and exports it with
the classifier's own build arguments (builder "classifier_backbone"), so that
`model.init: <run>/export` of a classifier with the same settings loads every tensor and a
pretrained and a scratch classifier differ only in their initial weights.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from genlab.core.schema import param


@dataclass
class BackboneChoice:
    backbone: Literal["brain_tumor_nn", "model1", "model2", "vgg_sep", "resnet18"] = param(
        "vgg_sep", help="the classifier backbone to pretrain (genlab.nn.backbones)")
    channels: list[int] | None = param(None, ge=1, help="conv widths of brain_tumor_nn/model1/model2/"
                                       "vgg_sep (null: the published ones); as the classifier's")
    stem_stride: int = param(1, ge=1, le=4, help="stride of the first conv (not resnet18); as the "
                             "classifier's: the export only drops into a classifier with the same")
    clahe: bool = param(False, help="CLAHE contrast equalisation inside the backbone (exported with it)")
    clahe_clip: float = param(2.0, gt=0, help="CLAHE clip limit (OpenCV's clipLimit)")
    clahe_grid: list[int] = param(default_factory=lambda: [8, 8], ge=1, help="CLAHE tiles [rows, cols]")

    def __post_init__(self):
        if len(self.clahe_grid) != 2:
            raise ValueError(f"clahe_grid: expected [rows, cols], got {self.clahe_grid}")
        if self.backbone == "resnet18" and (self.channels is not None or self.stem_stride != 1):
            raise ValueError("channels, stem_stride: not used by backbone 'resnet18'")

    def backbone_args(self, input_shape) -> dict:
        """genlab.nn.backbones.build_backbone's arguments, the classifier family's own."""
        return {"name": self.backbone, "in_shape": list(input_shape), "channels": self.channels,
                "pretrained": False, "stem_stride": self.stem_stride, "clahe": self.clahe,
                "clahe_clip": self.clahe_clip, "clahe_grid": list(self.clahe_grid)}


def exported_args(args: dict) -> dict:
    """The build arguments as the export's builder config (unset keys left out)."""
    return {k: v for k, v in args.items() if v is not None}


__all__ = ["BackboneChoice", "exported_args"]
