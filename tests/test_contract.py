"""One contract, every registered family: a few CPU steps give finite metrics and change
parameters; evaluate changes nothing; the same seed gives the same numbers; a checkpoint round
trip reproduces outputs; an exported encoder has shape (B, out_features) and reloads exactly."""
from __future__ import annotations

import pytest
import torch
from conftest import TINY_FAMILIES, tiny_recipe

from genlab import load_encoder
from genlab.core import registry
from genlab.core.recipe import from_mapping
from genlab.engine.checkpoints import safe_load
from genlab.engine.trainer import Trainer

registry.load_all()
PUBLIC = sorted(n for n in registry.FAMILIES if not n.startswith("_"))


def test_every_family_has_a_tiny_config():
    assert set(PUBLIC) <= set(TINY_FAMILIES), "add a tiny config for each family to conftest.py"


@pytest.fixture(params=PUBLIC)
def family(request):
    return request.param


def _trainer(family, runs, steps=6):
    return Trainer(from_mapping(tiny_recipe(family, steps=steps)), out_root=runs, quiet=True)


def _batch(t, split="val", n=8):
    return t._batch(split, torch.arange(n))


def test_steps_change_parameters_and_metrics_are_finite(family, runs):
    t = _trainer(family, runs)
    before = {k: v.clone() for k, v in t.model.state_dict().items()}
    res = t.run()
    after = t.model.state_dict()
    changed = [k for k in before if before[k].is_floating_point() and not torch.equal(before[k], after[k])]
    assert changed, "no parameter changed"
    for split in ("val", "test"):
        assert res[split] and all(torch.isfinite(torch.tensor(v)) for v in res[split].values())


def test_evaluate_and_renders_change_nothing(family, runs):
    t = _trainer(family, runs)
    state = {k: v.clone() for k, v in t.model.state_dict().items()}
    rng = torch.get_rng_state()
    batch = _batch(t)
    t.model.eval()
    first = t.model.evaluate(batch)
    second = t.model.evaluate(batch)
    images = t.model.renders(batch)
    assert first.keys() == second.keys()
    for k in first:
        assert torch.equal(torch.as_tensor(first[k]), torch.as_tensor(second[k])), k
    for k, v in t.model.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert torch.equal(torch.get_rng_state(), rng), "evaluate/renders must not consume the global RNG"
    for name, img in images.items():
        assert img.dim() == 3 and img.shape[0] in (1, 3), name
        assert 0 <= float(img.min()) and float(img.max()) <= 1, name


def test_same_seed_same_numbers(family, runs):
    a = _trainer(family, runs).run()
    b = _trainer(family, runs).run()
    assert a["val"] == b["val"] and a["train"] == b["train"]


def test_checkpoint_round_trip_reproduces_outputs(family, runs):
    t = _trainer(family, runs)
    t.run()
    state = safe_load(t.ckpt_dir / f"step-{t.step:08d}.pt")
    fresh = _trainer(family, runs)
    fresh.model.load_state_dict(state["model"])
    batch = _batch(t)
    t.model.eval(), fresh.model.eval()
    a, b = t.model.evaluate(batch), fresh.model.evaluate(batch)
    for k in a:
        assert torch.equal(torch.as_tensor(a[k]), torch.as_tensor(b[k])), k


def test_encoder_export_reloads_and_reproduces(family, runs):
    t = _trainer(family, runs)
    if not hasattr(t.model, "encoder_spec"):
        pytest.skip(f"{family} exports no encoder")
    t.run()
    x = _batch(t)["x"]
    t.model.eval()
    with torch.no_grad():
        code = t.model.encode(x)
        enc = load_encoder(t.run_dir / "export")
        again = enc(x)
    assert code.shape == (x.shape[0], t.model.out_features)
    assert enc.bundle_meta["out_features"] == t.model.out_features
    torch.testing.assert_close(again, code, rtol=0, atol=0)
