"""GANs ("gan"): DCGAN-style generator and discriminator through the shared trainer.

One trainer step = `d_steps` discriminator updates on the step's real batch (fresh noise each),
then one generator update, then the EMA of the generator's weights. Optimizers "d" and "g" get
the trainer's precision, clipping, schedules and checkpoints like any other.
The defaults are the SN-GAN setup that scored best on the brain slices (hinge loss, spectral
norm in D, resize + 3x3 conv upsampling in G); recipes/gan_brain.yaml adds the two anti-collapse
options below (d_mbstd, g_diversity); recipes/gan_digits.yaml is the classic DCGAN.

Losses: ns (non-saturating), hinge, wgan-gp; their formulas are in genlab.nn.gan_losses.
Against mode collapse, optionally: a minibatch-std feature in D's head (`d_mbstd`) and a
mode-seeking term in G's loss, - g_diversity * log(mean |G(z1) - G(z2)| / mean |z1 - z2|).
For conditional runs whose classes differ in small details (the brain tumours), optionally:
an auxiliary classifier on D (`ac_weight`, AC-GAN): D's loss adds its cross-entropy on the real
images (`ac_fakes`: also on the fakes, as their class or as an extra "generated" one), G's the
cross-entropy of that head on its fakes against their class, so D must learn what separates
the classes and G must draw it; against a D that overfits or wins, the R1 penalty on real
images (`r1_gamma`, lazily every `r1_every` steps) and DiffAugment (`d_augment`,
genlab.nn.gan_augment) on both D inputs. With `g_atlas`, G draws no anatomy: a frozen learned
atlas at a drawn pose, plus drawn lesion discs and noise (genlab.nn.gan_atlas); `d_atlas_view`
shows D each slice's departure from that atlas, amplified (genlab.families.gan_atlas).

Scores (`summarize`, over the evaluated split, from the EMA generator): features come from a
fixed judge, `fid_extractor` (an exported genlab encoder trained on the same data) or, when
null, "random_conv", a conv net with fixed random weights (seed 0). With n = min(fid_samples,
N/2) and the split's examples [0, N) (with labels and `fid_halves: stratified`, reordered so that
real[:n] and real[n:2n] hold each class in the same number): reference R = real[n:2n];
    fid/<judge>        FD(n EMA samples, R); the samples use the labels of real[:n]
    fid_floor/<judge>  FD(real[:n], R): what a perfect generator would score at this n
    fid_ratio          fid / fid_floor (1 is perfect; sample-size bias cancels to first order)
    precision, recall  k-NN manifolds (Kynkäänniemi et al. 2019) of samples vs R, and the same
                       for real[:n] (precision_floor, recall_floor)
    diversity          mean pairwise feature distance of the samples / of real[:n]
With `lesion_judge` (a frozen classifier, genlab.families.gan_judge) beside them: the same
protocol in its features (fid/<its name>, ...), the share of samples it calls lesion-bearing
against the real images, and for conditional runs the share it assigns to their class
(agreement); the list is in genlab.families.gan_scores.
"""
from __future__ import annotations

import copy
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from genlab.core.registry import register_family
from genlab.data.base import DataInfo
from genlab.families.base import EncoderSpec, Family, StepContext, eval_generator
from genlab.families.gan_atlas import (
    atlas_view,
    build_atlas_generator,
    fit_atlas_pose,
    fit_atlas_pose_on_data,
)
from genlab.families.gan_census import LesionCensus
from genlab.families.gan_config import GANConfig
from genlab.families.gan_feature_match import ClassFeatureMatch
from genlab.families.gan_fid import build_fid_judge
from genlab.families.gan_scores import LesionScores, frechet_and_pr, stratified_order
from genlab.metrics import generative as gen_metrics
from genlab.nn.gan_atlas import ATLAS_GENERATOR_BUILDER
from genlab.nn.gan_augment import diff_augment
from genlab.nn.gan_blocks import Discriminator, DiscTrunk, Generator, gan_widths, save_generator
from genlab.nn.gan_losses import (
    d_loss_fn,
    ema_beta,
    g_class_loss,
    g_loss_fn,
    g_losses,
    gradient_penalty,
    mode_seeking_ratio,
    r1_penalty,
    same_class_pairs,
)
from genlab.nn.optim import build_optimizer
from genlab.viz.render import image_grid, tile_kernels

