"""Optimizers and learning-rate schedules built from the recipe's `train:` section."""
from __future__ import annotations

import math
from collections.abc import Iterable

import torch


def build_optimizer(params: Iterable, train, lr: float | None = None) -> torch.optim.Optimizer:
    """The optimizer named by `train.optimizer` (families may pass their own lr, e.g. TTUR)."""
    lr = train.lr if lr is None else lr
    params = list(params)  # tensors, or param-group dicts (e.g. an encoder lr multiplier)
    if params and isinstance(params[0], torch.Tensor):
        params = [p for p in params if p.requires_grad]
    if train.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, betas=tuple(train.betas), weight_decay=train.weight_decay)
    if train.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=tuple(train.betas), weight_decay=train.weight_decay)
    if train.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=train.momentum, weight_decay=train.weight_decay,
                               nesterov=train.nesterov and train.momentum > 0)
    raise ValueError(f"unknown optimizer {train.optimizer!r}")


def lr_factor(step: int, train) -> float:
    """Multiplier of the base lr at `step` (0-based): linear warm-up, then the schedule."""
    if step < train.warmup_steps:
        return (step + 1) / train.warmup_steps
    t = step - train.warmup_steps
    if train.schedule == "constant":
        return 1.0
    if train.schedule == "cosine":
        span = max(1, train.steps - train.warmup_steps)
        cos = 0.5 * (1 + math.cos(math.pi * min(t, span) / span))
        return train.min_lr_ratio + (1 - train.min_lr_ratio) * cos
    if train.schedule == "step":
        return train.gamma ** (t // train.step_size)
    raise ValueError(f"unknown schedule {train.schedule!r}")


def build_scheduler(opt: torch.optim.Optimizer, train) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_factor(step, train))
