"""The DQN's experience: n-step transitions, the TD target, bit-packed observations, the replay
buffer and the envs' state in a state_dict. Nets are arguments here; nothing imports a family.

n-step returns across episode ends (same-step autoreset): the window holds, per env, the last n
steps (obs, action, reward, terminated, done, final obs); the oldest step's transition is
    R = sum_{k<m} gamma^k r_k,   m = 1 + index of the first step in the window that ended an
    episode (else n),   s' = final_obs of step m-1 (the env's info["final_obs"], *before* the
    reset), discount = 0 if that step terminated (all food eaten) else gamma^m.
Truncation (max_steps) is not terminal: the agent sees no clock, so it bootstraps from s'.

Replay memory: observations are 0/1 in 8 channels, stored bit-packed, one uint8 per cell
(81 bytes per 9 x 9 observation instead of 2,592 as float32).
"""
from __future__ import annotations

import torch
from torch import nn

from genlab.envs.batched import BatchedMaze
from genlab.envs.maze import CHANNELS


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

    def reseed(self, seeds: torch.Tensor) -> None:
        """Start over with new episode seeds (a fresh env on the current device, reset)."""
        self._seeds = seeds
        self.env = self._make(self.env.device)
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

