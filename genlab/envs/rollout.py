"""Greedy episodes of a Q-network: many mazes at once (evaluation) or one, frame by frame (renders,
`genlab play`). The net maps (B, 8, H, W) float observations to (B, 3) action values; the greedy
action is its argmax. Nothing here touches a random number generator.
"""
from __future__ import annotations

import torch
from torch import nn

from genlab.envs.batched import BatchedMaze
from genlab.envs.maze import Layout, MazeConfig, MouseMazeEnv


@torch.no_grad()
def greedy_play(q: nn.Module, config: MazeConfig, layouts: list[Layout],
                device: torch.device) -> dict[str, torch.Tensor]:
    """One greedy episode in each maze; (B,) return, success (all food eaten), shocks, steps."""
    b = len(layouts)
    env = BatchedMaze(b, config, device, layouts=layouts, order="round_robin", obs_dtype=torch.uint8)
    obs, _ = env.reset(0)
    out = {k: torch.zeros(b, device=device) for k in ("return", "success", "shocks", "steps")}
    live = torch.ones(b, dtype=torch.bool, device=device)
    for _ in range(config.max_steps):
        obs, _, term, trunc, info = env.step(q(obs.float()).argmax(1))
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
def greedy_episode(q: nn.Module, config: MazeConfig, layout: Layout, device: torch.device,
                   cell_px: int = 8) -> dict:
    """One greedy episode in `layout` with MouseMazeEnv: frames as RGB arrays ("rgb") and
    text ("text", the env's ansi render), "return", "steps", "shocks", "food_eaten"."""
    env = MouseMazeEnv(config, layout=layout, render_mode="rgb_array", cell_px=cell_px)
    obs, _ = env.reset(seed=0)
    rgb, text, total = [env.render()], [env.layout.to_text(env.pos, env.heading, env.food)], 0.0
    while True:
        x = torch.from_numpy(obs)[None].to(device)
        obs, r, term, trunc, info = env.step(int(q(x).argmax(1)))
        total += r
        rgb.append(env.render())
        text.append(env.layout.to_text(env.pos, env.heading, env.food))
        if term or trunc:
            return {"rgb": rgb, "text": text, "return": total, "steps": info["steps"],
                    "shocks": info["shocks"], "food_eaten": layout.n_food - info["food_left"]}
