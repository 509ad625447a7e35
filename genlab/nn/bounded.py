"""Learnt numbers kept inside a range: the sigmoid map from a raw value into (lo, hi) and back, a
clamp with an identity gradient, and a floor whose gradient below it only ever raises the value.
The atlas generator (genlab.nn.gan_atlas) draws every disc parameter through these."""
from __future__ import annotations

import math

import torch


def st_clamp(x: torch.Tensor, lo: float | None, hi: float | None) -> torch.Tensor:
    """Clamped value, identity gradient (as the conv generator's "clamp" output)."""
    return x + (x.clamp(lo, hi) - x).detach()


class FloorComeBack(torch.autograd.Function):
    """max(x, lo); below lo, only the gradient that would raise x passes. A plain clamp would
    leave x stuck below lo for good (no gradient), a straight-through one would let a steady
    "fewer" signal push it far below, out of reach; this one keeps it at lo, ready to rise."""

    @staticmethod
    def forward(ctx, x, lo):
        lo = torch.as_tensor(lo, dtype=x.dtype, device=x.device)  # a number, or one per row
        ctx.save_for_backward(x, lo)
        return torch.maximum(x, lo)

    @staticmethod
    def backward(ctx, grad):
        x, lo = ctx.saved_tensors
        return torch.where(x >= lo, grad, grad.clamp(max=0)), None


def between(raw: torch.Tensor, lo_hi: tuple) -> torch.Tensor:
    """lo + (hi - lo) sigmoid(raw): a learnt number that cannot leave (lo, hi); lo may be a
    tensor (a least value per image, e.g. per class)."""
    lo, hi = lo_hi
    return lo + (hi - lo) * torch.sigmoid(raw)


def inverse_between(value: float, lo_hi: tuple[float, float]) -> float:
    """The raw value that `between` maps to `value`."""
    t = (value - lo_hi[0]) / (lo_hi[1] - lo_hi[0])
    return math.log(t / (1 - t))


__all__ = ["FloorComeBack", "between", "inverse_between", "st_clamp"]
