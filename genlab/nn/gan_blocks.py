"""DCGAN-style generator and discriminator whose depth adapts to the input shape.

Depth rule (`gan_depth`): stride-2 layers halve H and W (floor) until the short side would drop
below 4, i.e. while min(H, W) >= 8. So 8x8 -> 4x4 (1 layer), 28x28 -> 7x7 (2),
64x64 -> 4x4 (4), 128x96 -> 8x6 (4). Widths double per layer from `width`, capped at `max_width`.

The discriminator is split as the GAN family needs it for export:

    DiscTrunk  (B, C, H, W) -> (B, out_features)   convs + flatten + linear: the exported encoder
    DiscHead   (B, out_features) [+ labels] -> (B,) leaky ReLU + linear (+ class projection)

and, with an auxiliary classifier (AC-GAN), a linear class head on the trunk's conv maps,
each max-pooled over the image (`DiscTrunk.forward_pooled`), beside the real/fake head.

`DiscTrunk` is registered as encoder builder "gan_disc_trunk", so `genlab.load_encoder` rebuilds
it from the bundle's JSON with no GAN code. Spectral normalisation (Miyato et al. 2018) uses
`torch.nn.utils.parametrizations.spectral_norm`: one power iteration per training-mode forward,
none in eval mode, so an eval-mode trunk is a deterministic function of its state_dict.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm as _sn

from genlab.core.bundle import load_bundle, save_bundle

GENERATOR_FORMAT = "genlab-generator"
AC_POOLS = ("max", "max+mean")  # how the class head pools each conv map over positions


def gan_depth(h: int, w: int) -> int:
    """Number of stride-2 layers for an (h, w) input: halve while min(h, w) >= 8 (at least 1)."""
    n = 0
    while min(h, w) >= 8:
        h, w, n = h // 2, w // 2, n + 1
    return max(n, 1)


def gan_widths(h: int, w: int, width: int, max_width: int) -> list[int]:
    """Channels of each stride-2 layer, fine to coarse: width, 2 width, ... capped at max_width."""
    return [min(width * 2 ** i, max_width) for i in range(gan_depth(h, w))]


def _sizes(h: int, w: int, n: int) -> list[tuple[int, int]]:
    out = [(h, w)]
    for _ in range(n):
        h, w = h // 2, w // 2
        if min(h, w) < 1:
            raise ValueError(f"input {out[0]} is too small for {n} stride-2 layers")
        out.append((h, w))
    return out


def _maybe_sn(m: nn.Module, on: bool) -> nn.Module:
    return _sn(m) if on else m


class DiscTrunk(nn.Module):
    """Discriminator trunk: stride-2 4x4 convs + leaky ReLU(0.2), then flatten + linear.

    (B, C, H, W) in [0, 1] -> features (B, channels[-1], h, w) -> (B, out_features).
    No batch norm: a WGAN gradient penalty is per-sample, and the export must be per-example.
    """

    def __init__(self, in_shape: list[int], channels: list[int], out_features: int,
                 spectral_norm: bool = False):
        super().__init__()
        c, h, w = in_shape
        self.in_shape, self.out_features = list(in_shape), out_features
        sizes = _sizes(h, w, len(channels))
        layers: list[nn.Module] = []
        for cin, cout in zip([c, *channels[:-1]], channels):
            layers += [_maybe_sn(nn.Conv2d(cin, cout, 4, stride=2, padding=1), spectral_norm),
                       nn.LeakyReLU(0.2)]
        self.features = nn.Sequential(*layers)
        fh, fw = sizes[-1]
        self.feature_shape = (channels[-1], fh, fw)
        self.head = nn.Sequential(
            nn.Flatten(), _maybe_sn(nn.Linear(channels[-1] * fh * fw, out_features), spectral_norm))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))  # (B, out_features)

    def forward_pooled(self, x: torch.Tensor, mean: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(features (B, out_features), pooled (B, sum(channels)), or with mean (B, 2 sum(channels))):
        the forward pass, and the maximum over positions of every conv layer's activated map,
        fine to coarse, then (mean) the means of the same maps in the same order."""
        pooled, means, h = [], [], x
        for layer in self.features:
            h = layer(h)
            if isinstance(layer, nn.LeakyReLU):
                pooled.append(h.amax((2, 3)))
                if mean:
                    means.append(h.mean((2, 3)))
        return self.head(h), torch.cat(pooled + means, 1)


