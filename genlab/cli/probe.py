"""`genlab probe`: a scikit-learn linear classifier on any run's frozen encoder
(genlab.tools.probe), reported with the metrics and figures of `genlab eval`; with --layer,
--scales, --vlad or --report, one comparison table over layers, scales and aggregations
(genlab.tools.features_compare); --list-layers names the layers."""
from __future__ import annotations

from pathlib import Path

import click
import torch

from genlab.cli.common import CONTEXT, checkpoint_option, device_option, run_dir_argument
from genlab.cli.report import write_report
from genlab.core.errors import GenlabError


def _csv(kind, choices=None):
    """A comma-separated option value as a list of `kind` (checked against `choices`)."""
    def convert(ctx, param, value):
        if value is None:
            return None
        try:
            items = [kind(v.strip()) for v in str(value).split(",") if v.strip()]
        except ValueError:
            raise click.BadParameter(f"{value!r}: expected a comma-separated list of {kind.__name__}s",
                                     param=param) from None
        bad = [v for v in items if (choices is not None and v not in choices)
               or (kind is not str and v <= 0)]
        if not items or bad:
            want = f"one or more of {', '.join(choices)}" if choices else "positive numbers"
            raise click.BadParameter(f"{value!r}: expected {want}, comma-separated", param=param)
        return list(dict.fromkeys(items))
    return convert


@click.command("probe", context_settings=CONTEXT)
@run_dir_argument
@click.option("--clf", type=click.Choice(["svm", "linear_svm", "logreg"]), default=None,
              help="Linear SVM (LinearSVC; svm and linear_svm are the same) or logistic regression; "
                   "required for a single probe; a comparison (--layer, --scales, --vlad, --report) "
                   "defaults to linear_svm. Example: --clf linear_svm")
@click.option("--list-layers", is_flag=True,
              help="Print the named layers of the run's encoder/backbone with their output shapes, "
                   "and stop. Example: --list-layers")
@click.option("--layer", "layers", multiple=True, metavar="NAME",
              help="Layer to take features from (names: --list-layers; 'output' = the network's "
                   "output); repeatable: one comparison table. Example: --layer block2 --layer block3")
@click.option("--scales", callback=_csv(float), default=None, metavar="S,S,...",
              help="Image scales (input resized, fully convolutional extraction); with several, a "
                   "row combining them too. Example: --scales 1,1.5,2")
@click.option("--pool", callback=_csv(str, ("none", "mean", "max", "meanmax")), default=None,
              metavar="HOW[,HOW]",
              help="none (default without --layer): the encoder's output vector; mean/max/meanmax: "
                   "global pooling of the conv map (the last one, or each --layer's; default mean "
                   "there); comma-separated in a comparison. Example: --pool mean,max")
@click.option("--vlad", callback=_csv(int), default=None, metavar="K[,K]",
              help="Add VLAD rows: k-means with K centres on the layer's local descriptors (map "
                   "positions) of the training images, intra- and L2-normalised residual sums. "
                   "Example: --vlad 64,128")
@click.option("--norm", type=click.Choice(["standard", "l2", "power_l2"]), default="standard",
              show_default=True,
              help="Feature normalisation before the classifier: standardise, unit L2 length, or "
                   "signed square root then L2. Example: --norm l2")
@click.option("--pca", type=click.IntRange(min=1), default=None,
              help="Reduce the normalised features to this many principal components first (VLAD: "
                   "the local descriptors, before k-means). Example: --pca 128")
@click.option("--report", "report_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the comparison as a Markdown table to this file. Example: --report probe.md")
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
@checkpoint_option("Classifier runs: best.pt or the newest step checkpoint. Example: --checkpoint last")
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Output folder (default RUN_DIR/probe/<setting>/<split>). Example: --out /tmp/probe")
@device_option("Device for the feature extraction. Example: --device cuda")
@click.option("--batch-size", type=click.IntRange(min=1), default=128, show_default=True,
              help="Images per forward pass. Example: --batch-size 256")
