"""Why a conditional GAN's Fréchet distance under a lesion judge stays far above its floor.

A measurement, not a training: it loads a finished run of the atlas generator
(`recipes/cgan_brain_easy_atlas.yaml`), its lesion judge and its data, and prints Markdown tables
(every number also goes to --out, a JSON file):

  1 per class    FD of the samples of class c against real class c (times that class's real-vs-real
                 floor; the share of it that is the mean term |mu_f - mu_r|^2), the FD of all classes,
                 and the FD of all classes with one class's samples swapped for real slices
  2 direction    where class c's mean shift points: t = the shift along the real healthy -> c
                 direction in units of its length (0.5: half as far again from healthy as real c),
                 its share of |shift|^2, the same toward the other class k whose direction holds
                 most of it (t < 0: away from k), the share in the top 10 PCs of the real features, the
                 samples' feature spread against the real (trace of the covariances), and the
                 judge's logit for c on the samples against on real c (over-confident samples)
  3 generator    G's lesion parameters per class: discs on, their sigma (radius) and amplitude
                 (opacity: g_lesion_profile ramp), the lesion gain, the
                 gain's logit and the share of the gradient its sigmoid passes there (1 at 0)
  4 images       simple statistics per class of real and generated slices (residual to the atlas)
  5 real, one change   FD of real slices with one property changed, each alone (the exact tumour
                 layer and noise come from the factory: the same slices drawn with opacity 0, and
                 without noise)
  6 samples, one change   FD of the samples with the lesion gain set (or drawn as the data's) or
                 the disc sigma scaled, all else as drawn; and what D says of them (its real/fake
                 score and its class head's cross-entropy, which G's AC term minimises)
  7 the floor    real-vs-real FD at several n, random halves and class-balanced halves

Protocol: the real slices are val[0, 2n) (the split resized to 2n; sample i of a split does not
depend on the split's size); the reference is val[n, 2n), the real sample val[0, n), and the
generated samples are drawn with the trainer's evaluation noise (eval_generator, batches of 250)
for the labels of val[0, n). With --n 500 this is the trainer's own `fid/<judge>` and floor.

    python scripts/gan_fd_diagnosis.py runs/cgan_brain_easy_atlas/<stamp> --steps 2000 4000
    python scripts/gan_fd_diagnosis.py RUN --steps all --only 13 --figure fd_by_step.png

One CPU thread: ~15 s per checkpoint for tables 1-3 at n = 2,000; all tables at two checkpoints
~9 min (table 6 draws 2 x 10 x 2,000 samples), ~3 min at n = 500.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from genlab.core.errors import GenlabError
from genlab.engine import checkpoints as ckpt
from genlab.engine.runs import load_run
from genlab.families.base import eval_generator
from genlab.families.gan_judge import load_lesion_judge
from genlab.metrics import generative as gm
from genlab.nn.atlas import blur, gaussian_kernel

BATCH = 250  # the recipe's eval_batch_size: the trainer's evaluation noise is seeded per batch
LESION_LEVEL = 0.08  # lesion pixel: the 1-px-blurred residual to the atlas above this
HEAD_LEVEL = 0.1  # head pixel: the atlas rendering above this (the background is ~0.03)
DATA_GAIN = ((0.30, 0.45), (0.75, 1.0))  # the factory's TUMOUR_GAIN and easy OPACITY ranges


def data_like_gain(g: torch.Tensor) -> torch.Tensor:
    """The factory's tumour brightness per image: gain x opacity, each uniform in its range (one
    opacity per image here, one per disc there); G multiplies it by its pose gain as the factory
    does by its contrast."""
    (g0, g1), (o0, o1) = DATA_GAIN
    return (g0 + (g1 - g0) * torch.rand_like(g)) * (o0 + (o1 - o0) * torch.rand_like(g))


# Table 6: (label, lesion gain: None = G's own, a number, or a function of G's; disc sigma factor
# per class name). C's sigma x1.25: step 2,000's 0.59 px to step 4,000's 0.75 px (a learnt-gain
# G); the smaller steps, for a G whose least sigma for C holds it at 0.8 px
SAMPLE_CHANGES = [("as drawn", None, {}), ("gain as the data's (0.30-0.45 x 0.75-1)", data_like_gain, {}),
                  *((f"gain {g}", g, {}) for g in (0.2, 0.3, 0.35, 0.4, 0.5, 0.6)),
                  *((f"{c}'s sigma x{f}", None, {c: f}) for c in ("A", "C") for f in (0.8, 0.9, 1.1)),
                  ("C's sigma x1.25", None, {"C": 1.25}),
                  ("gain as the data's, C's sigma x1.25", data_like_gain, {"C": 1.25})]


# ------------------------------------------------------------------------------ drawing, judging
def judge_features(judge, images: torch.Tensor) -> np.ndarray:
    parts = [judge.features(images[i:i + BATCH]) for i in range(0, len(images), BATCH)]
    return torch.cat(parts).double().numpy()


def draw_samples(model, labels: torch.Tensor, gain=None, sigma_scale: dict | None = None) -> torch.Tensor:
    """EMA samples for `labels` with the trainer's evaluation noise; `gain` replaces G's lesion
    gain (a number, or a function of G's (B,) gains), `sigma_scale` ({class name: factor})
    multiplies the sigma of that class's discs."""
    G = model.G_ema
    draw = G.draw_discs
    names = list(model.info.class_names)

    def changed(h, u_area, u_slots, u_angle=None, y=None, u_count=None):
        c, s, amp, g = draw(h, u_area, u_slots, u_angle, y, u_count)
        g = g if gain is None else gain(g) if callable(gain) else torch.full_like(g, gain)
        factor = torch.ones_like(g)
        for name, f in (sigma_scale or {}).items():
            factor[y == names.index(name)] = f
        return c, s * factor[:, None], amp, g
    G.draw_discs = changed
    # a G that draws its gain from the latent (gain_draw): the latent keeps its layout, and the
    # override replaces that draw (forward reads the flag again after splitting the latent)
    drawn, split = G.gain_draw, G.split_latent

    def split_keeping_layout(latent):
        G.gain_draw = drawn
        parts = split(latent)
        G.gain_draw = drawn and gain is None
        return parts
    G.split_latent = split_keeping_layout
    torch.manual_seed(0)  # data_like_gain's draws: the same in every run
    try:
        out = []
        for s in range(0, len(labels), BATCH):
            idx = torch.arange(s, min(s + BATCH, len(labels)))
            z = model._noise(len(idx), "cpu", eval_generator({"index": idx}))
            out.append(G(z, labels[idx]).float())
        return torch.cat(out)
    finally:
        G.draw_discs, G.gain_draw, G.split_latent = draw, drawn, split


def fd_parts(a: np.ndarray, b: np.ndarray) -> dict:
    m1, s1 = gm.gaussian_stats(a)
    m2, s2 = gm.gaussian_stats(b)
    return {"fd": gm.frechet_from_stats(m1, s1, m2, s2), "mean": float(((m1 - m2) ** 2).sum()),
            "trace_ratio": float(np.trace(s1) / np.trace(s2))}


def fd_table(feats, ref, real, y, yref, names) -> dict:
    """FD of `feats` (drawn for labels y) against the reference: all, the first 500 against the
    reference's first 500, per class, and all with class c's rows swapped for `real`'s."""
    out = {"all": fd_parts(feats, ref), "all_500": fd_parts(feats[:500], ref[:500])}
    for c, name in enumerate(names):
        out[name] = fd_parts(feats[y == c], ref[yref == c])
        if real is not None:
            out["swap_" + name] = fd_parts(np.where((y == c)[:, None], real, feats), ref)
    return out


def direction(feats, ref, y, yref, names, negative: int, judge) -> dict:
    """Table 2: each lesion class's mean shift against the real healthy -> class direction."""
    pcs = np.linalg.svd(ref - ref.mean(0), full_matrices=False)[2][:10]
    mu_healthy = ref[yref == negative].mean(0)

    def logit(f, c):  # the judge's mean logit for class c, minus its mean over the other classes
        z = judge.head(torch.from_numpy(f).float()).double()
        return float((z[:, c] - (z.sum(1) - z[:, c]) / (z.shape[1] - 1)).mean())
    out = {}
    for c, name in enumerate(names):
        if c == negative:
            continue
        mu = ref[yref == c].mean(0)
        d = feats[y == c].mean(0) - mu
        u = mu - mu_healthy
        # the other class whose direction (from real c to it) holds most of the shift
        along = {names[k]: float(d @ (ref[yref == k].mean(0) - mu)) for k in range(len(names)) if k != c}
        share = {k: v ** 2 / float(((ref[yref == names.index(k)].mean(0) - mu) ** 2).sum()) / float(d @ d)
                 for k, v in along.items()}
        near = max(share, key=share.get)
        u_near = ref[yref == names.index(near)].mean(0) - mu
        out[name] = {"t": float(d @ u / (u @ u)), "share_along": float((d @ u) ** 2 / (u @ u) / (d @ d)),
                     "most_aligned_class": near, "t_toward_it": float(d @ u_near / (u_near @ u_near)),
                     "share_toward_it": share[near],
                     "share_top10_pcs": float(((pcs @ d) ** 2).sum() / (d @ d)),
                     "trace_ratio": fd_parts(feats[y == c], ref[yref == c])["trace_ratio"],
                     "logit_samples": logit(feats[y == c], c), "logit_real": logit(ref[yref == c], c)}
    return out


def generator_stats(model, names, negative: int) -> dict:
    """Table 3: G's lesion parameters per class, on the evaluation noise of the first batch."""
    G = model.G_ema
    p = G.split_latent(model._noise(BATCH, "cpu", eval_generator({"index": torch.arange(BATCH)})))
    out = {}
    for c, name in enumerate(names):
        if c == negative:
            continue
        y = torch.full((BATCH,), c)
        h = G.trunk(torch.cat([p["z"], G.embed(y)], 1))
        _, sigma, amp, gain = G.draw_discs(h, p["area"], p["slots"], p.get("angle"), y, p.get("count"))
        logit = G.area(h)[:, 1]  # the gain is lo + (hi - lo) sigmoid(this): genlab.nn.gan_atlas
        profile = getattr(G, "profile", "gaussian")  # a name, or one per class
        ramp = (profile if isinstance(profile, str) else profile[c]) == "ramp"  # radius, opacity
        on = amp > (0.25 if ramp else 1)
        out[name] = {"discs": float(on.float().sum(1).mean()),
                     "sigma_px": float(sigma[on].mean()) if on.any() else math.nan,
                     "amp": float(amp[on].mean()) if on.any() else math.nan,
                     "lesion_gain": float(gain.mean()), "gain_logit": float(logit.median()),
                     "gain_grad_share": float((4 * torch.sigmoid(logit) * torch.sigmoid(-logit)).mean())}
    return out


def d_says(model, images: torch.Tensor, labels: torch.Tensor, names, negative: int) -> dict:
    """Table 6: D's mean real/fake score and its class head's cross-entropy per lesion class (no
    augmentation; D's own view of the slice)."""
    score, ce = [], []
    for s in range(0, len(images), BATCH):
        y = labels[s:s + BATCH]
        d, cls = model.D(model._view(images[s:s + BATCH]), y, True)
        score.append(d.float())
        ce.append(F.cross_entropy(cls.float(), y, reduction="none"))
    score, ce = torch.cat(score), torch.cat(ce)
    return {name: {"d_score": float(score[labels == c].mean()), "ac_ce": float(ce[labels == c].mean())}
            for c, name in enumerate(names) if c != negative}


# ------------------------------------------------------------------------------------ images
def image_stats(atlas, x: torch.Tensor, y: np.ndarray, names) -> dict:
    """Table 4, per class means: residual r = x - atlas(x) (the atlas at the pose its own pose
    net reads from x, for real and generated slices alike)."""
    k1 = gaussian_kernel(1.0)
    rows = []
    for s in range(0, len(x), BATCH):
        xb = x[s:s + BATCH]
        a = atlas(xb)[0]
        r = xb - a
        for xi, ai, ri, rbi in zip(*(t[:, 0].numpy() for t in (xb, a, r, blur(r, k1)))):
            head = ai > HEAD_LEVEL
            les = (rbi > LESION_LEVEL) & head
            lab, n = ndimage.label(les, structure=np.ones((3, 3)))
            areas = np.asarray(ndimage.sum(les, lab, range(1, n + 1))) if n else np.zeros(0)
            bg = head & ~ndimage.binary_dilation(les, iterations=3)
            rl, out = ri[les], xi[ai < 0.05]  # out: the background (none where the offset lifts it)
            rows.append({"lesion px": float(les.sum()), "blobs": float((areas >= 2).sum()),
                         "peak": float(ri[head].max()),
                         "lesion mean": float(rl.mean()) if rl.size else math.nan,
                         "resid sd bg": float(ri[bg].std()), "resid max bg": float(np.abs(ri[bg]).max()),
                         "sd outside head": float(out.std()) if out.size else math.nan,
                         "mean": float(xi.mean())})
    return {name: {k: float(np.nanmean([r[k] for r, yy in zip(rows, y) if yy == c])) for k in rows[0]}
            for c, name in enumerate(names)}


def real_variants(data, atlas, n: int) -> dict[str, torch.Tensor]:
    """Table 5: val[0, n) with one property changed. x = x0 + T: x0 the same slices drawn with
    opacity 0 (no tumour), T the exact tumour layer; x0n the same without noise (and ghost)."""
    f = data.factory
    idx = torch.arange(n)
    x = data.get("val", idx)["x"]
    keep = f.opacity_scale
    try:
        f.opacity_scale = 0.0
        x0 = f.generate("val", idx)["x"]
        x0n = torch.empty_like(x0)
        for s in range(0, n, BATCH):  # the factory's own clean pass
            f._chunk("val", idx[s:s + BATCH], x0n[s:s + BATCH],
                     torch.zeros_like(x0n[s:s + BATCH], dtype=torch.bool), clean=True)
    finally:
        f.opacity_scale = keep
    t, noise = x - x0, x0 - x0n
    anatomy = torch.cat([atlas(x0n[s:s + BATCH])[0] for s in range(0, n, BATCH)])
    return {
        "lesions x0.75": (x0 + 0.75 * t).clamp(0, 1),
        "lesions x1.5": (x0 + 1.5 * t).clamp(0, 1),
        "lesions x1.8 (0.6, G's gain cap, / 0.33)": (x0 + 1.8 * t).clamp(0, 1),
        "lesion edges blurred (0.7 px)": (x0 + blur(t, gaussian_kernel(0.7))).clamp(0, 1),
        "anatomy = the atlas's rendering (no misfit)": ((anatomy + noise).clamp(0, 1) + t).clamp(0, 1),
        "no noise": (x0n + t).clamp(0, 1),
        "noise x2": ((x0n + 2 * noise).clamp(0, 1) + t).clamp(0, 1),
    }


def floor_table(pool: np.ndarray, y: np.ndarray, sizes, reps: int = 20) -> dict:
    """Table 7: real-vs-real FD of disjoint halves of `pool`, random and class-balanced."""
    rng = np.random.default_rng(0)
    classes = np.unique(y)
    out = {}
    for n in sizes:
        rand, bal = [], []
        k = n // len(classes)
        for _ in range(reps):
            p = rng.permutation(len(pool))
            rand.append(gm.frechet_distance(pool[p[:n]], pool[p[n:2 * n]]))
            if all(2 * k <= (y == c).sum() for c in classes):  # else too few of a class
                picks = [rng.permutation(np.nonzero(y == c)[0])[:2 * k] for c in classes]
                bal.append(gm.frechet_distance(pool[np.concatenate([q[:k] for q in picks])],
                                               pool[np.concatenate([q[k:] for q in picks])]))
        out[n] = {"random mean": float(np.mean(rand)), "sd": float(np.std(rand)),
                  "min": float(np.min(rand)), "max": float(np.max(rand)),
                  "balanced mean": float(np.mean(bal)) if bal else math.nan,
                  "balanced sd": float(np.std(bal)) if bal else math.nan}
    return out


# ------------------------------------------------------------------------------------ output
def md(title: str, header: list[str], rows: list[list]) -> str:
    def cell(v):
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
        return str(v)
    lines = [f"\n### {title}\n", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows])


