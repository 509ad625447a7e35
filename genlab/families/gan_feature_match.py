"""Per-class feature matching for a GAN's generator (`model.g_feature_match`).

The Fréchet distance of a class under a lesion judge is mostly its mean term (measured on the
easy atlas recipe: 50-83 % of each class's distance): the class's samples sit, on average, a
little off the real class, a disc 10 % too big or too bright. The adversarial loss does not
ask for that precision: D's real/fake score stops pushing once the samples pass, and its class
head once the class is recognisable. Feature matching (Salimans et al. 2016) asks for the first
moment directly: the mean of D's features over the class's samples should equal the mean over
its real slices. The features are what D's class head reads (its conv maps pooled over
positions: the maximum, blob detectors' peaks, and with ac_pool max+mean how much of each there
is), taken from the forward D makes anyway, real and fake, so D's state (its spectral norms'
power iterations) moves as it would without the term; the judge is never used.

Estimator. A batch holds ~8 slices of a class, and the squared gap of two 8-sample means is
biased by their variance: its gradient would also shrink G's spread within the class (a push
toward collapse). So both means are moving averages over steps (decay DECAY, detached), and
G's term is the gap, a constant, times the current batch's class means, whose gradient is the
gap times the derivative of the mean: a descent direction for |E f(fake) - E f(real)|^2 / 2
with no variance term. The averages are buffers: checkpoints hold them and resume is exact.
"""
from __future__ import annotations

import torch
from torch import nn

DECAY = 0.9  # moving averages over ~10 steps: D's features drift as D learns


class ClassFeatureMatch(nn.Module):
    """Moving averages of D's pooled features per class, real and generated, and G's term."""

    def __init__(self, num_classes: int, num_features: int):
        super().__init__()
        k = max(1, int(num_classes))
        self.register_buffer("real", torch.zeros(k, num_features))
        self.register_buffer("fake", torch.zeros(k, num_features))
        self.register_buffer("seen", torch.zeros(2, k, dtype=torch.bool))  # real, fake

    def _update(self, which: int, feats: torch.Tensor, y: torch.Tensor | None) -> None:
        avg = self.real if which == 0 else self.fake
        y = torch.zeros(len(feats), dtype=torch.long, device=feats.device) if y is None else y
        for c in torch.unique(y).tolist():
            m = feats[y == c].detach().float().mean(0)
            fresh = not bool(self.seen[which, c])
            avg[c] = m if fresh else DECAY * avg[c] + (1 - DECAY) * m
            self.seen[which, c] = True

    @torch.no_grad()
    def observe_real(self, feats: torch.Tensor, y: torch.Tensor | None) -> None:
        """D's step: the real batch's features (B, F) and classes (B,) (None: one class)."""
        self._update(0, feats, y)

    def loss(self, feats: torch.Tensor, y: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """G's step, feats (B, F) with G's graph: (the term to add to G's loss, the mean squared
        gap of the moving averages over the classes seen on both sides, for the log)."""
        with torch.no_grad():
            self._update(1, feats, y)
        y = torch.zeros(len(feats), dtype=torch.long, device=feats.device) if y is None else y
        both = self.seen[0] & self.seen[1]
        gap = torch.where(both[:, None], self.fake - self.real, 0.0)  # (K, F), a constant
        # per example: its class's gap over the class's count in the batch -> sum over classes
        # of gap_c . mean_c(features)
        counts = torch.bincount(y, minlength=len(gap)).clamp_min(1).to(feats.dtype)
        term = (gap[y].to(feats.dtype) * feats / counts[y, None]).sum() / max(1, int(both.sum()))
        return term, gap.pow(2).sum(1)[both].mean() if bool(both.any()) else gap.new_zeros(())


__all__ = ["DECAY", "ClassFeatureMatch"]
