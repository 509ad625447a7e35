"""Restricted Boltzmann machines as a reusable block: the maths, the monitors, exact and AIS log Z.

Energy (Bernoulli visible, v in {0,1}^V, h in {0,1}^H, W is (H, V) so W[j] is unit j's filter):

    E(v, h) = -b_v.v - b_h.h - h^T W v
    F(v)    = -b_v.v - sum_j softplus(b_h_j + W_j.v)                      # free energy

Gaussian visible (per-unit sigma_i, Hinton's practical guide form, v/sigma enters the hidden units):

    E(v, h) = sum_i (v_i - b_v_i)^2 / (2 sigma_i^2) - b_h.h - h^T W (v / sigma)
    F(v)    = sum_i (v_i - b_v_i)^2 / (2 sigma_i^2) - sum_j softplus(b_h_j + W_j.(v / sigma))
    p(v_i | h) = N(b_v_i + sigma_i (W^T h)_i, sigma_i^2)

Training. `cd_loss(v_data, v_model) = mean F(v_data) - mean F(v_model)`, with the negative sample
detached, has exactly the CD/PCD gradient: for W it is -<p(h|v) v^T>_data + <p(h|v) v^T>_model
(hidden probabilities, not samples, Rao-Blackwellised as in scikit-learn). So any torch optimizer
applies the update; weight decay belongs to the optimizer (``SGD(weight_decay=...)``, or better a
param group with decay on ``W`` only, as Hinton's guide recommends) and the momentum schedule too
(`momentum_at`). `fit_cd` is a fused, autograd-free SGD loop over the same update for Bernoulli
RBMs (used by the scikit-learn wrapper, where per-op overhead at batch size 10 dominates).

Monitors: `reconstruction_error`, `pseudo_log_likelihood` (scikit-learn's definition),
`free_energy_gap` (Hinton's overfitting monitor), exact `log_partition_exact` /
`log_likelihood_exact` for small models; for larger ones annealed importance sampling
(genlab.nn.rbm_ais, Salakhutdinov & Murray 2008).

This module knows nothing of families or the trainer.
"""
from __future__ import annotations

import math
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "RBM",
    "base_rate_bias",
    "fit_cd",
    "free_energy_gap",
    "momentum_at",
    "pseudo_log_likelihood",
]

_LOG_2 = math.log(2.0)
_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


def _flat(v: Tensor) -> Tensor:
    """(B, *shape) -> (B, prod(shape)); images may be passed as (B, C, H, W)."""
    return v.flatten(1) if v.dim() > 2 else v


@contextmanager
def _torch_threads(n: int | None):
    old = torch.get_num_threads()
    if n is None or n == old:
        yield
        return
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def base_rate_bias(x: Tensor, eps: float = 1e-3) -> Tensor:
    """Visible biases of the base-rate model: log(p / (1 - p)) of the data mean, p clamped.

    x: (B, V) or (B, *shape) in [0, 1]. Returns (V,). Hinton's guide, section 8.1.
    """
    p = _flat(x).double().mean(0).clamp(eps, 1.0 - eps)
    return torch.log(p) - torch.log1p(-p)


def momentum_at(step: int, initial: float = 0.5, final: float = 0.9, switch_step: int = 5) -> float:
    """Hinton's momentum schedule: `initial` before `switch_step`, `final` from then on.

    Momentum is an optimizer setting; a family sets ``group["momentum"] = momentum_at(step, ...)``
    on its SGD optimizer before each step.
    """
    return float(initial if step < switch_step else final)


def _binary_configs(n: int, start: int, stop: int, dtype: torch.dtype, device) -> Tensor:
    """All n-bit configurations numbered start..stop-1, as (stop - start, n) rows of 0/1."""
    ints = torch.arange(start, stop, device=device, dtype=torch.int64)
    bits = torch.arange(n, device=device, dtype=torch.int64)
    return ((ints[:, None] >> bits[None, :]) & 1).to(dtype)


