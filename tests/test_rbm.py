"""Maths tests for genlab.nn.rbm / genlab.nn.dbn and the scikit-learn wrapper genlab.tools.rbm_sklearn."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy import special
from sklearn.datasets import load_digits

from genlab.nn.dbn import DBNStack, sigmoid_mlp
from genlab.nn.rbm import RBM, fit_cd, free_energy_gap, momentum_at, pseudo_log_likelihood
from genlab.nn.rbm_ais import ais_betas, ais_log_likelihood, ais_log_partition
from genlab.tools.rbm_sklearn import GenlabBernoulliRBM


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny matmuls: one thread is faster, and on a shared (loaded) machine multithreaded BLAS/
    OpenMP makes these tests ~50x slower. Restored afterwards."""
    from threadpoolctl import threadpool_limits

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1):
        yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def digits():
    d = load_digits()
    x01 = (d.data / 16.0).astype(np.float32)
    return x01, (x01 > 0.5).astype(np.float32), d.target


def _sigmoid(x):
    return special.expit(x)


def _random_rbm(n_v, n_h, seed=0, scale=1.0, **kw):
    g = torch.Generator().manual_seed(seed)
    rbm = RBM(n_v, n_h, **kw).double()
    with torch.no_grad():
        rbm.W.copy_(torch.randn(n_h, n_v, generator=g, dtype=torch.float64) * scale)
        rbm.b_v.copy_(torch.randn(n_v, generator=g, dtype=torch.float64) * scale)
        rbm.b_h.copy_(torch.randn(n_h, generator=g, dtype=torch.float64) * scale)
    return rbm


def _configs(n):
    return np.array(list(itertools.product([0.0, 1.0], repeat=n)))


def _saturated_rbm():
    """3 visible, 2 hidden, every pre-activation of a binary state has |x| >= 20: sampling is
    deterministic, so a sampled update can be compared with a hand computation."""
    rbm = RBM(3, 2)
    with torch.no_grad():
        rbm.W.copy_(torch.tensor([[40.0, -80.0, 160.0], [-320.0, 640.0, -1280.0]]))
        rbm.b_h.copy_(torch.tensor([20.0, -20.0]))
        rbm.b_v.copy_(torch.tensor([20.0, -20.0, 20.0]))
    return rbm


# ---------------------------------------------------------------------------- CD maths
def test_cd1_gradient_equals_hand_computed_update():
    rbm = _random_rbm(3, 2, seed=1).float()
    v_data = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    v_model = torch.tensor([[0.0, 1.0, 0.0], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0]])  # a different count
    rbm.cd_loss(v_data, v_model).backward()
    W, b_h = (p.detach().double().numpy() for p in (rbm.W, rbm.b_h))
    vd, vm = v_data.double().numpy(), v_model.double().numpy()
    hd, hm = _sigmoid(vd @ W.T + b_h), _sigmoid(vm @ W.T + b_h)
    dW = hd.T @ vd / len(vd) - hm.T @ vm / len(vm)  # <h v>_data - <h v>_model, (H, V)
    np.testing.assert_allclose(-rbm.W.grad.numpy(), dW, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(-rbm.b_h.grad.numpy(), hd.mean(0) - hm.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(-rbm.b_v.grad.numpy(), vd.mean(0) - vm.mean(0), rtol=1e-5, atol=1e-6)
    # ... and any optimizer applies it: one SGD step is W + lr * dW
    opt = torch.optim.SGD(rbm.parameters(), lr=0.5)
    opt.step()
    np.testing.assert_allclose(rbm.W.detach().numpy(), W + 0.5 * dW, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("persistent", [False, True])
@pytest.mark.parametrize("k,batch_size", [(1, 5), (2, 2)])
def test_fit_cd_equals_optimizer_on_cd_loss(persistent, k, batch_size):
    """The fused loop is SGD(momentum) on cd_loss with W-only weight decay, for CD-k and PCD-k,
    with batches of unequal sizes (5 rows in 2s: [2, 2, 1]) and chains of another size."""
    x = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0], [1.0, 1.0, 0.0], [0.0, 0.0, 0.0],
                      [1.0, 1.0, 1.0]])
    sizes = [5] if batch_size == 5 else [2, 2, 1]
    lr, mom, wd = 0.1, 0.5, 0.01
    ref = _saturated_rbm()
    opt = torch.optim.SGD([{"params": [ref.W], "weight_decay": wd},
                           {"params": [ref.b_v, ref.b_h], "weight_decay": 0.0}],
                          lr=lr, momentum=mom)
    for _ in range(3):
        for xb in x.split(sizes):
            v_neg = ref.negative_phase(xb, k=k, persistent=persistent)
            opt.zero_grad()
            ref.cd_loss(xb, v_neg).backward()
            opt.step()
    fast = _saturated_rbm()
    fit_cd(fast, x, epochs=3, batch_size=batch_size, lr=lr, k=k, persistent=persistent,
           momentum=mom, weight_decay=wd, shuffle=False)
    for a, b in [(fast.W, ref.W), (fast.b_v, ref.b_v), (fast.b_h, ref.b_h)]:
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    if persistent:
        torch.testing.assert_close(fast.chains, ref.chains)


