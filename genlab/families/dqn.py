"""DQN for the robot mouse (SPECS §2), trained by the shared trainer (issue 5).

The agent fits the data-driven loop like this: the `maze` data source lists mazes (val/test:
held-out maze seeds), but training experience comes from the family's own `BatchedMaze`.
Every trainer step is one `training_step`:

    1. act `env_steps_per_update` times in all `num_envs` mazes, epsilon-greedy; epsilon falls
       linearly from eps_start to eps_end over the first `exploration_fraction` of train.steps;
    2. turn the steps into n-step transitions (s, a, R, gamma^m or 0, s') in the replay buffer;
    3. once `learning_starts` transitions are stored: one TD update on a uniform minibatch of
       train.batch_size, Huber loss, through ctx.update (the trainer clips the gradient norm to
       train.grad_clip); Double DQN picks a' with the online net and scores it with the target;
    4. every `target_update_every` steps: target <- tau * online + (1 - tau) * target
       (tau = 1: a hard copy).
The index batch the trainer samples from the data source is not used for training (the family
sets `uses_train_batches = False`, so the trainer does not even build it).

State: everything that makes the next step what it is lives in the module's state_dict, so the
trainer's checkpoint/resume continues exactly - the online and target nets, the replay buffer
(contents, position, size), the n-step window of the last n steps, the envs' state (mazes, mouse,
counters, seed streams; `EnvState`), recent episode statistics and epsilon (a function of the
step, stored too). Randomness (epsilon-greedy, minibatch indices) comes from torch's global RNG,
which the trainer seeds and checkpoints.

n-step returns across episode ends (same-step autoreset): the window holds, per env, the last n
steps (obs, action, reward, terminated, done, final obs); the oldest step's transition is
    R = sum_{k<m} gamma^k r_k,   m = 1 + index of the first step in the window that ended an
    episode (else n),   s' = final_obs of step m-1 (the env's info["final_obs"], *before* the
    reset), discount = 0 if that step terminated (all food eaten) else gamma^m.
Truncation (max_steps) is not terminal: the agent sees no clock, so it bootstraps from s'.

Evaluation: greedy episodes on the batch's maze seeds (held out), one per maze, scored against
the exact optimum (genlab.envs.solver): optimal_ratio = return / optimal (clipped at 1; a maze
whose optimum is <= 0 counts 1 when the agent matches the optimum and 0 otherwise - never the
case with the default rewards, where eating the food always pays).

Replay memory: observations are 0/1 in 8 channels, stored bit-packed, one uint8 per cell
(81 bytes per 9 x 9 observation instead of 2,592 as float32).
"""
from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from genlab.core.errors import RecipeError
from genlab.core.registry import register_family
from genlab.core.schema import param
from genlab.data.base import DataInfo
from genlab.data.sampler import derive_seed
from genlab.engine import distributed
from genlab.envs.batched import BatchedMaze
from genlab.envs.maze import CHANNELS, Layout, MouseMazeEnv
from genlab.families.base import Family, StepContext
from genlab.nn.optim import build_optimizer

_STATS = 100  # finished training episodes kept for charts/episodic_return


