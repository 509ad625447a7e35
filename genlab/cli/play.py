"""`genlab play`: watch a trained DQN mouse play one maze, in the terminal or as a GIF.

The agent is loaded with genlab.load_run: the weights of checkpoints/best.pt when the run has
one (the best validation optimal_ratio), else of the newest step checkpoint. It plays greedily,
one episode.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from genlab.cli.common import CONTEXT, device_option, run_dir_argument
from genlab.core.errors import GenlabError


def load_agent(run_dir: Path, device: str = "cpu", prefer_best: bool = True):
    """(model, which checkpoint) of a run whose family acts; best.pt's weights when present and
    asked for."""
    from genlab.engine.runs import load_run
    from genlab.families.base import require

    run = load_run(run_dir, "best" if prefer_best else "last", device)
    require(run.model, "act", "genlab play")
    if run.checkpoint.name == "best.pt":
        which = (f"best.pt (step {run.step}, val {run.meta.get('monitor')} "
                 f"{run.meta.get('value') or 0:.4g})")
    else:
        which = f"step {run.step}"
    return run.model, which


def choose_layout(model, maze_seed: int | None, layout_file: Path | None):
    """The maze to play: --layout FILE, --maze-seed S, else the run's fixed layout or first test maze."""
    from genlab.data.maze_source import TEST_SEED0
    from genlab.envs.maze import MazeError, generate_layout, parse_layout

    task = model.task
    want = tuple(model.info.input_shape[1:])
    try:
        if layout_file is not None:
            if not layout_file.is_file():
                raise GenlabError(f"--layout {layout_file}: file not found")
            layout, name = parse_layout(layout_file.read_text()), str(layout_file)
        elif maze_seed is not None:
            layout, name = generate_layout(task.config, maze_seed), f"maze seed {maze_seed}"
        elif task.fixed:
            layout, name = task.layout, "the run's fixed layout"
        else:
            layout, name = task.layout_of(TEST_SEED0), f"test maze 0 (seed {TEST_SEED0})"
    except MazeError as e:
        raise GenlabError(f"cannot build the maze: {e}") from None
    if tuple(layout.shape) != want:
        raise GenlabError(f"{name} is {layout.shape[0]}x{layout.shape[1]}, but this agent was trained "
                          f"on {want[0]}x{want[1]} mazes")
    return layout, name


def play_run(run_dir: Path, maze_seed: int | None = None, layout_file: Path | None = None,
             gif: Path | None = None, delay: float = 0.2, device: str = "cpu", animate: bool | None = None,
             echo=click.echo) -> dict:
    """Play one greedy episode; animate it when stdout is a terminal, optionally write a GIF."""
    from genlab.envs.solver import optimal_return

    model, which = load_agent(run_dir, device)
    layout, name = choose_layout(model, maze_seed, layout_file)
    ep = model.episode(layout, cell_px=16)
    best = optimal_return(layout, model.task.config)
    if animate is None:
        animate = sys.stdout.isatty()
    frames = ep["text"]
    if animate:
        for t, frame in enumerate(frames):
            echo("\x1b[H\x1b[2J" + frame + f"step {t}/{len(frames) - 1}", nl=True)
            time.sleep(delay)
    else:
        echo(frames[-1], nl=False)
    ratio = ep["return"] / best if best > 0 else float(ep["return"] >= best - 1e-6)
    echo(f"{name}, agent {which}: return {ep['return']:.3f} vs optimal {best:.3f} "
         f"(ratio {ratio:.3f}); food eaten {ep['food_eaten']}/{layout.n_food}, shocks {ep['shocks']}, "
         f"{ep['steps']} steps")
    if gif is not None:
        write_gif(ep["rgb"], gif, delay)
        echo(f"wrote {gif}")
    return {"return": ep["return"], "optimal": best, "ratio": ratio, "steps": ep["steps"]}


def write_gif(frames, path: Path, delay: float) -> Path:
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    images = [Image.fromarray(f) for f in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=max(20, int(delay * 1000)),
                   loop=0)
    return path


@click.command(context_settings=CONTEXT)
@run_dir_argument
@click.option("--maze-seed", type=click.IntRange(min=0), default=None,
              help="Play the generated maze of this seed (default: the run's fixed layout, or its "
                   "first test maze). Example: --maze-seed 7")
@click.option("--layout", "layout_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Play a text maze (# . F X and the mouse ^ > v <). "
                   "Example: --layout recipes/mazes/fixed9.txt")
@click.option("--gif", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the episode as an animated GIF. Example: --gif mouse.gif")
@click.option("--delay", type=click.FloatRange(min=0), default=0.2, show_default=True,
              help="Seconds per frame (terminal animation and GIF). Example: --delay 0.1")
@device_option("Device used to rebuild the agent. Example: --device cpu")
def play(run_dir, maze_seed, layout_file, gif, delay, device):
    """Watch RUN_DIR's DQN mouse play one maze greedily (best.pt's weights when present).

    In a terminal the episode is animated; otherwise the final frame and the return against
    the maze's exact optimum are printed.

    \b
    Examples:
      genlab play runs/dqn_maze/20260101-120000
      genlab play runs/dqn_maze/20260101-120000 --maze-seed 7 --gif mouse.gif
      genlab play runs/dqn_maze_fixed/20260101-120000 --layout recipes/mazes/fixed9.txt
    """
    if maze_seed is not None and layout_file is not None:
        raise GenlabError("give either --maze-seed or --layout, not both")
    play_run(run_dir, maze_seed, layout_file, gif, delay, device)


COMMANDS = (play,)
