"""Do RBM features (100 hidden units) classify the 8x8 digits better than the raw pixels?

    OMP_NUM_THREADS=1 .venv/bin/python scripts/rbm_features_vs_pixels.py            # plain, all rows
    OMP_NUM_THREADS=1 .venv/bin/python scripts/rbm_features_vs_pixels.py --protocol nudged
    OMP_NUM_THREADS=1 .venv/bin/python scripts/rbm_features_vs_pixels.py --all   # + recipe variants
    .venv/bin/python scripts/rbm_features_vs_pixels.py --repeats 2 --json out.json
    .venv/bin/python scripts/rbm_features_vs_pixels.py --run runs/rbm_digits/<stamp>  # a trained run

The classifier is the same for every row: a multinomial logistic regression fitted on the
training folds' features, with C chosen from {0.01, ..., 1000} on an inner stratified 20 %
validation split of them; "std" rows standardise each feature with the training folds' mean and
sd first. In each fold the RBM is trained, without labels, on the training folds only. Pixels are
divided by 16 (the digits' maximum) into [0, 1]. Reported: mean held-out accuracy +- its standard
error over the folds, and the paired difference to raw pixels +- its standard error (pairs share
the fold). Stratified 5-fold cross-validation, `--repeats` times with different shuffles, over:

  --protocol plain         the 1,797 digits.
  --protocol nudged        scikit-learn's example "Restricted Boltzmann Machine features for digit
                           classification": every digit plus its four 1-pixel shifts (up, down,
                           left, right; zeros fill in), 8,985 images, split AFTER nudging. A
                           test image then usually has shifted twins of itself in training.
  --protocol nudged-train  the folds are cut from the 1,797 digits; only the training folds are
                           nudged (5x), the held-out digits are the original, unshifted ones.

The RBMs are trained with exactly the update of the "rbm" family (genlab.nn.rbm: PCD-1 on
`cd_loss`, SGD with weight decay on W only and Hinton's momentum schedule, visible biases from the
first batch) but outside the trainer, so that each fold gets its own model. The "recipe" row uses
the settings of recipes/rbm_digits.yaml.

`--run RUN_DIR` instead scores one trained run's exported encoder on that run's own digits split
(C chosen on val, accuracy on test), against raw pixels on the same split.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, train_test_split
from sklearn.neural_network import BernoulliRBM
from sklearn.preprocessing import StandardScaler

from genlab.nn.rbm import RBM, momentum_at

CS = (0.01, 0.1, 1.0, 10.0, 100.0, 1000.0)


def train_rbm(x: np.ndarray, seed: int, hidden: int = 100, steps: int = 4000, batch: int = 20,
              lr: float = 0.01, k: int = 1, mom0: float = 0.5, mom1: float = 0.9, switch: int = 300,
              wd: float = 1e-4, sparsity: float | None = None, cost: float = 0.1,
              visible: str = "bernoulli", init_std: float = 0.01, persistent: bool = True,
              epochs: float | None = None) -> RBM:
    """The "rbm" family's update on (N, 64) data: PCD-k (CD-k if not persistent), SGD, momentum
    schedule, decay on W. `epochs`, if given, replaces `steps` (epochs x N / batch)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.as_tensor(x, dtype=torch.float32)
    if epochs is not None:
        steps = round(epochs * x.shape[0] / batch)
    rbm = RBM(x.shape[1], hidden, visible=visible, n_chains=batch)
    with torch.no_grad():
        rbm.W.normal_(0.0, init_std, generator=g)
    opt = torch.optim.SGD([{"params": [rbm.W], "weight_decay": wd},
                           {"params": [rbm.b_v, rbm.b_h], "weight_decay": 0.0}], lr=lr, momentum=mom0)
    n, order, pos = x.shape[0], None, 0
    for step in range(steps):
        if order is None or pos + batch > n:
            order, pos = torch.randperm(n, generator=g), 0
        v = x[order[pos:pos + batch]]
        pos += batch
        if step == 0:
            rbm.init_visible_bias(v)
        for group in opt.param_groups:
            group["momentum"] = momentum_at(step, mom0, mom1, switch)
        v_neg = rbm.negative_phase(v, k, persistent=persistent, generator=g)
        loss = rbm.cd_loss(v, v_neg)
        if sparsity is not None:
            loss = loss + rbm.sparsity_penalty(v, sparsity, cost, "cross_entropy")
        opt.zero_grad()
        loss.backward()
        opt.step()
    return rbm


