"""Train on a labelled fraction of the training split (model.label_fraction of the classifier).

Which examples count as labelled is a pure function of (index in the train split, subset seed,
fraction): example i is kept when u(i) < fraction, u(i) in [0, 1) a fixed hash of (seed, i).
So the subsets are nested (10 % is inside 20 % for the same seed), independent of the class
(each class keeps `fraction` of its examples in expectation, i.e. stratified on average), and
computed without looking at any image.

Two ways to use it:
- `labelled_mask(indices, fraction, seed)` tells, for a batch of train indices, which are
  labelled: the classifier masks its loss with it (what `genlab train` does; the trainer
  draws batches from the whole train split).
- `LabelSubset(data, fraction, seed)` wraps a DataSource so its train split *is* the subset
  (every batch is full of labelled examples), for code that builds its own data loop. It also
  guarantees at least one example per class (the one with the smallest u), which needs the
  train labels (`split_labels`), so its subset can be a little larger than the mask's.
"""
from __future__ import annotations

import torch

from genlab.core.errors import DataError

_M1 = -4658895280553007687  # 0xBF58476D1CE4E5B9 as int64
_M2 = -7723592293110705685  # 0x94D049BB133111EB as int64
_GOLD = -7046029254386353131  # 0x9E3779B97F4A7C15 as int64


def _srl(z: torch.Tensor, s: int) -> torch.Tensor:
    return (z >> s) & ((1 << (64 - s)) - 1)


def hash_uniform(indices: torch.Tensor, seed: int) -> torch.Tensor:
    """(N,) float64 in [0, 1): splitmix64 of (seed, index), identical on every device."""
    z = torch.as_tensor(indices, dtype=torch.long) + (int(seed) + 1) * _GOLD
    z = (z ^ _srl(z, 30)) * _M1
    z = (z ^ _srl(z, 27)) * _M2
    z = z ^ _srl(z, 31)
    return _srl(z, 11).double() / float(1 << 53)


def labelled_mask(indices: torch.Tensor, fraction: float, seed: int = 0) -> torch.Tensor:
    """(B,) bool: which train indices are in the labelled subset."""
    if fraction >= 1.0:
        return torch.ones(len(indices), dtype=torch.bool, device=torch.as_tensor(indices).device)
    return hash_uniform(indices, seed) < fraction


def split_labels(data, split: str = "train", chunk: int = 2048) -> torch.Tensor:
    """(N,) int64 labels of a split: from `data.labels[split]` (folder), `data.split_labels`
    when a source offers it, else by fetching the split in chunks (slow for synthetic data)."""
    lab = getattr(data, "labels", None)
    if isinstance(lab, dict) and split in lab:
        return torch.as_tensor(lab[split]).long().cpu()
    fn = getattr(data, "split_labels", None)
    if callable(fn):
        return torch.as_tensor(fn(split)).long().cpu()
    n = data.size(split)
    return torch.cat([data.get(split, torch.arange(i, min(n, i + chunk)))["y"].cpu()
                      for i in range(0, n, chunk)]).long()


def subset_indices(labels: torch.Tensor, fraction: float, seed: int = 0) -> torch.Tensor:
    """Sorted train indices of the labelled subset, at least one per class present."""
    labels = torch.as_tensor(labels).long().cpu()
    idx = torch.arange(len(labels))
    u = hash_uniform(idx, seed)
    keep = u < fraction
    for c in torch.unique(labels).tolist():
        of_c = labels == c
        if not keep[of_c].any():
            keep[idx[of_c][u[of_c].argmin()]] = True
    return idx[keep]


class LabelSubset:
    """A DataSource whose train split is the labelled subset of `data`'s; val/test unchanged."""

    def __init__(self, data, fraction: float, seed: int = 0):
        if not 0.0 < fraction <= 1.0:
            raise DataError(f"label fraction must be in (0, 1], got {fraction}")
        self.base, self.fraction, self.seed = data, float(fraction), int(seed)
        self.Config = getattr(data, "Config", None)
        self.info = data.info
        labels = split_labels(data, "train")
        self.train_indices = subset_indices(labels, fraction, seed)
        self._train_labels = labels[self.train_indices]

    def size(self, split: str) -> int:
        return len(self.train_indices) if split == "train" else self.base.size(split)

    def get(self, split: str, indices: torch.Tensor) -> dict[str, torch.Tensor]:
        if split != "train":
            return self.base.get(split, indices)
        idx = torch.as_tensor(indices, dtype=torch.long).cpu()
        return self.base.get("train", self.train_indices[idx])

    def class_counts(self, split: str) -> torch.Tensor:
        if split == "train":
            return torch.bincount(self._train_labels, minlength=self.info.num_classes)
        return self.base.class_counts(split)

    def __getattr__(self, name):  # anything else (describe, factory, ...) from the wrapped source
        if name == "base":
            raise AttributeError(name)
        return getattr(self.base, name)