@dataclass
class DQNConfig:
    # -- network
    arch: Literal["conv", "mlp", "plan"] = param(
        "conv", help="conv: 3x3 same-size convs then an MLP; mlp: MLP on the flat maze; plan: a learned "
                     "value-iteration module read out around the mouse (see PlanTrunk)")
    channels: list[int] = param(default_factory=lambda: [32, 32], ge=1,
                                help="conv widths, one 3x3 stride-1 layer each (arch: conv, plan)")
    plan_iters: int = param(20, ge=1, help="value-iteration sweeps (arch: plan); >= the longest path to food "
                            "(9x9 mazes: up to 26 steps; fewer leave V flat far from food)")
    plan_moves: Literal["grid", "learned"] = param(
        "grid", help="planning transitions (arch: plan): grid = the 4 moves and stay, each reading one "
                     "neighbour's value (the maze is a 4-connected grid); learned = plan_actions "
                     "softmax 3x3 kernels, as in Value Iteration Networks")
    plan_actions: int = param(8, ge=1, help="internal actions of the planning module (arch: plan, "
                                            "plan_moves: learned; grid has 5)")
    hidden: list[int] = param(default_factory=lambda: [256], ge=1, help="hidden widths of the MLP head")
    crop_border: bool = param(True, help="skip the outer wall ring (every layout's border is wall): the "
                              "first conv is unpadded (9x9 -> 7x7 maps), the MLP sees the interior only")
    dueling: bool = param(True, help="dueling head: Q = V + A - mean(A)")
    double: bool = param(True, help="Double DQN: the online net picks a', the target net scores it")
    # -- acting
    num_envs: int = param(32, ge=1, help="mazes stepped in parallel (BatchedMaze)")
    env_steps_per_update: int = param(1, ge=1, help="env steps (of all num_envs mazes) per TD update")
    eps_start: float = param(1.0, ge=0, le=1, help="epsilon of epsilon-greedy at step 0")
    eps_end: float = param(0.05, ge=0, le=1, help="epsilon floor")
    exploration_fraction: float = param(0.3, gt=0, le=1,
                                        help="fraction of train.steps over which epsilon falls to eps_end")
    explore_repeat: int = param(1, ge=1, help="ez-greedy (Dabney et al. 2020): an exploratory action is "
                                "repeated n ~ zeta(2) times, n <= this (runs down corridors, turns "
                                "around); 1 = plain epsilon-greedy")
    # -- learning
    buffer_size: int = param(100_000, ge=1, help="replay capacity in transitions (kept on the device)")
    learning_starts: int = param(5_000, ge=0, help="transitions stored before the first TD update")
    gamma: float = param(0.99, gt=0, le=1, help="discount factor")
    n_step: int = param(3, ge=1, help="n of the n-step return (1 = plain one-step TD)")
    target_update_every: int = param(250, ge=1, help="training steps between target-network updates")
    tau: float = param(1.0, gt=0, le=1, help="target update: target <- tau*online + (1-tau)*target (1 = hard copy)")
    huber_delta: float = param(1.0, gt=0, help="Huber loss threshold (smooth L1 beyond it)")

    def __post_init__(self):
        if self.eps_end > self.eps_start:
            raise ValueError(f"eps_end ({self.eps_end}) must not exceed eps_start ({self.eps_start})")
        if self.arch == "conv" and not self.channels:
            raise ValueError("channels: a conv Q-network needs at least one layer")


