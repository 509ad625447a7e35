"""Data-parallel training on torch.distributed, as launched by torchrun.

`torchrun --nproc_per_node=N -m genlab train RECIPE` (or `genlab train RECIPE --nproc N`) starts N
processes that each run the same trainer. torchrun sets RANK / WORLD_SIZE / LOCAL_RANK /
MASTER_ADDR / MASTER_PORT; `Dist.from_env` joins the process group from them (NCCL on CUDA, gloo
on CPU). Without those variables everything here is a no-op and the trainer runs as one process.

How the work is split (the global batch stays what the recipe says):
  - every rank takes `train.batch_size / world_size` examples per step from its strided shard of
    the same seeded permutation (`IndexSampler`), so the ranks' batches together are exactly the
    single-process batch of that step;
  - after every backward, the gradients of the optimizer being stepped are averaged over the
    ranks with one `all_reduce` per dtype (a flat bucket), before unscaling, clipping and the
    step, so every rank applies the same update and the parameters stay equal.

Why an all_reduce in `StepContext.update` and not the `DistributedDataParallel` module wrapper:
DDP's reducer hooks one backward to one `forward()` of the wrapped module, but a family here runs
several forward/backward passes per step through its own submodules (the GAN's D and G steps,
the DQN's online and target nets, an RBM's free-energy difference, a DBN's active layer). DDP's
documented contract does not cover that without private reducer calls; the collective it would
issue is the same averaging all_reduce that this module issues, minus the overlap of
communication with the backward pass.

Also here: batch-norm buffers are broadcast from rank 0 before evaluation and checkpoints (what
DDP's `broadcast_buffers` gives); evaluation metrics are reduced over ranks; rank-local state
(RNG streams, replay buffers, PCD chains) is gathered into rank 0's checkpoint and handed back
to each rank on resume.
"""
from __future__ import annotations

import atexit
import datetime
import os
import warnings
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn

from genlab.core.errors import GenlabError
from genlab.data.sampler import derive_seed
from genlab.engine.checkpoints import rng_state, seed_everything, set_rng_state

if dist.is_available():
    # Imported here, before any process group exists, on purpose: torch.distributed.nn.functional
    # binds `group=group.WORLD` as default arguments when it is first imported. Imported after a
    # group exists (torch.use_deterministic_algorithms imports it, through torch._inductor), those
    # defaults hold the group, destroy_process_group cannot free it, and its gloo threads live
    # until interpreter exit, where the process can abort (SIGABRT, "terminate called without an
    # active exception") after all its work is done.
    import torch.distributed.nn

#: How long a collective may wait for a missing rank before the job fails instead of hanging.
TIMEOUT_S = int(os.environ.get("GENLAB_DIST_TIMEOUT_S", "600"))


def env_world() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's environment; (0, 1, 0) outside torchrun."""
    return (int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")),
            int(os.environ.get("LOCAL_RANK", "0")))


