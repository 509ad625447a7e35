"""`genlab probe`: a scikit-learn linear classifier on any run's frozen encoder
(genlab.tools.probe), reported with the metrics and figures of `genlab eval`."""
from __future__ import annotations

from pathlib import Path

import click
import torch

from genlab.cli.common import CONTEXT, checkpoint_option, device_option, run_dir_argument
from genlab.cli.report import write_report


@click.command("probe", context_settings=CONTEXT)
@run_dir_argument
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
@checkpoint_option("Classifier runs: best.pt or the newest step checkpoint. Example: --checkpoint last")
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Output folder (default RUN_DIR/probe/<setting>/<split>). Example: --out /tmp/probe")
@device_option("Device for the feature extraction. Example: --device cuda")
@click.option("--batch-size", type=click.IntRange(min=1), default=128, show_default=True,
              help="Images per forward pass. Example: --batch-size 256")
def probe_cmd(run_dir, clf, pca, pool, split, n_train, limit, c_grid, data_overrides, checkpoint, out,
              device, batch_size):
    """Fit a linear SVM or logistic regression on frozen encoder features (a fixed feature
    extractor) and report the metrics of `genlab eval`.

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

    from genlab.core.devices import select_device
    from genlab.metrics.classification import classification_report, format_report
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
    temp = f", SVM temperature {res.temperature:.3g}" if res.temperature else ""
    click.echo(f"{src.recipe.name}: probe {clf} on {feats}; encoder: {src.origin}\n"
               f"fit on {len(y_tr)} train images; val accuracy per C ({len(y_va)} images): {grid}\n"
               f"chosen C = {res.c:g}{temp}; {split} split, {report['n']} images\n")
    click.echo(format_report(report))
    click.echo(f"\nwrote {out / 'metrics.json'}, {', '.join(f'{k}.png' for k in figures)}")


COMMANDS = (probe_cmd,)
