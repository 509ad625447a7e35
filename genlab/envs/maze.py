"""MouseMaze: a robot mouse in a grid maze, as a Gymnasium environment.

A mouse walks a grid maze looking for food while avoiding electric shocks. It sees the whole
maze. This module holds the numpy side: the configuration, maze layouts (generated from a seed
or parsed from text), the seed stream, and the single-maze `gymnasium.Env`. The batched torch
version is `genlab.envs.batched.BatchedMaze`; the exact optimum is `genlab.envs.solver`.

Grid and size
    A maze is an H x W grid of cells, every cell either wall or floor. `MazeConfig.size` is the
    side of the *whole* grid, outer wall included: size 9 is a 9 x 9 grid whose border is wall,
    leaving a 7 x 7 interior. Generated mazes need an odd size >= 5: the "rooms" sit at odd
    (row, col), (size - 1) / 2 of them per side (4 x 4 rooms for size 9), and the cells between
    two rooms are the walls a maze generator may open. Text layouts may be any rectangle of at
    least 3 x 3 whose border is all wall.

Actions and headings
    actions 0 = turn left, 1 = turn right, 2 = forward; headings 0 = N (up), 1 = E, 2 = S, 3 = W.
    Turning never moves the mouse; forward into a wall is a "bump": the mouse stays.

Rewards (all configurable, see `MazeConfig`); one step's reward is exactly one of:
    turn           step_cost
    bump           step_cost + reward_bump
    move to floor  step_cost
    move to food   step_cost + reward_food     (the food is eaten: the cell becomes floor)
    move to shock  step_cost + reward_shock    (every entry; shock cells stay)
    Defaults: food +1, shock -1, step -0.01, bump -0.05 (so a shock costs as much as a food
    is worth, 100 steps of walking cost one food, and bumping is discouraged beyond the step
    cost), max_steps 100 (ample for 3 food in a 9 x 9 maze: optimal plans take ~15-40 steps).
    A cell is never both food and shock, and the start cell is neither. Sums are taken in
    float64 and the result rounded once to float32 (`reward_table`), so the single and the
    batched env return bit-identical rewards.

Episode end
    terminated: all food eaten. truncated: `max_steps` steps taken without eating all food.
    When both happen on the same step, terminated wins (terminated=True, truncated=False).

Observation
    float32 array (8, H, W), every value 0 or 1. Channels (`CHANNELS`):
    0 wall, 1 food (not yet eaten), 2 shock, 3 mouse (one-hot at the mouse cell),
    4..7 heading N, E, S, W: one-hot *at the mouse cell* (so channels 4..7 sum to channel 3).

Text layouts (`parse_layout`, and what render_mode "ansi" returns)
    '#' wall, '.' floor, 'F' food, 'X' shock, the mouse as '^' '>' 'v' '<' (its heading) or 'M'
    (facing north); one mouse, at least one food, a rectangular grid with an all-wall border:

        #######
        #>.F.X#
        #.###.#
        #..F..#
        #######

Seeds (identical in `BatchedMaze`)
    `reset(seed=s)` sets the env's seed base to s and its episode counter to 0; every later
    `reset()` without a seed increments the counter (a first reset without any seed draws
    the base from the env's np_random). Episode e plays the maze generated from
    `episode_seed(s, e)` - or, when the env holds a pool of layouts, pool[episode_seed(s, e) % K].
    `reset(options={"layout": text_or_Layout})` or `{"maze_seed": int}` overrides the maze of
    that one episode (the counter still advances).
"""
from __future__ import annotations

import dataclasses
import functools
import textwrap
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from genlab.core.errors import GenlabError

__all__ = [
    "ACTIONS",
    "CHANNELS",
    "HEADINGS",
    "Layout",
    "MazeConfig",
    "MazeError",
    "MouseMazeEnv",
    "episode_seed",
    "generate_layout",
    "generate_pool",
    "parse_layout",
    "reward_table",
]

ACTIONS = ("turn_left", "turn_right", "forward")
HEADINGS = ("N", "E", "S", "W")
HEADING_CHARS = "^>v<"
CHANNELS = ("wall", "food", "shock", "mouse", "heading_N", "heading_E", "heading_S", "heading_W")
# (d_row, d_col) of one forward step, by heading.
DELTAS = ((-1, 0), (0, 1), (1, 0), (0, -1))
# Heading change by action (left, right, forward).
TURN = (3, 1, 0)

