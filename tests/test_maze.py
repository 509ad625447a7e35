"""MouseMaze: Gymnasium env, batched torch env and exact solver."""
from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

import genlab.envs  # noqa: F401  (registers genlab/MouseMaze-v0)
from genlab.envs.batched import BatchedMaze, episode_seed_t
from genlab.envs.maze import (
    Layout,
    MazeConfig,
    MazeError,
    MouseMazeEnv,
    episode_seed,
    generate_layout,
    generate_pool,
    parse_layout,
    reachable_cells,
    reward_table,
)
from genlab.envs.solver import brute_force_return, discounted_q, optimal_return, solve

# Mouse at (1, 1) facing east; food at (1, 3) and (3, 3); a shock at (1, 5).
HAND = """
    #######
    #>.F.X#
    #.###.#
    #..F..#
    #######
"""
L, R, F = 0, 1, 2


def f32(x: float) -> float:
    return float(np.float32(x))


# ---------------------------------------------------------------------------------------------
# Gymnasium env


@pytest.mark.parametrize("kwargs", [
    {"render_mode": "ansi"},
    {"render_mode": "rgb_array", "size": 7, "n_food": 2, "n_shock": 1},
    {"render_mode": "ansi", "layout": HAND},
])
def test_check_env_passes(kwargs):
    env = gym.make("genlab/MouseMaze-v0", **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the checker's warnings are failures too
        check_env(env.unwrapped)
    obs, _ = env.reset(seed=1)
    assert obs.shape == env.observation_space.shape and obs.dtype == np.float32
    out = env.render()
    if kwargs["render_mode"] == "ansi":
        assert parse_layout(out).shape == obs.shape[1:]  # a render is a valid layout
    else:
        h, w = obs.shape[1:]
        assert out.shape == (h * 16, w * 16, 3) and out.dtype == np.uint8


def test_scripted_episode_rewards_termination():
    cfg = MazeConfig(max_steps=11)
    env = MouseMazeEnv(cfg, layout=HAND, render_mode="ansi")
    obs, info = env.reset(seed=0)
    assert info["food_left"] == 2
    assert obs[3, 1, 1] == 1 and obs[5, 1, 1] == 1 and obs[3].sum() == 1 and obs[4:].sum() == 1
    c = cfg.step_cost
    script = [  # action, reward, position after, heading after
        (F, c, (1, 2), 1),
        (F, c + 1.0, (1, 3), 1),          # food
        (F, c, (1, 4), 1),
        (F, c - 1.0, (1, 5), 1),          # shock
        (F, c - 0.05, (1, 5), 1),         # bump: stays
        (R, c, (1, 5), 2),
        (F, c, (2, 5), 2),
        (F, c, (3, 5), 2),
        (R, c, (3, 5), 3),
        (F, c, (3, 4), 3),
        (F, c + 1.0, (3, 3), 3),          # last food on the last allowed step
    ]
    for t, (a, rew, pos, head) in enumerate(script, 1):
        obs, r, term, trunc, info = env.step(a)
        assert r == f32(rew), t
        assert env.pos == pos and env.heading == head
        assert obs[3, pos[0], pos[1]] == 1 and obs[4 + head, pos[0], pos[1]] == 1
        assert obs[3].sum() == 1 and obs[4:].sum() == 1
        assert info["steps"] == t
        assert term == (t == 11) and trunc is False  # terminated wins over the step limit
    assert info == {"food_left": 0, "shocks": 1, "bumps": 1, "steps": 11}
    assert obs[1].sum() == 0
    assert env.render().splitlines()[3] == "#..<..#"
    with pytest.raises(RuntimeError, match="reset"):
        env.step(F)


def test_truncation_and_repeated_shocks():
    env = MouseMazeEnv(MazeConfig(max_steps=8), layout=HAND)
    env.reset(seed=0)
    out = [env.step(a) for a in [F, F, F, F, L, L, F]]
    assert all(o[2:4] == (False, False) for o in out)
    _, _, term, trunc, info = env.step(L)
    assert (term, trunc) == (False, True) and info["steps"] == 8 and info["food_left"] == 1
    # food, shock, turn back, leave, turn again, re-enter: the shock stays and shocks again
    env = MouseMazeEnv(MazeConfig(max_steps=20), layout=HAND)
    env.reset(seed=0)
    out = [env.step(a) for a in [F, F, F, F, L, L, F, L, L, F]]
    assert [o[1] for o in out[:4]] == [f32(-0.01), f32(0.99), f32(-0.01), f32(-1.01)]
    assert out[9][1] == f32(-1.01) and out[9][4]["shocks"] == 2
    assert out[9][0][2, 1, 5] == 1 and out[9][0][3, 1, 5] == 1


def test_rewards_configurable():
    cfg = MazeConfig(reward_food=5.0, reward_shock=-2.0, step_cost=0.0, reward_bump=-1.0)
    assert reward_table(cfg).tolist() == [0.0, -1.0, 0.0, 5.0, -2.0]
    env = MouseMazeEnv(cfg, layout=HAND)
    env.reset()
    assert [env.step(a)[1] for a in [F, F, F, F, F]] == [0.0, 5.0, 0.0, -2.0, -1.0]


@pytest.mark.parametrize("text, match", [
    ("#####\n#>FZ#\n#####", "line 2, column 4: unexpected character 'Z'"),
    ("#####\n#.F.#\n#####", "no mouse"),
    ("#####\n#>F<#\n#####", "2 mice.*line 2 column 2, line 2 column 4"),
    ("#####\n#>F.#\n####", "line 3: 4 columns, expected 5"),
    ("#####\n#>F..\n#####", "line 2, column 5: border"),
    ("#####\n#>..#\n#####", "no food"),
    ("", "empty"),
])
def test_parse_errors_are_clear(text, match):
    with pytest.raises(ValueError, match=match):
        parse_layout(text)


def test_parse_roundtrip_and_mouse_forms():
    lay = parse_layout(HAND)
    assert lay.shape == (5, 7) and lay.start == (1, 1) and lay.heading == 1 and lay.n_food == 2
    assert parse_layout(lay.to_text()) == lay
    assert parse_layout("#####\n#MF.#\n#####").heading == 0
    with pytest.raises(ValueError, match="odd"):
        MazeConfig(size=8)


def test_generated_mazes_deterministic_and_reachable():
    cfg = MazeConfig()
    layouts = [generate_layout(cfg, s) for s in range(40)]
    assert generate_layout(cfg, 7) == layouts[7]
    assert len({lay.to_text() for lay in layouts}) == 40
    for lay in layouts:
        assert lay.shape == (9, 9) and lay.n_food == 3 and lay.shocks.sum() == 3
        reach = reachable_cells(lay)
        assert (reach == ~lay.walls).all()  # connected floor: every food reachable
    # extra openings make loops: a perfect 4x4-room maze has 31 floor cells
    assert all((~lay.walls).sum() == 31 for lay in
               (generate_layout(MazeConfig(extra_openings=0.0), s) for s in range(5)))
    assert np.mean([(~lay.walls).sum() for lay in layouts]) > 31
    # shock_free_paths (default): food reachable from the start without entering a shock
    cfg2 = MazeConfig(n_shock=6, extra_openings=0.0)
    for lay in layouts[:10] + [generate_layout(cfg2, s) for s in range(10)]:
        walled = Layout(lay.walls | lay.shocks, lay.food, np.zeros_like(lay.shocks), lay.start, 0)
        assert reachable_cells(walled)[lay.food].all()


def test_env_seed_stream():
    env = MouseMazeEnv()
    o1, i1 = env.reset(seed=5)
    _, i2 = env.reset()
    assert i1["maze_seed"] == episode_seed(5, 0) and i2["maze_seed"] == episode_seed(5, 1)
    assert np.array_equal(o1, env.reset(seed=5)[0])
    _, info = env.reset(options={"maze_seed": 3})
    assert info["maze_seed"] == 3 and env.layout == generate_layout(env.config, 3)
    seeds = torch.tensor([0, 5, 2**40 + 3, 2**62])
    eps = torch.tensor([0, 1, 7, 1000])
    assert episode_seed_t(seeds, eps).tolist() == [episode_seed(int(s), int(e))
                                                    for s, e in zip(seeds, eps)]


# ---------------------------------------------------------------------------------------------
# Batched env


def _drive_pair(cfg, n, steps, seed, layouts=None, order="hash", copy_obs=True):
    """Drive BatchedMaze and n MouseMazeEnvs with the same seeds and actions; compare all."""
    bat = BatchedMaze(n, cfg, layouts=layouts, order=order, copy_obs=copy_obs)
    seeds = [seed + 11 * i for i in range(n)]
    obs, _ = bat.reset(seeds)
    envs = [MouseMazeEnv(cfg, layouts=layouts if order == "hash" else None) for _ in range(n)]
    episode = [0] * n

    def env_reset(i, first):
        if order == "round_robin":
            lay = layouts[(i + episode[i] * n) % len(layouts)]
            return envs[i].reset(seed=seeds[i] if first else None, options={"layout": lay})[0]
        return envs[i].reset(seed=seeds[i] if first else None)[0]

    single = [env_reset(i, True) for i in range(n)]
    assert np.array_equal(obs.numpy(), np.stack(single))
    gen = torch.Generator().manual_seed(seed)
    ends = terms = 0
    for t in range(steps):
        actions = torch.randint(0, 3, (n,), generator=gen)
        obs, rew, term, trunc, info = bat.step(actions)
        for i, env in enumerate(envs):
            o, r, te, tr, inf = env.step(int(actions[i]))
            assert np.array_equal(info["final_obs"][i].numpy(), o), (t, i)
            assert r == rew[i].item() and te == bool(term[i]) and tr == bool(trunc[i]), (t, i)
            assert all(inf[k] == int(info[k][i]) for k in ("food_left", "shocks", "bumps", "steps"))
            if te or tr:
                ends, terms = ends + 1, terms + te
                episode[i] += 1
                o = env_reset(i, False)
            assert np.array_equal(obs[i].numpy(), o), (t, i)
    assert obs.dtype == torch.float32 and obs.shape == (n, 8, *bat.grid_shape)
    assert rew.dtype == torch.float32 and term.dtype == torch.bool and trunc.dtype == torch.bool
    return ends, terms


def test_batched_matches_gym_seed_stream():
    ends, _ = _drive_pair(MazeConfig(), n=8, steps=250, seed=0)
    assert ends >= 16  # autoresets happened (truncations at 100 steps)
    ends, terms = _drive_pair(MazeConfig(size=5, n_food=1, n_shock=1, max_steps=15), n=8,
                              steps=120, seed=1, copy_obs=False)
    assert terms >= 5 and ends - terms >= 5  # both kinds of episode end


def test_batched_matches_gym_layout_pool():
    cfg = MazeConfig(size=7, n_food=2, n_shock=2, max_steps=25)
    pool = generate_pool(cfg, 6, seed=4)
    ends, terms = _drive_pair(cfg, n=8, steps=150, seed=2, layouts=pool)
    assert ends > 30 and terms > 0
    _drive_pair(cfg, n=4, steps=60, seed=3, layouts=pool, order="round_robin", copy_obs=False)
    # a fixed text layout: every slot replays it
    bat = BatchedMaze(3, MazeConfig(max_steps=11), layouts=[HAND], order="round_robin")
    obs, _ = bat.reset(0)
    script = [F, F, F, F, F, R, F, F, R, F, F]
    for a in script:
        obs, _, term, trunc, info = bat.step(torch.full((3,), a))
    assert term.all() and not trunc.any()
    assert torch.allclose(info["episode_return"], torch.full((3,), 2 - 1.0 - 0.05 - 11 * 0.01))
    assert (info["final_obs"][:, 1].sum((1, 2)) == 0).all() and (obs[:, 1].sum((1, 2)) == 2).all()


# ---------------------------------------------------------------------------------------------
# Solver

DETOUR = """
    #######
    #>X.F.#
    #.###.#
    #.....#
    #######
"""


def test_solver_shock_vs_detour_vs_step_limit():
    # detour (13 steps, no shock) beats crossing the shock (3 steps, -1)
    s = solve(DETOUR, MazeConfig())
    assert s.return_ == pytest.approx(1.0 - 13 * 0.01) and s.eats_all and len(s.actions) == 13
    # a mild shock is worth crossing
    assert optimal_return(DETOUR, MazeConfig(reward_shock=-0.05)) == pytest.approx(1 - 0.05 - 0.03)
    # with 5 steps the detour is out of reach: cross (-0.03) beats wandering (-0.05)
    assert optimal_return(DETOUR, MazeConfig(max_steps=5)) == pytest.approx(-0.03, abs=1e-6)
    # with 2 steps no food is reachable: best is to turn (no bump) twice
    assert optimal_return(DETOUR, MazeConfig(max_steps=2)) == pytest.approx(-0.02, abs=1e-6)


@pytest.mark.parametrize("size, n_food, n_shock, max_steps, seed", [
    (5, 2, 1, 9, 0), (5, 2, 1, 9, 1), (5, 1, 2, 10, 2), (5, 3, 1, 10, 3),
    (7, 2, 2, 9, 4), (7, 2, 2, 9, 5), (7, 1, 3, 10, 6),
])
def test_solver_equals_brute_force(size, n_food, n_shock, max_steps, seed):
    cfg = MazeConfig(size=size, n_food=n_food, n_shock=n_shock, max_steps=max_steps,
                     extra_openings=0.5, reward_shock=-0.3, shock_free_paths=seed % 2 == 0)
    lay = generate_layout(cfg, seed)
    assert optimal_return(lay, cfg) == pytest.approx(brute_force_return(lay, cfg), abs=1e-9)


def test_solver_equals_brute_force_hand_layouts():
    for text in (HAND, DETOUR):
        for cfg in (MazeConfig(max_steps=10), MazeConfig(max_steps=11, reward_shock=-0.1)):
            assert optimal_return(text, cfg) == pytest.approx(brute_force_return(text, cfg), abs=1e-9)


def test_solver_plan_replays_and_beats_random_rollouts():
    cfg = MazeConfig()
    rng = np.random.default_rng(0)
    for seed in range(4):
        lay = generate_layout(cfg, seed)
        sol = solve(lay, cfg)
        env = MouseMazeEnv(cfg, layout=lay)
        env.reset(seed=0)
        ret = sum(env.step(a)[1] for a in sol.actions)
        assert ret == pytest.approx(sol.return_, abs=1e-9)
        for _ in range(30):
            env.reset()
            total, done = 0.0, False
            while not done:
                _, r, te, tr, _ = env.step(int(rng.integers(3)))
                total, done = total + r, te or tr
            assert total <= sol.return_ + 1e-9


def test_batched_buffers_and_dtypes():
    cfg = MazeConfig(size=5, n_food=1, n_shock=1, max_steps=6)
    pool = generate_pool(cfg, 3)
    safe = BatchedMaze(4, cfg, layouts=pool)
    obs0, _ = safe.reset(7)
    keep = obs0.clone()
    compact = BatchedMaze(4, cfg, layouts=pool, copy_obs=False, obs_dtype=torch.uint8)
    view0, _ = compact.reset(7)
    for _ in range(6):  # the last step truncates everything: autoreset in every slot
        acts = torch.randint(0, 3, (4,))
        obs, _, term, trunc, info = safe.step(acts)
        view, _, _, _, vinfo = compact.step(acts)
        assert view.dtype == torch.uint8 and torch.equal(view.float(), obs)
        assert torch.equal(vinfo["final_obs"].float(), info["final_obs"])
    assert (term | trunc).all()
    assert torch.equal(obs0, keep)                        # copy_obs=True: never overwritten
    assert view.data_ptr() == view0.data_ptr()            # copy_obs=False: the internal buffer
    lay = safe.layout_of(0)
    assert lay.walls.shape == (5, 5) and tuple(safe.pos[0].tolist()) == lay.start


def test_discounted_q_by_hand():
    # mouse facing east, one floor cell, then the food: forward, forward eats it and ends
    text = "#####\n#>.F#\n#####"
    cfg = MazeConfig(size=5, n_food=1, n_shock=0)
    g = 0.9
    q, s0 = discounted_q(text, cfg, gamma=g)
    step, food = cfg.step_cost, cfg.reward_food  # the env rounds rewards to float32: abs 1e-6
    fwd = step + g * (step + food)
    assert q[2, s0] == pytest.approx(fwd, abs=1e-6)
    # turning left (to face north) costs a step; the best from there: turn right back, then fwd
    assert q[0, s0] == pytest.approx(step + g * (step + g * fwd), abs=1e-6)
    assert q[:, s0].argmax() == 2
    with pytest.raises(MazeError, match=r"gamma must be in \(0, 1\)"):
        discounted_q(text, cfg, gamma=1.0)
