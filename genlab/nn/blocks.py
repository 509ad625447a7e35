"""Reusable network blocks. Never imports a family: families (and exported encoders) import these.

Every encoder maps (B, *in_shape) images in [0, 1] to (B, out_features) codes and exposes
`features` (the spatial trunk, for Grad-CAM and feature maps) and `head` (trunk -> code).
"""
from __future__ import annotations

import itertools
import math

import torch
from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "leaky_relu": lambda: nn.LeakyReLU(0.2), "gelu": nn.GELU,
               "sigmoid": nn.Sigmoid, "tanh": nn.Tanh}


def _act(name: str) -> nn.Module:
    return ACTIVATIONS[name]()


def _conv_sizes(h: int, w: int, n: int) -> list[tuple[int, int]]:
    """Spatial sizes after each of n stride-2 convs (even kernel k, padding k/2 - 1): floor(x / 2)."""
    sizes = [(h, w)]
    for _ in range(n):
        h, w = h // 2, w // 2
        if h < 1 or w < 1:
            raise ValueError(f"input {sizes[0]} is too small for {n} stride-2 layers")
        sizes.append((h, w))
    return sizes


class MeanMaxPool(nn.Module):
    """(B, C, h, w) -> (B, 2C): the mean and the maximum of each channel over the map. The mean
    says how much of a pattern an image holds, the maximum how strongly it appears anywhere
    (a small lesion moves the maximum but hardly the mean)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x.mean((2, 3)), x.amax((2, 3))], 1)


class ConvEncoder(nn.Module):
    """Stride-2 convolutions (each halves H and W), then a linear code.

    (B, C, H, W) -> features (B, channels[-1], H / 2^n, W / 2^n) -> code (B, bottleneck).
    code="spatial": no linear code; a 1x1 conv makes the map `bottleneck` channels deep and that
    map is the code a decoder sees (local detail such as a small lesion survives it), while the
    exported features are its channel means and maxima (B, 2 * bottleneck).
    Kernels are 4x4 (padding 1) except the first, `first_kernel` (even; padding k/2 - 1): a
    larger first kernel sees more of the image and learns filters a person can read in a render.
    """

    def __init__(self, in_shape: list[int], channels: list[int], bottleneck: int,
                 norm: str = "none", activation: str = "leaky_relu", spectral_norm: bool = False,
                 first_kernel: int = 4, code: str = "dense"):
        super().__init__()
        c, h, w = in_shape
        if code not in ("dense", "spatial"):
            raise ValueError(f"code must be 'dense' or 'spatial', got {code!r}")
        self.in_shape, self.out_features, self.code = list(in_shape), bottleneck, code
        self.sizes = _conv_sizes(h, w, len(channels))
        if first_kernel < 2 or first_kernel % 2:
            raise ValueError(f"first_kernel must be even and >= 2, got {first_kernel}")
        layers: list[nn.Module] = []
        for i, (cin, cout) in enumerate(zip([c, *channels[:-1]], channels)):
            k = first_kernel if i == 0 else 4
            conv = nn.Conv2d(cin, cout, k, stride=2, padding=k // 2 - 1, bias=norm == "none")
            layers.append(nn.utils.spectral_norm(conv) if spectral_norm else conv)
            if norm == "batch":
                layers.append(nn.BatchNorm2d(cout))
            layers.append(_act(activation))
        self.features = nn.Sequential(*layers)
        fh, fw = self.sizes[-1]
        if code == "spatial":  # the code is the feature map itself, `bottleneck` channels deep
            self.features.append(nn.Conv2d(channels[-1], bottleneck, 1))
            self.feature_shape = (bottleneck, fh, fw)
            self.head = MeanMaxPool()
            self.out_features = 2 * bottleneck
        else:
            self.feature_shape = (channels[-1], fh, fw)
            self.head = nn.Sequential(nn.Flatten(), nn.Linear(channels[-1] * fh * fw, bottleneck))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class ConvDecoder(nn.Module):
    """Mirror of ConvEncoder: code -> (B, C, H, W) through stride-2 transposed convolutions.

    `output_padding` per layer restores odd sizes exactly (e.g. 28 -> 14 -> 7 -> 3 -> 7 -> 14 -> 28).
    """

    def __init__(self, out_shape: list[int], channels: list[int], bottleneck: int,
                 norm: str = "none", activation: str = "leaky_relu", output: str = "sigmoid",
                 code: str = "dense"):
        super().__init__()
        c, h, w = out_shape
        sizes = _conv_sizes(h, w, len(channels))  # encoder sizes, input first
        fh, fw = sizes[-1]
        # a spatial code (B, bottleneck, fh, fw) is mapped back to channels[-1] by a 1x1 conv
        self.fc = (nn.Conv2d(bottleneck, channels[-1], 1) if code == "spatial"
                   else nn.Linear(bottleneck, channels[-1] * fh * fw))
        self.start_shape = (channels[-1], fh, fw)
        rev = list(reversed(channels))
        layers: list[nn.Module] = [_act(activation)]
        outs = [*rev[1:], c]
        for i, (cin, cout) in enumerate(zip(rev, outs)):
            src, dst = sizes[-1 - i], sizes[-2 - i]
            pad = (dst[0] - 2 * src[0], dst[1] - 2 * src[1])
            last = i == len(rev) - 1
            layers.append(nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1, output_padding=pad,
                                             bias=last or norm == "none"))
            if not last:
                if norm == "batch":
                    layers.append(nn.BatchNorm2d(cout))
                layers.append(_act(activation))
        if output == "sigmoid":
            layers.append(nn.Sigmoid())
        self.body = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.body(self.fc(z).view(z.shape[0], *self.start_shape))  # dense or spatial code


def upsample_sizes(in_size: tuple[int, int], out_size: tuple[int, int]) -> list[tuple[int, int]]:
    """The sizes a decoder passes through from a feature map of `in_size` up to `out_size`, one
    doubling each, smallest first and `out_size` last: out_size halved with rounding up until it
    is no larger than in_size (the sizes ceil-mode pooling and stride-2 stems give on the way
    down). Empty when in_size is already out_size."""
    sizes = [tuple(out_size)]
    while sizes[-1][0] > in_size[0] or sizes[-1][1] > in_size[1]:
        h, w = sizes[-1]
        sizes.append(((h + 1) // 2, (w + 1) // 2))
    return list(reversed(sizes[:-1]))


class UpDecoder(nn.Module):
    """A feature map (B, C, h, w) -> an image (B, c, H, W) in [0, 1], with no skip connections, so
    everything the image needs has passed through the map (a decoder fed the encoder's earlier
    maps could copy the input around the encoder, which would then learn nothing).

    One 4x4 stride-2 transposed convolution per doubling (`widths[i]` channels out), each output
    cut to the next size of `upsample_sizes` (or resized to it when the map does not come from
    halving), then a 3x3 convolution to the image's channels and a sigmoid.
    """

    def __init__(self, in_channels: int, in_size: tuple[int, int], out_shape: list[int],
                 widths: list[int], norm: str = "none", activation: str = "leaky_relu"):
        super().__init__()
        c, h, w = out_shape
        if in_size[0] > h or in_size[1] > w:
            raise ValueError(f"the feature map {tuple(in_size)} is larger than the image {(h, w)}")
        self.sizes = upsample_sizes(tuple(in_size), (h, w))
        if len(widths) != len(self.sizes):
            raise ValueError(f"{len(self.sizes)} upsampling steps ({tuple(in_size)} -> {(h, w)}) "
                             f"need {len(self.sizes)} widths, got {len(widths)}")
        ups = []
        for cin, cout in zip([in_channels, *widths[:-1]], widths):
            layers: list[nn.Module] = [nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1,
                                                          bias=norm == "none")]
            if norm == "batch":
                layers.append(nn.BatchNorm2d(cout))
            layers.append(_act(activation))
            ups.append(nn.Sequential(*layers))
        self.ups = nn.ModuleList(ups)
        self.head = nn.Sequential(nn.Conv2d(widths[-1] if widths else in_channels, c, 3, padding=1),
                                  nn.Sigmoid())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        for up, (h, w) in zip(self.ups, self.sizes):
            z = up(z)
            if z.shape[-2] >= h and z.shape[-1] >= w:
                z = z[..., :h, :w]
            else:
                z = nn.functional.interpolate(z, size=(h, w), mode="bilinear", align_corners=False)
        return self.head(z)


class DenseEncoder(nn.Module):
    """Flatten, then Linear + activation per hidden width, then a linear code.

    The first Linear's weight (hidden[0], C*H*W) reshaped to the image is the classic filter render.
    """

    def __init__(self, in_shape: list[int], hidden: list[int], bottleneck: int,
                 activation: str = "relu", code_activation: str = "none"):
        super().__init__()
        self.in_shape, self.out_features = list(in_shape), bottleneck
        n_in = math.prod(in_shape)
        layers: list[nn.Module] = [nn.Flatten()]
        for a, b in zip([n_in, *hidden[:-1]], hidden):
            layers += [nn.Linear(a, b), _act(activation)]
        self.features = nn.Sequential(*layers)
        head: list[nn.Module] = [nn.Linear(hidden[-1] if hidden else n_in, bottleneck)]
        if code_activation != "none":
            head.append(_act(code_activation))
        self.head = nn.Sequential(*head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class DenseDecoder(nn.Module):
    """Mirror of DenseEncoder: code -> hidden widths reversed -> image."""

    def __init__(self, out_shape: list[int], hidden: list[int], bottleneck: int,
                 activation: str = "relu", output: str = "sigmoid"):
        super().__init__()
        self.out_shape = list(out_shape)
        n_out = math.prod(out_shape)
        widths = [bottleneck, *reversed(hidden)]
        layers: list[nn.Module] = []
        for a, b in itertools.pairwise(widths):
            layers += [nn.Linear(a, b), _act(activation)]
        layers.append(nn.Linear(widths[-1], n_out))
        if output == "sigmoid":
            layers.append(nn.Sigmoid())
        self.body = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.body(z).view(z.shape[0], *self.out_shape)


def first_layer(module: nn.Module) -> nn.Module | None:
    """The first Conv2d or Linear of a module (the layer whose weights are rendered as filters)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            return m
    return None
