"""Classifier backbones: image (B, C, H, W) in [0, 1] -> feature vector (B, num_features).

Every backbone has the same three parts, so the classifier family, Grad-CAM, gradual
unfreezing and the encoder export treat them alike:

    pre        input preprocessing without parameters (identity, or CLAHE)
    features   the conv trunk (B, C', h, w) — what Grad-CAM looks at (`cam_layer` is its output)
    neck       trunk -> (B, num_features): flatten + dense layers, or global pooling

`stages()` lists the parameter groups bottom -> top (used for gradual unfreezing).

Layer names (genlab.nn.layer_names, used by model.freeze, `genlab explain --layer` and `genlab
probe --layer`): the dotted module paths inside the backbone ("features.1.0", "neck"; an exported
encoder's own paths, without the wrapper's "encoder."), plus stage names for the conv trunk's
blocks: block1, block2, ... (resnet18: stem, layer1 ... layer4). The preprocessing is not a layer.

    name            what it is
    brain_tumor_nn  a small brain-tumour CNN: conv 16-64-256 (3x3) with 2x2 max-pooling between
                    the convs (two pools, none after the last conv), flatten, dense 1,024
    model1          a plain CNN: conv 32-64-128-128 (3x3), max-pool after each, flatten,
                    dropout 0.5, dense 512
    model2          six 3x3 convs: [32, 32] pool BN dropout, [32, 64] pool BN dropout, [128] pool,
                    [128] pool BN; flatten, dropout 0.5, dense 512, dense 1,024 (`_model2`)
    vgg_sep         a VGG-like net: two 3x3 conv + BN + ReLU per block, 2x2 max-pool; the
                    upper blocks use depthwise-separable convs (depthwise 3x3 + pointwise 1x1, each
                    with BN); global average and max pooling, concatenated (2 x last width)
    resnet18        torchvision's ResNet-18 (weights=None) with a conv1 for C input channels; inputs
                    smaller than 64 px get a 3x3 stride-1 stem without max-pool (CIFAR-style)
    encoder         any exported encoder bundle's module (genlab.nn.ENCODER_BUILDERS), rebuilt from
                    `encoder={"builder", "config"}`; its output is the feature vector

Max-pooling uses ceil_mode, so tiny inputs (8x8 digits) keep a 1x1 map instead of vanishing.
`build_backbone` is registered as encoder builder "classifier_backbone": a classifier's exported
bundle rebuilds its backbone (preprocessing included) with no family code.

This module never imports a family.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

BACKBONES = ("brain_tumor_nn", "model1", "model2", "vgg_sep", "resnet18", "encoder")
DEFAULT_CHANNELS = {
    "brain_tumor_nn": [16, 64, 256],
    "model1": [32, 64, 128, 128],
    "model2": [32, 64, 128, 128],
    "vgg_sep": [32, 64, 128, 256],
}
# vgg_sep: blocks from this index on use depthwise-separable convolutions
VGG_SEP_PLAIN_BLOCKS = 2


# ----------------------------------------------------------------------------- CLAHE
def clahe(x: torch.Tensor, clip_limit: float = 2.0, grid: tuple[int, int] = (8, 8),
          bins: int = 256) -> torch.Tensor:
    """Contrast-limited adaptive histogram equalisation, vectorised over (B, C).

    x: (B, C, H, W) in [0, 1] -> same shape in [0, 1]. The image is cut into grid[0] x grid[1]
    tiles (edge-replicated to a whole number of tiles); each tile's `bins`-bin histogram is
    clipped at clip_limit x (its mean count), the clipped excess spread evenly over all bins,
    and its CDF is the tile's intensity mapping. Each pixel's output is the bilinear blend of the
    mappings of the four nearest tile centres (nearest at the borders), as in Zuiderveld (1994)
    and OpenCV's createCLAHE (whose clipLimit means the same). No parameters, no randomness.
    """
    b, c, h, w = x.shape
    gh, gw = max(1, min(grid[0], h)), max(1, min(grid[1], w))
    th, tw = math.ceil(h / gh), math.ceil(w / gw)
    q = (x.detach().float().clamp(0, 1) * (bins - 1)).round().long()  # (B, C, H, W)
    qp = F.pad(q.float(), (0, tw * gw - w, 0, th * gh - h), mode="replicate").long()
    tiles = qp.view(b, c, gh, th, gw, tw).permute(0, 1, 2, 4, 3, 5).reshape(b * c * gh * gw, th * tw)
    hist = torch.zeros(tiles.shape[0], bins, device=x.device).scatter_add_(
        1, tiles, torch.ones_like(tiles, dtype=torch.float32))
    limit = max(clip_limit * th * tw / bins, 1.0)
    excess = (hist - limit).clamp_min(0).sum(1, keepdim=True)
    hist = hist.clamp_max(limit) + excess / bins
    cdf = hist.cumsum(1)
    lut = (cdf / cdf[:, -1:]).view(b, c, gh * gw * bins)  # tile-major, then intensity

    def coords(n: int, tile: int, g: int):
        t = (torch.arange(n, device=x.device, dtype=torch.float32) + 0.5) / tile - 0.5
        i0 = t.floor().clamp(0, g - 1)
        i1 = (i0 + 1).clamp(max=g - 1)
        wgt = (t - i0).clamp(0, 1)
        return i0.long(), i1.long(), wgt

    y0, y1, wy = coords(h, th, gh)
    x0, x1, wx = coords(w, tw, gw)
    flat_q = q.view(b, c, h * w)

    def look(yi: torch.Tensor, xi: torch.Tensor) -> torch.Tensor:
        tile = (yi[:, None] * gw + xi[None, :]).reshape(1, 1, h * w)  # (1, 1, H*W)
        return lut.gather(2, (tile * bins + flat_q).expand(b, c, -1)).view(b, c, h, w)

    wy, wx = wy[:, None], wx[None, :]
    out = ((1 - wy) * ((1 - wx) * look(y0, x0) + wx * look(y0, x1))
           + wy * ((1 - wx) * look(y1, x0) + wx * look(y1, x1)))
    return out.to(x.dtype)


class CLAHE(nn.Module):
    """CLAHE as a preprocessing layer. The forward value is `clahe(x)`; its gradient is passed
    straight through (identity), so Grad-CAM and input gradients still work behind it."""

    def __init__(self, clip_limit: float = 2.0, grid: tuple[int, int] | list[int] = (8, 8)):
        super().__init__()
        self.clip_limit, self.grid = float(clip_limit), (int(grid[0]), int(grid[1]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + (clahe(x, self.clip_limit, self.grid) - x).detach()

    def extra_repr(self) -> str:
        return f"clip_limit={self.clip_limit}, grid={self.grid}"


# ----------------------------------------------------------------------------- blocks
def _pool() -> nn.Module:
    return nn.MaxPool2d(2, ceil_mode=True)


def _pooled(h: int, w: int, n: int) -> tuple[int, int]:
    for _ in range(n):
        h, w = math.ceil(h / 2), math.ceil(w / 2)
    return h, w


class SeparableConv(nn.Sequential):
    """Depthwise 3x3 conv + BN + ReLU, then pointwise 1x1 conv + BN + ReLU (MobileNet-style)."""

    def __init__(self, cin: int, cout: int):
        super().__init__(
            nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False), nn.BatchNorm2d(cin),
            nn.ReLU(inplace=True),
            nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class GlobalAvgMax(nn.Module):
    """(B, C, h, w) -> (B, 2C): global average pooling and global max pooling, concatenated.
    The max half lets a single small bright spot (a tiny lesion) decide; the mean half counts."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x.mean(dim=(2, 3)), x.amax(dim=(2, 3))], dim=1)


