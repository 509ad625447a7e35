"""The GAN family's recipe keys (model.*): the `Config` of genlab.families.gan."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from genlab.core.schema import param


@dataclass
class GANConfig:
    loss: Literal["ns", "hinge", "wgan-gp"] = param("hinge", help="adversarial loss: non-saturating, "
                                                    "hinge, or Wasserstein with gradient penalty")
    z_dim: int = param(64, ge=1, help="size of the generator's noise vector")
    g_width: int = param(16, ge=1, help="generator channels at full resolution, doubling per layer")
    d_width: int = param(16, ge=1, help="discriminator channels of the first conv, doubling per layer")
    max_width: int = param(256, ge=1, help="cap on the channels of any layer")
    features: int = param(128, ge=1, help="discriminator trunk output: the exported feature vector")
    g_norm: Literal["batch", "none"] = param("batch", help="generator normalisation (batch: "
                                             "statistics of the generated batch, also when sampling)")
    g_full_res: int = param(0, ge=0, help="generator conv layers at full resolution with g_width "
                            "channels, the last of which makes the image (0: the image is the "
                            "last upsampling layer's output)")
    g_upsample: Literal["transposed", "nearest"] = param("nearest", help="generator x2 layers: "
                                                         "4x4 transposed conv, or nearest resize + 3x3 conv")
    g_output: Literal["sigmoid", "clamp"] = param("sigmoid", help="generator output: sigmoid, or a "
                                                  "clamp to [0, 1] with a straight-through gradient")
    spectral_norm: bool = param(True, help="spectral normalisation of every discriminator layer")
    d_mbstd: int = param(0, ge=0, help="minibatch-std feature in D's head: group size (0: off); "
                         "lets D see a batch's lack of variety, against mode collapse")
    gp_weight: float = param(10.0, ge=0, help="gradient-penalty weight (loss wgan-gp)")
    g_diversity: float = param(0.0, ge=0, help="mode-seeking term in G's loss (Mao et al. 2019): "
                               "minus this times log(mean |G(z1) - G(z2)| / mean |z1 - z2|) over "
                               "pairs of the batch (of one class when conditional), on "
                               "4x4-average-pooled images (0: off)")
    d_steps: int = param(1, ge=1, help="discriminator updates per generator update (per trainer step)")
    lr_d: float | None = param(None, gt=0, help="discriminator learning rate (null: train.lr); TTUR")
    lr_g: float | None = param(None, gt=0, help="generator learning rate (null: train.lr); TTUR")
    ema_decay: float = param(0.999, ge=0, lt=1, help="EMA of generator weights, used for samples "
                             "and scores: beta_t = min(ema_decay, (1+t)/(10+t)); 0: no averaging")
    conditional: bool = param(False, help="class-conditional G (label embedding) and projection D")
    g_class_norm: bool = param(False, help="conditional G: every batch norm takes a per-class gain "
                               "and bias (conditional batch norm), so the class shapes each "
                               "resolution, not only the input; needs conditional and g_norm batch")
    fid_extractor: Path | None = param(None, must_exist=True, help="exported encoder bundle used as "
                                       "the FD judge (null: fixed random-weight conv net 'random_conv')")
    fid_samples: int = param(500, ge=8, help="samples per set for FD and precision/recall (the split "
                             "evaluated must hold 2x this; fewer: N/2, reported as fid_samples)")
    fid_halves: Literal["stratified", "first"] = param(
        "stratified", help="how the evaluated split's real images are cut into the reference set "
        "and the floor's set (the samples share the floor set's labels): stratified (when the "
        "data have labels, both sets hold each class in the same number: a cut's chance class "
        "mix moves the floor several-fold from one split to another) or first (the split's "
        "first n images and the next n, as runs before this option were scored)")
    pr_k: int = param(3, ge=1, help="k of the k-NN manifolds for precision/recall")
    lesion_judge: Path | None = param(None, must_exist=True, help="lesion-judge folder (a frozen "
                                      "classifier, e.g. judges/lesion_judge_brain): adds FD, "
                                      "precision/recall, lesion rate and agreement under it")
    d_projection: bool = param(True, help="conditional D: add the projection term "
                               "<embed(y), h> to its score (false: only ac_weight makes D see "
                               "the class)")
    ac_weight: float = param(0.0, ge=0, help="auxiliary classifier (AC-GAN, Odena et al. 2017): "
                             "a linear class head on D's trunk features; D's loss adds this times "
                             "its cross-entropy on the real images, G's this times its "
                             "cross-entropy on the fakes against their class (0: off; needs "
                             "conditional)")
    ac_fakes: Literal["off", "class", "fake"] = param(
        "off", help="what D's class head learns from the fakes: off (real images only), class "
        "(AC-GAN as published: their conditioning class), fake (an extra class K+1, 'generated', "
        "as in the semi-supervised GAN of Salimans et al. 2016: the head then also judges "
        "whether the class evidence looks real, so G cannot pass with an adversarial texture)")
    g_ac_floor: Literal["none", "real"] = param(
        "none", help="G's class term: none (AC-GAN as published: the fakes' mean cross-entropy, "
        "which keeps rewarding samples the class head is surer of than of real ones) or real (each "
        "fake's cross-entropy above the real batch's mean only: no pull past the real images' "
        "confidence, against samples that overshoot their class; needs ac_weight > 0)")
    g_feature_match: float = param(0.0, ge=0, help="the weight of G's feature match: per class "
                                   "(one class if unconditional), moving averages of the pooled conv "
                                   "maps D's class head reads (ac_pool) on generated slices pulled to "
                                   "those on real ones (genlab/families/gan_feature_match.py; needs "
                                   "ac_weight > 0; 0: off). Logged: g_feature_gap, the squared gap")
    g_ac_floor_from: int = param(0, ge=0, help="the step from which g_ac_floor applies (before it: "
                                 "the plain class term): D's class head first learns classes it "
                                 "sees only faintly (hard mode), then G stops at its confidence")
    r1_gamma: float = param(0.0, ge=0, help="R1 penalty (Mescheder et al. 2018): D's loss adds "
                            "r1_gamma / 2 * mean |grad_x D(x)|^2 over the real images (0: off)")
    r1_every: int = param(1, ge=1, help="lazy R1: the penalty every this many steps, scaled by it "
                          "(Karras et al. 2020); 1: every step")
    d_augment: list[Literal["brightness", "contrast", "translation"]] = param(
        default_factory=list, help="DiffAugment (Zhao et al. 2020): differentiable transformations "
        "applied to real and fake images before D, in both updates, in this order "
        "(genlab.nn.gan_augment); []: none")
    g_atlas: Path | None = param(None, must_exist=True, help="an exported atlas encoder (family "
                                 "atlas, e.g. runs/pretrain_atlas_brain/<run>/export): G then draws "
                                 "no anatomy but a pose for this frozen atlas, a set of soft lesion "
                                 "discs and a noise amplitude (genlab.nn.gan_atlas); the conv G keys "
                                 "(g_width, g_norm, g_upsample, g_output, g_class_norm, g_full_res) "
                                 "do not apply (null: the conv generator)")
    g_lesion_slots: int = param(48, ge=1, help="g_atlas: the most lesion discs one image can have")
    g_lesion_layout: Literal["slots", "lattice"] | dict[str, Literal["slots", "lattice"]] = param(
        "slots", help="g_atlas: where a cluster's discs sit: slots (around the cluster centre at "
        "a drawn spread plus an offset learnt per slot) or lattice (the points of a hexagonal "
        "lattice nearest the centre, turned and jittered at random, at a learnt spacing: no two "
        "discs nearer than 1.2 px; genlab.nn.gan_lesion_layout); or per class, a mapping of class "
        "names to layouts, e.g. {B: lattice}, the classes not named drawing slots (needs "
        "conditional)")
    g_lesion_gain: list[float] | None = param(None, help="g_atlas: [low, high], the brightness a "
                                              "lesion may add where it saturates; G starts at "
                                              "the middle (null: [0.15, 0.6], starting at 0.35, "
                                              "for easy-mode tumours)")
    d_atlas_view: float = param(0.0, ge=0, help="g_atlas: D sees x + this times (x - the atlas's "
                                "rendering of x at its own pose), real and fake alike: the slice's "
                                "departure from the healthy anatomy (its tumours) amplified, for "
                                "faint hard-mode tumours (0: D sees x)")
    g_anatomy_residual: int = param(0, ge=0, help="g_atlas: this many learnt maps in the "
                                    "template's coordinates (zero at step 0), the first added to "
                                    "every image, the others weighted by a linear map of z, never "
                                    "the class: the anatomy the atlas misses (its misfit), drawn "
                                    "for every class alike (genlab.nn.gan_anatomy; 0: off)")
    g_lesion_min_count: dict[str, float] = param(default_factory=dict, help="g_atlas, conditional: "
                                                 "class name -> the least number of discs G draws "
                                                 "for it, e.g. {B: 4} (classes not named: none)")
    g_lesion_count_draw: dict[str, list[int]] = param(default_factory=dict, help="g_atlas, conditional: "
                                                      "class name -> [least, most] discs, e.g. "
                                                      "{B: [4, 11]}: each image of that class draws its "
                                                      "disc count uniformly in it, as the factory draws "
                                                      "its tumour counts, not learnt (classes not "
                                                      "named: learnt)")
    g_lesion_min_sigma: dict[str, float] = param(default_factory=dict, help="g_atlas, conditional: "
                                                 "class name -> the least sigma (px) of its discs, "
                                                 "e.g. {B: 1.2} (classes not named: 0.5, the least "
                                                 "G may draw)")
    g_lesion_min_spacing: dict[str, float] = param(default_factory=dict, help="g_atlas, conditional, "
                                                   "a lattice layout: class name -> the least spacing "
                                                   "(px) of its lattice, e.g. {B: 6} (classes not named: "
                                                   "3, the least G may draw)")
    g_lesion_profile: Literal["gaussian", "ramp"] | dict[str, Literal["gaussian", "ramp"]] = param(
        "gaussian", help="g_atlas: the shape of a lesion disc: gaussian (a saturated Gaussian, "
        "overlapping discs add up) or ramp (a flat disc whose edge falls linearly, the brightest "
        "disc wins where discs overlap; g_lesion_min_sigma then bounds its radius); or per class, "
        "a mapping of class names to profiles, e.g. {A: ramp}, the classes not named gaussian "
        "(needs conditional)")
    g_lesion_gain_draw: bool = param(False, help="g_atlas: each image's lesion gain drawn uniformly "
                                     "in g_lesion_gain, as the factory draws its tumours', not "
                                     "learnt (needs g_lesion_gain)")
    g_noise_range: list[float] | None = param(None, help="g_atlas: [low, high], each image's noise "
                                              "amplitude (uniform per-pixel noise in +-amp) drawn "
                                              "uniformly in it from its own latent number, as the "
                                              "brain factory draws its [0, 0.05], not learnt from z "
                                              "(learnt, a hard-mode G gave every image ~0.012)")
    g_pose_cov: Literal["diagonal", "full"] = param(
        "diagonal", help="g_atlas: how G draws the anatomy's pose (scale, shift, gain, offset) around "
        "the real slices' poses: diagonal (each number apart, the spread of the first batch) or full "
        "(their covariance over 1,024 training slices, fitted before the first step: the brain "
        "factory's gain and offset go together, correlation -0.68)")
    g_lesion_share: float | None = param(None, gt=0, lt=1, help="g_atlas, unconditional: each "
                                         "sample carries its lesions with a learnt probability "
                                         "(the share), starting at this value, trained as "
                                         "g_lesion_share_by says (null: every sample draws them)")
    g_lesion_share_by: Literal["adversarial", "features", "count"] = param(
        "adversarial", help="g_lesion_share: what trains the share: adversarial (D's score on each "
        "sample with and without its lesions), features (the batch mean of D's max-pooled conv "
        "maps, matched between real and generated slices) or count (a census net of its own, trained "
        "on G's with/without pairs, counts the real slices that score like G's healthy twins; the "
        "share is pulled to that count: genlab.families.gan_census)")
    g_lesion_look: float = param(0.0, ge=0, help="g_lesion_share_by count: the weight of G's term "
                                 "pulling the census's mean score of its with-lesion renders to "
                                 "that of the real slices the census counts lesion-bearing (0: off; "
                                 "genlab.families.gan_census)")
    g_lesion_look_by: Literal["mean", "quantiles"] = param(
        "mean", help="g_lesion_look: what of the census's scores G matches, the mean (one kind "
        "of lesion that scores as the average one satisfies it) or 8 quantiles (the spread too: "
        "strong lesions and faint ones in the real slices' proportions)")
    ac_pool: Literal["max", "max+mean"] = param("max", help="how D's class head (ac_weight) pools "
                                                "each conv map over positions: max (is there a "
                                                "blob), or max+mean (and how many)")
    best_on: Literal["fid", "agreement", "lesion_fd"] = param(
        "fid", help="what checkpoints/best.pt is chosen on: the lowest Frechet distance under "
        "fid_extractor, the highest mean agreement under lesion_judge (needs conditional), or the "
        "lowest Frechet distance under lesion_judge over its real-vs-real floor (lesion_fd; needs "
        "a lesion_judge)")

    def __post_init__(self):
        if self.g_class_norm and not (self.conditional and self.g_norm == "batch"):
            raise ValueError(f"g_class_norm: true needs conditional: true and g_norm: batch (got "
                             f"conditional: {self.conditional}, g_norm: {self.g_norm})")
        if self.ac_weight > 0 and not self.conditional:
            raise ValueError(f"ac_weight: {self.ac_weight} needs conditional: true (the class head "
                             "learns the labels)")
        if self.g_ac_floor != "none" and self.ac_weight == 0:
            raise ValueError(f"g_ac_floor: {self.g_ac_floor} needs ac_weight > 0")
        if self.g_feature_match and self.ac_weight == 0:
            raise ValueError(f"g_feature_match: {self.g_feature_match} needs ac_weight > 0 (it matches "
                             f"the pooled conv maps D's class head reads)")
        if self.g_ac_floor_from and self.g_ac_floor == "none":
            raise ValueError(f"g_ac_floor_from: {self.g_ac_floor_from} needs g_ac_floor: real")
        if self.ac_fakes != "off" and self.ac_weight == 0:
            raise ValueError(f"ac_fakes: {self.ac_fakes} needs ac_weight > 0")
        if self.g_atlas is not None and (self.g_class_norm or self.g_full_res):
            raise ValueError("g_atlas draws no conv layers: leave g_class_norm and g_full_res off "
                             f"(got g_class_norm: {self.g_class_norm}, g_full_res: {self.g_full_res})")
        if self.d_atlas_view > 0 and self.g_atlas is None:
            raise ValueError(f"d_atlas_view: {self.d_atlas_view} needs g_atlas (the atlas it compares with)")
        if self.best_on == "lesion_fd" and self.lesion_judge is None:
            raise ValueError("best_on: lesion_fd needs a lesion_judge (got lesion_judge: None)")
        if self.best_on == "agreement" and not (self.conditional and self.lesion_judge is not None):
            raise ValueError("best_on: agreement needs conditional: true and a lesion_judge (got "
                             f"conditional: {self.conditional}, lesion_judge: {self.lesion_judge})")
        if isinstance(self.g_lesion_layout, dict) and not (self.conditional and self.g_lesion_layout):
            raise ValueError(f"g_lesion_layout: a layout per class needs conditional: true and at "
                             f"least one class (got {self.g_lesion_layout}, conditional: {self.conditional})")
        if (self.g_anatomy_residual or self.g_lesion_min_count) and self.g_atlas is None:
            raise ValueError(f"g_anatomy_residual: {self.g_anatomy_residual} and g_lesion_min_count: "
                             f"{self.g_lesion_min_count} need g_atlas (they shape the atlas G)")
        if isinstance(self.g_lesion_profile, dict) and not (self.conditional and self.g_lesion_profile):
            raise ValueError(f"g_lesion_profile: a profile per class needs conditional: true and at "
                             f"least one class (got {self.g_lesion_profile}, conditional: "
                             f"{self.conditional})")
        if self.g_lesion_profile != "gaussian" and self.g_atlas is None:
            raise ValueError(f"g_lesion_profile: {self.g_lesion_profile} needs g_atlas (it shapes the "
                             f"atlas G's lesions)")
        if self.g_pose_cov != "diagonal" and self.g_atlas is None:
            raise ValueError(f"g_pose_cov: {self.g_pose_cov} needs g_atlas (the pose it draws)")
        if self.g_lesion_gain_draw and (self.g_atlas is None or self.g_lesion_gain is None):
            raise ValueError(f"g_lesion_gain_draw: true needs g_atlas and g_lesion_gain (the range it "
                             f"draws in; got g_atlas: {self.g_atlas}, g_lesion_gain: {self.g_lesion_gain})")
        noise = self.g_noise_range
        if noise is not None and (self.g_atlas is None or len(noise) != 2
                                  or not 0 <= noise[0] < noise[1] <= 0.5):
            raise ValueError(f"g_noise_range: {noise} needs g_atlas and two amplitudes 0 <= low < "
                             "high <= 0.5")
        if self.g_lesion_look and self.g_lesion_share_by != "count":
            raise ValueError(f"g_lesion_look: {self.g_lesion_look} needs g_lesion_share_by: count (the "
                             f"census it reads), got {self.g_lesion_share_by!r}")
        if self.g_lesion_look_by != "mean" and not self.g_lesion_look:
            raise ValueError(f"g_lesion_look_by: {self.g_lesion_look_by} needs g_lesion_look > 0")
        if self.g_lesion_share_by != "adversarial" and self.g_lesion_share is None:
            raise ValueError(f"g_lesion_share_by: {self.g_lesion_share_by} needs g_lesion_share")
        if self.g_lesion_share is not None and (self.conditional or self.g_atlas is None):
            raise ValueError(f"g_lesion_share: {self.g_lesion_share} needs g_atlas and conditional: false "
                             "(a conditional G's class says whether it draws a tumour)")
        if self.g_lesion_min_count and not self.conditional:
            raise ValueError(f"g_lesion_min_count: {self.g_lesion_min_count} needs conditional: true")
        if self.g_lesion_min_sigma and not (self.conditional and self.g_atlas is not None):
            raise ValueError(f"g_lesion_min_sigma: {self.g_lesion_min_sigma} needs g_atlas and "
                             "conditional: true")
        bad = {c: v for c, v in self.g_lesion_min_sigma.items() if not 0.5 <= v < 8.0}
        if bad:
            raise ValueError(f"g_lesion_min_sigma: expected sigmas in [0.5, 8) px, got {bad}")
        if self.g_lesion_min_spacing and not (self.conditional and self.g_atlas is not None
                                              and "lattice" in _layouts(self.g_lesion_layout)):
            raise ValueError(f"g_lesion_min_spacing: {self.g_lesion_min_spacing} needs g_atlas, "
                             f"conditional: true and a lattice in g_lesion_layout (got "
                             f"{self.g_lesion_layout!r})")
        bad = {c: v for c, v in self.g_lesion_min_spacing.items() if not 3.0 <= v < 12.0}
        if bad:
            raise ValueError(f"g_lesion_min_spacing: expected spacings in [3, 12) px, got {bad}")
        bad = {c: v for c, v in self.g_lesion_min_count.items() if not 0 <= v <= self.g_lesion_slots}
        if bad:
            raise ValueError(f"g_lesion_min_count: expected counts in [0, g_lesion_slots = "
                             f"{self.g_lesion_slots}], got {bad}")
        counts = self.g_lesion_count_draw
        if counts and not (self.conditional and self.g_atlas is not None):
            raise ValueError(f"g_lesion_count_draw: {counts} needs g_atlas and conditional: true")
        bad = {c: v for c, v in counts.items()
               if not (isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(n, int) for n in v)
                       and 0 <= v[0] <= v[1] <= self.g_lesion_slots)}
        if bad:
            raise ValueError(f"g_lesion_count_draw: expected [least, most], whole numbers with 0 <= least "
                             f"<= most <= g_lesion_slots = {self.g_lesion_slots}, got {bad}")
        both = sorted(set(counts) & set(self.g_lesion_min_count))
        if both:
            raise ValueError(f"g_lesion_count_draw and g_lesion_min_count both name class {both[0]!r}: a "
                             f"drawn count has its least in its range")
        if self.ac_pool != "max" and self.ac_weight == 0:
            raise ValueError(f"ac_pool: {self.ac_pool} needs ac_weight > 0 (the class head it pools for)")
        gain = self.g_lesion_gain
        if gain is not None and not (len(gain) == 2 and 0 < gain[0] < gain[1]):
            raise ValueError(f"g_lesion_gain: expected [low, high] with 0 < low < high, got {gain}")
        if len(set(self.d_augment)) != len(self.d_augment):
            raise ValueError(f"d_augment: each transformation at most once, got {self.d_augment}")


def _layouts(layout) -> list[str]:
    """model.g_lesion_layout's layouts: a name, or the values of a mapping per class."""
    return [layout] if isinstance(layout, str) else list(layout.values())
