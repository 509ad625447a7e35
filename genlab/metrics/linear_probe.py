"""A linear probe's fit: scikit-learn's LinearSVC or LogisticRegression on fixed feature vectors,
C chosen on validation features, and the fitted logistic regression as the weights and bias of
a torch linear layer.

Used by `genlab probe` (genlab.tools.probe: frozen features of a run's encoder) and by the
classifier's LP-FT head (genlab.families.head_init: the head starts as this probe). Pure numpy
and scikit-learn: no model, no data, no files.

Model selection: C is chosen on the validation features (highest accuracy; ties go to the
smaller C, the stronger regularisation); the model kept is the one fitted on the training
features with that C. A linear SVM's scores become probabilities by temperature scaling,
softmax(score / T), T fitted on validation (the argmax, hence the accuracy, is the SVM's own).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from genlab.core.errors import GenlabError

DEFAULT_C_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)
CLASSIFIERS = ("svm", "logreg")
CLF_ALIASES = {"linear_svm": "svm"}  # the same LinearSVC
NORMS = ("standard", "l2", "power_l2")


def _pipeline(clf: str, c: float, pca: int | None, seed: int, norm: str = "standard"):
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer, Normalizer, StandardScaler
    from sklearn.svm import LinearSVC

    if norm == "standard":
        steps = [StandardScaler()]
    elif norm == "l2":
        steps = [Normalizer()]
    else:
        steps = [FunctionTransformer(_signed_sqrt), Normalizer()]
    if pca is not None:
        steps.append(PCA(n_components=pca, random_state=seed))
    if clf == "svm":
        steps.append(LinearSVC(C=c, max_iter=5000, random_state=seed))
    else:
        steps.append(LogisticRegression(C=c, max_iter=2000))
    return make_pipeline(*steps)


def _signed_sqrt(x: np.ndarray) -> np.ndarray:
    return np.sign(x) * np.sqrt(np.abs(x))


def _scores(model, x: np.ndarray) -> np.ndarray:
    """(N, K) decision scores; a binary model's 1-D score d becomes [0, d]."""
    d = np.asarray(model.decision_function(x), dtype=np.float64)
    return np.stack([np.zeros_like(d), d], 1) if d.ndim == 1 else d


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def fit_temperature(scores: np.ndarray, y: np.ndarray) -> float:
    """T minimising the NLL of softmax(scores / T) (a log grid, then a local refinement)."""
    def nll(t: float) -> float:
        p = _softmax(scores / t)
        return float(-np.log(np.clip(p[np.arange(len(y)), y], 1e-12, None)).mean())

    grid = np.logspace(-3, 3, 61)
    best = min(grid, key=nll)
    fine = best * np.logspace(-0.1, 0.1, 21)
    return float(min(fine, key=nll))


@dataclass
class ProbeResult:
    model: object
    classifier: str
    c: float
    val_accuracy: dict[float, float]
    temperature: float | None
    classes: np.ndarray

    def predict_proba(self, x: np.ndarray, num_classes: int) -> np.ndarray:
        """(N, num_classes) probabilities; classes absent from training get 0."""
        if self.classifier == "logreg":
            p = self.model.predict_proba(x)
        else:
            p = _softmax(_scores(self.model, x) / self.temperature)
        full = np.zeros((len(x), num_classes))
        full[:, self.classes] = p
        return full


def fit(clf: str, x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray,
        pca: int | None = None, c_grid=DEFAULT_C_GRID, seed: int = 0, norm: str = "standard") -> ProbeResult:
    """Fit the probe for every C, keep the best on val (see the module docstring)."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    clf = CLF_ALIASES.get(clf, clf)
    if clf not in CLASSIFIERS:
        raise GenlabError(f"--clf {clf}: expected one of {', '.join([*CLASSIFIERS, *CLF_ALIASES])}")
    if norm not in NORMS:
        raise GenlabError(f"--norm {norm}: expected one of {', '.join(NORMS)}")
    classes = np.unique(y_train)
    if len(classes) < 2:
        raise GenlabError(f"the training images hold only class {classes.tolist()}; a probe needs at "
                          f"least two classes (raise --n-train)")
    if pca is not None and pca > min(x_train.shape):
        raise GenlabError(f"--pca {pca}: at most min(training images, feature size) = "
                          f"min({x_train.shape[0]}, {x_train.shape[1]}) = {min(x_train.shape)} components")
    val_acc: dict[float, float] = {}
    best, best_c = None, None
    for c in sorted(float(v) for v in c_grid):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            m = _pipeline(clf, c, pca, seed, norm).fit(x_train, y_train)
        acc = float((m.predict(x_val) == y_val).mean())
        val_acc[c] = acc
        if best is None or acc > val_acc[best_c] + 1e-12:
            best, best_c = m, c
    temp = None
    if clf == "svm":
        known = np.isin(y_val, classes)
        col = np.searchsorted(classes, y_val[known])
        temp = fit_temperature(_scores(best, x_val[known]), col) if known.any() else 1.0
    return ProbeResult(best, clf, best_c, val_acc, temp, classes)


def linear_layer(res: ProbeResult, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(weight (K, F), bias (K,)) of the linear layer whose logits are the probe's decision
    scores: a standardised logistic regression, x -> coef ((x - mean) / scale) + intercept,
    folded into one affine map, weight = coef / scale and bias = intercept - weight @ mean.
    Softmax of these logits is the probe's predict_proba. A binary fit's single score d is the
    logit pair [0, d] (sigmoid(d) = softmax([0, d])[1]); a class absent from the training
    features gets weight 0 and bias -1e4 (probability 0, as the probe gives it)."""
    steps = [s for _, s in res.model.steps]
    if res.classifier != "logreg" or len(steps) != 2 or not hasattr(steps[0], "mean_"):
        raise GenlabError("a linear layer is made from a standardised logistic regression only "
                          f"(got {res.classifier} with {[type(s).__name__ for s in steps]})")
    scaler, clf = steps
    coef, icpt = clf.coef_.astype(np.float64), clf.intercept_.astype(np.float64)
    if coef.shape[0] == 1:  # binary: one score for classes_[1] against classes_[0]
        coef, icpt = np.concatenate([np.zeros_like(coef), coef]), np.concatenate([[0.0], icpt])
    w = coef / scaler.scale_[None, :]
    b = icpt - w @ scaler.mean_
    weight = np.zeros((num_classes, w.shape[1]))
    bias = np.full(num_classes, -1e4)
    weight[res.classes], bias[res.classes] = w, b
    return weight, bias


__all__ = ["CLASSIFIERS", "CLF_ALIASES", "DEFAULT_C_GRID", "NORMS", "ProbeResult", "fit", "fit_temperature",
           "linear_layer"]
