"""Index orders over a split: the trainer's resumable, shardable sampler, and split assignment.

The trainer never iterates a data set directly; it asks an `IndexSampler` for the next batch of
indices and hands them to `DataSource.get`. Because the order of epoch `e` is a pure function of
`(seed, e)`, the sampler's whole state is two integers, `{"epoch", "batch"}`, and a restored
sampler continues exactly where an uninterrupted one would be.

Also here: `derive_seed` (a stable hash of a tuple, unlike Python's salted `hash`) and
`stratified_split`, the deterministic split assignment used by the in-memory and folder sources.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator

import torch

from genlab.core.errors import DataError


def derive_seed(*parts: object) -> int:
    """A stable 63-bit seed from any tuple of printable parts (same on every run and machine)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def stratified_split(
    labels: torch.Tensor, val_fraction: float, test_fraction: float, seed: int, tag: str = "split"
) -> dict[str, torch.Tensor]:
    """Assign every example to train/val/test, class by class, deterministically from `seed`.

    labels: (N,) int64. Each class's examples are shuffled with a generator seeded from
    (seed, tag, class) and `round(n_c * fraction)` of them go to test, then val, the rest to
    train, so every class keeps its share in every split. Returns sorted (n_split,) int64 index
    tensors that are disjoint and together cover range(N).
    """
    if not (0.0 <= val_fraction < 1.0 and 0.0 <= test_fraction < 1.0):
        raise ValueError(
            f"fractions must be in [0, 1), got val={val_fraction}, test={test_fraction}"
        )
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(
            f"val_fraction + test_fraction must be < 1, got {val_fraction + test_fraction}"
        )
    labels = torch.as_tensor(labels).cpu().long()
    parts: dict[str, list[torch.Tensor]] = {"train": [], "val": [], "test": []}
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c).flatten()
        g = torch.Generator().manual_seed(derive_seed(seed, tag, int(c)))
        idx = idx[torch.randperm(len(idx), generator=g)]
        n_test = round(len(idx) * test_fraction)
        n_val = round(len(idx) * val_fraction)
        n_val = min(n_val, len(idx) - n_test)
        parts["test"].append(idx[:n_test])
        parts["val"].append(idx[n_test : n_test + n_val])
        parts["train"].append(idx[n_test + n_val :])
    empty = torch.empty(0, dtype=torch.long)
    return {k: torch.sort(torch.cat(v) if v else empty).values for k, v in parts.items()}


class IndexSampler:
    """A seeded, resumable, shardable order over one split.

    Epoch `e` uses `torch.randperm(size)` from a generator seeded with `derive_seed(seed, e)`
    (or `arange` when `shuffle=False`). Rank `r` of `world_size` takes the strided shard
    `perm[r::world_size]`, like `DistributedSampler`, so shards are disjoint and every rank has the
    same number of batches:
      - drop_last=True: the epoch is cut to a whole number of global batches
        (batch_size * world_size); every batch is full.
      - drop_last=False: the permutation is padded by repeating its head up to a multiple of
        world_size; every example is seen, the last batch may be short (the same on all ranks).

    `next_batch()` returns the next (B,) int64 index tensor and rolls over into the next epoch.
    `state_dict()` is `{"epoch", "batch"}` (the epoch in progress and the batches of it already
    given); after `load_state_dict` the following batches are exactly those an uninterrupted
    sampler would give.
    """

    def __init__(
        self,
        size: int,
        batch_size: int,
        seed: int,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = True,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(
                f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}"
            )
        if size < 1:
            raise DataError("cannot sample batches from an empty split (size 0)")
        self.size, self.batch_size, self.seed = int(size), int(batch_size), int(seed)
        self.shuffle, self.rank, self.world_size, self.drop_last = (
            shuffle,
            rank,
            world_size,
            drop_last,
        )
        if drop_last:
            self.batches_per_epoch = self.size // (self.batch_size * world_size)
            self.per_rank = self.batches_per_epoch * self.batch_size
            if self.batches_per_epoch == 0:
                raise DataError(
                    f"the split has {self.size} examples, fewer than one global batch "
                    f"(batch_size {self.batch_size} x {world_size} rank(s)); lower the batch size"
                )
        else:
            self.per_rank = math.ceil(self.size / world_size)
            self.batches_per_epoch = math.ceil(self.per_rank / self.batch_size)
        self.epoch = 0
        self.batch = 0  # batches of `epoch` already given
        self._cache: tuple[int, torch.Tensor] | None = None

    def epoch_indices(self, epoch: int) -> torch.Tensor:
        """This rank's (per_rank,) int64 order for `epoch` (before cutting into batches)."""
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        if self.shuffle:
            g = torch.Generator().manual_seed(derive_seed(self.seed, epoch))
            perm = torch.randperm(self.size, generator=g)
        else:
            perm = torch.arange(self.size)
        total = self.per_rank * self.world_size
        if total > self.size:  # pad (drop_last=False): repeat the head, as DistributedSampler does
            reps = math.ceil(total / self.size)
            perm = perm.repeat(reps)
        shard = perm[:total][self.rank :: self.world_size].clone()
        self._cache = (epoch, shard)
        return shard

    def next_batch(self) -> torch.Tensor:
        """The next (B,) int64 batch of indices for this rank."""
        if self.batch >= self.batches_per_epoch:
            self.epoch, self.batch = self.epoch + 1, 0
        order = self.epoch_indices(self.epoch)
        out = order[self.batch * self.batch_size : (self.batch + 1) * self.batch_size]
        self.batch += 1
        return out

    def __iter__(self) -> Iterator[torch.Tensor]:
        """Endless stream of batches (the trainer counts steps, not epochs)."""
        while True:
            yield self.next_batch()

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batch": self.batch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        epoch, batch = int(state["epoch"]), int(state["batch"])
        if epoch < 0 or not 0 <= batch <= self.batches_per_epoch:
            raise ValueError(
                f"sampler state {state} does not fit this sampler "
                f"({self.batches_per_epoch} batches per epoch)"
            )
        self.epoch, self.batch = epoch, batch

    def __repr__(self) -> str:
        return (
            f"IndexSampler(size={self.size}, batch_size={self.batch_size}, seed={self.seed}, "
            f"shuffle={self.shuffle}, rank={self.rank}, world_size={self.world_size}, "
            f"drop_last={self.drop_last}, epoch={self.epoch}, batch={self.batch})"
        )


def eval_batches(
    size: int, batch_size: int, limit: int | None = None, rank: int = 0, world_size: int = 1
) -> Iterator[torch.Tensor]:
    """Contiguous (B,) int64 index batches over the first `limit` examples (all if None).

    No shuffle, no padding: rank `r` takes the r-th of `world_size` nearly equal contiguous
    blocks, so every example is evaluated exactly once over all ranks. Ranks may differ by one
    batch: reduce metric sums after the loop, not per batch.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    n = size if limit is None else min(size, max(0, int(limit)))
    start = n * rank // world_size
    stop = n * (rank + 1) // world_size
    for lo in range(start, stop, batch_size):
        yield torch.arange(lo, min(lo + batch_size, stop))
