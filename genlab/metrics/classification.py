"""Classification metrics, ROC/AUC, calibration, reports and plots.

Everything here accepts torch tensors or numpy arrays (anything `numpy.asarray` takes) and
returns plain Python floats / numpy arrays. No model family is imported.

Conventions (written down once, used everywhere):

* Confusion matrix: ROWS are the ACTUAL class, COLUMNS the PREDICTED class
  (`CONFUSION_CONVENTION`; some texts print the transpose, so every report says which).
* Binary counts for a positive class P: TP = actual P & predicted P, FN = actual P & predicted
  not-P, TN = actual not-P & predicted not-P, FP = actual not-P & predicted P.
* Sensitivity = TP/(TP+FN), specificity = TN/(TN+FP), PPV = TP/(TP+FP), NPV = TN/(TN+FN),
  F1 = 2TP/(2TP+FP+FN).
* Undefined values: a 0/0 ratio (e.g. sensitivity with no actual positives, PPV with no
  predicted positives, AUC with one class absent) is ``float('nan')`` — never a
  ZeroDivisionError and never a silent 0. `classification_report` turns NaN into ``None``
  (JSON ``null``) and `format_report` prints it as "undefined".
* Macro averages are the mean over the classes where the value is defined (NaN classes are
  skipped); a macro average is NaN only if no class defines it.
* AUC grades (the customary academic scale, lower bounds inclusive): [0.9, 1] excellent, [0.8, 0.9) good,
  [0.7, 0.8) fair, [0.6, 0.7) poor, [0.5, 0.6) fail, below 0.5 "fail (worse than chance)".
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from genlab.core.errors import RecipeError

CONFUSION_CONVENTION = "rows = actual class, columns = predicted class"

UNDEFINED = "undefined"

_AUC_GRADES = (
    (0.9, "excellent"),
    (0.8, "good"),
    (0.7, "fair"),
    (0.6, "poor"),
    (0.5, "fail"),
)


# ----------------------------------------------------------------------------- helpers
def _np(x: Any) -> np.ndarray:
    """A numpy view of a torch tensor, numpy array or sequence (no torch import needed)."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch.Tensor
        x = x.detach().cpu()
        if str(x.dtype) == "torch.bfloat16":
            x = x.float()
        return x.numpy()
    return np.asarray(x)


def _labels(y: Any, name: str = "labels") -> np.ndarray:
    """Integer class labels as a 1-D int64 array (accepts bools and integral floats)."""
    a = _np(y)
    a = a.reshape(-1) if a.ndim == 0 else a
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(a.shape)}")
    if a.dtype == bool:
        return a.astype(np.int64)
    if np.issubdtype(a.dtype, np.floating) and (
            not np.all(np.isfinite(a)) or not np.all(a == np.round(a))):
        raise ValueError(f"{name} must be integer class indices")
    return a.astype(np.int64)


def _ratio(num: float, den: float) -> float:
    """num/den, NaN when den == 0 (a 0/0 or x/0 ratio is undefined, not an error)."""
    return float(num) / float(den) if den != 0 else float("nan")


def _nanmean(values: Sequence[float]) -> float:
    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    return float(v.mean()) if v.size else float("nan")


def _as_probs(probs: Any) -> np.ndarray:
    """(N, K) float scores; a 1-D vector is read as P(class 1) of a binary problem."""
    p = _np(probs).astype(np.float64)
    if p.ndim == 1:
        p = np.stack([1.0 - p, p], axis=1)
    if p.ndim != 2:
        raise ValueError(f"probs must be (N,) or (N, K), got shape {tuple(p.shape)}")
    return p


def _check_same_len(a: np.ndarray, b: np.ndarray) -> None:
    if len(a) != len(b):
        raise ValueError(f"length mismatch: {len(a)} labels vs {len(b)} predictions/scores")


