"""What a run shows of its model while it trains: renders and histograms to TensorBoard, a few
of them kept as PNG frames (figures/frames/<name>-step<N>.png), and at the end the figures made
from those frames: figures/<name>.png (the model as the run ended) and <name>_evolution.png."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from genlab.engine.evaluation import forked_rng
from genlab.engine.tracking import Tracker

#: images per tag that TensorBoard keeps unless started with --samples_per_plugin images=N
TENSORBOARD_IMAGES = 10


def render_steps(render_every: int, steps: int) -> list[int]:
    """The steps a run of `steps` renders at: 0, every `render_every`, and the last."""
    return sorted({0, *range(render_every, steps + 1, render_every), steps}) if render_every \
        else [0, steps]


def tensorboard_images_flag(render_every: int, steps: int) -> str:
    """The `tensorboard` option that shows every render of such a run, step 0 included
    (TensorBoard keeps TENSORBOARD_IMAGES per tag, dropping early ones): 100, or more for a
    run that renders more often."""
    n = len(render_steps(render_every, steps))
    return f"--samples_per_plugin images={max(100, -(-n // 100) * 100)}"


def frame_steps(render_every: int, steps: int) -> set[int]:
    """The first, middle and last render steps of a run of `steps`: kept as PNG frames. A run
    that ends before `steps` (early stopping) also keeps the frame of the step it ended at."""
    points = render_steps(render_every, steps)
    mid = min(points, key=lambda s: abs(s - steps / 2))
    return {0, mid, steps}


@torch.no_grad()
def render(model, make_batch: Callable[[], dict], *, step: int, device: torch.device,
           tracker: Tracker, frames_dir: Path | None, histograms: bool) -> None:
    """The family's renders of `make_batch()` (and, with `histograms`, its weights and
    activations) to TensorBoard at `step`; each render also saved as a frame PNG under
    `frames_dir` unless that is None. The random streams are left as they were."""
    from genlab.viz.render import save_png

    model.eval()
    with forked_rng(device):
        batch = make_batch()
        images = model.renders(batch)
        hists = model.histograms(batch) if histograms else {}
    model.train()
    for name, img in images.items():
        img = img.detach().float().cpu()
        tracker.image(f"renders/{name}", img, step)
        if frames_dir is not None:
            save_png(img, frames_dir / f"{name}-step{step:08d}.png")
    if histograms:
        for name, p in model.named_parameters():
            tracker.histogram(f"weights/{name}", p, step)
        for name, act in hists.items():
            tracker.histogram(f"activations/{name}", act, step)


def load_png(path: Path) -> torch.Tensor:
    """A PNG as a (1|3, H, W) float tensor in [0, 1]."""
    from PIL import Image

    with Image.open(path) as im:
        mode = "L" if im.mode in ("L", "I", "1") else "RGB"
        a = np.asarray(im.convert(mode), dtype=np.float32) / 255.0
    t = torch.from_numpy(a)
    return t.unsqueeze(0) if t.dim() == 2 else t.permute(2, 0, 1)


def _frame_step(path: Path) -> int:
    return int(path.stem.rsplit("-step", 1)[1])


def evolution_figures(figures: Path, title: str, last_step: int) -> None:
    """figures/<name>.png: the newest frame of each render (the model as the run ended);
    figures/<name>_evolution.png: its frames side by side. Frames after `last_step` (left by an
    earlier, longer attempt of the run) are not the run's and are skipped."""
    from genlab.viz.render import save_png, side_by_side

    frames_dir = figures / "frames"
    if not frames_dir.is_dir():
        return
    by_name: dict[str, list[Path]] = {}
    for p in sorted(frames_dir.glob("*-step*.png")):
        if _frame_step(p) <= last_step:
            by_name.setdefault(p.name.rsplit("-step", 1)[0], []).append(p)
    for name, paths in by_name.items():
        save_png(load_png(paths[-1]), figures / f"{name}.png")
        if len(paths) >= 2:
            labels = [f"step {_frame_step(p)}" for p in paths]
            fig = side_by_side([load_png(p) for p in paths], labels, title=f"{title}: {name}")
            save_png(fig, figures / f"{name}_evolution.png", min_size=0)
