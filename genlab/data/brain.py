"""Data source "brain": synthetic brain-MRI slices with tumours, made on demand.

    data:
      name: brain
      mode: hard            # easy: opaque tumours; hard: faint and a bit smaller
      classes: syndrome     # A, B, C, Z (healthy); or lesion: 0 healthy, 1 any tumour
      size: [64, 48]        # optional area downscaling of the 128 x 96 images
      labelled: 200         # optional: train on 200 class-balanced images of the train split

Every image comes from genlab.data.brain_factory.BrainFactory: sample i of a split is a pure
function of (seed, split, i), so nothing is stored and any index can be fetched in any batch.
Batches carry the lesion mask, which the classifier scores its Grad-CAM maps against.

With `labelled: N` the train split is N images picked from the first train_size by their labels
(genlab.data.subset.balanced_subset, keyed by the recipe seed): the same number of each class,
and nested (for one seed and train_size, the 40 are inside the 200). Label-efficiency studies
use it so that every initialisation of a seed trains on the same images; val and test are
untouched.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from genlab.core.errors import DataError
from genlab.core.registry import register_dataset
from genlab.core.schema import param
from genlab.data.base import SPLITS, DataInfo
from genlab.data.brain_factory import GHOST_PROB, HEIGHT, SYNDROMES, WIDTH, BrainFactory
from genlab.data.subset import balanced_subset

LESION_CLASSES = ("healthy", "lesion")  # labels of classes: lesion


@dataclass
class BrainConfig:
    mode: Literal["easy", "hard"] = param(
        "hard", help="tumour visibility: easy (opaque) or hard (faint and a bit smaller)"
    )
    train_size: int = param(100_000, ge=1, help="number of synthetic training images")
    val_size: int = param(1_000, ge=1, help="number of synthetic validation images")
    test_size: int = param(2_000, ge=1, help="number of synthetic test images")
    ghost_prob: float = param(
        GHOST_PROB, ge=0, le=1, help="probability of a motion ghost blur per image (default 0.001)"
    )
    classes: Literal["syndrome", "lesion"] = param(
        "syndrome", help="labels: syndrome (A, B, C, Z) or lesion (0 healthy, 1 any tumour)"
    )
    size: list[int] | None = param(
        None, ge=1, help="[height, width] to downscale every 128 x 96 image to by area "
        "averaging (the mask: any lesion pixel in the cell), e.g. [64, 48]; null: 128 x 96"
    )
    labelled: int | None = param(
        None, ge=1, help="train split = this many images of the first train_size, the same number "
        "per class, nested in the number for one seed (null: all train_size)"
    )

    def __post_init__(self):
        if self.size is not None:
            if len(self.size) != 2 or any(int(s) < 1 for s in self.size):
                raise ValueError(
                    f"size: expected [height, width] of positive integers, got {self.size!r}"
                )
            h, w = (int(s) for s in self.size)
            if h > HEIGHT or w > WIDTH:
                raise ValueError(
                    f"size: downscaling only, at most [{HEIGHT}, {WIDTH}], got {self.size!r}"
                )
            self.size = [h, w]
        if self.labelled is not None and self.labelled > self.train_size:
            raise ValueError(f"labelled: {self.labelled} images cannot be picked from train_size "
                             f"{self.train_size}; expected at most train_size")


@register_dataset("brain")
class BrainData:
    """The brain factory as a data source: x (B,1,128,96) in [0,1], y (B,), mask (B,1,128,96).

    Sample i of a split is synthesised on demand from (seed, split, i) on `device`; splits use
    different hash keys, so they are disjoint in practice. With `size: [h, w]` the same images
    are downscaled after synthesis (area averaging; a mask cell is True when any of its pixels
    is): the shapes above become (B,1,h,w). This differs from the factory's own height/width,
    which would draw a different slice with the tumours at their 128 x 96 pixel sizes.
    """

    Config = BrainConfig

    def __init__(self, cfg: BrainConfig, seed: int = 0, device: torch.device | str = "cpu"):
        self.cfg, self.device = cfg, torch.device(device)
        self.factory = BrainFactory(
            mode=cfg.mode, seed=seed, device=self.device, ghost_prob=cfg.ghost_prob
        )
        lesion = cfg.classes == "lesion"
        self.info = DataInfo(
            name="brain",
            input_shape=(1, *(cfg.size or (HEIGHT, WIDTH))),
            num_classes=2 if lesion else len(SYNDROMES),
            class_names=LESION_CLASSES if lesion else SYNDROMES,
            has_mask=True,
        )
        self._sizes = {"train": cfg.train_size, "val": cfg.val_size, "test": cfg.test_size}
        self._train_idx: torch.Tensor | None = None  # train index -> factory index (labelled)
        if cfg.labelled is not None:
            pool = self._labels("train", torch.arange(cfg.train_size, device=self.device)).cpu()
            self._train_idx = balanced_subset(pool, cfg.labelled, seed, self.info.num_classes,
                                              what="data.labelled").to(self.device)
            self._sizes["train"] = cfg.labelled

    def size(self, split: str) -> int:
        if split not in SPLITS:
            raise DataError(f"unknown split {split!r}; expected one of {SPLITS}")
        return self._sizes[split]

    def get(self, split: str, indices: torch.Tensor) -> dict[str, torch.Tensor]:
        n = self.size(split)
        idx = torch.as_tensor(indices, dtype=torch.long).reshape(-1)
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n):
            raise DataError(
                f"brain: {split} indices must be in [0, {n}), got "
                f"[{int(idx.min())}, {int(idx.max())}]"
            )
        if split == "train" and self._train_idx is not None:
            idx = self._train_idx[idx.to(self.device)]
        out = self.factory.generate(split, idx)
        if self.cfg.size is not None and tuple(self.cfg.size) != (HEIGHT, WIDTH):
            size = tuple(self.cfg.size)
            out["x"] = F.interpolate(out["x"], size=size, mode="area")
            out["mask"] = F.adaptive_max_pool2d(out["mask"].float(), size) > 0
        if self.cfg.classes == "lesion":
            out["y"] = (out["y"] != SYNDROMES.index("Z")).long()
        return out

    def class_counts(self, split: str) -> torch.Tensor:
        """(num_classes,) examples per class in `split` (computed from the label hash)."""
        idx = torch.arange(self.size(split), device=self.device)
        if split == "train" and self._train_idx is not None:
            idx = self._train_idx
        return torch.bincount(self._labels(split, idx).cpu(), minlength=self.info.num_classes)

    def _labels(self, split: str, idx: torch.Tensor) -> torch.Tensor:
        """The task's labels of factory samples `idx` (cheap: no image is made)."""
        y = self.factory.labels(split, idx)
        return (y != SYNDROMES.index("Z")).long() if self.cfg.classes == "lesion" else y


__all__ = ["LESION_CLASSES", "SYNDROMES", "BrainConfig", "BrainData", "BrainFactory"]
