"""The "rbm" and "dbn" families through the shared trainer: greedy training fits each layer in
turn, kill-and-resume keeps the PCD chains and continues identically, the export equals encode,
the monitors and renders are there (the maths itself is tested in test_rbm.py)."""
from __future__ import annotations

import copy

import pytest
import torch

from genlab import load_encoder
from genlab.core.recipe import from_mapping
from genlab.engine.trainer import Trainer
from genlab.nn.dbn import phase_ends

SGD = {"optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": False, "grad_clip": None,
       "weight_decay": 1e-4, "device": "cpu", "batch_size": 32, "eval_batches": 2}
QUIET_LOG = {"every": 10, "eval_every": 0, "render_every": 0, "checkpoint_every": 0,
             "histograms": False, "render_examples": 16}


def recipe(family="dbn", steps=12, model=None, train=None, log=None):
    base = {"layers": [24, 12]} if family == "dbn" else {"hidden": 16}
    return from_mapping({
        "family": family, "seed": 0, "data": {"name": "digits"},
        "model": {**base, "ais_runs": 0, "sample_gibbs_steps": 10, **(model or {})},
        "train": {**SGD, "steps": steps, **(train or {})}, "log": {**QUIET_LOG, **(log or {})}})


def test_phase_ends_scale_to_the_run():
    assert phase_ends([3000, 2500, 500], 6000) == [3000, 5500, 6000]
    assert phase_ends([3000, 2500, 500], 3) == [1, 2, 3]  # a smoke run still visits every phase
    assert phase_ends([1, 1], 10) == [5, 10]


def _weights(model, layer):
    return model.stack.layers[layer].W.detach().clone()


def test_greedy_training_fits_each_layer_in_turn(runs):
    n = 150  # steps per layer
    r = recipe(steps=2 * n, model={"steps_per_layer": [n, n], "init_std": 0.1, "momentum_switch": 10},
               train={"momentum": 0.5})
    t = Trainer(r, out_root=runs, quiet=True)
    val = {"x": t._batch("val", torch.arange(64))["x"]}
    m = t.model
    w0, w1 = _weights(m, 0), _weights(m, 1)
    # Each layer's error is measured from its phase's first step (which sets its visible biases
    # to the base rate of its input) to the phase's end.
    t.run(stop_at=1)
    start0 = m.evaluate(val)["recon_layer0"]
    t.run(stop_at=n)  # layer 0's phase: layer 1 untouched
    assert not torch.equal(_weights(m, 0), w0) and torch.equal(_weights(m, 1), w1)
    end0 = m.evaluate(val)["recon_layer0"]
    assert end0 < 0.8 * start0
    w0_end = _weights(m, 0)
    t.run(stop_at=n + 1)
    start1 = m.evaluate(val)["recon_layer1"]
    assert t.optimizers["layer1"].param_groups[0]["momentum"] == 0.5  # momentum_initial again
    t.run(stop_at=2 * n)  # layer 1's phase: layer 0 frozen, layer 1 fits P(h|v) of layer 0
    assert torch.equal(_weights(m, 0), w0_end) and not torch.equal(_weights(m, 1), w1)
    end = m.evaluate(val)
    assert end["recon_layer1"] < 0.9 * start1
    assert end["recon_layer0"] == end0
    assert t.optimizers["layer0"].param_groups[1]["weight_decay"] == 0.0  # no decay on biases


@pytest.mark.parametrize("family, model", [
    ("rbm", {}),
    ("dbn", {"steps_per_layer": [5, 4], "finetune_steps": 3}),  # crosses both phase boundaries
])
def test_kill_and_resume_keeps_pcd_chains_and_continues_identically(runs, family, model):
    log = {"checkpoint_every": 4, "every": 4}  # log windows aligned with checkpoints
    full = Trainer(recipe(family, 12, model, log=log), out_root=runs, quiet=True)
    full.run()
    cut = Trainer(recipe(family, 12, model, log=log), out_root=runs, quiet=True)
    cut.run(stop_at=10)
    resumed = Trainer(recipe(family, 12, model, log=log), resume_dir=cut.run_dir, quiet=True)
    assert resumed.step == 8
    chains = resumed.model.stack.layers[0].chains
    assert chains.shape == (32, 64), "the PCD chains come back from the checkpoint"
    resumed.run()
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    assert resumed.history["train/loss"] == full.history["train/loss"]


@pytest.mark.parametrize("family, model", [
    ("rbm", {"visible": "gaussian", "learn_sigma": True, "sigma": 0.5}),
    ("rbm", {"visible": "gaussian", "center": True, "sigma": 0.5}),
    ("dbn", {"finetune_steps": 3}),
    ("dbn", {"visible": "gaussian", "center": True, "sigma": 0.5, "finetune_steps": 3}),
])
def test_export_reloads_and_equals_encode(runs, family, model):
    t = Trainer(recipe(family, 9, model, train={"lr": 0.01}), out_root=runs, quiet=True)
    res = t.run()
    x = t._batch("test", torch.arange(16))["x"]
    enc = load_encoder(t.run_dir / "export")
    with torch.no_grad():
        torch.testing.assert_close(enc(x), t.model.encode(x), rtol=0, atol=0)
    assert enc.bundle_meta["builder"] == "sigmoid_mlp"
    assert enc.bundle_meta["out_features"] == t.model.out_features == t.model.stack.sizes[-1]
    assert enc.bundle_meta["fine_tuned"] == (family == "dbn")
    assert res["test"]["loss"] > 0


