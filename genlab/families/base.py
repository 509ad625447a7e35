"""The one small contract every model family implements.

A family is an `nn.Module` built from its own `Config` dataclass and the data's `DataInfo`.
The trainer owns everything else: seeding, device and precision, the loop and its cadences,
finite-loss checks, progress, TensorBoard, checkpoints and the encoder export.

    class MyFamily(Family):
        Config = MyConfig
        def __init__(self, cfg: MyConfig, info: DataInfo): ...
        def configure_optimizers(self, train) -> dict[str, Optimizer]   # {"main": ...} or {"d":..,"g":..}
        def training_step(self, batch, ctx) -> dict[str, Tensor]        # calls ctx.update(name, loss)
        def evaluate(self, batch) -> dict[str, Tensor]                  # no grad, changes nothing
        def renders(self, batch) -> dict[str, Tensor]                   # (3|1, H, W) images in [0, 1]

Optional capabilities are declared, not guessed:
    encoder_spec() -> EncoderSpec     # the family can export an encoder (see genlab.export)
    encode(x) -> Tensor; out_features # deterministic features (B, out_features)
    sample(n, generator) -> Tensor    # the family is generative
    summarize(collected) -> dict      # whole-split metrics: `evaluate` outputs with a batch
                                      # dimension are concatenated over the split and passed here
    `monitor = ("loss", "min")`       # the val metric that picks best.pt and drives early stopping
"""
from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import torch
from torch import nn


class StepContext(Protocol):
    """What the trainer hands a family for one training step.

    `autocast()` enters the run's precision (fp32: no-op; bf16/fp16: torch.autocast).
    `update(name, loss)` does zero_grad, (scaled) backward, unscale, gradient clipping,
    the optimizer step and the scaler update for optimizer `name`, and records the grad norm.
    `step` is the global step (0-based) being taken.
    """

    step: int
    device: torch.device

    def autocast(self) -> AbstractContextManager: ...

    def update(self, name: str, loss: torch.Tensor) -> None: ...


@dataclass
class EncoderSpec:
    """How to rebuild an exported encoder without the family's code path.

    `builder` names a constructor registered in `genlab.nn.ENCODER_BUILDERS`, called as
    `builder(**config)`; `module` is the built encoder whose `state_dict` is exported.
    The encoder maps (B, *input_shape) in `value_range` to (B, out_features).
    """

    builder: str
    config: dict[str, Any]
    module: nn.Module
    out_features: int
    extra: dict[str, Any] = field(default_factory=dict)  # family-specific facts (e.g. layer sizes)


class Family(nn.Module):
    """Base class: subclasses set `Config` and implement the four methods."""

    Config: ClassVar[type]
    #: the metric (from `evaluate`) that picks best.pt, and whether lower is better
    monitor: ClassVar[tuple[str, str]] = ("loss", "min")

    def configure_optimizers(self, train) -> dict[str, torch.optim.Optimizer]:
        raise NotImplementedError

    def training_step(self, batch: dict[str, torch.Tensor], ctx: StepContext) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    @torch.no_grad()
    def evaluate(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    @torch.no_grad()
    def renders(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {}

    @torch.no_grad()
    def histograms(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Activation tensors worth a TensorBoard histogram (weights are logged by the trainer)."""
        return {}
