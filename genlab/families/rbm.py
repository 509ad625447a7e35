"""Restricted Boltzmann machines ("rbm") through the shared trainer. Deep belief nets ("dbn",
genlab.families.dbn) are this family with more layers and an optional fine-tuning phase.

An "rbm" is a `DBNStack` (genlab.nn.dbn) of one layer. Layer l is trained by CD-k or PCD-k on the
probabilities P(h|v) of the layers below it (computed without grad), one layer after the other
within one run (greedy, Hinton, Osindero & Teh 2006): `phase(step)` says which.

The update. `RBM.cd_loss(v_data, v_model)` = mean F(v_data) - mean F(v_model) (negative sample
detached) has the CD gradient, so the trainer's `ctx.update` applies it with any optimizer. With
`train.optimizer: sgd` the momentum follows Hinton's schedule (`momentum_initial` for the first
`momentum_switch` steps of each layer's phase, then `train.momentum`). `train.weight_decay` is an
L2 penalty on the weights W only. The lr schedule runs on the global step: use `schedule:
constant` for a DBN. Gibbs and PCD chains (the `chains` buffers) use the global torch RNG, which
the trainer checkpoints, so kill-and-resume continues identically.

Visible units. Bernoulli units see the [0, 1] pixel values as probabilities (Hinton's guide,
section 3). Gaussian units (grey images) have a fixed or learned sigma per pixel; their hidden
units see W (v / sigma), so uncentred images (every brain slice is mostly the same bright head)
drive them into saturation, each unit on, or off, for every image. `center: true` subtracts a
fixed offset, the mean image of the first training batch, from v before the stack (in the spirit
of Montavon & Mueller's 2012 centring trick); renders, samples and reconstructions add it back,
and the exported encoder and the unrolled autoencoder fold it into their biases.

Monitors, all about the FIRST layer except `loss` and `recon_layer<l>`:
  loss            MSE of the deterministic up-down reconstruction through the whole stack;
                  `recon_layer<l>`: each RBM's one-step error
  pll             pseudo-log-likelihood per example, the noise-free expectation of scikit-learn's
                  `BernoulliRBM.score_samples` on the same (unbinarised) data (Bernoulli only)
  free_energy, free_energy_train, free_energy_gap
                  mean F on the split, on a fixed cached subset of training examples (the first
                  `gap_examples` seen), and their difference (> 0 and growing: overfitting)
  ais_*           annealed importance sampling (genlab.nn.rbm_ais.ais_monitors), `ais_runs` runs
                  over `ais_betas` temperatures, at the end of training and every `ais_every`
                  steps, with its own seeded generator
Training scalars: `loss` (the CD free-energy difference: its gradient is the update, its value
is no likelihood), `recon_error` of the active layer, `phase` (the active layer).

Renders (drawn by genlab.viz.rbm): `filters`, `receptive_fields_layer<l>`, `reconstructions`,
`samples` (Gibbs at the top of the trained part of the stack, `sample_gibbs_steps` sweeps, fixed
generator, then the mean-field down pass), `pcd_chains` (the first layer's fantasy particles).
Histograms: `hidden_probs_layer<l>`. Renders and monitors never touch the global RNG.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from genlab.core.registry import register_family
from genlab.core.schema import param
from genlab.data.base import DataInfo
from genlab.families.base import EncoderSpec, Family, StepContext, eval_generator
from genlab.nn.dbn import DBNStack, phase_ends
from genlab.nn.optim import build_optimizer
from genlab.nn.rbm import momentum_at, pseudo_log_likelihood
from genlab.nn.rbm_ais import ais_log_partition, ais_monitors
from genlab.viz.rbm import stack_renders


@dataclass
class _CDConfig:
    """What every RBM layer shares: units, CD/PCD, initialisation, penalties, monitors, renders."""

    visible: Literal["bernoulli", "gaussian"] = param(
        "bernoulli", help="bernoulli: [0,1] pixels as probabilities; gaussian: real-valued pixels")
    sigma: float = param(1.0, gt=0, help="gaussian: initial (or fixed) std of the visible units")
    learn_sigma: bool = param(False, help="gaussian: learn a per-pixel sigma (else fixed)")
    sample_visible: bool = param(False, help="bernoulli: train on a Bernoulli sample of the pixels "
                                 "instead of their grey values")
    k: int = param(1, ge=1, help="Gibbs steps per negative phase (CD-k / PCD-k)")
    persistent: bool = param(True, help="PCD: persistent chains (kept in checkpoints); false: CD")
    n_chains: int | None = param(None, ge=1, help="PCD chains (null: the batch size)")
    init_std: float = param(0.01, gt=0, help="std of the initial weights N(0, init_std^2)")
    init_visible_bias: bool = param(True, help="start visible biases at log(p/(1-p)) of the "
                                    "first batch (gaussian: its mean)")
    center: bool = param(False, help="gaussian: subtract the first training batch's mean image "
                         "from the visible units (folded into the exported biases)")
    momentum_initial: float = param(0.5, ge=0, lt=1, help="sgd: momentum for the first "
                                    "momentum_switch steps of each layer, then train.momentum")
    momentum_switch: int = param(100, ge=0, help="sgd: steps of momentum_initial per layer")
    sparsity_target: float | None = param(None, gt=0, lt=1, help="target mean activation of the "
                                          "hidden units (null: no sparsity penalty)")
    sparsity_cost: float = param(0.1, ge=0, help="weight of the cross-entropy sparsity penalty")
    pll: Literal["exact", "stochastic", "off"] = param(
        "exact", help="pseudo-likelihood: exact expectation over all units, sklearn's one-unit "
        "estimate, or off")
    gap_examples: int = param(256, ge=0, help="cached training examples for the free-energy gap "
                              "and the AIS base rate (0: no gap)")
    ais_runs: int = param(100, ge=0, help="AIS runs (0: no AIS)")
    ais_betas: int = param(1000, ge=3, help="AIS intermediate temperatures")
    ais_every: int = param(0, ge=0, help="steps between AIS estimates (0: only at the end)")
    ais_seed: int = param(0, ge=0, help="seed of AIS's own generator (never the global RNG)")
    sample_gibbs_steps: int = param(500, ge=1, help="Gibbs sweeps at the top for rendered samples")
    filter_scale: float | None = param(None, gt=0, help="filter render contrast: weight +-scale is "
                                       "white/black in every frame (null: 3 x RMS of each frame's W)")
    render_units: int = param(100, ge=1, help="hidden units shown in the filter renders")

    def __post_init__(self):
        if self.center and self.visible != "gaussian":
            raise ValueError("center: only for visible: gaussian (Bernoulli units need v in [0, 1])")


@dataclass
class RBMConfig(_CDConfig):
    hidden: int = param(100, ge=1, help="number of hidden units (the exported feature size)")

    def hidden_sizes(self) -> list[int]:
        return [self.hidden]

    def phase_weights(self) -> tuple[list[float], int]:
        return [1.0], 0


@register_family("rbm")
class RBMFamily(Family):
    """A single RBM (Bernoulli or Gaussian visible units) trained by CD-k / PCD-k."""
    capabilities = frozenset({"encode", "sample"})

    Config = RBMConfig
    monitor = ("loss", "min")

    def __init__(self, cfg: RBMConfig, info: DataInfo):
        super().__init__()
        self.cfg, self.info = cfg, info
        self.input_shape = list(info.input_shape)
        n_vis = math.prod(int(d) for d in self.input_shape)
        sizes = [n_vis, *cfg.hidden_sizes()]
        self.stack = DBNStack(sizes, visible=cfg.visible, learn_sigma=cfg.learn_sigma, sigma=cfg.sigma)
        with torch.no_grad():
            for layer in self.stack.layers:
                layer.W.normal_(0.0, cfg.init_std)
                layer.n_chains = cfg.n_chains
        self.L = len(self.stack.layers)
        self.autoencoder = self._build_autoencoder()
        # State that checkpoints must hold (buffers): steps taken, which layers had their visible
        # bias initialised, the cached training subset, whether fine-tuning has begun.
        self.register_buffer("steps_done", torch.zeros((), dtype=torch.long))
        self.register_buffer("bias_done", torch.zeros(self.L, dtype=torch.bool))
        self.register_buffer("train_ref", torch.zeros(cfg.gap_examples, n_vis))
        self.register_buffer("train_ref_n", torch.zeros((), dtype=torch.long))
        self.register_buffer("finetuned", torch.zeros((), dtype=torch.bool))
        self.register_buffer("v_offset", torch.zeros(n_vis))  # `center`: set by the first batch
        self._ends: list[int] | None = None  # phase ends, set by configure_optimizers
        self._total: int | None = None
        self._ais_cache: tuple | None = None
        self._opts: dict = {}
        self._final_momentum = 0.9

    def _build_autoencoder(self) -> torch.nn.Module | None:  # a DBN's unrolled stack
        return None

    # -- phases ------------------------------------------------------------------------------
    def phase(self, step: int) -> int:
        """0..L-1: greedy training of that layer; L: fine-tuning. Unknown schedule: the top."""
        if self._ends is None:
            return self.L - 1
        return next((i for i, e in enumerate(self._ends) if step < e), len(self._ends) - 1)

    def configure_optimizers(self, train):
        layer_w, ft = self.cfg.phase_weights()
        if not layer_w:
            layer_w = [max(train.steps - ft, self.L) / self.L] * self.L
        weights = layer_w + ([float(ft)] if ft else [])
        self._ends, self._total = phase_ends(weights, train.steps), train.steps
        self._final_momentum = train.momentum
        opts = {}
        layer_lr = self._layer_lr()
        for i, rbm in enumerate(self.stack.layers):
            others = [p for n, p in rbm.named_parameters() if n != "W"]
            groups = [{"params": [rbm.W]}, {"params": others, "weight_decay": 0.0}]
            opts[f"layer{i}"] = build_optimizer(groups, train, lr=layer_lr[i])
        opts.update(self._more_optimizers())
        for name, opt in opts.items():
            # The trainer steps every lr scheduler each step while only the active phase's
            # optimizer steps: idle optimizers are intended, so skip torch's ordering warning.
            if name != "layer0":
                opt._opt_called = True
        self._opts = opts  # the same objects the trainer steps (and restores on resume)
        return opts

    def _layer_lr(self) -> list[float | None]:  # None: train.lr
        return [None] * self.L

    def _more_optimizers(self) -> dict[str, torch.optim.Optimizer]:  # a DBN's fine-tuning
        return {}

    # -- training ----------------------------------------------------------------------------
    @torch.no_grad()
    def _cache_train(self, v: torch.Tensor) -> None:
        n, cap = int(self.train_ref_n), self.train_ref.shape[0]
        if n < cap:
            take = v[: cap - n]
            self.train_ref[n:n + take.shape[0]] = take
            self.train_ref_n += take.shape[0]

    def _centered(self, v: torch.Tensor) -> torch.Tensor:
        """Flattened images as the bottom RBM sees them (minus `v_offset` with `center`)."""
        v = v.flatten(1)
        return v - self.v_offset if self.cfg.center else v

    def training_step(self, batch, ctx: StepContext):
        v = batch["x"].flatten(1)
        self._cache_train(v)
        if self.cfg.center and int(self.steps_done) == 0:
            with torch.no_grad():
                self.v_offset.copy_(ctx.all_gather_cat(v).mean(0))  # DDP: the global batch
        self.steps_done += 1
        return self._phase_step(self.phase(ctx.step), v, ctx)

    def _phase_step(self, p: int, v: torch.Tensor, ctx: StepContext) -> dict[str, torch.Tensor]:
        """One CD/PCD update of layer p on the probabilities of the layers below it."""
        cfg, rbm = self.cfg, self.stack.layers[p]
        with torch.no_grad():
            if p == 0 and cfg.visible == "bernoulli" and cfg.sample_visible:
                v = torch.bernoulli(v)
            v = self.stack.up(self._centered(v), upto=p)  # (B, sizes[p]): probabilities below
            if not self.bias_done[p] and cfg.init_visible_bias:
                rbm.init_visible_bias(ctx.all_gather_cat(v))  # DDP: the global batch
            self.bias_done[p] = True
            v_neg = rbm.negative_phase(v, cfg.k, cfg.persistent)
            recon = rbm.reconstruction_error(v)
        loss = rbm.cd_loss(v, v_neg)
        if cfg.sparsity_target is not None and cfg.sparsity_cost > 0:
            loss = loss + rbm.sparsity_penalty(v, cfg.sparsity_target, cfg.sparsity_cost, "cross_entropy")
        start = 0 if p == 0 else self._ends[p - 1]
        for g in self._opts[f"layer{p}"].param_groups:
            if "momentum" in g:  # SGD: Hinton's schedule, counted from the layer's first step
                g["momentum"] = momentum_at(ctx.step - start, cfg.momentum_initial,
                                            self._final_momentum, cfg.momentum_switch)
        ctx.update(f"layer{p}", loss)
        return {"loss": loss.detach(), "recon_error": recon, "phase": torch.tensor(float(p), device=v.device)}

    # -- the deterministic model -------------------------------------------------------------
    def _enc_params(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(weight on the layer's input, bias) per layer, exactly as the exported MLP holds them."""
        out = [((r.W / r.sigma) if r.visible == "gaussian" else r.W, r.b_h) for r in self.stack.layers]
        if self.cfg.center:  # sigmoid(W'(v - c) + b) = sigmoid(W'v + (b - W'c))
            w0, b0 = out[0]
            out[0] = (w0, b0 - w0 @ self.v_offset)
        return out

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Deterministic features P(h=1|v) of the top layer (means, never samples): (B, out)."""
        h = x.flatten(1)
        for w, b in self._enc_params():
            h = torch.sigmoid(F.linear(h, w, b))
        return h

    @property
    def out_features(self) -> int:
        return self.stack.sizes[-1]

    def encoder_spec(self) -> EncoderSpec:
        mlp = self.stack.to_encoder(self.input_shape)
        with torch.no_grad():
            for lin, (w, b) in zip([m for m in mlp if isinstance(m, torch.nn.Linear)], self._enc_params()):
                lin.weight.copy_(w)
                lin.bias.copy_(b)
        return EncoderSpec(builder="sigmoid_mlp", module=mlp, out_features=self.out_features,
                           config={"sizes": list(self.stack.sizes), "input_shape": self.input_shape},
                           extra={"layer_sizes": list(self.stack.sizes), "visible": self.cfg.visible,
                                  "fine_tuned": bool(self.finetuned)})

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Mean-field up pass through every layer and down again, (B, V)."""
        h = self.stack.up(self._centered(x))
        for rbm in reversed(self.stack.layers):
            h = rbm.p_v_given_h(h)
        return h + self.v_offset if self.cfg.center else h

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None,
               labels: torch.Tensor | None = None, top: int | None = None) -> torch.Tensor:
        """n images: a Gibbs chain in RBM `top` (default: the last) from random states, then the
        mean-field down pass. (n, C, H, W). The model is unconditional: `labels` must be None."""
        if labels is not None:
            raise ValueError("an RBM/DBN samples unconditionally: it takes no labels")
        x = self.stack.sample(n, self.cfg.sample_gibbs_steps, generator, top=top)
        if self.cfg.center:  # layer 0's visible units are centred
            x = x + self.v_offset
        return x.view(n, *self.input_shape)

    # -- monitors ----------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, batch):
        v = batch["x"].flatten(1)
        rbm0 = self.stack.layers[0]
        out = {"loss": F.mse_loss(self.reconstruct(v), v)}
        if self.L > 1:
            h = self._centered(v)
            for i, rbm in enumerate(self.stack.layers):
                out[f"recon_layer{i}"] = rbm.reconstruction_error(h)
                h = rbm.p_h_given_v(h)
        if rbm0.visible == "bernoulli" and self.cfg.pll != "off":
            gen = eval_generator(batch, v.device) if self.cfg.pll == "stochastic" else None
            out["pll"] = pseudo_log_likelihood(rbm0, v, generator=gen, exact=self.cfg.pll == "exact",
                                               binarize=False).mean()
        out["free_energy"] = rbm0.double_free_energy(self._centered(v))  # (B,) float64: for summarize
        return out

    @torch.no_grad()
    def summarize(self, collected):
        rbm0, out = self.stack.layers[0], {}
        fe = collected["free_energy"].mean()
        out["free_energy"] = fe.item()
        n = int(self.train_ref_n)
        ref = self._centered(self.train_ref[:n])
        if n:
            fe_train = rbm0.double_free_energy(ref).mean()
            out["free_energy_train"] = fe_train.item()
            out["free_energy_gap"] = (fe - fe_train).item()
        done = int(self.steps_done)
        due = done > 0 and ((self._total is not None and done >= self._total)
                            or (self.cfg.ais_every and done % self.cfg.ais_every == 0))
        if self.cfg.ais_runs and due:
            out.update(ais_monitors(self._ais(ref if n else None), fe))
        return out

    def _ais(self, ref: torch.Tensor | None) -> dict:
        """AIS log Z of the first RBM, cached for the current weights (val and test share it)."""
        rbm0 = self.stack.layers[0]
        key = (int(self.steps_done), tuple(p._version for p in rbm0.parameters()))
        if self._ais_cache is None or self._ais_cache[0] != key:
            gen = torch.Generator(device=rbm0.W.device).manual_seed(self.cfg.ais_seed + int(self.steps_done))
            res = ais_log_partition(rbm0, n_runs=self.cfg.ais_runs, n_betas=self.cfg.ais_betas,
                                    base="data-biases" if ref is not None else "zero", data=ref,
                                    generator=gen)
            self._ais_cache = (key, res)
        return self._ais_cache[1]

    # -- renders -----------------------------------------------------------------------------
    @torch.no_grad()
    def renders(self, batch):
        x = batch["x"]
        n = min(8, x.shape[0])
        recon = self.reconstruct(x[:n].flatten(1)).view(n, *self.input_shape)
        top = min(self.phase(max(int(self.steps_done) - 1, 0)), self.L - 1)
        gen = torch.Generator(device=x.device).manual_seed(self.cfg.ais_seed)
        samples = self.sample(32, gen, top=top)
        chains = self.stack.layers[0].chains
        if chains.shape[0] and self.cfg.center:
            chains = chains + self.v_offset
        return stack_renders([w for w, _ in self._enc_params()], self.input_shape,
                             self.cfg.render_units, self.cfg.filter_scale, x[:n], recon, samples, chains)

    @torch.no_grad()
    def histograms(self, batch):
        h, out = self._centered(batch["x"]), {}
        for i, rbm in enumerate(self.stack.layers):
            h = rbm.p_h_given_v(h)
            out[f"hidden_probs_layer{i}"] = h
        return out
