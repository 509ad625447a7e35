"""The files and text of `genlab eval` and `genlab probe`: metrics.json, figures, localisation."""
from __future__ import annotations

import math
from pathlib import Path

import torch

from genlab.core.files import write_json


def write_report(out: Path, report: dict, y: torch.Tensor, probs: torch.Tensor, names: list[str], *,
                 title: str, run_dir: Path, tb_prefix: str, step: int, header: dict) -> dict:
    """out/metrics.json ({**header, **report}, NaN as null), confusion_matrix.png (rows = actual,
    columns = predicted), roc.png and, for a multi-class lesion task, roc_lesion.png; the figures
    also go to RUN_DIR's TensorBoard under tb_prefix. Returns {name: (H, W, 3) uint8 image}."""
    from genlab.engine.tracking import Tracker
    from genlab.metrics.classification import plot_confusion_matrix, plot_roc

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    y, probs = torch.as_tensor(y).long(), torch.as_tensor(probs).float()
    figures = {"confusion_matrix": plot_confusion_matrix(report["confusion_matrix"]["matrix"], names,
                                                         out / "confusion_matrix.png", title=title),
               "roc": plot_roc(y, probs, names, out / "roc.png", title=title)}
    bin_block = report.get("binary")
    if bin_block and len(names) > 2:  # the lesion-vs-healthy ROC of a multi-class model
        idx = bin_block["positive_indices"]
        truth = torch.isin(y, torch.tensor(idx)).long()
        p_pos = probs[:, idx].sum(1)
        figures["roc_lesion"] = plot_roc(truth, torch.stack([1 - p_pos, p_pos], 1),
                                         ["no lesion", bin_block["positive"]], out / "roc_lesion.png",
                                         title=f"{title}: lesion vs no lesion")
    write_json(out / "metrics.json", {**header, **report})
    tracker = Tracker(run_dir)
    for name, img in figures.items():
        tracker.image(f"{tb_prefix}/{name}", torch.from_numpy(img).permute(2, 0, 1).float() / 255, step)
    tracker.close()
    return figures


def _fmt(v) -> str:
    return "undefined" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def format_localisation(loc: dict) -> str:
    """The Grad-CAM localisation block of `genlab eval` as text."""
    return (f"Grad-CAM localisation over {int(loc['n'])} lesion images (predicted class):\n"
            f"  mass inside the lesion mask  {_fmt(loc['mass'])}  (correct predictions "
            f"{_fmt(loc['mass_correct'])}; uniform map {_fmt(loc['mass_base'])})\n"
            f"  pointing game, tolerance {loc['tolerance_px']} px  {_fmt(loc['point'])}  (correct "
            f"{_fmt(loc['point_correct'])}; uniform map {_fmt(loc['point_base'])})"
            + "".join(f"\n  {c:<8} n {int(v['n']):>5}  mass {_fmt(v['mass'])} (uniform "
                      f"{_fmt(v['mass_base'])})  pointing {_fmt(v['point'])} (uniform "
                      f"{_fmt(v['point_base'])})" for c, v in loc.get("per_class", {}).items()))