class RBM(nn.Module):
    """A restricted Boltzmann machine with Bernoulli hidden units.

    Args:
        n_visible: V, number of visible units (a flattened image: C*H*W).
        n_hidden: H, number of hidden units.
        visible: "bernoulli" (v in [0,1], treated as probabilities/binary) or "gaussian".
        learn_sigma: Gaussian only; learn a per-visible-unit log sigma (else a fixed buffer).
        sigma: initial (or fixed) standard deviation of Gaussian visible units.
        n_chains: number of persistent chains for PCD; None = the first batch's size.

    Parameters: ``W`` (H, V), ``b_v`` (V,), ``b_h`` (H,), Gaussian: ``log_sigma`` (V,) (a parameter
    if learn_sigma, else a buffer). Buffer ``chains`` (n_chains, V): the PCD fantasy particles,
    empty until the first persistent negative phase; it is in ``state_dict`` and a checkpoint with
    chains loads into a fresh model (the buffer is resized on load).
    """

    def __init__(
        self,
        n_visible: int,
        n_hidden: int,
        visible: str = "bernoulli",
        learn_sigma: bool = False,
        sigma: float = 1.0,
        n_chains: int | None = None,
    ):
        super().__init__()
        if visible not in ("bernoulli", "gaussian"):
            raise ValueError(f"visible must be 'bernoulli' or 'gaussian', got {visible!r}")
        if learn_sigma and visible != "gaussian":
            raise ValueError("learn_sigma only applies to visible='gaussian'")
        if not (n_visible > 0 and n_hidden > 0):
            raise ValueError(f"n_visible, n_hidden must be positive, got {n_visible}, {n_hidden}")
        if sigma <= 0:
            raise ValueError(f"sigma must be > 0, got {sigma}")
        self.n_visible, self.n_hidden, self.visible = int(n_visible), int(n_hidden), visible
        self.learn_sigma, self.n_chains = bool(learn_sigma), n_chains
        self.out_features = self.n_hidden  # the Encoder capability: encode -> (B, out_features)
        self.W = nn.Parameter(torch.empty(n_hidden, n_visible))
        self.b_v = nn.Parameter(torch.zeros(n_visible))
        self.b_h = nn.Parameter(torch.zeros(n_hidden))
        if visible == "gaussian":
            log_sigma = torch.full((n_visible,), math.log(sigma))
            if learn_sigma:
                self.log_sigma = nn.Parameter(log_sigma)
            else:
                self.register_buffer("log_sigma", log_sigma)
        self.register_buffer("chains", torch.empty(0, n_visible))
        self.reset_parameters()

    # ------------------------------------------------------------------ set-up
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """W ~ N(0, 0.01^2) (std 0.01, as Hinton's guide and scikit-learn), biases 0."""
        with torch.no_grad():
            self.W.copy_(torch.randn(self.W.shape, generator=generator) * 0.01)
            self.b_v.zero_()
            self.b_h.zero_()

    @torch.no_grad()
    def init_visible_bias(self, x: Tensor, eps: float = 1e-3) -> None:
        """Set b_v from data x (B, V): Bernoulli log(p/(1-p)) of the mean (p clamped to
        [eps, 1-eps]); Gaussian the data mean (sigma is left alone: standardise the data)."""
        x = _flat(x)
        if self.visible == "bernoulli":
            self.b_v.copy_(base_rate_bias(x, eps).to(self.b_v))
        else:
            self.b_v.copy_(x.mean(0).to(self.b_v))

    @property
    def sigma(self) -> Tensor:
        """(V,) standard deviations of Gaussian visible units (ones for Bernoulli)."""
        if self.visible == "gaussian":
            return self.log_sigma.exp()
        return torch.ones_like(self.b_v)

    def extra_repr(self) -> str:
        s = f"n_visible={self.n_visible}, n_hidden={self.n_hidden}, visible={self.visible!r}"
        return s + (", learn_sigma=True" if self.learn_sigma else "")

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # The chains buffer is created lazily, so its row count may differ from a fresh model's.
        key = prefix + "chains"
        if key in state_dict and state_dict[key].shape != self.chains.shape:
            self.chains = self.chains.new_empty(state_dict[key].shape)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # ------------------------------------------------------------------ conditionals
    def _vis_in(self, v: Tensor) -> Tensor:
        """What the hidden units see: v (Bernoulli) or v / sigma (Gaussian)."""
        return v / self.sigma if self.visible == "gaussian" else v

    def hidden_preactivation(self, v: Tensor) -> Tensor:
        """(B, V) -> (B, H): b_h + W v (v / sigma for Gaussian)."""
        return F.linear(self._vis_in(_flat(v)), self.W, self.b_h)

    def free_energy(self, v: Tensor) -> Tensor:
        """F(v), (B, V) -> (B,), with p(v) = exp(-F(v)) / Z."""
        v = _flat(v)
        hidden_term = F.softplus(self.hidden_preactivation(v)).sum(-1)
        if self.visible == "bernoulli":
            return -(v @ self.b_v) - hidden_term
        return (0.5 * ((v - self.b_v) / self.sigma) ** 2).sum(-1) - hidden_term

    def p_h_given_v(self, v: Tensor) -> Tensor:
        """P(h_j = 1 | v), (B, V) -> (B, H)."""
        return torch.sigmoid(self.hidden_preactivation(v))

    def sample_h(self, v: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """A binary sample h ~ p(h | v), (B, V) -> (B, H)."""
        return torch.bernoulli(self.p_h_given_v(v), generator=generator)

    def p_v_given_h(self, h: Tensor) -> Tensor:
        """(B, H) -> (B, V): P(v_i = 1 | h) (Bernoulli) or the mean b_v + sigma W^T h (Gaussian)."""
        if self.visible == "bernoulli":
            return torch.sigmoid(h @ self.W + self.b_v)
        return self.b_v + self.sigma * (h @ self.W)

    def sample_v(self, h: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """A sample v ~ p(v | h), (B, H) -> (B, V)."""
        mean = self.p_v_given_h(h)
        if self.visible == "bernoulli":
            return torch.bernoulli(mean, generator=generator)
        noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return mean + self.sigma * noise

    @torch.no_grad()
    def gibbs_k(self, v: Tensor, k: int = 1, generator: torch.Generator | None = None) -> Tensor:
        """k Gibbs sweeps v -> h ~ p(h|v) -> v ~ p(v|h); returns the last visible sample (B, V)."""
        v = _flat(v)
        for _ in range(int(k)):
            v = self.sample_v(self.sample_h(v, generator), generator)
        return v

    def encode(self, v: Tensor) -> Tensor:
        """Deterministic features P(h = 1 | v), (B, V) or (B, *image) -> (B, H). Never samples."""
        return self.p_h_given_v(v)

    def forward(self, v: Tensor) -> Tensor:
        return self.encode(v)

    # ------------------------------------------------------------------ learning
    def cd_loss(self, v_data: Tensor, v_model: Tensor) -> Tensor:
        """mean F(v_data) - mean F(v_model), v_model detached: its gradient is the CD/PCD gradient.

        The value itself is not a likelihood (it is not even bounded); log the monitors instead.
        """
        return self.free_energy(v_data).mean() - self.free_energy(v_model.detach()).mean()

    @torch.no_grad()
    def init_chains(
        self, n_chains: int, generator: torch.Generator | None = None, data: Tensor | None = None
    ) -> None:
        """(Re)start the PCD chains: from rows of `data` (cycled if fewer) or, without data, random
        (Bernoulli(0.5) visible; N(b_v, sigma^2) for Gaussian)."""
        p = self.W
        if data is not None:
            data = _flat(data).detach()
            idx = torch.arange(n_chains, device=data.device) % data.shape[0]
            self.chains = data[idx].to(device=p.device, dtype=p.dtype).clone()
        elif self.visible == "bernoulli":
            u = torch.rand((n_chains, self.n_visible), generator=generator, device=p.device)
            self.chains = (u < 0.5).to(p.dtype)
        else:
            z = torch.randn((n_chains, self.n_visible), generator=generator, device=p.device)
            self.chains = (self.b_v + self.sigma * z.to(p.dtype)).detach()

    @torch.no_grad()
    def negative_phase(
        self,
        v_data: Tensor,
        k: int = 1,
        persistent: bool = False,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """The negative sample for `cd_loss`, detached.

        CD-k (persistent=False): k Gibbs steps from the data batch, (B, V).
        PCD-k (persistent=True): k Gibbs steps of the persistent chains, which are kept in the
        ``chains`` buffer (initialised from the first batch, cycled to `n_chains` rows); returns
        (n_chains, V), which need not equal the batch size (cd_loss averages each side apart).
        """
        v_data = _flat(v_data)
        if not persistent:
            return self.gibbs_k(v_data, k, generator)
        if self.chains.shape[0] == 0:
            self.init_chains(self.n_chains or v_data.shape[0], generator, data=v_data)
        self.chains = self.gibbs_k(self.chains, k, generator)
        return self.chains.clone()

    def reconstruction_error(self, v: Tensor) -> Tensor:
        """Mean squared error of the mean-field one-step reconstruction p_v(p_h(v)); a scalar.

        A cheap progress signal, not the objective: it can fall while the likelihood does not.
        """
        v = _flat(v)
        return F.mse_loss(self.p_v_given_h(self.p_h_given_v(v)), v)

    def sparsity_penalty(
        self, v: Tensor, target: float = 0.05, cost: float = 1e-2, kind: str = "squared"
    ) -> Tensor:
        """A differentiable penalty pushing the mean activation q_j = mean_b P(h_j=1|v_b) to target.

        kind="squared": cost * sum_j (target - q_j)^2 (Lee, Ekanadham & Ng 2008).
        kind="cross_entropy": cost * sum_j [-target log q_j - (1-target) log(1-q_j)]
        (Hinton's guide, section 11, with the batch mean in place of his running average).
        Add it to `cd_loss` before `backward()`.
        """
        q = self.p_h_given_v(v).mean(0)
        if kind == "squared":
            return cost * ((target - q) ** 2).sum()
        if kind == "cross_entropy":
            q = q.clamp(1e-6, 1 - 1e-6)
            return cost * -(target * q.log() + (1 - target) * torch.log1p(-q)).sum()
        raise ValueError(f"kind must be 'squared' or 'cross_entropy', got {kind!r}")

    # ------------------------------------------------------------------ exact quantities
    @torch.no_grad()
    def log_partition_exact(self, max_units: int = 22, chunk: int = 1 << 14) -> Tensor:
        """log Z by enumeration, in float64; a 0-dim tensor.

        Bernoulli visible: over the smaller layer; over h this is
            log Z = logsumexp_h [ b_h.h + sum_i softplus(b_v_i + (W^T h)_i) ].
        Gaussian visible: over h, with the v-integral in closed form
            log Z = logsumexp_h [ b_h.h + sum_i (b_v_i a_i / sigma_i + a_i^2 / 2) ]
                    + sum_i log(sqrt(2 pi) sigma_i),   a = W^T h.
        Raises ValueError if the enumerated layer has more than `max_units` units.
        """
        W, b_v, b_h = self.W.double(), self.b_v.double(), self.b_h.double()
        gauss = self.visible == "gaussian"
        over_hidden = gauss or self.n_hidden <= self.n_visible
        n = self.n_hidden if over_hidden else self.n_visible
        if n > max_units:
            raise ValueError(
                f"exact log Z enumerates 2^{n} states (> 2^{max_units}); use ais_log_partition"
            )
        sigma = self.sigma.double()
        parts = []
        for start in range(0, 1 << n, chunk):
            c = _binary_configs(n, start, min(start + chunk, 1 << n), torch.float64, W.device)
            if not over_hidden:  # enumerate v: -F(v)
                parts.append(c @ b_v + F.softplus(c @ W.T + b_h).sum(-1))
            elif not gauss:
                parts.append(c @ b_h + F.softplus(c @ W + b_v).sum(-1))
            else:
                a = c @ W
                parts.append(c @ b_h + (b_v * a / sigma + 0.5 * a * a).sum(-1))
        log_z = torch.logsumexp(torch.cat(parts), 0)
        if gauss:
            log_z = log_z + (_LOG_SQRT_2PI + sigma.log()).sum()
        return log_z

    @torch.no_grad()
    def log_likelihood_exact(self, v: Tensor, log_z: Tensor | None = None) -> Tensor:
        """log p(v) = -F(v) - log Z, (B,) in float64 (a log density for Gaussian visible)."""
        if log_z is None:
            log_z = self.log_partition_exact()
        return -self.double_free_energy(v) - log_z

    @torch.no_grad()
    def double_free_energy(self, v: Tensor) -> Tensor:
        """F(v) computed in float64 (for exact and AIS quantities), (B,)."""
        v = _flat(v).double()
        W, b_v, b_h, s = self.W.double(), self.b_v.double(), self.b_h.double(), self.sigma.double()
        if self.visible == "bernoulli":
            return -(v @ b_v) - F.softplus(v @ W.T + b_h).sum(-1)
        return (0.5 * ((v - b_v) / s) ** 2).sum(-1) - F.softplus((v / s) @ W.T + b_h).sum(-1)


# ---------------------------------------------------------------------- monitors
@torch.no_grad()
def pseudo_log_likelihood(
    rbm: RBM,
    v: Tensor,
    generator: torch.Generator | None = None,
    exact: bool = False,
    binarize: bool = True,
    flip_index: Tensor | None = None,
    chunk_elements: int = 1 << 24,
) -> Tensor:
    """Per-sample pseudo-log-likelihood, (B,), Bernoulli visible only.

    Definition (scikit-learn's ``BernoulliRBM.score_samples``): for each sample flip ONE randomly
    chosen visible unit i (v_i -> 1 - v_i) and return

        PLL(v) = V * log sigmoid(F(v_flipped) - F(v)),

    a one-unit stochastic estimate of sum_i log p(v_i | v_{-i}). With ``exact=True`` the average
    over ALL V units replaces the random one: sum_i log sigmoid(F(v^(i)) - F(v)), the expectation
    of the stochastic value (its noise removed; use it to compare models).
    `flip_index` (B,) fixes the flipped units (reproduces a given sklearn draw).

    Comparability: scikit-learn does not binarise; it flips to 1 - v_i even for grey values,
    which is not a flip of a binary state. We threshold at 0.5 first (``binarize=True``); for
    binary data both agree exactly, for grey data pass ``binarize=False`` to get sklearn's number.
    Values are in nats per sample, and depend on V, so compare only on the same data.
    """
    if rbm.visible != "bernoulli":
        raise ValueError("pseudo-likelihood is defined here for Bernoulli visible units only")
    v = _flat(v).to(rbm.W.dtype)
    if binarize:
        v = (v > 0.5).to(v.dtype)
    B, V = v.shape
    fe = rbm.free_energy(v)
    if not exact:
        if flip_index is None:
            flip_index = torch.randint(0, V, (B,), generator=generator, device=v.device)
        rows = torch.arange(B, device=v.device)
        vf = v.clone()
        vf[rows, flip_index] = 1 - vf[rows, flip_index]
        return V * F.logsigmoid(rbm.free_energy(vf) - fe)
    # All flips at once, with d_i = (1 - v_i) - v_i and x = b_h + W v:
    #   F(v^(i)) - F(v) = -b_v_i d_i - sum_j [softplus(x_j + W_ji d_i) - softplus(x_j)]
    x = rbm.hidden_preactivation(v)  # (B, H)
    d = 1 - 2 * v  # (B, V)
    Wt = rbm.W.t()  # (V, H)
    step = max(1, chunk_elements // (V * rbm.n_hidden))
    out = []
    for s in range(0, B, step):
        xs, ds = x[s:s + step], d[s:s + step]
        sp = F.softplus(xs[:, None, :] + ds[:, :, None] * Wt[None]).sum(-1)  # (b, V)
        delta = -ds * rbm.b_v - sp + F.softplus(xs).sum(-1, keepdim=True)
        out.append(F.logsigmoid(delta).sum(-1))
    return torch.cat(out)


@torch.no_grad()
def free_energy_gap(rbm: RBM, v_train_subset: Tensor, v_heldout: Tensor) -> Tensor:
    """mean F(held-out) - mean F(training subset), a scalar (Hinton's guide, section 6).

    Both sets should be the same size and from the same distribution; Z cancels. Near zero is
    healthy; positive and growing means the model prefers its training data: overfitting.
    """
    return rbm.free_energy(v_heldout).mean() - rbm.free_energy(v_train_subset).mean()


# ---------------------------------------------------------------------- fused SGD loop
@torch.no_grad()
def fit_cd(
    rbm: RBM,
    x: Tensor,
    *,
    epochs: int = 1,
    batch_size: int = 10,
    lr: float = 0.1,
    k: int = 1,
    persistent: bool = True,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    shuffle: bool = True,
    generator: torch.Generator | None = None,
    velocity: Tensor | None = None,
    num_threads: int | str | None = "auto",
) -> Tensor:
    """Train a Bernoulli RBM in place with plain SGD on the CD-k / PCD-k gradient; no autograd.

    The update is exactly ``SGD(lr, momentum, dampening=0).step()`` on ``rbm.cd_loss(v, v_neg)``
    (plus ``weight_decay * W`` added to W's gradient only, never to the biases), with v_neg from
    ``rbm.negative_phase(v, k, persistent)``: PCD chains live in ``rbm.chains`` as usual. It is a
    fast path for small batches, where eager per-op overhead dominates: parameters are packed into
    one augmented (H+1, V+1) matrix so each phase is a single matmul, and the uniforms of a whole
    chunk of batches are drawn at once (sampling is then a comparison: sigmoid(x) > u iff
    x > logit(u)).

    x: (N, V) training data in [0, 1]. Batches are N split into ceil(N / batch_size) nearly equal
    parts (as scikit-learn), reshuffled each epoch if `shuffle`. Returns the (H+1, V+1) momentum
    buffer; pass it back as `velocity` to continue with momentum.

    num_threads: torch CPU threads while training ("auto": 1 when a step's matmuls are small,
    batch_size * (V+1) * (H+1) <= 2^21, where thread start-up costs more than it saves, and far
    more on a loaded machine; None: leave torch's setting). The previous setting is restored.
    """
    if rbm.visible != "bernoulli":
        raise NotImplementedError("fit_cd is Bernoulli-only; use cd_loss with an optimizer")
    if num_threads == "auto":
        small = batch_size * (rbm.n_visible + 1) * (rbm.n_hidden + 1) <= (1 << 21)
        num_threads = 1 if (small and rbm.W.device.type == "cpu") else None
    with _torch_threads(num_threads):
        return _fit_cd(rbm, x, epochs=epochs, batch_size=batch_size, lr=lr, k=k,
                       persistent=persistent, momentum=momentum, weight_decay=weight_decay,
                       shuffle=shuffle, generator=generator, velocity=velocity)


# One function of ~120 lines on purpose: it is the hot loop of small-batch training, where
# per-call overhead dominates (a batch of 10 is ~10 tiny matmuls). Every buffer the loop writes
# into with out= (the augmented parameter matrix, per-batch-size hidden/visible buffers, the
# chains' state) is allocated once above it; split into functions, those dozen views would be
# passed back and forth on every batch.
def _fit_cd(rbm, x, *, epochs, batch_size, lr, k, persistent, momentum, weight_decay, shuffle,
            generator, velocity):
    x = _flat(x)
    dev, dt = rbm.W.device, rbm.W.dtype
    N, V = x.shape
    H = rbm.n_hidden
    if N == 0:
        return velocity if velocity is not None else torch.zeros(H + 1, V + 1, device=dev, dtype=dt)
    xa = torch.ones(N, V + 1, device=dev, dtype=dt)  # data with a ones column (the bias input)
    xa[:, :V] = x.to(device=dev, dtype=dt)

    T = torch.zeros(H + 1, V + 1, device=dev, dtype=dt)  # [[W, b_h], [b_v, 0]]
    T[:H, :V], T[:H, V], T[H, :V] = rbm.W, rbm.b_h, rbm.b_v
    Th_t = T[:H].t()  # (V+1, H): hidden pre-activation = va @ Th_t
    Tv = T[:, :V]  # (H+1, V): visible pre-activation = ha @ Tv
    use_vel = momentum != 0.0
    if use_vel and velocity is None:
        velocity = torch.zeros_like(T)
    Tw = T[:H, :V]

    n_batches = -(-N // batch_size)
    base, extra = divmod(N, n_batches)
    sizes = [base + 1] * extra + [base] * (n_batches - extra)

    if int(epochs) <= 0:
        return velocity if velocity is not None else torch.zeros_like(T)
    C = 0
    if persistent:
        if rbm.chains.shape[0] == 0:
            first = xa[torch.randperm(N, generator=generator, device=dev)] if shuffle else xa
            rbm.init_chains(rbm.n_chains or min(batch_size, N), generator, data=first[:, :V])
        C = rbm.chains.shape[0]
        vc = torch.ones(C, V + 1, device=dev, dtype=dt)
        vc[:, :V] = rbm.chains.to(dt)
        # the hidden state of the chains: one half-step h ~ p(h | chains) resumes them
        hc = torch.ones(C, H + 1, device=dev, dtype=dt)
        u0 = torch.rand(C, H, generator=generator, device=dev, dtype=dt)
        torch.gt(torch.sigmoid(vc @ Th_t), u0, out=hc[:, :H])
        hc_v = hc[:, :H]
    # Buffers per row count, with their ones (bias) column preset; views taken once.
    pos, neg = {}, {}  # data side: (hp^T, hp[:, :H], lr/m); chain side: see below
    for m in set(sizes):
        hp = torch.ones(m, H + 1, device=dev, dtype=dt)
        pos[m] = (hp.t(), hp[:, :H], lr / m)
    for m in ({C} if persistent else set(sizes)):
        hn = torch.ones(m, H + 1, device=dev, dtype=dt)
        hs = torch.ones(m, H + 1, device=dev, dtype=dt)
        vn = torch.ones(m, V + 1, device=dev, dtype=dt)
        xv = torch.empty(m, V, device=dev, dtype=dt)
        neg[m] = (hn.t(), hn[:, :H], vn, vn[:, :V], hs, hs[:, :H], xv, -lr / m)
    if persistent:
        hs, hs_v = hc, hc_v  # the chain's hidden state persists across batches
    vel_w = velocity[:H, :V] if use_vel else None
    decay = 1.0 - lr * weight_decay

    chunk = max(1, (1 << 22) // max(1, batch_size * k * (V + H)))  # batches per uniform draw
    mm, gt = torch.mm, torch.gt
    for _ in range(int(epochs)):
        data = xa[torch.randperm(N, generator=generator, device=dev)] if shuffle else xa
        batches = data.split(sizes)
        for c0 in range(0, n_batches, chunk):
            c1 = min(n_batches, c0 + chunk)
            csz = [C] * (c1 - c0) if persistent else sizes[c0:c1]  # chain rows per batch
            rows = sum(csz)
            # uniforms for k sweeps; the visible ones as logits: sigmoid(x) > u <=> x > logit(u)
            uvs = torch.rand(rows, k * V, generator=generator, device=dev, dtype=dt).logit_()
            uhs = torch.rand(rows, k * H, generator=generator, device=dev, dtype=dt)
            uvs, uhs = uvs.split(csz), uhs.split(csz)
            negs = neg[C] if persistent else None
            for v, m, u_v, u_h in zip(batches[c0:c1], sizes[c0:c1], uvs, uhs):
                hp_t, hp_v, a_pos = pos[m]
                if persistent:
                    hn_t, hn_v, vn, vn_v, _, _, xv, a_neg = negs
                else:
                    hn_t, hn_v, vn, vn_v, hs, hs_v, xv, a_neg = neg[m]
                mm(v, Th_t, out=hp_v)  # positive phase: P(h | data)
                hp_v.sigmoid_()
                if k == 1:
                    if not persistent:  # CD: the chain starts at the data
                        gt(hp_v, u_h, out=hs_v)
                    mm(hs, Tv, out=xv)
                    gt(xv, u_v, out=vn_v)
                    mm(vn, Th_t, out=hn_v)
                    hn_v.sigmoid_()
                    if persistent:
                        gt(hn_v, u_h, out=hs_v)
                else:
                    u_vk, u_hk = u_v.split(V, 1), u_h.split(H, 1)
                    if not persistent:
                        gt(hp_v, u_hk[0], out=hs_v)
                    for s in range(k):
                        mm(hs, Tv, out=xv)
                        gt(xv, u_vk[s], out=vn_v)
                        mm(vn, Th_t, out=hn_v)
                        hn_v.sigmoid_()
                        if persistent:
                            gt(hn_v, u_hk[s], out=hs_v)
                        elif s < k - 1:
                            gt(hn_v, u_hk[s + 1], out=hs_v)
                # SGD step on cd_loss: grad = -<h v>_data/m + <h v>_model/mc (augmented: biases too)
                if use_vel:
                    velocity.mul_(momentum)
                    if weight_decay:
                        vel_w.add_(Tw, alpha=-lr * weight_decay)
                    velocity.addmm_(hp_t, v, alpha=a_pos).addmm_(hn_t, vn, alpha=a_neg)
                    T.add_(velocity)
                else:
                    if weight_decay:
                        Tw.mul_(decay)
                    T.addmm_(hp_t, v, alpha=a_pos).addmm_(hn_t, vn, alpha=a_neg)
    T[H, V] = 0.0
    rbm.W.copy_(T[:H, :V])
    rbm.b_h.copy_(T[:H, V])
    rbm.b_v.copy_(T[H, :V])
    if persistent:
        rbm.chains = vn[:, :V].clone()
    if velocity is None:
        velocity = torch.zeros_like(T)
    return velocity
