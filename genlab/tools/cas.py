"""Classification Accuracy Score (Ravuri & Vinyals, NeurIPS 2019) of a class-conditional GAN run.
The command is `genlab cas RUN` (genlab/cli/cas.py).

A fresh classifier (the lesion recipe's backbone, `recipes/lesion_brain.yaml` by default) is
trained through the shared trainer on N images drawn from the GAN's EMA generator, each labelled
by the class it was drawn for (data source "generated", genlab.data.generated: class-balanced,
drawn from the recipe seed), and scored on the real test images of the GAN run's data
(the same mode and size). The same classifier with the same budget and seed is then trained on N
real labelled images (`data.labelled: N`, class-balanced from the train split) and scored on the
same test images. Both runs validate on the same real val images every budget / evals steps; the
checkpoint with the lowest val loss (checkpoints/best.pt) is scored once on test, as
label-efficiency runs are (scripts/label_efficiency.py). No early stopping: a fixed budget.

    CAS        test accuracy of the classifier trained on generated images
    real acc   test accuracy of the one trained on as many real images
    ratio      CAS / real acc: 1 when the samples teach the classes as well as real images do

A generator that draws the real distribution scores a ratio near 1; one that draws images with no
class information, chance (1/K on balanced classes). Beside them, per-class recall (a syndrome
the generator cannot draw is missed here first), the lesion-vs-healthy ROC AUC when the task has
healthy classes, and with a lesion judge the share of the generated training images it assigns
to their class (agreement).

The real baseline depends on the recipe, the data, N, the budget and the seed, not on the GAN:
RUN/cas.json keeps it with its resolved recipe, and a later call with the same settings (on this
run, or `real_from` another run's cas.json) reuses it instead of training it again.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from genlab.core import schema
from genlab.core.errors import GenlabError
from genlab.core.files import write_json
from genlab.core.recipe import Recipe, from_mapping
from genlab.core.registry import get_dataset
from genlab.data import generated  # noqa: F401 - registers data source "generated"

CAS_FILE = "cas.json"
ROOT = Path(__file__).resolve().parents[2]
DEFAULT_RECIPE = Path("recipes/lesion_brain.yaml")
DEFAULT_JUDGE = Path("judges/lesion_judge_brain")
MACHINE_KEYS = ("device", "threads")  # train keys that change where a run ran, not its result


@dataclass
class CASSettings:
    """What a CAS measurement is: the classifier recipe and its fixed budget."""

    recipe: Path = DEFAULT_RECIPE
    n_train: int = 2000  # generated images, and real labelled images for the baseline
    steps: int = 1500
    batch_size: int = 64
    seed: int = 0
    evals: int = 10  # val evaluations per budget (best.pt: the lowest val loss of these)
    sets: list[str] = field(default_factory=list)  # --set overrides of the classifier recipe
    device: str = "auto"


def resolve_path(path: Path) -> Path:
    """`path` as given, or under the repository root when it is relative and not found here
    (so the default recipe and judge are found from any working folder)."""
    path = Path(path)
    if not path.exists() and not path.is_absolute() and (ROOT / path).exists():
        return ROOT / path
    return path


def classifier_recipe(s: CASSettings, data: dict[str, Any], name: str) -> Recipe:
    """The classifier recipe `s.recipe` with its data section replaced by `data` and the fixed
    budget of `s` (then `s.sets`, which win)."""
    path = resolve_path(s.recipe)
    if not path.is_file():
        raise GenlabError(f"--recipe {s.recipe}: file not found (expected a classifier recipe, "
                          f"e.g. {DEFAULT_RECIPE})")
    raw = schema.load_yaml(path)
    if raw.get("family") != "classifier":
        raise GenlabError(f"--recipe {s.recipe}: a {raw.get('family')!r} recipe; CAS trains a "
                          f"classifier (family: classifier)")
    raw["data"], raw["name"] = dict(data), name
    every = max(1, s.steps // s.evals)
    sets = [f"seed={s.seed}", f"train.steps={s.steps}",
            f"train.batch_size={min(s.batch_size, s.n_train)}",
            f"train.warmup_steps={min(100, s.steps // 10)}", "train.early_stopping_patience=null",
            "train.eval_batches=null", "train.eval_batch_size=250", "train.final_eval_full=true",
            "train.final_eval_best=true", f"train.device={s.device}", f"log.eval_every={every}",
            f"log.every={every}", "log.render_every=0", "log.checkpoint_every=0",
            "log.histograms=false", "log.probe_train=0", "model.localisation=false", *s.sets]
    return from_mapping(raw, sets, where=str(path), default_name=name)


def recipe_key(recipe: Recipe) -> dict:
    """What decides a run's result: its resolved recipe less where it ran."""
    d = json.loads(json.dumps(recipe.to_dict(), default=str))
    for k in MACHINE_KEYS:
        d["train"].pop(k, None)
    return d


