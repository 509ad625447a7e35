"""Reinforcement-learning environments.

Importing `genlab.envs` registers the Gymnasium id "genlab/MouseMaze-v0" (the env module itself
is imported only when the env is made). The classes are importable from here lazily:
`from genlab.envs import MouseMazeEnv, MazeConfig, BatchedMaze, optimal_return`.
"""
from __future__ import annotations

import importlib

import gymnasium

MOUSE_MAZE_ID = "genlab/MouseMaze-v0"

if MOUSE_MAZE_ID not in gymnasium.registry:
    # No max_episode_steps: the env truncates itself at MazeConfig.max_steps.
    gymnasium.register(id=MOUSE_MAZE_ID, entry_point="genlab.envs.maze:MouseMazeEnv")

_LAZY = {
    "MazeConfig": "genlab.envs.maze", "Layout": "genlab.envs.maze", "MouseMazeEnv": "genlab.envs.maze",
    "MazeError": "genlab.envs.maze", "generate_layout": "genlab.envs.maze",
    "generate_pool": "genlab.envs.maze", "parse_layout": "genlab.envs.maze",
    "episode_seed": "genlab.envs.maze", "BatchedMaze": "genlab.envs.batched",
    "optimal_return": "genlab.envs.solver", "solve": "genlab.envs.solver",
}

__all__ = ["MOUSE_MAZE_ID", "MazeConfig", "Layout", "MouseMazeEnv", "MazeError",  # noqa: RUF022
           "generate_layout", "generate_pool", "parse_layout", "episode_seed", "BatchedMaze",
           "optimal_return", "solve"]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'genlab.envs' has no attribute {name!r}")
