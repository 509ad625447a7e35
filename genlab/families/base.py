"""The one small contract every model family implements, and what a family declares it can do.

A family is an `nn.Module` built from its own `Config` dataclass and the data's `DataInfo`.
The trainer owns everything else: seeding, device and precision, the loop and its cadences,
finite-loss checks, progress, TensorBoard, checkpoints and the encoder export.

    @register_family("myfamily")
    class MyFamily(Family):
        Config = MyConfig
        capabilities = frozenset({"encode"})         # what else it can do (see CAPABILITIES)
        def __init__(self, cfg: MyConfig, info: DataInfo): ...
        def configure_optimizers(self, train) -> dict[str, Optimizer]   # {"main": ...} or {"d":..,"g":..}
        def training_step(self, batch, ctx) -> dict[str, Tensor]        # calls ctx.update(name, loss)
        def evaluate(self, batch) -> dict[str, Tensor]                  # no grad, changes nothing
        def renders(self, batch) -> dict[str, Tensor]                   # (3|1, H, W) images in [0, 1]

Optional hooks with defaults here: `histograms(batch)`, `summarize(collected)` (whole-split
metrics: `evaluate` outputs with a batch dimension are concatenated over the split and passed
in), `monitor = ("loss", "min")` (the val metric that picks best.pt and drives early stopping),
`on_fit_start(data, device)` (once, before the first step of a fresh run).

Capabilities are declared, never guessed with hasattr: the trainer and the commands read
`capabilities` and refuse a request the family cannot serve with one clear line. Each name
promises the methods of the Protocol of the same name below.
"""
from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch
from torch import nn

from genlab.core.errors import GenlabError

#: capability name -> what it means, as `genlab list` and error messages say it
CAPABILITIES = {
    "encode": "exports an encoder (features of an image)",
    "sample": "draws new samples",
    "classify": "predicts class probabilities",
    "act": "acts in an environment",
}


class StepContext(Protocol):
    """What the trainer hands a family for one training step.

    `autocast()` enters the run's precision (fp32: no-op; bf16/fp16: torch.autocast).
    `update(name, loss)` does zero_grad, (scaled) backward, unscale, gradient clipping,
    the optimizer step and the scaler update for optimizer `name`, and records the grad norm.
    `step` is the global step (0-based) being taken. `rank` / `world_size` say which data-parallel
    process this is (0 / 1 for one process); `all_gather_cat(t)` concatenates every rank's `t`
    along dim 0 (for initialisations that must see the global batch; `t` itself for one process).
    Families never import the engine: all they need of data parallelism comes through here.
    """

    step: int
    device: torch.device
    rank: int
    world_size: int

    def all_gather_cat(self, t: torch.Tensor) -> torch.Tensor: ...

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


# -- what each capability promises -----------------------------------------------------------
@runtime_checkable
class Encoder(Protocol):
    """capability "encode": deterministic features and an exportable encoder."""

    out_features: int

    def encode(self, x: torch.Tensor) -> torch.Tensor: ...          # (B, out_features)

    def encoder_spec(self) -> EncoderSpec: ...


@runtime_checkable
class Sampler(Protocol):
    """capability "sample": `conditional` says whether `labels` may pick the classes."""

    conditional: bool

    def sample(self, n: int, generator: torch.Generator | None = None,
               labels: torch.Tensor | None = None) -> torch.Tensor: ...   # (n, *input_shape)


@runtime_checkable
class ClassifierLike(Protocol):
    """capability "classify"."""

    def predict_proba(self, x: torch.Tensor) -> torch.Tensor: ...   # (B, K), rows sum to 1


@runtime_checkable
class Actor(Protocol):
    """capability "act": greedy actions for observations of its environment."""

    def act(self, obs: torch.Tensor, epsilon: float) -> torch.Tensor: ...


PROTOCOLS = {"encode": Encoder, "sample": Sampler, "classify": ClassifierLike, "act": Actor}


class Family(nn.Module):
    """Base class: subclasses set `Config` and implement the four methods."""

    Config: ClassVar[type]
    family_name: ClassVar[str] = "?"  # set by register_family
    #: the metric (from `evaluate`) that picks best.pt, and whether lower is better
    monitor: ClassVar[tuple[str, str]] = ("loss", "min")
    #: what the family can do beyond training; names from CAPABILITIES
    capabilities: ClassVar[frozenset[str]] = frozenset()
    #: False for a family that makes its own experience (RL): the trainer then hands it the
    #: batch indices only, and builds no examples for nothing
    uses_train_batches: ClassVar[bool] = True
    #: environment steps per training step, for RL families (logged as charts/SPS); 0: none
    env_steps_per_step: int = 0
    #: a sampler that can be asked for given classes (capability "sample" only)
    conditional: bool = False

    def configure_optimizers(self, train) -> dict[str, torch.optim.Optimizer]:
        raise NotImplementedError

    def training_step(self, batch: dict[str, torch.Tensor], ctx: StepContext) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    @torch.no_grad()
    def evaluate(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def summarize(self, collected: dict[str, torch.Tensor]) -> dict[str, float]:
        """Whole-split metrics from the concatenated per-example outputs of `evaluate`."""
        return {}

    @torch.no_grad()
    def renders(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {}

    @torch.no_grad()
    def histograms(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Activation tensors worth a TensorBoard histogram (weights are logged by the trainer)."""
        return {}

    def on_fit_start(self, data, device: torch.device) -> None:
        """Called once by the trainer before the first step of a fresh run (never on a resume,
        which restores the weights), with the run's data source: a family that fits part of
        itself on the data before training (the classifier's probe-fitted head) does it here.
        Draw no numbers from the global random streams (fork them), or the run's steps change."""

    def set_rank(self, rank: int, world_size: int) -> None:
        """Called once by the trainer under data parallelism, right after the family is built:
        a family with rank-local state (its own environments, its own chains) takes its share
        here. One process never gets the call."""

    @classmethod
    def can(cls, capability: str) -> bool:
        if capability not in CAPABILITIES:
            raise ValueError(f"unknown capability {capability!r} (known: {', '.join(CAPABILITIES)})")
        return capability in cls.capabilities


def require(model_or_cls, capability: str, wanted_by: str) -> None:
    """A one-line GenlabError unless the family declares `capability`; `wanted_by` names the
    command or option that needs it (e.g. 'genlab sample')."""
    from genlab.core.registry import FAMILIES

    cls = model_or_cls if isinstance(model_or_cls, type) else type(model_or_cls)
    if cls.can(capability):
        return
    able = sorted(n for n, c in FAMILIES.items() if capability in c.capabilities)
    raise GenlabError(f"{wanted_by} needs a family that {CAPABILITIES[capability]}; "
                      f"{cls.family_name!r} does not (families that do: {', '.join(able) or 'none'})")


def eval_generator(batch: dict, device: torch.device | str | None = None) -> torch.Generator:
    """A generator for evaluation noise, seeded by which examples are in the batch (the CRC-32
    of its "index" tensor; 0 without one): metrics compare across steps and runs, and evaluation
    never touches the global RNG. `device`: where it draws (None: the CPU)."""
    import zlib

    idx = batch.get("index")
    key = zlib.crc32(idx.cpu().numpy().tobytes()) if idx is not None else 0
    return torch.Generator(device=device).manual_seed(key)