FIXED_NOISE_SEED = 1234  # the render grid's noise: the same at every render of every run
D_WINS_LOSS, D_WINS_STEPS = 0.05, 200  # warn when the D loss stays below this for this many steps
COLLAPSE_RECALL, COLLAPSE_DIVERSITY = 0.2, 0.5  # warn when recall or diversity falls below


@register_family("gan")
class GAN(Family):
    """GAN: DCGAN-style G and D (ns / hinge / wgan-gp), EMA generator, FD + precision/recall."""
    capabilities = frozenset({"sample", "encode"})

    Config = GANConfig

    def __init__(self, cfg: GANConfig, info: DataInfo):
        super().__init__()
        self.cfg, self.info = cfg, info
        _, h, w = info.input_shape
        self.conditional = cfg.conditional
        ncls = info.num_classes if cfg.conditional else 0
        self._trunk_args = {"in_shape": list(info.input_shape),
                            "channels": gan_widths(h, w, cfg.d_width, cfg.max_width),
                            "out_features": cfg.features, "spectral_norm": cfg.spectral_norm}
        self.D = Discriminator(info.input_shape, self._trunk_args["channels"], cfg.features, ncls,
                               cfg.spectral_norm, cfg.d_mbstd, self._ac_outputs(cfg, ncls),
                               cfg.d_projection, cfg.ac_pool)
        if cfg.g_atlas is not None:  # the anatomy from a frozen atlas; G draws pose and lesions
            self.G, self._gen_args = build_atlas_generator(cfg, info, ncls)
        else:
            self._gen_args = {"out_shape": list(info.input_shape), "z_dim": cfg.z_dim,
                              "num_classes": ncls, "norm": cfg.g_norm, "upsample": cfg.g_upsample,
                              "channels": gan_widths(h, w, cfg.g_width, cfg.max_width),
                              "output": cfg.g_output, "class_norm": cfg.g_class_norm}
            if cfg.g_full_res:  # only when on: bundles written before the key load as they were
                self._gen_args["full_res"] = cfg.g_full_res
            self.G = Generator(**self._gen_args)
        self.latent_dim = self.G.z_dim  # the atlas G's holds its disc and pose noise too
        # The EMA generator lives in the state_dict (checkpoints hold it); never optimised.
        self.G_ema = copy.deepcopy(self.G).requires_grad_(False)
        self._ac_real_ce: torch.Tensor | None = None  # D's class-head CE on the last real batch
        self._real_pooled: torch.Tensor | None = None  # g_lesion_share_by features: the real side
        self.census = (LesionCensus(DiscTrunk(**self._trunk_args), look=cfg.g_lesion_look > 0,
                                    look_by=cfg.g_lesion_look_by)  # not D's
                       if cfg.g_lesion_share_by == "count" else None)
        pooled = sum(self._trunk_args["channels"]) * (2 if cfg.ac_pool == "max+mean" else 1)
        self.feature_match = ClassFeatureMatch(ncls, pooled) if cfg.g_feature_match > 0 else None
        # The judge is a fixed function, kept out of the state_dict (a plain dict attribute).
        self.judge_name, judge = build_fid_judge(cfg.fid_extractor, info)
        self._judge = {"net": judge}
        self._lesion = (None if cfg.lesion_judge is None
                        else LesionScores(cfg.lesion_judge, info, cfg.conditional))
        self.monitor = (("agreement_mean", "max") if cfg.best_on == "agreement"
                        else (f"fid_ratio/{self._lesion.judge.name}", "min") if cfg.best_on == "lesion_fd"
                        else (f"fid/{self.judge_name}", "min"))
        self._d_low = 0  # consecutive steps with the D loss below D_WINS_LOSS
        self._warned: set[str] = set()

    @staticmethod
    def _ac_outputs(cfg: GANConfig, num_classes: int) -> int:
        """Logits of the class head: 0 (none), K, or K + 1 (the last one: "generated")."""
        if cfg.ac_weight == 0:
            return 0
        return num_classes + (1 if cfg.ac_fakes == "fake" else 0)

    def _warn_once(self, key: str, msg: str, stacklevel: int = 3) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(msg, RuntimeWarning, stacklevel=stacklevel)

    # -- the contract ------------------------------------------------------------------------
    def configure_optimizers(self, train):
        d_params = [*self.D.parameters(), *(() if self.census is None else self.census.parameters())]
        return {"d": build_optimizer(d_params, train, self.cfg.lr_d),
                "g": build_optimizer(self.G.parameters(), train, self.cfg.lr_g)}

    def _noise(self, n: int, device, generator: torch.Generator | None = None) -> torch.Tensor:
        if generator is None:
            return torch.randn(n, self.latent_dim, device=device)
        return torch.randn(n, self.latent_dim, generator=generator).to(device)

    def _view(self, x: torch.Tensor) -> torch.Tensor:
        """What D sees of x: x, or with d_atlas_view its difference from the atlas amplified."""
        return x if self.cfg.d_atlas_view == 0 else atlas_view(self.G, x, self.cfg.d_atlas_view)

    def _d(self, x: torch.Tensor, y: torch.Tensor | None, with_class: bool):
        """D on the augmented x (cfg.d_augment): (scores (B,), class logits (B, K) or None)."""
        out = self.D(diff_augment(self._view(x), self.cfg.d_augment), y, with_class)
        return (out[0].float(), out[1].float()) if with_class else (out.float(), None)

    def d_step(self, real: torch.Tensor, y: torch.Tensor | None, ctx: StepContext) -> dict:
        """One discriminator update; G's weights are only read (the fake batch is detached)."""
        cfg = self.cfg
        with torch.no_grad(), ctx.autocast():
            if self.census is None:
                fake = self.G(self._noise(real.shape[0], real.device), y)
            else:  # each latent both ways: the drawn one is D's fake, the pair trains the census
                with_l, without_l, on, _ = self.G(self._noise(real.shape[0], real.device), y, pair=True)
                fake = torch.where(on.view(-1, 1, 1, 1), with_l, without_l)
        r1_now = cfg.r1_gamma > 0 and ctx.step % cfg.r1_every == 0
        if r1_now:  # the penalty is a gradient with respect to the (un-augmented) real images
            real = real.detach().requires_grad_(True)
        ac = cfg.ac_weight > 0
        with ctx.autocast():
            d_real, cls_real = self._d(real, y, ac)
            if self.feature_match is not None:
                self.feature_match.observe_real(self.D.last_pooled.detach().float(), y)
            d_fake, cls_fake = self._d(fake, y, ac and cfg.ac_fakes != "off")
        loss = d_loss_fn(cfg.loss, d_real, d_fake)
        out = {"d_loss": loss.detach(), "d_real": d_real.mean().detach(), "d_fake": d_fake.mean().detach()}
        if ac:  # AC-GAN: D's class head learns the real labels (and the fakes' classes)
            ce = F.cross_entropy(cls_real, y)
            self._ac_real_ce = ce.detach().float()  # g_ac_floor: the confidence G's term stops at
            out.update(d_ac=ce.detach(), d_ac_acc=(cls_real.argmax(1) == y).float().mean())
            if cfg.ac_fakes != "off":  # their class, or the extra "generated" class K
                target = y if cfg.ac_fakes == "class" else torch.full_like(y, self.info.num_classes)
                ce = ce + F.cross_entropy(cls_fake, target)
            loss = loss + cfg.ac_weight * ce
        if r1_now:  # lazy: every r1_every steps, scaled by r1_every
            r1 = r1_penalty(d_real, real)
            loss = loss + cfg.r1_every * cfg.r1_gamma / 2 * r1
            out["r1"] = r1.detach()
        if cfg.loss == "wgan-gp":
            eps = torch.rand(real.shape[0], 1, 1, 1, device=real.device)
            gp = gradient_penalty(lambda x: self.D(self._view(x), y).float(), real, fake.float(), eps)
            loss = loss + self.cfg.gp_weight * gp
            out["gp"] = gp.detach()
        if self.census is not None:
            with ctx.autocast():
                census = self.census.learn(self._view(with_l), self._view(without_l),
                                           self._view(real.detach()))
            loss = loss + census["d_census_bce"]
            out.update({k: v.detach() for k, v in census.items()})
        if self.cfg.g_lesion_share_by == "features":  # the real side of the share's moment match
            with torch.no_grad():
                self._real_pooled = self._pooled(real.detach()).mean(0)
        ctx.update("d", loss)
        return out

    def _pooled(self, x: torch.Tensor) -> torch.Tensor:
        """D's max-pooled conv maps of x as D sees it (no augmentation): blob detectors' peaks."""
        return self.D.trunk.forward_pooled(self._view(x))[1].float()

    def g_step(self, n: int, y: torch.Tensor | None, ctx: StepContext) -> dict:
        """One generator update through a frozen D, then the EMA update of G_ema."""
        self.D.requires_grad_(False)
        try:
            if y is not None and self.cfg.g_diversity > 0 and n >= 2:
                y = same_class_pairs(y)
            z = self._noise(n, ctx.device)
            ac = self.cfg.ac_weight > 0
            gated = getattr(self.G, "gated", False)
            with ctx.autocast():
                if gated:
                    fake, share_term = self._gated_fakes(z, y)
                else:
                    fake = self.G(z, y)
                d_fake, cls_fake = self._d(fake, y, ac)
            loss = g_loss_fn(self.cfg.loss, d_fake)
            out = {"g_loss": loss.detach()}
            if gated:
                loss = loss + share_term(d_fake)
            if ac:  # AC-GAN: G draws what D's class head reads as the conditioning class
                floored = self.cfg.g_ac_floor == "real" and ctx.step >= self.cfg.g_ac_floor_from
                floor = self._ac_real_ce if floored else None
                ce = g_class_loss(cls_fake, y, floor)
                loss = loss + self.cfg.ac_weight * ce
                out.update(g_ac=ce.detach(), g_ac_acc=(cls_fake.argmax(1) == y).float().mean())
            if self.feature_match is not None:  # the class means of what D's class head reads of the
                # fakes (the pooled maps of the same forward: no extra one, D's state as without it)
                term, gap = self.feature_match.loss(self.D.last_pooled.float(), y)
                loss = loss + self.cfg.g_feature_match * term
                out["g_feature_gap"] = gap.detach()
            out.update(getattr(self.G, "last_stats", {}))  # the atlas G: discs on, their gain
            if self.cfg.g_diversity > 0 and n >= 2:
                ms = mode_seeking_ratio(fake.float(), z)
                loss = loss - self.cfg.g_diversity * torch.log(ms)
                out["g_mode_seeking"] = ms.detach()
            ctx.update("g", loss)
        finally:
            self.D.requires_grad_(True)
        self.update_ema(ctx.step)
        return out

    def _gated_fakes(self, z: torch.Tensor, y: torch.Tensor | None):
        """A gated atlas G's fakes (each with or without its lesions, as its gate drew) and the
        term that trains the share: given D and the rest of each draw, G's expected loss is
        share * l(with) + (1 - share) * l(without), so its derivative in the share is exactly
        mean(l(with) - l(without)), one extra D forward on the undrawn twins, no gradient through
        them. A score-function estimate would compare different brains; this pairs each with itself."""
        with_l, without_l, on, share = self.G(z, y, pair=True)
        m = on.view(-1, 1, 1, 1)
        fake = torch.where(m, with_l, without_l)
        if self.census is not None:  # the share pulled to the census's estimate of the real one
            if not self.census.has_look:
                return fake, lambda d_fake: self.census.share_loss(share)
            self.census.requires_grad_(False)  # G's term: no gradient into the census's weights
            try:
                look = self.cfg.g_lesion_look * self.census.look_loss(self.census.logits(self._view(with_l)))
            finally:
                self.census.requires_grad_(True)
            return fake, lambda d_fake: self.census.share_loss(share) + look
        if self.cfg.g_lesion_share_by == "features":
            # moment match: the expected batch mean of D's pooled maps, share * with + (1 -
            # share) * without per latent, against the last real batch's; exact in the share
            with torch.no_grad():
                p_with, p_without = self._pooled(with_l).mean(0), self._pooled(without_l).mean(0)
            gap = share * p_with + (1 - share) * p_without - self._real_pooled
            return fake, lambda d_fake: gap.pow(2).mean()
        with torch.no_grad():
            d_other, _ = self._d(torch.where(m, without_l, with_l), y, False)

        def share_term(d_fake: torch.Tensor) -> torch.Tensor:
            l_drawn = g_losses(self.cfg.loss, d_fake.detach())
            l_other = g_losses(self.cfg.loss, d_other)
            diff = torch.where(on, l_drawn - l_other, l_other - l_drawn)  # l(with) - l(without)
            return share * diff.mean()
        return fake, share_term

    @torch.no_grad()
    def update_ema(self, step: int) -> None:
        """G_ema <- beta G_ema + (1 - beta) G, beta = ema_beta(step, ema_decay)."""
        beta = ema_beta(step, self.cfg.ema_decay)
        for pe, p in zip(self.G_ema.parameters(), self.G.parameters()):
            pe.lerp_(p.detach(), 1 - beta)
        for be, b in zip(self.G_ema.buffers(), self.G.buffers()):
            be.copy_(b)

    def on_fit_start(self, data, device: torch.device) -> None:
        if self.cfg.g_atlas is not None and self.cfg.g_pose_cov == "full":
            fit_atlas_pose_on_data(self.G, self.G_ema, data, device)

    def training_step(self, batch, ctx: StepContext):
        real = batch["x"]
        y = batch["y"] if self.conditional else None
        if self.cfg.g_atlas is not None and not bool(self.G.pose_ready):  # first step of a run
            fit_atlas_pose(self.G, self.G_ema, ctx.all_gather_cat(real))
        logs: dict[str, torch.Tensor] = {}
        for _ in range(self.cfg.d_steps):
            logs = self.d_step(real, y, ctx)
        logs.update(self.g_step(real.shape[0], y, ctx))
        if self.cfg.loss != "wgan-gp":  # "D wins outright": its loss near zero for a long time
            low = logs["d_loss"] < D_WINS_LOSS  # a tensor: no device sync on every step
            self._d_low = torch.where(low, self._d_low + 1, 0)
            if (ctx.step + 1) % 50 == 0 and int(self._d_low) >= D_WINS_STEPS:
                self._warn_once("d_wins", f"the discriminator wins outright: D loss < {D_WINS_LOSS} "
                                f"for {D_WINS_STEPS} steps (at step {ctx.step + 1}); G gets no signal. "
                                "Try spectral_norm, hinge loss, a lower lr_d or a higher lr_g.")
        return logs

    @torch.no_grad()
    def evaluate(self, batch):
        x = batch["x"]
        y = batch["y"] if self.conditional else None
        z = self._noise(x.shape[0], x.device, eval_generator(batch))
        twins = None
        if getattr(self.G_ema, "gated", False):  # the same samples, and each latent's two renders
            with_lesions, healthy, on, _ = self.G_ema(z, y, pair=True)
            fake = torch.where(on.view(-1, 1, 1, 1), with_lesions, healthy).float()
            twins = (with_lesions.float(), healthy.float())
        else:
            fake = self.G_ema(z, y).float()
        d_real, d_fake = self.D(self._view(x), y).float(), self.D(self._view(fake), y).float()
        judge = self._judge["net"].to(x.device)
        out = {"d_real": d_real.mean(), "d_fake": d_fake.mean(),  # D's mean raw score
               "feat_real": judge(x).float(), "feat_fake": judge(fake).float()}  # (B, D) each
        if "y" in batch:  # the labels cut the split into class-matched halves (summarize)
            out["y"] = batch["y"]
        if self._lesion is not None:
            out.update(self._lesion.columns(x, fake, batch.get("y"), twins))
        return out

    def summarize(self, collected: dict[str, torch.Tensor]) -> dict[str, float]:
        n = min(self.cfg.fid_samples, len(collected["feat_real"]) // 2)
        if self.cfg.fid_halves == "stratified" and "y" in collected:
            order, n = stratified_order(collected["y"], n)
            collected = {k: v[order.to(v.device)] if v.dim() else v for k, v in collected.items()}
        real, fake = collected["feat_real"], collected["feat_fake"]
        out: dict[str, float] = {}
        if n > max(self.cfg.pr_k, 2):
            out = self._feature_scores(real, fake, n)
        if self._lesion is not None and "lj_logits_real" in collected:
            out.update(self._lesion.summarize(collected, n, self.cfg.pr_k))
        return out

    def _feature_scores(self, real: torch.Tensor, fake: torch.Tensor, n: int) -> dict[str, float]:
        s = frechet_and_pr(real, fake, n, self.cfg.pr_k)
        div = gen_metrics.diversity(fake[:n]) / max(gen_metrics.diversity(real[:n]), 1e-12)
        if s["recall"] < COLLAPSE_RECALL or div < COLLAPSE_DIVERSITY:
            self._warn_once("collapse", f"samples look collapsed: recall {s['recall']:.3f} (real vs "
                            f"real {s['recall_floor']:.3f}), diversity {div:.3f} of the real data's "
                            f"(judge {self.judge_name})", stacklevel=4)  # summarize's caller
        name = self.judge_name
        return {f"fid/{name}": s["fid"], f"fid_floor/{name}": s["fid_floor"],
                "fid_ratio": s["fid"] / max(s["fid_floor"], 1e-12),
                "precision": s["precision"], "recall": s["recall"],
                "precision_floor": s["precision_floor"], "recall_floor": s["recall_floor"],
                "diversity": div, "fid_samples": float(n)}

    @torch.no_grad()
    def renders(self, batch):
        n = min(64, max(8, batch["x"].shape[0]))
        g = torch.Generator().manual_seed(FIXED_NOISE_SEED)
        device = batch["x"].device
        z = self._noise(n, device, g)
        labels = self._grid_labels(n, device)
        out = {"samples": image_grid(self.G_ema(z, labels), nrow=8)}
        if self.cfg.ema_decay > 0:
            out["samples_raw_g"] = image_grid(self.G(z, labels), nrow=8)
        # 4 rows of 8: linear interpolation between fixed pairs of noise vectors
        za, zb = self._noise(4, device, g), self._noise(4, device, g)
        t = torch.linspace(0, 1, 8, device=device)[None, :, None]
        zi = (za[:, None] * (1 - t) + zb[:, None] * t).reshape(32, -1)
        li = (None if labels is None
              else torch.arange(4, device=device).repeat_interleave(8) % self.info.num_classes)
        out["interpolations"] = image_grid(self.G_ema(zi, li), nrow=8)
        out["d_filters"] = tile_kernels(self.D.trunk.features[0].weight)
        out["real"] = image_grid(batch["x"][:n], nrow=8)
        return out

    def _grid_labels(self, n: int, device) -> torch.Tensor | None:
        """Conditional grids: row r (8 per row) shows class r mod num_classes."""
        if not self.conditional:
            return None
        return (torch.arange(n, device=device) // 8) % self.info.num_classes

    @torch.no_grad()
    def histograms(self, batch):
        x = batch["x"][:64]
        y = batch["y"][:64] if self.conditional else None
        g = torch.Generator().manual_seed(FIXED_NOISE_SEED)
        fake = self.G_ema(self._noise(x.shape[0], x.device, g), y)
        vx = self._view(x)
        return {"d_real": self.D(vx, y), "d_fake": self.D(self._view(fake), y),
                "trunk_features": self.D.trunk(vx)}

    # -- optional capabilities ---------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None,
               labels: torch.Tensor | None = None) -> torch.Tensor:
        """n images (n, C, H, W) in [0, 1] from the EMA generator. Conditional models take
        `labels` (n,) (default: classes drawn uniformly from `generator`); others refuse them."""
        device = next(self.G_ema.parameters()).device
        generator = generator or torch.Generator().manual_seed(0)
        if labels is not None and not self.conditional:
            raise ValueError("labels given to an unconditional GAN")
        if self.conditional and labels is None:
            labels = torch.randint(self.info.num_classes, (n,), generator=generator)
        z = self._noise(n, device, generator)
        return self.G_ema(z, None if labels is None else labels.to(device)).float()

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(B, features): everything before the real/fake head. Always in eval mode, so a
        spectral-normalised trunk runs no power iteration and the result is deterministic."""
        was = self.D.trunk.training
        try:
            return self.D.trunk.eval()(x)
        finally:
            self.D.trunk.train(was)

    @property
    def out_features(self) -> int:
        return self.cfg.features

    def encoder_spec(self) -> EncoderSpec:
        return EncoderSpec(builder="gan_disc_trunk", config=dict(self._trunk_args),
                           module=self.D.trunk, out_features=self.cfg.features,
                           extra={"source": "GAN discriminator trunk (before the real/fake head)",
                                  "gan_loss": self.cfg.loss})

    def export_generator(self, out_dir: Path) -> Path:
        """The EMA generator as out_dir/generator.safetensors + generator.json
        (reload with genlab.nn.gan_blocks.load_generator)."""
        meta = {"family": "gan", "data": self.info.name, "class_names": list(self.info.class_names),
                "conditional": self.conditional, "ema_decay": self.cfg.ema_decay}
        if self.cfg.g_atlas is not None:
            meta.update(builder=ATLAS_GENERATOR_BUILDER, atlas=str(self.cfg.g_atlas))
        return save_generator(self.G_ema, dict(self._gen_args), out_dir, meta)
