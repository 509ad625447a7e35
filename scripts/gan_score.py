"""Re-score a GAN run under another judge: Fréchet distance, its real-vs-real floor, precision
and recall of the run's EMA generator (newest checkpoint), with any exported genlab encoder.

    python scripts/gan_score.py runs/gan_brain/<run> --extractor runs/lesion_brain/<run>/export
    python scripts/gan_score.py runs/gan_brain/<run>            # the run's own judge

Prints the metrics as JSON (and writes them to --out if given). Uses the run's recipe, so the
split, its size and fid_samples are those the run was scored with.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from genlab.core.recipe import load_recipe
from genlab.engine.trainer import Trainer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--extractor", type=Path, default=None, help="exported encoder bundle (folder)")
    ap.add_argument("--split", default="val", choices=["val", "test"])
    ap.add_argument("--out", type=Path, default=None, help="also write the metrics to this JSON file")
    args = ap.parse_args()
    overrides = [f"model.fid_extractor={args.extractor}"] if args.extractor else []
    rec = load_recipe(args.run_dir / "recipe.yaml", overrides)
    trainer = Trainer(rec, device="cpu", resume_dir=args.run_dir, quiet=True)
    t0 = time.perf_counter()
    metrics = trainer.evaluate(args.split, None)
    result = {"run": str(args.run_dir), "step": trainer.step, "split": args.split,
              "judge": trainer.model.judge_name, "seconds": round(time.perf_counter() - t0, 1),
              **metrics}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
