"""The online linear probe: what an encoder's features are worth to a classifier, during training.

An unsupervised objective can fall steadily while the features learn nothing the downstream
task needs (an autoencoder that reconstructs the template brain and erases the lesions). So at
each evaluation, for every family that exports an encoder, the trainer fits a logistic
regression on the frozen features of a fixed labelled subset of the training split and scores
it on a fixed subset of the validation split, as self-supervised libraries watch their runs.
Training never sees these labels: the probe only reads the encoder.

Reported under eval/: probe_acc (accuracy over the data's classes) and, for a lesion task (a
class named like Z / healthy / normal, see metrics.classification.resolve_negative),
probe_lesion_auc (ROC AUC of P(any lesion class) against lesion vs healthy).
"""
from __future__ import annotations

import warnings

import numpy as np
import torch

from genlab.data.sampler import eval_batches
from genlab.engine.evaluation import forked_rng, load_batch
from genlab.metrics.classification import resolve_negative, roc_auc_binary


class OnlineProbe:
    """Fixed subsets (the first `n_train` training and `n_val` validation examples: the same
    images at every evaluation and in every run of a recipe) and a probe fit on demand."""

    #: the probe's images are kept in memory between evaluations up to this many bytes (building
    #: them, e.g. synthesising brain slices, costs as much as encoding them)
    CACHE_BYTES = 256 << 20
    #: examples encoded at once: the probe needs no gradients, so larger batches are cheaper
    BATCH = 256

    def __init__(self, data, n_train: int, n_val: int, device: torch.device):
        self.data, self.device = data, device
        self.n_train = min(n_train, data.size("train"))
        self.n_val = min(n_val, data.size("val"))
        self.negative = resolve_negative(None, tuple(data.info.class_names))
        self._scored: tuple[int, dict[str, float]] = (-1, {})
        per_image = 4 * int(np.prod(data.info.input_shape))
        self._cache: dict[str, list[dict]] | None = (
            {} if (self.n_train + self.n_val) * per_image <= self.CACHE_BYTES else None)

    @staticmethod
    def applies(model, data) -> bool:
        """Encoder families on labelled data with at least two classes."""
        return model.can("encode") and data.info.num_classes >= 2 and data.size("val") > 0

    @classmethod
    def for_run(cls, model, data, log, device: torch.device) -> OnlineProbe | None:
        """The probe a run's recipe asks for (`log.probe_train`, `log.probe_val`), or None when it
        is off or does not apply. Nothing is read until the first evaluation."""
        if not log.probe_train or not cls.applies(model, data):
            return None
        return cls(data, log.probe_train, log.probe_val, device)

    def at(self, step: int, model) -> dict[str, float]:
        """The scores at training step `step`, fit once per step (the final evaluation repeats
        the last step's)."""
        if self._scored[0] != step:
            self._scored = (step, self(model))
        return self._scored[1]

    def _batches(self, split: str, n: int):
        if self._cache is not None and split in self._cache:
            yield from self._cache[split]
            return
        kept = []
        for idx in eval_batches(n, self.BATCH):
            batch = load_batch(self.data, split, idx, self.device)
            batch = {"x": batch["x"], "y": batch["y"]}
            kept.append(batch)
            yield batch
        if self._cache is not None:
            self._cache[split] = kept

    @torch.no_grad()
    def _features(self, model, split: str, n: int) -> tuple[np.ndarray, np.ndarray]:
        feats, labels = [], []
        for batch in self._batches(split, n):
            feats.append(model.encode(batch["x"]).float().flatten(1).cpu())
            labels.append(batch["y"].cpu())
        return torch.cat(feats).numpy().astype(np.float64), torch.cat(labels).numpy()

    def __call__(self, model) -> dict[str, float]:
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        was_training = model.training
        model.eval()
        try:
            with forked_rng(self.device):
                x_tr, y_tr = self._features(model, "train", self.n_train)
                x_va, y_va = self._features(model, "val", self.n_val)
        finally:
            model.train(was_training)
        if len(np.unique(y_tr)) < 2 or not (np.isfinite(x_tr).all() and np.isfinite(x_va).all()):
            return {"probe_acc": float("nan")}
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500, C=1.0))
        with warnings.catch_warnings():  # an unconverged fit is still a fair, cheap reading
            warnings.simplefilter("ignore")
            clf.fit(x_tr, y_tr)
        probs = np.zeros((len(x_va), self.data.info.num_classes))
        probs[:, clf.classes_] = clf.predict_proba(x_va)
        out = {"probe_acc": float((probs.argmax(1) == y_va).mean())}
        if self.negative:
            lesion = ~np.isin(y_va, self.negative)
            if 0 < lesion.sum() < len(lesion):
                out["probe_lesion_auc"] = float(roc_auc_binary(lesion.astype(int),
                                                               1.0 - probs[:, self.negative].sum(1)))
        return out