def train_scored(recipe: Recipe, out_root: Path, quiet: bool = True):
    """Train `recipe` with the shared trainer; (scores of best.pt on test, the trainer)."""
    from genlab.engine.trainer import Trainer

    t0 = time.perf_counter()
    out = contextlib.redirect_stdout(io.StringIO()) if quiet else contextlib.nullcontext()
    with out:  # the classifier's init report and the console lines
        t = Trainer(recipe, out_root=out_root, quiet=quiet)
        res = t.run()
    best = res["best"]
    test = best.get("test", res["test"])  # best.pt's, or the final weights' when they are the best
    names = list(t.data.info.class_names)
    scores = {"acc": test["acc"], "lesion_auc": _finite(test.get("bin/auc")),
              "recall": {c: _finite(test.get(f"sens/{c}")) for c in names},
              "val_loss": _finite(best.get("value")), "best_step": best.get("step", res["steps"]),
              "steps": res["steps"], "images": t.data.size("train"), "test_images": t.data.size("test"),
              "run": str(t.run_dir), "seconds": round(time.perf_counter() - t0, 1),
              "key": recipe_key(recipe)}
    return scores, t


def _finite(v) -> float | None:
    return None if v is None or not math.isfinite(float(v)) else float(v)


def real_recipe(s: CASSettings, real_data: dict[str, Any]) -> Recipe:
    """The baseline: the same classifier on `s.n_train` class-balanced real labelled images."""
    name = real_data.get("name")
    cls = get_dataset(name, "data.name") if isinstance(name, str) else None
    if cls is None or "labelled" not in getattr(cls.Config, "__dataclass_fields__", {}):
        raise GenlabError(f"the real baseline needs N labelled images (data.labelled), which data "
                          f"set {name!r} has no option for; use --no-real")
    return classifier_recipe(s, {**real_data, "labelled": s.n_train}, "cas_real")


def compare(s: CASSettings, real_data: dict[str, Any], gen_source: dict[str, Any], out_root: Path,
            *, real: dict | None = None, train_real: bool = True, judge=None, quiet: bool = True,
            say: Callable[[str], None] = print) -> dict:
    """The measurement: a classifier trained on `s.n_train` images of generated source
    `gen_source` (a data section without `real` and `train_size`, e.g. {"name": "generated",
    "generator": DIR}), its val and test the real data `real_data`'s; and unless `real` (a
    reused baseline) is given or `train_real` is False, the same classifier on as many real
    images. Returns {"generated": scores, "real": scores | None, "cas", "real_acc", "ratio"}
    and, with a `judge` (genlab.families.gan_judge.LesionJudge), "agreement"."""
    gen_data = {**gen_source, "real": dict(real_data), "train_size": s.n_train}
    rec = classifier_recipe(s, gen_data, "cas_generated")  # both recipes checked before training
    rec_real = real_recipe(s, real_data) if real is None and train_real else None
    say(f"training on {s.n_train} generated images ({s.steps} steps of {s.batch_size}) ...")
    gen, trainer = train_scored(rec, out_root, quiet)
    say(f"  test accuracy {gen['acc']:.4f}  ({gen['seconds']:.0f} s, {gen['run']})")
    out: dict[str, Any] = {"generated": gen}
    if judge is not None:
        out["agreement"] = agreement(judge, trainer.data, s.batch_size)
    if rec_real is not None:
        say(f"training on {s.n_train} real images (the same budget and seed) ...")
        real, _ = train_scored(rec_real, out_root, quiet)
        say(f"  test accuracy {real['acc']:.4f}  ({real['seconds']:.0f} s, {real['run']})")
    out["real"] = real
    out["cas"] = gen["acc"]
    out["real_acc"] = real["acc"] if real else None
    out["ratio"] = gen["acc"] / real["acc"] if real and real["acc"] > 0 else None
    return out


def agreement(judge, data, batch_size: int = 256) -> dict:
    """Share of the generated training images that `judge` assigns to the class they were drawn
    for, overall and per class (genlab.metrics.generative.class_agreement); classes are matched
    by name, so the judge must know every class of the data."""
    import torch

    from genlab.metrics.generative import class_agreement

    names = list(data.info.class_names)
    if tuple(judge.input_shape) != tuple(data.info.input_shape) or set(names) - set(judge.class_names):
        return {"skipped": f"the judge takes {tuple(judge.input_shape)} images of classes "
                f"{judge.class_names}; the data are {tuple(data.info.input_shape)}, {names}"}
    to_judge = torch.tensor([judge.class_names.index(c) for c in names])
    logits, labels = [], []
    with torch.no_grad():
        for start in range(0, data.size("train"), batch_size):
            b = data.get("train", torch.arange(start, min(start + batch_size, data.size("train"))))
            logits.append(judge.to(b["x"].device).logits(b["x"]).float().cpu())
            labels.append(to_judge[b["y"].cpu()])
    overall, per = class_agreement(torch.cat(logits), torch.cat(labels), judge.num_classes)
    per_class = {c: _finite(per[judge.class_names.index(c)]) for c in names}
    return {"judge": judge.name, "overall": overall, "per_class": per_class,
            "min": min(v for v in per_class.values() if v is not None)}


# -- a GAN run ------------------------------------------------------------------------------------
def load_conditional_gan(run_dir: Path, checkpoint: str = "last"):
    """The GAN run in `run_dir` (genlab.engine.runs.LoadedRun, on the CPU); a clear error for a
    missing run, a run of another family or an unconditional GAN."""
    from genlab.engine.runs import load_run

    run = load_run(run_dir, checkpoint, "cpu")
    if run.recipe.family != "gan":
        raise GenlabError(f"{run_dir}: a {run.recipe.family!r} run; genlab cas scores a "
                          f"class-conditional GAN run")
    if not getattr(run.model, "conditional", False):
        raise GenlabError(f"{run_dir}: an unconditional GAN (model.conditional: false); CAS labels "
                          f"each sample by the class it was drawn for, so it needs a GAN trained "
                          f"with model.conditional: true")
    return run


def read_cas_file(path: Path) -> dict:
    """A cas.json (or the folder holding one), as a dict; a clear error when there is none."""
    path = Path(path)
    file = path / CAS_FILE if path.is_dir() else path
    try:
        doc = json.loads(file.read_text())
    except (OSError, ValueError) as e:
        raise GenlabError(f"--real-from {path}: no readable {CAS_FILE} ({type(e).__name__})") from None
    if not isinstance(doc, dict):
        raise GenlabError(f"--real-from {file}: not a {CAS_FILE} written by genlab cas")
    return doc


def first_difference(a: Any, b: Any, path: str = "", defaults: Any = None) -> str | None:
    """The dotted key where two JSON-like values first differ (None when equal). A key that `b`
    lacks and `defaults` holds counts as that default: a baseline stored before a setting existed
    was trained as its default is."""
    if isinstance(a, dict) and isinstance(b, dict):
        defaults = defaults if isinstance(defaults, dict) else {}
        for k in list(a) + [k for k in b if k not in a]:
            there = b[k] if k in b else defaults.get(k)
            d = first_difference(a.get(k), there, f"{path}.{k}" if path else k, defaults.get(k))
            if d is not None:
                return d
        return None
    return None if a == b else f"{path} ({a!r} here, {b!r} there)"


def default_key(recipe: Recipe) -> dict:
    """recipe_key of the same family and data (the recipe's own data section: a folder data set
    has required keys) with every other setting at its default; {} when that cannot be built."""
    from genlab.core.recipe import from_mapping

    try:
        return recipe_key(from_mapping({"family": recipe.family, "data": recipe_key(recipe)["data"]}))
    except GenlabError:  # no defaults to fill in: every missing key then counts as a difference
        return {}


def reusable_baseline(recipe: Recipe, own: Path, real_from: Path | None) -> dict | None:
    """A real baseline trained before with the resolved recipe `recipe` (where it ran aside):
    from `real_from` (a cas.json or its folder; an error when it differs), else from this run's
    own cas.json `own` when it matches; None when there is none."""
    key = recipe_key(recipe)
    if real_from is not None:
        prev = read_cas_file(real_from).get("real")
        if not prev:
            raise GenlabError(f"--real-from {real_from}: holds no real baseline")
        diff = first_difference(key, prev.get("key"), defaults=default_key(recipe))
        if diff is not None:
            raise GenlabError(f"--real-from {real_from}: its real baseline was trained with other "
                              f"settings; first difference: {diff}")
        return {**prev, "reused_from": str(real_from)}
    with contextlib.suppress(GenlabError):  # an unreadable own cas.json is simply not reused
        prev = read_cas_file(own).get("real") if own.is_file() else None
        if prev and first_difference(key, prev.get("key"), defaults=default_key(recipe)) is None:
            return {**prev, "reused_from": prev.get("reused_from", str(own))}
    return None


def cas_for_run(run_dir: Path, s: CASSettings, *, checkpoint: str = "last", no_real: bool = False,
                real_from: Path | None = None, judge_path: Path | None = None, quiet: bool = True,
                say: Callable[[str], None] = print) -> dict:
    """CAS of the conditional GAN run in `run_dir`: its EMA generator exported to
    RUN/cas/generator/, the classifiers trained under RUN/cas/, the result in RUN/cas.json."""
    run = load_conditional_gan(run_dir, checkpoint)
    run_dir = run.run_dir
    real_data = run.recipe.to_dict()["data"]
    real_data.pop("labelled", None)  # the GAN's own labelled subset: no matter for val and test
    gen_dir = run_dir / "cas" / "generator"
    run.model.export_generator(gen_dir)
    # blocks of the GAN's training batch: its batch norm saw batches of that size
    gen_source = {"name": "generated", "generator": str(gen_dir.resolve()),
                  "block": run.recipe.train.batch_size}

    real = None if no_real else reusable_baseline(real_recipe(s, real_data), run_dir / CAS_FILE,
                                                  real_from)
    if real is not None:
        say(f"real baseline reused from {real['reused_from']} (same recipe, data, budget and "
            f"seed): test accuracy {real['acc']:.4f}")
    judge = None
    if judge_path is not None:
        from genlab.families.gan_judge import load_lesion_judge

        judge = load_lesion_judge(resolve_path(judge_path))
    result = compare(s, real_data, gen_source, run_dir / "cas", real=real, train_real=not no_real,
                     judge=judge, quiet=quiet, say=say)
    doc = {"run": str(run_dir), "checkpoint": str(run.checkpoint), "gan_step": run.step,
           "generator": gen_source["generator"], "classes": list(run.info.class_names),
           "settings": {**asdict(s), "recipe": str(s.recipe)}, **result}
    write_json(run_dir / CAS_FILE, doc)
    return doc


# -- the report -----------------------------------------------------------------------------------
def _f(v, digits: int = 4) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def format_table(doc: dict) -> str:
    """The result as a Markdown table: one column per training set."""
    gen, real = doc["generated"], doc.get("real")
    cols = [("generated", gen)] + ([("real", real)] if real else [])
    head = [f"trained on {r['images']} {name}" + (" (reused)" if r.get("reused_from") else "")
            for name, r in cols]
    rows = [("test accuracy", [_f(r["acc"]) for _, r in cols])]
    rows += [(f"recall {c}", [_f(r["recall"].get(c)) for _, r in cols]) for c in gen["recall"]]
    if any(r.get("lesion_auc") is not None for _, r in cols):
        rows.append(("lesion AUC", [_f(r.get("lesion_auc")) for _, r in cols]))
    rows.append(("best val step / budget", [f"{r['best_step']} / {r['steps']}" for _, r in cols]))
    lines = ["| | " + " | ".join(head) + " |", "|---" * (len(cols) + 1) + "|"]
    lines += [f"| {name} | " + " | ".join(vals) + " |" for name, vals in rows]
    s = doc.get("settings", {})
    lines.append("")
    lines.append(f"CAS {_f(doc['cas'])}" + (f", real accuracy {_f(doc['real_acc'])}, ratio "
                                              f"{_f(doc['ratio'], 3)}" if doc.get("real_acc") else "")
                 + f" on {gen['test_images']} real test images; classifier {s.get('recipe', '?')}, "
                 f"{s.get('steps', '?')} steps of {s.get('batch_size', '?')}, seed {s.get('seed', '?')}")
    agree = doc.get("agreement")
    if agree and "overall" in agree:
        per = ", ".join(f"{c} {_f(v, 3)}" for c, v in agree["per_class"].items())
        lines.append(f"agreement (judge {agree['judge']}) of the generated training images: "
                     f"{_f(agree['overall'], 3)} ({per})")
    elif agree:
        lines.append(f"agreement: not measured ({agree['skipped']})")
    return "\n".join(lines)


__all__ = ["CASSettings", "agreement", "cas_for_run", "classifier_recipe", "compare",
           "format_table", "load_conditional_gan", "real_recipe", "train_scored"]
