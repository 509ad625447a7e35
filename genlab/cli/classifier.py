"""`genlab eval`, `genlab predict`, `genlab explain`: use a trained classifier run.

The run is loaded with genlab.load_run: RUN_DIR/recipe.yaml with the weights of
checkpoints/best.pt (the lowest validation loss) when it exists, else of the newest step
checkpoint (`--checkpoint last` forces that). The class names and input shape come from
RUN_DIR/export/encoder.json (written at the end of every run, or by `genlab export`), so predict
and explain need no access to the training data; without it the data source is built from the
recipe. Images given on the command line are read as the run's data was (LoadedRun.read_images):
grayscale or RGB, resized (bilinear) to the model's input, values / 255 into [0, 1].
"""
from __future__ import annotations

import json
from pathlib import Path

import click
import torch

from genlab.cli.common import CONTEXT, SPLITS, checkpoint_option, device_option, run_dir_argument
from genlab.cli.report import format_localisation, write_report
from genlab.core.errors import GenlabError
from genlab.core.files import jsonable, write_json

DEVICE_HELP = "Device to run on. Example: --device cuda"


def _load(run_dir, checkpoint, device, command, **kw):
    """The classifier run, or one line saying why RUN_DIR is not one."""
    from genlab.engine.runs import load_run
    from genlab.families.base import require

    run = load_run(run_dir, checkpoint, device, **kw)
    require(run.model, "classify", command)
    return run


# ----------------------------------------------------------------------------- eval
def evaluate_split(run, split: str, batch_size: int = 128,
                   limit: int | None = None) -> tuple[dict, dict[str, torch.Tensor]]:
    """Whole-split predictions of a loaded classifier run: (classification report with the
    localisation block, raw outputs)."""
    from genlab.data.sampler import eval_batches
    from genlab.metrics.gradcam import localisation_summary

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


@click.command("eval", context_settings=CONTEXT)
@run_dir_argument
@click.option("--split", type=SPLITS, default="test", show_default=True,
              help="Split to evaluate. Example: --split val")
@click.option("--data", "data_overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a data option of the run's recipe; repeatable. "
                   "Example: --data mode=easy --data test_size=500")
@checkpoint_option()
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Output folder (default RUN_DIR/eval/<split>). Example: --out /tmp/eval")
@device_option(DEVICE_HELP)
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
    from genlab.metrics.classification import format_report

    run = _load(run_dir, checkpoint, device, "genlab eval", need_data=True,
                data_overrides=data_overrides)
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