def test_fit_cd_learns_like_module_path(digits):
    """On real data (non-deterministic sampling) both routes reach similar pseudo-likelihoods."""
    _, xb, _ = digits
    x = torch.from_numpy(xb[:600])
    out = []
    for fused in (True, False):
        torch.manual_seed(0)
        rbm = RBM(64, 32)
        rbm.init_visible_bias(x)
        g = torch.Generator().manual_seed(1)
        if fused:
            fit_cd(rbm, x, epochs=5, batch_size=20, lr=0.1, k=1, persistent=True, generator=g)
        else:
            opt = torch.optim.SGD(rbm.parameters(), lr=0.1)
            for _ in range(5):
                for xb_ in x[torch.randperm(len(x), generator=g)].split(20):
                    opt.zero_grad()
                    rbm.cd_loss(xb_, rbm.negative_phase(xb_, 1, True, g)).backward()
                    opt.step()
        out.append(pseudo_log_likelihood(rbm, x, exact=True).mean().item())
    assert abs(out[0] - out[1]) < 1.5, out


def test_pcd_chains_persist_advance_and_checkpoint():
    rbm = RBM(6, 4, n_chains=5)
    g = torch.Generator().manual_seed(0)
    x = torch.bernoulli(torch.full((8, 6), 0.5), generator=g)
    assert rbm.chains.shape == (0, 6)
    assert "chains" in rbm.state_dict()
    rbm.negative_phase(x, k=1, persistent=True, generator=g)
    assert rbm.chains.shape == (5, 6)
    before = rbm.chains.clone()
    changed = False
    for _ in range(5):
        rbm.negative_phase(x, k=1, persistent=True, generator=g)
        changed |= not torch.equal(before, rbm.chains)
    assert changed, "PCD chains never moved"
    sd = rbm.state_dict()
    torch.testing.assert_close(sd["chains"], rbm.chains)
    fresh = RBM(6, 4, n_chains=5)
    fresh.load_state_dict(sd)  # the empty buffer is resized on load
    torch.testing.assert_close(fresh.chains, rbm.chains)
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    a = rbm.negative_phase(x, 2, True, g1)
    b = fresh.negative_phase(x, 2, True, g2)
    torch.testing.assert_close(a, b)  # the chains continue identically after a round trip
    # CD does not touch the chains
    c = fresh.chains.clone()
    fresh.negative_phase(x, 1, False, g1)
    torch.testing.assert_close(fresh.chains, c)


# ---------------------------------------------------------------------------- exact maths
@pytest.mark.parametrize("n_v,n_h", [(3, 2), (2, 4)])  # enumerates over h, then over v
def test_free_energy_conditionals_and_log_z_vs_brute_force(n_v, n_h):
    rbm = _random_rbm(n_v, n_h, seed=3)
    W, b_v, b_h = (p.detach().numpy() for p in (rbm.W, rbm.b_v, rbm.b_h))
    V, Hc = _configs(n_v), _configs(n_h)
    neg_e = V @ b_v[:, None] + (Hc @ b_h)[None, :] + V @ W.T @ Hc.T  # -E(v, h), (2^V, 2^H)
    joint = np.exp(neg_e)
    Z = joint.sum()
    np.testing.assert_allclose(rbm.log_partition_exact().item(), np.log(Z), rtol=1e-10)
    fe = rbm.free_energy(torch.from_numpy(V)).detach().numpy()
    np.testing.assert_allclose(np.exp(-fe), joint.sum(1), rtol=1e-10)  # exp(-F) = sum_h e^{-E}
    p_v = np.exp(-fe) / np.exp(rbm.log_partition_exact().item())
    np.testing.assert_allclose(p_v, joint.sum(1) / Z, rtol=1e-10)
    np.testing.assert_allclose(p_v.sum(), 1.0, rtol=1e-10)
    np.testing.assert_allclose(np.exp(rbm.log_likelihood_exact(torch.from_numpy(V)).numpy()),
                               p_v, rtol=1e-9)
    # conditionals from the joint
    p_h1_v = (joint[:, :, None] * Hc[None]).sum(1) / joint.sum(1, keepdims=True)
    np.testing.assert_allclose(rbm.p_h_given_v(torch.from_numpy(V)).detach().numpy(), p_h1_v,
                               rtol=1e-10)
    p_v1_h = (joint.T[:, :, None] * V[None]).sum(1) / joint.sum(0)[:, None]
    np.testing.assert_allclose(rbm.p_v_given_h(torch.from_numpy(Hc)).detach().numpy(), p_v1_h,
                               rtol=1e-10)


