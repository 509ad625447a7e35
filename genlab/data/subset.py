"""Train on a labelled fraction of the training split (model.label_fraction of the classifier).

Which examples count as labelled is a pure function of (index in the train split, subset seed,
fraction): example i is kept when u(i) < fraction, u(i) in [0, 1) a fixed hash of (seed, i).
So the subsets are nested (10 % is inside 20 % for the same seed), independent of the class
(each class keeps `fraction` of its examples in expectation, i.e. stratified on average), and
computed without looking at any image.

`labelled_mask(indices, fraction, seed)` tells, for a batch of train indices, which are
labelled: the classifier masks its loss with it (the trainer draws batches from the whole train
split). `subset_indices(labels, fraction, seed)` lists a subset with at least one example per
class (the one with the smallest u), for code that picks its own training examples.
"""
from __future__ import annotations

import torch

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
