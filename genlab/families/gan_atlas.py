"""The GAN family's atlas generator (`model.g_atlas`): built from an exported atlas encoder.

The export is read with genlab.families.export.load_encoder, checked (an atlas, for images of
the data's shape) and its template and pose net copied into a genlab.nn.gan_atlas.AtlasGenerator,
where they stay frozen. Frozen, because the template is the healthy anatomy the atlas learnt
with an L1 loss (the median): trained adversarially it would be shared by every sample of every
class, so the only class cue G could paint into it is a tumour in every image, or a drift of the
anatomy D then has to chase; frozen, all of G's learning goes into pose, lesions and noise.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from genlab.core.errors import GenlabError, RecipeError
from genlab.data.base import DataInfo
from genlab.data.sampler import eval_batches
from genlab.nn.gan_atlas import AtlasGenerator

if TYPE_CHECKING:
    from genlab.families.gan_config import GANConfig

KEY = "model.g_atlas"


def build_atlas_generator(cfg: GANConfig, info: DataInfo, num_classes: int) -> tuple[AtlasGenerator, dict]:
    """(generator, its constructor arguments) with the atlas of the export at cfg.g_atlas (cfg:
    the family's GANConfig: z_dim and the g_lesion_* keys)."""
    from genlab.families.export import load_encoder

    path = cfg.g_atlas
    try:
        enc = load_encoder(path)
    except GenlabError as e:  # no bundle there, or a broken one: say which recipe key named it
        raise RecipeError(KEY, f"no usable atlas export at '{path}': {e}") from e
    meta = enc.bundle_meta
    if meta.get("builder") != "atlas_encoder" or not hasattr(enc, "atlas"):
        raise RecipeError(KEY, f"'{path}' holds a {meta.get('builder')!r} encoder (family "
                          f"{meta.get('family')!r}); expected an atlas export (family atlas)")
    shape = [int(v) for v in meta["input_shape"]]
    if shape != [int(v) for v in info.input_shape]:
        raise RecipeError(KEY, f"the atlas at '{path}' is for {tuple(shape)} images, the data are "
                          f"{tuple(info.input_shape)}")
    atlas_cfg = meta["config"]
    args = {"out_shape": shape, "widths": list(atlas_cfg["widths"]), "up": int(atlas_cfg["up"]),
            "code_dim": cfg.z_dim, "num_classes": num_classes, "slots": cfg.g_lesion_slots,
            "max_log_scale": float(atlas_cfg.get("max_log_scale", 0.3)),
            "max_shift": float(atlas_cfg.get("max_shift", 0.3))}
    # only when not the default: bundles written before these keys load as they were
    layout = names_in_class_order(cfg.g_lesion_layout, info.class_names, "model.g_lesion_layout", "slots")
    if layout != "slots":
        args["layout"] = layout
    if cfg.g_lesion_gain is not None:
        args["lesion_gain"] = [float(v) for v in cfg.g_lesion_gain]
    profile = names_in_class_order(cfg.g_lesion_profile, info.class_names, "model.g_lesion_profile",
                                   "gaussian")
    if profile != "gaussian":
        args["profile"] = profile
    if cfg.g_lesion_gain_draw:
        args["gain_draw"] = True
    if cfg.g_pose_cov != "diagonal":
        args["pose_cov"] = cfg.g_pose_cov
    if cfg.g_noise_range is not None:
        args["noise_range"] = [float(v) for v in cfg.g_noise_range]
    if cfg.g_lesion_share is not None:
        args["lesion_share"] = float(cfg.g_lesion_share)
    if cfg.g_anatomy_residual:
        args["anatomy_maps"] = int(cfg.g_anatomy_residual)
    if cfg.g_lesion_min_count:
        args["min_count"] = per_class_counts(cfg.g_lesion_min_count, info.class_names)
    if cfg.g_lesion_count_draw:
        ranges = names_in_class_order(cfg.g_lesion_count_draw, info.class_names,
                                      "model.g_lesion_count_draw", None)
        args["count_range"] = [None if r is None else list(r) for r in ranges]
    if cfg.g_lesion_min_sigma:
        args["min_sigma"] = per_class_counts(cfg.g_lesion_min_sigma, info.class_names,
                                             "model.g_lesion_min_sigma", 0.5)
    if cfg.g_lesion_min_spacing:
        args["min_spacing"] = per_class_counts(cfg.g_lesion_min_spacing, info.class_names,
                                               "model.g_lesion_min_spacing", 3.0)
        names = [str(n) for n in info.class_names]
        on_slots = [c for c in cfg.g_lesion_min_spacing
                    if not isinstance(layout, str) and layout[names.index(c)] != "lattice"]
        if on_slots:  # a spacing only shapes a lattice: on slots it would be ignored without a word
            raise RecipeError("model.g_lesion_min_spacing", f"class {on_slots[0]!r} is drawn as slots "
                              f"(g_lesion_layout: {cfg.g_lesion_layout}); expected classes on the lattice")
    gen = AtlasGenerator(**args)
    gen.atlas.load_state_dict(enc.atlas.state_dict())
    gen.fit_template_frame()
    return gen, args


def names_in_class_order(value: str | dict, class_names, key: str, unnamed) -> str | list:
    """A per-class key (model.g_lesion_layout, g_lesion_profile, g_lesion_count_draw) as the
    generator takes it: a name as it is; a mapping of class names to values as one value per class
    of the data, in class order, `unnamed` where a class is not named."""
    if isinstance(value, str):
        return value
    names = [str(c) for c in class_names]
    unknown = [c for c in value if c not in names]
    if unknown:
        raise RecipeError(key, f"unknown class {unknown[0]!r} in {value}; "
                          f"expected class names of the data: {', '.join(names)}")
    return [value.get(c, unnamed) for c in names]


def per_class_counts(counts: dict[str, float], class_names, key: str = "model.g_lesion_min_count",
                     unnamed: float = 0.0) -> list[float]:
    """A mapping of class names to numbers (model.g_lesion_min_count, g_lesion_min_sigma) as the
    generator takes it: one number per class, in class order, `unnamed` for the classes not named."""
    names = [str(c) for c in class_names]
    unknown = [c for c in counts if c not in names]
    if unknown:
        raise RecipeError(key, f"unknown class {unknown[0]!r} in {counts}; "
                          f"expected class names of the data: {', '.join(names)}")
    return [float(counts.get(c, unnamed)) for c in names]


@torch.no_grad()
def fit_atlas_pose(gen: AtlasGenerator, gen_ema: AtlasGenerator, real: torch.Tensor) -> None:
    """The real images' pose statistics into G and its EMA copy (at a run's first step, from its
    batch; with pose_cov full before it, from POSE_FIT_IMAGES training images)."""
    gen.fit_pose(real)
    for name in ("pose_mean", "pose_sd", "pose_ready") + (("pose_chol",) if gen.pose_cov == "full" else ()):
        getattr(gen_ema, name).copy_(getattr(gen, name))


POSE_FIT_IMAGES = 1024  # a 6 x 6 covariance: 32 images (one batch) left its correlations to chance


@torch.no_grad()
def fit_atlas_pose_on_data(gen: AtlasGenerator, gen_ema: AtlasGenerator, data, device) -> None:
    """Before a fresh run's first step (pose_cov full): the poses of the first POSE_FIT_IMAGES
    training images. Draws no random numbers (the data source is indexed)."""
    n = min(POSE_FIT_IMAGES, data.size("train"))
    x = torch.cat([data.get("train", idx)["x"].to(device).float() for idx in eval_batches(n, 256)])
    fit_atlas_pose(gen, gen_ema, x)


def atlas_view(gen: AtlasGenerator, x: torch.Tensor, k: float) -> torch.Tensor:
    """x + k (x - the atlas's rendering of x at x's own pose): what D sees with d_atlas_view k.
    The rendering is the healthy anatomy, so the difference is what the slice adds to it (its
    tumours, its noise); amplified, hard mode's faint tumours (0.06-0.13 above the anatomy) stand
    out to D as easy mode's do, while the image keeps its anatomy for D's real/fake judgement.
    The rendering is a constant to the gradients (the atlas is frozen and no one trains its pose
    net): D's gradient reaches x, and through it G, times 1 + k."""
    with torch.no_grad():
        base = gen.atlas.render(gen.atlas.pose(x)).clamp(0, 1).to(x.dtype)
    return x + k * (x - base)


__all__ = ["KEY", "POSE_FIT_IMAGES", "atlas_view", "build_atlas_generator", "fit_atlas_pose",
           "fit_atlas_pose_on_data", "names_in_class_order", "per_class_counts"]