def test_monitors_ais_and_renders(runs):
    r = recipe("dbn", 8, {"ais_runs": 16, "ais_betas": 50},
               log={"render_every": 4, "histograms": True, "eval_every": 4})
    t = Trainer(r, out_root=runs, quiet=True)
    res = t.run()
    for k in ("loss", "pll", "free_energy_gap", "ais_log_z", "ais_log_z_se", "ais_log_likelihood",
              "recon_layer0", "recon_layer1"):
        assert k in res["val"] and torch.isfinite(torch.tensor(res["val"][k])), k
    assert res["val"]["ais_log_z"] == res["test"]["ais_log_z"]  # one estimate per model state
    assert res["val"]["ais_log_likelihood_lower"] <= res["val"]["ais_log_likelihood"]
    rng = torch.get_rng_state()
    t.model._ais_cache = None
    again = t.evaluate("val")
    assert torch.equal(torch.get_rng_state(), rng)
    assert again["ais_log_z"] == res["val"]["ais_log_z"], "AIS has its own seeded generator"
    figs = t.run_dir / "figures"
    for name in ("filters", "receptive_fields_layer1", "reconstructions", "samples", "pcd_chains"):
        assert (figs / f"{name}.png").exists(), name
    assert (figs / "filters_evolution.png").exists()
    hists = t.model.histograms(t._batch("val", torch.arange(8)))
    assert set(hists) == {"hidden_probs_layer0", "hidden_probs_layer1"}
    samples = t.model.sample(4, torch.Generator().manual_seed(0))
    assert samples.shape == (4, 1, 8, 8)


def test_pll_is_sklearns_score_samples_averaged_over_units_on_grey_data(runs):
    import numpy as np
    from sklearn.neural_network import BernoulliRBM

    t = Trainer(recipe("rbm", 6), out_root=runs, quiet=True)
    t.run()
    batch = t._batch("val", torch.arange(16))
    rbm = t.model.stack.layers[0]
    sk = BernoulliRBM(n_components=16)
    sk.components_ = rbm.W.detach().double().numpy()
    sk.intercept_hidden_ = rbm.b_h.detach().double().numpy()
    sk.intercept_visible_ = rbm.b_v.detach().double().numpy()
    x = batch["x"].flatten(1).double().numpy()  # grey values in [0, 1], not binarised
    fe = sk._free_energy(x)
    per_unit = []
    for i in range(64):  # sklearn's score_samples with unit i flipped (v_i -> 1 - v_i)
        xf = x.copy()
        xf[:, i] = 1 - xf[:, i]
        per_unit.append(-64 * np.logaddexp(0, -(sk._free_energy(xf) - fe)))
    expected = float(np.mean(per_unit))
    assert abs(float(t.model.evaluate(batch)["pll"]) - expected) < 1e-4 * abs(expected)


def test_centred_gaussian_units_take_raw_images_everywhere(runs):
    """`center`: the stack sees v - (mean of the first batch); encode, reconstruct, the unrolled
    autoencoder and the samples work on raw images (the offset is folded back in)."""
    with pytest.raises(Exception, match="center"):
        recipe("rbm", 3, {"center": True})  # Bernoulli units: refused
    model = {"visible": "gaussian", "center": True, "sigma": 0.5, "steps_per_layer": [4, 3],
             "finetune_steps": 2, "finetune_lr": 1e-12}
    t = Trainer(recipe("dbn", 9, model, train={"lr": 0.01}), out_root=runs, quiet=True)
    m = t.model
    first = t._batch("train", copy.deepcopy(t.sampler).next_batch())["x"]
    t.run(stop_at=1)
    off = m.v_offset.clone()
    torch.testing.assert_close(off, first.flatten(1).mean(0))
    x = t._batch("val", torch.arange(16))["x"]
    v = x.flatten(1)
    h = m.stack.up(v - off)
    torch.testing.assert_close(m.encode(x), h)  # folded bias == explicit centring
    t.run(stop_at=7)  # the greedy phases are over
    before = m.reconstruct(v)
    t.run(stop_at=8)  # unroll (the offset goes into the biases) and one ~zero Adam step
    assert bool(m.finetuned)
    torch.testing.assert_close(m.reconstruct(v), before, rtol=0, atol=1e-4)
    t.run()
    assert torch.equal(m.v_offset, off), "the offset is fixed after the first batch"
    s = m.sample(4, torch.Generator().manual_seed(0))
    assert s.shape == (4, 1, 8, 8) and abs(float(s.mean()) - float(off.mean())) < 0.5


def test_layer_lr_gives_each_layer_its_own_learning_rate(runs):
    t = Trainer(recipe("dbn", 4, {"layer_lr": [1e-4, 0.02]}), out_root=runs, quiet=True)
    assert [g["lr"] for g in t.optimizers["layer0"].param_groups] == [1e-4, 1e-4]
    assert [g["lr"] for g in t.optimizers["layer1"].param_groups] == [0.02, 0.02]
    t2 = Trainer(recipe("dbn", 4), out_root=runs, quiet=True)  # default: train.lr everywhere
    assert {g["lr"] for o in t2.optimizers.values() if o is not t2.optimizers.get("finetune")
            for g in o.param_groups} == {SGD["lr"]}
    with pytest.raises(Exception, match="layer_lr"):
        recipe("dbn", 4, {"layer_lr": [1e-3]})
