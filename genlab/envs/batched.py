"""N mouse mazes stepped at once in torch, on CPU or GPU.

`BatchedMaze` has exactly the dynamics, rewards (bit-identical float32), flags and observation
encoding of `genlab.envs.maze.MouseMazeEnv`: slot i behaves like a `MouseMazeEnv` that was
`reset(seed=seeds[i])` once and then `reset()` (no seed) whenever its episode ended.

Autoreset ("same-step"): when slot i terminates or truncates, `step` resets it at once. The
returned `obs[i]` is then the *first* observation of its next episode, while reward[i],
terminated[i], truncated[i] and the counters in info belong to the episode that just ended.
`info["final_obs"]` is the observation reached by this step *before* any autoreset, for every
slot (so it equals `obs` where no episode ended): use it as s' in TD targets,
`target = r + gamma * (1 - terminated) * V(info["final_obs"])`.

Where mazes come from
    - layout pool (`layouts=`): episode e of slot i plays pool[episode_seed(seeds[i], e) % K]
      (`order="hash"`, the same rule as MouseMazeEnv(layouts=pool)), or pool[(i + e*N) % K]
      (`order="round_robin"`: with K = N, slot i always replays layout i - evaluation sets and
      fixed-layout training). Pool layouts are stored as tensors; resets are a few gathers,
      computed on the device without host syncs in the index computation.
    - seed stream (no `layouts`): episode e of slot i plays generate_layout(cfg,
      episode_seed(seeds[i], e)), made with numpy on the host at reset time (~0.1 ms a maze):
      every episode a new maze, but slower than a pool. `generate_pool` makes a big pool from
      the same stream.

Internals: the state lives in flat tensors, cell (i, r, c) at i*H*W + r*W + c, so a move is an
index add and a lookup; the observation is a persistent (N, 8, H, W) tensor of which a step
rewrites only the mouse/heading/food cells that changed.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from genlab.envs.maze import (
    _SEED_P,
    CHANNELS,
    DELTAS,
    TURN,
    Layout,
    MazeConfig,
    MazeError,
    as_layout,
    generate_layout,
    reward_table,
)

__all__ = ["BatchedMaze", "episode_seed_t"]


def _mix_t(x: torch.Tensor) -> torch.Tensor:
    """torch twin of maze._mix (int64, values < 2**31 so products stay < 2**62)."""
    x = (x * 1103515245 + 12345) % _SEED_P
    x = x ^ (x >> 16)
    x = (x * 747796405 + 289133645) % _SEED_P
    x = x ^ (x >> 13)
    return x % _SEED_P


def episode_seed_t(base_seed: torch.Tensor, episode: torch.Tensor) -> torch.Tensor:
    """Vectorised `maze.episode_seed` (int64 tensors, non-negative)."""
    b = _mix_t((base_seed % _SEED_P) ^ ((base_seed // _SEED_P) % _SEED_P))
    return _mix_t((b + episode) % _SEED_P)


def _stack_layouts(layouts: Sequence[Layout], device: torch.device, obs_dtype: torch.dtype) -> dict:
    """Pool tensors: walls/food/shocks (K, H*W) bool, start (K,) flat index, heading (K,),
    n_food (K,), obs (K, C*H*W) - the first observation of each layout."""
    h, w = layouts[0].shape
    walls = np.stack([l.walls.ravel() for l in layouts])
    food = np.stack([l.food.ravel() for l in layouts])
    shocks = np.stack([l.shocks.ravel() for l in layouts])
    start = np.array([l.start[0] * w + l.start[1] for l in layouts], np.int64)
    heading = np.array([l.heading for l in layouts], np.int64)
    k = len(layouts)
    obs = np.zeros((k, len(CHANNELS), h * w), np.float32)
    obs[:, 0], obs[:, 1], obs[:, 2] = walls, food, shocks
    obs[np.arange(k), 3, start] = 1.0
    obs[np.arange(k), 4 + heading, start] = 1.0
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(device)
    return {"walls": t(walls), "food": t(food), "shocks": t(shocks), "start": t(start),
            "heading": t(heading), "n_food": t(food.sum(1).astype(np.int64)),
            "obs": t(obs.reshape(k, -1)).to(obs_dtype)}


class BatchedMaze:
    """N mouse mazes as tensors (see the module docstring for autoreset and maze sources).

    BatchedMaze(num_envs, config=None, device="cpu", layouts=None, order="hash",
                copy_obs=True, obs_dtype=torch.float32)
      - layouts: a pool of mazes (Layouts or text, all one shape); None = seed stream.
      - copy_obs: step/reset return fresh obs and info["final_obs"] tensors (safe default).
        False returns internal buffers (no full copies: the fast path for a training loop that
        copies obs into its own replay buffer anyway); they are overwritten by the next
        step/reset, so copy what you keep.
      - obs_dtype: float32 as the Gymnasium env; torch.uint8 for compact replay buffers.
      - threads: torch intra-op threads while step/reset run on CPU (restored afterwards;
        None = leave torch's setting). Default 1: the ops are small (N elements) and some
        (index_fill_, take) enter OpenMP regions that cost milliseconds when the cores are
        shared - measured 20 ms instead of 50 us per call with 2 threads on a loaded 2-core box.

    reset(seeds=None, layouts=None) -> (obs, info): seeds is an int (slot i gets seed + i, as
      Gymnasium vector envs do), a list or an int64 tensor of N non-negative seeds, or None
      (random). layouts replaces the pool from now on.
    step(actions) -> (obs (N,8,H,W), reward (N,) float32, terminated (N,) bool,
      truncated (N,) bool, info) with info tensors (N,): food_left, shocks, bumps, steps,
      episode_return (float32 sum of this episode's rewards), all for the episode the step
      belonged to (before autoreset), plus final_obs (N,8,H,W).
    Host syncs per step: one (done.nonzero()) on any device; seed-stream resets add the maze
    generation on the host. No Python loop over mazes in step.
    State tensors (read-only for users): walls/food/shocks (N,H,W) bool views, pos (N,2),
    heading (N,), steps (N,), food_left (N,), episode (N,) (episodes started since reset).
    """

    def __init__(self, num_envs: int, config: MazeConfig | None = None, device: str | torch.device = "cpu",
                 layouts: Sequence[Layout | str] | None = None, order: str = "hash",
                 copy_obs: bool = True, obs_dtype: torch.dtype = torch.float32,
                 threads: int | None = 1):
        if num_envs < 1:
            raise MazeError(f"num_envs must be >= 1, got {num_envs}")
        if order not in ("hash", "round_robin"):
            raise MazeError(f"order must be 'hash' or 'round_robin', got {order!r}")
        self.num_envs = n = int(num_envs)
        self.config = cfg = config or MazeConfig()
        self.device = torch.device(device)
        self.order = order
        self.copy_obs = copy_obs
        self.obs_dtype = obs_dtype
        self.threads = threads
        self._pool: dict | None = None
        self._pool_layouts: list[Layout] | None = None
        if layouts is not None:
            self._set_pool(layouts)
        else:
            self.grid_shape = (cfg.size, cfg.size)
        self._alloc(n)

    # -- setup -------------------------------------------------------------------------------
    def _set_pool(self, layouts: Sequence[Layout | str]) -> None:
        pool = [as_layout(x) for x in layouts]
        if not pool:
            raise MazeError("layouts is empty")
        shape = pool[0].shape
        if any(p.shape != shape for p in pool):
            raise MazeError("all layouts in a pool must have the same shape")
        if hasattr(self, "_obs") and tuple(shape) != self.grid_shape:
            raise MazeError(f"new layouts have shape {shape}, this env has {self.grid_shape}")
        self.grid_shape = (int(shape[0]), int(shape[1]))
        self._pool_layouts = pool
        self._pool = _stack_layouts(pool, self.device, self.obs_dtype)

    def _alloc(self, n: int) -> None:
        d = self.device
        h, w = self.grid_shape
        self.hw = hw = h * w
        c = len(CHANNELS)
        self._walls = torch.ones(n * hw, dtype=torch.bool, device=d)
        self._food = torch.zeros(n * hw, dtype=torch.bool, device=d)
        self._shocks = torch.zeros(n * hw, dtype=torch.bool, device=d)
        # _obs: the current observation (after autoreset). With copy_obs=False, _fin is the
        # observation reached by the last step before autoreset: it gets the same cell updates
        # and differs only in the rows reset by the last step, re-synced (_pending) at the next
        # step. With copy_obs=True the final observation is a clone taken before the resets.
        self._obs = torch.zeros(n, c * hw, dtype=self.obs_dtype, device=d)
        self._bufs = [self._obs.view(-1)]
        self._fin = None
        if not self.copy_obs:
            self._fin = torch.zeros_like(self._obs)
            self._bufs.append(self._fin.view(-1))
        self._pending: torch.Tensor | None = None
        z = lambda dt=torch.int64: torch.zeros(n, dtype=dt, device=d)
        self._pos, self.heading, self.steps, self.food_left = z(), z(), z(), z()
        self.shocks, self.bumps, self.episode, self.seeds = z(), z(), z(), z()
        self.episode_return = z(torch.float32)
        ar = torch.arange(n, device=d)
        self._cell_base = ar * hw                # first cell of maze i in the flat state
        self._mouse_base = ar * (c * hw) + 3 * hw  # obs channel 3 of maze i
        self._head_off = (torch.arange(4, device=d) + 1) * hw  # channel 4+h relative to 3
        self._arange = ar
        self._off = torch.tensor([dr * w + dc for dr, dc in DELTAS], device=d)
        self._dh = torch.tensor(TURN, device=d)
        self._rew = torch.from_numpy(reward_table(self.config)).to(d)
        self._on_cpu = d.type == "cpu"

    # -- views -------------------------------------------------------------------------------
    @property
    def walls(self) -> torch.Tensor:
        return self._walls.view(self.num_envs, *self.grid_shape)

    @property
    def food(self) -> torch.Tensor:
        return self._food.view(self.num_envs, *self.grid_shape)

    @property
    def shock_cells(self) -> torch.Tensor:
        return self._shocks.view(self.num_envs, *self.grid_shape)

    @property
    def pos(self) -> torch.Tensor:
        """(N, 2) int64 (row, col) of each mouse."""
        w = self.grid_shape[1]
        return torch.stack([self._pos // w, self._pos % w], 1)

    @property
    def obs_shape(self) -> tuple[int, int, int]:
        return (len(CHANNELS), *self.grid_shape)

    def layout_of(self, i: int) -> Layout:
        """Slot i's current state as a Layout (food as it is now; start = the mouse now)."""
        w = self.grid_shape[1]
        p = int(self._pos[i])
        return Layout(self.walls[i].cpu().numpy(), self.food[i].cpu().numpy(),
                      self.shock_cells[i].cpu().numpy(), divmod(p, w), int(self.heading[i]))

    def _out(self) -> torch.Tensor:
        o = self._obs.clone() if self.copy_obs else self._obs
        return o.view(self.num_envs, *self.obs_shape)

    # -- reset -------------------------------------------------------------------------------
    def _single_threaded(self, fn, *args):
        if self.threads is None or not self._on_cpu:
            return fn(*args)
        prev = torch.get_num_threads()
        if prev == self.threads:
            return fn(*args)
        torch.set_num_threads(self.threads)
        try:
            return fn(*args)
        finally:
            torch.set_num_threads(prev)

    def reset(self, seeds: int | Sequence[int] | torch.Tensor | None = None,
              layouts: Sequence[Layout | str] | None = None):
        """Start episode 0 in every slot; see the class docstring. Returns (obs, info)."""
        return self._single_threaded(self._reset, seeds, layouts)

    def step(self, actions: torch.Tensor):
        """Advance every maze by one action (0 left, 1 right, 2 forward); see the class doc.
        Returns (obs, reward, terminated, truncated, info)."""
        return self._single_threaded(self._step, actions)

    def _reset(self, seeds, layouts):
        n = self.num_envs
        if layouts is not None:
            self._set_pool(layouts)
        if seeds is None:
            seeds = torch.randint(0, 2**62, (n,))
        elif isinstance(seeds, (int, np.integer)):
            seeds = torch.arange(n, dtype=torch.int64) + int(seeds)
        seeds = torch.as_tensor(seeds, dtype=torch.int64)
        if seeds.shape != (n,):
            raise MazeError(f"seeds must have {n} entries, got shape {tuple(seeds.shape)}")
        if bool((seeds < 0).any()):
            raise MazeError("seeds must be non-negative")
        self.seeds = seeds.to(self.device)
        self.episode.zero_()
        self._reset_slots(self._arange)
        if self._fin is not None:
            self._fin.copy_(self._obs)
        self._pending = None
        info = {"food_left": self.food_left.clone(), "shocks": self.shocks.clone(),
                "bumps": self.bumps.clone(), "steps": self.steps.clone()}
        return self._out(), info

    def _reset_slots(self, idx: torch.Tensor) -> None:
        """Start the next episode in slots `idx` (episode counters already set)."""
        if self._pool is not None:
            pool = self._pool
            if self.order == "hash":
                k = episode_seed_t(self.seeds[idx], self.episode[idx]) % len(self._pool_layouts)
            else:
                k = (idx + self.episode[idx] * self.num_envs) % len(self._pool_layouts)
        else:
            ms = episode_seed_t(self.seeds[idx], self.episode[idx]).tolist()
            pool = _stack_layouts([generate_layout(self.config, s) for s in ms], self.device,
                                  self.obs_dtype)
            k = torch.arange(len(ms), device=self.device)
        n, hw = self.num_envs, self.hw
        self._walls.view(n, hw)[idx] = pool["walls"][k]
        self._food.view(n, hw)[idx] = pool["food"][k]
        self._shocks.view(n, hw)[idx] = pool["shocks"][k]
        self._obs[idx] = pool["obs"][k]
        self._pos[idx] = pool["start"][k]
        self.heading[idx] = pool["heading"][k]
        self.food_left[idx] = pool["n_food"][k]
        for t in (self.steps, self.shocks, self.bumps, self.episode_return):
            t[idx] = 0

    # -- step --------------------------------------------------------------------------------
    def _step(self, actions: torch.Tensor):
        # (index_select / index_fill_ rather than t[idx]: several times cheaper on CPU)
        a = actions if isinstance(actions, torch.Tensor) else torch.as_tensor(actions)
        if a.shape != (self.num_envs,):
            raise MazeError(f"actions must have shape ({self.num_envs},), got {tuple(a.shape)}")
        a = a.to(self.device, torch.int64, non_blocking=True)  # values 0..2 (not checked: no sync)
        h, p = self.heading, self._pos
        fwd = a == 2
        new_h = (h + self._dh.index_select(0, a)) & 3
        tgt = p + self._off.index_select(0, h) * fwd  # turns target their own cell
        wall = self._walls.index_select(0, self._cell_base + tgt)  # never true for a turn
        moved = fwd > wall
        new_p = torch.where(moved, tgt, p)
        cell = self._cell_base + new_p
        ate = self._food.index_select(0, cell)        # the mouse's own cell never holds food
        shocked = self._shocks.index_select(0, cell) & moved
        self._food.index_fill_(0, cell, False)
        # outcome: 0 turn, 1 bump, 2 move, 3 food, 4 shock (see maze.reward_table)
        outcome = fwd.long()
        outcome += moved
        outcome += ate
        outcome += shocked
        outcome += shocked
        reward = self._rew.index_select(0, outcome)
        # observation: move the mouse and its heading mark, clear eaten food
        if self._pending is not None:  # rows reset by the last step: final obs := current obs
            self._fin[self._pending] = self._obs[self._pending]
            self._pending = None
        old_m = self._mouse_base + p
        new_m = self._mouse_base + new_p
        food_at = new_m - 2 * self.hw
        if self._on_cpu:  # few mazes eat per step: a masked select beats 4,096 writes on CPU
            food_at = food_at[ate]  # (on GPU it would add a host sync)
        zero_at = torch.cat([old_m, old_m + self._head_off.index_select(0, h), food_at])
        one_at = torch.cat([new_m, new_m + self._head_off.index_select(0, new_h)])
        for buf in self._bufs:
            buf.index_fill_(0, zero_at, 0)
            buf.index_fill_(0, one_at, 1)
        self.heading, self._pos = new_h, new_p
        self.steps += 1
        self.food_left -= ate.long()
        self.shocks += shocked
        self.bumps += fwd & wall
        self.episode_return += reward
        terminated = self.food_left == 0
        truncated = (self.steps >= self.config.max_steps) > terminated
        info = {"food_left": self.food_left.clone(), "shocks": self.shocks.clone(),
                "bumps": self.bumps.clone(), "steps": self.steps.clone(),
                "episode_return": self.episode_return.clone()}
        done = terminated | truncated
        idx = done.nonzero().squeeze(1)
        shape = (self.num_envs, *self.obs_shape)
        if idx.numel():
            final = self._obs.clone() if self.copy_obs else self._fin
            self.episode[idx] += 1
            self._reset_slots(idx)
            if not self.copy_obs:
                self._pending = idx
            out = self._out()
            info["final_obs"] = final.view(shape)
        else:  # nothing reset: the final observation is the observation
            out = self._out()
            info["final_obs"] = out
        return out, reward, terminated, truncated, info