def probe_cmd(run_dir, clf, list_layers, layers, scales, pool, vlad, norm, pca, report_file, split,
              n_train, limit, c_grid, data_overrides, checkpoint, out, device, batch_size):
    """Fit a linear SVM or logistic regression on frozen encoder features (a fixed feature
    extractor) and report the metrics of `genlab eval`.

    RUN_DIR is a run that exported an encoder (export/: ae, dae, rbm, dbn, gan runs) or a
    classifier run (its backbone). The features come from the run's own data: the classifier is
    fitted on the first --n-train train images, C is chosen on val, and --split is reported.
    Writes metrics.json, confusion_matrix.png and roc.png as `genlab eval` does.

    With --layer, --scales, --vlad or --report it compares instead: one row per layer x scale x
    aggregation (each --pool, each --vlad K), each a probe fitted the same way, in one Markdown
    table (printed; written to --report and to <out>/table.md with table.json).

    \b
    Examples:
      genlab probe runs/dae_brain/20260101-120000 --clf logreg
      genlab probe runs/dae_brain/20260101-120000 --clf svm --pool mean --pca 32
      genlab probe runs/lesion_brain_binary/20260101-120000 --clf svm --n-train 5000
      genlab probe runs/lesion_brain/20260101-120000 --list-layers
      genlab probe runs/lesion_brain/20260101-120000 --clf svm --layer block3 --scales 1,1.5 --vlad 64
      genlab probe runs/lesion_brain/20260101-120000 --clf logreg --layer block2 --norm l2 --report p.md
    """
    import time

    from genlab.core.devices import select_device
    from genlab.metrics.classification import classification_report, format_report
    from genlab.tools import probe

    comparing = bool(layers or vlad or scales or report_file or len(pool or []) > 1)
    if clf is None and comparing:
        clf = "linear_svm"  # the extractor workflow's classic read-out (L2-normalised features + linear SVM)
    if clf is None and not list_layers:
        raise GenlabError("--clf: missing; give svm (= linear_svm) or logreg")
    t0 = time.perf_counter()
    src = probe.load_source(run_dir, select_device(device), checkpoint, data_overrides)
    if list_layers:
        from genlab.tools import features

        click.echo(f"{src.recipe.name}: layers of the {src.origin}, input {tuple(src.info.input_shape)}\n")
        click.echo(features.format_layers(features.list_layers(src.backbone, src.info.input_shape)))
        return
    if comparing:
        _compare(src, run_dir, clf, layers, scales, pool, vlad, norm, pca, report_file, split, n_train,
                 limit, c_grid, out, batch_size)
        return
    pool = (pool or ["none"])[0]
    names = list(src.info.class_names)
    clf = probe.CLF_ALIASES.get(clf, clf)
    x_tr, y_tr = probe.extract(src, "train", n_train, pool, batch_size)
    x_va, y_va = probe.extract(src, "val", limit, pool, batch_size)
    x_te, y_te = probe.extract(src, split, limit, pool, batch_size) if split != "val" else (x_va, y_va)
    res = probe.fit(clf, x_tr, y_tr, x_va, y_va, pca, c_grid or probe.DEFAULT_C_GRID, src.recipe.seed, norm)
    probs = res.predict_proba(x_te, len(names))
    positive = [i for i in range(len(names)) if i not in src.negative] if src.negative else None
    report = classification_report(y_te, probs, names, positive=positive, top_k=(5,))
    setting = probe.probe_name(clf, pca, pool, norm)
    out = Path(out) if out is not None else run_dir / "probe" / setting / split
    feats = probe.describe(pool, pca, x_tr.shape[1], norm)
    header = {"run": str(run_dir), "split": split, "encoder": src.origin, "step": src.step,
              "data_overrides": list(data_overrides),
              "probe": {"classifier": clf, "features": feats, "feature_dim": int(x_tr.shape[1]),
                        "input_dim": pca or int(x_tr.shape[1]), "pool": pool, "pca": pca, "norm": norm,
                        "n_train": len(y_tr), "n_val": len(y_va),
                        "C": res.c, "c_grid": probe.jsonable_grid(res.val_accuracy),
                        "temperature": res.temperature, "seconds": round(time.perf_counter() - t0, 2)}}
    figures = write_report(out, report, torch.from_numpy(y_te), torch.from_numpy(probs), names,
                           title=f"{src.recipe.name} — probe {setting} — {split}", run_dir=run_dir,
                           tb_prefix=f"probe/{setting}/{split}", step=max(src.step, 0), header=header)
    grid = "  ".join(f"C={c:g}: {a:.3f}" for c, a in res.val_accuracy.items())
    temp = f", SVM temperature {res.temperature:.3g}" if res.temperature else ""
    click.echo(f"{src.recipe.name}: probe {clf} on {feats}; encoder: {src.origin}\n"
               f"fit on {len(y_tr)} train images; val accuracy per C ({len(y_va)} images): {grid}\n"
               f"chosen C = {res.c:g}{temp}; {split} split, {report['n']} images\n")
    click.echo(format_report(report))
    click.echo(f"\nwrote {out / 'metrics.json'}, {', '.join(f'{k}.png' for k in figures)}")


def _compare(src, run_dir, clf, layers, scales, pools, vlad, norm, pca, report_file, split, n_train,
             limit, c_grid, out, batch_size) -> None:
    """The comparison table (genlab.tools.features_compare)."""
    from genlab.core.files import write_json
    from genlab.nn.layer_names import layer_path
    from genlab.tools import features_compare as fc
    from genlab.tools import probe
    from genlab.tools.features import OUTPUT

    pools = pools or ["mean"]
    if "none" in pools:
        raise click.BadParameter("none: a comparison pools every layer's map; use mean, max or meanmax",
                                 param_hint="'--pool'")
    if not layers:  # the last conv map, as --pool uses without --layer
        layers = [layer_path(src.backbone, src.pool_layer) if src.pool_layer is not None else OUTPUT]
    spec = fc.CompareSpec(layers=list(layers), scales=scales or [1.0], pools=pools, vlad=vlad or [],
                          clf=clf, norm=norm, pca=pca, c_grid=tuple(c_grid or probe.DEFAULT_C_GRID),
                          n_train=n_train, limit=limit, split=split, batch_size=batch_size)
    result = fc.compare(src, spec, say=click.echo)
    table = fc.markdown(result)
    out = Path(out) if out is not None else run_dir / "probe" / "compare" / split
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(table)
    write_json(out / "table.json", result)
    click.echo("\n" + table)
    written = [out / "table.md", out / "table.json"]
    if report_file is not None:
        report_file.parent.mkdir(parents=True, exist_ok=True)
        report_file.write_text(table)
        written.insert(0, report_file)
    click.echo(f"wrote {', '.join(map(str, written))}")


COMMANDS = (probe_cmd,)