def test_gaussian_rbm_log_z_and_conditionals_vs_numerical_integration():
    rbm = _random_rbm(2, 3, seed=5, scale=0.7, visible="gaussian", learn_sigma=True)
    with torch.no_grad():
        rbm.log_sigma.copy_(torch.tensor([math.log(0.7), math.log(1.3)], dtype=torch.float64))
    grid = torch.linspace(-14, 14, 1401, dtype=torch.float64)
    dv = (grid[1] - grid[0]).item()
    vv = torch.stack(torch.meshgrid(grid, grid, indexing="ij"), -1).reshape(-1, 2)
    with torch.no_grad():
        log_z_num = torch.logsumexp(-rbm.free_energy(vv), 0).item() + 2 * math.log(dv)
    assert abs(rbm.log_partition_exact().item() - log_z_num) < 1e-6
    # E[v | h] from the joint exp(-E(v, h)), and p(h | v) by enumerating h
    W, b_v, b_h, s = (t.detach() for t in (rbm.W, rbm.b_v, rbm.b_h, rbm.sigma))
    Hc = torch.from_numpy(_configs(3))
    for h in Hc:
        neg_e = -(0.5 * ((vv - b_v) / s) ** 2).sum(-1) + h @ b_h + (vv / s) @ W.T @ h
        w = torch.softmax(neg_e, 0)
        torch.testing.assert_close((w[:, None] * vv).sum(0), rbm.p_v_given_h(h[None])[0],
                                   rtol=1e-6, atol=1e-6)
    v = torch.tensor([[0.3, -1.2]], dtype=torch.float64)
    neg_e = -(0.5 * ((v - b_v) / s) ** 2).sum(-1) + Hc @ b_h + Hc @ (W @ (v[0] / s))
    post = torch.softmax(neg_e, 0)
    torch.testing.assert_close((post[:, None] * Hc).sum(0), rbm.p_h_given_v(v)[0])
    # learned sigma receives a CD gradient
    rbm.cd_loss(v, rbm.negative_phase(v, 1)).backward()
    assert rbm.log_sigma.grad is not None and torch.isfinite(rbm.log_sigma.grad).all()


def test_ais_matches_exact_log_z_on_trained_rbm(digits):
    _, xb, _ = digits
    x = torch.from_numpy(xb)
    torch.manual_seed(0)
    rbm = RBM(64, 16)
    rbm.init_visible_bias(x)
    fit_cd(rbm, x, epochs=20, batch_size=20, lr=0.05, generator=torch.Generator().manual_seed(0))
    assert rbm.W.norm() > 5  # trained, far from the base-rate model
    exact = rbm.log_partition_exact().item()
    res = ais_log_partition(rbm, n_runs=100, n_betas=1000, data=x,
                            generator=torch.Generator().manual_seed(1))
    assert abs(res["log_z"].item() - exact) < 0.1, (res["log_z"].item(), exact)
    assert res["log_weights"].shape == (100,)
    assert res["log_z_lower"] <= res["log_z"] <= res["log_z_upper"]
    assert 0 < res["log_z_std"] < 0.1
    assert abs(exact - res["log_z_base"].item()) > 1.0  # not trivial
    ll = ais_log_likelihood(rbm, x[:500], n_runs=100, n_betas=1000, data=x,
                            generator=torch.Generator().manual_seed(2))
    assert abs(ll["log_likelihood"].item() - rbm.log_likelihood_exact(x[:500]).mean().item()) < 0.1
    betas = ais_betas(1000)
    assert betas[0] == 0 and betas[-1] == 1 and (betas[1:] > betas[:-1]).all()