# ----------------------------------------------------------------------------- backbone
class Backbone(nn.Module):
    """pre -> features -> neck; see the module docstring."""

    def __init__(self, pre: nn.Module, features: nn.Module, neck: nn.Module, num_features: int,
                 cam_layer: nn.Module | None, stage_list: list[nn.Module] | None = None,
                 stage_names: list[str] | None = None):
        super().__init__()
        self.pre, self.features, self.neck = pre, features, neck
        self.num_features = int(num_features)
        self.out_features = self.num_features  # the name exported encoders use
        # kept out of the module tree (they are sub-modules of features / neck already)
        self.__dict__["cam_layer"] = cam_layer
        self.__dict__["_stages"] = stage_list
        children = list(features.children())
        names = stage_names or [f"block{i + 1}" for i in range(len(children))]
        self.__dict__["stage_names"] = dict(zip(names, children))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.neck(self.features(self.pre(x)))  # (B, num_features)

    def stages(self) -> list[nn.Module]:
        """Parameter groups, bottom (input side) first, for gradual unfreezing."""
        if self._stages is not None:
            return [s for s in self._stages if any(True for _ in s.parameters())]
        found = [m for m in self.features.children() if any(True for _ in m.parameters())]
        if any(True for _ in self.neck.parameters()):
            found.append(self.neck)
        return found


