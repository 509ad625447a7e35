"""genlab.metrics.classification against hand-computed values and scikit-learn."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from genlab.metrics import classification as M

NAN = float("nan")


def _worked_example():
    """A textbook worked example: cat (=1) vs dog (=0), TP 5, FN 3, TN 3, FP 2."""
    y_true = [1] * 5 + [1] * 3 + [0] * 3 + [0] * 2
    y_pred = [1] * 5 + [0] * 3 + [0] * 3 + [1] * 2
    return y_true, y_pred


# --------------------------------------------------------------------- binary counts
def test_textbook_worked_example():
    y_true, y_pred = _worked_example()
    c = M.binary_counts(y_true, y_pred, positive=1)
    assert c == {"tp": 5, "fn": 3, "tn": 3, "fp": 2}
    assert M.sensitivity(c) == pytest.approx(0.625)
    assert M.specificity(c) == pytest.approx(0.6)
    assert M.ppv(c) == pytest.approx(5 / 7)
    assert round(M.ppv(c), 3) == 0.714
    assert M.npv(c) == pytest.approx(0.5)
    assert M.f1(c) == pytest.approx(2 * 5 / (2 * 5 + 2 + 3))


def test_binary_counts_other_positive_and_torch():
    y_true, y_pred = _worked_example()
    c = M.binary_counts(torch.tensor(y_true), np.array(y_pred), positive=0)
    assert c == {"tp": 3, "fn": 2, "tn": 5, "fp": 3}


def test_degenerate_ratios_are_nan_not_errors():
    # no actual positives, no predicted positives
    c = M.binary_counts([0, 0, 0], [0, 0, 0])
    assert c == {"tp": 0, "fn": 0, "tn": 3, "fp": 0}
    assert math.isnan(M.sensitivity(c))
    assert math.isnan(M.ppv(c))
    assert math.isnan(M.f1(c))
    assert M.specificity(c) == 1.0 and M.npv(c) == 1.0
    # no predicted positives but real positives: PPV undefined, sensitivity 0
    c = M.binary_counts([1, 1, 0], [0, 0, 0])
    assert M.sensitivity(c) == 0.0 and math.isnan(M.ppv(c))
    # nothing predicted negative: NPV undefined
    c = M.binary_counts([1, 0], [1, 1])
    assert math.isnan(M.npv(c)) and M.specificity(c) == 0.0
    # empty input
    c = M.binary_counts([], [])
    assert all(math.isnan(v) for v in M.binary_metrics(c).values())


# --------------------------------------------------------------------- multi-class
Y3_TRUE = [0, 0, 0, 1, 1, 2, 2, 2, 2]
Y3_PRED = [0, 1, 0, 1, 2, 2, 2, 0, 1]
CM3 = [[2, 1, 0],   # actual 0
       [0, 1, 1],   # actual 1
       [1, 1, 2]]   # actual 2


def test_confusion_matrix_by_hand_rows_actual():
    cm = M.confusion_matrix(Y3_TRUE, Y3_PRED, 3)
    assert cm.dtype == np.int64 and cm.shape == (3, 3)
    np.testing.assert_array_equal(cm, CM3)
    # orientation: one sample of actual 0 was predicted 1, none of actual 1 predicted 0
    assert cm[0, 1] == 1 and cm[1, 0] == 0
    np.testing.assert_array_equal(cm.sum(axis=1), [3, 2, 4])  # row sums = supports
    np.testing.assert_array_equal(cm, skm.confusion_matrix(Y3_TRUE, Y3_PRED))
    assert "rows" in M.CONFUSION_CONVENTION and "actual" in M.CONFUSION_CONVENTION
    assert "columns = predicted" in M.CONFUSION_CONVENTION
    assert "ROWS = ACTUAL" in M.confusion_matrix.__doc__


def test_confusion_matrix_rejects_out_of_range():
    with pytest.raises(ValueError):
        M.confusion_matrix([0, 3], [0, 1], 3)


def test_accuracy_and_per_class_by_hand():
    assert M.accuracy(Y3_TRUE, Y3_PRED) == pytest.approx(5 / 9)
    pc = M.per_class_metrics(Y3_TRUE, Y3_PRED, 3)
    c2 = pc["per_class"][2]
    # class 2: TP 2, FN 2, FP 1, TN 9-5 = 4
    assert (c2["tp"], c2["fn"], c2["fp"], c2["tn"], c2["support"]) == (2, 2, 1, 4, 4)
    assert c2["sensitivity"] == pytest.approx(0.5)
    assert c2["specificity"] == pytest.approx(0.8)
    assert c2["ppv"] == pytest.approx(2 / 3)
    assert c2["npv"] == pytest.approx(4 / 6)
    sens = [2 / 3, 1 / 2, 2 / 4]
    assert pc["macro"]["sensitivity"] == pytest.approx(np.mean(sens))
    assert pc["macro"]["f1"] == pytest.approx(
        skm.f1_score(Y3_TRUE, Y3_PRED, average="macro"))
    assert pc["macro"]["ppv"] == pytest.approx(
        skm.precision_score(Y3_TRUE, Y3_PRED, average="macro"))


def test_macro_skips_undefined_classes():
    pc = M.per_class_metrics([0, 0, 1], [0, 0, 1], 3)  # class 2 absent and never predicted
    assert math.isnan(pc["per_class"][2]["sensitivity"])
    assert pc["macro"]["sensitivity"] == 1.0


def test_top_k_by_hand():
    scores = np.array([[0.1, 0.5, 0.3, 0.1],    # ranking 1, 2, 0/3
                       [0.4, 0.3, 0.2, 0.1],    # ranking 0, 1, 2, 3
                       [0.25, 0.25, 0.4, 0.1]])  # ranking 2, then 0 (tie -> lower index), 1
    y = [2, 3, 1]
    assert M.top_k_accuracy(y, scores, 1) == 0.0
    assert M.top_k_accuracy(y, scores, 2) == pytest.approx(1 / 3)
    assert M.top_k_accuracy(y, scores, 3) == pytest.approx(2 / 3)
    assert M.top_k_accuracy(y, scores, 4) == 1.0
    assert M.top_k_accuracy(y, scores, 10) == 1.0
    rng = np.random.default_rng(1)
    s = rng.random((200, 10))
    yy = rng.integers(0, 10, 200)
    assert M.top_k_accuracy(yy, s, 3) == pytest.approx(
        skm.top_k_accuracy_score(yy, s, k=3, labels=range(10)))
    assert M.accuracy(yy, s) == M.top_k_accuracy(yy, torch.tensor(s), 1)


# --------------------------------------------------------------------- ROC / AUC
def test_auc_by_hand_and_ties():
    assert M.roc_auc_binary([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert M.roc_auc_binary([0, 1], [0.5, 0.5]) == 0.5
    assert M.roc_auc_binary([0, 0, 1, 1], [0.2, 0.5, 0.5, 0.9]) == pytest.approx(0.875)
    assert M.roc_auc_binary([True, False], [0.9, 0.1]) == 1.0
    assert M.roc_auc_binary([1, 0], [0.9, 0.1], positive=0) == 0.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_matches_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 300)
    s_cont = rng.normal(size=300) + 0.8 * y
    s_ties = np.round(s_cont * 2) / 2  # heavy ties
    for s in (s_cont, s_ties):
        assert M.roc_auc_binary(y, s) == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)
        fpr, tpr, thr = M.roc_curve(torch.tensor(y), torch.tensor(s))
        f2, t2, th2 = skm.roc_curve(y, s, drop_intermediate=False)
        np.testing.assert_allclose(fpr, f2)
        np.testing.assert_allclose(tpr, t2)
        np.testing.assert_allclose(thr[1:], th2[1:])
        assert thr[0] == np.inf and (fpr[0], tpr[0]) == (0, 0) and (fpr[-1], tpr[-1]) == (1, 1)
        assert np.trapezoid(tpr, fpr) == pytest.approx(M.roc_auc_binary(y, s))


def test_ovr_macro_matches_sklearn():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 4, 400)
    logits = rng.normal(size=(400, 4))
    logits[np.arange(400), y] += 1.0
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    expected = skm.roc_auc_score(y, p, multi_class="ovr", average="macro")
    assert M.roc_auc_ovr_macro(y, p) == pytest.approx(expected, abs=1e-12)
    assert M.roc_auc_ovr_macro(torch.tensor(y), torch.tensor(p)) == pytest.approx(expected)
    # binary: equals the class-1 AUC
    yb = (y > 1).astype(int)
    pb = np.c_[1 - p[:, 1], p[:, 1]]
    assert M.roc_auc_ovr_macro(yb, pb) == pytest.approx(skm.roc_auc_score(yb, p[:, 1]))


def test_auc_degenerate_is_nan():
    assert math.isnan(M.roc_auc_binary([1, 1, 1], [0.1, 0.5, 0.9]))
    assert math.isnan(M.roc_auc_binary([0, 0], [0.1, 0.5]))
    fpr, tpr, _ = M.roc_curve([0, 0], [0.1, 0.5])
    assert np.all(np.isnan(tpr)) and fpr[-1] == 1.0
    p = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.6, 0.3, 0.1]])
    per = M.roc_auc_ovr([0, 1, 0], p)  # class 2 absent
    assert math.isnan(per[2]) and per[0] == 1.0
    assert M.roc_auc_ovr_macro([0, 1, 0], p) == pytest.approx(np.nanmean(per))
    assert math.isnan(M.roc_auc_ovr_macro([0, 0, 0], p))


@pytest.mark.parametrize("auc,grade", [
    (1.0, "excellent"), (0.9, "excellent"), (0.8999, "good"), (0.8, "good"),
    (0.7999, "fair"), (0.7, "fair"), (0.6999, "poor"), (0.6, "poor"), (0.5999, "fail"),
    (0.5, "fail"), (0.4999, "fail (worse than chance)"), (0.0, "fail (worse than chance)"),
    (NAN, "undefined"), (None, "undefined"), (np.float32("nan"), "undefined"),
])
def test_auc_grade_boundaries(auc, grade):
    assert M.auc_grade(auc) == grade


# --------------------------------------------------------------------- calibration
def test_ece_by_hand():
    # every sample 0.8 confident, half of them right -> |0.5 - 0.8| = 0.3
    p = np.array([[0.8, 0.2]] * 4)
    assert M.expected_calibration_error([0, 0, 1, 1], p) == pytest.approx(0.3)
    # two bins: conf 0.9 all right (gap 0.1), conf 0.6 all wrong (gap 0.6), equal weight
    p = np.array([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6], [0.4, 0.6]])
    assert M.expected_calibration_error([0, 0, 0, 0], p, n_bins=10) == pytest.approx(0.35)
    assert math.isnan(M.expected_calibration_error([], np.zeros((0, 2))))


def test_ece_calibrated_vs_overconfident():
    rng = np.random.default_rng(0)
    n = 100_000
    q = rng.random(n)                      # true P(class 1)
    y = (rng.random(n) < q).astype(int)
    calibrated = np.c_[1 - q, q]
    assert M.expected_calibration_error(y, calibrated) < 0.01
    logit = np.log(q / (1 - q))
    sharp = 1 / (1 + np.exp(-4 * logit))   # same ranking, overconfident
    ece_sharp = M.expected_calibration_error(y, np.c_[1 - sharp, sharp])
    assert ece_sharp > 0.1
    assert M.expected_calibration_error(y, q) == pytest.approx(
        M.expected_calibration_error(y, calibrated))  # 1-D = P(class 1)


# --------------------------------------------------------------------- report
def _probs_for(y_pred, k, conf=0.7):
    p = np.full((len(y_pred), k), (1 - conf) / (k - 1))
    p[np.arange(len(y_pred)), y_pred] = conf
    return p


def test_report_binary_lesion_worked_example():
    y_true, y_pred = _worked_example()
    # class 1 = "lesion" (the worked example's cat), class 0 = "healthy"
    p = _probs_for(np.array(y_pred), 2)
    rep = M.classification_report(y_true, p, ["healthy", "lesion"], positive="lesion")
    json.dumps(rep, allow_nan=False)
    b = rep["binary"]
    assert (b["tp"], b["fn"], b["tn"], b["fp"]) == (5, 3, 3, 2)
    assert b["sensitivity"] == pytest.approx(0.625) and b["specificity"] == pytest.approx(0.6)
    assert b["ppv"] == pytest.approx(5 / 7) and b["npv"] == pytest.approx(0.5)
    assert rep["confusion_matrix"]["matrix"] == [[3, 2], [3, 5]]
    assert rep["confusion_matrix"]["convention"] == M.CONFUSION_CONVENTION
    assert rep["accuracy"] == pytest.approx(8 / 13)
    assert rep["auc"] == pytest.approx(skm.roc_auc_score(y_true, p[:, 1]))
    assert rep["top_k_accuracy"] == {}  # top-5 is meaningless for 2 classes
    # same by index
    assert M.classification_report(y_true, p, ["healthy", "lesion"], positive=1)["binary"] == b
    text = M.format_report(rep)
    assert M.CONFUSION_CONVENTION in text
    assert "sensitivity 0.625" in text and "PPV 0.714" in text
    assert "grade:" in text


def test_report_multiclass_and_group_positive():
    rng = np.random.default_rng(5)
    y = rng.integers(0, 6, 300)
    logits = rng.normal(size=(300, 6))
    logits[np.arange(300), y] += 1.5
    p = torch.softmax(torch.tensor(logits), 1)
    names = ["A", "B", "C", "D", "E", "Z"]
    rep = M.classification_report(torch.tensor(y), p, names, positive=["A", "B", "C"],
                                  top_k=(5,))
    json.dumps(rep, allow_nan=False)
    assert rep["top_k_accuracy"]["5"] == pytest.approx(M.top_k_accuracy(y, p, 5))
    assert rep["auc"] == pytest.approx(
        skm.roc_auc_score(y, p.numpy(), multi_class="ovr"), abs=1e-9)
    assert rep["auc_grade"] == M.auc_grade(rep["auc"])
    assert [r["class"] for r in rep["per_class"]] == names
    b = rep["binary"]
    assert b["positive"] == "A+B+C" and b["positive_indices"] == [0, 1, 2]
    lesion = np.isin(y, [0, 1, 2])
    assert b["tp"] + b["fn"] == int(lesion.sum())
    assert b["auc"] == pytest.approx(skm.roc_auc_score(lesion, p[:, :3].sum(1).numpy()))
    text = M.format_report(rep)
    for needle in ("macro", "top-5 accuracy", "AUC (one-vs-rest, macro)", "ECE (15 bins)",
                   M.CONFUSION_CONVENTION, "actual \\ pred", "A+B+C"):
        assert needle in text


def test_report_degenerate_one_class_only():
    p = np.array([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3]])
    rep = M.classification_report([0, 0, 0], p, ["healthy", "lesion"], positive="lesion")
    s = json.dumps(rep, allow_nan=False)
    assert "NaN" not in s
    assert rep["auc"] is None and rep["auc_grade"] == "undefined"
    b = rep["binary"]
    assert b["sensitivity"] is None and b["ppv"] is None and b["f1"] is None
    assert b["specificity"] == 1.0
    text = M.format_report(rep)
    assert "undefined" in text


def test_report_bad_positive():
    with pytest.raises(ValueError):
        M.classification_report([0, 1], np.eye(2), ["a", "b"], positive="c")


# --------------------------------------------------------------------- plots
def _is_png(path):
    with open(path, "rb") as f:
        return f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_plot_confusion_matrix_png(tmp_path):
    path = tmp_path / "cm.png"
    rgb = M.plot_confusion_matrix(np.array(CM3), ["A", "B", "Z"], path=path)
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
    assert _is_png(path)


def test_plot_roc_png(tmp_path):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 90)
    p = rng.dirichlet(np.ones(3), 90)
    rgb = M.plot_roc(y, p, ["A", "B", "Z"], path=tmp_path / "roc.png")
    assert rgb.shape[2] == 3 and _is_png(tmp_path / "roc.png")
    rgb = M.plot_roc(y > 0, p[:, 1], ["healthy", "lesion"], path=tmp_path / "roc2.png")
    assert _is_png(tmp_path / "roc2.png")
    # a class absent does not raise
    M.plot_roc([0, 0, 1], p[:3], ["A", "B", "Z"])


# --------------------------------------------------------------------- regression
def test_mse_and_psnr_by_hand():
    x = np.zeros((2, 1, 4, 4))
    y = np.empty_like(x)
    y[0] = 0.1    # MSE 0.01   -> 20 dB
    y[1] = 0.01   # MSE 0.0001 -> 40 dB
    assert M.mse(x[:1], y[:1]) == pytest.approx(0.01)
    assert M.psnr(x, y) == pytest.approx(30.0)  # mean of per-image PSNR, not pooled (22.97)
    assert M.psnr(torch.tensor(x[:1]), torch.tensor(y[:1]), data_range=2.0) == pytest.approx(
        20 + 10 * np.log10(4))
    assert M.psnr(x, x) == np.inf
    with pytest.raises(ValueError):
        M.psnr(x, y[:1])


def test_metrics_module_does_not_import_families():
    import ast
    import inspect

    for mod in (M,):
        tree = ast.parse(inspect.getsource(mod))
        names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        assert not any("families" in n for n in names)