# Step outcomes: index into `reward_table`.
OUT_TURN, OUT_BUMP, OUT_MOVE, OUT_FOOD, OUT_SHOCK = range(5)

_LAYOUT_CHARS = "#.FXM^>v<"
_SEED_P = 2**31 - 1  # the seed stream works modulo this prime (int64-safe in torch too)


class MazeError(GenlabError, ValueError):
    """An invalid maze configuration or layout (a ValueError the CLI prints without traceback)."""


@dataclass
class MazeConfig:
    """Options of the mouse maze (the recipe's `env:` section)."""

    size: int = field(default=9, metadata={
        "help": "side of the square grid in cells, outer wall included (odd, >= 5); 9 = 7x7 interior"})
    n_food: int = field(default=3, metadata={"help": "food cells per generated maze (>= 1)"})
    n_shock: int = field(default=3, metadata={"help": "shock cells per generated maze (>= 0)"})
    extra_openings: float = field(default=0.15, metadata={
        "help": "fraction of the perfect maze's remaining inner walls opened, making loops/detours"})
    shock_free_paths: bool = field(default=True, metadata={
        "help": "generated mazes: place shocks so every food is reachable without crossing one"})
    reward_food: float = field(default=1.0, metadata={"help": "reward for entering a food cell"})
    reward_shock: float = field(default=-1.0, metadata={
        "help": "reward for entering a shock cell (every time; the shock stays)"})
    step_cost: float = field(default=-0.01, metadata={
        "help": "reward added on every step, turns included (negative = a cost)"})
    reward_bump: float = field(default=-0.05, metadata={
        "help": "extra reward for walking into a wall (the mouse stays where it is)"})
    max_steps: int = field(default=100, metadata={
        "help": "steps per episode before truncation"})

    def __post_init__(self):
        if not isinstance(self.size, int) or self.size < 5 or self.size % 2 == 0:
            raise MazeError(f"size: expected an odd integer >= 5 (grid side incl. outer wall), "
                            f"got {self.size!r}")
        if self.n_food < 1:
            raise MazeError(f"n_food: expected >= 1, got {self.n_food}")
        if self.n_shock < 0:
            raise MazeError(f"n_shock: expected >= 0, got {self.n_shock}")
        if not 0.0 <= self.extra_openings <= 1.0:
            raise MazeError(f"extra_openings: expected a fraction in [0, 1], got {self.extra_openings}")
        if self.max_steps < 1:
            raise MazeError(f"max_steps: expected >= 1, got {self.max_steps}")
        rooms = ((self.size - 1) // 2) ** 2
        if 1 + self.n_food + self.n_shock > rooms * 2 - 1:
            # a perfect maze has rooms + (rooms - 1) floor cells
            raise MazeError(
                f"size {self.size} has only {2 * rooms - 1} floor cells without extra openings; "
                f"it cannot hold the mouse, {self.n_food} food and {self.n_shock} shocks")


def reward_table(cfg: MazeConfig) -> np.ndarray:
    """float32 reward of each step outcome (turn, bump, move, food, shock); see the module doc."""
    c = float(cfg.step_cost)
    return np.array(
        [c, c + cfg.reward_bump, c, c + cfg.reward_food, c + cfg.reward_shock], dtype=np.float32)


# --------------------------------------------------------------------------------------------
# Layouts


@dataclass(eq=False)
class Layout:
    """One maze: walls, food and shock cells (H, W) bool arrays, the mouse's start and heading."""

    walls: np.ndarray
    food: np.ndarray
    shocks: np.ndarray
    start: tuple[int, int]
    heading: int

    def __post_init__(self):
        self.walls = np.ascontiguousarray(self.walls, dtype=bool)
        self.food = np.ascontiguousarray(self.food, dtype=bool)
        self.shocks = np.ascontiguousarray(self.shocks, dtype=bool)
        self.start = (int(self.start[0]), int(self.start[1]))
        self.heading = int(self.heading)
        h, w = self.walls.shape
        if h < 3 or w < 3:
            raise MazeError(f"layout must be at least 3x3, got {h}x{w}")
        if self.food.shape != (h, w) or self.shocks.shape != (h, w):
            raise MazeError("layout walls, food and shocks must have the same shape")
        border = np.ones((h, w), bool)
        border[1:-1, 1:-1] = False
        if (~self.walls & border).any():
            r, c = np.argwhere(~self.walls & border)[0]
            raise MazeError(f"layout border must be all wall; cell (row {r}, col {c}) is not")
        if (self.walls & (self.food | self.shocks)).any():
            raise MazeError("a wall cell cannot hold food or a shock")
        if (self.food & self.shocks).any():
            raise MazeError("a cell cannot hold both food and a shock")
        r, c = self.start
        if not (0 <= r < h and 0 <= c < w) or self.walls[r, c]:
            raise MazeError(f"mouse start {self.start} is not a floor cell")
        if self.food[r, c] or self.shocks[r, c]:
            raise MazeError(f"mouse start {self.start} cannot hold food or a shock")
        if self.heading not in (0, 1, 2, 3):
            raise MazeError(f"heading must be 0..3 (N, E, S, W), got {self.heading}")
        if not self.food.any():
            raise MazeError("layout has no food (the episode could never terminate)")

    @property
    def shape(self) -> tuple[int, int]:
        return self.walls.shape  # type: ignore[return-value]

    @property
    def n_food(self) -> int:
        return int(self.food.sum())

    def to_text(self, pos: tuple[int, int] | None = None, heading: int | None = None,
                food: np.ndarray | None = None) -> str:
        """The layout as text (`parse_layout`'s format), optionally with another mouse/food state."""
        pos = self.start if pos is None else pos
        heading = self.heading if heading is None else heading
        food = self.food if food is None else food
        grid = np.full(self.walls.shape, ".", dtype="<U1")
        grid[self.walls] = "#"
        grid[food] = "F"
        grid[self.shocks] = "X"
        grid[pos[0], pos[1]] = HEADING_CHARS[heading]
        return "\n".join("".join(row) for row in grid) + "\n"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Layout):
            return NotImplemented
        return (self.start == other.start and self.heading == other.heading
                and self.walls.shape == other.walls.shape
                and bool((self.walls == other.walls).all() and (self.food == other.food).all()
                         and (self.shocks == other.shocks).all()))

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Layout(\n{self.to_text()})"


