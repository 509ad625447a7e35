"""Sample-quality maths for generative models: Fréchet distance, k-NN precision/recall, diversity.

No model family is imported here: everything takes feature matrices (N, D) (torch tensors or
anything `numpy.asarray` accepts) and returns plain Python floats, computed in float64.

Fréchet distance between the Gaussians fitted to two feature sets (Heusel et al. 2017):

    FD = |mu_1 - mu_2|^2 + Tr(S_1 + S_2 - 2 (S_1 S_2)^(1/2))

`(S_1 S_2)^(1/2)` is not symmetric, and `scipy.linalg.sqrtm` of it can return small imaginary
parts; we only need its trace, and S_1 S_2 is similar to the symmetric PSD matrix
M = S_1^(1/2) S_2 S_1^(1/2), so Tr((S_1 S_2)^(1/2)) = sum_i sqrt(lambda_i(M)). Two symmetric
eigen-decompositions (`numpy.linalg.eigh`), with round-off negatives clipped to zero, give it
exactly and never complex.

Precision and recall of a generated distribution (Kynkäänniemi et al. 2019): the manifold of a
feature set is the union of balls around each of its points, the radius being the distance to
its k-th nearest neighbour within the set. Precision = share of generated points inside the real
manifold (are samples realistic?); recall = share of real points inside the generated manifold
(is the data's variety covered?). Mode collapse shows up as low recall.

A classifier as judge (its logits (N, K), the class it calls = the argmax):
    lesion_rate       share of images called a lesion class (the argmax not among `negative`)
    class_agreement   share of images called the class they carry (a generator's conditioning
                      label, or the truth for real images: the judge's accuracy), overall and
                      per class
"""
from __future__ import annotations

import numpy as np

__all__ = [
    "class_agreement",
    "diversity",
    "frechet_distance",
    "frechet_from_stats",
    "gaussian_stats",
    "lesion_rate",
    "precision_recall",
]


def _f64(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().double().numpy()
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"expected features (N, D), got shape {a.shape}")
    return a


def gaussian_stats(feats) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and unbiased covariance (D, D) of features (N, D), float64."""
    a = _f64(feats)
    if a.shape[0] < 2:
        raise ValueError("need at least 2 samples for a covariance")
    return a.mean(0), np.cov(a, rowvar=False).reshape(a.shape[1], a.shape[1])


def _sqrt_psd(s: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((s + s.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_from_stats(mu1, s1, mu2, s2) -> float:
    """Fréchet distance of N(mu1, s1) and N(mu2, s2) (see the module docstring)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(s1, np.float64), np.asarray(s2, np.float64)
    r1 = _sqrt_psd(s1)
    m = r1 @ s2 @ r1
    tr_cross = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    diff = mu1 - mu2
    return float(max(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * tr_cross, 0.0))


def frechet_distance(feats_a, feats_b) -> float:
    """Fréchet distance between the Gaussians fitted to two feature sets (N_a, D), (N_b, D)."""
    return frechet_from_stats(*gaussian_stats(feats_a), *gaussian_stats(feats_b))


def _sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
    return np.maximum(d, 0)


def _knn_radii(a: np.ndarray, k: int) -> np.ndarray:
    """Squared distance of each point of `a` to its k-th nearest neighbour in `a` (self excluded)."""
    d = _sq_dists(a, a)
    np.fill_diagonal(d, np.inf)
    return np.partition(d, k - 1, axis=1)[:, k - 1]


def _coverage(points: np.ndarray, centres: np.ndarray, radii: np.ndarray) -> float:
    """Share of `points` inside at least one ball (centre, radius) of the manifold."""
    return float((_sq_dists(points, centres) <= radii[None, :]).any(1).mean())


def precision_recall(real, fake, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) with k-NN balls, k = 3 as in
    the paper. real (N, D), fake (M, D); returns (precision, recall) in [0, 1]."""
    r, f = _f64(real), _f64(fake)
    if min(len(r), len(f)) <= k:
        raise ValueError(f"need more than k={k} points in each set, got {len(r)} and {len(f)}")
    precision = _coverage(f, r, _knn_radii(r, k))
    recall = _coverage(r, f, _knn_radii(f, k))
    return precision, recall


def diversity(feats) -> float:
    """Mean pairwise Euclidean distance within a feature set (N, D); compare fake to real."""
    a = _f64(feats)
    n = len(a)
    if n < 2:
        return 0.0
    d = np.sqrt(_sq_dists(a, a))
    return float(d.sum() / (n * (n - 1)))


def _calls(logits) -> np.ndarray:
    return _f64(logits).argmax(1)


def lesion_rate(logits, negative) -> float:
    """Share of the rows of `logits` (N, K) whose argmax is not in `negative` (class indices
    meaning "no lesion"); NaN for no rows."""
    calls = _calls(logits)
    if len(calls) == 0:
        return float("nan")
    return float((~np.isin(calls, np.asarray(list(negative), dtype=np.int64))).mean())


def class_agreement(logits, labels, num_classes: int) -> tuple[float, np.ndarray]:
    """(overall, per_class (num_classes,)): the share of rows of `logits` (N, K) whose argmax is
    their label (N,), over all rows and over the rows of each label (NaN for a label with none)."""
    calls = _calls(logits)
    y = np.asarray(labels.detach().cpu() if hasattr(labels, "detach") else labels).astype(np.int64)
    if y.shape != calls.shape:
        raise ValueError(f"expected one label per row: {calls.shape[0]} rows, labels {y.shape}")
    hit = calls == y
    per = np.full(num_classes, np.nan)
    for c in range(num_classes):
        if (y == c).any():
            per[c] = hit[y == c].mean()
    return (float(hit.mean()) if len(hit) else float("nan")), per