# ----------------------------------------------------------------------------- predict
@click.command("predict", context_settings=CONTEXT)
@run_dir_argument
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@checkpoint_option()
@device_option(DEVICE_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per image instead of text.")
def predict_cmd(run_dir, images, checkpoint, device, as_json):
    """Classify IMAGE files with a trained classifier run.

    Prints, per image, on a lesion task: the lesion call first, then the most likely class on
    that side (a lesion class when it says LESION) with its probability, and the rule that made
    the call (P(lesion) = 1 - P(no-lesion classes), a lesion at or above
    model.lesion_threshold), then every class probability. Otherwise: the predicted class and
    every class probability. The API and the web page of `genlab serve` say the same.

    \b
    Examples:
      genlab predict runs/lesion_brain/20260101-120000 data/brain/A/train_000000.png
      genlab predict runs/lesion_brain/20260101-120000 scan1.png scan2.png --json
    """
    from genlab.metrics.classification import lesion_reading

    run = _load(run_dir, checkpoint, device, "genlab predict")
    model, names = run.model, list(run.info.class_names)
    images = list(images)
    for start in range(0, len(images), 64):
        rows = images[start:start + 64]
        probs = model.predict_proba(run.read_images(rows)).cpu()
        for i, path in enumerate(rows):
            k = int(probs[i].argmax())
            rec = {"image": str(path), "class": names[k], "probability": float(probs[i, k]),
                   "probabilities": {n: float(probs[i, j]) for j, n in enumerate(names)}}
            reading = lesion_reading(probs[i].tolist(), names, model.negative,
                                     model.cfg.lesion_threshold)
            if reading is not None:  # the same object as the API's "lesion"
                rec.update(p_lesion=reading["probability"], lesion=reading["call"],
                           lesion_call=reading)
            if as_json:
                click.echo(json.dumps(jsonable(rec)))
                continue
            probs_txt = "  ".join(f"{n} {probs[i, j]:.3f}" for j, n in enumerate(names))
            said = reading["summary"] if reading is not None else f"{names[k]} ({probs[i, k]:.3f})"
            click.echo(f"{path}: {said}  [{probs_txt}]")


# ----------------------------------------------------------------------------- explain
@click.command("explain", context_settings=CONTEXT)
@run_dir_argument
@click.argument("images", nargs=-1, type=click.Path(path_type=Path))
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for the overlays (<image stem>_gradcam.png). Example: --out explain/")
@click.option("--class", "class_name", default=None,
              help="Explain this class instead of the predicted one. Example: --class A")
@click.option("--split", type=SPLITS, default=None,
              help="Instead of IMAGE files, explain the first --n images of this split of the run's "
                   "data (with the lesion outline and scores where masks exist). Example: --split test")
@click.option("--n", "n", type=click.IntRange(min=1), default=8, show_default=True,
              help="Images taken with --split. Example: --n 16")
@click.option("--layer", default=None,
              help="Backbone layer to take the Grad-CAM map at (default: the last conv block); "
                   "names from `genlab probe RUN --list-layers`. Example: --layer block2")
@checkpoint_option()
@device_option(DEVICE_HELP)
def explain_cmd(run_dir, images, out, class_name, split, n, layer, checkpoint, device):
    """Write Grad-CAM overlays (image, map, overlay) showing where the classifier looks.

    \b
    Examples:
      genlab explain runs/lesion_brain/20260101-120000 scan.png --out explain/
      genlab explain runs/lesion_brain/20260101-120000 --split test --n 16 --out explain/
      genlab explain runs/lesion_brain/20260101-120000 --split test --layer block2 --out explain/
    """
    if bool(images) == bool(split):
        raise GenlabError("give IMAGE files or --split SPLIT (not both, not neither)")
    run = _load(run_dir, checkpoint, device, "genlab explain", need_data=split is not None)
    names = list(run.info.class_names)
    if layer is not None:
        _check_layer(run.model, layer, tuple(run.info.input_shape))
    elif not run.model.can_explain:
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
    written = _write_overlays(run.model, x, masks, cls, names, labels, truth, Path(out), layer)
    click.echo(f"wrote {written} overlay(s) to {out}" + (f" (Grad-CAM at layer {layer})" if layer else ""))


def _check_layer(model, layer: str, input_shape: tuple[int, ...]) -> None:
    """--layer names a backbone layer whose output is a (B, C, h, w) map, else one line."""
    from genlab.nn.layer_names import find_layers, layer_shapes

    try:
        find_layers(model.backbone, [layer])
    except ValueError as e:
        raise GenlabError(f"--layer {layer}: {e}") from None
    shapes = layer_shapes(model.backbone, input_shape)
    if shapes[layer] is None or len(shapes[layer]) != 3:
        maps = [n for n, s in shapes.items() if s is not None and len(s) == 3]
        raise GenlabError(f"--layer {layer}: its output is {shapes[layer]}, not a (C, h, w) map; "
                          f"Grad-CAM layers: {', '.join(maps)}")


def _write_overlays(model, x, masks, cls, names, labels, truth, out: Path, layer: str | None = None) -> int:
    """One Grad-CAM figure per image (32 at a time); prints a line per file; returns the count."""
    from genlab.metrics.gradcam import save_gradcam_figure

    out.mkdir(parents=True, exist_ok=True)
    for s in range(0, len(x), 32):
        xs = x[s:s + 32]
        probs = model.predict_proba(xs).cpu()
        cams = (model.gradcam(xs, cls) if layer is None else model.gradcam(xs, cls, layer=layer)).cpu()
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
            click.echo(f"{path}: {title}")
    return len(x)


COMMANDS = (eval_cmd, predict_cmd, explain_cmd)
