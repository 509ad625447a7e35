"""The GAN family's scores under a fixed judge: the Fréchet/precision-recall protocol shared by the
feature judge and the lesion judge, and the lesion judge's own scores (`model.lesion_judge`).

Protocol (both judges): with n = min(fid_samples, N/2) over the split's examples [0, N) and the
reference R = real[n:2n], the samples are the first n EMA samples and the floor is real[:n]
scored against the same R (what a perfect generator would score at this n). With labels and
`fid_halves: stratified` the examples are first put in `stratified_order`, so real[:n] and R hold
each class in the same number (the samples, drawn for real[:n]'s labels when conditional, too).

Lesion judge (genlab.families.gan_judge), metric names ending in the judge's name J:
    fid/J, fid_floor/J, fid_ratio/J, precision/J, recall/J, precision_floor/J, recall_floor/J
                          the protocol above in the judge's pooled features
    lesion_rate           share of the split's EMA samples the judge calls lesion-bearing (the
                          argmax is not a negative class such as Z)
    lesion_rate_real      the same call on the real images of the split
    lesion_share_real     the true share, from the labels (data with a "no lesion" class)
    lesion_rate_g_with, lesion_rate_g_without
                          a gated G (model.g_lesion_share): the same call on its renders of the
                          samples' latents with their lesions and without them (its healthy
                          twins). lesion_rate = share x with + (1 - share) x without, so a rate on
                          target can hide lesions the judge misses behind healthy twins it calls
                          lesion-bearing: without should sit near the judge's miss rate on real
                          healthy slices (1 - judge_accuracy_real/Z)
    calls/<class>         unconditional runs: share of the samples the judge calls that class,
                          beside calls_real/<class> on the real images: which lesions G draws
    judge_accuracy_real   the judge's accuracy on those real images (and /<class>: per class)
    agreement             conditional runs: share of samples the judge calls their conditioning
                          class; agreement/<class>, agreement_min and agreement_mean (over the
                          classes) beside it. Read them against judge_accuracy_real: a generator
                          that returned the real images would score exactly that.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from genlab.core.errors import CheckpointError, RecipeError
from genlab.data.base import DataInfo
from genlab.families.gan_judge import LesionJudge, load_lesion_judge
from genlab.metrics import generative as gen_metrics
from genlab.metrics.classification import resolve_negative

LESION_KEYS = ("lj_feat_real", "lj_feat_fake", "lj_logits_real", "lj_logits_fake", "lj_logits_with",
               "lj_logits_without", "lj_y")


def stratified_order(y: torch.Tensor, n: int) -> tuple[torch.Tensor, int]:
    """A permutation of the split's N examples whose [0, n) and [n, 2n) hold every class in the
    same number, and that n (at most the given one: a class of odd count leaves one example out).
    Class c gets k_c places in each set, k_c of n in proportion to the pairs it can fill (largest
    remainders), from its examples in split order; the sets keep split order, the rest follows."""
    y = y.detach().cpu().long()
    idx = [torch.nonzero(y == c).flatten() for c in torch.unique(y)]
    pairs = torch.tensor([len(i) // 2 for i in idx], dtype=torch.float64)
    n = min(n, int(pairs.sum()))
    share = pairs * n / max(float(pairs.sum()), 1.0)
    k = share.floor().long()
    for c in torch.argsort(share - k, descending=True, stable=True)[: n - int(k.sum())]:
        k[c] += 1
    first = torch.cat([i[:kc] for i, kc in zip(idx, k.tolist())]).sort().values
    second = torch.cat([i[kc:2 * kc] for i, kc in zip(idx, k.tolist())]).sort().values
    rest = torch.ones(len(y), dtype=torch.bool)
    rest[first], rest[second] = False, False
    return torch.cat([first, second, torch.nonzero(rest).flatten()]), n


def frechet_and_pr(real: torch.Tensor, fake: torch.Tensor, n: int, k: int) -> dict[str, float]:
    """fid, fid_floor, precision, recall, precision_floor, recall_floor of the protocol above."""
    ref, real_a, fake_a = real[n:2 * n], real[:n], fake[:n]
    p, r = gen_metrics.precision_recall(ref, fake_a, k)
    p0, r0 = gen_metrics.precision_recall(ref, real_a, k)
    return {"fid": gen_metrics.frechet_distance(fake_a, ref),
            "fid_floor": gen_metrics.frechet_distance(real_a, ref),
            "precision": p, "recall": r, "precision_floor": p0, "recall_floor": r0}


class LesionScores:
    """The lesion judge of one GAN: what `evaluate` adds per batch and what `summarize` makes of
    it. Data labels are matched to the judge's classes by name (agreement needs every class)."""

    def __init__(self, path: Path, info: DataInfo, conditional: bool):
        try:
            self.judge: LesionJudge = load_lesion_judge(path)
        except CheckpointError as e:
            raise RecipeError("model.lesion_judge", str(e)) from None
        j = self.judge
        if j.input_shape != tuple(info.input_shape):
            raise RecipeError("model.lesion_judge", f"the judge {path} takes {j.input_shape} images, "
                              f"the data are {tuple(info.input_shape)}")
        names = list(info.class_names)
        covered = all(c in j.class_names for c in names)
        if conditional and not covered:
            raise RecipeError("model.lesion_judge", f"agreement needs the judge to know every class of "
                              f"the data {names}; the judge {path} has {j.class_names}")
        # data label -> judge class index (None: the classes differ, no accuracy or agreement)
        self.label_map = torch.tensor([j.class_names.index(c) for c in names]) if covered else None
        self.class_names, self.conditional = names, conditional
        self.data_negative = resolve_negative(None, tuple(names))

    @torch.no_grad()
    def columns(self, real: torch.Tensor, fake: torch.Tensor, y: torch.Tensor | None,
                twins: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict:
        """Per-example outputs of one evaluation batch: one judge pass on each image set. `y`:
        the real images' labels, which the samples were also drawn for when conditional; `twins`:
        a gated G's renders of the samples' latents with their lesions and without them."""
        j = self.judge.to(real.device)
        fr, lr = j.features_and_logits(real)
        ff, lf = j.features_and_logits(fake)
        out = {"lj_feat_real": fr.float(), "lj_feat_fake": ff.float(),
               "lj_logits_real": lr.float(), "lj_logits_fake": lf.float()}
        if twins is not None:
            out["lj_logits_with"], out["lj_logits_without"] = (j.logits(t).float() for t in twins)
        return out if y is None else {**out, "lj_y": y}

    def summarize(self, c: dict[str, torch.Tensor], n: int, k: int) -> dict[str, float]:
        name = self.judge.name
        out: dict[str, float] = {}
        if n > max(k, 2):
            fp = frechet_and_pr(c["lj_feat_real"], c["lj_feat_fake"], n, k)
            fp["fid_ratio"] = fp["fid"] / max(fp["fid_floor"], 1e-12)
            out.update({f"{key}/{name}": v for key, v in fp.items()})
        out.update(self.call_scores(c["lj_logits_real"], c["lj_logits_fake"], c.get("lj_y")))
        if "lj_logits_with" in c and self.judge.negative:
            out["lesion_rate_g_with"] = gen_metrics.lesion_rate(c["lj_logits_with"], self.judge.negative)
            out["lesion_rate_g_without"] = gen_metrics.lesion_rate(c["lj_logits_without"],
                                                                   self.judge.negative)
        return {key: v for key, v in out.items() if math.isfinite(v)}  # strict JSON: no NaN

    def call_scores(self, logits_real: torch.Tensor, logits_fake: torch.Tensor,
                    y: torch.Tensor | None) -> dict[str, float]:
        """The judge's calls: lesion rates, its accuracy on the real images and, conditional, the
        agreement of the samples (drawn for labels y) with their class."""
        j = self.judge
        out: dict[str, float] = {}
        if j.negative:
            out["lesion_rate"] = gen_metrics.lesion_rate(logits_fake, j.negative)
            out["lesion_rate_real"] = gen_metrics.lesion_rate(logits_real, j.negative)
        if not self.conditional:  # which lesions an unconditional G draws, as the judge calls them
            fake_calls, real_calls = logits_fake.argmax(1), logits_real.argmax(1)
            for i, c in enumerate(j.class_names):
                out[f"calls/{c}"] = float((fake_calls == i).float().mean())
                out[f"calls_real/{c}"] = float((real_calls == i).float().mean())
        if y is None:  # unlabelled data: nothing to compare the calls with
            return out
        y = y.detach().cpu().long()
        if self.data_negative:
            out["lesion_share_real"] = float((~np.isin(y.numpy(), self.data_negative)).mean())
        if self.label_map is None:
            return out
        yj = self.label_map[y]  # the labels as judge class indices
        acc, per = gen_metrics.class_agreement(logits_real, yj, j.num_classes)
        out["judge_accuracy_real"] = acc
        out.update({f"judge_accuracy_real/{c}": float(per[self.label_map[i]])
                    for i, c in enumerate(self.class_names)})
        if self.conditional:
            agree, per = gen_metrics.class_agreement(logits_fake, yj, j.num_classes)
            classes = [float(per[self.label_map[i]]) for i in range(len(self.class_names))]
            seen = [v for v in classes if math.isfinite(v)]
            out["agreement"] = agree
            out.update({f"agreement/{c}": v for c, v in zip(self.class_names, classes)})
            if seen:
                out["agreement_min"], out["agreement_mean"] = min(seen), sum(seen) / len(seen)
        return out


__all__ = ["LESION_KEYS", "LesionScores", "frechet_and_pr", "stratified_order"]
