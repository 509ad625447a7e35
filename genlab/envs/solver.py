"""The exact best return of a mouse maze: the yardstick of evaluation.

`optimal_return(layout, cfg)` is the largest undiscounted return any action sequence earns in
one episode from the layout's start state under `cfg`'s rewards and step limit; evaluation
reports optimal_ratio = return / optimal_return (meaningful when the optimum is > 0).

Method: backward dynamic programming over the step budget. A state is (cell, heading,
eaten-food bitmask); V_t(s) is the best return with t steps left, V_0 = 0, and
    V_t(s) = max_a  r(s, a) + [s' not terminal] * V_{t-1}(s')
where s' is terminal when all food is eaten. This is exact for any reward signs, step costs
and limits: it knows that an episode runs on (paying step costs) until it terminates or is
truncated, that crossing a shock may beat a detour, and that within a short limit the best
plan may eat only some of the food. Cost: max_steps x (H*W*4*2^F) x 3 numpy operations,
a few ms for the default 9 x 9 maze with 3 food.

Rewards are the env's float32 `reward_table`, summed in float64, so the optimum matches the
env's returns to ~1e-12.

`brute_force_return` enumerates every action sequence (3^depth) with its own simple
simulation; it exists to check the solver on tiny mazes.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from genlab.envs.maze import (
    DELTAS,
    OUT_BUMP,
    OUT_FOOD,
    OUT_MOVE,
    OUT_SHOCK,
    OUT_TURN,
    TURN,
    Layout,
    MazeConfig,
    MazeError,
    as_layout,
    reward_table,
)

__all__ = ["Solution", "brute_force_return", "discounted_q", "optimal_return", "solve", "transitions"]

_MAX_FOOD = 16


@dataclass(frozen=True)
class Solution:
    """The optimum: its return, one optimal action sequence and whether it eats all food."""

    return_: float
    actions: tuple[int, ...]
    eats_all: bool


def transitions(lay: Layout, cfg: MazeConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """The maze as a deterministic MDP: next state, reward and terminal flag per (action, state),
    each (3, S), and the start state. A state is (cell * 4 + heading) * 2^F + eaten-food mask,
    over all cells (walls are never visited)."""
    h, w = lay.shape
    hw = h * w
    food_cells = np.flatnonzero(lay.food)
    nf = len(food_cells)
    if nf > _MAX_FOOD:
        raise MazeError(f"the exact solver handles at most {_MAX_FOOD} food cells, got {nf}")
    nm = 1 << nf
    full = nm - 1
    rew = reward_table(cfg).astype(np.float64)
    walls = lay.walls.ravel()
    shocks = lay.shocks.ravel()
    food_bit = np.zeros(hw, np.int64)
    food_bit[food_cells] = 1 << np.arange(nf)

    # State s = (cell * 4 + heading) * nm + mask, over all cells (walls are never visited).
    cell = np.arange(hw)[:, None, None]
    head = np.arange(4)[None, :, None]
    mask = np.arange(nm)[None, None, :]
    shape = (hw, 4, nm)
    nxt = np.empty((3, *shape), np.int64)
    r = np.empty((3, *shape), np.float64)
    term = np.zeros((3, *shape), bool)
    for a in (0, 1):  # turns: same cell and mask, new heading
        nxt[a] = (cell * 4 + (head + TURN[a]) % 4) * nm + mask
        r[a] = rew[OUT_TURN]
    off = np.array([dr * w + dc for dr, dc in DELTAS])[head]          # (1, 4, 1)
    tgt = np.clip(cell + off, 0, hw - 1)                               # walls' own moves: unused
    bump = walls[tgt] | walls[cell]
    new_cell = np.where(bump, cell, tgt)
    bit = food_bit[new_cell]
    ate = ~bump & ((mask & bit) == 0) & (bit != 0)
    new_mask = mask | np.where(ate, bit, 0)
    shocked = ~bump & shocks[new_cell]
    nxt[2] = (new_cell * 4 + head) * nm + new_mask
    r[2] = np.where(bump, rew[OUT_BUMP],
                    np.where(ate, rew[OUT_FOOD], np.where(shocked, rew[OUT_SHOCK], rew[OUT_MOVE])))
    term[2] = new_mask == full
    s0 = ((lay.start[0] * w + lay.start[1]) * 4 + lay.heading) * nm
    return nxt.reshape(3, -1), r.reshape(3, -1), term.reshape(3, -1), s0


def discounted_q(layout: Layout | str, cfg: MazeConfig | None = None, gamma: float = 0.99,
                 iters: int = 2000, tol: float = 1e-10) -> tuple[np.ndarray, int]:
    """Q*(a, s) (3, S) of the infinite-horizon gamma-discounted maze (no step limit), by value
    iteration, and the start state: what a DQN with discount gamma is asked to learn."""
    if not 0.0 < gamma < 1.0:  # value iteration converges only for a contraction
        raise MazeError(f"gamma must be in (0, 1) for the infinite-horizon values, got {gamma}")
    lay = as_layout(layout)
    nxt, r, term, s0 = transitions(lay, cfg or MazeConfig())
    v = np.zeros(nxt.shape[1])
    for _ in range(iters):
        q = r + gamma * np.where(term, 0.0, v[nxt])
        v_new = q.max(0)
        if np.abs(v_new - v).max() < tol:
            break
        v = v_new
    return q, s0


def solve(layout: Layout | str, cfg: MazeConfig | None = None) -> Solution:
    """Exact best return from the start state within cfg.max_steps, with an optimal plan."""
    lay = as_layout(layout)
    cfg = cfg or MazeConfig()
    nxt, r, term, s0 = transitions(lay, cfg)

    T = cfg.max_steps
    v = np.zeros(nxt.shape[1])
    policy = np.empty((T, nxt.shape[1]), np.int8)  # policy[t-1]: best action with t steps left
    for t in range(1, T + 1):
        q = r + np.where(term, 0.0, v[nxt])
        policy[t - 1] = q.argmax(0)
        v = q.max(0)
    best = float(v[s0])
    actions: list[int] = []
    s, done = s0, False
    for t in range(T, 0, -1):
        a = int(policy[t - 1, s])
        actions.append(a)
        done = bool(term[a, s])
        s = int(nxt[a, s])
        if done:
            break
    return Solution(best, tuple(actions), done)


def optimal_return(layout: Layout | str, cfg: MazeConfig | None = None) -> float:
    """The best achievable undiscounted return of one episode from the layout's start state."""
    return solve(layout, cfg).return_


