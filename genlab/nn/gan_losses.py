"""The GAN family's losses and small helpers: adversarial losses, the WGAN gradient penalty, the
R1 penalty, the mode-seeking ratio, the EMA ramp and the fixed random-weight judge.

Losses (D(x) is a raw score, "logit"):
    ns       D: softplus(-D(x)) + softplus(D(G(z)))        G: softplus(-D(G(z)))  (non-saturating)
    hinge    D: relu(1 - D(x)) + relu(1 + D(G(z)))         G: -D(G(z))
    wgan-gp  D: D(G(z)) - D(x) + gp_weight * GP            G: -D(G(z))
with GP = E[(|grad_x D(x_hat)|_2 - 1)^2], x_hat = eps x + (1 - eps) G(z), eps ~ U[0, 1] per sample.
R1 (Mescheder et al. 2018), added to any D loss: E_real[|grad_x D(x)|_2^2] (the caller scales it
by gamma / 2): it flattens D around the real images, so D cannot win by a steep edge there.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from genlab.nn.gan_blocks import DiscTrunk, gan_widths


def gradient_penalty(critic, real: torch.Tensor, fake: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """WGAN-GP (Gulrajani et al. 2017): mean over the batch of (|grad D(x_hat)|_2 - 1)^2 at
    x_hat = eps * real + (1 - eps) * fake; eps (B, 1, 1, 1). Differentiable (create_graph)."""
    x_hat = (eps * real + (1 - eps) * fake).detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(x_hat).sum(), x_hat, create_graph=True)
    return ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()


def g_class_loss(logits: torch.Tensor, y: torch.Tensor, floor: torch.Tensor | None = None) -> torch.Tensor:
    """G's AC term: the mean cross-entropy of D's class head on the fakes against their class, or
    with `floor` (the real batch's mean cross-entropy, detached) only what each fake's lies above
    it. Plain AC-GAN keeps pulling a sample deeper into its class after it is as clear as real
    images are; measured on easy brain slices, G then drew tumours twice as bright as the data's."""
    if floor is None:
        return F.cross_entropy(logits, y)
    return F.relu(F.cross_entropy(logits.float(), y, reduction="none") - floor).mean()


def r1_penalty(scores: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of |grad_x D(x)|_2^2 at the real images: `scores` (B,) must have
    been computed from `real` (which requires grad). Differentiable (create_graph)."""
    (grad,) = torch.autograd.grad(scores.sum(), real, create_graph=True)
    return grad.float().flatten(1).pow(2).sum(1).mean()


def d_loss_fn(kind: str, d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
    if kind == "ns":
        return F.softplus(-d_real).mean() + F.softplus(d_fake).mean()
    if kind == "hinge":
        return F.relu(1 - d_real).mean() + F.relu(1 + d_fake).mean()
    return d_fake.mean() - d_real.mean()  # wgan-gp, penalty added by the caller


def g_loss_fn(kind: str, d_fake: torch.Tensor) -> torch.Tensor:
    return g_losses(kind, d_fake).mean()


def g_losses(kind: str, d_fake: torch.Tensor) -> torch.Tensor:
    """G's adversarial loss per sample (B,): g_loss_fn before its mean."""
    return F.softplus(-d_fake) if kind == "ns" else -d_fake


def mode_seeking_ratio(fake: torch.Tensor, z: torch.Tensor, pool: int = 4) -> torch.Tensor:
    """Mode-seeking ratio (Mao et al. 2019) of a generated batch: pair example i of the first
    half with example i of the second, mean |G(z1) - G(z2)| / mean |z1 - z2|. The images are
    average-pooled by `pool` first, so the ratio rewards varied content (shape, size, contrast,
    lesions) rather than per-pixel noise. Differentiable; a collapsed G scores near 0."""
    h = fake.shape[0] // 2
    if min(fake.shape[-2:]) >= 2 * pool:
        fake = F.avg_pool2d(fake, pool)
    num = (fake[:h] - fake[h:2 * h]).abs().mean()
    den = (z[:h] - z[h:2 * h]).abs().mean()
    return num / den.clamp_min(1e-8) + 1e-8


def ema_beta(step: int, decay: float) -> float:
    """EMA weight of the old average at (0-based) generator step `step`: the ramp keeps the
    average from being dominated by the random initialisation early in training."""
    return min(decay, (1 + step) / (10 + step))


def random_conv_judge(in_shape, seed: int = 0) -> DiscTrunk:
    """A conv net with fixed random weights (He-normal, zero bias) built without touching the
    global RNG: 'random features' for a Fréchet distance when no trained encoder is given."""
    _, h, w = in_shape
    with torch.random.fork_rng(devices=[]):
        net = DiscTrunk(list(in_shape), gan_widths(h, w, 16, 128), 128)
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            torch.nn.init.kaiming_normal_(m.weight, a=0.2, nonlinearity="leaky_relu", generator=g)
            torch.nn.init.zeros_(m.bias)
    return net.eval().requires_grad_(False)


def same_class_pairs(y: torch.Tensor) -> torch.Tensor:
    """Labels for a conditional G step whose mode-seeking pairs (example i of the first half, i
    of the second) share a class: the first half's labels, twice (plus an odd last one). With the
    real batch's labels, most pairs differ in class, so the class alone makes them differ and
    the term stops rewarding variety within a class; a G that draws one image per class then
    pays nothing for it."""
    h = y.shape[0] // 2
    return torch.cat([y[:h], y[:h], y[2 * h:]])
