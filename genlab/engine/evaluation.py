"""Scoring a model on a split: batches onto the device, metrics averaged (and reduced over the
ranks under DDP), and the score of checkpoints/best.pt next to the final weights."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from genlab.data.sampler import eval_batches
from genlab.engine import checkpoints as ckpt
from genlab.engine.distributed import BATCH_NORMS, Dist


def to_device(batch: dict, device: torch.device) -> dict:
    """Every tensor of `batch` on `device`; on CUDA through page-locked host memory, so that the
    copy can overlap compute."""
    if device.type == "cuda":
        return {k: (v.pin_memory() if v.device.type == "cpu" else v).to(device, non_blocking=True)
                for k, v in batch.items()}
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def load_batch(data, split: str, idx: torch.Tensor, device: torch.device) -> dict:
    """The examples `idx` of a split on `device`, with their indices as batch["index"]."""
    batch = to_device(data.get(split, idx), device)
    batch["index"] = idx.to(device)
    return batch


def forked_rng(device: torch.device):
    """A context that puts the random streams back as they were: evaluation and renders leave
    the training run's numbers untouched."""
    return torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])


def scope(data, split: str, *, batch_size: int, max_batches: int | None) -> str:
    """What `evaluate(..., max_batches)` scores, in words: "128 of 512 val examples" (the first
    max_batches x batch_size) or "all 512 val examples"."""
    n = data.size(split)
    if max_batches is None or max_batches * batch_size >= n:
        return f"all {n:,} {split} examples"
    return f"{max_batches * batch_size:,} of {n:,} {split} examples"


@torch.no_grad()
def evaluate(model, data, split: str, *, batch_size: int, max_batches: int | None, dist: Dist,
             device: torch.device) -> dict[str, float]:
    """Metrics of the model over (part of) a split.

    Scalar outputs of the family's `evaluate(batch)` are averaged, weighted by batch size.
    Outputs with a batch dimension (e.g. probabilities and labels) are concatenated and
    handed to the family's `summarize(collected) -> dict[str, float]`, for metrics that need
    the whole split at once (ROC AUC, Frechet distance).

    Under DDP each rank evaluates its contiguous block of the same examples; sums, counts and
    the collected outputs are gathered so that every rank returns the same numbers as one
    process would (and so takes the same early-stopping and best-checkpoint decisions).
    """
    sums: dict[str, torch.Tensor] = {}
    collected: dict[str, list[torch.Tensor]] = {}
    count = 0
    dist.broadcast_module(model, BATCH_NORMS)
    model.eval()
    with forked_rng(device):
        limit = None if max_batches is None else max_batches * batch_size
        for idx in eval_batches(data.size(split), batch_size, limit=limit,
                                rank=dist.rank, world_size=dist.world_size):
            out = model.evaluate(load_batch(data, split, idx, device))
            n = len(idx)
            for k, v in out.items():  # tensors or floats
                v = torch.as_tensor(v).detach()
                if v.dim() == 0:
                    sums[k] = sums.get(k, 0.0) + v.float() * n
                else:
                    collected.setdefault(k, []).append(v)
            count += n
        if dist.enabled:
            sums, collected, count = _gather(dist, device, sums, collected, count)
        metrics = {k: (v / max(count, 1)).item() for k, v in sums.items()}
        if collected:
            metrics.update(model.summarize({k: torch.cat(v) for k, v in collected.items()}))
    model.train()
    return metrics


def _gather(dist: Dist, device: torch.device, sums: dict, collected: dict,
            count: int) -> tuple[dict, dict, int]:
    """Every rank's evaluation sums added, its collected outputs concatenated in rank order
    (= example order: the ranks hold consecutive blocks)."""
    mine = ({k: float(v) for k, v in sums.items()},
            {k: torch.cat(v).cpu() for k, v in collected.items()}, count)
    parts = dist.all_gather_objects(mine)
    total = {}
    for s, _, _ in parts:
        for k, v in s.items():
            total[k] = total.get(k, 0.0) + v
    keys = [k for _, c, _ in parts for k in c]
    coll = {k: [c[k].to(device) for _, c, _ in parts if k in c] for k in dict.fromkeys(keys)}
    return ({k: torch.tensor(v, dtype=torch.float64) for k, v in total.items()}, coll,
            sum(n for _, _, n in parts))


def evaluate_best(model, best_path: Path, *, step: int, dist: Dist,
                  evaluate_split: Callable[[str, int | None], dict[str, float]]) -> dict:
    """Full val and test metrics of checkpoints/best.pt when it is not the final weights.

    Selection on val, report on test: for a run whose monitor swings (DQN) the best
    checkpoint, not the last step, is what `genlab play` / `genlab eval` use, so its test
    score belongs in metrics.json. The final weights are put back afterwards (export,
    resume and the figures stay those of the last step). `evaluate_split(split, max_batches)`
    scores the model as it is."""
    state = None
    # rank 0 reads and sends: no shared filesystem needed across nodes
    if dist.is_main and Path(best_path).is_file():
        state = ckpt.safe_load(best_path, map_location="cpu")
    if dist.enabled:
        state = dist.broadcast_object(state)
    if state is None or state.get("step") == step:
        return {"step": step} if state is not None else {}
    last = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.load_state_dict(state["model"])
    try:
        return {"step": state["step"], "val": evaluate_split("val", None),
                "test": evaluate_split("test", None)}
    finally:
        model.load_state_dict(last)