def brute_force_return(layout: Layout | str, cfg: MazeConfig | None = None,
                       depth: int | None = None) -> float:
    """Best return over all 3^depth action sequences (tests only; depth <= ~12).

    The episode ends when all food is eaten or after min(depth, cfg.max_steps) steps."""
    lay = as_layout(layout)
    cfg = cfg or MazeConfig()
    depth = cfg.max_steps if depth is None else min(depth, cfg.max_steps)
    rew = [float(x) for x in reward_table(cfg)]
    walls, shocks = lay.walls, lay.shocks
    n_food = lay.n_food

    def best(r: int, c: int, h: int, eaten: frozenset, left: int) -> float:
        if left == 0:
            return 0.0
        out = -np.inf
        for a in (0, 1, 2):
            nr, nc, nh, ne = r, c, h, eaten
            if a != 2:
                nh = (h + TURN[a]) % 4
                gain = rew[OUT_TURN]
            else:
                tr, tc = r + DELTAS[h][0], c + DELTAS[h][1]
                if walls[tr, tc]:
                    gain = rew[OUT_BUMP]
                else:
                    nr, nc = tr, tc
                    if lay.food[nr, nc] and (nr, nc) not in eaten:
                        ne = eaten | {(nr, nc)}
                        gain = rew[OUT_FOOD]
                    elif shocks[nr, nc]:
                        gain = rew[OUT_SHOCK]
                    else:
                        gain = rew[OUT_MOVE]
            if len(ne) == n_food:
                total = gain
            else:
                total = gain + best(nr, nc, nh, ne, left - 1)
            out = max(out, total)
        return out

    return best(lay.start[0], lay.start[1], lay.heading, frozenset(), depth)
