"""Run directories, TensorBoard logging and the training-curve figure a run leaves behind.

(metrics.json is written with genlab.core.files.write_json, the one strict JSON writer.)
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from genlab.core.errors import GenlabError
from genlab.core.files import write_json

_TAG = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")


def check_tag(tag: str | None) -> None:
    """A run folder's tag is a plain name: letters, digits, '-', '_', '.' (not '.' or '..'),
    so the run stays in runs/<recipe>/; anything else is a GenlabError."""
    if tag and (not _TAG.match(tag) or tag in (".", "..")):
        raise GenlabError(f"--tag {tag!r}: expected a plain name of letters, digits, '-', '_' "
                          f"and '.' (at most 100, no path separators, not '.' or '..')")


def check_out_root(root: Path) -> None:
    """GenlabError unless runs can be created under `root`: it is a folder or does not exist
    yet, and its nearest existing ancestor is a folder (not a file)."""
    root = Path(root)
    for p in (root, *root.parents):
        if p.exists():
            if not p.is_dir():
                what = "it" if p == root else str(p)
                raise GenlabError(f"--out {root}: {what} is a file, not a folder")
            return


def new_run_dir(root: Path, recipe_name: str, tag: str | None = None) -> Path:
    """runs/<recipe>/<YYYYmmdd-HHMMSS>[-<tag>]/, made unique with a counter if taken."""
    check_tag(tag)
    check_out_root(root)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path(root) / recipe_name / (f"{stamp}-{tag}" if tag else stamp)
    path, n = base, 1
    while path.exists():
        path, n = base.with_name(f"{base.name}-{n}"), n + 1
    try:
        path.mkdir(parents=True)
    except OSError as e:  # a file in the way, no permission, a read-only disk
        raise GenlabError(f"cannot create the run folder {path}: {e.strerror or e}") from None
    return path


class Tracker:
    """A thin TensorBoard writer. Tags are namespaced: train/..., eval/..., charts/...,
    renders/..."""

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
        """A histogram of `values`; none when TensorBoard's bins (|x| <= 1e20) hold no value."""
        if self.enabled and values.numel() > 0:
            try:
                self.writer.add_histogram(tag, values.detach().float().cpu().flatten(), step)
            except ValueError:  # "The histogram is empty": the weights of a diverged run
                pass

    def text(self, tag: str, text: str, step: int = 0) -> None:
        if self.enabled:
            self.writer.add_text(tag, text, step)

    def hparams(self, hparams: dict, metrics: dict[str, float]) -> None:
        """hparams and final metrics in the run's own event file (not a sub-run, as
        add_hparams does)."""
        if not self.enabled:
            return
        from torch.utils.tensorboard.summary import hparams as hp_summary

        clean = {k: (v if isinstance(v, (int, float, str, bool)) else str(v))
                 for k, v in hparams.items()}
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


@dataclass
class LogWindow:
    """What accumulates between two train log lines: the step outputs' sums and the throughput."""
    sums: dict[str, torch.Tensor] = field(default_factory=dict)
    steps: int = 0
    samples: int = 0
    start: float = field(default_factory=time.perf_counter)
    extra: float = 0.0  # seconds spent on evaluation, renders and checkpoints, not training

    def add(self, out: dict[str, torch.Tensor], samples: int) -> None:
        for k, v in out.items():
            self.sums[k] = self.sums[k] + v.detach() if k in self.sums else v.detach().clone()
        self.steps += 1
        self.samples += samples

    def samples_per_s(self) -> float:
        return self.samples / max(time.perf_counter() - self.start - self.extra, 1e-9)


def _bar_size() -> dict:
    """tqdm's size arguments: follow the terminal, or, where it reports no size (0 x 0, as a
    serial console or a container's pty may), 100 columns and 20 rows: tqdm would otherwise
    take the 0 rows as "no room" and draw nothing at all."""
    import os
    import sys

    try:
        size = os.get_terminal_size(sys.stderr.fileno())
    except (OSError, ValueError, AttributeError):
        return {"dynamic_ncols": True}
    if size.columns > 0 and size.lines > 0:
        return {"dynamic_ncols": True}
    return {"ncols": size.columns or 100, "nrows": size.lines or 20}


