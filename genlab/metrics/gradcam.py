"""Grad-CAM (Selvaraju et al. 2017): where a classifier looks, and whether that is the lesion.

    with GradCAM(model) as cam:                  # target layer: the last Conv2d
        maps = cam(images)                       # (B, H, W) in [0, 1], predicted class
    scores = localisation_scores(maps[0], lesion_mask[0])

How it works: a forward hook on the target layer keeps its output A (B, C, h, w) during the
call; the gradient of the chosen class logit with respect to A is taken with
``torch.autograd.grad`` (so no parameter's ``.grad`` is touched); channel weights are the
spatially averaged gradients, the map is ReLU(sum_c w_c A_c), bilinearly upsampled to the input
size and divided by its maximum (an all-zero map stays zero: "no positive evidence").

The model is left as found: its train/eval mode, its parameters' values and ``requires_grad``
flags, and its ``.grad`` fields. Call ``model.eval()`` yourself first (dropout and batch-norm
batch statistics would otherwise mix the samples of a batch). It works for frozen models and
inside ``torch.no_grad()`` (gradient tracking is switched on for the call only).

Localisation against a boolean lesion mask (a classifier that scores well while looking away
from the lesion has learned a shortcut, so its maps are always checked against the mask):
`cam_mass_in_mask` (share of CAM mass inside the mask) and `pointing_game` (is the CAM's peak
inside the mask). A uniform map scores the mask's area fraction on both (`cam_mass_baseline`,
`pointing_game_baseline`), which is the chance level a report should show beside them.
`localisation_columns` scores a batch per image and `localisation_summary` averages a split.

This module does not import any model family.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def find_last_conv(model: nn.Module) -> nn.Module:
    """The last ``nn.Conv2d`` in ``model.modules()`` order (registration order).

    That is the usual Grad-CAM layer for a sequential conv net; for a model whose forward runs
    its modules in another order, pass the layer explicitly. Raises ValueError if there is none.
    """
    last = None
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            last = m
    if last is None:
        raise ValueError(f"{type(model).__name__} has no nn.Conv2d layer; pass target_layer")
    return last


class GradCAM:
    """Grad-CAM maps for `model` at `target_layer` (default: `find_last_conv(model)`).

    The target layer must output a (B, C, h, w) tensor. Hooks stay registered until `close()`
    (or the end of a ``with`` block); between calls they do nothing.
    """

    def __init__(self, model: nn.Module, target_layer: nn.Module | None = None):
        self.model = model
        self.target_layer = target_layer if target_layer is not None else find_last_conv(model)
        self._capturing = False
        self._activation: torch.Tensor | None = None
        self.logits: torch.Tensor | None = None  # of the last call, detached
        self.class_idx: torch.Tensor | None = None  # classes explained in the last call
        self._handle = self.target_layer.register_forward_hook(self._forward_hook)

    # -- hooks
    def _forward_hook(self, module: nn.Module, inputs: Any, output: Any) -> Any:
        if not self._capturing:
            return None
        if not isinstance(output, torch.Tensor) or output.dim() != 4:
            raise ValueError("Grad-CAM target layer must output a (B, C, h, w) tensor, got "
                             f"{type(output).__name__} "
                             f"{tuple(output.shape) if isinstance(output, torch.Tensor) else ''}")
        self._activation = output
        # Hand the rest of the network a copy, so a following in-place op (ReLU(inplace=True))
        # cannot overwrite the activation we differentiate against.
        return output.clone()

    def close(self) -> None:
        """Remove the hook from the target layer (idempotent)."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        self._activation = None

    def __enter__(self) -> GradCAM:  # noqa: PYI034 (Self needs Python 3.11)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the map
    def __call__(self, x: torch.Tensor, class_idx: int | Sequence[int] | torch.Tensor | None
                 = None) -> torch.Tensor:
        """(B, H, W) maps in [0, 1] at the input's size, for `class_idx` (None: the predicted
        class of each sample; an int: that class for every sample; a sequence: one per sample).
        """
        if self._handle is None:
            raise RuntimeError("GradCAM was closed")
        if x.dim() != 4:
            raise ValueError(f"x must be (B, C, H, W), got shape {tuple(x.shape)}")
        x_in = x.detach().requires_grad_(True)  # graph exists even if all params are frozen
        self._capturing = True
        try:
            with torch.enable_grad():
                logits = self.model(x_in)
                act = self._activation
                if act is None:
                    raise RuntimeError("the target layer did not run during the forward pass")
                if logits.dim() != 2:
                    raise ValueError(f"model must return (B, K) logits, got {tuple(logits.shape)}")
                b = logits.shape[0]
                if class_idx is None:
                    idx = logits.argmax(dim=1)
                elif isinstance(class_idx, int):
                    idx = torch.full((b,), class_idx, dtype=torch.long, device=logits.device)
                else:
                    idx = torch.as_tensor(class_idx, dtype=torch.long,
                                          device=logits.device).reshape(-1)
                    if idx.numel() == 1:
                        idx = idx.expand(b)
                if idx.numel() != b or idx.min() < 0 or idx.max() >= logits.shape[1]:
                    raise ValueError(f"class_idx {class_idx!r} invalid for logits "
                                     f"{tuple(logits.shape)}")
                score = logits.gather(1, idx[:, None]).sum()
                (grad,) = torch.autograd.grad(score, act, allow_unused=False)
        finally:
            self._capturing = False
        self.logits = logits.detach()
        self.class_idx = idx.detach()
        act, grad = act.detach(), grad.detach()
        self._activation = None
        weights = grad.mean(dim=(2, 3), keepdim=True)  # (B, C, 1, 1)
        cam = F.relu((weights * act).sum(dim=1, keepdim=True))  # (B, 1, h, w)
        cam = F.interpolate(cam.float(), size=tuple(x.shape[-2:]), mode="bilinear",
                            align_corners=False)[:, 0]
        cam = cam.clamp_min(0)
        peak = cam.flatten(1).amax(dim=1).clamp_min(torch.finfo(cam.dtype).tiny)
        return cam / peak[:, None, None]


