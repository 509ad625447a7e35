"""Annealed importance sampling (Neal 2001; Salakhutdinov & Murray 2008): log Z of an RBM too big
to enumerate, and the log-likelihood that follows from it. `ais_monitors` turns one estimate
into the numbers the RBM family logs.

This module knows nothing of families or the trainer.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from genlab.nn.rbm import _LOG_2, _LOG_SQRT_2PI, RBM, _flat, _torch_threads, base_rate_bias

__all__ = ["ais_betas", "ais_log_likelihood", "ais_log_partition", "ais_monitors"]


def ais_betas(n_betas: int = 1000) -> Tensor:
    """An inverse-temperature schedule 0 = b_0 < ... < b_K = 1 (K = n_betas), float64.

    Salakhutdinov & Murray (2008) used 500 steps on [0, 0.5], 4,000 on [0.5, 0.9] and 10,000 on
    [0.9, 1]; we keep those proportions for any K (uniform spacing inside each segment).
    """
    if n_betas < 3:
        raise ValueError(f"n_betas must be >= 3, got {n_betas}")
    n1 = max(1, round(n_betas * 500 / 14500))
    n2 = max(1, round(n_betas * 4000 / 14500))
    n3 = max(1, n_betas - n1 - n2)
    return torch.cat([
        torch.linspace(0.0, 0.5, n1 + 1, dtype=torch.float64)[:-1],
        torch.linspace(0.5, 0.9, n2 + 1, dtype=torch.float64)[:-1],
        torch.linspace(0.9, 1.0, n3 + 1, dtype=torch.float64),
    ])


@torch.no_grad()
def ais_log_partition(
    rbm: RBM,
    n_runs: int = 100,
    n_betas: int | Sequence[float] | Tensor = 1000,
    base: str = "data-biases",
    base_visible_bias: Tensor | None = None,
    data: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    """Annealed importance sampling estimate of log Z (Neal 2001; Salakhutdinov & Murray 2008).

    The base model A has W = 0, b_h = 0 and visible biases b_A: ``base="data-biases"`` takes
    `base_visible_bias` (V,) or, if None, ``base_rate_bias(data)``; ``base="zero"`` uses b_A = 0.
    The intermediate distributions (beta from 0 to 1) are

        Bernoulli: log p*_b(v) = ((1-b) b_A + b b_v).v + sum_j softplus(b (W v + b_h)_j)
        Gaussian:  log p*_b(v) = -sum_i [(1-b)(v_i-b_A_i)^2 + b (v_i-b_v_i)^2] / (2 sigma_i^2)
                                 + sum_j softplus(b (W (v/sigma) + b_h)_j)

    each sampled by one Gibbs sweep at that beta. `n_betas`: an int (schedule from `ais_betas`)
    or an explicit increasing schedule starting at 0 and ending at 1.

    Small problems (n_runs * V * H <= 2^21) run on one CPU thread: a few thousand tiny steps
    lose more to thread start-up than they gain, and far more on a loaded machine.

    Returns a dict of float64 tensors:
      log_z: log of the mean importance weight times Z_A (the unbiased estimator of Z, in logs);
      log_z_std: the standard error of log_z, sd(w) / (sqrt(n_runs) mean(w)) (delta method);
      log_z_lower / log_z_upper: log(Z_hat -/+ 3 sd(Z_hat)) as in Salakhutdinov & Murray 2008
        (the lower bound is -inf when the weights are too spread for it to exist);
      log_weights: (n_runs,) the log importance weights; log_z_base: log Z_A.
    """
    small = n_runs * rbm.n_visible * rbm.n_hidden <= (1 << 21) and rbm.W.device.type == "cpu"
    with _torch_threads(1 if small else None):
        return _ais(rbm, n_runs, n_betas, base, base_visible_bias, data, generator)


def _ais(rbm, n_runs, n_betas, base, base_visible_bias, data, generator):
    V, H = rbm.n_visible, rbm.n_hidden
    device = rbm.W.device
    W, b_v, b_h = rbm.W.double(), rbm.b_v.double(), rbm.b_h.double()
    sigma = rbm.sigma.double()
    gauss = rbm.visible == "gaussian"
    if base == "zero":
        b_a = torch.zeros(V, dtype=torch.float64, device=device)
    elif base == "data-biases":
        if base_visible_bias is not None:
            b_a = torch.as_tensor(base_visible_bias).to(device=device, dtype=torch.float64)
        elif data is not None:
            b_a = (_flat(data).double().mean(0) if gauss else base_rate_bias(data)).to(device)
        else:
            raise ValueError("base='data-biases' needs base_visible_bias or data")
    else:
        raise ValueError(f"base must be 'data-biases' or 'zero', got {base!r}")
    if isinstance(n_betas, int):
        betas = ais_betas(n_betas)
    else:
        betas = torch.as_tensor(n_betas, dtype=torch.float64)
        if betas[0] != 0 or betas[-1] != 1 or (betas[1:] < betas[:-1]).any():
            raise ValueError("an explicit beta schedule must increase from 0 to 1")
    betas = betas.tolist()

    def rand(shape):
        return torch.rand(shape, generator=generator, device=device, dtype=torch.float64)

    # v ~ p_A exactly, and log Z_A (the A hidden units, decoupled, contribute 2^H).
    if gauss:
        z = torch.randn((n_runs, V), generator=generator, device=device, dtype=torch.float64)
        v = b_a + sigma * z
        log_z_a = (_LOG_SQRT_2PI + sigma.log()).sum() + H * _LOG_2
    else:
        v = (rand((n_runs, V)) < torch.sigmoid(b_a)).double()
        log_z_a = F.softplus(b_a).sum() + H * _LOG_2

    def log_p_star(v, pre, beta):
        hid = F.softplus(beta * pre).sum(-1)
        if gauss:
            qa = (((v - b_a) / sigma) ** 2).sum(-1)
            qb = (((v - b_v) / sigma) ** 2).sum(-1)
            return -0.5 * ((1 - beta) * qa + beta * qb) + hid
        return v @ ((1 - beta) * b_a + beta * b_v) + hid

    log_w = torch.zeros(n_runs, dtype=torch.float64, device=device)
    for k in range(1, len(betas)):
        b_prev, b_k = betas[k - 1], betas[k]
        pre = (v / sigma if gauss else v) @ W.T + b_h  # (M, H)
        log_w += log_p_star(v, pre, b_k) - log_p_star(v, pre, b_prev)
        if k < len(betas) - 1:  # one Gibbs sweep leaving p_{b_k} invariant
            h = (rand((n_runs, H)) < torch.sigmoid(b_k * pre)).double()
            if gauss:
                mean = (1 - b_k) * b_a + b_k * (b_v + sigma * (h @ W))
                v = mean + sigma * torch.randn(
                    (n_runs, V), generator=generator, device=device, dtype=torch.float64)
            else:
                p = torch.sigmoid((1 - b_k) * b_a + b_k * (b_v + h @ W))
                v = (rand((n_runs, V)) < p).double()

    a = log_w.max()
    r = torch.exp(log_w - a)
    mean = r.mean()
    sem = r.std() / math.sqrt(n_runs) if n_runs > 1 else torch.zeros_like(mean)
    log_z = log_z_a + a + mean.log()
    lower = mean - 3 * sem
    return {
        "log_z": log_z,
        "log_z_std": sem / mean,
        "log_z_lower": log_z_a + a + (lower.log() if lower > 0 else torch.tensor(-math.inf)),
        "log_z_upper": log_z_a + a + (mean + 3 * sem).log(),
        "log_weights": log_w,
        "log_z_base": torch.as_tensor(log_z_a, dtype=torch.float64),
    }


@torch.no_grad()
def ais_log_likelihood(rbm: RBM, v_heldout: Tensor, **ais_kwargs) -> dict[str, Tensor]:
    """Average log-likelihood -mean F(v) - log Z with log Z from `ais_log_partition(**ais_kwargs)`.

    Returns log_likelihood, log_likelihood_lower / _upper (from log Z's upper / lower bound: an
    overestimated Z underestimates the likelihood) and log_likelihood_std, plus the AIS dict under
    "ais". Note AIS tends to *under*estimate log Z, so this tends to *over*estimate the likelihood.
    """
    ais = ais_log_partition(rbm, **ais_kwargs)
    mfe = -rbm.double_free_energy(v_heldout).mean()
    return {
        "log_likelihood": mfe - ais["log_z"],
        "log_likelihood_lower": mfe - ais["log_z_upper"],
        "log_likelihood_upper": mfe - ais["log_z_lower"],
        "log_likelihood_std": ais["log_z_std"],
        "ais": ais,
    }


def ais_monitors(ais: dict[str, Tensor], mean_free_energy: Tensor) -> dict[str, float]:
    """One AIS estimate as logged numbers: ais_log_z (+ _se, its standard error; ais_log_w_sd,
    the spread of the log importance weights) and ais_log_likelihood = -mean F - log Z
    (+ _lower, from log Z + 3 sd)."""
    log_w = ais["log_weights"]
    return {"ais_log_z": ais["log_z"].item(),
            "ais_log_z_se": ais["log_z_std"].item(),
            "ais_log_w_sd": log_w.std().item() if log_w.numel() > 1 else 0.0,
            "ais_log_likelihood": (-mean_free_energy - ais["log_z"]).item(),
            "ais_log_likelihood_lower": (-mean_free_energy - ais["log_z_upper"]).item()}
