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

A fixed number of labelled examples, the same number per class, is the other common protocol
(label-efficiency curves: 40, 200, 1,000 ... labels). `balanced_order(labels, seed)` deals the
examples round-robin over the classes, each class in the order of u: its first n examples hold
n / K of every class (to within one) and are inside its first m > n, so `balanced_subset(labels,
n, seed)` is class-balanced and nested in n. It reads the labels only, never an image.
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
    key = ((int(seed) + 1) * _GOLD) & ((1 << 64) - 1)  # wrapped to 64 bits as the hash needs
    z = torch.as_tensor(indices, dtype=torch.long) + (key - (1 << 64) if key >> 63 else key)
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


def balanced_order(labels: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """(N,) positions of `labels`, dealt round-robin over the classes: the r-th example of every
    class (in the order of u = hash_uniform(position, seed)) comes before the (r+1)-th of any;
    within a round the classes go in the order of u too."""
    labels = torch.as_tensor(labels).long().cpu().reshape(-1)
    u = hash_uniform(torch.arange(len(labels)), seed)
    rank = torch.empty(len(labels), dtype=torch.float64)
    for c in torch.unique(labels).tolist():
        of_c = torch.nonzero(labels == c).flatten()
        rank[of_c[torch.argsort(u[of_c])]] = torch.arange(len(of_c), dtype=torch.float64)
    return torch.argsort(rank + u)  # u < 1: the round first, then u within it


def balanced_subset(labels: torch.Tensor, n: int, seed: int = 0, num_classes: int | None = None,
                    what: str = "labelled") -> torch.Tensor:
    """Sorted positions of the first `n` examples of `balanced_order`: n // K or n // K + 1 of
    each of the K = num_classes classes, nested in n for a fixed seed. A class with too few
    examples is a DataError naming it (`what` names the option in the message)."""
    labels = torch.as_tensor(labels).long().cpu().reshape(-1)
    k = int(num_classes) if num_classes is not None else int(labels.max()) + 1
    if n < 1:
        raise DataError(f"{what}: expected a positive number of examples, got {n}")
    picked = torch.sort(balanced_order(labels, seed)[:n]).values
    got = torch.bincount(labels[picked], minlength=k)
    if len(picked) < n or int(got.max() - got.min()) > 1:
        counts = torch.bincount(labels, minlength=k)
        worst = int(counts.argmin())
        raise DataError(f"{what}: {n:,} class-balanced examples need {-(-n // k):,} of each of {k} "
                        f"classes; class {worst} has {int(counts[worst]):,} in the {len(labels):,} "
                        f"examples they are drawn from (draw from more)")
    return picked