def current() -> tuple[int, int]:
    """(rank, world_size) of the running process group, (0, 1) when there is none.

    Families that own rank-local state (e.g. the DQN's environments) ask this to pick their seeds.
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_gather_cat(t: torch.Tensor) -> torch.Tensor:
    """Every rank's `t` (same shape on all ranks) concatenated along dim 0, in rank order; `t`
    itself for one process. For data-dependent initialisations that must see the global batch."""
    _rank, world = current()
    if world == 1:
        return t
    parts = [torch.empty_like(t) for _ in range(world)]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False
    # flat gradient buckets by the ids of their parameters (average_gradients)
    _buckets: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, device_name: str) -> Dist:
        """Join (or reuse) the process group torchrun describes; a no-op for one process."""
        rank, world, local = env_world()
        if world <= 1:
            return cls()
        if not dist.is_available():
            raise GenlabError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
        if dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size(), local, owns_group=False)
        use_cuda = device_name in ("cuda", "auto") and torch.cuda.is_available()
        if use_cuda:
            torch.cuda.set_device(local)
        backend = "nccl" if use_cuda else "gloo"
        kwargs = {"device_id": torch.device("cuda", local)} if use_cuda else {}
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=TIMEOUT_S), **kwargs)
        made = cls(rank, world, local, owns_group=True)
        # Leave the group on every way out (an error, Ctrl-C, sys.exit), not only after a finished
        # run: a group still alive when the interpreter exits can abort the process (see above).
        atexit.register(made.close)
        return made

    def device(self, device: torch.device) -> torch.device:
        """The rank's own GPU on CUDA (cuda:LOCAL_RANK); CPU and MPS unchanged."""
        if self.enabled and device.type == "cuda":
            return torch.device("cuda", self.local_rank)
        return device

    def per_rank_batch(self, global_batch: int, key: str = "train.batch_size") -> int:
        if global_batch % self.world_size:
            fits = global_batch // self.world_size * self.world_size or self.world_size
            raise GenlabError(f"{key}: {global_batch} is the global batch and must divide evenly "
                              f"over {self.world_size} processes (e.g. {fits})")
        return global_batch // self.world_size

    def close(self) -> None:
        """Leave the process group if this process made it (idempotent); its threads stop here."""
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
        if self.owns_group:
            atexit.unregister(self.close)
        self.owns_group = False

    # -- the trainer's data-parallel steps (all no-ops for one process) --------------------------
    def share_model(self, model: nn.Module, seed: int) -> None:
        """Tell the model its rank, give every rank rank 0's initial weights (seeded alike, and
        made sure of), then give each rank its own random stream for what is rank-local by
        design: corruption noise, Gibbs chains, exploration."""
        if not self.enabled:
            return
        model.set_rank(self.rank, self.world_size)
        self.broadcast_module(model)
        seed_everything(derive_seed(seed, "rank", self.rank))

    def earliest_step(self, first_bad: torch.Tensor) -> int:
        """The earliest step any rank flagged (`first_bad` is -1 where none): every rank stops
        alike on the first non-finite loss of any of them."""
        if self.enabled:
            never = torch.iinfo(torch.long).max
            flag = torch.where(first_bad < 0, torch.full_like(first_bad, never), first_bad).clone()
            flag = self.min_(flag)
            first_bad = torch.where(flag == never, torch.full_like(flag, -1), flag)
        return int(first_bad.item())

    def mean_over_ranks(self, values: dict[str, torch.Tensor]) -> dict[str, float]:
        """Scalar tensors averaged over the ranks (the same keys, in the same order, everywhere)."""
        if not values:
            return {}
        keys = list(values)  # the same insertion order on every rank
        stacked = torch.stack([values[k].detach().float().reshape(()) for k in keys])
        stacked = self.sum_(stacked) / self.world_size
        return dict(zip(keys, stacked.tolist()))

    def gather_rank_local(self, model: nn.Module) -> list[dict] | None:
        """For a checkpoint: batch-norm statistics made rank 0's everywhere, then every rank's RNG
        state and rank-local buffers, on rank 0 (None on the others and for one process)."""
        if not self.enabled:
            return None
        self.broadcast_module(model, BATCH_NORMS)
        return self.gather_objects({"rng": rng_state(), "buffers": rank_local_buffers(model)})

    def restore_rank_local(self, state: dict, model: nn.Module, seed: int) -> None:
        """On resume: this rank's own RNG stream, replay buffer and chains from a checkpoint (as
        `gather_rank_local` saved them); a rank the checkpoint did not have starts a new stream."""
        saved_world = state.get("world_size", 1)
        if not self.enabled and saved_world == 1:
            return  # one process wrote it, one resumes it: rank 0's state is the state
        ranks = state.get("ranks") or [{"rng": state["rng"]}]
        if self.rank < len(ranks):
            mine = ranks[self.rank]
            set_rng_state(mine["rng"])
            if "buffers" in mine:
                model.load_state_dict(mine["buffers"], strict=False)
        else:
            seed_everything(derive_seed(seed, "rank", self.rank, state["step"]))
        if saved_world != self.world_size and self.is_main:
            warn_world_change(saved_world, self.world_size)

    # -- collectives (all no-ops for one process) ------------------------------------------------
    def average_gradients(self, params: list[nn.Parameter]) -> None:
        """Average .grad over ranks in place: one flat all_reduce per (device, dtype).

        The gradients live in persistent flat buckets (as DDP's `gradient_as_bucket_view`): the
        first call copies them into a bucket and makes each .grad a view of it; later calls find
        the views still in place (the trainer zeroes gradients in place under DDP) and reduce the
        bucket with no copy. On the headline DAE (6.4M parameters) that saves ~30 ms a step of
        allocation and copying next to a ~27 ms gloo all_reduce (docs/benchmarks.md, DDP).
        """
        if not self.enabled:
            return
        groups: dict[tuple, list[nn.Parameter]] = {}
        for p in params:
            if p.grad is not None:
                groups.setdefault((p.grad.device, p.grad.dtype), []).append(p)
        for members in groups.values():
            flat = self._bucket(members)
            dist.all_reduce(flat)
            flat.div_(self.world_size)

    def _bucket(self, members: list[nn.Parameter]) -> torch.Tensor:
        """The flat gradient bucket of these parameters, their .grad made views of it."""
        key = tuple(id(p) for p in members)
        flat = self._buckets.get(key)
        if flat is None:
            g0 = members[0].grad
            flat = torch.empty(sum(p.numel() for p in members), dtype=g0.dtype, device=g0.device)
            self._buckets[key] = flat
        offset = 0
        for p in members:
            n = p.numel()
            view = flat[offset:offset + n].view_as(p)
            if p.grad.data_ptr() != view.data_ptr():  # first use, or .grad was replaced
                view.copy_(p.grad)
                p.grad = view
            offset += n
        return flat

    def broadcast_module(self, module: nn.Module,
                         buffers_only_of: tuple[type, ...] | None = None) -> None:
        """Copy rank 0's parameters and buffers (or only the buffers of `buffers_only_of` modules,
        e.g. batch norm) to every rank."""
        if not self.enabled:
            return
        with torch.no_grad():
            if buffers_only_of is None:
                tensors = list(module.parameters()) + list(module.buffers())
            else:
                tensors = [b for m in module.modules() if isinstance(m, buffers_only_of)
                           for b in m.buffers(recurse=False)]
            for t in tensors:
                dist.broadcast(t.data, src=0)

    def sum_(self, t: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            dist.all_reduce(t)
        return t

    def min_(self, t: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return t

    def all_gather_objects(self, obj):
        """[obj of rank 0, obj of rank 1, ...] on every rank ([obj] for one process)."""
        if not self.enabled:
            return [obj]
        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def gather_objects(self, obj):
        """[obj of every rank] on rank 0, None elsewhere ([obj] for one process)."""
        if not self.enabled:
            return [obj]
        out = [None] * self.world_size if self.is_main else None
        dist.gather_object(obj, out, dst=0)
        return out

    def broadcast_object(self, obj):
        """Rank 0's obj on every rank."""
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


BATCH_NORMS = (nn.modules.batchnorm._BatchNorm,)


def rank_local_buffers(module: nn.Module) -> dict:
    """The state_dict entries that differ between ranks by design: every buffer and extra state
    (replay buffers, environment state, PCD chains, counters) except the parameters, which the
    averaged updates keep equal, and batch-norm statistics, which are kept in step with rank 0."""
    skip = {name for name, _ in module.named_parameters()}
    skip |= {f"{mname}.{bname}" if mname else bname
             for mname, m in module.named_modules() if isinstance(m, BATCH_NORMS)
             for bname, _ in m.named_buffers(recurse=False)}
    return {k: (v.detach().cpu() if torch.is_tensor(v) else v)
            for k, v in module.state_dict().items() if k not in skip}


def warn_world_change(saved: int, now: int) -> None:
    warnings.warn(f"the checkpoint was written by {saved} process(es) and is resumed by {now}: "
                  f"parameters, optimizer state and the data position carry over exactly; "
                  f"rank-local state (RNG streams, replay buffers, PCD chains) of ranks >= "
                  f"{min(saved, now)} starts from rank 0's", RuntimeWarning, stacklevel=2)
