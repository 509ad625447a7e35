"""scikit-learn's bundled 8x8 handwritten digits: 1,797 images, 10 classes, no download.

The smallest real image set there is: a whole training run fits in seconds on a CPU, which makes
it the data set of the smoke tests and of the quick renders (RBM strokes appear within a minute).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from genlab.core.registry import register_dataset
from genlab.core.schema import param
from genlab.data.base import DataInfo, TensorSplits
from genlab.data.sampler import stratified_split


def check_fractions(val_fraction: float, test_fraction: float) -> None:
    """Cross-check shared by the sources that carve val and test out of one pool.

    Raises ValueError (schema.build turns it into a RecipeError at the `data` key)."""
    for name, v in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= v < 1.0:
            raise ValueError(f"{name}: expected a number >= 0 and < 1, got {v!r}")
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(
            f"val_fraction + test_fraction must be < 1 (nothing left to train on), "
            f"got {val_fraction} + {test_fraction}"
        )


@dataclass
class DigitsConfig:
    val_fraction: float = param(
        0.15, ge=0, lt=1, help="share of each class held out for validation"
    )
    test_fraction: float = param(
        0.15, ge=0, lt=1, help="share of each class held out for the test split"
    )

    def __post_init__(self):
        check_fractions(self.val_fraction, self.test_fraction)


@register_dataset("digits")
class DigitsData(TensorSplits):
    """sklearn `load_digits`: x (B, 1, 8, 8) float32 in [0, 1] (pixel / 16), y (B,) int64 in 0..9.

    The split is a stratified assignment drawn from the recipe seed: disjoint, covering all 1,797
    images, the same for the same seed. All tensors live on `device`.
    """

    Config = DigitsConfig

    def __init__(self, cfg: DigitsConfig, seed: int, device: torch.device | str = "cpu"):
        from sklearn.datasets import load_digits  # bundled with scikit-learn, no network

        self.cfg, self.device = cfg, torch.device(device)
        bunch = load_digits()
        x = torch.as_tensor(bunch.images, dtype=torch.float32).div_(16.0).unsqueeze(1)  # (N,1,8,8)
        y = torch.as_tensor(bunch.target, dtype=torch.long)  # (N,)
        self.split_indices = stratified_split(y, cfg.val_fraction, cfg.test_fraction, seed)
        self._x = {s: x[i].to(self.device) for s, i in self.split_indices.items()}
        self._y = {s: y[i].to(self.device) for s, i in self.split_indices.items()}
        self.info = DataInfo(
            name="digits",
            input_shape=(1, 8, 8),
            num_classes=10,
            class_names=tuple(str(d) for d in range(10)),
        )