class DiscHead(nn.Module):
    """Real/fake score from trunk features; with classes, a projection discriminator
    (Miyato & Koyama 2018): score = linear(h) + <embed(y), h>, h = leaky_relu(features).

    `mbstd` > 0 adds a minibatch-standard-deviation feature (Karras et al. 2018, ProGAN): the
    batch is split into groups of `mbstd` examples (the largest divisor of B that is <= mbstd),
    and each example gets the mean over features of its group's standard deviation as one extra
    input to the linear layer. A collapsed generator makes that feature small on fake batches,
    so D can tell and G is pushed to vary. It lives in the head, after the trunk, so the
    exported trunk stays a per-example function. With classes it is the std of the features
    less their class means in the batch (`class_residual`): variety within a class.

    `projection` False leaves the class out of the score (a conditional D that only the
    auxiliary classifier (Discriminator's `ac_classes`) makes class-aware).
    """

    def __init__(self, in_features: int, num_classes: int = 0, spectral_norm: bool = False,
                 mbstd: int = 0, projection: bool = True):
        super().__init__()
        self.act = nn.LeakyReLU(0.2)
        self.mbstd, self.num_classes = mbstd, num_classes
        self.out = _maybe_sn(nn.Linear(in_features + (1 if mbstd else 0), 1), spectral_norm)
        self.embed = (_maybe_sn(nn.Embedding(num_classes, in_features), spectral_norm)
                      if num_classes and projection else None)

    @staticmethod
    def class_residual(h: torch.Tensor, y: torch.Tensor, num_classes: int) -> torch.Tensor:
        """h minus the batch mean of h over the examples of its own class. In a conditional batch
        the classes differ anyway, so the std of raw features would read a G that draws one image
        per class as varied; the residual leaves only the variety within each class."""
        hf = h.float()
        sums = hf.new_zeros(num_classes, hf.shape[1]).index_add_(0, y, hf)
        counts = torch.bincount(y, minlength=num_classes).clamp_min(1).to(hf.dtype)
        return (hf - (sums / counts[:, None])[y]).to(h.dtype)

    @staticmethod
    def minibatch_std(h: torch.Tensor, group: int) -> torch.Tensor:
        """(B, F) -> (B, 1): mean over F of the std over each example's group (biased, + 1e-8)."""
        b = h.shape[0]
        g = max(d for d in range(1, min(group, b) + 1) if b % d == 0)
        if g < 2:
            return h.new_zeros(b, 1)
        hg = h.float().view(g, b // g, -1)  # group members are examples i, i + B/g, i + 2B/g, ...
        s = (hg.var(0, unbiased=False) + 1e-8).sqrt().mean(1)  # (B/g,)
        return s.repeat(g).view(b, 1).to(h.dtype)

    def forward(self, feats: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        h = self.act(feats)
        if self.mbstd:
            spread = h if not self.num_classes else self.class_residual(h, y, self.num_classes)
            hin = torch.cat([h, self.minibatch_std(spread, self.mbstd)], 1)
        else:
            hin = h
        score = self.out(hin).squeeze(1)  # (B,)
        if self.embed is not None:
            score = score + (self.embed(y) * h).sum(1)
        return score


class Discriminator(nn.Module):
    """Trunk + real/fake head; `ac_classes` > 0 adds an auxiliary classifier (AC-GAN, Odena et
    al. 2017): a linear layer from the trunk's max-pooled conv maps (`forward_pooled`) to class
    logits. Max-pooled, because a tumour may sit anywhere and be of any size: the peak response
    of a blob detector says "there is one" wherever it is. A linear layer on the flattened map
    must learn each position apart; measured on easy brain slices (4 syndromes, batch 32, Adam
    5e-4, spectral norm), it stayed at chance for 800 steps where the pooled head reached 0.62
    accuracy in 500. Not spectral-normalised: it is no part of the real/fake critic, and its
    logits must be free to grow until the classes separate.

    `ac_pool` "max+mean" gives the head each map's mean over positions beside its maximum. A
    maximum says whether there is a blob, not how many: measured on hard brain slices, G drew
    syndrome B (4-8 medium tumours) as 2 small discs and the max-pooled head still read them as
    B. A mean grows with the number of blobs a detector fires on, so the head can count."""

    def __init__(self, in_shape: list[int], channels: list[int], features: int,
                 num_classes: int = 0, spectral_norm: bool = False, mbstd: int = 0,
                 ac_classes: int = 0, projection: bool = True, ac_pool: str = "max"):
        super().__init__()
        if ac_pool not in AC_POOLS:
            raise ValueError(f"ac_pool: expected one of {', '.join(AC_POOLS)}, got {ac_pool!r}")
        self.trunk = DiscTrunk(in_shape, channels, features, spectral_norm)
        self.head = DiscHead(features, num_classes, spectral_norm, mbstd, projection)
        self.ac_mean = ac_pool == "max+mean"
        # created last, so that a D without it draws the same initial weights as before
        pooled = sum(channels) * (2 if self.ac_mean else 1)
        self.classify = nn.Linear(pooled, ac_classes) if ac_classes else None

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None, with_class: bool = False):
        """(B,) raw scores (logits); with_class: (scores, (B, ac_classes) class logits)."""
        if not with_class:
            return self.head(self.trunk(x), y)
        if self.classify is None:
            raise ValueError("with_class=True, but this discriminator has no auxiliary classifier")
        feats, pooled = self.trunk.forward_pooled(x, self.ac_mean)
        self.last_pooled = pooled  # what the class head read: a GAN's feature match reuses it
        return self.head(feats, y), self.classify(pooled)


class ClassBatchNorm2d(nn.Module):
    """Class-conditional batch norm (de Vries et al. 2017; the generator of Miyato & Koyama 2018
    and BigGAN): batch statistics without an affine of their own, then a per-class gain and bias,
    gamma = 1 + embed_gamma(y) and beta = embed_beta(y), both starting at 0 (plain BN at step 0).
    The class then shapes every resolution of the image, not only the first linear layer."""

    def __init__(self, channels: int, num_classes: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(channels, affine=False, track_running_stats=False)
        self.gamma = nn.Embedding(num_classes, channels)
        self.beta = nn.Embedding(num_classes, channels)
        nn.init.zeros_(self.gamma.weight)
        nn.init.zeros_(self.beta.weight)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        g, b = 1 + self.gamma(y), self.beta(y)
        return self.bn(x) * g[:, :, None, None] + b[:, :, None, None]


class Generator(nn.Module):
    """z (B, z_dim) [+ class embedding] -> linear -> (channels[-1], h, w) -> x2 upsampling layers
    (BN + ReLU) mirroring the discriminator -> (B, C, H, W) through a sigmoid. An upsampling layer
    is a stride-2 4x4 transposed conv ("transposed", DCGAN) or a nearest-neighbour resize and a
    3x3 conv ("nearest": about twice the compute, no period-2 checkerboard artefacts).
    The output is a sigmoid, or ("clamp") a clamp to [0, 1] with a straight-through gradient: a
    sigmoid near 0 or 1 passes almost no gradient, which makes dark backgrounds hard to vary.
    A conditional generator always concatenates a class embedding to z; `class_norm` also makes
    every batch norm class-conditional (ClassBatchNorm2d).
    `full_res` > 0 gives the generator layers at full resolution: the last upsampling layer makes
    channels[0] maps (norm + ReLU), `full_res` - 1 more 3x3 conv layers follow, and a 3x3 conv
    makes the image. Without them the image is one 3x3 conv of a nearest-upsampled half-resolution
    map, too little to draw a disc a few pixels wide (the small tumours).

    Batch norm here always uses the statistics of the batch being generated
    (track_running_stats=False): no running buffers, so sampling in eval mode changes nothing
    and matches training-mode behaviour; samples of one call depend (weakly) on each other.
    """

    def __init__(self, out_shape: list[int], channels: list[int], z_dim: int,
                 num_classes: int = 0, norm: str = "batch", upsample: str = "transposed",
                 output: str = "sigmoid", class_norm: bool = False, full_res: int = 0):
        super().__init__()
        c, h, w = out_shape
        sizes = _sizes(h, w, len(channels))
        self.z_dim, self.out_shape = z_dim, list(out_shape)
        self.embed = nn.Embedding(num_classes, z_dim) if num_classes else None
        if class_norm and not (num_classes and norm == "batch"):
            raise ValueError("class_norm needs a conditional generator (num_classes > 0) with norm 'batch'")
        fh, fw = sizes[-1]
        self.start_shape = (channels[-1], fh, fw)

        def norm_act(ch: int) -> list[nn.Module]:
            if norm != "batch":
                return [nn.ReLU()]
            bn = (ClassBatchNorm2d(ch, num_classes) if class_norm
                  else nn.BatchNorm2d(ch, track_running_stats=False))
            return [bn, nn.ReLU()]

        self.fc = nn.Linear(z_dim * (2 if num_classes else 1), channels[-1] * fh * fw)
        layers: list[nn.Module] = norm_act(channels[-1])
        rev = list(reversed(channels))
        last = channels[0] if full_res else c
        for i, (cin, cout) in enumerate(zip(rev, [*rev[1:], last])):
            src, dst = sizes[-1 - i], sizes[-2 - i]
            if upsample == "nearest":  # no stride-2 checkerboard: resize, then a 3x3 conv
                layers += [nn.Upsample(size=dst, mode="nearest"), nn.Conv2d(cin, cout, 3, padding=1)]
            else:
                pad = (dst[0] - 2 * src[0], dst[1] - 2 * src[1])  # restores odd sizes (7 -> 14 -> 28)
                layers.append(nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1, output_padding=pad))
            if i < len(rev) - 1 or full_res:
                layers += norm_act(cout)
        for j in range(full_res):  # at full resolution; the last one makes the image
            layers.append(nn.Conv2d(channels[0], c if j == full_res - 1 else channels[0], 3, padding=1))
            if j < full_res - 1:
                layers += norm_act(channels[0])
        self.output = output
        if output == "sigmoid":
            layers.append(nn.Sigmoid())
        self.body = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if self.embed is not None:
            z = torch.cat([z, self.embed(y)], 1)
        x = self.fc(z).view(z.shape[0], *self.start_shape)
        for layer in self.body:
            x = layer(x, y) if isinstance(layer, ClassBatchNorm2d) else layer(x)
        if self.output == "clamp":  # straight-through: the value is clamped, the gradient is not
            x = x + (x.clamp(0, 1) - x).detach()
        return x  # (B, C, H, W) in [0, 1]


def save_generator(module: Generator, config: dict, out_dir, meta: dict | None = None) -> Path:
    """Write out_dir/generator.safetensors + generator.json (a weight bundle,
    genlab.core.bundle): `Generator(**config)` rebuilds it. Returns the JSON's path."""
    doc = {"format": GENERATOR_FORMAT, "version": 1, "builder": "gan_generator",
           "config": config, "output_range": [0.0, 1.0], **(meta or {})}
    return save_bundle(Path(out_dir), "generator", module.state_dict(), doc)


def load_generator(path) -> Generator:
    """Rebuild an exported generator (eval mode; `.bundle_meta` holds the JSON): z (B, z_dim)
    [, labels (B,)] -> images (B, C, H, W) in [0, 1]; a Generator or an atlas generator.
    `path`: the bundle's folder, a run folder (looks in export/) or either of its two files."""
    from genlab.nn.gan_atlas import ATLAS_GENERATOR_BUILDER, AtlasGenerator

    meta, tensors = load_bundle(Path(path), "generator", GENERATOR_FORMAT)
    cls = AtlasGenerator if meta.get("builder") == ATLAS_GENERATOR_BUILDER else Generator
    gen = cls(**meta["config"])
    gen.load_state_dict(tensors)
    gen.bundle_meta = meta
    return gen.eval()