# -- the Q-network -----------------------------------------------------------------------------
class PlanTrunk(nn.Module):
    """A learned value-iteration module, read out in the mouse's own frame (arch: plan).

    After Tamar et al., "Value Iteration Networks" (2016): convs turn the maze (wall, food,
    shock channels) into features and a reward map R (B, A, H, W) of A internal actions; then
    `plan_iters` Bellman sweeps
        Q_k = R + gamma * conv(V_{k-1}, P),   V_k = max_a Q_k        (V_0 = 0)
    where P (A, 3, 3) is the transition kernel of internal action a and gamma in (0, 1) is
    learned: each sweep is a contraction, so V stays bounded whatever the number of sweeps, and
    V_k "sees" k cells far. `plan_moves: grid` (default) fixes the kernels to the maze's own
    moves - stay, N, E, S, W, each a one-hot on that neighbour - so R alone (learned from the
    walls, food and shocks around a cell) decides what a move is worth and values spread along
    the floor only, not through walls; `learned` makes P a softmax over the 3x3 neighbourhood
    per action (plan_actions of them), as in the VIN paper.
    Readout: the maps [V, Q, features] at the mouse's cell and the cells in front, to its right,
    behind and to its left (in that order whatever its heading), so "forward" always reads the
    same slot. Output (B, 5 * (1 + A + C)).
    """

    def __init__(self, in_shape: tuple[int, int, int], cfg: DQNConfig):
        super().__init__()
        _, h, w = in_shape
        layers: list[nn.Module] = []
        c = 3  # wall, food, shock: the mouse enters only through the readout
        for width in cfg.channels:
            layers += [nn.Conv2d(c, width, 3, padding=1), nn.ReLU()]
            c = width
        self.features = nn.Sequential(*layers)
        if cfg.plan_moves == "grid":  # stay, N, E, S, W as positions in the 3x3 neighbourhood
            a = 5
            self.register_buffer("moves", F.one_hot(torch.tensor([4, 1, 5, 7, 3]), 9).float(),
                                 persistent=False)
            self.trans_logits = None
        else:
            a = cfg.plan_actions
            self.trans_logits = nn.Parameter(0.1 * torch.randn(a, 9))
        self.reward = nn.Conv2d(c, a, 3, padding=1)
        self.gamma_logit = nn.Parameter(torch.tensor(math.log(0.9 / 0.1)))
        self.iters = cfg.plan_iters
        # flat offsets of (own, front, right, back, left) cells, by heading N, E, S, W
        from genlab.envs.maze import DELTAS

        offs = [[0] + [DELTAS[(hd + k) % 4][0] * w + DELTAS[(hd + k) % 4][1] for k in range(4)]
                for hd in range(4)]
        self.register_buffer("offsets", torch.tensor(offs), persistent=False)
        # neighbours[k, c, n] = 1 where cell n is neighbour k (3x3, row-major) of cell c
        nb = torch.zeros(9, h * w, h * w)
        for k in range(9):
            dr, dc = k // 3 - 1, k % 3 - 1
            for i in range(h):
                for j in range(w):
                    if 0 <= i + dr < h and 0 <= j + dc < w:
                        nb[k, i * w + j, (i + dr) * w + j + dc] = 1.0
        self.register_buffer("neighbours", nb, persistent=False)
        self.out_features = 5 * (1 + a + c)

    def plan(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """V (B, 1, H, W), Q (B, A, H, W) after the sweeps, and the features (B, C, H, W)."""
        feat = self.features(x[:, :3])
        r = self.reward(feat)
        a = r.shape[1]
        b, _, h, w = r.shape
        hw = h * w
        p = self.moves if self.trans_logits is None else torch.softmax(self.trans_logits, 1)
        kernel = torch.sigmoid(self.gamma_logit) * p                                    # (A, 9)
        # the sweep as one dense linear map V (B, HW) -> (B, A*HW): T[a, c, n] = P_a(n - c)
        # (one small matmul per sweep: far cheaper on a CPU than a 1-channel conv2d)
        t = torch.einsum("ak,kcn->acn", kernel, self.neighbours).reshape(a * hw, hw)
        r = r.flatten(1)                                                # (B, A*HW)
        v = torch.zeros(b, hw, dtype=r.dtype, device=r.device)
        q = r
        for _ in range(self.iters):
            q = torch.addmm(r, v, t.t())
            v = q.view(b, a, hw).amax(1)
        return v.view(b, 1, h, w), q.view(b, a, h, w), feat

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v, q, feat = self.plan(x)
        maps = torch.cat([v, q, feat], 1).flatten(2)                 # (B, M, H*W)
        pos = x[:, 3].flatten(1).argmax(1)                            # (B,) mouse cell
        heading = x[:, 4:8].flatten(2).amax(2).argmax(1)              # (B,) 0..3
        idx = (pos[:, None] + self.offsets[heading]).clamp(0, maps.shape[2] - 1)  # (B, 5)
        return maps.gather(2, idx[:, None, :].expand(-1, maps.shape[1], -1)).flatten(1)


class QNet(nn.Module):
    """(B, 8, H, W) maze observation -> (B, 3) action values."""

    def __init__(self, in_shape: tuple[int, int, int], cfg: DQNConfig):
        super().__init__()
        c, h, w = in_shape
        layers: list[nn.Module] = []
        if cfg.arch == "plan":
            plan = PlanTrunk(in_shape, cfg)
            layers.append(plan)
            c, h, w = plan.out_features, 1, 1
        elif cfg.arch == "conv":
            if cfg.crop_border:
                h, w = h - 2, w - 2
            for i, width in enumerate(cfg.channels):
                # cropping: the first 3x3 conv runs unpadded, so cell (r, c) of its (H-2, W-2)
                # output still sees the border walls around interior cell (r+1, c+1)
                pad = 0 if (i == 0 and cfg.crop_border) else 1
                layers += [nn.Conv2d(c, width, 3, padding=pad), nn.ReLU()]
                c = width
            layers.append(nn.Flatten())
        else:
            if cfg.crop_border:
                h, w = h - 2, w - 2
                layers.append(_Crop())
            layers.append(nn.Flatten())
        feat = c * h * w
        for width in cfg.hidden:
            layers += [nn.Linear(feat, width), nn.ReLU()]
            feat = width
        self.trunk = nn.Sequential(*layers)
        self.dueling = cfg.dueling
        self.adv = nn.Linear(feat, 3)
        self.value = nn.Linear(feat, 1) if cfg.dueling else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.trunk(x)
        a = self.adv(z)
        if self.value is None:
            return a
        return self.value(z) + a - a.mean(1, keepdim=True)


class _Crop(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, 1:-1, 1:-1]


# -- the maths, as small functions the tests check by hand -------------------------------------
def nstep_transitions(rew: torch.Tensor, term: torch.Tensor, done: torch.Tensor, gamma: float):
    """n-step return of the oldest step of a window. rew/term/done: (n, N), oldest first.

    Returns (R (N,), last (N,) index of the step whose final obs is s', discount (N,)):
    the sum stops after the first step that ended an episode (terminated or truncated), and
    discount = gamma^m for a bootstrap from s' (m steps summed), 0 if that step terminated."""
    n = rew.shape[0]
    ended = done.float()
    alive = torch.cumprod(torch.cat([torch.ones_like(ended[:1]), 1.0 - ended[:-1]]), 0)  # (n, N)
    powers = gamma ** torch.arange(n, device=rew.device, dtype=torch.float64)
    ret = (alive.double() * powers[:, None] * rew.double()).sum(0)
    m = alive.sum(0).long()  # steps summed, 1..n
    last = m - 1
    terminal = term.gather(0, last[None]).squeeze(0)
    discount = torch.where(terminal, 0.0, gamma ** m.double())
    return ret.float(), last, discount.float()


@torch.no_grad()
def td_target(ret: torch.Tensor, discount: torch.Tensor, next_obs: torch.Tensor, online: nn.Module,
              target: nn.Module, double: bool) -> torch.Tensor:
    """y = R + discount * Q_target(s', a'), a' = argmax Q_online(s') (double) or argmax Q_target(s')."""
    q_t = target(next_obs).float()
    if double:
        a_next = online(next_obs).argmax(1, keepdim=True)
        v = q_t.gather(1, a_next).squeeze(1)
    else:
        v = q_t.max(1).values
    return ret + discount * v


_SHIFTS = torch.arange(len(CHANNELS), dtype=torch.uint8)


def pack_obs(obs: torch.Tensor) -> torch.Tensor:
    """(B, 8, H, W) 0/1 -> (B, H, W) uint8, channel c in bit c."""
    o = obs.to(torch.uint8) << _SHIFTS.to(obs.device)[None, :, None, None]
    return o.sum(1, dtype=torch.uint8)


def unpack_obs(packed: torch.Tensor) -> torch.Tensor:
    """(B, H, W) uint8 -> (B, 8, H, W) float32 0/1."""
    return ((packed[:, None] >> _SHIFTS.to(packed.device)[None, :, None, None]) & 1).float()


# -- replay memory -----------------------------------------------------------------------------
class Replay(nn.Module):
    """Uniform replay of n-step transitions and the n-step window, as buffers (so the
    checkpoint holds them). Transition i: obs[i], action[i], ret[i], discount[i], next_obs[i]."""

    def __init__(self, capacity: int, grid: tuple[int, int], num_envs: int, n_step: int, gamma: float):
        super().__init__()
        self.capacity, self.n, self.gamma = capacity, n_step, gamma
        h, w = grid
        u8 = {"dtype": torch.uint8}
        self.register_buffer("obs", torch.zeros(capacity, h, w, **u8))
        self.register_buffer("next_obs", torch.zeros(capacity, h, w, **u8))
        self.register_buffer("action", torch.zeros(capacity, dtype=torch.long))
        self.register_buffer("ret", torch.zeros(capacity))
        self.register_buffer("discount", torch.zeros(capacity))
        self.register_buffer("pos", torch.zeros((), dtype=torch.long))   # next slot to write
        self.register_buffer("size", torch.zeros((), dtype=torch.long))  # slots filled
        # the window: the last n steps of every env, oldest first; w_len steps are valid
        self.register_buffer("w_obs", torch.zeros(n_step, num_envs, h, w, **u8))
        self.register_buffer("w_next", torch.zeros(n_step, num_envs, h, w, **u8))
        self.register_buffer("w_act", torch.zeros(n_step, num_envs, dtype=torch.long))
        self.register_buffer("w_rew", torch.zeros(n_step, num_envs))
        self.register_buffer("w_term", torch.zeros(n_step, num_envs, dtype=torch.bool))
        self.register_buffer("w_done", torch.zeros(n_step, num_envs, dtype=torch.bool))
        self.register_buffer("w_len", torch.zeros((), dtype=torch.long))

    def __len__(self) -> int:
        return int(self.size)

    def add(self, obs, action, ret, discount, next_obs) -> None:
        """Store k transitions (packed observations (k, H, W)), overwriting the oldest."""
        k = obs.shape[0]
        idx = (int(self.pos) + torch.arange(k, device=obs.device)) % self.capacity
        if k > self.capacity:  # more than fit: only the newest are kept
            idx, obs, action, ret, discount, next_obs = (
                t[-self.capacity:] for t in (idx, obs, action, ret, discount, next_obs))
        self.obs[idx], self.next_obs[idx], self.action[idx] = obs, next_obs, action
        self.ret[idx], self.discount[idx] = ret, discount
        self.pos.fill_((int(self.pos) + k) % self.capacity)
        self.size.fill_(min(int(self.size) + k, self.capacity))

    def push_step(self, obs, action, reward, terminated, done, final_obs) -> int:
        """Record one env step of all envs (packed obs); when the window holds n steps, its
        oldest step becomes a transition. Returns the number of transitions added."""
        t = int(self.w_len)
        self.w_obs[t], self.w_next[t], self.w_act[t] = obs, final_obs, action
        self.w_rew[t], self.w_term[t], self.w_done[t] = reward, terminated, done
        if t + 1 < self.n:
            self.w_len.fill_(t + 1)
            return 0
        ret, last, discount = nstep_transitions(self.w_rew, self.w_term, self.w_done, self.gamma)
        envs = torch.arange(self.w_obs.shape[1], device=obs.device)
        self.add(self.w_obs[0].clone(), self.w_act[0].clone(), ret, discount, self.w_next[last, envs])
        for buf in (self.w_obs, self.w_next, self.w_act, self.w_rew, self.w_term, self.w_done):
            buf[:-1] = buf[1:].clone()  # slide: the second oldest becomes the oldest
        return envs.numel()

    def sample(self, batch_size: int):
        """A uniform minibatch (with replacement) from the global torch RNG."""
        idx = torch.randint(int(self.size), (batch_size,), device=self.obs.device)
        return (unpack_obs(self.obs[idx]), self.action[idx], self.ret[idx], self.discount[idx],
                unpack_obs(self.next_obs[idx]))


# -- the envs' state in the state_dict ---------------------------------------------------------
class EnvState(nn.Module):
    """Puts a BatchedMaze's dynamic state into the state_dict (and back), and moves the env with
    the module (`.to(device)` rebuilds it there). The env itself is not a module."""

    FIELDS = ("_walls", "_food", "_shocks", "_obs", "_pos", "heading", "steps", "food_left",
              "shocks", "bumps", "episode", "seeds", "episode_return")

    def __init__(self, make_env, seeds: torch.Tensor):
        super().__init__()
        self._make, self._seeds = make_env, seeds
        self.env: BatchedMaze = make_env(torch.device("cpu"))
        self.env.reset(seeds)

    def get(self) -> dict[str, torch.Tensor]:
        return {f: getattr(self.env, f).clone() for f in self.FIELDS}

    def set(self, state: dict[str, torch.Tensor]) -> None:
        for f in self.FIELDS:  # in place: the env keeps views of some (obs buffers)
            cur = getattr(self.env, f)
            if state[f].shape != cur.shape:
                raise ValueError(f"{f} has shape {tuple(state[f].shape)}, this env {tuple(cur.shape)}")
            cur.copy_(state[f])

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        for f, v in self.get().items():
            destination[prefix + f] = v

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        keys = {f: prefix + f for f in self.FIELDS}
        missing = [k for k in keys.values() if k not in state_dict]
        if missing:
            missing_keys.extend(missing)
            return
        try:
            self.set({f: state_dict[k] for f, k in keys.items()})
        except (RuntimeError, ValueError) as e:
            error_msgs.append(f"env state: {e}")
        if strict:
            for k in state_dict:
                if k.startswith(prefix) and k[len(prefix):] not in self.FIELDS:
                    unexpected_keys.append(k)

    def _apply(self, fn, recurse=True):
        device = fn(torch.zeros((), dtype=torch.long)).device
        if device != self.env.device:
            state = self.get()
            self.env = self._make(device)
            self.env.reset(self._seeds)
            self.set(state)
        return super()._apply(fn, recurse)


# -- the family --------------------------------------------------------------------------------
@register_family("dqn")
class DQN(Family):
    """Deep Q-network for the mouse maze: Double DQN, dueling head, n-step returns, replay on the device."""
    capabilities = frozenset({"act"})

    Config = DQNConfig
    monitor = ("charts/optimal_ratio", "max")
    uses_train_batches = False  # experience comes from the envs, not the data source

    def __init__(self, cfg: DQNConfig, info: DataInfo):
        super().__init__()
        if info.env is None or not hasattr(info.env, "layout_of"):
            raise RecipeError("data.name", f"family 'dqn' needs an environment data source "
                                           f"(data.name: maze), got {info.name!r}")
        self.cfg, self.info, self.task = cfg, info, info.env
        self.q = QNet(info.input_shape, cfg)
        self.target = copy.deepcopy(self.q).requires_grad_(False)
        grid = tuple(info.input_shape[1:])
        self.replay = Replay(cfg.buffer_size, grid, cfg.num_envs, cfg.n_step, cfg.gamma)
        # Under DDP each rank plays its own environments: rank r owns env numbers r*n .. r*n+n-1.
        rank, _ = distributed.current()
        first = rank * cfg.num_envs
        seeds = torch.tensor([derive_seed(self.task.seed, "dqn-train-env", i)
                              for i in range(first, first + cfg.num_envs)])
        pool = self.task.train_pool()
        self.envs = EnvState(lambda dev: BatchedMaze(cfg.num_envs, self.task.config, dev, layouts=pool,
                                                     order="hash", obs_dtype=torch.uint8), seeds)
        self.register_buffer("epsilon", torch.tensor(float(cfg.eps_start)))
        self.register_buffer("env_steps", torch.zeros((), dtype=torch.long))  # transitions taken
        self.register_buffer("ep_returns", torch.zeros(_STATS))
        self.register_buffer("ep_lengths", torch.zeros(_STATS))
        self.register_buffer("ep_count", torch.zeros((), dtype=torch.long))
        self.register_buffer("explore_action", torch.zeros(cfg.num_envs, dtype=torch.long))
        self.register_buffer("explore_left", torch.zeros(cfg.num_envs, dtype=torch.long))
        p = 1.0 / torch.arange(1, cfg.explore_repeat + 1, dtype=torch.float64) ** 2
        self.register_buffer("_zeta_cdf", (p.cumsum(0) / p.sum()).float()[:-1], persistent=False)
        self.env_steps_per_step = cfg.num_envs * cfg.env_steps_per_update  # the trainer's charts/SPS
        self._decay_steps, self._batch_size = 1.0, 32  # set from train.* in configure_optimizers

    # -- the contract ------------------------------------------------------------------------
    def configure_optimizers(self, train):
        """The online net's optimizer; also the recipe checks that need train.* (see guards)."""
        self.check_recipe(train)
        self._decay_steps = max(1.0, self.cfg.exploration_fraction * train.steps)
        self._batch_size = train.batch_size
        opt = build_optimizer(self.q.parameters(), train)
        # TD updates begin only after learning_starts, while the trainer steps the lr schedule
        # from step 1 (warm-up counts trainer steps): mark the optimizer as used so torch does
        # not warn that scheduler.step() came before optimizer.step().
        opt._opt_called = True
        return {"main": opt}

    def check_recipe(self, train) -> None:
        """Guards against DQN's classic silent failures (errors stop before a run folder exists)."""
        cfg = self.cfg
        if cfg.buffer_size < train.batch_size:
            raise RecipeError("model.buffer_size", f"the replay buffer ({cfg.buffer_size} transitions) "
                                                   f"is smaller than one minibatch (train.batch_size "
                                                   f"{train.batch_size})")
        per_step = cfg.num_envs * cfg.env_steps_per_update
        budget = train.steps * per_step
        start = self.learning_start(train.batch_size)
        if start > budget - per_step:
            warnings.warn(f"model.learning_starts: learning starts after {start} transitions, but "
                          f"the run collects only {budget} (train.steps {train.steps} x num_envs "
                          f"{cfg.num_envs} x env_steps_per_update {cfg.env_steps_per_update}): "
                          f"no TD update will happen", UserWarning, stacklevel=2)
        floor_at = cfg.exploration_fraction * train.steps * per_step
        if floor_at <= start and cfg.eps_end < cfg.eps_start:
            warnings.warn(f"model.exploration_fraction: epsilon reaches its floor {cfg.eps_end} after "
                          f"{floor_at:.0f} transitions, before learning starts at {start}: the "
                          f"network acts greedily before it has learned anything", UserWarning,
                          stacklevel=2)

    def learning_start(self, batch_size: int) -> int:
        """Transitions stored before TD updates begin (at least one minibatch)."""
        return max(self.cfg.learning_starts, batch_size)

    def epsilon_at(self, step: int) -> float:
        cfg = self.cfg
        frac = min(1.0, step / self._decay_steps)
        return cfg.eps_start + frac * (cfg.eps_end - cfg.eps_start)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.q(x)

    @torch.no_grad()
    def act(self, obs: torch.Tensor, epsilon: float) -> torch.Tensor:
        """epsilon-greedy actions (N,) for observations (N, 8, H, W) (global torch RNG).

        ez-greedy (explore_repeat > 1): an env not already exploring starts, with probability
        epsilon, a random action held for n ~ zeta(2) steps (P(n) ~ 1/n^2, n <= explore_repeat);
        `explore_action`/`explore_left` carry the ongoing repeats from step to step."""
        greedy = self.q(obs.float()).argmax(1)
        if epsilon <= 0:
            return greedy
        n, dev = obs.shape[0], obs.device
        busy = self.explore_left > 0
        start = ~busy & (torch.rand(n, device=dev) < epsilon)
        rand_a = torch.randint(3, (n,), device=dev)
        if self.cfg.explore_repeat == 1:
            return torch.where(start, rand_a, greedy)
        dur = torch.searchsorted(self._zeta_cdf, torch.rand(n, device=dev)) + 1  # 1..explore_repeat
        self.explore_action.copy_(torch.where(start, rand_a, self.explore_action))
        self.explore_left.copy_(torch.where(start, dur, self.explore_left) - (busy | start).long())
        return torch.where(busy | start, self.explore_action, greedy)

    def _collect(self, epsilon: float) -> None:
        env = self.envs.env
        for _ in range(self.cfg.env_steps_per_update):
            obs = env._obs.view(env.num_envs, *env.obs_shape)  # the current observation (uint8)
            packed = pack_obs(obs)
            action = self.act(obs, epsilon)
            _, reward, term, trunc, info = env.step(action)
            done = term | trunc
            self.replay.push_step(packed, action, reward, term, done, pack_obs(info["final_obs"]))
            self.env_steps += env.num_envs
            k = int(done.sum())
            if k:
                self._record_episodes(info["episode_return"][done], info["steps"][done].float())

    def _record_episodes(self, returns: torch.Tensor, lengths: torch.Tensor) -> None:
        k = min(len(returns), _STATS)
        idx = (int(self.ep_count) + torch.arange(k, device=returns.device)) % _STATS
        self.ep_returns[idx], self.ep_lengths[idx] = returns[-k:], lengths[-k:]
        self.ep_count += len(returns)

    def training_step(self, batch, ctx: StepContext):
        cfg = self.cfg
        eps = self.epsilon_at(ctx.step)
        self.epsilon.fill_(eps)
        self._collect(eps)
        zero = torch.zeros((), device=self.epsilon.device)
        loss, q_mean = zero, zero
        batch_size = self._batch_size
        if len(self.replay) >= self.learning_start(batch_size):
            s, a, ret, discount, s2 = self.replay.sample(batch_size)
            y = td_target(ret, discount, s2, self.q, self.target, cfg.double)
            with ctx.autocast():
                q = self.q(s).float().gather(1, a[:, None]).squeeze(1)
            loss = F.huber_loss(q, y, delta=cfg.huber_delta)
            ctx.update("main", loss)
            loss, q_mean = loss.detach(), q.detach().mean()
            if (ctx.step + 1) % cfg.target_update_every == 0:
                self.update_target()
        n = min(int(self.ep_count), _STATS)
        mean_ret = self.ep_returns[:n].mean() if n else zero
        mean_len = self.ep_lengths[:n].mean() if n else zero
        return {"losses/td_loss": loss, "losses/q_values": q_mean, "charts/epsilon": self.epsilon.clone(),
                "charts/episodic_return": mean_ret, "charts/episodic_length": mean_len}

    @torch.no_grad()
    def update_target(self) -> None:
        tau = self.cfg.tau
        for pt, po in zip(self.target.parameters(), self.q.parameters()):
            if tau >= 1.0:
                pt.copy_(po)
            else:
                pt.lerp_(po, tau)

    # -- evaluation --------------------------------------------------------------------------
    @torch.no_grad()
    def play(self, layouts: list[Layout]) -> dict[str, torch.Tensor]:
        """One greedy episode in each maze; (B,) return, success (all food eaten), shocks, steps."""
        device = self.epsilon.device
        b = len(layouts)
        env = BatchedMaze(b, self.task.config, device, layouts=layouts, order="round_robin",
                          obs_dtype=torch.uint8)
        obs, _ = env.reset(0)
        out = {k: torch.zeros(b, device=device) for k in ("return", "success", "shocks", "steps")}
        live = torch.ones(b, dtype=torch.bool, device=device)
        for _ in range(self.task.config.max_steps):
            obs, _, term, trunc, info = env.step(self.q(obs.float()).argmax(1))
            ended = live & (term | trunc)
            out["return"] = torch.where(ended, info["episode_return"], out["return"])
            out["success"] = torch.where(ended, term.float(), out["success"])
            out["shocks"] = torch.where(ended, info["shocks"].float(), out["shocks"])
            out["steps"] = torch.where(ended, info["steps"].float(), out["steps"])
            live &= ~ended
            if not bool(live.any()):
                break
        return out

    @torch.no_grad()
    def evaluate(self, batch):
        seeds = batch["seed"].tolist()
        res = self.play([self.task.layout_of(s) for s in seeds])
        res["optimal"] = torch.tensor([self.task.optimal(s) for s in seeds], device=res["return"].device)
        return res

    def summarize(self, c: dict[str, torch.Tensor]) -> dict[str, float]:
        ret, opt = c["return"].double(), c["optimal"].double()
        ratio = torch.where(opt > 0, ret / opt.clamp_min(1e-12), (ret >= opt - 1e-6).double())
        # "charts/episodic_return" is the training episodes' (CleanRL's meaning); the greedy
        # held-out return is logged as eval/episodic_return
        return {"episodic_return": ret.mean().item(),
                "optimal_return": opt.mean().item(),
                "episode_length": c["steps"].double().mean().item(),
                "charts/optimal_ratio": ratio.clamp(max=1.0).mean().item(),
                "charts/success_rate": c["success"].double().mean().item(),
                "charts/shocks_per_episode": c["shocks"].double().mean().item()}

    # -- renders -----------------------------------------------------------------------------
    @torch.no_grad()
    def episode(self, layout: Layout, cell_px: int = 8) -> dict:
        """One greedy episode in `layout` with MouseMazeEnv: frames as RGB arrays ("rgb") and
        text ("text", the env's ansi render), "return", "steps", "shocks", "food_eaten"."""
        env = MouseMazeEnv(self.task.config, layout=layout, render_mode="rgb_array", cell_px=cell_px)
        obs, _ = env.reset(seed=0)
        rgb, text, total = [env.render()], [env.layout.to_text(env.pos, env.heading, env.food)], 0.0
        device = self.epsilon.device
        while True:
            x = torch.from_numpy(obs)[None].to(device)
            obs, r, term, trunc, info = env.step(int(self.q(x).argmax(1)))
            total += r
            rgb.append(env.render())
            text.append(env.layout.to_text(env.pos, env.heading, env.food))
            if term or trunc:
                return {"rgb": rgb, "text": text, "return": total, "steps": info["steps"],
                        "shocks": info["shocks"], "food_eaten": layout.n_food - info["food_left"]}

    @torch.no_grad()
    def q_map(self, layout: Layout) -> torch.Tensor:
        """(4, H, W) max_a Q with the mouse at each floor cell facing N, E, S, W (NaN on walls),
        food and shocks as at the start."""
        h, w = layout.shape
        cells = np.argwhere(~layout.walls & ~layout.food & ~layout.shocks)
        base = np.zeros((len(CHANNELS), h, w), np.float32)
        base[0], base[1], base[2] = layout.walls, layout.food, layout.shocks
        x = np.repeat(base[None], 4 * len(cells), 0)
        for k, (r, c) in enumerate(cells):
            for hd in range(4):
                x[4 * k + hd, 3, r, c] = 1.0
                x[4 * k + hd, 4 + hd, r, c] = 1.0
        q = self.q(torch.from_numpy(x).to(self.epsilon.device)).max(1).values.float().cpu()
        out = torch.full((4, h, w), float("nan"))
        for k, (r, c) in enumerate(cells):
            out[:, r, c] = q[4 * k:4 * k + 4]
        return out

    @torch.no_grad()
    def renders(self, batch):
        layout = self.task.layout_of(int(batch["seed"][0]))
        return {"episode": frame_strip(self.episode(layout)["rgb"]), "q_heatmap": q_heatmap(self.q_map(layout), layout)}

    @torch.no_grad()
    def histograms(self, batch):
        return {"q_values": self.q(batch["x"][:64].float())}


# -- render helpers ----------------------------------------------------------------------------
def frame_strip(frames: list[np.ndarray], max_frames: int = 32, per_row: int = 8) -> torch.Tensor:
    """(3, H, W) grid of up to `max_frames` frames (evenly subsampled, first and last kept)."""
    from genlab.viz.render import image_grid

    if len(frames) > max_frames:
        keep = np.unique(np.linspace(0, len(frames) - 1, max_frames).round().astype(int))
        frames = [frames[i] for i in keep]
    x = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float() / 255.0
    return image_grid(x, nrow=min(per_row, len(frames)))


def _colormap(v: np.ndarray) -> np.ndarray:
    """Values in [0, 1] -> (…, 3) RGB in [0, 1] (matplotlib's viridis)."""
    from matplotlib import colormaps

    return colormaps["viridis"](v)[..., :3]


def q_heatmap(qmap: torch.Tensor, layout: Layout, cell_px: int = 8) -> torch.Tensor:
    """(3, H', W'): the maze, then max over headings of max_a Q, then one panel per heading
    (N, E, S, W); one colour scale for all panels (viridis, low = dark); walls dark grey,
    food cells green, shock cells red."""
    from genlab.viz.render import _grid

    panels = [qmap.nan_to_num(float("-inf")).max(0).values, *qmap]
    finite = qmap[torch.isfinite(qmap)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.numel() else (0.0, 1.0)
    tiles = []
    env = MouseMazeEnv(layout=layout, render_mode="rgb_array", cell_px=cell_px)
    env.reset(seed=0)
    tiles.append(torch.from_numpy(env.render()).permute(2, 0, 1).float() / 255.0)
    for p in panels:
        v = ((p - lo) / max(hi - lo, 1e-9)).clamp(0, 1).numpy()
        rgb = _colormap(np.nan_to_num(v))
        rgb[layout.walls] = (0.17, 0.17, 0.21)
        rgb[layout.food] = (0.24, 0.67, 0.29)
        rgb[layout.shocks] = (0.82, 0.16, 0.16)
        t = torch.from_numpy(rgb).float().permute(2, 0, 1)
        tiles.append(t.repeat_interleave(cell_px, 1).repeat_interleave(cell_px, 2))
    return _grid(torch.stack(tiles), nrow=len(tiles), pad=2, pad_value=1.0)
