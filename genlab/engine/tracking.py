"""Run directories, TensorBoard logging, metrics.json and the figures a run leaves behind."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch


def new_run_dir(root: Path, recipe_name: str, tag: str | None = None) -> Path:
    """runs/<recipe>/<YYYYmmdd-HHMMSS>[-<tag>]/, made unique with a counter if taken."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path(root) / recipe_name / (f"{stamp}-{tag}" if tag else stamp)
    path, n = base, 1
    while path.exists():
        path, n = base.with_name(f"{base.name}-{n}"), n + 1
    path.mkdir(parents=True)
    return path


def _finite_or_none(v):
    return v if isinstance(v, (int, str)) or (isinstance(v, float) and math.isfinite(v)) else None


def write_json(path: Path, obj) -> None:
    tmp = Path(path).with_suffix(".json.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=_finite_or_none, allow_nan=False) + "\n")
    tmp.replace(path)


class Tracker:
    """A thin TensorBoard writer. Tags are namespaced: train/..., eval/..., charts/..., renders/..."""

    def __init__(self, run_dir: Path, enabled: bool = True):
        self.run_dir, self.enabled = Path(run_dir), enabled
        self._writer = None

    @property
    def writer(self):
        if self._writer is None and self.enabled:
            from torch.utils.tensorboard import SummaryWriter  # slow import: only when logging

            self._writer = SummaryWriter(str(self.run_dir))
        return self._writer

    def scalars(self, values: dict[str, float], step: int, prefix: str = "") -> None:
        """Log scalars under `prefix`; a key that already has a namespace ('charts/SPS',
        'losses/td_loss') is logged as it is."""
        if self.enabled:
            for k, v in values.items():
                self.writer.add_scalar(k if "/" in k else f"{prefix}{k}", v, step)

    def image(self, tag: str, img: torch.Tensor, step: int) -> None:
        if self.enabled:
            self.writer.add_image(tag, img.clamp(0, 1), step, dataformats="CHW")

    def histogram(self, tag: str, values: torch.Tensor, step: int) -> None:
        if self.enabled and values.numel() > 0:
            self.writer.add_histogram(tag, values.detach().float().cpu().flatten(), step)

    def text(self, tag: str, text: str, step: int = 0) -> None:
        if self.enabled:
            self.writer.add_text(tag, text, step)

    def hparams(self, hparams: dict, metrics: dict[str, float]) -> None:
        """hparams and final metrics in the run's own event file (not a sub-run, as add_hparams does)."""
        if not self.enabled:
            return
        from torch.utils.tensorboard.summary import hparams as hp_summary

        clean = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in hparams.items()}
        metric_tags = {f"hparams/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))}
        exp, ssi, sei = hp_summary(clean, metric_tags)
        fw = self.writer.file_writer
        for summary in (exp, ssi, sei):
            fw.add_summary(summary)
        for k, v in metric_tags.items():
            self.writer.add_scalar(k, v, 0)

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def plot_curves(history: dict[str, list[list[float]]], path: Path) -> None:
    """One panel per metric group (train/*, eval/*), values against step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [k for k, v in history.items() if v and not k.startswith("charts/")]
    if not names:
        return
    fig, axes = plt.subplots(1, len(names), figsize=(3.6 * len(names), 3.0), squeeze=False)
    for ax, name in zip(axes[0], names):
        steps, vals = zip(*history[name])
        ax.plot(steps, vals, marker="." if len(steps) < 30 else None)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