def _plain_cnn(in_shape, channels, *, dense: int, dense_dropout: float, stem_stride: int = 1,
               pool_last: bool = True) -> tuple[nn.Module, nn.Module, int]:
    """conv3x3 + ReLU + max-pool per block (no pool after the last one unless pool_last),
    flatten, [dropout], dense + ReLU."""
    c, h, w = in_shape
    blocks = []
    for i, (cin, cout) in enumerate(zip([c, *channels[:-1]], channels)):
        s = stem_stride if i == 0 else 1
        layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, stride=s, padding=1), nn.ReLU(inplace=True)]
        if pool_last or i < len(channels) - 1:
            layers.append(_pool())
        blocks.append(nn.Sequential(*layers))
    pools = len(channels) if pool_last else len(channels) - 1
    fh, fw = _pooled((h - 1) // stem_stride + 1, (w - 1) // stem_stride + 1, pools)
    neck = nn.Sequential(nn.Flatten(), nn.Dropout(dense_dropout) if dense_dropout else nn.Identity(),
                         nn.Linear(channels[-1] * fh * fw, dense), nn.ReLU(inplace=True))
    return nn.Sequential(*blocks), neck, dense


# The "Model 2" table of a TinyImageNet CNN study (Keras): ConvLayer 32, ConvLayer 32, MaxPool 2,
# BatchNorm, Dropout | Conv 32, Conv 64, MaxPool, BatchNorm, Dropout | Conv 128, MaxPool |
# Conv 128, MaxPool, BatchNorm | Flatten, Dropout, Dense 512, Dense 1024, Dense softmax (the
# head). Its two Model 2 runs used dropout (.5, .5, .75) and (.5, .5, .5); 0.5 everywhere here.
MODEL2_DROPOUT = 0.5


def _model2(in_shape, widths, stem_stride: int = 1) -> tuple[nn.Module, nn.Module, int]:
    """Model 2 from its block widths w (default 32-64-128-128): blocks 1 and 2 hold two convs
    (w1, w1 and w1, w2), the others one (w3, w4); each block ends in a 2x2 max-pool; batch norm
    follows the pool in blocks 1, 2 and the last, dropout in blocks 1 and 2 (not the last)."""
    c, h, w = in_shape
    blocks, cin = [], c
    for i, width in enumerate(widths):
        outs = ([width, width] if i == 0 else [widths[0], width]) if i < 2 else [width]
        layers: list[nn.Module] = []
        for j, cout in enumerate(outs):
            s = stem_stride if i == 0 and j == 0 else 1
            layers += [nn.Conv2d(cin, cout, 3, stride=s, padding=1), nn.ReLU(inplace=True)]
            cin = cout
        layers.append(_pool())
        last = i == len(widths) - 1
        if i < 2 or last:
            layers.append(nn.BatchNorm2d(cin))
        if i < 2 and not last:
            layers.append(nn.Dropout(MODEL2_DROPOUT))
        blocks.append(nn.Sequential(*layers))
    fh, fw = _pooled((h - 1) // stem_stride + 1, (w - 1) // stem_stride + 1, len(widths))
    neck = nn.Sequential(nn.Flatten(), nn.Dropout(MODEL2_DROPOUT), nn.Linear(cin * fh * fw, 512),
                         nn.ReLU(inplace=True), nn.Linear(512, 1024), nn.ReLU(inplace=True))
    return nn.Sequential(*blocks), neck, 1024


def _vgg_sep(in_shape, channels, stem_stride: int = 1) -> tuple[nn.Module, nn.Module, int]:
    c = in_shape[0]
    blocks = []
    for i, (cin, cout) in enumerate(zip([c, *channels[:-1]], channels)):
        if i < VGG_SEP_PLAIN_BLOCKS:
            s = stem_stride if i == 0 else 1
            layers = [nn.Conv2d(cin, cout, 3, stride=s, padding=1, bias=False), nn.BatchNorm2d(cout),
                      nn.ReLU(inplace=True),
                      nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                      nn.ReLU(inplace=True)]
        else:
            layers = [SeparableConv(cin, cout), SeparableConv(cout, cout)]
        if i < len(channels) - 1:  # no pooling after the last block: keep its map for Grad-CAM
            layers.append(_pool())
        blocks.append(nn.Sequential(*layers))
    return nn.Sequential(*blocks), GlobalAvgMax(), 2 * channels[-1]


def _resnet18(in_shape, pretrained: bool) -> tuple[nn.Module, nn.Module, int, list[nn.Module]]:
    from torchvision.models import resnet18

    c, h, w = in_shape
    net = resnet18(weights=None)
    if pretrained:
        _load_imagenet_resnet18(net)
    old = net.conv1
    small = min(h, w) < 64
    conv1 = (nn.Conv2d(c, 64, 3, stride=1, padding=1, bias=False) if small
             else nn.Conv2d(c, 64, 7, stride=2, padding=3, bias=False))
    if pretrained and not small:
        with torch.no_grad():  # timm's rule: sum the RGB kernels for 1 channel, tile for others
            wgt = old.weight
            if c == 1:
                conv1.weight.copy_(wgt.sum(1, keepdim=True))
            elif c == 3:
                conv1.weight.copy_(wgt)
            else:
                conv1.weight.copy_(wgt.repeat(1, math.ceil(c / 3), 1, 1)[:, :c] * 3 / c)
    stem = nn.Sequential(conv1, net.bn1, net.relu) if small else nn.Sequential(conv1, net.bn1, net.relu,
                                                                               net.maxpool)
    features = nn.Sequential(stem, net.layer1, net.layer2, net.layer3, net.layer4)
    neck = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return features, neck, 512, list(features)


def _load_imagenet_resnet18(net: nn.Module) -> None:
    """ImageNet weights from the torch hub cache only: genlab never downloads anything."""
    from torchvision.models import ResNet18_Weights

    from genlab.core.errors import GenlabError

    weights = ResNet18_Weights.IMAGENET1K_V1
    fname = weights.url.rsplit("/", 1)[-1]
    path = __import__("pathlib").Path(torch.hub.get_dir()) / "checkpoints" / fname
    if not path.is_file():
        raise GenlabError(
            f"model.pretrained: ImageNet weights for resnet18 are not on this machine (looked for "
            f"{path}); genlab never downloads weights. Copy {fname} there (from {weights.url}) "
            f"on a machine with internet access, or set model.pretrained: false")
    state = torch.load(path, map_location="cpu", weights_only=True)
    net.load_state_dict(state)


def build_backbone(name: str, in_shape: list[int], channels: list[int] | None = None,
                   pretrained: bool = False, clahe: bool = False, clahe_clip: float = 2.0,
                   clahe_grid: list[int] | None = None, encoder: dict | None = None,
                   stem_stride: int = 1) -> Backbone:
    """Build backbone `name` for inputs (C, H, W) = in_shape (see the module docstring).

    `channels` overrides a conv backbone's widths; `stem_stride` is the stride of the first conv
    of brain_tumor_nn/model1/model2/vgg_sep (2 quarters the cost of full-resolution layers);
    `pretrained` (resnet18 only) loads ImageNet weights from the local torch hub cache; `clahe`
    puts CLAHE in front; `encoder` = {"builder", "config"} names the exported encoder that
    backbone "encoder" wraps.
    """
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r} (known: {', '.join(BACKBONES)})")
    in_shape = [int(s) for s in in_shape]
    if len(in_shape) != 3:
        raise ValueError(f"in_shape must be [C, H, W], got {in_shape}")
    if pretrained and name != "resnet18":
        raise ValueError(f"pretrained weights exist only for resnet18, not {name!r}")
    if channels is not None and name in ("resnet18", "encoder"):
        raise ValueError(f"channels cannot be set for backbone {name!r}")
    if stem_stride != 1 and name in ("resnet18", "encoder"):
        raise ValueError(f"stem_stride cannot be set for backbone {name!r}")
    pre = CLAHE(clahe_clip, clahe_grid or (8, 8)) if clahe else nn.Identity()
    ch = list(channels) if channels else DEFAULT_CHANNELS.get(name)
    stage_list = None
    stage_names = None
    if name == "brain_tumor_nn":  # pooling between the convs, not after the last (2 pools)
        features, neck, n = _plain_cnn(in_shape, ch, dense=1024, dense_dropout=0.0,
                                       stem_stride=stem_stride, pool_last=False)
    elif name == "model1":
        features, neck, n = _plain_cnn(in_shape, ch, dense=512, dense_dropout=0.5, stem_stride=stem_stride)
    elif name == "model2":
        features, neck, n = _model2(in_shape, ch, stem_stride)
    elif name == "vgg_sep":
        features, neck, n = _vgg_sep(in_shape, ch, stem_stride)
    elif name == "resnet18":
        features, neck, n, stage_list = _resnet18(in_shape, pretrained)
        stage_names = ["stem", "layer1", "layer2", "layer3", "layer4"]
    else:
        return _encoder_backbone(pre, in_shape, encoder)
    return Backbone(pre, features, neck, n, cam_layer=features[-1], stage_list=stage_list,
                    stage_names=stage_names)


class EncoderBackbone(Backbone):
    """An exported encoder as a backbone. The wrapped module is `self.encoder`; when it has a
    `features` trunk whose output is (B, C, h, w), that trunk is the Grad-CAM layer."""

    def __init__(self, pre: nn.Module, encoder: nn.Module, in_shape: list[int]):
        nn.Module.__init__(self)
        self.pre = pre
        self.encoder = encoder
        with torch.no_grad():
            was = encoder.training
            encoder.eval()
            probe = torch.zeros(1, *in_shape)
            trunk = getattr(encoder, "features", None)
            spatial = trunk is not None and hasattr(encoder, "head") and trunk(probe).dim() == 4
            out = encoder(probe)
            encoder.train(was)
        if out.dim() != 2:
            raise ValueError(f"the encoder maps {tuple(probe.shape)} to {tuple(out.shape)}, "
                             "expected (B, out_features)")
        self.num_features = self.out_features = int(out.shape[1])
        if isinstance(encoder, Backbone):  # a classifier's exported backbone knows its own
            cam = encoder.cam_layer
        elif spatial:
            children = list(trunk.children())
            cam = children[-1] if children else trunk
        else:
            cam = None
        self.__dict__["cam_layer"] = cam
        self.__dict__["_stages"] = None
        self.__dict__["stage_names"] = dict(getattr(encoder, "stage_names", {}))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.pre(x))

    def stages(self) -> list[nn.Module]:
        """Bottom first: every Conv2d/Linear opens a new stage, the modules after it (norm,
        activation) join it; an encoder with `features` and `head` is split the same way."""
        enc = self.encoder
        if isinstance(enc, Backbone):
            return enc.stages()
        parts = (list(enc.features.children()) + [enc.head]
                 if hasattr(enc, "features") and hasattr(enc, "head") else list(enc.children()))
        if not parts:
            return [enc]
        stages: list[list[nn.Module]] = []
        for m in parts:
            opens = any(isinstance(s, (nn.Conv2d, nn.Linear)) for s in m.modules())
            if opens or not stages:
                stages.append([m])
            else:
                stages[-1].append(m)
        out = [nn.ModuleList(s) for s in stages]
        return [s for s in out if any(True for _ in s.parameters())]


def _encoder_backbone(pre: nn.Module, in_shape: list[int], encoder: dict | None) -> Backbone:
    from genlab.nn import ENCODER_BUILDERS

    if not encoder or "builder" not in encoder:
        raise ValueError("backbone 'encoder' needs encoder={'builder': ..., 'config': {...}}")
    fn: Callable | None = ENCODER_BUILDERS.get(encoder["builder"])
    if fn is None:
        raise ValueError(f"unknown encoder builder {encoder['builder']!r} "
                         f"(known: {', '.join(sorted(ENCODER_BUILDERS))})")
    return EncoderBackbone(pre, fn(**encoder.get("config", {})), in_shape)


__all__ = ["BACKBONES", "CLAHE", "Backbone", "EncoderBackbone", "build_backbone", "clahe"]