# ----------------------------------------------------------------------------- binary counts
def binary_counts(y_true: Any, y_pred: Any, positive: int = 1) -> dict[str, int]:
    """TP/FN/TN/FP of `positive` against all other classes (one-vs-rest).

    >>> binary_counts([1, 1, 0, 0], [1, 0, 0, 1])
    {'tp': 1, 'fn': 1, 'tn': 1, 'fp': 1}
    """
    t, p = _labels(y_true, "y_true"), _labels(y_pred, "y_pred")
    _check_same_len(t, p)
    at, ap = t == positive, p == positive
    return {
        "tp": int(np.sum(at & ap)),
        "fn": int(np.sum(at & ~ap)),
        "tn": int(np.sum(~at & ~ap)),
        "fp": int(np.sum(~at & ap)),
    }


def sensitivity(counts: Mapping[str, int]) -> float:
    """TP/(TP+FN) (recall, true-positive rate); NaN when there are no actual positives."""
    return _ratio(counts["tp"], counts["tp"] + counts["fn"])


def specificity(counts: Mapping[str, int]) -> float:
    """TN/(TN+FP) (true-negative rate); NaN when there are no actual negatives."""
    return _ratio(counts["tn"], counts["tn"] + counts["fp"])


def ppv(counts: Mapping[str, int]) -> float:
    """TP/(TP+FP) (precision); NaN when nothing is predicted positive."""
    return _ratio(counts["tp"], counts["tp"] + counts["fp"])


def npv(counts: Mapping[str, int]) -> float:
    """TN/(TN+FN); NaN when nothing is predicted negative."""
    return _ratio(counts["tn"], counts["tn"] + counts["fn"])


def f1(counts: Mapping[str, int]) -> float:
    """2TP/(2TP+FP+FN); NaN when there are neither actual nor predicted positives."""
    return _ratio(2 * counts["tp"], 2 * counts["tp"] + counts["fp"] + counts["fn"])


def binary_metrics(counts: Mapping[str, int]) -> dict[str, float]:
    """All five ratios of a set of counts."""
    return {
        "sensitivity": sensitivity(counts),
        "specificity": specificity(counts),
        "ppv": ppv(counts),
        "npv": npv(counts),
        "f1": f1(counts),
    }


# ----------------------------------------------------------------------------- multi-class
def confusion_matrix(y_true: Any, y_pred: Any, num_classes: int) -> np.ndarray:
    """(K, K) int64 counts; ROWS = ACTUAL class, COLUMNS = PREDICTED class.

    ``cm[i, j]`` is the number of samples of actual class i predicted as class j, so row sums
    are the class supports and the diagonal holds the correct predictions
    (see `CONFUSION_CONVENTION`). Labels outside [0, num_classes) raise ValueError.
    """
    t, p = _labels(y_true, "y_true"), _labels(y_pred, "y_pred")
    _check_same_len(t, p)
    k = int(num_classes)
    for name, a in (("y_true", t), ("y_pred", p)):
        if a.size and (a.min() < 0 or a.max() >= k):
            raise ValueError(f"{name} has labels outside [0, {k}): min {a.min()}, max {a.max()}")
    return np.bincount(t * k + p, minlength=k * k).reshape(k, k).astype(np.int64)


def accuracy(y_true: Any, y_pred: Any) -> float:
    """Share of correct predictions. `y_pred` may be labels (N,) or scores (N, K) (argmax).

    NaN for an empty input.
    """
    t = _labels(y_true, "y_true")
    p = _np(y_pred)
    p = p.argmax(axis=1) if p.ndim == 2 else _labels(p, "y_pred")
    _check_same_len(t, p)
    return _ratio(int(np.sum(t == p)), len(t))


def top_k_accuracy(y_true: Any, scores: Any, k: int = 5) -> float:
    """Share of samples whose actual class is among the k highest scores.

    Ties between scores are broken in favour of the lower class index (stable sort), so a
    constant score vector never gets credit it has not earned beyond its first k classes.
    k >= K gives 1.0. NaN for an empty input.
    """
    t = _labels(y_true, "y_true")
    s = _np(scores).astype(np.float64)
    if s.ndim != 2:
        raise ValueError(f"scores must be (N, K), got shape {tuple(s.shape)}")
    _check_same_len(t, s)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    top = np.argsort(-s, axis=1, kind="stable")[:, : int(k)]
    return _ratio(int(np.sum(np.any(top == t[:, None], axis=1))), len(t))