def parse_layout(text: str) -> Layout:
    """Parse a text maze: '#' wall, '.' floor, 'F' food, 'X' shock, mouse '^' '>' 'v' '<'
    (its heading) or 'M' (heading north). Exactly one mouse, at least one food, all rows the
    same length, border all wall. Blank lines around the maze and a common indentation are
    ignored; errors name the line and column (1-based, counted in the text as given)."""
    if not isinstance(text, str):
        raise MazeError(f"layout text must be a str, got {type(text).__name__}")
    raw = text.split("\n")
    numbered = [(i + 1, line.rstrip()) for i, line in enumerate(raw)]
    while numbered and not numbered[0][1].strip():
        numbered.pop(0)
    while numbered and not numbered[-1][1].strip():
        numbered.pop()
    if not numbered:
        raise MazeError("layout is empty")
    body = textwrap.dedent("\n".join(line for _, line in numbered)).split("\n")
    indent = len(numbered[0][1]) - len(body[0])
    width = len(body[0])
    walls = np.zeros((len(body), width), bool)
    food = np.zeros_like(walls)
    shocks = np.zeros_like(walls)
    mice: list[tuple[int, int, int, int, int]] = []  # row, col, heading, line, column
    for r, ((lineno, _), line) in enumerate(zip(numbered, body)):
        if len(line) != width:
            raise MazeError(
                f"layout line {lineno}: {len(line)} columns, expected {width} like the first row")
        for c, ch in enumerate(line):
            col = c + 1 + indent
            if ch == "#":
                walls[r, c] = True
            elif ch == "F":
                food[r, c] = True
            elif ch == "X":
                shocks[r, c] = True
            elif ch in HEADING_CHARS or ch == "M":
                mice.append((r, c, 0 if ch == "M" else HEADING_CHARS.index(ch), lineno, col))
            elif ch != ".":
                raise MazeError(
                    f"layout line {lineno}, column {col}: unexpected character {ch!r} "
                    f"(expected one of {' '.join(_LAYOUT_CHARS)})")
            if (r in (0, len(body) - 1) or c in (0, width - 1)) and ch != "#":
                raise MazeError(
                    f"layout line {lineno}, column {col}: border cell is {ch!r}, must be wall '#'")
    if not mice:
        raise MazeError("layout has no mouse (one of ^ > v < or M)")
    if len(mice) > 1:
        where = ", ".join(f"line {m[3]} column {m[4]}" for m in mice)
        raise MazeError(f"layout has {len(mice)} mice, expected one: {where}")
    if not food.any():
        raise MazeError("layout has no food 'F'")
    r, c, h, _, _ = mice[0]
    return Layout(walls, food, shocks, (r, c), h)


