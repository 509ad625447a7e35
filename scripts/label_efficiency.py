"""Label-efficiency study: does an unsupervised encoder pay when labels are scarce?

    # full study: scratch and every encoder given, 4 label counts x 3 seeds
    OMP_NUM_THREADS=1 .venv/bin/python scripts/label_efficiency.py \\
        --init dae=runs/pretrain_dae_brain/<stamp> --init ssl=runs/pretrain_ssl_brain/<stamp>
    # reduced (~30 min on one busy CPU thread): 40/200/1,000 labels, scratch + the first --init
    OMP_NUM_THREADS=1 .venv/bin/python scripts/label_efficiency.py --reduced --init dae=RUN
    # redraw the table and the plot from the JSON lines (no training)
    .venv/bin/python scripts/label_efficiency.py --report-only [--reduced]

Task: the recipe the classifier ships for (`recipes/lesion_brain.yaml`: 4 syndromes A/B/C/Z on
hard-mode slices, vgg_sep [16, 32, 128, 256], stride-2 stem), loaded with `--set` overrides and
trained by the shared Trainer in this process, as a user would train it.

Why this design:
- Labelled sets of 40, 200, 1,000 and 8,000 images, the same number per class and nested (the
  40 are inside the 200 ...): `data.labelled: N` (genlab.data.subset.balanced_subset over the
  first --pool train images, keyed by the seed). Balanced, so that 40 labels are 10 per syndrome
  and not, by bad luck, 4 of one; nested, so that a curve over N adds labels to one draw rather
  than comparing unrelated draws.
- Paired by seed: a seed fixes the labelled images, the 500 validation and the test images
  (the brain factory draws every split from the seed) and the order of the batches, the same for
  every initialisation, so a difference to scratch is measured on the same data; it is reported
  per seed, with the number of seeds where it is positive. Seeds differ in all of these.
- Selection on validation, report on test: the val loss is scored every budget / --eval-points
  steps, checkpoints/best.pt keeps the best, early stopping ends a run after --patience
  evaluations without a better one, and best.pt is scored once on the test split. The curve is
  kept in the JSON line; "best val step / budget" in the report shows whether the budget was
  long enough (a best step at the end of the budget means more steps could still help).
- Initialisations: `scratch` (the recipe's backbone from random weights); for each
  `--init NAME=PATH` (a run folder with export/, or a bundle) a fine-tuned row (model.mode
  finetune, encoder lr = lr x --encoder-lr-mult) and a frozen linear-probe row `NAME/probe`
  (only the latter with --probe-only NAME).
  The probe is logistic regression on the encoder's output (genlab.tools.probe: standardised
  features, C chosen on the same 500 val images), not model.mode linear_probe: it is convex and
  solved to convergence, so the row measures the features and not an SGD budget or an lr, and it
  encodes each image once instead of every step. An encoder of another architecture is used as
  it is (column "backbone"); one trained on another input size gets its own `data.size` (the
  same images, downscaled; column "input").
- `--lpft NAME` adds a row `NAME/lpft` (LP-FT, Kumar et al. 2022): the NAME row's fine-tuning
  with the head started as that logistic probe, fitted on the frozen features of the same
  labelled images (`model.head_init: probe`, C on the same val images) before the first step, so
  that fine-tuning starts where the probe row ends instead of from a random head.
- `--shrink-perturb NAME:S:P` and `--init-reset NAME:LAYERS` change how the NAME row starts:
  S x the encoder + P x a fresh initialisation (shrink and perturb), or the named layers fresh and
  only those below transferred: for plentiful labels, where a full warm start can cost accuracy.
- Budgets, in steps of batch 64 (or N when smaller): 600 / 1,200 / 3,000 / 6,000 for 40 / 200 /
  1,000 / 8,000 labels (960 / 384 / 192 / 48 epochs). On unlimited fresh images the recipe's
  scratch run passes 0.75 val accuracy only after ~1,000 steps and still improves at 9,000
  (docs/benchmarks.md); a fixed labelled set is overfitted sooner, the smaller the sooner, so the
  val-loss minimum should fall inside these budgets, and the report checks that it did. The
  first few hundred steps sit at chance (200 steps of batch 32 on 1,000 labels: val loss 1.40,
  accuracy 0.29), so early stopping waits half a budget (15 of 30 evaluations) rather than end a
  run before it has started to learn.
- `--reduced` keeps the protocol (3 seeds, 500 val images, balanced nested sets) with 40 / 200 /
  1,000 labels, 60 / 120 / 200 steps of batch 32, 500 test images and one encoder. Those budgets
  are too short for scratch to leave chance on hard mode: the reduced table checks the pipeline
  and the frozen features (probe rows), not what fine-tuning reaches; its "best step / budget"
  column says so.
- Metrics: accuracy over the recipe's classes and the lesion-vs-healthy ROC AUC (P(any lesion
  class) against healthy, `bin/auc`), which does not depend on a threshold.

One JSON line per run in --results: a run whose line is there with the same overrides is not
trained again. The report goes to --md and --png (docs/ for the full study).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shlex
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from label_efficiency_report import markdown, plot

ROOT = Path(__file__).resolve().parents[1]
OUT = Path("/tmp/label_efficiency")
# budgets: optimizer steps per label count (see the module docstring for why these)
FULL = {"labels": [40, 200, 1000, 8000], "budgets": {40: 600, 200: 1200, 1000: 3000, 8000: 6000},
        "batch_size": 64, "eval_points": 30, "patience": 15, "test_size": 2000,
        "results": OUT / "results.jsonl", "md": ROOT / "docs" / "label_efficiency.md",
        "png": ROOT / "docs" / "figures" / "label_efficiency.png"}
REDUCED = {"labels": [40, 200, 1000], "budgets": {40: 60, 200: 120, 1000: 200}, "batch_size": 32,
           "eval_points": 5, "patience": 0, "test_size": 500, "results": OUT / "reduced" / "results.jsonl",
           "md": OUT / "reduced" / "label_efficiency.md", "png": OUT / "reduced" / "label_efficiency.png"}


def fail(msg: str):
    """Bad input: one line naming the option, exit status 2 (as argparse's own errors)."""
    print(f"label_efficiency.py: error: {msg}", file=sys.stderr)
    raise SystemExit(2)


# -- what one run is --------------------------------------------------------------------------------
def parse_inits(items: list[str]) -> dict[str, Path]:
    out = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or "/" in name or name == "scratch" or name in out:
            fail(f"--init {item!r}: expected NAME=PATH with a new NAME (no '/', not 'scratch')")
        if not Path(path).exists():
            fail(f"--init {item!r}: {path} does not exist (expected a run folder or an encoder bundle)")
        out[name] = Path(path)
    return out


def steps_for(args, n: int) -> int:
    return args.budgets[n]


def overrides(args, row: str, n: int, seed: int, shapes: dict) -> list[str]:
    """The recipe overrides of row `row` (scratch, NAME or NAME/probe) at N labels, seed."""
    steps, every = steps_for(args, n), max(1, steps_for(args, n) // args.eval_points)
    out = [f"seed={seed}", f"data.train_size={args.pool}", f"data.labelled={n}",
           f"data.val_size={args.val_size}", f"data.test_size={args.test_size}",
           f"train.device={args.device}", "model.localisation=false", "log.probe_train=0"]
    if not row.endswith("/probe"):
        out += [f"train.steps={steps}", f"train.batch_size={min(args.batch_size, n)}",
                f"train.warmup_steps={min(100, steps // 10)}",
                f"train.early_stopping_patience={args.patience or 'null'}",
                "train.eval_batches=null", "train.eval_batch_size=250", "train.final_eval_best=true",
                f"log.eval_every={every}", f"log.every={every}", "log.render_every=0",
                "log.checkpoint_every=0", "log.histograms=false"]
        out += [f"train.lr={args.lr}"] if args.lr is not None else []
    out += args.set  # then what makes the row: it wins over --set
    name = row.split("/")[0]
    if name != "scratch":
        out += [f"model.init={args.inits[name]}", "model.backbone=null", "model.channels=null",
                "model.stem_stride=1"]
        if shapes[name] != shapes["scratch"]:  # the same images, at the encoder's input size
            out.append(f"data.size=[{shapes[name][0]},{shapes[name][1]}]")
        mode = "gradual" if name in args.gradual else "finetune"
        out += (["model.mode=linear_probe"] if row.endswith("/probe") else
                [f"model.mode={mode}", f"model.encoder_lr_mult={args.encoder_lr_mult}"])
        out += ["model.head_init=probe"] if row.endswith("/lpft") else []
        if name in args.shrink_perturb and not row.endswith("/probe"):
            shrink, perturb = args.shrink_perturb[name]
            out += [f"model.init_shrink={shrink}", f"model.init_perturb={perturb}"]
        if name in args.init_reset and not row.endswith("/probe"):
            out.append(f"model.init_reset=[{','.join(args.init_reset[name])}]")
    return out


def _quiet():
    return contextlib.redirect_stdout(io.StringIO())  # the init report, once per run


def train_row(args, row: str, n: int, seed: int, ov: list[str]) -> dict:
    from genlab.core.recipe import load_recipe
    from genlab.engine.trainer import Trainer

    with _quiet():
        t = Trainer(load_recipe(args.recipe, ov), out_root=args.runs,
                    tag=f"{row.replace('/', '-')}-n{n}-s{seed}", quiet=True)
        res = t.run()
    best = res["best"]
    test = best.get("test", res["test"])  # best.pt, or the final weights when they are the best
    h = t.history
    curve = [[s, v] + [dict(h.get(f"eval/{k}", [])).get(s) for k in ("acc", "bin/auc")]
             + [dict(h.get("train/loss", [])).get(s)] for s, v in h.get("eval/loss", [])]
    return {"best_step": best.get("step", res["steps"]), "steps_run": res["steps"],
            "stopped_early": res["stopped_early"], "curve": curve, "run": str(t.run_dir),
            "last": {"acc": res["test"]["acc"], "lesion_auc": res["test"].get("bin/auc")},
            "params": sum(p.numel() for p in t.model.parameters()), **_metrics(test)}


def probe_row(args, row: str, n: int, seed: int, ov: list[str]) -> dict:
    import torch

    from genlab.core.recipe import load_recipe
    from genlab.core.registry import get_dataset, get_family
    from genlab.metrics.classification import report_scalars
    from genlab.tools import probe

    rec = load_recipe(args.recipe, ov)
    torch.manual_seed(seed)
    data = get_dataset(rec.data_name)(rec.data, rec.seed, args.device)
    with _quiet():
        model = get_family(rec.family)(rec.model, data.info).to(args.device).eval()
    src = probe.ProbeSource(Path(args.inits[row.split("/")[0]]), rec, data, data.info, model.backbone,
                            "frozen encoder")
    (xtr, ytr), (xv, yv), (xt, yt) = (probe.extract(src, s, None) for s in ("train", "val", "test"))
    fit = probe.fit("logreg", xtr, ytr, xv, yv, seed=seed)
    probs = torch.from_numpy(fit.predict_proba(xt, data.info.num_classes)).float()
    scores = report_scalars(model.report(probs, torch.from_numpy(yt)))
    return {"C": fit.c, "features": int(xtr.shape[1]), **_metrics(scores)}


def _metrics(m: dict) -> dict:
    return {"acc": m["acc"], "lesion_auc": m.get("bin/auc"), "auc": m.get("auc")}


def describe_inits(args) -> tuple[dict, dict]:
    """({name: backbone text}, {name: [h, w] of its input}) for scratch and every --init."""
    from genlab.core.errors import GenlabError
    from genlab.core.recipe import load_recipe
    from genlab.core.registry import get_dataset
    from genlab.families.export import read_bundle_meta

    rec = load_recipe(args.recipe, [f"data.train_size={args.val_size}", *args.set])
    shape = list(get_dataset(rec.data_name)(rec.data, 0, "cpu").info.input_shape)
    m = rec.model
    text = {"scratch": f"{m.backbone or 'vgg_sep'} {m.channels or 'default'} stem stride {m.stem_stride}"}
    sizes = {"scratch": shape[1:]}
    for name, path in args.inits.items():
        try:
            meta, _ = read_bundle_meta(path)
        except GenlabError as e:
            fail(f"--init {name}={path}: {e}")
        inner = meta.get("classifier", {}).get("backbone")
        if meta["builder"] == "classifier_backbone":  # ssl / distill: the classifier's own network
            c = meta.get("config", {})
            inner = f"{c.get('name')} {c.get('channels') or 'default'} stem stride {c.get('stem_stride', 1)}"
        text[name] = (f"{meta.get('family')} encoder `{meta['builder']}`" + (f" ({inner})" if inner else "")
                      + f" -> {meta.get('out_features')}")
        bshape = [int(s) for s in meta.get("input_shape", shape)]
        if bshape[0] != shape[0]:
            fail(f"--init {name}: the encoder takes {bshape[0]} channels, the data has {shape[0]}")
        sizes[name] = bshape[1:]
    return text, sizes


# -- the loop ---------------------------------------------------------------------------------------
def load_results(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.is_file() else []


def latest(rows: list[dict]) -> list[dict]:
    return list({(r["row"], r["n"], r["seed"]): r for r in rows}.values())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--init", action="append", default=[], metavar="NAME=PATH",
                   help="a pretrained encoder (run folder with export/, or a bundle); repeatable")
    p.add_argument("--reduced", action="store_true", help="labels 40/200/1,000, scratch + the first "
                   "--init, shorter budgets, outputs under /tmp/label_efficiency/reduced")
    p.add_argument("--recipe", type=Path, default=ROOT / "recipes" / "lesion_brain.yaml")
    p.add_argument("--labels", type=int, nargs="+", help="labelled images per run (default 40 200 1000 8000)")
    p.add_argument("--steps", type=int, nargs="+", help="step budget per label count, in the order of "
                   "--labels, or one for all (default: 600 1200 3000 6000; reduced 60 120 200)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--no-probe", action="store_true", help="no frozen logistic-probe rows")
    p.add_argument("--batch-size", type=int, help="or N when smaller (default 64; reduced 32)")
    p.add_argument("--lr", type=float, default=None, help="default: the recipe's train.lr")
    p.add_argument("--encoder-lr-mult", type=float, default=0.1)
    p.add_argument("--gradual", nargs="+", default=[], metavar="NAME",
                   help="these --init rows fine-tune with model.mode gradual (the head first, then the "
                   "backbone's stages top-down every model.unfreeze_every steps) instead of finetune; "
                   "give the same bundle a second NAME to have both rows")
    p.add_argument("--lpft", nargs="+", default=[], metavar="NAME",
                   help="these --init encoders get one more row, NAME/lpft: the NAME row's fine-tuning "
                   "started from the frozen logistic probe as its head (model.head_init probe, LP-FT)")
    p.add_argument("--shrink-perturb", action="append", default=[], metavar="NAME:SHRINK:PERTURB",
                   help="the NAME row fine-tunes from SHRINK x the encoder + PERTURB x a fresh "
                   "initialisation (model.init_shrink / init_perturb; not with --lpft NAME)")
    p.add_argument("--init-reset", action="append", default=[], metavar="NAME:LAYER[,LAYER]",
                   help="the NAME row starts these encoder layers from fresh weights and transfers "
                   "only the others (model.init_reset, e.g. distill:features.3; not with --lpft NAME)")
    p.add_argument("--probe-only", nargs="+", default=[], metavar="NAME",
                   help="these --init encoders get only their frozen-probe row NAME/probe (an encoder "
                   "that is not a backbone to fine-tune, e.g. the atlas's residual statistics)")
    p.add_argument("--only", nargs="+", default=[], metavar="ROW",
                   help="run only these rows of the grid (e.g. scratch dae/lpft atlas/probe): an "
                   "expensive label count for the rows that matter; the report still reads every row")
    p.add_argument("--eval-points", type=int, help="val evaluations per budget (30; reduced 5)")
    p.add_argument("--patience", type=int, help="early stopping after this many evaluations without "
                   "a better val loss; 0: none (15; reduced 0)")
    p.add_argument("--pool", type=int, default=100_000, help="train images the labelled sets are drawn from")
    p.add_argument("--val-size", type=int, default=500)
    p.add_argument("--test-size", type=int, help="(2,000; reduced 500)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="an extra recipe override for every run")
    p.add_argument("--runs", type=Path, default=Path("/tmp/label_efficiency/runs"))
    p.add_argument("--results", type=Path)
    p.add_argument("--md", type=Path)
    p.add_argument("--png", type=Path)
    p.add_argument("--machine", default="a shared 2-core VM, one thread per run",
                   help="what the report says the runs ran on")
    p.add_argument("--notes", type=Path, help="a Markdown file appended to the report (what else was tried)")
    p.add_argument("--report-only", action="store_true", help="only redraw from --results")
    args = p.parse_args(argv)
    preset = REDUCED if args.reduced else FULL
    for key, value in preset.items():  # what was not given
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    if args.steps is not None and len(args.steps) not in (1, len(args.labels)):
        fail(f"--steps: expected 1 or {len(args.labels)} budgets (one per --labels), got {len(args.steps)}")
    if args.steps is not None:
        args.budgets = dict(zip(args.labels, args.steps * len(args.labels) if len(args.steps) == 1
                                else args.steps))
    if any(n not in args.budgets for n in args.labels) and not args.report_only:
        fail(f"--labels {' '.join(map(str, args.labels))}: no budget for "
             f"{[n for n in args.labels if n not in args.budgets]}; give --steps")
    args.labels = sorted(args.labels)
    args.inits = parse_inits(args.init[:1] if args.reduced else args.init)
    if set(args.gradual) - set(args.inits):
        fail(f"--gradual {' '.join(sorted(set(args.gradual) - set(args.inits)))}: not an --init NAME "
             f"(known: {', '.join(args.inits) or 'none'})")

    sp = {}
    for item in args.shrink_perturb:
        name, *nums = item.split(":")
        try:
            shrink, perturb = (float(v) for v in nums)
        except ValueError:
            fail(f"--shrink-perturb {item!r}: expected NAME:SHRINK:PERTURB, e.g. distill:0.4:0.1")
        if name not in args.inits or name in args.lpft:
            fail(f"--shrink-perturb {item!r}: {name!r} is not an --init NAME, or also in --lpft "
                 f"(a probe-fitted head needs the encoder's own batch-norm statistics)")
        sp[name] = (shrink, perturb)
    args.shrink_perturb = sp
    resets = {}
    for item in args.init_reset:
        name, _, layers = item.partition(":")
        if name not in args.inits or name in args.lpft or not layers:
            fail(f"--init-reset {item!r}: expected NAME:LAYER[,LAYER] with an --init NAME that is "
                 f"not in --lpft (a probe-fitted head needs the encoder's own top layers)")
        resets[name] = layers.split(",")
    args.init_reset = resets
    if set(args.probe_only) - set(args.inits):
        fail(f"--probe-only {' '.join(sorted(set(args.probe_only) - set(args.inits)))}: not an --init "
             f"NAME (known: {', '.join(args.inits) or 'none'})")
    if args.no_probe and args.probe_only:
        fail("--probe-only and --no-probe: the first keeps only probe rows, the second drops them")
    if set(args.lpft) - set(args.inits):
        fail(f"--lpft {' '.join(sorted(set(args.lpft) - set(args.inits)))}: not an --init NAME "
             f"(known: {', '.join(args.inits) or 'none'})")

    import torch

    torch.set_num_threads(1)
    sys.path.insert(0, str(ROOT))
    from genlab.core import registry
    from genlab.core.errors import GenlabError
    from genlab.core.recipe import load_recipe

    registry.load_all()
    rows = load_results(args.results)
    command = " ".join(["OMP_NUM_THREADS=1 .venv/bin/python scripts/label_efficiency.py",
                        *map(shlex.quote, sys.argv[1:] if argv is None else argv)])
    if not args.report_only:
        text, sizes = describe_inits(args)
        grid = ["scratch"] + [r for n in args.inits for r in (
            [f"{n}/probe"] if n in args.probe_only else
            ([n] if args.no_probe else [n, f"{n}/probe"]) + ([f"{n}/lpft"] if n in args.lpft else []))]
        if set(args.only) - set(grid):
            fail(f"--only {' '.join(sorted(set(args.only) - set(grid)))}: not a row of this study "
                 f"(rows: {', '.join(grid)})")
        grid = [r for r in grid if r in args.only] if args.only else grid
        todo = [(row, n, s) for n in args.labels for s in args.seeds for row in grid]
        want = {t: overrides(args, *t, sizes) for t in todo}  # a line with other overrides is stale
        rows = [r for r in rows if want.get((r["row"], r["n"], r["seed"])) == r["overrides"]]
        todo = [t for t in todo if t not in {(r["row"], r["n"], r["seed"]) for r in rows}]
        print(f"{len(todo)} runs to do ({len(rows)} done in {args.results})", flush=True)
        args.results.parent.mkdir(parents=True, exist_ok=True)
        for j, (row, n, seed) in enumerate(todo, 1):
            ov, t0 = overrides(args, row, n, seed, sizes), time.perf_counter()
            try:
                res = (probe_row if row.endswith("/probe") else train_row)(args, row, n, seed, ov)
            except GenlabError as e:  # bad input (e.g. a pool too small for N): one line
                fail(f"{row} N {n} seed {seed}: {e}")
            name = row.split("/")[0]
            r = {"row": row, "n": n, "seed": seed, "backbone": text[name],
                 "input": "x".join(map(str, sizes[name])), **res,
                 "seconds": time.perf_counter() - t0, "overrides": ov, "command": command}
            if not row.endswith("/probe"):
                r.update(budget=steps_for(args, n), batch=min(args.batch_size, n),
                         eval_every=max(1, steps_for(args, n) // args.eval_points), patience=args.patience)
            rows.append(r)
            with args.results.open("a") as f:
                f.write(json.dumps(r) + "\n")
            print(f"[{j}/{len(todo)}] {row:<14} N {n:>5} seed {seed}: acc {r['acc']:.3f} lesion AUC "
                  f"{r['lesion_auc'] or float('nan'):.3f} best step "
                  f"{r.get('best_step', '-')}/{r.get('budget', '-')} "
                  f"({r['seconds']:.0f} s)", flush=True)
        rows = latest(rows)
    else:
        rows = latest(rows)
    if not rows:
        print(f"no results in {args.results}")
        return 1
    args.md.parent.mkdir(parents=True, exist_ok=True)
    figure = os.path.relpath(args.png.resolve(), args.md.parent.resolve())
    notes = "\n" + args.notes.read_text().rstrip() + "\n" if args.notes else ""
    args.md.write_text(markdown(rows, args.recipe.name, args.machine, figure) + notes + "\n")
    classes = getattr(load_recipe(args.recipe).data, "classes", None)
    title = f"{args.recipe.name}: mean ± sd over seeds; dashed: frozen encoder, logistic probe"
    title += "; dash-dot: LP-FT" if any(r["row"].endswith("/lpft") for r in rows) else ""
    plot(rows, args.png, title, {"syndrome": 0.25, "lesion": 0.5}.get(classes))
    print(f"wrote {args.md} and {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