def per_class_metrics(y_true: Any, y_pred: Any, num_classes: int) -> dict[str, Any]:
    """One-vs-rest counts and ratios for every class, plus macro averages.

    Returns ``{"per_class": [ {class, support, tp, fn, tn, fp, sensitivity, specificity, ppv,
    npv, f1}, ... ], "macro": {sensitivity, specificity, ppv, npv, f1}}``. Macro averages skip
    classes where a ratio is undefined (NaN).
    """
    cm = confusion_matrix(y_true, y_pred, num_classes)
    n = int(cm.sum())
    rows = []
    for c in range(num_classes):
        tp = int(cm[c, c])
        fn = int(cm[c].sum()) - tp
        fp = int(cm[:, c].sum()) - tp
        counts = {"tp": tp, "fn": fn, "tn": n - tp - fn - fp, "fp": fp}
        rows.append({"class": c, "support": tp + fn, **counts, **binary_metrics(counts)})
    macro = {m: _nanmean([r[m] for r in rows]) for m in ("sensitivity", "specificity", "ppv",
                                                         "npv", "f1")}
    return {"per_class": rows, "macro": macro}


# ----------------------------------------------------------------------------- ROC / AUC
def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of x, ties sharing the average of their ranks (as scipy's 'average')."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    n = len(x)
    # start index of each run of equal values
    starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])
    ends = np.r_[starts[1:], n]  # exclusive
    avg = (starts + ends + 1) / 2.0  # mean of 1-based ranks starts+1 .. ends
    ranks_sorted = np.repeat(avg, ends - starts)
    ranks = np.empty(n, dtype=np.float64)
    ranks[order] = ranks_sorted
    return ranks


def _binary_truth(y_true: Any, positive: int) -> np.ndarray:
    return _labels(y_true, "y_true") == positive


