"""genlab's Bernoulli RBM versus scikit-learn's BernoulliRBM, on the same data, in one run.

    .venv/bin/python scripts/bench_rbm.py                      # defaults below
    .venv/bin/python scripts/bench_rbm.py --tile 10 --repeats 5 --threads 1 --json out.json

What it measures (both estimators get the same n_components, batch size, learning rate, epochs,
PCD with one Gibbs step, no momentum, no weight decay, float32 input):
  1. fit wall time (and process CPU time, steadier on a shared machine), median over `--repeats`
     fits on the 8x8 digits in [0, 1] tiled `--tile` times (1,797 x tile rows; tiling keeps each
     fit long enough to time), and the ratio genlab/sklearn;
  2. pseudo-log-likelihood of each fitted model (mean over the repeated fits) on the 1,797
     binarised digits: the exact all-units average (genlab.nn.rbm.pseudo_log_likelihood with
     exact=True: scikit-learn's definition without its sampling noise; sklearn's parameters are
     copied into a genlab RBM) and each estimator's own stochastic score_samples with the same
     random_state;
  3. held-out accuracy of a logistic regression (C chosen by 3-fold CV on the training part) on
     raw pixels, on RBM features (the benchmark setting, then a larger/longer RBM), and on RBM
     features concatenated with the pixels.

The machine may be shared: timings are noisy; medians and the thread setting are printed.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, train_test_split
from sklearn.neural_network import BernoulliRBM
from threadpoolctl import threadpool_info, threadpool_limits

from genlab.nn.rbm import RBM, pseudo_log_likelihood
from genlab.tools.rbm_sklearn import GenlabBernoulliRBM


def machine_info(threads: int | None) -> dict:
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor() or "?"
    import sklearn

    return {
        "python": platform.python_version(), "platform": platform.platform(), "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "load_avg": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "torch": torch.__version__, "sklearn": sklearn.__version__, "numpy": np.__version__,
        "threads_limit": threads, "torch_threads": torch.get_num_threads(),
        "blas": sorted({f"{i['internal_api']}:{i['num_threads']}" for i in threadpool_info()}),
    }


def to_genlab_rbm(components, b_h, b_v) -> RBM:
    rbm = RBM(components.shape[1], components.shape[0]).double()
    with torch.no_grad():
        rbm.W.copy_(torch.as_tensor(np.asarray(components, dtype=np.float64)))
        rbm.b_h.copy_(torch.as_tensor(np.asarray(b_h, dtype=np.float64)))
        rbm.b_v.copy_(torch.as_tensor(np.asarray(b_v, dtype=np.float64)))
    return rbm


def logreg_accuracy(ftr, ytr, fte, yte, seed) -> tuple[float, float]:
    grid = GridSearchCV(LogisticRegression(max_iter=5000), {"C": [0.1, 1.0, 10.0, 100.0, 1000.0]},
                        cv=3).fit(ftr, ytr)
    return float(grid.score(fte, yte)), float(grid.best_params_["C"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n-components", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=10)
    ap.add_argument("--learning-rate", type=float, default=0.06)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--tile", type=int, default=10, help="repeat the 1,797 digits this many times")
    ap.add_argument("--repeats", type=int, default=5, help="timed fits per estimator (median)")
    ap.add_argument("--threads", type=int, default=1,
                    help="BLAS/OpenMP/torch threads for both libraries (0: leave the defaults)")
    ap.add_argument("--binarize", action="store_true", help="train on binarised digits")
    ap.add_argument("--skip-accuracy", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()

    threads = args.threads or None
    if threads:
        torch.set_num_threads(threads)
    with threadpool_limits(threads):
        results = run(args, threads)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


def run(args, threads) -> dict:
    info = machine_info(threads)
    print("machine:", json.dumps(info))
    d = load_digits()
    x01 = (d.data / 16.0).astype(np.float32)
    xbin = (x01 > 0.5).astype(np.float32)
    x = xbin if args.binarize else x01
    xt = np.tile(x, (args.tile, 1))
    common = {"n_components": args.n_components, "batch_size": args.batch_size,
              "learning_rate": args.learning_rate, "n_iter": args.epochs}
    print(f"data: digits {'binarised' if args.binarize else 'in [0,1]'}, {xt.shape[0]} x "
          f"{xt.shape[1]} (tile {args.tile}); {common}; PCD-1; float32")

    def timed(make):
        wall, cpu, models = [], [], []
        make().fit(xt[:200])  # warm-up (imports, allocator)
        for r in range(args.repeats):
            model = make(args.seed + r)
            t0, c0 = time.perf_counter(), time.process_time()
            model.fit(xt)
            wall.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
            models.append(model)
        return wall, cpu, models

    w_sk, c_sk, sks = timed(lambda s=0: BernoulliRBM(random_state=s, **common))
    w_gl, c_gl, gls = timed(lambda s=0: GenlabBernoulliRBM(random_state=s, **common))
    med = statistics.median
    ratio, cpu_ratio = med(w_gl) / med(w_sk), med(c_gl) / med(c_sk)
    steps = args.epochs * -(-xt.shape[0] // args.batch_size)
    last_seed = args.seed + args.repeats - 1
    print(f"\nfit time over {args.repeats} fits (seeds {args.seed}..{last_seed}),"
          f" {steps} SGD steps each:")
    for name, w, c in (("sklearn", w_sk, c_sk), ("genlab ", w_gl, c_gl)):
        print(f"  {name} wall median {med(w):.3f}s {[f'{t:.3f}' for t in w]}; "
              f"process CPU median {med(c):.3f}s ({med(c) / steps * 1e6:.1f} us/step)")
    print(f"  ratio genlab / sklearn: wall {ratio:.2f}, CPU {cpu_ratio:.2f}  (goal <= 0.5)")

    xb_t = torch.from_numpy(xbin.astype(np.float64))

    def exact_pll(est):
        rbm = to_genlab_rbm(est.components_, est.intercept_hidden_, est.intercept_visible_)
        return pseudo_log_likelihood(rbm, xb_t, exact=True).mean().item()

    def own_pll(est):
        est.random_state = 123
        return float(est.score_samples(xbin.astype(np.float64)).mean())

    pll = {name: [exact_pll(e) for e in ests] for name, ests in (("sklearn", sks), ("genlab", gls))}
    own = {name: [own_pll(e) for e in ests] for name, ests in (("sklearn", sks), ("genlab", gls))}

    def ms(xs):
        return f"{statistics.mean(xs):.3f} +- {statistics.stdev(xs) if len(xs) > 1 else 0:.3f}"

    print("\npseudo-log-likelihood on the 1,797 binarised digits (nats/sample, higher is better;"
          " mean +- sd over the fits)")
    print(f"  exact (all units):      sklearn {ms(pll['sklearn'])}   genlab {ms(pll['genlab'])}")
    print(f"  score_samples (rs=123): sklearn {ms(own['sklearn'])}   genlab {ms(own['genlab'])}")
    results = {"machine": info, "settings": {**common, "tile": args.tile, "repeats": args.repeats,
                                             "binarize": args.binarize, "steps_per_fit": steps},
               "wall_sklearn_s": w_sk, "wall_genlab_s": w_gl, "cpu_sklearn_s": c_sk,
               "cpu_genlab_s": c_gl, "ratio_wall": ratio, "ratio_cpu": cpu_ratio,
               "pll_exact": pll, "pll_score_samples": own}
    if args.skip_accuracy:
        return results

    xtr, xte, ytr, yte = train_test_split(x, d.target, test_size=0.3, random_state=args.seed,
                                          stratify=d.target)
    print(f"\nlogistic regression, held-out accuracy ({len(xte)} test digits; C by 3-fold CV)")
    acc = {}
    acc["raw pixels"] = logreg_accuracy(xtr, ytr, xte, yte, args.seed)
    feats = {
        f"sklearn RBM-{args.n_components} (bench setting)":
            BernoulliRBM(random_state=args.seed, **common),
        f"genlab RBM-{args.n_components} (bench setting)":
            GenlabBernoulliRBM(random_state=args.seed, **common),
        f"genlab RBM-{args.n_components}, 50 epochs, lr 0.05, momentum 0.5":
            GenlabBernoulliRBM(n_components=args.n_components, batch_size=args.batch_size,
                               learning_rate=0.05, n_iter=50, momentum=0.5,
                               random_state=args.seed),
        "genlab RBM-512, 50 epochs, lr 0.05, momentum 0.5":
            GenlabBernoulliRBM(n_components=512, batch_size=args.batch_size, learning_rate=0.05,
                               n_iter=50, momentum=0.5, random_state=args.seed),
    }
    last = None
    for name, est in feats.items():
        est.fit(xtr)
        ftr, fte = est.transform(xtr), est.transform(xte)
        acc[name] = logreg_accuracy(ftr, ytr, fte, yte, args.seed)
        last = (name, ftr, fte)
    name, ftr, fte = last
    acc[name + " + raw pixels"] = logreg_accuracy(np.hstack([ftr, xtr]), ytr,
                                                  np.hstack([fte, xte]), yte, args.seed)
    for name, (a, c) in acc.items():
        print(f"  {a:.4f}  (C={c:g})  {name}")
    results["accuracy"] = {k: {"accuracy": a, "C": c} for k, (a, c) in acc.items()}
    return results


if __name__ == "__main__":
    main()
