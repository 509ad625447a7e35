"""The contract every data source implements.

A data source is an indexable, split-aware set of examples. Sample `i` of a split is
fetched with `get(split, indices)` in batches, so sources that synthesise data (the brain
factory) can vectorise, and in-memory sources just index a tensor. The trainer owns the
order (a seeded, resumable index sampler), so every source shards and resumes the same way.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class DataInfo:
    """What a model needs to know about its input, and what an exported encoder records."""

    name: str
    input_shape: tuple[int, int, int]  # (C, H, W)
    num_classes: int
    class_names: tuple[str, ...]
    value_range: tuple[float, float] = (0.0, 1.0)  # the range of batch["x"]
    has_mask: bool = False  # batches carry a lesion mask batch["mask"] (B, 1, H, W) bool
    env: Any = None  # environment data sources (the maze): the env config a family builds from


@runtime_checkable
class DataSource(Protocol):
    """An indexable data set with train/val/test splits.

    - `Config`: a dataclass of options (the recipe's `data:` section minus `name`/`batch_size`).
    - `__init__(cfg, seed, device)`: `seed` is the recipe seed (used for split assignment and
      synthesis); `device` is where `get` returns tensors (synthetic/in-memory sources may use it,
      disk-backed sources return CPU tensors and the trainer moves them).
    - `size(split)`: number of examples in the split.
    - `get(split, indices)`: indices is a 1-D int64 tensor; returns
      {"x": (B, C, H, W) float32 in info.value_range, "y": (B,) int64,
       optionally "mask": (B, 1, H, W) bool}.
    """

    Config: ClassVar[type]
    info: DataInfo

    def size(self, split: str) -> int: ...

    def get(self, split: str, indices: torch.Tensor) -> dict[str, torch.Tensor]: ...


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")


class TensorSplits:
    """A data source held in memory as per-split tensors `self._x[split]`, `self._y[split]`.

    Subclasses fill those dicts and `info`; `_as_float` converts stored images (e.g. uint8)
    to float32 in [0, 1].
    """

    _x: dict[str, torch.Tensor]
    _y: dict[str, torch.Tensor]
    info: DataInfo

    def _as_float(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def size(self, split: str) -> int:
        check_split(split)
        return len(self._y[split])

    def get(self, split: str, indices: torch.Tensor) -> dict[str, torch.Tensor]:
        check_split(split)
        idx = torch.as_tensor(indices, dtype=torch.long).to(self._y[split].device)
        return {"x": self._as_float(self._x[split][idx]), "y": self._y[split][idx]}

    def class_counts(self, split: str) -> torch.Tensor:
        """(num_classes,) int64 examples per class in `split` (for class weights)."""
        check_split(split)
        return torch.bincount(self._y[split].cpu(), minlength=self.info.num_classes)
