"""A deep belief net as a stack of RBMs, and its deterministic exports.

Layer i is an RBM from sizes[i] to sizes[i+1]; it is trained (greedily, by the caller) on
``stack.up(v, upto=i)``, the probabilities of the layer below (Hinton, Osindero & Teh 2006).
The stack's encoder is the up pass with probabilities; `to_encoder()` gives the same function as a
plain ``nn.Sequential`` of Linear + Sigmoid (built by `sigmoid_mlp`, so an exported state_dict can
be rebuilt without genlab's RBM code), and `to_autoencoder()` unrolls the stack for fine-tuning
(Hinton & Salakhutdinov 2006).

This module knows nothing of families or the trainer.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from itertools import pairwise

import torch
from torch import Tensor, nn

from genlab.nn.rbm import RBM, _flat

__all__ = ["DBNStack", "phase_ends", "sigmoid_mlp"]


def sigmoid_mlp(sizes: list[int], input_shape: list[int] | None = None) -> nn.Module:
    """Flatten, then Linear(sizes[i], sizes[i+1]) + Sigmoid per layer.

    `input_shape` is one example's shape (e.g. [1, 8, 8]); its product must equal sizes[0]
    (None: [sizes[0]]). State-dict keys are "1.weight", "1.bias", "3.weight", ...: the same as
    `DBNStack.to_encoder()`, so its exported weights load into this module.
    """
    sizes = [int(s) for s in sizes]
    if len(sizes) < 2 or any(s < 1 for s in sizes):
        raise ValueError(f"sizes must list >= 2 positive layer widths, got {sizes}")
    input_shape = list(input_shape) if input_shape is not None else [sizes[0]]
    if math.prod(input_shape) != sizes[0]:
        raise ValueError(f"input_shape {input_shape} has {math.prod(input_shape)} values, "
                         f"the first layer expects {sizes[0]}")
    layers: list[nn.Module] = [nn.Flatten()]
    for a, b in pairwise(sizes):
        layers += [nn.Linear(a, b), nn.Sigmoid()]
    return nn.Sequential(*layers)


class DBNStack(nn.Module):
    """RBMs stacked by layer sizes [n_visible, h1, h2, ...]; the bottom may be Gaussian.

    ``layers[i]`` is ``RBM(sizes[i], sizes[i+1])``; only the bottom one takes `visible`,
    `learn_sigma` and `sigma`, the upper ones see probabilities and are Bernoulli.
    """

    def __init__(
        self,
        sizes: Sequence[int],
        visible: str = "bernoulli",
        learn_sigma: bool = False,
        sigma: float = 1.0,
    ):
        super().__init__()
        sizes = [int(s) for s in sizes]
        if len(sizes) < 2:
            raise ValueError(f"a DBN needs at least [n_visible, n_hidden], got {sizes}")
        self.sizes = sizes
        self.layers = nn.ModuleList(
            RBM(a, b, visible=visible if i == 0 else "bernoulli",
                learn_sigma=learn_sigma if i == 0 else False, sigma=sigma if i == 0 else 1.0)
            for i, (a, b) in enumerate(pairwise(sizes))
        )
        self.out_features = sizes[-1]

    def __len__(self) -> int:
        return len(self.layers)

    def up(self, v: Tensor, upto: int | None = None) -> Tensor:
        """Probabilities after the first `upto` layers (None: all), (B, V) -> (B, sizes[upto]).

        ``up(v, upto=i)`` is the training input of layer i (``upto=0`` returns v flattened).
        """
        x = _flat(v)
        for layer in self.layers[: len(self.layers) if upto is None else upto]:
            x = layer.p_h_given_v(x)
        return x

    def encode(self, v: Tensor) -> Tensor:
        """Deterministic top-layer features, (B, V) or (B, *image) -> (B, sizes[-1])."""
        return self.up(v)

    def forward(self, v: Tensor) -> Tensor:
        return self.encode(v)

    @torch.no_grad()
    def sample(
        self,
        n: int,
        gibbs_steps: int = 1000,
        generator: torch.Generator | None = None,
        init: Tensor | None = None,
        top: int | None = None,
    ) -> Tensor:
        """n samples: a Gibbs chain in RBM `top` (None: the top one), then a deterministic down pass.

        The chain starts from `init` data up-propagated to that RBM's visible layer (its first
        n rows, cycled) or, if None, from random states; after `gibbs_steps` sweeps the last
        hidden sample is mapped down with probabilities (means) through every layer below.
        Returns (n, n_visible) visible probabilities (means for a Gaussian bottom).
        """
        top = len(self.layers) - 1 if top is None else top
        rbm = self.layers[top]
        p = rbm.W
        if init is not None:
            x = self.up(init, upto=top)
            x = x[torch.arange(n, device=x.device) % x.shape[0]].to(p)
        elif rbm.visible == "bernoulli":
            x = (torch.rand((n, rbm.n_visible), generator=generator, device=p.device) < 0.5).to(p)
        else:
            z = torch.randn((n, rbm.n_visible), generator=generator, device=p.device).to(p)
            x = rbm.b_v + rbm.sigma * z
        x = rbm.gibbs_k(x, gibbs_steps, generator)
        x = rbm.p_v_given_h(rbm.sample_h(x, generator))
        for layer in reversed(self.layers[:top]):
            x = layer.p_v_given_h(x)
        return x

    @torch.no_grad()
    def to_encoder(self, input_shape: list[int] | None = None) -> nn.Sequential:
        """A ``sigmoid_mlp(self.sizes, input_shape)`` with W, b_h copied: it equals `encode`.

        For a Gaussian bottom the first Linear takes W / sigma (the RBM sees v / sigma).
        """
        mlp = sigmoid_mlp(self.sizes, input_shape)
        linears = [m for m in mlp if isinstance(m, nn.Linear)]
        for lin, rbm in zip(linears, self.layers):
            w = rbm.W / rbm.sigma if rbm.visible == "gaussian" else rbm.W
            lin.weight.copy_(w)
            lin.bias.copy_(rbm.b_h)
        return mlp.to(self.layers[0].W)

    @torch.no_grad()
    def to_autoencoder(self, input_shape: list[int] | None = None) -> nn.Sequential:
        """The unrolled stack: ``Sequential(encoder=to_encoder(), decoder=...)``.

        The decoder mirrors the encoder with the transposed weights and visible biases (tied in
        value at the start, separate parameters), Sigmoid after each layer except a Gaussian
        bottom's, whose output is the linear mean b_v + sigma W^T h; it ends with Unflatten to
        `input_shape` when that has more than one dimension. Fine-tune it end to end on the
        reconstruction loss (Hinton & Salakhutdinov 2006; their code layer was linear, ours is
        logistic).
        """
        encoder = self.to_encoder(input_shape)
        dec: list[nn.Module] = []
        for rbm in reversed(self.layers):
            lin = nn.Linear(rbm.n_hidden, rbm.n_visible)
            if rbm.visible == "gaussian":
                lin.weight.copy_(rbm.W.t() * rbm.sigma[:, None])
                lin.bias.copy_(rbm.b_v)
                dec.append(lin)
            else:
                lin.weight.copy_(rbm.W.t())
                lin.bias.copy_(rbm.b_v)
                dec += [lin, nn.Sigmoid()]
        if input_shape is not None and len(input_shape) > 1:
            dec.append(nn.Unflatten(1, tuple(input_shape)))
        decoder = nn.Sequential(*dec)
        return nn.Sequential(OrderedDict(encoder=encoder, decoder=decoder)).to(self.layers[0].W)


def phase_ends(weights: list[float], total: int) -> list[int]:
    """End step (exclusive) of each training phase (greedy: one per layer, then any fine-tuning):
    weights scaled to sum to `total`, each >= 1 step when total allows, the last ending at `total`."""
    n, s = len(weights), sum(weights)
    ends, acc = [], 0.0
    for i, w in enumerate(weights):
        acc += w
        e = round(acc / s * total) if s > 0 else total
        lo = ends[-1] + 1 if ends else 1
        ends.append(min(max(e, lo), total - (n - 1 - i), total))
    ends[-1] = total
    return ends
