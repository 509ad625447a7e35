"""A scikit-learn Bernoulli RBM backed by genlab's torch RBM (`genlab.nn.rbm`).

`GenlabBernoulliRBM` is a drop-in for ``sklearn.neural_network.BernoulliRBM`` (same parameters
plus k, persistent, momentum, weight_decay and device; same learned attributes; the same
`score_samples` definition) that trains in float32 with a fused torch loop (`genlab.nn.rbm.fit_cd`).

    from sklearn.pipeline import Pipeline
    from sklearn.linear_model import LogisticRegression
    clf = Pipeline([("rbm", GenlabBernoulliRBM(n_components=100, random_state=0)),
                    ("logreg", LogisticRegression(max_iter=1000))]).fit(X01, y)
"""
from __future__ import annotations

import numbers
import time

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted

from genlab.nn.rbm import RBM, fit_cd, pseudo_log_likelihood

try:  # scikit-learn >= 1.6
    from sklearn.utils.validation import validate_data as _validate_data
except ImportError:  # pragma: no cover - older scikit-learn
    def _validate_data(estimator, X, reset=True, **kwargs):
        return estimator._validate_data(X, reset=reset, **kwargs)

__all__ = ["GenlabBernoulliRBM"]

_FLOATS = (np.float64, np.float32)