def test_ais_gaussian_and_zero_base():
    rbm = _random_rbm(5, 6, seed=2, scale=0.5, visible="gaussian")
    exact = rbm.log_partition_exact().item()
    res = ais_log_partition(rbm, n_runs=200, n_betas=1000, base="zero",
                            generator=torch.Generator().manual_seed(0))
    assert abs(res["log_z"].item() - exact) < 0.1
    rbm_b = _random_rbm(10, 8, seed=4, scale=0.5)
    res = ais_log_partition(rbm_b, n_runs=100, n_betas=500, base="data-biases",
                            base_visible_bias=torch.zeros(10),
                            generator=torch.Generator().manual_seed(0))
    assert abs(res["log_z"].item() - rbm_b.log_partition_exact().item()) < 0.1
    with pytest.raises(ValueError):
        ais_log_partition(rbm_b)  # data-biases without data


# ---------------------------------------------------------------------------- monitors
def test_pseudo_likelihood_matches_sklearn(digits):
    from sklearn.neural_network import BernoulliRBM

    _, xb, _ = digits
    xd = xb.astype(np.float64)
    sk = BernoulliRBM(n_components=32, n_iter=3, learning_rate=0.05, random_state=0).fit(xd)
    rbm = RBM(64, 32).double()
    with torch.no_grad():
        rbm.W.copy_(torch.from_numpy(sk.components_))
        rbm.b_h.copy_(torch.from_numpy(sk.intercept_hidden_))
        rbm.b_v.copy_(torch.from_numpy(sk.intercept_visible_))
    xt = torch.from_numpy(xd)
    # 1. the same flipped unit gives sklearn's number
    ind = np.random.RandomState(3).randint(0, 64, len(xd))
    ours = pseudo_log_likelihood(rbm, xt, flip_index=torch.from_numpy(ind)).numpy()
    sk.random_state = 3
    np.testing.assert_allclose(ours, sk.score_samples(xd), rtol=1e-10, atol=1e-10)
    # 2. exact=True is sklearn's formula averaged over every unit (computed with its free energy)
    fe = sk._free_energy(xd)
    per_unit = []
    for i in range(64):
        xf = xd.copy()
        xf[:, i] = 1 - xf[:, i]
        per_unit.append(-64 * np.logaddexp(0, -(sk._free_energy(xf) - fe)))
    expected = np.mean(per_unit, axis=0)
    np.testing.assert_allclose(pseudo_log_likelihood(rbm, xt, exact=True).numpy(), expected,
                               rtol=1e-9)
    # 3. ... and the mean of sklearn's stochastic score over many draws converges to it
    draws = []
    for seed in range(200):
        sk.random_state = seed
        draws.append(sk.score_samples(xd).mean())
    assert abs(np.mean(draws) - expected.mean()) < 0.02 * abs(expected.mean())
    # a float32 RBM on [0, 1] input: binarize=True thresholds first
    x01 = torch.from_numpy(digits[0])
    a = pseudo_log_likelihood(rbm.float(), x01, exact=True)
    b = pseudo_log_likelihood(rbm.float(), torch.from_numpy(xb), exact=True)
    torch.testing.assert_close(a, b)


def test_free_energy_gap_detects_overfitting(digits):
    _, xb, _ = digits
    x = torch.from_numpy(xb)
    train, held = x[:40], x[1000:1040]
    torch.manual_seed(0)
    rbm = RBM(64, 100)
    assert abs(free_energy_gap(rbm, train, train).item()) < 1e-6
    g = torch.Generator().manual_seed(0)
    fit_cd(rbm, train, epochs=300, batch_size=10, lr=0.1, generator=g)
    assert free_energy_gap(rbm, train, held).item() > 5.0


def test_sparsity_penalty_and_momentum_schedule():
    assert momentum_at(0, switch_step=5) == 0.5 and momentum_at(5, switch_step=5) == 0.9
    torch.manual_seed(0)
    rbm = RBM(20, 10)
    with torch.no_grad():
        rbm.b_h.fill_(1.0)  # mean activation ~0.73
    x = torch.bernoulli(torch.full((32, 20), 0.3))
    for kind in ("squared", "cross_entropy"):
        r = RBM(20, 10)
        r.load_state_dict(rbm.state_dict())
        q0 = r.p_h_given_v(x).mean().item()
        opt = torch.optim.SGD(r.parameters(), lr=0.5)
        for _ in range(20):
            opt.zero_grad()
            r.sparsity_penalty(x, target=0.1, cost=1.0, kind=kind).backward()
            opt.step()
        assert r.p_h_given_v(x).mean().item() < q0 - 0.1


