"""`genlab export RUN_DIR --format judge [--out DIR]`: a classifier run as a lesion judge.

The judge (format: genlab.families.gan_judge) is made from the run's best.pt (else its newest
checkpoint), written to a hidden folder beside `out`, reloaded with `load_lesion_judge` and
checked against the run's own model on test images of the run's data (random inputs in the
data's value range when the data cannot be built): its logits and features may differ from
PyTorch's by at most PARITY_TOL. Only then do its four files replace those in `out` (default
RUN_DIR/judge). A GAN scores against it with `model.lesion_judge: DIR`.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch

from genlab.core.errors import GenlabError
from genlab.tools.export_formats import PARITY_TOL, ExportError, ExportResult, _test_images

JUDGE_FILES = ("encoder.safetensors", "head.safetensors", "encoder.json", "head.json")  # JSON last


def _parity_images(run, n: int) -> tuple[torch.Tensor, str]:
    """Test images of the run's data, as the other export formats check parity on."""
    def build(k):
        return run.data.get("test", torch.arange(min(k, run.data.size("test"))))["x"]

    return _test_images(build, n, run.info.input_shape, run.info.value_range)


def export_judge(run_dir: str | Path, out: str | Path | None = None, parity_n: int = 8) -> ExportResult:
    """Write the lesion judge of classifier run `run_dir` into `out` (see the module docstring)."""
    from genlab.core.files import require_run_dir
    from genlab.engine.runs import load_run
    from genlab.families.classifier import Classifier
    from genlab.families.gan_judge import load_lesion_judge, save_lesion_judge

    run_dir = require_run_dir(run_dir)
    run = load_run(run_dir, "best", "cpu")
    if not isinstance(run.model, Classifier):
        raise GenlabError(f"{run_dir}: a {run.recipe.family!r} run; a lesion judge is made from a "
                          f"classifier run")
    out = Path(out) if out is not None else run_dir / "judge"
    out.mkdir(parents=True, exist_ok=True)
    x, said = _parity_images(run, parity_n)
    stage = Path(tempfile.mkdtemp(prefix=".judge-", suffix=".tmp", dir=out))
    try:
        save_lesion_judge(run.model, run.info, stage, recipe_name=run.recipe.name, step=run.step,
                          extra={"run": run_dir.name, "checkpoint": run.checkpoint.name})
        judge = load_lesion_judge(stage)
        worst = 0.0
        for batch in (x, x[:1]):
            with torch.no_grad():
                feats, logits = judge.features_and_logits(batch)
                pairs = [(feats, run.model.encode(batch)), (logits, run.model(batch))]
            worst = max([worst] + [float((a.float() - b.float()).abs().max()) for a, b in pairs])
        if not worst <= PARITY_TOL:
            raise ExportError(f"judge reload: parity check failed: max |judge - PyTorch| = "
                              f"{worst:.3g} > {PARITY_TOL:g} (nothing written)")
        for name in JUDGE_FILES:
            os.replace(stage / name, out / name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return ExportResult("judge", "judge", [out / f for f in JUDGE_FILES], run.step,
                        max_abs_diff=worst, parity_inputs=said, batch_sizes=[len(x), 1])


__all__ = ["export_judge"]