def nudge(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's example's data set: (5N, 64) images (originals first, then each shift) and
    their labels."""
    return shifted(x), np.tile(y, 5)


def shifted(x: np.ndarray) -> np.ndarray:
    """x and its four one-pixel shifts (up, down, left, right; zeros fill in), stacked."""
    im = x.reshape(-1, 8, 8)
    out = [im]
    for axis, d in ((1, 1), (1, -1), (2, 1), (2, -1)):
        s = np.roll(im, d, axis=axis)
        idx = [slice(None)] * 3
        idx[axis] = 0 if d == 1 else -1
        s[tuple(idx)] = 0
        out.append(s)
    return np.concatenate(out).reshape(-1, 64)


def logreg(ftr, ytr, fte, yte, seed: int, standardize: bool) -> tuple[float, float]:
    if standardize:
        sc = StandardScaler().fit(ftr)
        ftr, fte = sc.transform(ftr), sc.transform(fte)
    a, b, ya, yb = train_test_split(ftr, ytr, test_size=0.2, random_state=seed, stratify=ytr)
    c = max(CS, key=lambda c: LogisticRegression(C=c, max_iter=5000).fit(a, ya).score(b, yb))
    return LogisticRegression(C=c, max_iter=5000).fit(ftr, ytr).score(fte, yte), c


# name: (RBM settings or None for pixels, standardise features). Extra keys: gauss (Gaussian units
# on standardised pixels), shift (RBM trained on the 1-px shifted copies too), concat (features
# + pixels), sklearn (scikit-learn's own BernoulliRBM with these settings).
ROWS = {
    "raw pixels": (None, False),
    "raw pixels, std": (None, True),
    "sklearn BernoulliRBM-100 (example settings: 10 epochs, lr 0.06, batch 10)":
        ({"sklearn": {"n_components": 100, "learning_rate": 0.06, "n_iter": 10, "batch_size": 10}}, False),
    "RBM-100, sklearn-like (10 epochs, lr 0.06, no momentum)":
        ({"epochs": 10, "batch": 20, "lr": 0.06, "mom0": 0.0, "mom1": 0.0, "wd": 0.0}, False),
    "RBM-100, recipe rbm_digits": ({}, False),
    "RBM-100, recipe rbm_digits, std": ({}, True),
    "RBM-100, recipe + sparsity 0.05, std": ({"sparsity": 0.05, "cost": 0.3}, True),
    "RBM-100, 1-px shifted copies (5x data), std": ({"shift": True, "steps": 4000}, True),
    "RBM-100, Gaussian on standardised pixels + sparsity 0.1, std":
        ({"gauss": True, "visible": "gaussian", "lr": 0.002, "sparsity": 0.1, "cost": 0.1}, True),
    "RBM-100, Gaussian + sparsity 0.1 + shifted copies, std":
        ({"gauss": True, "visible": "gaussian", "lr": 0.002, "sparsity": 0.1, "cost": 0.1,
          "shift": True}, True),
    "RBM-512, recipe, std (more units: context)": ({"hidden": 512}, True),
    "RBM-100 recipe + raw pixels, std (context)": ({"concat": True}, True),
    # cheap variants of the recipe (plain protocol: can a better setting beat the pixels?)
    "RBM-100, recipe x3 steps (12k), std": ({"steps": 12000}, True),
    "RBM-100, recipe, lr 0.05, std": ({"lr": 0.05}, True),
    "RBM-100, recipe, CD-1 (not persistent), std": ({"persistent": False}, True),
    "RBM-100, recipe, PCD-5, std": ({"k": 5}, True),
}
# The rows run by default per protocol (--only picks others); shifted-copy rows make no sense on
# data that is already nudged.
DEFAULT_ROWS = {
    "plain": [r for r in ROWS if not r.startswith("RBM-100, recipe x3") and ", recipe, " not in r],
    "nudged": ["raw pixels", "raw pixels, std",
               "sklearn BernoulliRBM-100 (example settings: 10 epochs, lr 0.06, batch 10)",
               "RBM-100, sklearn-like (10 epochs, lr 0.06, no momentum)",
               "RBM-100, recipe rbm_digits", "RBM-100, recipe rbm_digits, std"],
}
DEFAULT_ROWS["nudged-train"] = DEFAULT_ROWS["nudged"]
PROTOCOLS = tuple(DEFAULT_ROWS)


def folds(protocol: str, repeats: int):
    """(xtr, ytr, xte, yte) per fold: stratified 5-fold CV, `repeats` shuffles."""
    d = load_digits()
    x, y = (d.data / 16.0).astype(np.float32), d.target
    if protocol == "nudged":
        x, y = nudge(x, y)
    for rep in range(repeats):
        for tr, te in StratifiedKFold(5, shuffle=True, random_state=rep).split(x, y):
            if protocol == "nudged-train":
                yield (*nudge(x[tr], y[tr]), x[te], y[te])
            else:
                yield x[tr], y[tr], x[te], y[te]


def cross_validate(repeats: int, only: list[str] | None, protocol: str = "plain") -> dict:
    names = [k for k in ROWS if k in only] if only else DEFAULT_ROWS[protocol]
    unknown = set(only or ()) - set(ROWS)
    if unknown:
        raise SystemExit(f"unknown row(s) {sorted(unknown)}; known: {list(ROWS)}")
    rows = {k: ROWS[k] for k in ["raw pixels", *[n for n in names if n != "raw pixels"]]}
    acc: dict[str, list[float]] = {k: [] for k in rows}
    for fold, (x_tr, y_tr, x_te, y_te) in enumerate(folds(protocol, repeats)):
        for name, (rbm_kw, std) in rows.items():
            t0 = time.time()
            if rbm_kw is None:
                ftr, fte = x_tr, x_te
            elif "sklearn" in rbm_kw:
                sk = BernoulliRBM(random_state=fold, **rbm_kw["sklearn"]).fit(x_tr)
                ftr, fte = sk.transform(x_tr), sk.transform(x_te)
            else:
                kw = dict(rbm_kw)
                gauss, shift, concat = kw.pop("gauss", False), kw.pop("shift", False), kw.pop("concat", False)
                xtr, xte = x_tr, x_te
                if gauss:  # zero-mean pixels, one global sd (unit-variance Gaussian units)
                    mu, sd = xtr.mean(0), xtr.std()
                    xtr, xte = (xtr - mu) / sd, (xte - mu) / sd
                rbm = train_rbm(shifted(xtr) if shift else xtr, seed=fold, **kw)
                with torch.no_grad():
                    ftr = rbm.encode(torch.as_tensor(xtr)).numpy()
                    fte = rbm.encode(torch.as_tensor(xte)).numpy()
                if concat:
                    ftr, fte = np.hstack([ftr, x_tr]), np.hstack([fte, x_te])
            a, c = logreg(ftr, y_tr, fte, y_te, fold, std)
            acc[name].append(a)
            print(f"fold {fold}  {a:.4f}  C={c:g}  {time.time() - t0:5.1f}s  {name}", flush=True)
    raw = np.array(acc["raw pixels"])
    table = {}
    for name, v in acc.items():
        v = np.array(v)
        diff = v - raw
        table[name] = {"mean": v.mean(), "se": v.std(ddof=1) / np.sqrt(len(v)),
                       "diff": diff.mean(),
                       "diff_se": diff.std(ddof=1) / np.sqrt(len(v)) if name != "raw pixels" else 0.0,
                       "wins": int((diff > 0).sum()), "losses": int((diff < 0).sum()), "folds": len(v)}
    return table


def score_run(run_dir: str) -> dict:
    """One run's exported encoder on its own split: C on val, accuracy on test."""
    from genlab import load_encoder
    from genlab.core.recipe import load_recipe
    from genlab.core.registry import get_dataset

    rec = load_recipe(f"{run_dir}/recipe.yaml")
    data = get_dataset(rec.data_name)(rec.data, rec.seed, "cpu")
    enc = load_encoder(run_dir)
    split = {}
    for s in ("train", "val", "test"):
        b = data.get(s, torch.arange(data.size(s)))
        with torch.no_grad():
            split[s] = (b["x"].flatten(1).numpy(), enc(b["x"]).numpy(), b["y"].numpy())
    out = {}
    for name, col, std in (("raw pixels", 0, False), ("RBM features", 1, False),
                           ("RBM features, std", 1, True)):
        ftr, fva, fte = split["train"][col], split["val"][col], split["test"][col]
        ytr, yva, yte = split["train"][2], split["val"][2], split["test"][2]
        if std:
            sc = StandardScaler().fit(ftr)
            ftr, fva, fte = sc.transform(ftr), sc.transform(fva), sc.transform(fte)
        c = max(CS, key=lambda c: LogisticRegression(C=c, max_iter=5000).fit(ftr, ytr).score(fva, yva))
        clf = LogisticRegression(C=c, max_iter=5000).fit(np.vstack([ftr, fva]), np.concatenate([ytr, yva]))
        out[name] = {"accuracy": clf.score(fte, yte), "C": c, "n_test": len(yte)}
        print(f"  {out[name]['accuracy']:.4f}  (C={c:g}, {len(yte)} test digits)  {name}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--protocol", choices=PROTOCOLS, default="plain",
                    help="plain digits, scikit-learn's nudged set (split after nudging), or only "
                         "the training folds nudged (see above)")
    ap.add_argument("--repeats", type=int, default=1, help="5-fold CV repeats (different shuffles)")
    ap.add_argument("--only", action="append", help="run only this row (repeatable; raw pixels always)")
    ap.add_argument("--all", action="store_true", help="run every row (default: the protocol's rows)")
    ap.add_argument("--run", help="score a trained run's exported encoder instead")
    ap.add_argument("--json", help="also write the table here")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.run:
        res = score_run(args.run)
    else:
        res = cross_validate(args.repeats, list(ROWS) if args.all else args.only, args.protocol)
        n = next(iter(res.values()))["folds"]
        print(f"\nprotocol {args.protocol}: held-out accuracy, logistic regression, {n} folds "
              f"(5-fold CV x {args.repeats})")
        print(f"{'mean':>7} {'+-se':>7} {'vs raw':>8} {'+-se':>7}  wins/losses  features")
        for name, r in res.items():
            print(f"{r['mean']:7.4f} {r['se']:7.4f} {r['diff']:+8.4f} {r['diff_se']:7.4f}  "
                  f"{r['wins']:>4}/{r['losses']:<6}  {name}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2, default=float)


if __name__ == "__main__":
    main()
