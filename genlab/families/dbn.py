"""Deep belief nets ("dbn"): RBMs stacked by `layers`, trained greedily in turn through the shared
trainer (Hinton, Osindero & Teh 2006), optionally ending with a fine-tuning phase of the unrolled
autoencoder (Hinton & Salakhutdinov 2006). Everything else - units, CD/PCD, monitors, renders,
sampling - is the "rbm" family's (genlab.families.rbm), for a stack of more than one layer.

Phases. Layer l trains for `steps_per_layer[l]` steps, then `finetune_steps` of fine-tuning; the
phase lengths are scaled to add up to `train.steps` (used as they are when they already do), each
phase keeping at least one step. Empty `steps_per_layer`: the layers share the steps equally.
`layer_lr` gives each layer its own learning rate (else `train.lr` for all).

Fine-tuning (phase L). Its first step unrolls the trained stack into the autoencoder (encoder
W, b_h; decoder W^T, b_v; with `center` the offset folded into the first and last biases, so it
takes and gives raw images), then trains it end to end with Adam at `finetune_lr` on the
reconstruction BCE (Bernoulli) or MSE (Gaussian). The training scalars are then `loss` (that
reconstruction loss), `recon_error` (its MSE) and `phase` = L. From then on the exported encoder,
`encode`, the `filters` render and the reconstructions are the fine-tuned autoencoder's.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from genlab.core.registry import register_family
from genlab.core.schema import param
from genlab.families.base import StepContext
from genlab.families.rbm import RBMFamily, _CDConfig


@dataclass
class DBNConfig(_CDConfig):
    layers: list[int] = param(default_factory=lambda: [256, 100], ge=1,
                              help="hidden layer sizes, bottom to top (the input size comes first)")
    steps_per_layer: list[int] = param(default_factory=list, ge=1, help="greedy steps per layer, "
                                       "scaled to train.steps (empty: an equal share)")
    finetune_steps: int = param(0, ge=0, help="steps fine-tuning the unrolled autoencoder last")
    finetune_lr: float = param(1e-3, gt=0, help="Adam learning rate of the fine-tuning phase")
    layer_lr: list[float] = param(default_factory=list, gt=0, help="learning rate of each layer, "
                                  "bottom to top (empty: train.lr for all); a Gaussian bottom "
                                  "wants ~10-100x less than the Bernoulli layers above it")

    def __post_init__(self):
        super().__post_init__()
        if not self.layers:
            raise ValueError("layers: a DBN needs at least one hidden layer")
        if self.steps_per_layer and len(self.steps_per_layer) != len(self.layers):
            raise ValueError(f"steps_per_layer: expected {len(self.layers)} numbers (one per "
                             f"layer), got {len(self.steps_per_layer)}")
        if self.layer_lr and len(self.layer_lr) != len(self.layers):
            raise ValueError(f"layer_lr: expected {len(self.layers)} numbers (one per layer), "
                             f"got {len(self.layer_lr)}")

    def hidden_sizes(self) -> list[int]:
        return list(self.layers)

    def phase_weights(self) -> tuple[list[float], int]:
        if self.steps_per_layer:
            return [float(s) for s in self.steps_per_layer], self.finetune_steps
        return [], self.finetune_steps  # an equal share of what fine-tuning leaves


@register_family("dbn")
class DBNFamily(RBMFamily):
    """A deep belief net: RBMs stacked by `layers`, trained greedily in turn, optionally fine-tuned."""

    Config = DBNConfig

    def _build_autoencoder(self) -> torch.nn.Module | None:
        return self.stack.to_autoencoder(self.input_shape) if self.cfg.finetune_steps else None

    def _fine_tuned(self) -> bool:
        return self.autoencoder is not None and bool(self.finetuned)

    # -- optimizers and steps ----------------------------------------------------------------
    def _layer_lr(self) -> list[float | None]:
        return list(self.cfg.layer_lr) or [None] * self.L

    def _more_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        if self.autoencoder is None:
            return {}
        return {"finetune": torch.optim.Adam(self.autoencoder.parameters(), lr=self.cfg.finetune_lr)}

    def _phase_step(self, p: int, v: torch.Tensor, ctx: StepContext) -> dict[str, torch.Tensor]:
        return self._finetune_step(v, ctx) if p == self.L else super()._phase_step(p, v, ctx)

    def _finetune_step(self, v: torch.Tensor, ctx: StepContext) -> dict[str, torch.Tensor]:
        if not self.finetuned:  # the first fine-tuning step: unroll the trained stack
            with torch.no_grad():
                self.autoencoder.load_state_dict(self.stack.to_autoencoder(self.input_shape).state_dict())
                if self.cfg.center:  # raw images in and out: the offset goes into the biases
                    lins = [m for m in self.autoencoder.modules() if isinstance(m, torch.nn.Linear)]
                    lins[0].bias.sub_(lins[0].weight @ self.v_offset)
                    lins[-1].bias.add_(self.v_offset)  # the Gaussian bottom's output is linear
            self.finetuned.fill_(True)
        with ctx.autocast():
            out = self.autoencoder(v.view(-1, *self.input_shape)).flatten(1).float()
        if self.cfg.visible == "bernoulli":
            loss = F.binary_cross_entropy(out.clamp(1e-6, 1 - 1e-6), v)
        else:
            loss = F.mse_loss(out, v)
        ctx.update("finetune", loss)
        return {"loss": loss.detach(), "recon_error": F.mse_loss(out.detach(), v),
                "phase": torch.tensor(float(self.L), device=v.device)}

    # -- the deterministic model, once fine-tuned ----------------------------------------------
    def _enc_params(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        if self._fine_tuned():
            lins = [m for m in self.autoencoder.encoder if isinstance(m, torch.nn.Linear)]
            return [(m.weight, m.bias) for m in lins]
        return super()._enc_params()

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        if self._fine_tuned():
            return self.autoencoder(x.view(-1, *self.input_shape)).flatten(1)
        return super().reconstruct(x)
