"""The maze as a data source: its "examples" are mazes, its splits disjoint sets of maze seeds.

An RL agent learns from experience, not from a fixed data set, yet the shared trainer wants a
split-aware data source. This one gives it the mazes: example i of a split is a maze seed, and
`get` returns the maze's first observation. Training is not fed by these batches (the DQN
steps its own batched env, see genlab/families/dqn.py); evaluation is: the val and test
splits are fixed, held-out sets of maze seeds that training never plays.

Maze seeds by split (independent of the recipe seed, so every run is scored on the same mazes):
    train  the seed stream: every training episode plays generate_layout(episode_seed(s, e)),
           maze seeds in [0, 2**31 - 1) (or, with `train_mazes: K`, a pool of the K mazes
           0..K-1). The split lists maze seeds 0..size-1 (nominal: the DQN ignores them).
    val    2**40 + i, i < val_size
    test   2**41 + i, i < test_size
Both held-out ranges lie above 2**31, where the training stream never reaches, so no val or
test seed is ever a training seed. (Two different seeds could in principle give the same
maze; with ~10^15 possible 9 x 9 mazes the chance is negligible and is not checked.)

Fixed layout (`layout: FILE`): every split, every episode plays that one maze; val/test then
measure how well the agent solves the maze it trained on (set val_size/test_size to 1).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from genlab.core.registry import register_dataset
from genlab.core.schema import param
from genlab.data.base import SPLITS, DataInfo
from genlab.envs.maze import CHANNELS, Layout, MazeConfig, MazeError, generate_layout, parse_layout

_SEED_P = 2**31 - 1  # the training stream's maze seeds lie in [0, _SEED_P)
VAL_SEED0 = 2**40
TEST_SEED0 = 2**41
NOMINAL_TRAIN_SIZE = 1_000_000


@dataclass
class MazeDataConfig:
    env: MazeConfig = param(default_factory=MazeConfig,
                            help="the maze: size, food, shocks, rewards, max_steps")
    layout: Path | None = param(None, must_exist=True,
                                help="a text maze (# . F X and the mouse ^ > v <): every episode of "
                                     "every split plays it (the fixed-layout task); null: generated mazes")
    train_mazes: int = param(0, ge=0, help="0: a new generated maze every training episode (unlimited); "
                                           "K > 0: train on a fixed pool of K mazes (seeds 0..K-1)")
    val_size: int = param(200, ge=1, help="held-out validation mazes (seeds 2**40 + i)")
    test_size: int = param(200, ge=1, help="held-out test mazes (seeds 2**41 + i)")

    def __post_init__(self):
        if self.layout is not None and self.train_mazes:
            raise ValueError("train_mazes: a fixed layout is one maze; leave train_mazes at 0")


class MazeTask:
    """What an agent needs to build its envs: the config, the maze source and the held-out seeds.

    Carried as `DataInfo.env`. `layout_of(seed)` and `optimal(seed)` are cached (a maze takes
    ~0.3 ms to generate, its exact optimum ~10 ms to solve).
    """

    def __init__(self, config: MazeConfig, layout: Layout | None, layout_text: str | None,
                 train_mazes: int, seed: int):
        self.config, self.layout, self.layout_text = config, layout, layout_text
        self.train_mazes, self.seed = train_mazes, seed
        self._layouts: dict[int, Layout] = {}
        self._optimal: dict[int, float] = {}

    @property
    def fixed(self) -> bool:
        return self.layout is not None

    @property
    def grid_shape(self) -> tuple[int, int]:
        return self.layout.shape if self.layout is not None else (self.config.size, self.config.size)

    def layout_of(self, maze_seed: int) -> Layout:
        """The maze a seed names (the fixed layout for every seed in the fixed-layout task)."""
        if self.layout is not None:
            return self.layout
        maze_seed = int(maze_seed)
        lay = self._layouts.get(maze_seed)
        if lay is None:
            if len(self._layouts) > 50_000:
                self._layouts.clear()
            lay = self._layouts[maze_seed] = generate_layout(self.config, maze_seed)
        return lay

    def optimal(self, maze_seed: int) -> float:
        """The exact best undiscounted return of the maze (genlab.envs.solver)."""
        from genlab.envs.solver import optimal_return

        key = -1 if self.layout is not None else int(maze_seed)
        if key not in self._optimal:
            self._optimal[key] = optimal_return(self.layout_of(maze_seed), self.config)
        return self._optimal[key]

    def train_pool(self) -> list[Layout] | None:
        """The training mazes as a pool (fixed layout: [it]; train_mazes K: K mazes; else None)."""
        if self.layout is not None:
            return [self.layout]
        if self.train_mazes:
            return [self.layout_of(s) for s in range(self.train_mazes)]
        return None

    def __repr__(self) -> str:
        what = "fixed layout" if self.fixed else (f"pool of {self.train_mazes}" if self.train_mazes
                                                  else "seed stream")
        return f"MazeTask({what}, {self.grid_shape[0]}x{self.grid_shape[1]}, {self.config})"


def initial_obs(layouts: list[Layout]) -> torch.Tensor:
    """(B, 8, H, W) float32 first observations of `layouts` (MouseMazeEnv's encoding)."""
    h, w = layouts[0].shape
    obs = np.zeros((len(layouts), len(CHANNELS), h, w), np.float32)
    for i, lay in enumerate(layouts):
        obs[i, 0], obs[i, 1], obs[i, 2] = lay.walls, lay.food, lay.shocks
        obs[i, 3][lay.start] = 1.0
        obs[i, 4 + lay.heading][lay.start] = 1.0
    return torch.from_numpy(obs)


@register_dataset("maze")
class MazeData:
    """Mouse mazes for RL: x (B, 8, H, W) first observation, y zeros, seed (B,) maze seeds.

    Val/test are fixed sets of held-out maze seeds (2**40 + i, 2**41 + i) that the training
    stream never plays; `info.env` is the `MazeTask` an agent builds its envs from.
    """

    Config = MazeDataConfig

    def __init__(self, cfg: MazeDataConfig, seed: int, device: torch.device | str = "cpu"):
        self.cfg, self.device = cfg, torch.device(device)
        layout = text = None
        if cfg.layout is not None:
            text = Path(cfg.layout).read_text()
            try:
                layout = parse_layout(text)
            except MazeError as e:
                from genlab.core.errors import RecipeError

                raise RecipeError("data.layout", f"{cfg.layout}: {e}") from None
        self.task = MazeTask(cfg.env, layout, text, cfg.train_mazes, seed)
        h, w = self.task.grid_shape
        self._sizes = {"train": cfg.train_mazes or NOMINAL_TRAIN_SIZE,
                       "val": cfg.val_size, "test": cfg.test_size}
        self.info = DataInfo(name="maze", input_shape=(len(CHANNELS), h, w), num_classes=3,
                             class_names=("left", "right", "forward"), env=self.task)

    def _check(self, split: str) -> None:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")

    def size(self, split: str) -> int:
        self._check(split)
        return self._sizes[split]

    def seeds(self, split: str, indices: torch.Tensor) -> torch.Tensor:
        """(B,) int64 maze seeds of examples `indices` of `split`."""
        self._check(split)
        idx = torch.as_tensor(indices, dtype=torch.long).cpu()
        if len(idx) and (int(idx.min()) < 0 or int(idx.max()) >= self._sizes[split]):
            raise IndexError(f"{split} index out of range (size {self._sizes[split]})")
        base = {"train": 0, "val": VAL_SEED0, "test": TEST_SEED0}[split]
        return idx + base

    def get(self, split: str, indices: torch.Tensor) -> dict[str, torch.Tensor]:
        seeds = self.seeds(split, indices)
        layouts = [self.task.layout_of(s) for s in seeds.tolist()]
        x = initial_obs(layouts) if layouts else torch.zeros(0, *self.info.input_shape)
        return {"x": x.to(self.device), "y": torch.zeros(len(seeds), dtype=torch.long, device=self.device),
                "seed": seeds.to(self.device)}