class GenlabBernoulliRBM(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """Bernoulli restricted Boltzmann machine trained by CD-k or PCD-k (SGD), on torch.

    Parameters
    ----------
    n_components : int, default=256
        Number of binary hidden units.
    learning_rate : float, default=0.1
        SGD step on the batch-mean gradient (scikit-learn's convention: its update divides the
        summed statistics by the batch size).
    batch_size : int, default=10
        Examples per mini-batch; an epoch splits the data into ceil(n / batch_size) nearly
        equal batches, reshuffled every epoch (scikit-learn does not shuffle).
    n_iter : int, default=10
        Number of epochs over the training data.
    k : int, default=1
        Gibbs steps per negative phase.
    persistent : bool, default=True
        PCD (persistent chains, as scikit-learn's SML, `batch_size` chains started from data)
        if True, else CD-k (chains start at the batch).
    momentum : float, default=0.0
        SGD momentum (torch convention: buf = momentum * buf + grad).
    weight_decay : float, default=0.0
        L2 penalty on the weights only (not the biases).
    random_state : int, RandomState instance or None, default=None
        Seeds the initial weights (drawn exactly as scikit-learn draws them), the torch sampling
        and the unit flipped by `score_samples` (the same draw as scikit-learn's).
    verbose : int, default=0
        Print the pseudo-likelihood after each epoch.
    device : str, default="cpu"
        Torch device for training and inference ("cuda" if available).

    Attributes
    ----------
    components_ : ndarray of shape (n_components, n_features), float32
        Weight matrix W; row j is hidden unit j's filter.
    intercept_hidden_ : ndarray of shape (n_components,), float32
    intercept_visible_ : ndarray of shape (n_features,), float32
        Initialised to log(p / (1 - p)) of the first data's mean (Hinton's guide; scikit-learn
        starts at 0).
    chains_ : ndarray of shape (n_chains, n_features), float32
        PCD fantasy particles (visible states); empty when `persistent=False`.
    velocity_ : ndarray of shape (n_components + 1, n_features + 1), float32
        Momentum buffer for [[W, b_h], [b_v, 0]].
    n_iter_ : int
        Epochs run by the last `fit`.
    n_features_in_ : int
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Only when X has string feature names.

    Notes
    -----
    Like scikit-learn's, `partial_fit` makes ONE update with the whole given X as the mini-batch
    (initialising the model on its first call); it does not split X into `batch_size` batches.
    """

    def __init__(
        self,
        n_components=256,
        *,
        learning_rate=0.1,
        batch_size=10,
        n_iter=10,
        k=1,
        persistent=True,
        momentum=0.0,
        weight_decay=0.0,
        random_state=None,
        verbose=0,
        device="cpu",
    ):
        self.n_components = n_components
        self.learning_rate = learning_rate
        self.batch_size = batch_size
        self.n_iter = n_iter
        self.k = k
        self.persistent = persistent
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.random_state = random_state
        self.verbose = verbose
        self.device = device

    # ------------------------------------------------------------------ helpers
    def _check_params(self):
        def positive_int(name):
            val = getattr(self, name)
            if not isinstance(val, numbers.Integral) or isinstance(val, bool) or val < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {val!r}")

        for name in ("n_components", "batch_size", "k"):
            positive_int(name)
        if not isinstance(self.n_iter, numbers.Integral) or self.n_iter < 0:
            raise ValueError(f"n_iter must be an integer >= 0, got {self.n_iter!r}")
        if not (isinstance(self.learning_rate, numbers.Real) and self.learning_rate > 0):
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate!r}")
        if not (isinstance(self.momentum, numbers.Real) and 0 <= self.momentum < 1):
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum!r}")
        if not (isinstance(self.weight_decay, numbers.Real) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        try:
            return torch.device(self.device)
        except (RuntimeError, TypeError) as e:
            raise ValueError(f"device {self.device!r} is not a torch device: {e}") from None

    def _generator(self, rng, device):
        seed = int(rng.randint(np.iinfo(np.int32).max))
        return torch.Generator(device=device).manual_seed(seed)

    def _init_params(self, X, rng):
        n_features = X.shape[1]
        # drawn exactly like scikit-learn's BernoulliRBM, so the same random_state starts alike
        self.components_ = np.asarray(
            rng.normal(0, 0.01, (self.n_components, n_features)), dtype=np.float32
        )
        self.intercept_hidden_ = np.zeros(self.n_components, dtype=np.float32)
        p = np.clip(np.asarray(X, dtype=np.float64).mean(axis=0), 1e-3, 1 - 1e-3)
        self.intercept_visible_ = np.log(p / (1 - p)).astype(np.float32)
        self.chains_ = np.zeros((0, n_features), dtype=np.float32)
        self.velocity_ = np.zeros((self.n_components + 1, n_features + 1), dtype=np.float32)
        self._n_features_out = self.n_components

    def _torch_rbm(self, device, dtype=torch.float32) -> RBM:
        """The fitted model as a genlab RBM (copies of the learned arrays)."""
        rbm = RBM(self.components_.shape[1], self.components_.shape[0],
                  n_chains=int(self.batch_size))
        with torch.no_grad():
            rbm.W.copy_(torch.tensor(self.components_))
            rbm.b_h.copy_(torch.tensor(self.intercept_hidden_))
            rbm.b_v.copy_(torch.tensor(self.intercept_visible_))
            rbm.chains = torch.tensor(self.chains_)
        return rbm.to(device=device, dtype=dtype)

    def _store(self, rbm: RBM, velocity):
        self.components_ = rbm.W.detach().cpu().float().numpy().copy()
        self.intercept_hidden_ = rbm.b_h.detach().cpu().float().numpy().copy()
        self.intercept_visible_ = rbm.b_v.detach().cpu().float().numpy().copy()
        self.chains_ = rbm.chains.detach().cpu().float().numpy().copy()
        self.velocity_ = velocity.detach().cpu().float().numpy().copy()

    def _train(self, X, rng, epochs, batch_size, shuffle):
        device = self._check_params()
        rbm = self._torch_rbm(device)
        gen = self._generator(rng, device)
        xt = torch.tensor(np.asarray(X, dtype=np.float32), device=device)
        velocity = torch.tensor(self.velocity_, device=device)
        kw = {"batch_size": batch_size, "lr": float(self.learning_rate), "k": int(self.k),
              "persistent": bool(self.persistent), "momentum": float(self.momentum),
              "weight_decay": float(self.weight_decay), "shuffle": shuffle, "generator": gen}
        if not self.verbose:
            velocity = fit_cd(rbm, xt, epochs=epochs, velocity=velocity, **kw)
        else:
            begin = time.time()
            for it in range(1, epochs + 1):
                velocity = fit_cd(rbm, xt, epochs=1, velocity=velocity, **kw)
                end = time.time()
                pll = pseudo_log_likelihood(rbm, xt, generator=gen, binarize=False).mean()
                print(f"[{type(self).__name__}] Iteration {it}, "
                      f"pseudo-likelihood = {pll.item():.2f}, time = {end - begin:.2f}s")
                begin = end
        self._store(rbm, velocity)

    # ------------------------------------------------------------------ API
    def fit(self, X, y=None):
        """Fit the model to X of shape (n_samples, n_features), values in [0, 1]; returns self."""
        X = _validate_data(self, X, dtype=_FLOATS)
        self._check_params()
        rng = check_random_state(self.random_state)
        self._init_params(X, rng)
        self._train(X, rng, int(self.n_iter), int(self.batch_size), shuffle=True)
        self.n_iter_ = int(self.n_iter)
        return self

    def partial_fit(self, X, y=None):
        """One CD/PCD update with all of X (n_samples, n_features) as the mini-batch.

        The first call initialises the model (weights from `random_state`, visible biases from
        this X's mean); later calls continue from the learned state, chains and momentum.
        Returns self.
        """
        first = not hasattr(self, "components_")
        X = _validate_data(self, X, dtype=_FLOATS, reset=first)
        self._check_params()
        if not hasattr(self, "random_state_"):
            self.random_state_ = check_random_state(self.random_state)
        if first:
            self._init_params(X, self.random_state_)
        self._train(X, self.random_state_, 1, max(1, X.shape[0]), shuffle=False)
        return self

    def transform(self, X):
        """Deterministic features P(h = 1 | v), (n_samples, n_components), in X's float dtype."""
        check_is_fitted(self)
        X = _validate_data(self, X, dtype=_FLOATS, reset=False)
        dtype = torch.float64 if X.dtype == np.float64 else torch.float32
        rbm = self._torch_rbm(self._check_params(), dtype)
        with torch.no_grad():
            h = rbm.encode(torch.tensor(X, dtype=dtype, device=rbm.W.device))
        return h.cpu().numpy().astype(X.dtype, copy=False)

    def score_samples(self, X):
        """Pseudo-log-likelihood of each sample, (n_samples,): scikit-learn's definition.

        One visible unit per sample, drawn with ``check_random_state(random_state).randint``
        exactly as scikit-learn draws it, is flipped to 1 - v_i (no binarisation, as
        scikit-learn: pass binary X), and V * log sigmoid(F(v_flipped) - F(v)) is returned.
        Deterministic only for an int `random_state`. Computed in float64.
        """
        check_is_fitted(self)
        v = _validate_data(self, X, dtype=_FLOATS, reset=False)
        rng = check_random_state(self.random_state)
        ind = rng.randint(0, v.shape[1], v.shape[0])
        rbm = self._torch_rbm(self._check_params(), torch.float64)
        vt = torch.tensor(v, dtype=torch.float64, device=rbm.W.device)
        idx = torch.as_tensor(ind, device=rbm.W.device)
        pll = pseudo_log_likelihood(rbm, vt, binarize=False, flip_index=idx)
        return pll.cpu().numpy()

    def gibbs(self, v):
        """One Gibbs step v -> h ~ p(h|v) -> v' ~ p(v|h); v' as a bool array, as scikit-learn."""
        check_is_fitted(self)
        v = _validate_data(self, v, dtype=_FLOATS, reset=False)
        if not hasattr(self, "random_state_"):
            self.random_state_ = check_random_state(self.random_state)
        device = self._check_params()
        rbm = self._torch_rbm(device)
        gen = self._generator(self.random_state_, device)
        out = rbm.gibbs_k(torch.tensor(v, dtype=torch.float32, device=device), 1, gen)
        return out.cpu().numpy() > 0.5

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags
