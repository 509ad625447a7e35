"""`genlab eval`, `genlab predict`, `genlab explain`: use a trained classifier run;
`genlab probe`: a scikit-learn linear classifier on any run's frozen encoder (genlab/probe.py).

A run is rebuilt from RUN_DIR/recipe.yaml with the weights of checkpoints/best.pt (the lowest
validation loss) when it exists, else of the newest step checkpoint (`--checkpoint last` forces
that). The class names and input shape come from RUN_DIR/export/encoder.json (written at the end
of every run, or by `genlab export`), so predict and explain need no access to the training data;
without it the data source is built from the recipe.

Images given on the command line are read with Pillow and converted as the run's data was:
grayscale ('L') for 1-channel models, RGB for 3-channel ones (16-bit and float images are scaled,
not clipped), resized to the model's input size (H, W) with bilinear filtering, aspect ratio not
kept, values / 255 into [0, 1] — the same path as the `folder` data source. An unreadable file
is an error naming it.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path

import click
import torch

from genlab.core.errors import CheckpointError, GenlabError
from genlab.engine.tracking import write_json
from genlab.metrics.classification import format_report

# as genlab.cli.CONTEXT (not imported: genlab.cli imports this module to register the commands)
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}

DEVICES = click.Choice(["auto", "cpu", "cuda", "mps"])


# ----------------------------------------------------------------------------- loading a run
class LoadedRun:
    """A classifier rebuilt from a run folder: `.model` (eval mode), `.recipe`, `.info`,
    `.data` (or None), `.checkpoint` (the file the weights came from), `.device`."""

    def __init__(self, run_dir: Path, device: str = "cpu", checkpoint: str = "best",
                 need_data: bool = False, data_overrides: tuple[str, ...] = ()):
        from genlab.core.recipe import load_recipe
        from genlab.core.registry import get_dataset, get_family
        from genlab.data.base import DataInfo
        from genlab.engine import checkpoints as ckpt
        from genlab.engine.trainer import select_device

        run_dir = Path(run_dir)
        if not (run_dir / "recipe.yaml").is_file():
            raise GenlabError(f"{run_dir}: not a genlab run folder (no recipe.yaml)")
        overrides = [o if o.startswith("data.") else f"data.{o}" for o in data_overrides]
        self.recipe = rec = load_recipe(run_dir / "recipe.yaml", overrides)
        if rec.family != "classifier":
            raise GenlabError(f"{run_dir}: a {rec.family!r} run; eval/predict/explain need a "
                              f"classifier run")
        self.run_dir, self.device = run_dir, select_device(device)
        meta_path = run_dir / "export" / "encoder.json"
        self.data = None
        if need_data or not meta_path.is_file():
            self.data = get_dataset(rec.data_name)(rec.data, rec.seed, self.device)
            self.info = self.data.info
        else:
            meta = json.loads(meta_path.read_text())
            self.info = DataInfo(name=meta["data"], input_shape=tuple(meta["input_shape"]),
                                 num_classes=len(meta["class_names"]),
                                 class_names=tuple(meta["class_names"]),
                                 value_range=tuple(meta.get("value_range", (0.0, 1.0))))
        with contextlib.redirect_stdout(io.StringIO()):  # the init report was printed at training
            self.model = get_family("classifier")(rec.model, self.info)
        best = run_dir / "checkpoints" / "best.pt"
        if checkpoint == "best" and best.is_file():
            state, path = ckpt.safe_load(best, map_location="cpu"), best
        else:
            state, path = ckpt.load_latest(run_dir / "checkpoints", map_location="cpu")
        try:
            self.model.load_state_dict(state["model"])
        except RuntimeError as e:
            raise CheckpointError(f"{path}: does not fit the run's model: {e}") from None
        self.checkpoint, self.step = path, int(state.get("step", -1))
        self.model.to(self.device).eval()

    def read_images(self, paths: list[Path]) -> torch.Tensor:
        """(N, C, H, W) float32 in [0, 1]: see the module docstring."""
        from genlab.data.folders import load_image

        c, h, w = self.info.input_shape
        out = []
        for p in paths:
            p = Path(p)
            if not p.is_file():
                raise GenlabError(f"image {p} not found")
            out.append(torch.from_numpy(load_image(p, c, (h, w))).float().div_(255.0))
        return torch.stack(out).to(self.device)


def _clean(x):
    """JSON-safe: NaN and infinities become None (metrics.json is strict JSON)."""
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _fmt(v) -> str:
    return "undefined" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


# ----------------------------------------------------------------------------- eval
def evaluate_split(run: LoadedRun, split: str, batch_size: int = 128,
                   limit: int | None = None) -> tuple[dict, dict[str, torch.Tensor]]:
    """Whole-split predictions: (classification report with the localisation block, raw)."""
    from genlab.data.sampler import eval_batches
    from genlab.families.classifier import localisation_summary

    model, data = run.model, run.data
    n = data.size(split) if limit is None else min(limit, data.size(split))
    collected: dict[str, list[torch.Tensor]] = {}
    with torch.random.fork_rng(devices=[]):
        for idx in eval_batches(n, batch_size):
            batch = {k: v.to(run.device) for k, v in data.get(split, idx).items()}
            batch["index"] = idx.to(run.device)
            out = model.evaluate(batch)
            for k, v in out.items():
                if torch.as_tensor(v).dim() > 0:
                    collected.setdefault(k, []).append(v.detach().cpu())
    raw = {k: torch.cat(v) for k, v in collected.items()}
    report = model.report(raw["probs"], raw["y"])
    if "cam_mass" in raw:
        report["localisation"] = {k.split("/", 1)[1]: v for k, v in localisation_summary(raw).items()}
        loc = report["localisation"]
        loc["tolerance_px"] = model.cfg.cam_tolerance_px
        loc["explained_class"] = "predicted"
        names = list(run.info.class_names)
        per = {}
        for c in torch.unique(raw["y"]).tolist():
            sel = raw["y"] == c
            part = {k: v[sel] for k, v in raw.items() if k.startswith("cam_")}
            if bool((~torch.isnan(part["cam_mass"])).any()):
                per[names[c]] = {k.split("/", 1)[1]: v for k, v in localisation_summary(part).items()}
        loc["per_class"] = per
    return report, raw


def format_localisation(loc: dict) -> str:
    return (f"Grad-CAM localisation over {int(loc['n'])} lesion images (predicted class):\n"
            f"  mass inside the lesion mask  {_fmt(loc['mass'])}  (correct predictions "
            f"{_fmt(loc['mass_correct'])}; uniform map {_fmt(loc['mass_base'])})\n"
            f"  pointing game, tolerance {loc['tolerance_px']} px  {_fmt(loc['point'])}  (correct "
            f"{_fmt(loc['point_correct'])}; uniform map {_fmt(loc['point_base'])})"
            + "".join(f"\n  {c:<8} n {int(v['n']):>5}  mass {_fmt(v['mass'])} (uniform "
                      f"{_fmt(v['mass_base'])})  pointing {_fmt(v['point'])} (uniform "
                      f"{_fmt(v['point_base'])})" for c, v in loc.get("per_class", {}).items()))


@click.command("eval", context_settings=CONTEXT)
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--split", type=click.Choice(["train", "val", "test"]), default="test", show_default=True,
              help="Split to evaluate. Example: --split val")
@click.option("--data", "data_overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a data option of the run's recipe; repeatable. "
                   "Example: --data mode=easy --data test_size=500")
@click.option("--checkpoint", type=click.Choice(["best", "last"]), default="best", show_default=True,
              help="best.pt (lowest val loss) or the newest step checkpoint. Example: --checkpoint last")
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Output folder (default RUN_DIR/eval/<split>). Example: --out /tmp/eval")
@click.option("--device", type=DEVICES, default="cpu", show_default=True,
              help="Device to run on. Example: --device cuda")
@click.option("--batch-size", type=click.IntRange(min=1), default=128, show_default=True,
              help="Images per forward pass. Example: --batch-size 256")
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Evaluate only the first N images of the split. Example: --limit 500")
@click.option("--cam-tolerance", type=click.IntRange(min=0), default=None,
              help="Pointing-game tolerance in pixels (default: the run's model.cam_tolerance_px). "
                   "Example: --cam-tolerance 8")
def eval_cmd(run_dir, split, data_overrides, checkpoint, out, device, batch_size, limit, cam_tolerance):
    """Evaluate a classifier run on a split: a metrics table, metrics.json, figures.

    Writes <out>/metrics.json, confusion_matrix.png (rows = actual class, columns = predicted
    class) and roc.png, and logs the same figures to the run's TensorBoard (eval/<split>/...).

    \b
    Examples:
      genlab eval runs/lesion_brain/20260101-120000
      genlab eval runs/lesion_brain/20260101-120000 --split val --data mode=easy
    """
    run = LoadedRun(run_dir, device, checkpoint, need_data=True, data_overrides=data_overrides)
    if cam_tolerance is not None:
        run.model.cfg.cam_tolerance_px = cam_tolerance
    report, raw = evaluate_split(run, split, batch_size, limit)
    out = Path(out) if out is not None else run_dir / "eval" / split
    result = {"run": str(run_dir), "split": split, "checkpoint": str(run.checkpoint), "step": run.step,
              "data_overrides": list(data_overrides)}
    figures = write_report(out, report, raw["y"], raw["probs"], list(run.info.class_names),
                           title=f"{run.recipe.name} — {split}", run_dir=run_dir,
                           tb_prefix=f"eval/{split}", step=run.step, header=result)
    if run.model.init_report is not None:
        write_json(run_dir / "init_report.json", run.model.init_report)
    click.echo(f"{run.recipe.name}: {split} split, {report['n']} images, weights {run.checkpoint.name} "
               f"(step {run.step})\n")
    click.echo(format_report(report))
    if "localisation" in report:
        click.echo("\n" + format_localisation(report["localisation"]))
    click.echo(f"\nwrote {out / 'metrics.json'}, {', '.join(f'{k}.png' for k in figures)}")


def write_report(out: Path, report: dict, y: torch.Tensor, probs: torch.Tensor, names: list[str], *,
                 title: str, run_dir: Path, tb_prefix: str, step: int, header: dict) -> dict:
    """The files of `genlab eval` and `genlab probe`: out/metrics.json ({**header, **report}),
    confusion_matrix.png (rows = actual, columns = predicted), roc.png and, for a multi-class
    lesion task, roc_lesion.png; the figures also go to RUN_DIR's TensorBoard under tb_prefix.
    Returns {name: (H, W, 3) uint8 image}."""
    from genlab.engine.tracking import Tracker
    from genlab.metrics.classification import plot_confusion_matrix, plot_roc

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    y, probs = torch.as_tensor(y).long(), torch.as_tensor(probs).float()
    figures = {"confusion_matrix": plot_confusion_matrix(report["confusion_matrix"]["matrix"], names,
                                                         out / "confusion_matrix.png", title=title),
               "roc": plot_roc(y, probs, names, out / "roc.png", title=title)}
    bin_block = report.get("binary")
    if bin_block and len(names) > 2:  # the lesion-vs-healthy ROC of a multi-class model
        idx = bin_block["positive_indices"]
        truth = torch.isin(y, torch.tensor(idx)).long()
        p_pos = probs[:, idx].sum(1)
        figures["roc_lesion"] = plot_roc(truth, torch.stack([1 - p_pos, p_pos], 1),
                                         ["no lesion", bin_block["positive"]], out / "roc_lesion.png",
                                         title=f"{title}: lesion vs no lesion")
    write_json(out / "metrics.json", _clean({**header, **report}))
    tracker = Tracker(run_dir)
    for name, img in figures.items():
        tracker.image(f"{tb_prefix}/{name}", torch.from_numpy(img).permute(2, 0, 1).float() / 255, step)
    tracker.close()
    return figures


# ----------------------------------------------------------------------------- predict
@click.command("predict", context_settings=CONTEXT)
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--checkpoint", type=click.Choice(["best", "last"]), default="best", show_default=True,
              help="best.pt (lowest val loss) or the newest step checkpoint. Example: --checkpoint last")
@click.option("--device", type=DEVICES, default="cpu", show_default=True,
              help="Device to run on. Example: --device cuda")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per image instead of text.")
def predict_cmd(run_dir, images, checkpoint, device, as_json):
    """Classify IMAGE files with a trained classifier run.

    Prints, per image, the predicted class, every class probability and the lesion call
    (P(lesion) = 1 - P(no-lesion classes), a lesion at or above model.lesion_threshold).

    \b
    Examples:
      genlab predict runs/lesion_brain/20260101-120000 data/brain/A/train_000000.png
      genlab predict runs/lesion_brain/20260101-120000 scan1.png scan2.png --json
    """
    run = LoadedRun(run_dir, device, checkpoint)
    model, names = run.model, list(run.info.class_names)
    for rows in _chunks(list(images), 64):
        x = run.read_images(rows)
        probs = model.predict_proba(x).cpu()
        p_lesion = model.lesion_probability(probs)
        for i, path in enumerate(rows):
            k = int(probs[i].argmax())
            rec = {"image": str(path), "class": names[k], "probability": float(probs[i, k]),
                   "probabilities": {n: float(probs[i, j]) for j, n in enumerate(names)}}
            if p_lesion is not None:
                pl = float(p_lesion[i])
                rec["p_lesion"] = pl
                rec["lesion"] = pl >= model.cfg.lesion_threshold
            if as_json:
                click.echo(json.dumps(rec))
                continue
            probs_txt = "  ".join(f"{n} {probs[i, j]:.3f}" for j, n in enumerate(names))
            call = ("" if p_lesion is None else
                    f"  ->  {'LESION' if rec['lesion'] else 'no lesion'} (P(lesion) {rec['p_lesion']:.3f})")
            click.echo(f"{path}: {names[k]} ({probs[i, k]:.3f})  [{probs_txt}]{call}")


def _chunks(items: list, n: int):
    for i in range(0, len(items), n):
        yield items[i:i + n]


# ----------------------------------------------------------------------------- explain
@click.command("explain", context_settings=CONTEXT)
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.argument("images", nargs=-1, type=click.Path(path_type=Path))
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for the overlays (<image stem>_gradcam.png). Example: --out explain/")
@click.option("--class", "class_name", default=None,
              help="Explain this class instead of the predicted one. Example: --class A")
@click.option("--split", type=click.Choice(["train", "val", "test"]), default=None,
              help="Instead of IMAGE files, explain the first --n images of this split of the run's "
                   "data (with the lesion outline and scores where masks exist). Example: --split test")
@click.option("--n", "n", type=click.IntRange(min=1), default=8, show_default=True,
              help="Images taken with --split. Example: --n 16")
@click.option("--checkpoint", type=click.Choice(["best", "last"]), default="best", show_default=True,
              help="best.pt (lowest val loss) or the newest step checkpoint. Example: --checkpoint last")
@click.option("--device", type=DEVICES, default="cpu", show_default=True,
              help="Device to run on. Example: --device cuda")
def explain_cmd(run_dir, images, out, class_name, split, n, checkpoint, device):
    """Write Grad-CAM overlays (image, map, overlay) showing where the classifier looks.

    \b
    Examples:
      genlab explain runs/lesion_brain/20260101-120000 scan.png --out explain/
      genlab explain runs/lesion_brain/20260101-120000 --split test --n 16 --out explain/
    """
    from genlab.metrics.gradcam import save_gradcam_figure

    if bool(images) == bool(split):
        raise GenlabError("give IMAGE files or --split SPLIT (not both, not neither)")
    run = LoadedRun(run_dir, device, checkpoint, need_data=split is not None)
    model, names = run.model, list(run.info.class_names)
    if not model.can_explain:
        raise GenlabError(f"{run_dir}: the backbone has no convolutional trunk, so there is no "
                          f"Grad-CAM map to draw")
    cls = None
    if class_name is not None:
        if class_name not in names:
            raise GenlabError(f"--class {class_name}: unknown class (classes: {', '.join(names)})")
        cls = names.index(class_name)
    if split is not None:
        idx = torch.arange(min(n, run.data.size(split)))
        batch = run.data.get(split, idx)
        x, masks = batch["x"].to(run.device), batch.get("mask")
        labels = [f"{split}_{i:06d}" for i in idx.tolist()]
        truth = [names[int(t)] for t in batch["y"]]
    else:
        x, masks = run.read_images(list(images)), None
        labels, truth = [Path(p).stem for p in images], [None] * len(images)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for s in range(0, len(x), 32):
        xs = x[s:s + 32]
        probs = model.predict_proba(xs).cpu()
        cams = model.gradcam(xs, cls).cpu()
        for j in range(len(xs)):
            i = s + j
            k = int(probs[j].argmax())
            shown = names[cls] if cls is not None else names[k]
            title = (f"{labels[i]}: predicted {names[k]} ({probs[j, k]:.2f})"
                     + (f", actual {truth[i]}" if truth[i] is not None else "")
                     + f"; map for {shown}")
            mask = masks[i, 0].cpu() if masks is not None and bool(masks[i].any()) else None
            path = out / f"{labels[i]}_gradcam.png"
            save_gradcam_figure(path, xs[j].cpu(), cams[j], mask=mask, title=title)
            written.append(path)
            click.echo(f"{path}: {title}")
    click.echo(f"wrote {len(written)} overlay(s) to {out}")


# ----------------------------------------------------------------------------- probe
@click.command("probe", context_settings=CONTEXT)
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--clf", type=click.Choice(["svm", "logreg"]), required=True,
              help="Linear SVM (LinearSVC) or logistic regression. Example: --clf logreg")
@click.option("--pca", type=click.IntRange(min=1), default=None,
              help="Reduce the standardised features to this many principal components first. "
                   "Example: --pca 128")
@click.option("--pool", type=click.Choice(["none", "mean", "max"]), default="none", show_default=True,
              help="none: the encoder's output vector; mean/max: global pooling of its last conv "
                   "feature map instead (one number per channel). Example: --pool mean")
@click.option("--split", type=click.Choice(["val", "test"]), default="test", show_default=True,
              help="Split to report on (the probe fits on train and picks C on val, so a val report is "
                   "optimistic). Example: --split val")
@click.option("--n-train", type=click.IntRange(min=2), default=2000, show_default=True,
              help="Fit on the first N images of the train split. Example: --n-train 5000")
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Use only the first N images of the val and report splits. Example: --limit 500")
@click.option("--c", "c_grid", type=click.FloatRange(min=0, min_open=True), multiple=True,
              help="Candidate inverse regularisation strengths C, chosen on val; repeatable "
                   "(default 1e-4 ... 1e2, one per decade). Example: --c 0.01 --c 0.1")
@click.option("--data", "data_overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a data option of the run's recipe; repeatable. Example: --data mode=easy")
@click.option("--checkpoint", type=click.Choice(["best", "last"]), default="best", show_default=True,
              help="Classifier runs: best.pt or the newest step checkpoint. Example: --checkpoint last")
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Output folder (default RUN_DIR/probe/<setting>/<split>). Example: --out /tmp/probe")
@click.option("--device", type=DEVICES, default="cpu", show_default=True,
              help="Device for the feature extraction. Example: --device cuda")
@click.option("--batch-size", type=click.IntRange(min=1), default=128, show_default=True,
              help="Images per forward pass. Example: --batch-size 256")
def probe_cmd(run_dir, clf, pca, pool, split, n_train, limit, c_grid, data_overrides, checkpoint, out,
              device, batch_size):
    """Fit a linear SVM or logistic regression on frozen encoder features (seed 003's fixed
    feature extractor) and report the metrics of `genlab eval`.

    RUN_DIR is a run that exported an encoder (export/: ae, dae, rbm, dbn, gan runs) or a
    classifier run (its backbone). The features come from the run's own data: the classifier is
    fitted on the first --n-train train images, C is chosen on val, and --split is reported.
    Writes metrics.json, confusion_matrix.png and roc.png as `genlab eval` does.

    \b
    Examples:
      genlab probe runs/dae_brain/20260101-120000 --clf logreg
      genlab probe runs/dae_brain/20260101-120000 --clf svm --pool mean --pca 32
      genlab probe runs/lesion_brain_binary/20260101-120000 --clf svm --n-train 5000
    """
    import time

    from genlab.engine.trainer import select_device
    from genlab.metrics.classification import classification_report
    from genlab.tools import probe

    t0 = time.perf_counter()
    src = probe.load_source(run_dir, select_device(device), checkpoint, data_overrides)
    names = list(src.info.class_names)
    x_tr, y_tr = probe.extract(src, "train", n_train, pool, batch_size)
    x_va, y_va = probe.extract(src, "val", limit, pool, batch_size)
    x_te, y_te = probe.extract(src, split, limit, pool, batch_size) if split != "val" else (x_va, y_va)
    res = probe.fit(clf, x_tr, y_tr, x_va, y_va, pca, c_grid or probe.DEFAULT_C_GRID, src.recipe.seed)
    probs = res.predict_proba(x_te, len(names))
    positive = [i for i in range(len(names)) if i not in src.negative] if src.negative else None
    report = classification_report(y_te, probs, names, positive=positive, top_k=(5,))
    setting = probe.probe_name(clf, pca, pool)
    out = Path(out) if out is not None else run_dir / "probe" / setting / split
    feats = probe.describe(pool, pca, x_tr.shape[1])
    header = {"run": str(run_dir), "split": split, "encoder": src.origin, "step": src.step,
              "data_overrides": list(data_overrides),
              "probe": {"classifier": clf, "features": feats, "feature_dim": int(x_tr.shape[1]),
                        "input_dim": pca or int(x_tr.shape[1]), "pool": pool, "pca": pca,
                        "n_train": len(y_tr), "n_val": len(y_va),
                        "C": res.c, "c_grid": probe.jsonable_grid(res.val_accuracy),
                        "temperature": res.temperature, "seconds": round(time.perf_counter() - t0, 2)}}
    figures = write_report(out, report, torch.from_numpy(y_te), torch.from_numpy(probs), names,
                           title=f"{src.recipe.name} — probe {setting} — {split}", run_dir=run_dir,
                           tb_prefix=f"probe/{setting}/{split}", step=max(src.step, 0), header=header)
    grid = "  ".join(f"C={c:g}: {a:.3f}" for c, a in res.val_accuracy.items())
    click.echo(f"{src.recipe.name}: probe {clf} on {feats}; encoder: {src.origin}\n"
               f"fit on {len(y_tr)} train images; val accuracy per C ({len(y_va)} images): {grid}\n"
               f"chosen C = {res.c:g}" + (f", SVM temperature {res.temperature:.3g}" if res.temperature else "")
               + f"; {split} split, {report['n']} images\n")
    click.echo(format_report(report))
    click.echo(f"\nwrote {out / 'metrics.json'}, {', '.join(f'{k}.png' for k in figures)}")


def register(group: click.Group) -> None:
    """Attach eval, predict, explain and probe to the `genlab` command group."""
    for cmd in (eval_cmd, predict_cmd, explain_cmd, probe_cmd):
        group.add_command(cmd)