class Console:
    """A run's lines on stdout: one per train log and per evaluation, or, with `progress`, a
    tqdm bar (train numbers in its postfix, evaluations written above it). `quiet` prints
    nothing (every rank but 0 is quiet)."""

    def __init__(self, quiet: bool, progress: bool):
        self.quiet, self.progress = quiet, progress
        self.bar = None

    def say(self, msg: str) -> None:
        if not self.quiet:
            print(msg, flush=True)

    def open_bar(self, total: int, initial: int) -> None:
        if self.progress:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, unit="step", **_bar_size())

    def step_done(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def train_line(self, step: int, steps: int, means: dict[str, float], sps: float) -> None:
        if self.bar is not None:
            self.bar.set_postfix({**{k: f"{v:.4g}" for k, v in list(means.items())[:3]},
                                  "samples/s": f"{sps:.0f}"}, refresh=False)
        else:
            items = "  ".join(f"{k} {v:.4g}" for k, v in means.items())
            self.say(f"step {step:>6}/{steps}  {items}  {sps:,.0f} samples/s")

    def eval_line(self, step: int, metrics: dict[str, float], scope: str = "") -> None:
        """An evaluation's scores; `scope` says on what (e.g. "128 of 512 val examples")."""
        msg = "  ".join(f"{k} {v:.4g}" for k, v in metrics.items()) + (f"  ({scope})" if scope else "")
        (self.bar.write if self.bar is not None else self.say)(f"eval  step {step:>6}  {msg}")

    def summary(self, test: dict[str, float], best: dict, run_dir: Path,
                val: dict[str, float] | None = None, scopes: dict[str, str] | None = None) -> None:
        """The last lines of a finished run: the final val and test scores (what metrics.json
        holds; `scopes` says on what), the test scores of best.pt, where the run is."""
        scopes = scopes or {}
        for name, metrics in (("val", val), ("test", test)):
            if metrics is not None:
                self.say(f"{name:<5} " + "  ".join(f"{k} {v:.4g}" for k, v in metrics.items())
                         + (f"  ({scopes[name]})" if scopes.get(name) else ""))
        if "test" in best:
            self.say(f"test of best.pt (step {best['step']}, chosen on val {best['monitor']}):  "
                     + "  ".join(f"{k} {v:.4g}" for k, v in best["test"].items()))
        self.say(f"run written to {run_dir}")


def write_outputs(run_dir: Path, result: dict, history: dict[str, list[list[float]]],
                  hparams: dict, tracker: Tracker) -> None:
    """What a finished run leaves: metrics.json, figures/curves.png, and the hparams with the
    final val/test metrics in TensorBoard (whose writer is closed)."""
    write_json(run_dir / "metrics.json", result)
    plot_curves(history, run_dir / "figures" / "curves.png")
    tracker.hparams(hparams, {f"val/{k}": v for k, v in result["val"].items()}
                    | {f"test/{k}": v for k, v in result["test"].items()})
    tracker.close()


CURVE_COLUMNS = 6


def plot_curves(history: dict[str, list[list[float]]], path: Path) -> None:
    """One panel per metric, values against step, in rows of at most CURVE_COLUMNS panels (a GAN
    scored by two judges logs ~40 metrics: one row would be a figure too wide to open)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [k for k, v in history.items() if v and not k.startswith("charts/")]
    if not names:
        return
    ncols = min(CURVE_COLUMNS, len(names))
    nrows = -(-len(names) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.6 * ncols, 3.0 * nrows), squeeze=False)
    for ax in axes.flat[len(names):]:
        ax.axis("off")
    for ax, name in zip(axes.flat, names):
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