def test_encode_is_deterministic_and_accepts_images():
    rbm = RBM(64, 8)
    x = torch.rand(5, 1, 8, 8)
    torch.testing.assert_close(rbm.encode(x), rbm.encode(x.flatten(1)))
    torch.testing.assert_close(rbm.encode(x), rbm(x))
    assert rbm.encode(x).shape == (5, rbm.out_features)


# ---------------------------------------------------------------------------- DBN
def test_dbn_encoder_exports_equal_encode():
    torch.manual_seed(0)
    for visible in ("bernoulli", "gaussian"):
        dbn = DBNStack([64, 20, 10, 5], visible=visible, learn_sigma=visible == "gaussian")
        with torch.no_grad():
            for layer in dbn.layers:
                layer.W.normal_(0, 0.3)
                layer.b_h.normal_(0, 0.3)
                layer.b_v.normal_(0, 0.3)
            if visible == "gaussian":
                dbn.layers[0].log_sigma.uniform_(-0.5, 0.5)
        x = torch.rand(7, 1, 8, 8)
        enc = dbn.to_encoder([1, 8, 8])
        torch.testing.assert_close(enc(x), dbn.encode(x))
        assert isinstance(enc, torch.nn.Sequential)
        mlp = sigmoid_mlp([64, 20, 10, 5], [1, 8, 8])
        assert list(mlp.state_dict()) == list(enc.state_dict())
        mlp.load_state_dict(enc.state_dict())
        torch.testing.assert_close(mlp(x), dbn.encode(x))
        ae = dbn.to_autoencoder([1, 8, 8])
        assert ae(x).shape == x.shape
        torch.testing.assert_close(ae.encoder(x), dbn.encode(x))
        dec_lin = [m for m in ae.decoder if isinstance(m, torch.nn.Linear)]
        torch.testing.assert_close(dec_lin[0].weight, dbn.layers[-1].W.t())
        assert dec_lin[0].weight.data_ptr() != dbn.layers[-1].W.data_ptr()  # separate parameters
    with pytest.raises(ValueError):
        sigmoid_mlp([64, 10], [1, 8, 9])


def test_dbn_greedy_training_reduces_each_layers_reconstruction_error(digits):
    x01, _, _ = digits
    x = torch.from_numpy(x01)
    torch.manual_seed(0)
    dbn = DBNStack([64, 48, 24])
    g = torch.Generator().manual_seed(0)
    for i, layer in enumerate(dbn.layers):
        with torch.no_grad():
            below = dbn.up(x, upto=i)  # the probabilities of the layer below
        layer.init_visible_bias(below)
        before = layer.reconstruction_error(below).item()
        opt = torch.optim.SGD(layer.parameters(), lr=0.1, momentum=0.5)
        for _ in range(300):
            batch = below[torch.randint(0, len(below), (32,), generator=g)]
            opt.zero_grad()
            layer.cd_loss(batch, layer.negative_phase(batch, 1, False, g)).backward()
            opt.step()
        after = layer.reconstruction_error(below).item()
        assert after < 0.7 * before, (i, before, after)
    s = dbn.sample(6, gibbs_steps=20, generator=g)
    assert s.shape == (6, 64) and ((s >= 0) & (s <= 1)).all()
    s2 = dbn.sample(4, gibbs_steps=5, generator=g, init=x[:2])
    assert s2.shape == (4, 64)


# ---------------------------------------------------------------------------- sklearn wrapper
def test_sklearn_wrapper_in_pipeline(digits):
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import Pipeline

    x01, _, y = digits
    xtr, xte, ytr, yte = train_test_split(x01, y, test_size=0.3, random_state=0, stratify=y)
    pipe = Pipeline([
        ("rbm", GenlabBernoulliRBM(n_components=100, learning_rate=0.06, n_iter=20,
                                   random_state=0)),
        ("logreg", LogisticRegression(max_iter=3000, C=100.0)),
    ]).fit(xtr, ytr)
    assert pipe.score(xte, yte) > 0.92  # 0.946 at the time of writing (raw pixels: 0.97)
    rbm = pipe.named_steps["rbm"]
    assert rbm.components_.shape == (100, 64) and rbm.n_features_in_ == 64
    h = rbm.transform(xte)
    np.testing.assert_array_equal(h, rbm.transform(xte))  # deterministic
    assert h.dtype == np.float32 and h.min() >= 0 and h.max() <= 1
    assert rbm.gibbs(xte[:5]).dtype == bool
    assert np.isfinite(rbm.score_samples(xte)).all()


