"""Augmentation study: do a class-conditional GAN's samples help a classifier with 1,000 labels?

    # 1. one conditional GAN per seed, trained on that seed's 1,000 labelled images
    for s in 0 1 2; do OMP_NUM_THREADS=1 .venv/bin/genlab train recipes/cgan_brain.yaml \\
        --set seed=$s --set data.labelled=1000 --set train.steps=2500 --tag l1000_s$s; done
    # 2. per seed, the classifier on the 1,000 real images alone and on them plus 2,000 samples
    OMP_NUM_THREADS=1 .venv/bin/python scripts/augmentation_study.py \\
        --gan 0=runs/cgan_brain/<stamp>-l1000_s0 --gan 1=... --gan 2=...
    # redraw the report from the JSON lines (no training)
    .venv/bin/python scripts/augmentation_study.py --report-only

Design:
- Paired by seed. A seed fixes the 1,000 class-balanced labelled images (`data.labelled`, picked
  by the seed from the train split), the real val and test images and the batch order. The GAN of
  seed S must have been trained with seed S on `data.labelled` = --labels (checked): its class
  labels are those same 1,000 images'. The rest of the train split enters unlabelled, through the
  frozen atlas its generator draws the anatomy from (recipes/pretrain_atlas_brain.yaml: no labels).
- The two classifiers of a seed are the CAS measurement's (genlab.tools.cas: the lesion recipe's
  backbone, a fixed budget of --steps, best.pt on the real val loss, scored once on the real test
  images) and differ only in their training images: the real ones, or the real ones followed by
  --generated samples of the GAN's EMA generator (--checkpoint, labelled by the class they were
  drawn for, class-balanced; genlab.tools.augmentation).
- Reported: test accuracy, lesion-vs-healthy AUC and per-class recall of both, the paired gain per
  seed and its mean and standard deviation over seeds, and how often the samples' class is the one
  the lesion judge sees in them (--judge; agreement) to read the gain against.

One JSON line per classifier in --results; a line with the same settings is not trained again.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "augmentation_results.jsonl"
REPORT = ROOT / "docs" / "augmentation_study.md"


def fail(msg: str):
    """Bad input: one line naming the option, exit status 2 (as argparse's own errors)."""
    print(f"augmentation_study.py: error: {msg}", file=sys.stderr)
    raise SystemExit(2)


def parse_gans(items: list[str]) -> dict[int, Path]:
    out = {}
    for item in items:
        seed, sep, path = item.partition("=")
        if not sep or not seed.isdigit() or int(seed) in out:
            fail(f"--gan {item!r}: expected SEED=RUN_FOLDER with a new integer SEED")
        if not Path(path).is_dir():
            fail(f"--gan {item!r}: {path} is not a folder (expected a conditional GAN run)")
        out[int(seed)] = Path(path)
    return out


def load_rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def settings_of(args, seed: int):
    from genlab.tools.cas import CASSettings

    return CASSettings(recipe=args.recipe, n_train=args.labels, steps=args.steps,
                       batch_size=args.batch_size, seed=seed, evals=args.evals, sets=list(args.set),
                       device=args.device)


def gan_for_seed(seed: int, run_dir: Path, args):
    """The GAN run of `seed`, checked to have learned from the seed's labelled images."""
    from genlab.tools.cas import load_conditional_gan

    run = load_conditional_gan(run_dir, args.checkpoint)
    labelled, gan_seed = run.recipe.to_dict()["data"].get("labelled"), run.recipe.seed
    if labelled != args.labels or gan_seed != seed:
        fail(f"--gan {seed}={run_dir}: trained with seed {gan_seed} on data.labelled={labelled}; the "
             f"study pairs it with the {args.labels} labelled images of seed {seed}: train it with "
             f"--set seed={seed} --set data.labelled={args.labels}")
    return run


def run_seed(seed: int, run_dir: Path, args, rows: list[dict]) -> list[dict]:
    """The real-only and augmented classifiers of one seed (those not in `rows` yet)."""
    from genlab.tools import augmentation, cas

    run = gan_for_seed(seed, run_dir, args)
    real_data = run.recipe.to_dict()["data"]
    real_data.pop("labelled")  # the classifier's own labelled images: data.labelled of the recipe
    gen_dir = run.run_dir / "augment" / f"generator-{run.step}"
    run.model.export_generator(gen_dir)
    gen_source = {"name": "generated", "generator": str(gen_dir.resolve()),
                  "block": run.recipe.train.batch_size}
    s = settings_of(args, seed)
    real_key = cas.recipe_key(cas.real_recipe(s, real_data))
    real = next((r["scores"] for r in rows if r["kind"] == "real" and r["scores"]["key"] == real_key), None)
    todo = [] if args.real_only else [n for n in args.generated
            if not any(r["kind"] == "augmented" and r["gan"] == str(run.run_dir) and r["gan_step"] == run.step
                       and r["scores"]["key"] == cas.recipe_key(augmentation.augmented_recipe(
                           s, real_data, gen_source, n)) for r in rows)]
    say = (lambda m: print(f"[seed {seed}] {m}", flush=True))
    res = augmentation.paired_runs(s, real_data, gen_source, todo, args.out, real=real,
                                   train_real=not args.augmented_only, say=say)
    new = [] if real is not None or res["real"] is None else [
        {"kind": "real", "seed": seed, "generated": 0, "scores": res["real"]}]
    agree = sample_agreement(args, gen_source, real_data, seed, max(todo)) if todo else None
    for n, scores in res["augmented"].items():
        new.append({"kind": "augmented", "seed": seed, "generated": n, "gan": str(run.run_dir),
                    "gan_step": run.step, "checkpoint": args.checkpoint, "agreement": agree,
                    "scores": scores})
    return new


def sample_agreement(args, gen_source: dict, real_data: dict, seed: int, n: int) -> dict | None:
    """How often the lesion judge sees, in the first `n` samples, the class they were drawn for."""
    from genlab.core.schema import build
    from genlab.data.generated import GeneratedConfig, GeneratedData
    from genlab.tools import cas

    if args.judge is None:
        return None
    cfg = build(GeneratedConfig, {**{k: v for k, v in gen_source.items() if k != "name"},
                                  "real": real_data, "train_size": n}, "data")
    return cas.agreement(args.judge, GeneratedData(cfg, seed))


def _ms(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:+.3f}" if values else "–"
    return f"{statistics.mean(values):+.3f} ± {statistics.stdev(values):.3f}"


def report(rows: list[dict], machine: str) -> str:
    """The Markdown report: one table row per seed and count of samples, then the paired gains."""
    real = {r["seed"]: r["scores"] for r in rows if r["kind"] == "real"}
    aug = [r for r in rows if r["kind"] == "augmented" and r["seed"] in real]
    classes = list(next(iter(real.values()))["recall"]) if real else []
    lines = ["# Augmentation study: real images plus a conditional GAN's samples", "",
             "Generated by `scripts/augmentation_study.py` (its docstring says how and why) from "
             "`docs/augmentation_results.jsonl`; " + machine + ".", "",
             "| seed | samples | test acc, real only | test acc, + samples | gain | lesion AUC real / + | "
             + " | ".join(f"recall {c} real / +" for c in classes)
             + " | best val step real / + | samples' agreement | GAN step |",
             "|---" * (9 + len(classes)) + "|"]
    for r in sorted(aug, key=lambda r: (r["generated"], r["seed"])):
        a, b = real[r["seed"]], r["scores"]
        auc = f"{a['lesion_auc']:.3f} / {b['lesion_auc']:.3f}" if a.get("lesion_auc") else "–"
        rec = [f"{a['recall'][c]:.2f} / {b['recall'][c]:.2f}" for c in classes]
        ag = r.get("agreement") or {}
        agree = (f"{ag['overall']:.2f} (" + ", ".join(f"{c} {v:.2f}" for c, v in ag["per_class"].items())
                 + ")") if "overall" in ag else "–"
        lines.append(f"| {r['seed']} | {r['generated']} | {a['acc']:.3f} | {b['acc']:.3f} | "
                     f"{b['acc'] - a['acc']:+.3f} | {auc} | " + " | ".join(rec)
                     + f" | {a['best_step']} / {b['best_step']} | {agree} | {r['gan_step']} "
                     f"({r['checkpoint']}) |")
    lines.append("")
    for n in sorted({r["generated"] for r in aug}):
        gains = [r["scores"]["acc"] - real[r["seed"]]["acc"] for r in aug if r["generated"] == n]
        lines.append(f"- {n} samples: paired gain in test accuracy {_ms(gains)} over {len(gains)} "
                     f"seeds, positive on {sum(g > 0 for g in gains)} of {len(gains)}.")
    if real:
        first = next(iter(real.values()))
        lines.append(f"- Each classifier: {first['steps']} steps, best.pt on the real val loss, scored "
                     f"on {first['test_images']} real test images.")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gan", action="append", default=[], metavar="SEED=RUN",
                   help="the conditional GAN run trained with that seed on its --labels images")
    p.add_argument("--checkpoint", default="best", help="the GAN checkpoint the samples are drawn from")
    p.add_argument("--labels", type=int, default=1000, help="real labelled images per seed")
    p.add_argument("--generated", type=int, nargs="+", default=[2000], help="samples added (one run each)")
    p.add_argument("--recipe", type=Path, default=ROOT / "recipes" / "lesion_brain.yaml")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--evals", type=int, default=10, help="val evaluations per budget (best.pt)")
    p.add_argument("--judge", default="judges/lesion_judge_brain",
                   help="scores the samples' agreement with their class ('' for none)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="an override of the classifier recipe, for both runs of a seed")
    p.add_argument("--out", type=Path, default=Path("/tmp/augmentation_study"), help="classifier runs")
    p.add_argument("--results", type=Path, default=RESULTS)
    p.add_argument("--md", type=Path, default=REPORT)
    p.add_argument("--machine", default="one torch thread per run on a shared 2-core VM")
    p.add_argument("--report-only", action="store_true", help="only redraw --md from --results")
    p.add_argument("--real-only", action="store_true", help="only the real-only classifiers (they need "
                   "the GAN runs' data section, not their generators: run it while the GANs train)")
    p.add_argument("--augmented-only", action="store_true", help="only the augmented classifiers "
                   "(their real-only partners from another call of the same settings pair with them)")
    args = p.parse_args(argv)
    gans = parse_gans(args.gan)
    if not gans and not args.report_only:
        fail("--gan SEED=RUN: at least one (or --report-only)")
    if args.real_only and args.augmented_only:
        fail("--real-only and --augmented-only: at most one")
    if any(n < 1 for n in args.generated):
        fail(f"--generated {args.generated}: expected positive counts of samples")
    rows = load_rows(args.results)
    if not args.report_only:
        sys.path.insert(0, str(ROOT))
        from genlab.core.errors import GenlabError
        from genlab.families.gan_judge import load_lesion_judge
        from genlab.tools.cas import resolve_path

        try:
            args.judge = load_lesion_judge(resolve_path(Path(args.judge))) if args.judge else None
        except GenlabError as e:
            fail(f"--judge {args.judge}: {e}")
        for seed, run_dir in sorted(gans.items()):
            try:
                new = run_seed(seed, run_dir, args, rows)
            except GenlabError as e:
                fail(str(e))
            args.results.parent.mkdir(parents=True, exist_ok=True)
            with args.results.open("a") as f:
                f.writelines(json.dumps(r, default=str) + "\n" for r in new)
            rows += new
    if rows:
        args.md.write_text(report(rows, args.machine))
        print(f"report: {args.md}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
