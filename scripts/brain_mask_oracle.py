"""How far apart are the four syndromes in the lesion masks alone? A yardstick for hard mode.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/brain_mask_oracle.py            # hard mode
    .venv/bin/python scripts/brain_mask_oracle.py --mode easy --train 20000 --json out.json

A classifier that sees the factory's exact lesion masks (no image, no noise, no faint edges) is
an optimistic bound on what an image classifier can reach: what the masks cannot tell apart (two
overlapping medium tumours of B that merge into one blob the size of A's big one; A's medium
extras) no pixel classifier can either, short of using intensity detail the masks drop. Per mask:
lesion area, number of connected components (4-connected, scipy.ndimage.label), the ten largest
component areas, the spread (std of row and column) of lesion pixels, and the number of
components of at least 20 pixels; a scikit-learn HistGradientBoostingClassifier is fitted on
`--train` masks of the train split and scored on the test split (the same 2,000 test images as
recipes/lesion_brain.yaml with seed 0).
"""
from __future__ import annotations

import argparse
import json

import numpy as np
import torch
from scipy import ndimage
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import confusion_matrix

from genlab.data.brain import SYNDROMES, BrainConfig, BrainData


def mask_features(data: BrainData, split: str, n: int, chunk: int = 500) -> tuple[np.ndarray, np.ndarray]:
    rows, labels = [], []
    for start in range(0, n, chunk):
        out = data.get(split, torch.arange(start, min(n, start + chunk)))
        labels.append(out["y"].numpy())
        for m in out["mask"][:, 0].numpy():
            lab, k = ndimage.label(m)
            sizes = np.sort(np.bincount(lab.ravel())[1:])[::-1]
            top = np.zeros(10)
            top[: min(10, k)] = sizes[:10]
            ys, xs = np.nonzero(m)
            spread = [ys.std(), xs.std()] if len(ys) else [0.0, 0.0]
            rows.append([m.sum(), k, *top, *spread, int((sizes >= 20).sum())])
    return np.asarray(rows, dtype=np.float64), np.concatenate(labels)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mode", choices=["easy", "hard"], default="hard")
    ap.add_argument("--train", type=int, default=40_000, help="training masks")
    ap.add_argument("--test", type=int, default=2_000, help="test masks (the recipe's test split)")
    ap.add_argument("--seed", type=int, default=0, help="factory seed (the recipe's seed)")
    ap.add_argument("--json", help="also write the result here")
    a = ap.parse_args()
    data = BrainData(BrainConfig(mode=a.mode, train_size=a.train, test_size=a.test), seed=a.seed)
    x_tr, y_tr = mask_features(data, "train", a.train)
    x_te, y_te = mask_features(data, "test", a.test)
    pred = HistGradientBoostingClassifier(max_iter=300, random_state=0).fit(x_tr, y_tr).predict(x_te)
    acc = float((pred == y_te).mean())
    cm = confusion_matrix(y_te, pred, labels=range(len(SYNDROMES)))
    print(f"mask oracle, {a.mode} mode: test accuracy {acc:.4f} ({a.train} train masks, {a.test} test)")
    print("confusion matrix (rows: true, columns: predicted):", " ".join(SYNDROMES))
    for name, row in zip(SYNDROMES, cm):
        print(f"  {name}  " + " ".join(f"{v:5d}" for v in row))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"mode": a.mode, "train": a.train, "test": a.test, "accuracy": acc,
                       "confusion": cm.tolist(), "classes": list(SYNDROMES)}, f, indent=2)


if __name__ == "__main__":
    main()