def test_sklearn_wrapper_score_samples_equals_sklearns(digits):
    from sklearn.neural_network import BernoulliRBM

    _, xb, _ = digits
    xd = xb.astype(np.float64)
    sk = BernoulliRBM(n_components=16, n_iter=2, random_state=4).fit(xd)
    ours = GenlabBernoulliRBM(n_components=16, n_iter=1, random_state=4).fit(xd)
    ours.components_ = sk.components_.astype(np.float32)
    ours.intercept_hidden_ = sk.intercept_hidden_.astype(np.float32)
    ours.intercept_visible_ = sk.intercept_visible_.astype(np.float32)
    sk.components_ = ours.components_.astype(np.float64)  # same float32-rounded parameters
    sk.intercept_hidden_ = ours.intercept_hidden_.astype(np.float64)
    sk.intercept_visible_ = ours.intercept_visible_.astype(np.float64)
    np.testing.assert_allclose(ours.score_samples(xd), sk.score_samples(xd), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(ours.transform(xd), sk.transform(xd), rtol=1e-9, atol=1e-12)


def test_sklearn_partial_fit_initialises_once_then_makes_one_update_with_all_of_x():
    x = np.array([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0], [1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    est = GenlabBernoulliRBM(n_components=2, learning_rate=0.1, batch_size=4, persistent=False,
                             random_state=0)
    assert not hasattr(est, "components_")
    assert est.partial_fit(x) is est  # first call initialises (and updates once)
    assert est.components_.shape == (2, 3) and est.n_features_in_ == 3
    # put the model in a deterministic (saturated) state and check the next call is exactly one
    # SGD step on the CD-1 gradient with the whole X as the mini-batch, not a re-initialisation
    sat = _saturated_rbm()
    est.components_ = sat.W.detach().numpy().copy()
    est.intercept_hidden_ = sat.b_h.detach().numpy().copy()
    est.intercept_visible_ = sat.b_v.detach().numpy().copy()
    W, b_h, b_v = est.components_.astype(np.float64), est.intercept_hidden_, est.intercept_visible_
    hd = _sigmoid(x @ W.T + b_h)
    hs = (hd > 0.5).astype(float)
    vm = (_sigmoid(hs @ W + b_v) > 0.5).astype(float)
    hm = _sigmoid(vm @ W.T + b_h)
    expected_W = W + 0.1 * (hd.T @ x - hm.T @ vm) / 4
    est.partial_fit(x)
    np.testing.assert_allclose(est.components_, expected_W, rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(est.intercept_visible_, b_v + 0.1 * (x.mean(0) - vm.mean(0)),
                               rtol=1e-6, atol=1e-5)
    with pytest.raises(ValueError):
        est.partial_fit(np.ones((2, 5)))  # the feature count is fixed by the first call


def test_sklearn_partial_fit_stream_learns(digits):
    _, xb, _ = digits
    est = GenlabBernoulliRBM(n_components=32, learning_rate=0.1, batch_size=20, random_state=0)
    est.partial_fit(xb[:20])
    start = est.score_samples(xb).mean()
    for _ in range(3):
        for s in range(0, len(xb), 20):
            est.partial_fit(xb[s:s + 20])
    assert est.chains_.shape == (20, 64)
    assert est.score_samples(xb).mean() > start + 3


def _expected_failed(estimator):
    reason = ("score_samples flips one random unit per row position, so results depend on "
              "row order and batch composition (as scikit-learn's BernoulliRBM, which is "
              "marked the same way)")
    return {"check_methods_sample_order_invariance": reason,
            "check_methods_subset_invariance": reason}


try:
    from sklearn.utils.estimator_checks import parametrize_with_checks

    _checks = parametrize_with_checks(
        [GenlabBernoulliRBM(n_components=8, n_iter=5, batch_size=10, random_state=0)],
        expected_failed_checks=_expected_failed,
    )
except TypeError:  # scikit-learn < 1.6 has no expected_failed_checks
    _checks = pytest.mark.skip(reason="needs scikit-learn >= 1.6")


@_checks
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)
