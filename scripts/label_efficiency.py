"""Label-efficiency study: what is an unsupervised encoder worth when labels are scarce?

    # encoders already trained (the run folders of the three recipes):
    OMP_NUM_THREADS=1 .venv/bin/python scripts/label_efficiency.py \\
        --dae runs/dae_brain/<stamp> --gan runs/gan_brain/<stamp> --dbn runs/rbm_brain/<stamp>
    # or let the script train them first with the shipped recipes, as they are:
    OMP_NUM_THREADS=1 .venv/bin/python scripts/label_efficiency.py --train-encoders
    # redraw the table and the plot from the saved results (no training):
    .venv/bin/python scripts/label_efficiency.py --report-only

Every classifier is built the way a user builds one: `recipes/lesion_brain_binary.yaml` (lesion
vs healthy on hard-mode slices; `--recipe recipes/lesion_brain.yaml` for the 4 syndromes) loaded
with `--set` overrides through genlab.core.recipe.load_recipe and trained by the shared Trainer,
in this process. `scratch` is the recipe's own backbone (vgg_sep, stride-2 stem) from random
weights; the other initialisations are `--set model.init=<run>/export` with the exported encoder
as the backbone and a new linear head:

    dae      recipes/dae_brain.yaml  conv DAE encoder (3 stride-2 convs, dense 256-number code)
    dbn      recipes/dbn_brain.yaml (or rbm_brain.yaml when there is none): the RBM/DBN
             sigmoid stack (dense, 12,288 pixels -> hidden units)
    gan      recipes/gan_brain.yaml  discriminator trunk (4 stride-2 convs, dense 128 features)
    dae0     (a control, only with --inits ... dae0 --dae0 RUN) the DAE encoder architecture without
             its pretraining: a dae_brain run stopped after one step
             (`genlab train recipes/dae_brain.yaml --set train.steps=1 --set train.warmup_steps=0`)

Why this design. The budget is ~1 h of one CPU thread for the whole grid (4 label counts x 4
initialisations x 3 seeds = 48 runs, ~1 min each). The full-data scratch recipes need 1,200
(lesion) and 3,000+ (4 syndromes) steps of batch 64 to converge on hard mode, so no run here
reaches those numbers; the binary task is the one where a few hundred steps already separate
the classes, and its ROC AUC is threshold-free, which matters with 75 % lesion images. Frozen
features of the three encoders are weak on hard mode (`genlab probe`, logistic regression on
2,000 labels: see docs/label_efficiency.md), so the pretrained encoders are fine-tuned with the
project's default encoder lr multiplier (0.1) rather than probed.

Protocol (the same for every initialisation):
- the labelled training set is the first N images of the brain factory's train split
  (`--set data.train_size=N`): N = 0.5 %, 2 %, 10 % and 100 % of a --full-train images split,
  nested (the first 40 are inside the first 160 ...), a class-blind random draw (the factory's
  labels are a hash of the index);
- a fixed number of optimizer steps per N (--steps: more epochs for small N), batch 32, the
  recipe's AdamW, lr and balanced class weights with a cosine schedule, no early stopping and no
  checkpoint selection (the validation labels would be more labels than the smallest training
  sets have), so the weights at the last step are scored, on the whole test split;
- pretrained encoders are fine-tuned (`model.mode=finetune`, encoder lr = head lr x
  --encoder-lr-mult); `--probe-mode linear_probe` freezes them instead;
- seeds 0, 1, 2 ... change the recipe seed, i.e. the weight init, the batch order *and* the
  images (train, and test too): a seed is one draw of the whole experiment, and the same seed
  gives every initialisation the same labelled images and the same test images, so the
  differences between initialisations are paired by seed.

Results go to --results (one JSON line per run: resumable, a finished run is not re-trained), the
table to docs/label_efficiency.md and the plot to docs/figures/label_efficiency.png.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FRACTIONS = (0.005, 0.02, 0.10, 1.0)
INITS = ("scratch", "dae", "dbn", "gan", "dae0")
LABELS = {"scratch": "scratch (vgg_sep)", "dae": "DAE encoder", "dbn": "DBN/RBM encoder",
          "gan": "GAN discriminator trunk", "dae0": "DAE architecture, untrained"}


def steps_for(args, n: int) -> int:
    """Optimizer steps for N labelled images: --steps[i] for the i-th smallest N."""
    ns = label_counts(args)
    return args.steps[min(ns.index(n), len(args.steps) - 1)]


def label_counts(args) -> list[int]:
    return sorted({max(1, round(f * args.full_train)) for f in args.fractions})


def overrides(args, init: str, n: int, seed: int, encoders: dict[str, Path]) -> list[str]:
    steps = steps_for(args, n)
    batch = min(args.batch_size, n)
    out = [f"seed={seed}", f"data.train_size={n}", f"data.val_size={args.val_size}",
           f"data.test_size={args.test_size}", f"train.steps={steps}", f"train.batch_size={batch}",
           f"train.warmup_steps={min(50, steps // 10)}",
           "train.early_stopping_patience=null", "train.eval_batches=null", "train.device=cpu",
           "log.eval_every=0", "log.render_every=0", "log.checkpoint_every=0", "log.histograms=false",
           f"log.every={max(1, steps)}", "model.localisation=false"]
    if args.lr is not None:
        out.append(f"train.lr={args.lr}")
    if init != "scratch":
        out += [f"model.init={encoders[init]}", "model.backbone=null", "model.channels=null",
                "model.stem_stride=1", f"model.mode={args.probe_mode}",
                f"model.encoder_lr_mult={args.encoder_lr_mult}"]
    return out


def train_encoders(out_root: Path) -> dict[str, Path]:
    from genlab.core.recipe import load_recipe
    from genlab.engine.trainer import Trainer

    dbn = ROOT / "recipes" / "dbn_brain.yaml"
    recipes = {"dae": ROOT / "recipes" / "dae_brain.yaml", "gan": ROOT / "recipes" / "gan_brain.yaml",
               "dbn": dbn if dbn.is_file() else ROOT / "recipes" / "rbm_brain.yaml"}
    runs = {}
    for name, path in recipes.items():
        t0 = time.perf_counter()
        t = Trainer(load_recipe(path), out_root=out_root, quiet=True)
        t.run()
        runs[name] = t.run_dir
        print(f"encoder {name}: {path.name} -> {t.run_dir} ({time.perf_counter() - t0:.0f} s)", flush=True)
    return runs


def run_one(args, init: str, n: int, seed: int, encoders: dict[str, Path]) -> dict:
    from genlab.core.recipe import load_recipe
    from genlab.engine.trainer import Trainer

    ov = overrides(args, init, n, seed, encoders)
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # the init report, once per run
        rec = load_recipe(args.recipe, ov)
        t = Trainer(rec, out_root=args.runs, tag=f"{init}-n{n}-s{seed}", quiet=True)
        res = t.run()
    test = res["test"]
    return {"init": init, "n": n, "seed": seed, "acc": test["acc"], "auc": test["auc"],
            "bin_auc": test.get("bin/auc"), "steps": res["steps"], "seconds": time.perf_counter() - t0,
            "run": str(t.run_dir), "overrides": ov}


def _recipe(path: Path):
    from genlab.core.recipe import load_recipe

    return load_recipe(path)


def recipe_lr(path: Path) -> float:
    return _recipe(path).train.lr


def _classes(path: Path) -> str:
    return getattr(_recipe(path).data, "classes", "syndrome")


def task_text(path: Path) -> str:
    mode = getattr(_recipe(path).data, "mode", "hard")
    if _classes(path) == "lesion":
        return (f"lesion vs healthy on {mode}-mode synthetic brain slices (`{path.name}`); 75 % of "
                "the images have a lesion, so always answering 'lesion' scores 0.75 accuracy; chance "
                "AUC is 0.5 (for two classes the macro one-vs-rest AUC is the ordinary ROC AUC).")
    return (f"the 4 syndromes (A, B, C, healthy Z) on {mode}-mode synthetic brain slices "
            f"(`{path.name}`); chance is 0.25 accuracy and 0.5 macro AUC.")


def load_results(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _ms(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarise(rows: list[dict]) -> dict:
    """{(init, n): {"acc": (mean, sd), "auc": ..., "k": seeds}} and paired differences to scratch."""
    cells, by_seed = {}, {}
    for r in rows:
        by_seed.setdefault((r["init"], r["n"]), {})[r["seed"]] = r
    for key, d in by_seed.items():
        cells[key] = {m: _ms([v[m] for v in d.values()]) for m in ("acc", "auc")}
        cells[key]["k"] = len(d)
        cells[key]["seconds"] = sum(v["seconds"] for v in d.values())
    diffs = {}
    for (init, n), d in by_seed.items():
        base = by_seed.get(("scratch", n), {})
        common = sorted(set(d) & set(base))
        if init != "scratch" and common:
            diffs[(init, n)] = {m: _ms([d[s][m] - base[s][m] for s in common]) for m in ("acc", "auc")}
            diffs[(init, n)]["k"] = len(common)
    return {"cells": cells, "diffs": diffs}


def plot(rows: list[dict], path: Path, title: str, acc_baseline: tuple[float, str]) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    s = summarise(rows)["cells"]
    fig = Figure(figsize=(10, 4), dpi=110)
    FigureCanvasAgg(fig)
    for ax, metric, name, (chance, what) in (
            (fig.add_subplot(1, 2, 1), "acc", "test accuracy", acc_baseline),
            (fig.add_subplot(1, 2, 2), "auc", "test ROC AUC (macro one-vs-rest)", (0.5, "chance"))):
        for init in INITS:
            ns = sorted(n for (i, n) in s if i == init)
            if not ns:
                continue
            mean = [s[(init, n)][metric][0] for n in ns]
            sd = [s[(init, n)][metric][1] for n in ns]
            ax.errorbar(ns, mean, yerr=sd, marker="o", capsize=3, label=LABELS[init])
        ax.axhline(chance, color="grey", lw=0.8, ls=":", label=what)
        ax.set_xscale("log")
        ax.set_xlabel("labelled training images")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    fig.axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


def markdown(rows: list[dict], args, encoders: dict[str, str], command: str) -> str:
    summ = summarise(rows)
    cells, diffs = summ["cells"], summ["diffs"]
    ns = sorted({n for (_, n) in cells})
    inits = [i for i in INITS if any((i, n) in cells for n in ns)]
    full = args.full_train
    k = max((c["k"] for c in cells.values()), default=0)
    total = sum(r["seconds"] for r in rows)

    def cell(init, n, m):
        c = cells.get((init, n))
        if c is None:
            return "–"
        return f"{c[m][0]:.3f} ± {c[m][1]:.3f}" + (f" ({c['k']} seeds)" if c["k"] < k else "")

    lines = [
        "# Label efficiency: what pretraining is worth on the lesion classifier",
        "",
        (f"Generated by `scripts/label_efficiency.py` ({len(rows)} training runs, "
         f"{total / 60:.0f} min wall-clock on one thread each, one run at a time, on a shared and "
         "busy 2-core VM). Command:"),
        "",
        f"    {command}",
        "",
        f"**Task.** {task_text(args.recipe)}",
        "",
        "**Design.** Labelled training set: the first N images of the train split, N = "
        + ", ".join(f"{n:,} ({n / full:.1%})" for n in ns)
        + f" of a {full:,}-image split (nested, class-blind). Each cell is the mean ± sample standard "
        f"deviation over {k} seeds; a seed changes the weight init, the batch order and the images "
        "(training and test), and is shared by all initialisations, so differences are paired. "
        f"Every run: the recipe's optimizer, lr {args.lr or recipe_lr(args.recipe):g}, cosine schedule, "
        f"batch {args.batch_size} (or N when smaller), a fixed step count per N (below), no early stopping, "
        f"last weights scored on the whole {args.test_size:,}-image test split. "
        f"Pretrained encoders: `model.mode={args.probe_mode}`"
        + (f", encoder lr × {args.encoder_lr_mult:g}" if args.probe_mode != "linear_probe" else "")
        + "; scratch: the recipe's vgg_sep backbone (stride-2 stem) from random weights.",
        "",
        "**Encoders** (trained with the recipes unchanged; each run folder keeps its exact recipe.yaml):",
        "",
    ]
    for name, run in encoders.items():
        lines.append(f"- {LABELS[name]}: `{run}`")
    steps = {n: steps_for(args, n) for n in ns}
    lines += ["", "Steps per label count: " + ", ".join(f"N {n:,}: {s}" for n, s in steps.items()) + ".",
              "", "## Test accuracy", "",
              "| labelled images | " + " | ".join(LABELS[i] for i in inits) + " |",
              "|---:|" + "---:|" * len(inits)]
    for n in ns:
        lines.append(f"| {n:,} ({n / full:.1%}) | " + " | ".join(cell(i, n, "acc") for i in inits) + " |")
    lines += ["", "## Test ROC AUC (macro one-vs-rest)", "",
              "| labelled images | " + " | ".join(LABELS[i] for i in inits) + " |",
              "|---:|" + "---:|" * len(inits)]
    for n in ns:
        lines.append(f"| {n:,} ({n / full:.1%}) | " + " | ".join(cell(i, n, "auc") for i in inits) + " |")
    lines += ["", "## Paired difference to scratch (same seed: same images)", "",
              "| labelled images | "
              + " | ".join(f"{LABELS[i]}: Δacc / ΔAUC" for i in inits if i != "scratch")
              + " |", "|---:|" + "---:|" * (len(inits) - 1)]
    for n in ns:
        row = []
        for i in inits:
            if i == "scratch":
                continue
            d = diffs.get((i, n))
            row.append("–" if d is None else f"{d['acc'][0]:+.3f} ± {d['acc'][1]:.3f} / "
                                             f"{d['auc'][0]:+.3f} ± {d['auc'][1]:.3f}")
        lines.append(f"| {n:,} | " + " | ".join(row) + " |")
    lines += ["", ("![accuracy and AUC against the number of labelled images]"
                  "(figures/label_efficiency.png)"), ""]
    if ns and ("scratch", ns[0]) in cells:
        n0 = ns[0]
        pre = [i for i in inits if i != "scratch" and (i, n0) in cells]
        if pre:
            lines += ["## Verdict at the smallest label count", ""]
            for m, what in (("auc", "ROC AUC"), ("acc", "accuracy")):
                best = max(pre, key=lambda i, m=m: cells[(i, n0)][m][0])
                b, sc = cells[(best, n0)][m], cells[("scratch", n0)][m]
                margin, spread = b[0] - sc[0], max(b[1], sc[1])
                d = diffs.get((best, n0))
                verdict = "beats" if margin > spread else "does not beat"
                lines.append(
                    f"- **{what}**: at N = {n0:,} the best pretrained initialisation is {LABELS[best]}, "
                    f"{b[0]:.3f} ± {b[1]:.3f} against scratch {sc[0]:.3f} ± {sc[1]:.3f}: a margin of "
                    f"{margin:+.3f} against a seed-to-seed spread (the larger sd of the two) of "
                    f"{spread:.3f}, "
                    f"so it **{verdict} scratch by more than the spread**"
                    + (f" (paired over {d['k']} seeds: {d[m][0]:+.3f} ± {d[m][1]:.3f})." if d else "."))
            lines.append("")
    if args.notes and Path(args.notes).is_file():
        lines += [Path(args.notes).read_text().rstrip(), ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dae", type=Path, help="run folder of recipes/dae_brain.yaml (with export/)")
    p.add_argument("--gan", type=Path, help="run folder of recipes/gan_brain.yaml")
    p.add_argument("--dbn", type=Path, help="run folder of recipes/dbn_brain.yaml or rbm_brain.yaml")
    p.add_argument("--dae0", type=Path, help="control: a dae_brain run stopped after 1 step")
    p.add_argument("--train-encoders", action="store_true",
                   help="train the three encoders first with the shipped recipes (~15 min on 1 thread)")
    p.add_argument("--recipe", type=Path, default=ROOT / "recipes" / "lesion_brain_binary.yaml")
    p.add_argument("--full-train", type=int, default=8000, help="images in the 100 %% training split")
    p.add_argument("--fractions", type=float, nargs="+", default=list(FRACTIONS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--inits", nargs="+", default=list(INITS[:4]), choices=INITS)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, nargs="+", default=[150, 250, 350, 400],
                   help="optimizer steps for each label count, smallest N first")
    p.add_argument("--lr", type=float, default=None, help="head lr (default: the recipe's train.lr)")
    p.add_argument("--probe-mode", default="finetune", choices=["finetune", "linear_probe", "gradual"])
    p.add_argument("--encoder-lr-mult", type=float, default=0.1)
    p.add_argument("--val-size", type=int, default=32, help="only the end-of-run val line uses it")
    p.add_argument("--test-size", type=int, default=1000)
    p.add_argument("--runs", type=Path, default=Path("/tmp/label_efficiency/runs"))
    p.add_argument("--results", type=Path, default=Path("/tmp/label_efficiency/results.jsonl"))
    p.add_argument("--md", type=Path, default=ROOT / "docs" / "label_efficiency.md")
    p.add_argument("--png", type=Path, default=ROOT / "docs" / "figures" / "label_efficiency.png")
    p.add_argument("--notes", type=Path, default=None, help="a Markdown file appended to the report")
    p.add_argument("--report-only", action="store_true", help="only redraw from --results")
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    sys.path.insert(0, str(ROOT))
    from genlab.core import registry

    registry.load_all()
    encoders: dict[str, Path] = {}
    if args.train_encoders and not args.report_only:
        encoders = train_encoders(args.runs.parent / "encoders")
    for name in ("dae", "dbn", "gan", "dae0"):
        if getattr(args, name) is not None:
            encoders[name] = getattr(args, name)
    inits = [i for i in args.inits if i == "scratch" or i in encoders]
    missing = [i for i in args.inits if i not in inits]
    if missing and not args.report_only:
        p.error(f"no encoder run for {', '.join(missing)}: give --{' --'.join(missing)} or --train-encoders")
    ns = label_counts(args)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    rows = load_results(args.results)
    done = {(r["init"], r["n"], r["seed"]) for r in rows}
    if not args.report_only:
        todo = [(i, n, s) for n in ns for s in args.seeds for i in inits if (i, n, s) not in done]
        print(f"{len(todo)} runs to do ({len(done)} already in {args.results})", flush=True)
        for j, (init, n, seed) in enumerate(todo, 1):
            r = run_one(args, init, n, seed, encoders)
            rows.append(r)
            with args.results.open("a") as f:
                f.write(json.dumps(r) + "\n")
            print(f"[{j}/{len(todo)}] {init:<8} N {n:>6} seed {seed}: acc {r['acc']:.3f} auc {r['auc']:.3f} "
                  f"({r['steps']} steps, {r['seconds']:.0f} s)", flush=True)
    rows = [r for r in rows if r["n"] in ns and r["seed"] in args.seeds and r["init"] in args.inits]
    if not rows:
        print("no results yet")
        return 1
    enc_used = {}
    for r in rows:
        for o in r["overrides"]:
            if o.startswith("model.init="):
                enc_used[r["init"]] = o.split("=", 1)[1]
    cmd = "OMP_NUM_THREADS=1 .venv/bin/python scripts/label_efficiency.py " + " ".join(
        f"--{k} {v}" for k, v in sorted(enc_used.items()))
    defaults = p.parse_args([])
    for key in ("recipe", "full_train", "fractions", "seeds", "inits", "batch_size", "steps", "lr",
                "probe_mode", "encoder_lr_mult", "test_size"):
        v = getattr(args, key)
        if v != getattr(defaults, key):
            v = " ".join(map(str, v)) if isinstance(v, list) else v
            cmd += f" --{key.replace('_', '-')} {v}"
    args.md.parent.mkdir(parents=True, exist_ok=True)
    args.md.write_text(markdown(rows, args, enc_used, cmd) + "\n")
    task = "lesion vs healthy" if _classes(args.recipe) == "lesion" else "4 syndromes"
    mode = getattr(_recipe(args.recipe).data, "mode", "")
    plot(rows, args.png, f"{args.recipe.name}: {task}, {mode} mode; pretrained: {args.probe_mode}"
                         + (f" (encoder lr x {args.encoder_lr_mult:g})"
                            if args.probe_mode != "linear_probe" else "")
                         + f"; mean ± sd over {len(args.seeds)} seeds",
         (0.75, "always 'lesion'") if _classes(args.recipe) == "lesion" else (0.25, "chance"))
    print(f"wrote {args.md} and {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
