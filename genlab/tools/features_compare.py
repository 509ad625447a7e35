"""One comparison table per call: a linear probe on every (layer, scale, aggregation) of a frozen
network (genlab.tools.features), fitted and scored as genlab.tools.probe does.

    for each batch of the train / val / report split, for each scale:
        one forward pass catches every asked layer's map
        -> pooled vectors (mean / max / meanmax) and VLAD residual sums (k = each --vlad value)
    -> per row: normalise (standard | l2 | power_l2) -> [PCA] -> LinearSVC or logistic regression,
       C chosen on val -> the report split's accuracy, lesion AUC (top-5 when K > 5)

With several scales a row "1+1.5+..." combines them: the per-scale pooled vectors averaged (mean)
or maxed (max), and for VLAD the residual sums of all scales added before normalising (one
codebook per layer serves every scale). The k-means codebook, and with --pca the PCA of the local
descriptors, are fitted on a random sample of the training images' descriptors (at most
`max_descriptors`); the train split is then read a second time to encode it. For pooled rows
--pca reduces the normalised vectors (skipped where they have no more numbers than that).
"""
from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import torch

from genlab.core.errors import GenlabError
from genlab.tools import features as F
from genlab.tools import probe


@dataclass
class CompareSpec:
    layers: list[str]
    scales: list[float] = field(default_factory=lambda: [1.0])
    pools: list[str] = field(default_factory=lambda: ["mean"])
    vlad: list[int] = field(default_factory=list)
    clf: str = "svm"
    norm: str = "standard"
    pca: int | None = None
    c_grid: tuple[float, ...] = probe.DEFAULT_C_GRID
    n_train: int = 2000
    limit: int | None = None
    split: str = "test"
    batch_size: int = 128
    max_descriptors: int = 50_000


def scale_label(scales: list[float]) -> str:
    return "+".join(f"{s:g}" for s in scales)