def fd_row(label: str, t: dict, floor: dict, names, swaps: bool = False) -> list:
    """FD of all classes (/ floor, at n and at 500), per class 'FD (x class floor, mean term)'."""
    row = [label, t["all"]["fd"], t["all"]["fd"] / floor["all"]["fd"],
           t["all_500"]["fd"] / floor["all_500"]["fd"]]
    row += [f"{t[c]['fd']:.1f} ({t[c]['fd'] / floor[c]['fd']:.0f}x, {t[c]['mean'] / t[c]['fd']:.0%})"
            for c in names]
    return row + ([f"{t['swap_' + c]['fd']:.0f}" for c in names] if swaps else [])


def plot(path: Path, result: dict, names, negative: int) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = sorted(result["steps"])
    fl = result["floor"]
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    for c in names:
        a1.plot(steps, [result["steps"][s]["fd"][c]["fd"] / fl[c]["fd"] for s in steps], "o-", label=c)
    a1.plot(steps, [result["steps"][s]["fd"]["all"]["fd"] / fl["all"]["fd"] for s in steps], "k--",
            label="all classes")
    a1.set(yscale="log", ylabel="lesion-judge FD / its real floor",
           title=f"per class (n = {result['n']}, ~{result['n'] // len(names)} a class)")
    a1.legend(ncol=5, fontsize=8)
    for c in (c for i, c in enumerate(names) if i != negative):
        a2.plot(steps, [result["steps"][s]["generator"][c]["lesion_gain"] for s in steps], "o-", label=c)
    lo, hi = DATA_GAIN[0][0] * DATA_GAIN[1][0], DATA_GAIN[0][1] * DATA_GAIN[1][1]
    a2.axhspan(lo, hi, color="grey", alpha=0.2, label="the data's range")
    a2.axhline(result["gain_range"][1], color="k", ls=":", label="G's upper bound")
    a2.set(xlabel="training step", ylabel="G's lesion gain")
    a2.legend(ncol=4, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--steps", nargs="+", default=["2000", "4000"],
                    help="checkpoint steps (checkpoints/step-XXXXXXXX.pt), or 'all'")
    ap.add_argument("--n", type=int, default=2000, help="samples, and reference images (val[0, 2n))")
    ap.add_argument("--judge", type=Path, default=None, help="default: the run's model.lesion_judge")
    ap.add_argument("--only", default="1234567", help="which tables, e.g. '13' (default: all)")
    ap.add_argument("--out", type=Path, default=Path("fd_diagnosis.json"), help="JSON of every number")
    ap.add_argument("--figure", type=Path, default=None, help="PNG: FD per class and G's gain by step")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    t0, n = time.time(), args.n
    if n < 100:
        raise GenlabError(f"--n {n}: expected at least 100 (a covariance of 512 features per class)")
    run = load_run(args.run_dir, "best", data_overrides=[f"val_size={2 * n}"])
    if not hasattr(getattr(run.model, "G_ema", None), "draw_discs"):
        raise GenlabError(f"{args.run_dir}: not a run of the atlas generator (model.g_atlas); "
                          "this diagnosis reads and changes its lesion discs")
    if (args.judge or run.recipe.model.lesion_judge) is None:
        raise GenlabError(f"{args.run_dir}: the run has no model.lesion_judge; name one with --judge")
    judge = load_lesion_judge(args.judge or run.recipe.model.lesion_judge)
    have = sorted(int(p.stem.split("-")[1]) for p in (args.run_dir / "checkpoints").glob("step-*.pt"))
    steps = have if args.steps == ["all"] else [int(s) for s in args.steps]
    if set(steps) - set(have):
        raise GenlabError(f"--steps {sorted(set(steps) - set(have))}: no such checkpoint in "
                          f"{args.run_dir / 'checkpoints'}; it has steps {have}")
    names, negative = list(run.info.class_names), judge.negative[0]
    model, atlas = run.model, run.model.G_ema.atlas
    batches = [run.data.get("val", torch.arange(s, min(s + BATCH, 2 * n))) for s in range(0, 2 * n, BATCH)]
    x_all, y_all = torch.cat([b["x"] for b in batches]), torch.cat([b["y"] for b in batches])
    feats = judge_features(judge, x_all)
    real, ref, y, yref, labels = feats[:n], feats[n:], y_all[:n].numpy(), y_all[n:].numpy(), y_all[:n]
    floor = fd_table(real, ref, None, y, yref, names)
    result: dict = {"run": str(args.run_dir), "n": n, "judge": judge.name, "floor": floor, "steps": {},
                    "gain_range": list(model.G_ema.gain_range)}
    header = ["", "FD", "/ floor", "/ floor (first 500)"] + [f"{c}: FD (x floor, mean term)" for c in names]
    floor_row = ["real vs real (the floor)", floor["all"]["fd"], 1.0, 1.0]
    floor_row += [f"{floor[c]['fd']:.2f}" for c in names]
    print(f"lesion judge {judge.name}, n = {n} (~{n // len(names)} a class); {time.time() - t0:.0f} s")
    rows1, rows2, rows3, rows4 = [floor_row + [""] * len(names)], [], [], []
    for step in steps:
        state = ckpt.safe_load(args.run_dir / "checkpoints" / f"step-{step:08d}.pt", map_location="cpu")
        model.load_state_dict(state["model"])
        fakes = draw_samples(model, labels)
        ff = judge_features(judge, fakes)
        rec = {"fd": fd_table(ff, ref, real, y, yref, names),
               "direction": direction(ff, ref, y, yref, names, negative, judge),
               "generator": generator_stats(model, names, negative)}
        rows1.append(fd_row(f"step {step}", rec["fd"], floor, names, swaps=True))
        rows2 += [[step, c, *v.values()] for c, v in rec["direction"].items()]
        rows3 += [[step, c, *v.values()] for c, v in rec["generator"].items()]
        if "4" in args.only:
            rec["images"] = image_stats(atlas, fakes, y, names)
            rows4 += [[f"step {step}", c, *rec["images"][c].values()] for c in names]
        if "6" in args.only:
            said = d_says(model, x_all[:n], labels, names, negative)
            rows6 = []
            rows6d = [["real slices", *(f"{v['d_score']:.2f} / {v['ac_ce']:.3f}" for v in said.values())]]
            for label, gain, sigma in SAMPLE_CHANGES:
                imgs = fakes if gain is None and not sigma else draw_samples(model, labels, gain, sigma)
                t = (rec["fd"] if imgs is fakes
                     else fd_table(judge_features(judge, imgs), ref, None, y, yref, names))
                said = d_says(model, imgs, labels, names, negative)
                rec.setdefault("changes", {})[label] = {"fd": t, "d": said}
                rows6.append(fd_row(label, t, floor, names))
                rows6d.append([label, *(f"{v['d_score']:.2f} / {v['ac_ce']:.3f}" for v in said.values())])
            print(md(f"6. Step {step}: the samples with one change", header, rows6))
            print(md(f"6. Step {step}: what D says of them: real/fake score / class-head cross-entropy",
                     ["", *(c for i, c in enumerate(names) if i != negative)], rows6d))
        result["steps"][step] = rec
        print(f"step {step}: {time.time() - t0:.0f} s", flush=True)
    print(md("1. Lesion-judge FD of the samples, all classes and per class; last columns: all classes "
             "with class c's samples swapped for real slices", header + [f"swap {c}" for c in names], rows1))
    print(md("2. Where each class's mean shift points, and how sure the judge is of the samples",
             ["step", "class", "t along healthy->c", "share of shift² along it",
              "class k whose direction c->k holds most of it", "t toward k", "share", "share in top 10 PCs",
              "spread (trace) / real", "judge logit margin: samples", "real"], rows2))
    print(md("3. G's lesion parameters per class", ["step", "class", "discs on", "sigma px (ramp: radius)",
                                                     "amplitude (ramp: opacity)", "lesion gain",
                                                     "gain logit", "gradient share"], rows3))
    if "4" in args.only:
        stats_real = image_stats(atlas, x_all[:n], y, names)
        result["images_real"] = stats_real
        rows4 = [["real", c, *stats_real[c].values()] for c in names] + rows4
        print(md("4. Image statistics per class (residual to the atlas; means over the slices)",
                 ["", "class", *stats_real[names[0]].keys()], rows4))
    if "5" in args.only:
        rows5 = [floor_row]
        for label, xv in real_variants(run.data, atlas, n).items():
            t = fd_table(judge_features(judge, xv), ref, None, y, yref, names)
            result.setdefault("real_changes", {})[label] = t
            rows5.append(fd_row(label, t, floor, names))
        print(md("5. Real slices val[0, n) with one property changed, against the same reference",
                 header, rows5))
    if "7" in args.only:
        sizes = [s for s in (125, 250, 500, 1000, 2000) if 2 * s <= len(feats)]
        fl = floor_table(feats, y_all.numpy(), sizes)
        result["floor_vs_n"] = fl
        print(md("7. Real-vs-real FD (the floor) of disjoint halves of val[0, 2n), 20 draws each",
                 ["n", *next(iter(fl.values())).keys()], [[k, *v.values()] for k, v in fl.items()]))
    args.out.write_text(json.dumps(result, indent=1, default=float))
    if args.figure:
        plot(args.figure, result, names, negative)
    print(f"\n{args.out} ({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    try:
        main()
    except GenlabError as e:  # a bad run folder, judge or checkpoint: one line, exit code 2
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
