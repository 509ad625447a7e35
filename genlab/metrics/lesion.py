"""Does a reconstruction keep the lesions? Scores on images whose lesion masks are known.

A reconstruction can look excellent by PSNR while erasing every lesion: lesions cover a few
percent of the pixels, so a model that draws the template brain scores well on the rest. These
scores look only at the lesions.

    contrast(img)  = mean(img inside the mask) - mean(img on a ring of `ring_px` pixels around it)
    retention      = median over lesion-bearing images of contrast(recon) / contrast(clean)
                     (1: the lesions are kept as bright as they were; 0: erased; < 0: inverted)
    lesion PSNR    = PSNR of the reconstruction against the clean image inside the masks only
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

RING_PX = 3


def ring(mask: torch.Tensor, ring_px: int = RING_PX) -> torch.Tensor:
    """The pixels within `ring_px` (Chebyshev distance) of a lesion pixel, outside the lesion.
    mask: (B, 1, H, W) bool."""
    m = mask.bool()
    grown = F.max_pool2d(m.float(), 2 * ring_px + 1, stride=1, padding=ring_px) > 0
    return grown & ~m


def lesion_contrast(img: torch.Tensor, mask: torch.Tensor, ring_px: int = RING_PX) -> torch.Tensor:
    """(B,) mean inside the mask minus mean on the ring around it; NaN where an image has no
    lesion (nothing to measure)."""
    m = mask.bool().expand_as(img)
    r = ring(mask, ring_px).expand_as(img)
    img = img.float()
    n_in, n_ring = m.flatten(1).sum(1), r.flatten(1).sum(1)
    inside = (img * m).flatten(1).sum(1) / n_in.clamp_min(1)
    around = (img * r).flatten(1).sum(1) / n_ring.clamp_min(1)
    out = inside - around
    return torch.where((n_in > 0) & (n_ring > 0), out, torch.full_like(out, math.nan))


def retention(recon_contrast: torch.Tensor, clean_contrast: torch.Tensor,
              min_contrast: float = 1e-3) -> float:
    """Median of recon / clean contrast over images with a measurable lesion (|clean contrast| >=
    min_contrast, so a lesion the factory drew invisibly does not divide by ~0); NaN if none."""
    ok = torch.isfinite(clean_contrast) & torch.isfinite(recon_contrast)
    ok &= clean_contrast.abs() >= min_contrast
    if not bool(ok.any()):
        return math.nan
    return float((recon_contrast[ok] / clean_contrast[ok]).median())


def masked_sq_error(recon: torch.Tensor, clean: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor,
                                                                                             torch.Tensor]:
    """(B,) summed squared error inside the masks and (B,) the number of mask pixels: summed
    over a split, their ratio is the lesion MSE (`psnr_from_mse`)."""
    m = mask.bool().expand_as(recon)
    err = ((recon.float() - clean.float()) ** 2 * m).flatten(1).sum(1)
    return err, m.flatten(1).sum(1).float()


def psnr_from_mse(mse: float, peak: float = 1.0) -> float:
    return math.nan if not mse > 0 else 10.0 * math.log10(peak * peak / mse)


def lesion_scores(collected: dict[str, torch.Tensor]) -> dict[str, float]:
    """Whole-split scores from per-example `evaluate` outputs: `lesion_contrast_clean`,
    `lesion_contrast_recon`, `lesion_sq_err`, `lesion_px` -> retention and lesion PSNR."""
    if "lesion_contrast_clean" not in collected:
        return {}
    out = {"lesion_retention": retention(collected["lesion_contrast_recon"],
                                         collected["lesion_contrast_clean"])}
    px = float(collected["lesion_px"].sum())
    if px > 0:
        out["lesion_psnr"] = psnr_from_mse(float(collected["lesion_sq_err"].sum()) / px)
    return out