def as_layout(layout: Layout | str) -> Layout:
    return layout if isinstance(layout, Layout) else parse_layout(layout)


def generate_layout(cfg: MazeConfig, seed: int) -> Layout:
    """A deterministic random maze: a perfect maze (randomized depth-first search over the
    rooms), then `cfg.extra_openings` of the remaining room-to-room walls opened, then the
    mouse, `n_food` food and `n_shock` shock cells on distinct random floor cells and a random
    start heading. The floor is connected, so every food is reachable; with
    `cfg.shock_free_paths` (default) every food is also reachable without entering a shock, so
    shocks are obstacles with detours around them (mouse and food are re-placed, up to 20
    times, in the rare maze where the shocks would have to cut a corridor)."""
    rng = np.random.default_rng(int(seed))
    size = cfg.size
    m = (size - 1) // 2
    u = rng.random(4 * m * m + 1).tolist()  # pre-drawn uniforms for the DFS choices
    # Randomized depth-first search over the m x m rooms (plain Python lists: small and fast).
    open_ = bytearray(size * size)          # 1 = floor
    visited = bytearray(m * m)
    start = int(u[0] * m * m) % (m * m)
    k = 1
    stack = [start]
    visited[start] = 1
    open_[(2 * (start // m) + 1) * size + 2 * (start % m) + 1] = 1
    while stack:
        room = stack[-1]
        i, j = divmod(room, m)
        nbrs = [room + di * m + dj for di, dj in DELTAS
                if 0 <= i + di < m and 0 <= j + dj < m and not visited[room + di * m + dj]]
        if not nbrs:
            stack.pop()
            continue
        nxt = nbrs[int(u[k] * len(nbrs)) % len(nbrs)]
        k += 1
        ni, nj = divmod(nxt, m)
        visited[nxt] = 1
        open_[(i + ni + 1) * size + j + nj + 1] = 1
        open_[(2 * ni + 1) * size + 2 * nj + 1] = 1
        stack.append(nxt)
    walls = np.frombuffer(bytes(open_), np.uint8).reshape(size, size) == 0
    # Extra openings: walls between two horizontally or vertically adjacent rooms.
    between = _between_rooms(size)
    cand = np.flatnonzero(between & walls)
    n_open = round(cfg.extra_openings * len(cand))
    if n_open:
        walls.flat[rng.choice(cand, size=n_open, replace=False)] = False
    floor = np.flatnonzero(~walls)
    need = 1 + cfg.n_food + cfg.n_shock
    if need > len(floor):
        raise MazeError(f"maze has {len(floor)} floor cells, fewer than the mouse + food + shocks ({need})")
    for _attempt in range(20 if cfg.shock_free_paths else 1):
        pick = floor[rng.permutation(len(floor))[:need]]
        mouse, food_cells, shock_cells = pick[0], pick[1:1 + cfg.n_food], pick[1 + cfg.n_food:]
        if not cfg.shock_free_paths or not cfg.n_shock:
            break
        # greedy: try the free cells in random order, keep a shock where it cuts off no food;
        # if the maze has too few such cells for this mouse/food placement, place them anew
        shock_cells = []
        free = np.setdiff1d(floor, pick[:1 + cfg.n_food])
        for cell in free[rng.permutation(len(free))]:
            if _food_reachable(walls, mouse, food_cells, [*shock_cells, cell]):
                shock_cells.append(cell)
                if len(shock_cells) == cfg.n_shock:
                    break
        if len(shock_cells) == cfg.n_shock:
            break
    else:
        raise MazeError(f"maze seed {seed}: cannot place {cfg.n_shock} shocks without cutting "
                        "food off; lower n_shock, raise extra_openings or set shock_free_paths=False")
    food = np.zeros((size, size), bool)
    shocks = np.zeros((size, size), bool)
    food.flat[food_cells] = True
    shocks.flat[shock_cells] = True
    heading = int(rng.integers(4))
    return Layout(walls, food, shocks, divmod(int(mouse), size), heading)


@functools.lru_cache(maxsize=16)
def _between_rooms(size: int) -> np.ndarray:
    """(size, size) bool: the cells between two adjacent rooms (odd/even coordinates)."""
    rr, cc = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    out = (rr % 2 != cc % 2) & (rr > 0) & (cc > 0) & (rr < size - 1) & (cc < size - 1)
    out.flags.writeable = False
    return out


def _food_reachable(walls: np.ndarray, mouse: int, food_cells, shock_cells) -> bool:
    """Every food cell reachable from `mouse` (flat index) without entering a shock cell."""
    w = walls.shape[1]
    blocked = walls.ravel().copy()
    blocked[np.asarray(shock_cells, dtype=np.int64)] = True
    seen = np.zeros_like(blocked)
    seen[mouse] = True
    queue = deque([int(mouse)])
    while queue:
        p = queue.popleft()
        for q in (p - w, p + 1, p + w, p - 1):
            if not blocked[q] and not seen[q]:
                seen[q] = True
                queue.append(q)
    return bool(seen[np.asarray(food_cells, dtype=np.int64)].all())


def reachable_cells(layout: Layout) -> np.ndarray:
    """(H, W) bool: floor cells reachable from the start (shocks can be crossed)."""
    h, w = layout.shape
    blocked = layout.walls.ravel()
    seen = np.zeros(h * w, bool)
    s = layout.start[0] * w + layout.start[1]
    seen[s] = True
    queue = deque([s])
    while queue:
        p = queue.popleft()
        for q in (p - w, p + 1, p + w, p - 1):
            if not blocked[q] and not seen[q]:
                seen[q] = True
                queue.append(q)
    return seen.reshape(h, w)


def _mix(x: int) -> int:
    """A small integer hash on [0, 2**31 - 1); `batched._mix_t` computes the same in torch."""
    x = (x * 1103515245 + 12345) % _SEED_P
    x ^= x >> 16
    x = (x * 747796405 + 289133645) % _SEED_P
    x ^= x >> 13
    return x % _SEED_P


def episode_seed(base_seed: int, episode: int) -> int:
    """The maze seed of episode `episode` (0, 1, ...) after `reset(seed=base_seed)`.

    Deterministic and portable (pure integer arithmetic, mirrored in torch by BatchedMaze).
    Seeds must be in [0, 2**63)."""
    base_seed, episode = int(base_seed), int(episode)
    if base_seed < 0 or episode < 0:
        raise MazeError(f"seeds must be non-negative, got base {base_seed}, episode {episode}")
    b = _mix((base_seed % _SEED_P) ^ ((base_seed // _SEED_P) % _SEED_P))
    return _mix((b + episode) % _SEED_P)


def generate_pool(cfg: MazeConfig, count: int, seed: int = 0) -> list[Layout]:
    """`count` layouts: layout k is `generate_layout(cfg, episode_seed(seed, k))`."""
    return [generate_layout(cfg, episode_seed(seed, k)) for k in range(count)]


# --------------------------------------------------------------------------------------------
# The Gymnasium environment

_COLORS = {
    "wall": (44, 44, 54), "floor": (232, 230, 220), "food": (60, 170, 75),
    "shock": (245, 200, 30), "shock_edge": (210, 40, 40), "mouse": (35, 95, 220),
    "mark": (255, 255, 255),
}


class MouseMazeEnv(gym.Env):
    """The robot mouse in a maze (see the module docstring for the full rules).

    MouseMazeEnv(config=None, *, layout=None, layouts=None, render_mode=None, cell_px=16, **overrides)
      - config: a MazeConfig; `overrides` replace its fields (gym.make("genlab/MouseMaze-v0",
        size=7, n_food=2)).
      - layout: one fixed maze (text or Layout) played every episode; its shape sets the
        observation shape (it need not match config.size).
      - layouts: a pool of mazes; episode e after reset(seed=s) plays
        layouts[episode_seed(s, e) % len(layouts)].
      - neither: a fresh generated maze per episode, generate_layout(config, episode_seed(s, e)).
    reset(seed=None, options=None); options may hold "layout" (text or Layout, same shape) or
    "maze_seed" (int) to pick this episode's maze.
    info: food_left, shocks (shocks received this episode), bumps, steps, and at reset maze_seed
    (None for a given layout).
    """

    metadata = {"render_modes": ["ansi", "rgb_array"], "render_fps": 8}  # noqa: RUF012 (gym API)

    def __init__(self, config: MazeConfig | None = None, *, layout: Layout | str | None = None,
                 layouts: Sequence[Layout | str] | None = None, render_mode: str | None = None,
                 cell_px: int = 16, **overrides: Any):
        cfg = config or MazeConfig()
        if overrides:
            names = {f.name for f in dataclasses.fields(MazeConfig)}
            bad = sorted(set(overrides) - names)
            if bad:
                raise MazeError(f"unknown MouseMaze option(s) {bad}; known: {sorted(names)}")
            cfg = dataclasses.replace(cfg, **overrides)
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise MazeError(f"render_mode must be one of {self.metadata['render_modes']}, "
                            f"got {render_mode!r}")
        if layout is not None and layouts is not None:
            raise MazeError("give either layout or layouts, not both")
        self.config = cfg
        self.render_mode = render_mode
        self.cell_px = int(cell_px)
        self._fixed = as_layout(layout) if layout is not None else None
        self._pool = [as_layout(x) for x in layouts] if layouts is not None else None
        if self._pool is not None and not self._pool:
            raise MazeError("layouts is empty")
        if self._fixed is not None:
            shape = self._fixed.shape
        elif self._pool is not None:
            shape = self._pool[0].shape
            if any(p.shape != shape for p in self._pool):
                raise MazeError("all layouts in a pool must have the same shape")
        else:
            shape = (cfg.size, cfg.size)
        self.grid_shape: tuple[int, int] = (int(shape[0]), int(shape[1]))
        h, w = self.grid_shape
        self.observation_space = spaces.Box(0.0, 1.0, (len(CHANNELS), h, w), np.float32)
        self.action_space = spaces.Discrete(3)
        self._rewards = reward_table(cfg)
        self._seed_base: int | None = None
        self._episode = -1
        self.layout: Layout | None = None
        self._obs: np.ndarray | None = None

    # -- episode -----------------------------------------------------------------------------
    def _episode_layout(self, options: dict | None) -> tuple[Layout, int | None]:
        options = options or {}
        unknown = set(options) - {"layout", "maze_seed"}
        if unknown:
            raise MazeError(f"unknown reset option(s) {sorted(unknown)}; known: layout, maze_seed")
        if options.get("layout") is not None:
            return as_layout(options["layout"]), None
        if options.get("maze_seed") is not None:
            ms = int(options["maze_seed"])
            return generate_layout(self.config, ms), ms
        if self._fixed is not None:
            return self._fixed, None
        ms = episode_seed(self._seed_base, self._episode)
        if self._pool is not None:
            return self._pool[ms % len(self._pool)], ms
        return generate_layout(self.config, ms), ms

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is not None:
            self._seed_base, self._episode = int(seed), 0
        else:
            if self._seed_base is None:
                self._seed_base = int(self.np_random.integers(0, _SEED_P))
            self._episode += 1
        layout, ms = self._episode_layout(options)
        if layout.shape != self.grid_shape:
            raise MazeError(f"layout shape {layout.shape} does not match this env's {self.grid_shape}")
        self.layout = layout
        self.maze_seed = ms
        self.pos = layout.start
        self.heading = layout.heading
        self.food = layout.food.copy()
        self.food_left = int(self.food.sum())
        self.steps = self.shocks = self.bumps = 0
        self._done = False
        obs = np.zeros((len(CHANNELS), *self.grid_shape), np.float32)
        obs[0] = layout.walls
        obs[1] = self.food
        obs[2] = layout.shocks
        obs[3][self.pos] = 1.0
        obs[4 + self.heading][self.pos] = 1.0
        self._obs = obs
        info = self._info()
        info["maze_seed"] = ms
        return obs.copy(), info

    def _info(self) -> dict[str, int]:
        return {"food_left": self.food_left, "shocks": self.shocks, "bumps": self.bumps,
                "steps": self.steps}

    def step(self, action):
        if self.layout is None:
            raise RuntimeError("call reset() before step()")
        if self._done:
            raise RuntimeError("the episode is over (terminated or truncated); call reset()")
        a = int(action)
        if a not in (0, 1, 2):
            raise MazeError(f"action must be 0 (left), 1 (right) or 2 (forward), got {action!r}")
        obs = self._obs
        r, c = self.pos
        h = self.heading
        obs[3, r, c] = 0.0
        obs[4 + h, r, c] = 0.0
        if a != 2:
            outcome = OUT_TURN
            h = (h + TURN[a]) % 4
        else:
            nr, nc = r + DELTAS[h][0], c + DELTAS[h][1]
            if self.layout.walls[nr, nc]:
                outcome = OUT_BUMP
                self.bumps += 1
            else:
                r, c = nr, nc
                if self.food[r, c]:
                    outcome = OUT_FOOD
                    self.food[r, c] = False
                    obs[1, r, c] = 0.0
                    self.food_left -= 1
                elif self.layout.shocks[r, c]:
                    outcome = OUT_SHOCK
                    self.shocks += 1
                else:
                    outcome = OUT_MOVE
        self.pos, self.heading = (r, c), h
        obs[3, r, c] = 1.0
        obs[4 + h, r, c] = 1.0
        self.steps += 1
        terminated = self.food_left == 0
        truncated = (not terminated) and self.steps >= self.config.max_steps
        self._done = terminated or truncated
        return obs.copy(), float(self._rewards[outcome]), terminated, truncated, self._info()

    # -- rendering ---------------------------------------------------------------------------
    def render(self):
        if self.render_mode is None:
            gym.logger.warn("render() called without a render_mode; use 'ansi' or 'rgb_array'")
            return None
        if self.layout is None:
            raise RuntimeError("call reset() before render()")
        if self.render_mode == "ansi":
            return self.layout.to_text(self.pos, self.heading, self.food)
        return self._render_rgb()

    def _render_rgb(self) -> np.ndarray:
        k = self.cell_px
        lay = self.layout
        h, w = self.grid_shape
        cells = np.empty((h, w, 3), np.uint8)
        cells[:] = _COLORS["floor"]
        cells[lay.walls] = _COLORS["wall"]
        cells[self.food] = _COLORS["food"]
        cells[lay.shocks] = _COLORS["shock_edge"]
        img = np.repeat(np.repeat(cells, k, 0), k, 1)
        inset = max(1, k // 5)
        for r, c in np.argwhere(lay.shocks):  # yellow square with a red rim
            img[r * k + inset:(r + 1) * k - inset, c * k + inset:(c + 1) * k - inset] = _COLORS["shock"]
        r, c = self.pos
        y0, x0 = r * k, c * k
        img[y0 + inset:y0 + k - inset, x0 + inset:x0 + k - inset] = _COLORS["mouse"]
        # heading mark: a white bar on the side the mouse faces
        t = max(1, k // 6)
        lo, hi = k // 2 - t, k // 2 + t
        a, b = inset, inset + 2 * t
        if self.heading == 0:
            img[y0 + a:y0 + b, x0 + lo:x0 + hi] = _COLORS["mark"]
        elif self.heading == 1:
            img[y0 + lo:y0 + hi, x0 + k - b:x0 + k - a] = _COLORS["mark"]
        elif self.heading == 2:
            img[y0 + k - b:y0 + k - a, x0 + lo:x0 + hi] = _COLORS["mark"]
        else:
            img[y0 + lo:y0 + hi, x0 + a:x0 + b] = _COLORS["mark"]
        return img

    def close(self):
        pass
