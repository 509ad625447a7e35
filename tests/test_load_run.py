"""genlab.load_run: the one read-only way to rebuild a trained run. Loading never writes or
deletes a file (a `.tmp` file in checkpoints/ survives), best.pt and the newest checkpoint are
told apart, and a folder that is not a run, or a run without a readable checkpoint, is one line."""
from __future__ import annotations

import contextlib
import io
import shutil
from pathlib import Path

import pytest
import torch
from conftest import tiny_recipe

import genlab
from genlab.core.errors import CheckpointError, GenlabError
from genlab.core.recipe import from_mapping
from genlab.engine.checkpoints import safe_load
from genlab.engine.trainer import Trainer


@pytest.fixture(scope="module")
def ae_run(tmp_path_factory) -> Path:
    """A tiny autoencoder run with step checkpoints at 4 and 8, and a best.pt made from step 4
    (so that "best" and "last" differ)."""
    r = tiny_recipe("ae", steps=8)
    r["log"].update(eval_every=1000, render_every=1000, checkpoint_every=4)
    with contextlib.redirect_stdout(io.StringIO()):
        t = Trainer(from_mapping(r), out_root=tmp_path_factory.mktemp("load_run"), quiet=True,
                    progress=False)
        t.run()
    ckpt = t.run_dir / "checkpoints"
    step4 = safe_load(ckpt / "step-00000004.pt")
    torch.save({"format": "genlab-best", "step": 4, "monitor": "loss", "value": 0.125,
                "model": step4["model"]}, ckpt / "best.pt")
    return t.run_dir


def _listing(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*"))}


def _weights_equal(model, state: dict) -> bool:
    own = model.state_dict()
    return own.keys() == state.keys() and all(torch.equal(own[k].cpu(), state[k]) for k in own)


def test_loading_changes_nothing_and_keeps_a_tmp_file(ae_run):
    tmp = ae_run / "checkpoints" / ".step-00000010.pt.tmp"
    tmp.write_bytes(b"an in-flight checkpoint write")
    before = _listing(ae_run)
    for which in ("best", "last"):
        run = genlab.load_run(ae_run, which)
        assert run.data.size("test") > 0  # building the data writes nothing either
        run = genlab.load_run(ae_run, which, need_data=True, data_overrides=("val_fraction=0.2",))
    assert tmp.read_bytes() == b"an in-flight checkpoint write"
    assert _listing(ae_run) == before


def test_best_and_last(ae_run):
    ckpt = ae_run / "checkpoints"
    best = genlab.load_run(ae_run)  # "best" is the default
    assert best.checkpoint == ckpt / "best.pt" and best.step == 4
    assert best.meta["monitor"] == "loss" and best.meta["value"] == 0.125
    assert _weights_equal(best.model, safe_load(ckpt / "best.pt")["model"])
    last = genlab.load_run(ae_run, "last")
    assert last.checkpoint == ckpt / "step-00000008.pt" and last.step == 8
    assert "monitor" not in last.meta and last.meta["metrics"]["steps"] == 8
    assert _weights_equal(last.model, safe_load(ckpt / "step-00000008.pt")["model"])
    for run in (best, last):
        assert not run.model.training and run.recipe.family == "ae"
        assert run.device == torch.device("cpu")
        assert tuple(run.info.input_shape) == (1, 8, 8) and len(run.info.class_names) == 10
    assert best._data is None  # the data source is built on first use only
    assert genlab.load_run(ae_run, need_data=True)._data is not None


def test_best_falls_back_to_the_newest_checkpoint(ae_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(ae_run, copy)
    (copy / "checkpoints" / "best.pt").unlink()
    run = genlab.load_run(copy)
    assert run.checkpoint.name == "step-00000008.pt" and run.step == 8


def _one_line(err: Exception) -> str:
    text = str(err)
    assert text and "\n" not in text, text
    return text


def test_a_folder_that_is_not_a_run(tmp_path):
    with pytest.raises(GenlabError) as e:
        genlab.load_run(tmp_path)
    assert "not a genlab run folder" in _one_line(e.value)
    with pytest.raises(GenlabError) as e:
        genlab.load_run(tmp_path / "missing")
    assert "not a genlab run folder" in _one_line(e.value)
    with pytest.raises(GenlabError) as e:
        genlab.load_run(tmp_path, "newest")
    assert "checkpoint 'newest'" in _one_line(e.value)


def test_a_run_without_a_readable_checkpoint(ae_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(ae_run, copy)
    for p in (copy / "checkpoints").iterdir():
        if p.name != ".step-00000010.pt.tmp":
            p.unlink()
    before = _listing(copy)
    with pytest.raises(CheckpointError) as e:
        genlab.load_run(copy, "last")
    assert "no checkpoint" in _one_line(e.value)
    with pytest.raises(CheckpointError):
        genlab.load_run(copy)  # no best.pt either
    assert _listing(copy) == before
    shutil.rmtree(copy / "checkpoints")
    with pytest.raises(CheckpointError) as e:
        genlab.load_run(copy)
    _one_line(e.value)


def test_an_unreadable_best_checkpoint_is_refused(ae_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(ae_run, copy)
    (copy / "checkpoints" / "best.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError) as e:
        genlab.load_run(copy)
    assert "best.pt: unreadable" in _one_line(e.value) and "--checkpoint last" in str(e.value)
    assert genlab.load_run(copy, "last").step == 8


def test_loading_leaves_the_random_state_alone(ae_run):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    genlab.load_run(ae_run, need_data=True)
    assert torch.equal(torch.rand(3), expected)
