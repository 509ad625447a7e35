"""The DQN family and the maze data source: TD maths against hand computations, the replay
buffer, exact kill-and-resume, the recipe guards, evaluation on held-out mazes, `genlab play`."""
from __future__ import annotations

import warnings

import pytest
import torch
from conftest import tiny_recipe
from torch import nn

from genlab.cli import main
from genlab.core.errors import RecipeError
from genlab.core.recipe import from_mapping
from genlab.data.maze_source import TEST_SEED0, VAL_SEED0, MazeData, MazeDataConfig
from genlab.engine import checkpoints as ckpt
from genlab.engine.trainer import Trainer
from genlab.envs.maze import MazeConfig, parse_layout
from genlab.envs.replay import Replay, nstep_transitions, pack_obs, td_target, unpack_obs
from genlab.families.dqn import DQN

# Mouse at (1, 1) facing east; food at (1, 3) and (3, 5); a shock at (3, 3).
HAND = """
    #######
    #>.F..#
    #.###.#
    #..X.F#
    #######
"""


def _trainer(runs, steps=12, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Trainer(from_mapping(tiny_recipe("dqn", steps=steps, **kw)), out_root=runs, quiet=True)


# -- the maths ---------------------------------------------------------------------------------
def test_nstep_return_by_hand_including_episode_ends():
    g = 0.5
    # three envs, a window of n = 3 steps (oldest first)
    rew = torch.tensor([[1.0, 1.0, 1.0], [2.0, 2.0, 2.0], [3.0, 3.0, 3.0]])
    term = torch.tensor([[False, False, False], [False, True, False], [False, False, False]])
    done = torch.tensor([[False, False, True], [False, True, False], [False, False, False]])
    ret, last, disc = nstep_transitions(rew, term, done, g)
    # env 0: no episode end: 1 + .5*2 + .25*3, bootstrap with .5^3 from step 2's s'
    # env 1: terminated at step 1: 1 + .5*2, no bootstrap, s' = step 1's final obs
    # env 2: truncated at step 0: 1, bootstrap with .5 from step 0's final obs (before reset)
    torch.testing.assert_close(ret, torch.tensor([2.75, 2.0, 1.0]))
    assert last.tolist() == [2, 1, 0]
    torch.testing.assert_close(disc, torch.tensor([0.125, 0.0, 0.5]))


def test_replay_window_uses_final_obs_and_restarts_after_an_episode_end():
    g = 0.9
    rb = Replay(capacity=10, grid=(1, 1), num_envs=1, n_step=2, gamma=g)
    o = lambda v: torch.tensor([[[v]]], dtype=torch.uint8)  # (1 env, H=1, W=1) packed obs
    f = lambda v: torch.tensor([v])
    b = lambda v: torch.tensor([v])
    # step 0: s=10 -> s'=11; step 1: s=11 -> terminates, final obs 12 (the env resets to 20);
    # step 2: s=20 -> 21; step 3: s=21 -> 22
    assert rb.push_step(o(10), b(0), f(1.0), b(False), b(False), o(11)) == 0
    assert rb.push_step(o(11), b(1), f(2.0), b(True), b(True), o(12)) == 1
    assert rb.push_step(o(20), b(2), f(3.0), b(False), b(False), o(21)) == 1
    assert rb.push_step(o(21), b(0), f(4.0), b(False), b(False), o(22)) == 1
    assert len(rb) == 3
    # (s, a, R, discount, s'): an n-step return never reaches into the next episode
    assert rb.obs[:3].flatten().tolist() == [10, 11, 20]
    assert rb.action[:3].tolist() == [0, 1, 2]
    torch.testing.assert_close(rb.ret[:3], torch.tensor([1 + g * 2, 2.0, 3 + g * 4]))
    torch.testing.assert_close(rb.discount[:3], torch.tensor([0.0, 0.0, g * g]))
    assert rb.next_obs[:3].flatten().tolist() == [12, 12, 22]


def test_replay_wraps_around():
    rb = Replay(capacity=5, grid=(1, 1), num_envs=1, n_step=1, gamma=0.9)
    obs = lambda vs: torch.tensor(vs, dtype=torch.uint8).view(-1, 1, 1)
    z = lambda k: torch.zeros(k)
    rb.add(obs([1, 2, 3]), torch.zeros(3, dtype=torch.long), z(3), z(3), obs([1, 2, 3]))
    assert (int(rb.pos), len(rb)) == (3, 3)
    rb.add(obs([4, 5, 6, 7]), torch.zeros(4, dtype=torch.long), z(4), z(4), obs([4, 5, 6, 7]))
    assert (int(rb.pos), len(rb)) == (2, 5)
    assert rb.obs.flatten().tolist() == [6, 7, 3, 4, 5]


def test_double_dqn_target_by_hand():
    online, target = nn.Linear(2, 3, bias=False), nn.Linear(2, 3, bias=False)
    with torch.no_grad():
        online.weight.copy_(torch.tensor([[1.0, 0.0], [3.0, 0.0], [2.0, 0.0]]))   # Q(s'=[1,0]) = 1, 3, 2
        target.weight.copy_(torch.tensor([[5.0, 1.0], [4.0, 1.0], [6.0, 1.0]]))   # Q_t(s'=[1,0]) = 5, 4, 6
    s2 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # second: Q = 0, 0, 0 -> a' = 0; Q_t = 1, 1, 1
    ret, disc = torch.tensor([1.0, 0.5]), torch.tensor([0.9, 0.0])
    double = td_target(ret, disc, s2, online, target, double=True)
    plain = td_target(ret, disc, s2, online, target, double=False)
    # double: a' = argmax online = 1, scored by the target: 4 -> 1 + .9*4; the terminal keeps R
    torch.testing.assert_close(double, torch.tensor([1 + 0.9 * 4, 0.5]))
    torch.testing.assert_close(plain, torch.tensor([1 + 0.9 * 6, 0.5]))


def test_pack_unpack_round_trip():
    obs = (torch.rand(5, 8, 9, 9) < 0.3).float()
    packed = pack_obs(obs)
    assert packed.dtype == torch.uint8 and packed.shape == (5, 9, 9)
    assert torch.equal(unpack_obs(packed), obs)


# -- the data source ---------------------------------------------------------------------------
def test_maze_splits_are_disjoint_held_out_seeds():
    d = MazeData(MazeDataConfig(val_size=4, test_size=3), seed=0)
    val = d.get("val", torch.arange(4))
    assert val["x"].shape == (4, 8, 9, 9) and val["seed"].tolist() == [VAL_SEED0 + i for i in range(4)]
    assert d.get("test", torch.arange(3))["seed"].tolist() == [TEST_SEED0 + i for i in range(3)]
    # training mazes come from the seed stream, whose seeds are all < 2**31 - 1 < VAL_SEED0
    assert d.size("train") > 0 and VAL_SEED0 > 2**31 and TEST_SEED0 > VAL_SEED0 + 2**31
    assert d.info.env.layout_of(VAL_SEED0 + 1) is d.info.env.layout_of(VAL_SEED0 + 1)  # cached
    # the same seeds whatever the recipe seed: every run is scored on the same mazes
    other = MazeData(MazeDataConfig(val_size=4), seed=5)
    assert torch.equal(other.get("val", torch.arange(4))["x"], val["x"])


def test_fixed_layout_source(tmp_path):
    path = tmp_path / "m.txt"
    path.write_text(HAND)
    d = MazeData(MazeDataConfig(layout=path, val_size=2, test_size=1), seed=0)
    assert d.info.input_shape == (8, 5, 7)
    assert d.info.env.layout_of(123) == parse_layout(HAND)
    x = d.get("val", torch.arange(2))["x"]
    assert torch.equal(x[0], x[1]) and x[0, 3, 1, 1] == 1 and x[0, 4 + 1, 1, 1] == 1  # mouse facing E


# -- training, resume and evaluation -----------------------------------------------------------
def test_kill_and_resume_restores_replay_epsilon_envs_and_both_networks(runs):
    full = _trainer(runs, steps=12)
    full.run()
    cut = _trainer(runs, steps=12)
    cut.run(stop_at=10)  # the newest checkpoint is step 8; steps 9-10 are redone
    saved = ckpt.safe_load(cut.ckpt_dir / "step-00000008.pt")["model"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        resumed = Trainer(from_mapping(tiny_recipe("dqn", steps=12)), resume_dir=cut.run_dir, quiet=True)
    assert resumed.step == 8
    m = resumed.model
    assert int(m.replay.pos) == int(saved["replay.pos"]) and len(m.replay) == int(saved["replay.size"]) > 0
    assert float(m.epsilon) == float(saved["epsilon"])
    assert torch.equal(m.envs.env._obs, saved["envs._obs"])
    resumed.run()
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    for k in a:  # online and target nets, replay contents, window, env state, episode stats
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    assert any(k.startswith("target.") for k in a) and any(k.startswith("q.") for k in a)
    assert resumed.history == full.history


def test_target_network_hard_and_polyak_updates(runs):
    t = _trainer(runs, steps=4)
    m = t.model
    with torch.no_grad():
        for p in m.q.parameters():
            p.add_(1.0)
    before = [p.clone() for p in m.target.parameters()]
    m.cfg.tau = 0.25
    m.update_target()
    for pt, po, b in zip(m.target.parameters(), m.q.parameters(), before):
        torch.testing.assert_close(pt, 0.25 * po + 0.75 * b)
    m.cfg.tau = 1.0
    m.update_target()
    for pt, po in zip(m.target.parameters(), m.q.parameters()):
        assert torch.equal(pt, po)


def test_evaluation_scores_against_the_exact_optimum(runs):
    t = _trainer(runs, steps=4)
    t.model.eval()
    out = t.model.evaluate(t._batch("val", torch.arange(4)))
    assert set(out) == {"return", "optimal", "success", "shocks", "steps"}
    assert all(v.shape == (4,) for v in out.values())
    assert (out["return"] <= out["optimal"] + 1e-5).all()
    s = t.model.summarize({"return": torch.tensor([1.0, 2.0, -0.5, 0.0]),
                           "optimal": torch.tensor([2.0, 2.0, -0.5, -0.2]),
                           "success": torch.tensor([0.0, 1.0, 1.0, 0.0]),
                           "shocks": torch.tensor([1.0, 0.0, 0.0, 0.0]),
                           "steps": torch.tensor([10.0, 20.0, 30.0, 40.0])})
    # ratios: .5, 1, and two optima <= 0 that the agent matches or beats: 1 each
    assert s["charts/optimal_ratio"] == pytest.approx((0.5 + 1 + 1 + 1) / 4)
    assert s["charts/success_rate"] == 0.5 and s["charts/shocks_per_episode"] == 0.25


def test_fixed_layout_agent_learns_the_maze(runs, tmp_path):
    """The fixed small maze is learned within a few hundred steps (a smoke test of learning)."""
    path = tmp_path / "m.txt"
    path.write_text(HAND)
    mapping = tiny_recipe("dqn", steps=400, lr=2e-3, batch_size=32)
    mapping["data"] = {"name": "maze", "layout": str(path), "env": {"max_steps": 30}, "val_size": 1,
                       "test_size": 1}
    mapping["model"] = {"arch": "mlp", "hidden": [64], "num_envs": 8, "buffer_size": 4000,
                        "learning_starts": 200, "n_step": 3, "target_update_every": 50,
                        "exploration_fraction": 0.5, "explore_repeat": 4}
    mapping["log"] = {"every": 100, "eval_every": 100, "render_every": 0, "checkpoint_every": 0,
                      "render_examples": 1}
    t = Trainer(from_mapping(mapping), out_root=runs, quiet=True)
    res = t.run()
    assert t.best is not None and t.best > 0.9, t.history.get("eval/charts/optimal_ratio")
    assert res["test"]["charts/success_rate"] in (0.0, 1.0)


# -- guards ------------------------------------------------------------------------------------
def test_guard_replay_smaller_than_a_batch(runs):
    mapping = tiny_recipe("dqn", batch_size=16)
    mapping["model"] = {**mapping["model"], "buffer_size": 8}
    with pytest.raises(RecipeError, match=r"model.buffer_size: the replay buffer \(8 transitions\) is "
                                          r"smaller than one minibatch"):
        Trainer(from_mapping(mapping), out_root=runs, quiet=True)
    assert not runs.exists(), "a rejected recipe must not leave a run folder"


def test_guard_learning_starts_beyond_the_budget_warns(runs):
    mapping = tiny_recipe("dqn", steps=5)
    mapping["model"] = {**mapping["model"], "learning_starts": 1000}
    with pytest.warns(UserWarning, match=r"model.learning_starts: .*no TD update will happen"):
        Trainer(from_mapping(mapping), out_root=runs, quiet=True)


def test_guard_epsilon_floor_before_learning_warns(runs):
    mapping = tiny_recipe("dqn", steps=100)
    mapping["model"] = {**mapping["model"], "exploration_fraction": 0.01, "learning_starts": 200}
    with pytest.warns(UserWarning, match=r"model.exploration_fraction: epsilon reaches its floor"):
        Trainer(from_mapping(mapping), out_root=runs, quiet=True)


def test_guard_config_errors_name_the_key():
    mapping = tiny_recipe("dqn")
    with pytest.raises(RecipeError, match=r"model: eps_end \(0.5\) must not exceed eps_start"):
        from_mapping({**mapping, "model": {**mapping["model"], "eps_start": 0.1, "eps_end": 0.5}})
    with pytest.raises(RecipeError, match=r"model.gamma: expected a number > 0 and <= 1, got 1.5"):
        from_mapping({**mapping, "model": {**mapping["model"], "gamma": 1.5}})
    with pytest.raises(RecipeError, match=r"data.env: size: expected an odd integer"):
        from_mapping({**mapping, "data": {"name": "maze", "env": {"size": 8}}})
    with pytest.raises(RecipeError, match="needs an environment data source"):
        Trainer(from_mapping({**mapping, "data": {"name": "digits"}}), quiet=True)


# -- genlab play -------------------------------------------------------------------------------
def test_play_prints_the_final_frame_and_writes_a_gif(runs, tmp_path, capsys):
    t = _trainer(runs, steps=6)
    t.run()
    gif = tmp_path / "ep.gif"
    assert main(["play", str(t.run_dir), "--gif", str(gif), "--delay", "0"]) == 0
    out = capsys.readouterr().out
    assert "return" in out and "optimal" in out and "#######" in out
    from PIL import Image

    with Image.open(gif) as im:
        assert im.n_frames >= 2
    assert main(["play", str(t.run_dir), "--maze-seed", "3"]) == 0
    lay = tmp_path / "m.txt"
    lay.write_text(HAND)  # 5x7: not the 7x7 mazes this agent knows
    assert main(["play", str(t.run_dir), "--layout", str(lay)]) == 2
    assert "trained on 7x7 mazes" in capsys.readouterr().err
    assert main(["play", str(tmp_path)]) == 2


def test_training_envs_stream_or_pool():
    cfg = MazeConfig(size=7, n_food=2, n_shock=1)
    d = MazeData(MazeDataConfig(env=cfg, val_size=2, test_size=2), seed=0)
    m = DQN(DQN.Config(channels=[4], hidden=[8], num_envs=3, buffer_size=16), d.info)
    assert m.envs.env.num_envs == 3 and m.envs.env.grid_shape == (7, 7) and m.envs.env._pool is None
    pooled = MazeData(MazeDataConfig(env=cfg, train_mazes=5, val_size=2, test_size=2), seed=0)
    assert pooled.size("train") == 5
    m = DQN(DQN.Config(arch="plan", channels=[4], hidden=[8], num_envs=3, buffer_size=16), pooled.info)
    assert len(m.envs.env._pool_layouts) == 5
    assert m.q(pooled.get("val", torch.arange(2))["x"]).shape == (2, 3)


def test_set_rank_gives_each_process_its_own_envs():
    cfg = MazeConfig(size=7, n_food=2, n_shock=1)
    d = MazeData(MazeDataConfig(env=cfg, val_size=2, test_size=2), seed=0)
    kw = {"channels": [4], "hidden": [8], "num_envs": 3, "buffer_size": 16}
    one, r0, r1 = (DQN(DQN.Config(**kw), d.info) for _ in range(3))
    r0.set_rank(0, 2)
    r1.set_rank(1, 2)
    assert torch.equal(r0.envs.env.seeds, one.envs.env.seeds)  # rank 0 plays what one process does
    both = DQN(DQN.Config(**{**kw, "num_envs": 6}), d.info).envs.env.seeds
    assert torch.equal(r1.envs.env.seeds, both[3:])  # rank 1: env numbers 3, 4, 5
    assert not torch.equal(r1.envs.env._obs, r0.envs.env._obs)


@pytest.mark.parametrize("arch", ["conv", "plan"])
def test_qnet_bundle_round_trip(tmp_path, arch):
    from genlab.nn.qnet import load_qnet

    cfg = MazeConfig(size=7, n_food=2, n_shock=1)
    d = MazeData(MazeDataConfig(env=cfg, val_size=4, test_size=2), seed=0)
    m = DQN(DQN.Config(arch=arch, channels=[4], hidden=[8], num_envs=2, buffer_size=16), d.info)
    path = m.export_qnet(tmp_path / "export")
    assert path.name == "qnet.json" and (tmp_path / "export" / "qnet.safetensors").is_file()
    net = load_qnet(tmp_path)  # a run folder: found in export/
    assert net.bundle_meta["format"] == "genlab-qnet" and net.bundle_meta["config"]["arch"] == arch
    x = d.get("val", torch.arange(4))["x"].float()
    with torch.no_grad():
        torch.testing.assert_close(net(x), m.q(x), rtol=0, atol=0)
