"""How good is a lesion judge? Its accuracy on the test split of synthetic brain slices, in easy
and in hard mode (one judge scores the GANs of both), read from the judge folder itself.

    python scripts/judge_accuracy.py judges/lesion_judge_brain            # hard and easy, 2,000 each
    python scripts/judge_accuracy.py judges/lesion_judge_brain --modes hard --n 500

Prints JSON per mode: accuracy, per-class sensitivity, the lesion call ("any lesion class" against
the negative classes: sensitivity, specificity, the share of images called a lesion against the
true share) and the folder's size. The images are the test split of data seed --seed (0: the
split the lab's recipes test on), at the judge's input size.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from genlab.data.brain import BrainConfig, BrainData
from genlab.families.gan_judge import load_lesion_judge
from genlab.metrics.classification import classification_report
from genlab.metrics.generative import lesion_rate


@torch.no_grad()
def measure(judge, mode: str, n: int, seed: int, batch_size: int = 250) -> dict:
    _, h, w = judge.input_shape
    data = BrainData(BrainConfig(mode=mode, test_size=n, size=[h, w]), seed=seed)
    if list(data.info.class_names) != judge.class_names:
        raise SystemExit(f"the judge's classes {judge.class_names} are not the data's "
                         f"{list(data.info.class_names)}")
    logits, ys = [], []
    for start in range(0, n, batch_size):
        b = data.get("test", torch.arange(start, min(n, start + batch_size)))
        logits.append(judge.logits(b["x"]).float())
        ys.append(b["y"])
    logits, y = torch.cat(logits), torch.cat(ys)
    positive = [i for i in range(judge.num_classes) if i not in judge.negative]
    rep = classification_report(y, torch.softmax(logits, 1), judge.class_names, positive=positive)
    return {"mode": mode, "n": n, "accuracy": rep["accuracy"],
            "sensitivity": {r["class"]: r["sensitivity"] for r in rep["per_class"]},
            "lesion_sensitivity": rep["binary"]["sensitivity"],
            "lesion_specificity": rep["binary"]["specificity"],
            "lesion_rate": lesion_rate(logits, judge.negative),
            "lesion_share": float(np.isin(y.numpy(), positive).mean())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("judge", type=Path)
    ap.add_argument("--modes", nargs="+", default=["hard", "easy"], choices=["hard", "easy"])
    ap.add_argument("--n", type=int, default=2000, help="test images per mode")
    ap.add_argument("--seed", type=int, default=0, help="data seed (the recipes' seed: 0)")
    args = ap.parse_args()
    judge = load_lesion_judge(args.judge)
    size_kb = sum(f.stat().st_size for f in args.judge.iterdir() if f.is_file()) / 1024
    print(json.dumps({"judge": judge.name, "step": judge.meta.get("step"), "size_kb": round(size_kb, 1),
                      "results": [measure(judge, m, args.n, args.seed) for m in args.modes]}, indent=2))


if __name__ == "__main__":
    main()