class _Collector:
    """Runs the forward passes and keeps what every row needs, per split."""

    def __init__(self, src: probe.ProbeSource, spec: CompareSpec):
        self.src, self.spec = src, spec
        self.taps = F.LayerTaps(src.backbone, spec.layers, src.info.input_shape)
        self.pooled: dict[tuple, list[torch.Tensor]] = defaultdict(list)
        self.sums: dict[tuple, list[torch.Tensor]] = defaultdict(list)
        self.labels: dict[str, np.ndarray] = {}
        self.samples: dict[str, list[np.ndarray]] = defaultdict(list)
        self.centres: dict[tuple[str, int], torch.Tensor] = {}
        self.pca: dict[str, tuple[torch.Tensor, torch.Tensor] | None] = {}
        self.seconds: dict[tuple, float] = defaultdict(float)
        self.forward_s = 0.0
        self.rng = np.random.default_rng(src.recipe.seed)
        self.device = next((p.device for p in src.backbone.parameters()), torch.device("cpu"))

    def size(self, split: str) -> int:
        n = self.spec.n_train if split == "train" else self.spec.limit
        total = self.src.data.size(split)
        return total if n is None else min(int(n), total)

    def run(self, split: str, pool: bool, sample: bool, encode: bool) -> None:
        from genlab.data.sampler import eval_batches

        n = self.size(split)
        per_image = max(1, self.spec.max_descriptors // max(1, n * len(self.spec.scales)))
        ys = []
        with torch.random.fork_rng(devices=[]):
            for idx in eval_batches(n, self.spec.batch_size):
                batch = self.src.data.get(split, idx)
                if "y" not in batch:
                    raise GenlabError(f"{self.src.run_dir}: data {self.src.info.name!r} has no labels "
                                      f"to probe")
                ys.append(batch["y"].long().cpu())
                x = batch["x"].to(self.device).float()
                for s in self.spec.scales:
                    t0 = time.perf_counter()
                    maps = self.taps(x, s)
                    self.forward_s += time.perf_counter() - t0
                    for layer, fmap in maps.items():
                        self._take(split, layer, s, fmap, pool, sample, encode, per_image)
        self.labels[split] = torch.cat(ys).numpy()

    def _take(self, split, layer, s, fmap, pool, sample, encode, per_image) -> None:
        if pool:
            for how in self.spec.pools:
                t0 = time.perf_counter()
                self.pooled[(split, layer, s, how)].append(F.pool(fmap, how).double().cpu())
                self.seconds[(layer, s, how)] += time.perf_counter() - t0
        if not self.spec.vlad or not (sample or encode):
            return
        desc = F.descriptors(fmap)
        if sample:
            for d in desc:
                pick = self.rng.choice(len(d), size=min(per_image, len(d)), replace=False)
                self.samples[layer].append(d[torch.from_numpy(np.sort(pick))].cpu().numpy())
            return
        t0 = time.perf_counter()
        desc = self._project(layer, desc)
        shared = (time.perf_counter() - t0) / len(self.spec.vlad)
        for k in self.spec.vlad:
            t0 = time.perf_counter()
            self.sums[(split, layer, s, k)].append(F.vlad_sums(desc, self.centres[(layer, k)]).cpu())
            self.seconds[(layer, s, f"vlad{k}")] += time.perf_counter() - t0 + shared

    def _project(self, layer: str, desc: torch.Tensor) -> torch.Tensor:
        p = self.pca.get(layer)
        return desc if p is None else (desc - p[0]) @ p[1].T

    def fit_codebooks(self) -> None:
        from sklearn.decomposition import PCA

        seed = self.src.recipe.seed
        for layer in self.taps.names:
            t0 = time.perf_counter()
            desc = np.concatenate(self.samples.pop(layer)).astype(np.float32)
            pca = self.spec.pca
            if pca is not None and pca < desc.shape[1] and pca <= len(desc):
                fitted = PCA(n_components=pca, random_state=seed).fit(desc)
                self.pca[layer] = (torch.from_numpy(fitted.mean_.astype(np.float32)).to(self.device),
                                   torch.from_numpy(fitted.components_.astype(np.float32)).to(self.device))
                desc = fitted.transform(desc).astype(np.float32)
            else:
                self.pca[layer] = None
            for k in self.spec.vlad:
                t1 = time.perf_counter()
                self.centres[(layer, k)] = torch.from_numpy(F.fit_codebook(desc, k, seed)).to(self.device)
                share = time.perf_counter() - t1 + (t1 - t0) / len(self.spec.vlad)
                for s in self.spec.scales:
                    self.seconds[(layer, s, f"vlad{k}")] += share / len(self.spec.scales)


def _rows_of(col: _Collector, spec: CompareSpec):
    """(layer, scale label, aggregation, {split: matrix}, seconds) for every row, in table order."""
    splits = list(col.labels)
    multi = len(spec.scales) > 1
    for layer in col.taps.names:
        for s in [*spec.scales, None] if multi else spec.scales:
            scales = spec.scales if s is None else [s]
            label = scale_label(scales)
            for how in spec.pools:
                mats = {}
                for sp in splits:
                    per = [torch.cat(col.pooled[(sp, layer, v, how)]) for v in scales]
                    mats[sp] = per[0] if len(per) == 1 else _combine(per, how)
                yield layer, label, how, mats, sum(col.seconds[(layer, v, how)] for v in scales)
            for k in spec.vlad:
                mats = {sp: F.vlad_normalise(sum(torch.cat(col.sums[(sp, layer, v, k)]) for v in scales)
                                             ).double() for sp in splits}
                yield (layer, label, f"VLAD k={k}", mats,
                       sum(col.seconds[(layer, v, f"vlad{k}")] for v in scales))


def _combine(per: list[torch.Tensor], how: str) -> torch.Tensor:
    stack = torch.stack(per)
    if how == "mean":
        return stack.mean(0)
    if how == "max":
        return stack.amax(0)
    half = per[0].shape[1] // 2  # meanmax: the mean half averaged, the max half maxed
    return torch.cat([stack[..., :half].mean(0), stack[..., half:].amax(0)], 1)


def compare(src: probe.ProbeSource, spec: CompareSpec, say=print) -> dict:
    """Extract, fit and score every row; returns {"header": ..., "rows": [...]}."""
    from genlab.metrics.classification import classification_report

    col = _Collector(src, spec)
    report_split = spec.split
    say(f"extracting {', '.join(col.taps.names)} at scale {scale_label(spec.scales)} ...")
    col.run("train", pool=True, sample=bool(spec.vlad), encode=False)
    if spec.vlad:
        col.fit_codebooks()
        col.run("train", pool=False, sample=False, encode=True)
    for split in dict.fromkeys(["val", report_split]):
        col.run(split, pool=True, sample=False, encode=bool(spec.vlad))
    names = list(src.info.class_names)
    positive = [i for i in range(len(names)) if i not in src.negative] if src.negative else None
    y = {sp: col.labels[sp] for sp in col.labels}
    rows = []
    for layer, label, how, mats, agg_s in _rows_of(col, spec):
        t0 = time.perf_counter()
        xs = {sp: m.numpy() for sp, m in mats.items()}
        dim = xs["train"].shape[1]
        pca = spec.pca if (spec.pca is not None and not how.startswith("VLAD")
                           and spec.pca < min(xs["train"].shape)) else None
        res = probe.fit(spec.clf, xs["train"], y["train"], xs["val"], y["val"], pca, spec.c_grid,
                        src.recipe.seed, spec.norm)
        probs = res.predict_proba(xs[report_split], len(names))
        rep = classification_report(y[report_split], probs, names, positive=positive, top_k=(5,))
        desc_pca = col.pca.get(layer) if how.startswith("VLAD") else None
        rows.append({"layer": layer, "scale": label, "features": how, "dim": int(dim),
                     "pca": pca or (int(desc_pca[1].shape[0]) if desc_pca is not None else None),
                     "accuracy": rep["accuracy"], "top5": rep["top_k_accuracy"].get("5"),
                     "lesion_auc": rep["binary"]["auc"] if rep["binary"] else None, "C": res.c,
                     "seconds": round(agg_s + time.perf_counter() - t0, 2)})
        say(f"  {layer} @ {label} {how}: accuracy {rep['accuracy']:.3f} ({dim} numbers)")
    header = {"run": str(src.run_dir), "encoder": src.origin, "split": report_split,
              "n_train": len(y["train"]), "n_val": len(y["val"]), "n_report": len(y[report_split]),
              "classifier": probe.CLF_ALIASES.get(spec.clf, spec.clf), "norm": spec.norm, "pca": spec.pca,
              "num_classes": len(names), "lesion": positive is not None,
              "forward_seconds": round(col.forward_s, 2), "name": src.recipe.name}
    return {"header": header, "rows": rows}


def markdown(result: dict) -> str:
    """The comparison as one Markdown table with a short caption."""
    h, rows = result["header"], result["rows"]
    clf = "linear SVM" if h["classifier"] == "svm" else "logistic regression"
    top5 = h["num_classes"] > 5
    cols = ["layer", "scale", "features", "dim", "accuracy"] + (["top-5"] if top5 else []) \
        + (["lesion AUC"] if h["lesion"] else []) + ["seconds"]
    out = [f"**{h['name']}** — {h['split']} split, {h['n_report']} images; {clf} (C chosen on "
           f"{h['n_val']} val images) on {h['n_train']} train images; norm {h['norm']}"
           + (f", PCA {h['pca']}" if h["pca"] else "") + f"; random guess {1 / h['num_classes']:.3f}; "
           f"forward passes {h['forward_seconds']:.1f} s. Encoder: {h['encoder']}.", "",
           "| " + " | ".join(cols) + " |",
           "|" + "|".join("---:" if c in ("dim", "accuracy", "top-5", "lesion AUC", "seconds") else "---"
                          for c in cols) + "|"]
    for r in rows:
        feats = r["features"] + (f", PCA {r['pca']}" if r["pca"] else "")
        cells = [r["layer"], r["scale"], feats, str(r["dim"]), _num(r["accuracy"])]
        cells += [_num(r["top5"])] if top5 else []
        cells += [_num(r["lesion_auc"])] if h["lesion"] else []
        cells.append(f"{r['seconds']:.1f}")
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def _num(v) -> str:
    return "-" if v is None else f"{v:.3f}"


__all__ = ["CompareSpec", "compare", "markdown", "scale_label"]