def roc_auc_binary(y_true: Any, score: Any, positive: int = 1) -> float:
    """Area under the ROC curve from ranks (Mann–Whitney U / (n_pos * n_neg)).

    Equals P(score of a random positive > score of a random negative) + 0.5 P(tie): tied scores
    get average ranks, which is exactly the trapezoidal area of the ROC curve. Positives are the
    samples with ``y_true == positive`` (booleans: True). NaN when either class is absent.
    """
    pos = _binary_truth(y_true, positive)
    s = _np(score).astype(np.float64).reshape(-1)
    _check_same_len(pos, s)
    if np.any(np.isnan(s)):
        raise ValueError("score contains NaN")
    n_pos = int(pos.sum())
    n_neg = len(pos) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    r = _average_ranks(s)
    u = r[pos].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def roc_curve(y_true: Any, score: Any, positive: int = 1
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC points, one per distinct score, from the strictest threshold down.

    Returns ``(fpr, tpr, thresholds)``, with ``thresholds[0] = +inf`` (nothing predicted
    positive: the point (0, 0)) followed by the distinct scores in decreasing order; a sample is
    predicted positive when ``score >= threshold``. The last point is (1, 1). tpr (fpr) is all
    NaN when there are no positives (negatives). ``np.trapezoid(tpr, fpr)`` equals
    `roc_auc_binary`.
    """
    pos = _binary_truth(y_true, positive)
    s = _np(score).astype(np.float64).reshape(-1)
    _check_same_len(pos, s)
    order = np.argsort(-s, kind="mergesort")
    s_sorted, pos_sorted = s[order], pos[order]
    # last index of each run of equal scores
    last = np.flatnonzero(np.r_[s_sorted[1:] != s_sorted[:-1], True]) if len(s) else np.array(
        [], dtype=np.int64)
    tps = np.cumsum(pos_sorted)[last] if len(s) else np.array([])
    fps = (last + 1) - tps
    tps = np.r_[0, tps].astype(np.float64)
    fps = np.r_[0, fps].astype(np.float64)
    thresholds = np.r_[np.inf, s_sorted[last]]
    n_pos, n_neg = tps[-1], fps[-1]
    tpr = tps / n_pos if n_pos > 0 else np.full_like(tps, np.nan)
    fpr = fps / n_neg if n_neg > 0 else np.full_like(fps, np.nan)
    return fpr, tpr, thresholds


def roc_auc_ovr(y_true: Any, probs: Any) -> np.ndarray:
    """Per-class one-vs-rest AUC, (K,) array; NaN for a class absent (or alone) in y_true."""
    t = _labels(y_true, "y_true")
    p = _as_probs(probs)
    _check_same_len(t, p)
    return np.array([roc_auc_binary(t == c, p[:, c], positive=1) for c in range(p.shape[1])])


def roc_auc_ovr_macro(y_true: Any, probs: Any) -> float:
    """Macro average of the one-vs-rest AUCs over the classes where AUC is defined.

    Matches ``sklearn.metrics.roc_auc_score(y, probs, multi_class='ovr', average='macro')``
    when every class is present; sklearn raises where this skips absent classes. For a binary
    problem this is the AUC of the class-1 score (when probs rows sum to one). NaN if no class
    has a defined AUC.
    """
    return _nanmean(roc_auc_ovr(y_true, probs))


def auc_grade(auc: float | None) -> str:
    """The academic grade of an AUC (lower bounds inclusive: 0.9 is "excellent").

    NaN/None gives "undefined".
    """
    if auc is None:
        return UNDEFINED
    auc = float(auc)
    if math.isnan(auc):
        return UNDEFINED
    for bound, grade in _AUC_GRADES:
        if auc >= bound:
            return grade
    return "fail (worse than chance)"


# ----------------------------------------------------------------------------- calibration
def expected_calibration_error(y_true: Any, probs: Any, n_bins: int = 15) -> float:
    """Top-label expected calibration error with `n_bins` equal-width confidence bins.

    confidence = max probability, correct = (argmax == y_true); bins are (i/n, (i+1)/n] (the
    first also takes 0); ECE = sum_b |B_b|/N * |accuracy(B_b) - mean confidence(B_b)|.
    A 1-D `probs` is read as P(class 1) of a binary problem. NaN for an empty input.
    """
    t = _labels(y_true, "y_true")
    p = _as_probs(probs)
    _check_same_len(t, p)
    n = len(t)
    if n == 0:
        return float("nan")
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == t).astype(np.float64)
    idx = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    sum_conf = np.bincount(idx, weights=conf, minlength=n_bins)
    sum_acc = np.bincount(idx, weights=correct, minlength=n_bins)
    return float(np.sum(np.abs(sum_acc - sum_conf)) / n)


# ----------------------------------------------------------------------------- report
# class names (case-insensitive) taken as "no lesion" when negative_classes is not given
NEGATIVE_NAMES = ("z", "healthy", "normal", "benign", "negative", "no_lesion", "nolesion", "none")


def resolve_negative(given: list[str] | None, class_names: tuple[str, ...]) -> list[int]:
    """Indices of the 'no lesion' classes of a lesion task: the classes named in `given` (a
    recipe's model.negative_classes; an unknown name is a RecipeError), else those named like
    NEGATIVE_NAMES, else class 0 of a 2-class task; [] when that leaves no positive class."""
    names = list(class_names)
    if given is not None:
        bad = [c for c in given if c not in names]
        if bad:
            raise RecipeError("model.negative_classes", f"unknown class(es) {bad} (classes: {names})")
        return sorted(names.index(c) for c in given)
    found = [i for i, c in enumerate(names) if c.lower() in NEGATIVE_NAMES]
    if not found and len(names) == 2:
        found = [0]
    return found if len(found) < len(names) else []


def _listing(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def lesion_reading(probs: Sequence[float], names: Sequence[str], negative: Sequence[int],
                   threshold: float) -> dict | None:
    """The lesion call for one image and how it was made: the one wording of `genlab predict`,
    the API and its web page. None when no class is negative (not a lesion task).

    The rule: P(lesion) = 1 - P(negative classes), a lesion at or above `threshold`. It sums
    the lesion classes, so it can call a lesion while a negative class is the single most
    likely one (A 0.25, B 0.23, C 0.22, Z 0.30: Z is the top class, P(lesion) is 0.70); the
    reading says so instead of leaving a bare "Z" beside "LESION". `likely_class` is the most
    likely class of the side the call took (a lesion class when it says lesion).

    Returns {"call", "probability" (P(lesion)), "threshold", "negative_classes", "rule",
    "likely_class", "likely_probability", "top_class", "summary"}; "summary" puts the call
    first, then the likely class, then the rule."""
    if not negative:
        return None
    p = [float(v) for v in probs]
    names = list(names)
    neg = sorted(int(i) for i in negative)
    pos = [i for i in range(len(p)) if i not in neg]
    p_lesion = max(0.0, 1.0 - sum(p[i] for i in neg))
    call = p_lesion >= threshold
    side = pos if call else neg
    k = max(side, key=lambda i: p[i])
    top = max(range(len(p)), key=lambda i: p[i])
    rule = (f"P(lesion) = 1 - {' - '.join(f'P({names[i]})' for i in neg)} = {p_lesion:.3f} "
            f"{'>=' if call else '<'} threshold {threshold:g}")
    summary = "LESION" if call else "no lesion"
    if len(side) > 1:
        summary += f", most likely {'lesion class ' if call else ''}{names[k]} ({p[k]:.3f})"
    summary += f"; rule: {rule}"
    if top not in side:
        lesion = f"the lesion class{'es' if len(pos) > 1 else ''} {_listing([names[i] for i in pos])}"
        summary += (f"; the single most likely class is {names[top]} ({p[top]:.3f}), but {lesion} "
                    + (f"together have {p_lesion:.3f}" if call else
                       f"({p_lesion:.3f}) stay{'' if len(pos) > 1 else 's'} below the threshold"))
    return {"call": call, "probability": p_lesion, "threshold": float(threshold),
            "negative_classes": [names[i] for i in neg], "rule": rule,
            "likely_class": names[k], "likely_probability": p[k], "top_class": names[top],
            "summary": summary}


def _jsonable(x: Any) -> Any:
    """Python builtins only; NaN/inf floats become None."""
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        x = float(x)
        return x if math.isfinite(x) else None
    return x


def _resolve_class(c: int | str, class_names: Sequence[str]) -> int:
    if isinstance(c, str):
        if c not in class_names:
            raise ValueError(f"positive class {c!r} is not one of {list(class_names)}")
        return list(class_names).index(c)
    c = int(c)
    if not 0 <= c < len(class_names):
        raise ValueError(f"positive class index {c} outside [0, {len(class_names)})")
    return c


def classification_report(
    y_true: Any,
    probs: Any,
    class_names: Sequence[str] | None = None,
    positive: int | str | Sequence[int | str] | None = None,
    top_k: Sequence[int] = (5,),
    n_bins: int = 15,
) -> dict[str, Any]:
    """Every metric of this module for one set of predictions, as a JSON-serialisable dict.

    `probs` is (N, K) class probabilities (or scores; a 1-D vector is P(class 1) of a binary
    problem); predictions are their argmax. `positive` names the class of interest for the
    binary block (index, name, or a group of them, e.g. ``["A", "B", "C"]`` for "any lesion"
    against a healthy class; a group's score is the sum of its probabilities and a sample is
    predicted positive when its argmax is in the group). Top-k accuracy is reported for each
    k in `top_k` with 1 < k < K. Undefined values (NaN) are None.

    Keys: n, num_classes, class_names, accuracy, top_k_accuracy {k: value}, chance (the
    random-guess baseline: {"top1": 1/K, "top<k>": k/K for each reported k}), per_class [rows
    with class name, support, tp/fn/tn/fp, sensitivity, specificity, ppv, npv, f1, auc],
    macro {sensitivity, specificity, ppv, npv, f1, auc}, auc (= macro one-vs-rest AUC, or the
    class-1 AUC for K = 2), auc_grade, ece, ece_bins, confusion_matrix {convention, labels,
    matrix}, binary (None or {positive, positive_indices, tp, fn, tn, fp, sensitivity, ...,
    auc, auc_grade}).
    """
    t = _labels(y_true, "y_true")
    p = _as_probs(probs)
    _check_same_len(t, p)
    k = p.shape[1]
    names = [str(c) for c in (class_names if class_names is not None else range(k))]
    if len(names) != k:
        raise ValueError(f"{len(names)} class names for {k} probability columns")
    pred = p.argmax(axis=1) if len(t) else np.zeros(0, dtype=np.int64)

    pcm = per_class_metrics(t, pred, k)
    aucs = roc_auc_ovr(t, p)
    per_class = []
    for row, auc in zip(pcm["per_class"], aucs):
        per_class.append({**row, "class": names[row["class"]], "auc": auc})
    macro = {**pcm["macro"], "auc": _nanmean(aucs)}
    auc_main = float(roc_auc_binary(t == 1, p[:, 1])) if k == 2 else macro["auc"]

    report: dict[str, Any] = {
        "n": len(t),
        "num_classes": k,
        "class_names": names,
        "accuracy": accuracy(t, pred),
        "top_k_accuracy": {str(kk): top_k_accuracy(t, p, kk) for kk in top_k if 1 < kk < k},
        "chance": {"top1": 1.0 / k, **{f"top{kk}": kk / k for kk in top_k if 1 < kk < k}},
        "per_class": per_class,
        "macro": macro,
        "auc": auc_main,
        "auc_grade": auc_grade(auc_main),
        "ece": expected_calibration_error(t, p, n_bins=n_bins),
        "ece_bins": int(n_bins),
        "confusion_matrix": {
            "convention": CONFUSION_CONVENTION,
            "labels": names,
            "matrix": confusion_matrix(t, pred, k),
        },
        "binary": None,
    }
    if positive is not None:
        group = positive if isinstance(positive, (list, tuple)) else [positive]
        idx = sorted({_resolve_class(c, names) for c in group})
        in_group_true = np.isin(t, idx)
        in_group_pred = np.isin(pred, idx)
        counts = binary_counts(in_group_true, in_group_pred, positive=1)
        auc_pos = roc_auc_binary(in_group_true, p[:, idx].sum(axis=1))
        report["binary"] = {
            "positive": "+".join(names[i] for i in idx),
            "positive_indices": idx,
            **counts,
            **binary_metrics(counts),
            "auc": auc_pos,
            "auc_grade": auc_grade(auc_pos),
        }
    return _jsonable(report)


def report_scalars(report: Mapping[str, Any]) -> dict[str, float]:
    """The scalars of `classification_report`'s dict a training run logs, undefined ones NaN:
    acc, auc, ece, auc_macro (K > 2), top<k>, sens/<class>, spec/<class>, and with a binary
    block bin/{sens,spec,ppv,npv,f1,auc}."""
    def f(v):
        return float("nan") if v is None else float(v)

    out = {"acc": f(report["accuracy"])}
    for kk, v in report["top_k_accuracy"].items():  # beside top-1
        out[f"top{kk}"] = f(v)
    out.update(auc=f(report["auc"]), ece=f(report["ece"]))
    if report["num_classes"] > 2:
        out["auc_macro"] = f(report["macro"]["auc"])
    for row in report["per_class"]:
        out[f"sens/{row['class']}"] = f(row["sensitivity"])
        out[f"spec/{row['class']}"] = f(row["specificity"])
    b = report["binary"]
    if b:
        for key in ("sensitivity", "specificity", "ppv", "npv", "f1", "auc"):
            out[f"bin/{key[:4] if key in ('sensitivity', 'specificity') else key}"] = f(b[key])
    return out


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return UNDEFINED
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _auc_text(auc: float | None, grade: str) -> str:
    if auc is None or (isinstance(auc, float) and math.isnan(auc)):
        return f"{UNDEFINED} (a class is absent)"
    return f"{_fmt(auc)}, grade: {grade}"


def format_report(report: Mapping[str, Any]) -> str:
    """A plain-text rendering of `classification_report`'s dict ("undefined" for None/NaN)."""
    names = list(report["class_names"])
    w = max([len("macro"), 7] + [len(n) for n in names])
    cols = ("support", "sens", "spec", "ppv", "npv", "f1", "auc")
    keys = ("support", "sensitivity", "specificity", "ppv", "npv", "f1", "auc")
    cw = 11
    lines = [f"Classification report: {report['n']} samples, {report['num_classes']} classes",
             ""]
    header = f"{'class':<{w}}" + "".join(f"{c:>{cw}}" for c in cols)
    lines += [header, "-" * len(header)]
    for row in report["per_class"]:
        lines.append(f"{row['class']:<{w}}" + "".join(f"{_fmt(row[k]):>{cw}}" for k in keys))
    lines.append("-" * len(header))
    macro = report["macro"]
    support = sum(int(r["support"]) for r in report["per_class"])
    lines.append(f"{'macro':<{w}}{support:>{cw}}"
                 + "".join(f"{_fmt(macro[k]):>{cw}}" for k in keys[1:]))
    lines.append("(one-vs-rest per class; macro = mean over classes where defined)")
    lines.append("")
    chance = report.get("chance") or {}

    def guess(key: str) -> str:
        return f"   (random guess {chance[key]:.3f})" if key in chance else ""

    lines.append(f"accuracy (top-1): {_fmt(report['accuracy'])}{guess('top1')}")
    for kk, v in report.get("top_k_accuracy", {}).items():
        lines.append(f"top-{kk} accuracy: {_fmt(v)}{guess(f'top{kk}')}")
    auc_label = "AUC" if report["num_classes"] == 2 else "AUC (one-vs-rest, macro)"
    lines.append(f"{auc_label}: {_auc_text(report['auc'], report['auc_grade'])}")
    lines.append(f"ECE ({report['ece_bins']} bins): {_fmt(report['ece'])}")

    b = report.get("binary")
    if b:
        lines.append("")
        lines.append(f"Positive class '{b['positive']}' vs rest: TP {b['tp']}  FN {b['fn']}  "
                     f"TN {b['tn']}  FP {b['fp']}")
        lines.append(f"  sensitivity {_fmt(b['sensitivity'])}  specificity "
                     f"{_fmt(b['specificity'])}  PPV {_fmt(b['ppv'])}  NPV {_fmt(b['npv'])}  "
                     f"F1 {_fmt(b['f1'])}")
        lines.append(f"  AUC {_auc_text(b['auc'], b['auc_grade'])}")

    cm = report["confusion_matrix"]
    lines.append("")
    lines.append(f"Confusion matrix ({cm['convention']}):")
    m = cm["matrix"]
    cellw = max([len(n) for n in names] + [len(str(v)) for r in m for v in r] + [3]) + 2
    corner = "actual \\ pred"
    lw = max(w, len(corner))
    lines.append(f"{corner:<{lw}}" + "".join(f"{n:>{cellw}}" for n in names))
    for n, r in zip(names, m):
        lines.append(f"{n:<{lw}}" + "".join(f"{v:>{cellw}}" for v in r))
    return "\n".join(lines)


# ----------------------------------------------------------------------------- plots
def _figure(figsize: tuple[float, float]):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _finish(fig, path: str | Path | None) -> np.ndarray:
    """Render an Agg figure to an (H, W, 3) uint8 array; also save a PNG when path is given."""
    fig.tight_layout()
    fig.canvas.draw()
    rgb = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, format="png")
    return rgb


def plot_confusion_matrix(cm: Any, class_names: Sequence[str] | None = None,
                          path: str | Path | None = None, title: str = "Confusion matrix",
                          ) -> np.ndarray:
    """Heat map of a (K, K) count matrix (rows = actual, columns = predicted).

    Each cell shows its count and its share of the row (per-actual-class recall); the colour
    is the row share, so classes of different sizes read alike. Returns the RGB image
    (H, W, 3) uint8 and writes a PNG to `path` when given.
    """
    m = _np(cm).astype(np.int64)
    k = m.shape[0]
    names = [str(c) for c in (class_names if class_names is not None else range(k))]
    row = m.sum(axis=1, keepdims=True)
    share = np.divide(m, row, out=np.zeros(m.shape, dtype=np.float64), where=row > 0)
    size = 2.2 + 0.75 * k
    fig = _figure((size + 1.0, size))
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of actual class")
    ax.set_xticks(range(k), names, rotation=45 if max(map(len, names)) > 4 else 0, ha="right"
                  if max(map(len, names)) > 4 else "center")
    ax.set_yticks(range(k), names)
    ax.set_xlabel("Predicted class")
    ax.set_ylabel("Actual class")
    ax.set_title(f"{title}\n({CONFUSION_CONVENTION})", fontsize=10)
    small = k > 8
    for i in range(k):
        for j in range(k):
            txt = f"{m[i, j]}" if small else f"{m[i, j]}\n{share[i, j]:.0%}"
            ax.text(j, i, txt, ha="center", va="center", fontsize=7 if small else 9,
                    color="white" if share[i, j] > 0.5 else "black")
    return _finish(fig, path)


def plot_roc(y_true: Any, probs: Any, class_names: Sequence[str] | None = None,
             path: str | Path | None = None, title: str = "ROC") -> np.ndarray:
    """ROC curves with their AUC in the legend: one curve (class 1 vs class 0) for a binary
    problem, one one-vs-rest curve per class otherwise (classes absent from y_true are
    listed as "undefined" and not drawn). Returns the RGB image; writes a PNG to `path`.
    """
    t = _labels(y_true, "y_true")
    p = _as_probs(probs)
    k = p.shape[1]
    names = [str(c) for c in (class_names if class_names is not None else range(k))]
    fig = _figure((5.5, 5.0))
    ax = fig.add_subplot(1, 1, 1)
    ax.plot([0, 1], [0, 1], ls="--", color="0.6", lw=1, label="chance (AUC 0.5)")
    classes = [1] if k == 2 else list(range(k))
    for c in classes:
        auc = roc_auc_binary(t == c, p[:, c])
        label = (f"{names[c]} (AUC {_fmt(auc)}, {auc_grade(auc)})" if k == 2 else
                 f"{names[c]} vs rest (AUC {_fmt(auc)})")
        if math.isnan(auc):
            ax.plot([], [], label=label)
            continue
        fpr, tpr, _ = roc_curve(t == c, p[:, c])
        ax.plot(fpr, tpr, lw=1.5, label=label)
    if k > 2:
        macro = roc_auc_ovr_macro(t, p)
        title = f"{title} — macro AUC {_fmt(macro)} ({auc_grade(macro)})"
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_xlabel("False positive rate (1 - specificity)")
    ax.set_ylabel("True positive rate (sensitivity)")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    return _finish(fig, path)


# ----------------------------------------------------------------------------- regression
def mse(x: Any, y: Any) -> float:
    """Mean squared error over all elements."""
    a, b = _np(x).astype(np.float64), _np(y).astype(np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch: {a.shape} vs {b.shape}")
    return float(np.mean((a - b) ** 2))


def psnr(x: Any, y: Any, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB: the batch mean of per-image PSNR.

    The first axis is the batch (pass a single image as a batch of one); each image's PSNR is
    10 log10(data_range^2 / MSE_i) with MSE_i over all its other axes, and the result is the
    mean of these values (not the PSNR of the pooled MSE, in which a few bad images
    dominate). An identical image has infinite PSNR, so the mean is then inf.
    """
    a, b = _np(x).astype(np.float64), _np(y).astype(np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch: {a.shape} vs {b.shape}")
    if a.ndim < 2:
        raise ValueError("psnr expects a batch (B, ...) with at least 2 dimensions")
    per = np.mean((a - b) ** 2, axis=tuple(range(1, a.ndim)))
    with np.errstate(divide="ignore"):
        vals = 10.0 * np.log10(float(data_range) ** 2 / per)
    return float(np.mean(vals))