# ----------------------------------------------------------------------------- display
def _np(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().float().numpy()
    return np.asarray(x)


def overlay(image: Any, cam: Any, alpha: float = 0.45, cmap: str = "jet") -> Any:
    """Blend a CAM (H, W) in [0, 1] over an image (1 or 3, H, W) in [0, 1] → (3, H, W).

    The map goes through a matplotlib colormap ('jet' or 'inferno' read well) and is mixed
    with weight `alpha` over the (grey-expanded) image. Returns a torch tensor if `image` is
    one, else a numpy array; values in [0, 1].
    """
    from matplotlib import colormaps

    img = _np(image).astype(np.float32)
    c = _np(cam).astype(np.float32)
    if img.ndim == 2:
        img = img[None]
    if img.ndim != 3 or img.shape[0] not in (1, 3):
        raise ValueError(f"image must be (1|3, H, W), got {img.shape}")
    if c.shape != img.shape[1:]:
        raise ValueError(f"cam shape {c.shape} does not match image {img.shape[1:]}")
    if img.shape[0] == 1:
        img = np.repeat(img, 3, axis=0)
    heat = colormaps[cmap](np.clip(c, 0.0, 1.0))[..., :3].transpose(2, 0, 1).astype(np.float32)
    out = np.clip((1.0 - alpha) * np.clip(img, 0.0, 1.0) + alpha * heat, 0.0, 1.0)
    return torch.from_numpy(out) if isinstance(image, torch.Tensor) else out


def save_gradcam_figure(path: str | Path, image: Any, cam: Any, mask: Any = None,
                        title: str | None = None, cmap: str = "jet") -> np.ndarray:
    """Three panels (image, CAM, overlay with the mask's outline and scores) as a PNG.

    Returns the rendered RGB image (H, W, 3) uint8.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    img = _np(image)
    img = img[None] if img.ndim == 2 else img
    c = _np(cam)
    fig = Figure(figsize=(9.5, 3.6), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3)
    shown = img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0)
    axes[0].imshow(shown, cmap="gray", vmin=0, vmax=1)
    axes[0].set_title("image")
    im = axes[1].imshow(c, cmap=cmap, vmin=0, vmax=1)
    fig.colorbar(im, ax=axes[1], fraction=0.046, pad=0.04)
    axes[1].set_title("Grad-CAM")
    axes[2].imshow(overlay(img, c, cmap=cmap).transpose(1, 2, 0))
    sub = "overlay"
    if mask is not None:
        m = _np(mask).astype(bool)
        axes[2].contour(m.astype(float), levels=[0.5], colors="white", linewidths=1.2)
        s = localisation_scores(c, m)
        sub = (f"mass in mask {s['mass_in_mask']:.2f} (uniform {s['mass_baseline']:.2f})\n"
               f"pointing game {s['pointing_game']:.0f} (uniform {s['pointing_baseline']:.2f})")
    axes[2].set_title(sub, fontsize=8)
    for ax in axes:
        ax.set_axis_off()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.canvas.draw()
    rgb = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return rgb


# ----------------------------------------------------------------------------- localisation
def _pair(cam: Any, mask: Any) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """(B, H, W) float cam and bool mask, plus whether the input was a single (H, W) map."""
    c = torch.as_tensor(_np(cam), dtype=torch.float64)
    m = torch.as_tensor(_np(mask)).bool()
    single = c.dim() == 2
    if single:
        c = c[None]
    if m.dim() == 2:
        m = m[None].expand_as(c)
    if c.dim() != 3 or c.shape != m.shape:
        raise ValueError(f"cam {tuple(c.shape)} and mask {tuple(m.shape)} must be (H, W) or "
                         "(B, H, W) of the same size")
    if torch.any(c < 0):
        raise ValueError("cam must be non-negative")
    return c, m, single


def _out(v: torch.Tensor, single: bool) -> float | np.ndarray:
    return float(v[0]) if single else v.numpy()


def dilate(mask: Any, tolerance_px: int) -> torch.Tensor:
    """A boolean (H, W) or (B, H, W) mask grown by a disc of radius `tolerance_px` pixels."""
    m = torch.as_tensor(_np(mask)).bool()
    r = int(tolerance_px)
    if r <= 0:
        return m
    single = m.dim() == 2
    m4 = (m[None] if single else m)[:, None].float()
    yy, xx = torch.meshgrid(torch.arange(-r, r + 1), torch.arange(-r, r + 1), indexing="ij")
    disc = ((yy ** 2 + xx ** 2) <= r * r).float()[None, None]
    out = F.conv2d(m4, disc, padding=r)[:, 0] > 0.5
    return out[0] if single else out


def cam_mass_in_mask(cam: Any, mask: Any) -> float | np.ndarray:
    """Share of the CAM's total mass inside the boolean mask: sum(cam·mask) / sum(cam).

    (H, W) inputs give a float, (B, H, W) a (B,) array (a (H, W) mask is shared). NaN for an
    all-zero map. Chance level: `cam_mass_baseline(mask)`.
    """
    c, m, single = _pair(cam, mask)
    total = c.flatten(1).sum(1)
    inside = (c * m).flatten(1).sum(1)
    v = torch.where(total > 0, inside / total.clamp_min(1e-300),
                    torch.full_like(total, float("nan")))
    return _out(v, single)


def pointing_game(cam: Any, mask: Any, tolerance_px: int = 0) -> float | np.ndarray:
    """1.0 if the CAM's maximum lies inside the mask (dilated by `tolerance_px`), else 0.0.

    If several pixels share the maximum value the score is the share of them inside, so a flat
    map scores exactly the (dilated) mask's area fraction, the chance level
    (`pointing_game_baseline`). Averaged over a data set this is the pointing-game accuracy.
    (H, W) inputs give a float, (B, H, W) a (B,) array.
    """
    c, m, single = _pair(cam, mask)
    m = dilate(m, tolerance_px)
    peak = c.flatten(1).amax(1)[:, None, None]
    at_max = c == peak
    v = (at_max & m).flatten(1).sum(1).double() / at_max.flatten(1).sum(1).double()
    return _out(v, single)


def cam_mass_baseline(mask: Any) -> float | np.ndarray:
    """`cam_mass_in_mask` of a uniform map: the mask's area fraction."""
    m = torch.as_tensor(_np(mask)).bool()
    single = m.dim() == 2
    m = m[None] if single else m
    return _out(m.flatten(1).double().mean(1), single)


def pointing_game_baseline(mask: Any, tolerance_px: int = 0) -> float | np.ndarray:
    """Expected `pointing_game` of a uniform (or uniformly random) peak: the dilated mask's
    area fraction."""
    return cam_mass_baseline(dilate(mask, tolerance_px))


def localisation_scores(cam: Any, mask: Any, tolerance_px: int = 0) -> dict[str, Any]:
    """Both scores with their uniform-map baselines, for a report."""
    return {
        "mass_in_mask": cam_mass_in_mask(cam, mask),
        "mass_baseline": cam_mass_baseline(mask),
        "pointing_game": pointing_game(cam, mask, tolerance_px),
        "pointing_baseline": pointing_game_baseline(mask, tolerance_px),
        "tolerance_px": int(tolerance_px),
    }


def localisation_columns(cams: torch.Tensor, mask: torch.Tensor, pred: torch.Tensor,
                         y: torch.Tensor, tolerance_px: int = 0) -> dict[str, torch.Tensor]:
    """Per-image localisation scores of a batch, as a classifier's `evaluate` returns them.

    cams (B, H, W) and mask (B, 1, H, W) (bool); pred and y (B,) predicted and true classes.
    Each output is a float32 (B,) tensor on `pred`'s device: cam_mass, cam_mass_base,
    cam_point, cam_point_base (NaN for an image without a lesion pixel) and cam_correct
    (1.0 where pred == y). `localisation_summary` averages them over a split.
    """
    m = mask[:, 0].bool().cpu()
    has = m.flatten(1).any(1)
    s = localisation_scores(cams.cpu(), m, tolerance_px)
    nan = torch.full((len(cams),), float("nan"))

    def col(v):
        return torch.where(has, torch.as_tensor(np.asarray(v), dtype=torch.float32), nan).to(pred.device)

    return {"cam_mass": col(s["mass_in_mask"]), "cam_mass_base": col(s["mass_baseline"]),
            "cam_point": col(s["pointing_game"]), "cam_point_base": col(s["pointing_baseline"]),
            "cam_correct": (pred == y).float()}


def localisation_summary(collected: dict[str, torch.Tensor]) -> dict[str, float]:
    """Means of the per-image scores of `localisation_columns` (concatenated over a split):
    loc/n lesion images, loc/{mass,mass_base,point,point_base} over them, and
    loc/{mass,point}_correct over the correctly classified ones (NaN where there are none)."""
    mass = collected["cam_mass"].double().cpu()
    has = ~torch.isnan(mass)
    correct = collected["cam_correct"].cpu().bool() & has
    out = {"loc/n": float(has.sum())}
    for key, name in (("cam_mass", "mass"), ("cam_mass_base", "mass_base"),
                      ("cam_point", "point"), ("cam_point_base", "point_base")):
        v = collected[key].double().cpu()
        out[f"loc/{name}"] = float(v[has].mean()) if has.any() else float("nan")
        if name in ("mass", "point"):
            out[f"loc/{name}_correct"] = float(v[correct].mean()) if correct.any() else float("nan")
    return out
