"""A frozen network as a fixed feature extractor: features of any named layer, at several image
scales, pooled or VLAD-aggregated. `genlab probe RUN --layer ... --scales ... --vlad ...`
(genlab/tools/features_compare.py runs the comparison; this module extracts).

Layers: the names of genlab.nn.layer_names.named_layers (`--list-layers` prints them with their
output shapes), plus "output", the network's own output vector.

Scales, fully convolutional: the input is resized by the factor (bilinear) and the layer's map
is read at that size. A dense layer that follows a Flatten of a (C, h, w) map runs as a
convolution with an h x w kernel (its weights reshaped), and the dense layers after it as 1x1
convolutions, so it too gives a map at any scale of at least 1; at scale 1 it is the dense layer
itself. A vector output counts as a 1x1 map.

Pooling of a (B, C, h, w) map over its positions: mean, max, or both concatenated (meanmax).

VLAD (Jégou et al. 2010; intra-normalisation: Arandjelović and Zisserman 2013): every map
position is a local descriptor (C numbers; optionally PCA-reduced, the PCA fitted on the training
descriptors). k-means (scikit-learn MiniBatchKMeans) on a sample of the training images'
descriptors gives k centres mu_k; an image's VLAD holds, per centre, the sum of x - mu_k over its
descriptors whose nearest centre is mu_k (k x C numbers); each centre's block is L2-normalised
(intra-normalisation; an empty block stays zero), then the whole vector.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from genlab.core.errors import GenlabError

OUTPUT = "output"
POOLINGS = ("mean", "max", "meanmax")
# modules that act elementwise: they run unchanged on a map in the fully convolutional mode
_ELEMENTWISE = (nn.ReLU, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Dropout,
                nn.Identity)


class _Stop(Exception):
    """Raised by a hook once every wanted layer has been caught: the rest of the forward is skipped."""


def _root(backbone: nn.Module) -> nn.Module:
    from genlab.nn.backbones import EncoderBackbone

    return backbone.encoder if isinstance(backbone, EncoderBackbone) else backbone


# ----------------------------------------------------------------------------- listing
def list_layers(backbone: nn.Module, input_shape) -> list[dict]:
    """One row per named layer: name, what it is (a stage name says its path), output shape at
    the recipe's input size, parameter count."""
    from genlab.nn.layer_names import layer_path, layer_shapes, named_layers

    shapes = layer_shapes(backbone, input_shape)
    stages = getattr(backbone, "stage_names", {})
    rows = []
    for name, m in named_layers(backbone).items():
        kind = f"stage = {layer_path(backbone, m)}" if name in stages else type(m).__name__
        rows.append({"name": name, "type": kind, "shape": shapes[name],
                     "params": sum(p.numel() for p in m.parameters())})
    with torch.no_grad():
        was = [(m, m.training) for m in backbone.modules()]
        backbone.eval()
        dev = next((p.device for p in backbone.parameters()), torch.device("cpu"))
        out = backbone(torch.zeros(1, *[int(v) for v in input_shape], device=dev))
        for m, mode in was:
            m.training = mode
    rows.append({"name": OUTPUT, "type": "the network's output", "shape": tuple(out.shape[1:]),
                 "params": sum(p.numel() for p in backbone.parameters())})
    return rows


def format_layers(rows: list[dict]) -> str:
    w = max(len(r["name"]) for r in rows) + 2
    t = max(len(r["type"]) for r in rows) + 2
    lines = [f"{'layer':<{w}}{'type':<{t}}{'output (C, h, w)':<20}params"]
    for r in rows:
        shape = "-" if r["shape"] is None else "x".join(str(s) for s in r["shape"])
        lines.append(f"{r['name']:<{w}}{r['type']:<{t}}{shape:<20}{r['params']:,}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- extraction
class LayerTaps:
    """Catches the output of several named layers in one forward pass, as (B, C, h, w) maps.

    `taps(x, scale)` resizes x by `scale` (1: as it is) and returns {name: map}. A vector output
    becomes (B, F, 1, 1); at a scale other than 1 a dense layer after a Flatten runs fully
    convolutionally (see the module docstring).
    """

    def __init__(self, backbone: nn.Module, names: list[str], input_shape):
        from genlab.nn.layer_names import find_layers, layer_path

        self.backbone, self.names = backbone, list(dict.fromkeys(names))
        self.input_shape = [int(v) for v in input_shape]
        inner = [n for n in self.names if n != OUTPUT]
        try:
            mods = find_layers(backbone, inner)
        except ValueError as e:
            raise GenlabError(f"--layer: {e}") from None
        self.modules = dict(zip(inner, mods))
        root = _root(backbone)
        self.chains: dict[str, tuple[nn.Module, list[nn.Module]]] = {}
        for name, m in self.modules.items():
            path = layer_path(backbone, m)
            parent_path, _, child = path.rpartition(".")
            parent = root.get_submodule(parent_path) if parent_path else root
            kids = list(parent.named_children())
            idx = [k for k, _ in kids].index(child) if isinstance(parent, nn.Sequential) else -1
            flat = [i for i in range(idx + 1) if isinstance(kids[i][1], nn.Flatten)] if idx >= 0 else []
            if flat:  # a dense layer fed by a flattened map: its fully convolutional form
                self.chains[name] = (kids[flat[-1]][1], [k for _, k in kids[flat[-1] + 1: idx + 1]])
        self.flat_shape = {n: self._flatten_input(flat) for n, (flat, _) in self.chains.items()}

    @torch.no_grad()
    def _flatten_input(self, flat: nn.Module) -> tuple[int, ...]:
        seen = []
        h = flat.register_forward_pre_hook(lambda m, i: seen.append(tuple(i[0].shape[1:])))
        modes = [(m, m.training) for m in self.backbone.modules()]
        try:
            self.backbone.eval()
            dev = next((p.device for p in self.backbone.parameters()), torch.device("cpu"))
            self.backbone(torch.zeros(1, *self.input_shape, device=dev))
        finally:
            h.remove()
            for m, mode in modes:
                m.training = mode
        return seen[0]

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, scale: float = 1.0) -> dict[str, torch.Tensor]:
        if scale != 1.0:
            size = [max(1, round(s * scale)) for s in x.shape[-2:]]
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=scale < 1)
        got: dict[str, torch.Tensor] = {}
        want = {n for n in self.names if n != OUTPUT}
        hooks = []

        def done():
            if want <= got.keys() and OUTPUT not in self.names:
                raise _Stop

        def tap(name):
            def hook(m, i, o):
                got[name] = o.detach().clone()  # a following in-place op must not change it
                done()
            return hook

        def pre(name):
            def hook(m, i):
                got[name] = self._dense_as_conv(name, i[0].detach())
                done()
            return hook

        for name, m in self.modules.items():
            if scale != 1.0 and name in self.chains:
                hooks.append(self.chains[name][0].register_forward_pre_hook(pre(name)))
            else:
                hooks.append(m.register_forward_hook(tap(name)))
        try:
            out = self.backbone(x)
            if OUTPUT in self.names:
                got[OUTPUT] = out.detach()
        except _Stop:
            pass
        except RuntimeError as e:
            first = (str(e).strip().splitlines() or [""])[0]
            raise GenlabError(f"scale {scale:g}: the network cannot run on {tuple(x.shape[1:])} inputs "
                              f"up to the layers asked for ({first}); layer '{OUTPUT}' runs only at "
                              f"scale 1 when the network ends in dense layers: name the dense layer "
                              f"itself (--list-layers), which runs fully convolutionally") from None
        finally:
            for h in hooks:
                h.remove()
        missing = set(self.names) - got.keys()
        if missing:
            raise GenlabError(f"--layer {', '.join(sorted(missing))}: did not run in the forward pass")
        return {n: _as_map(got[n]) for n in self.names}

    def _dense_as_conv(self, name: str, fmap: torch.Tensor) -> torch.Tensor:
        c, h, w = self.flat_shape[name]
        if fmap.dim() != 4 or fmap.shape[1] != c or fmap.shape[2] < h or fmap.shape[3] < w:
            raise GenlabError(f"--layer {name}: its fully convolutional form needs a map of at least "
                              f"{c}x{h}x{w}, got {tuple(fmap.shape[1:])} (use a scale of at least 1)")
        z, first = fmap, True
        for m in self.chains[name][1]:
            if isinstance(m, nn.Linear):
                weight = m.weight.view(m.out_features, c, h, w) if first else m.weight[:, :, None, None]
                z, first = F.conv2d(z, weight, m.bias), False
            elif isinstance(m, _ELEMENTWISE):
                z = m(z)
            else:
                raise GenlabError(f"--layer {name}: {type(m).__name__} cannot run fully "
                                  f"convolutionally; use scale 1 or a conv layer")
        return z


def _as_map(t: torch.Tensor) -> torch.Tensor:
    t = t.float()
    if t.dim() == 4:
        return t
    return t.flatten(1)[:, :, None, None]


def pool(fmap: torch.Tensor, how: str) -> torch.Tensor:
    """(B, C, h, w) -> (B, C) mean or max over the positions, or (B, 2C) both (meanmax)."""
    if how == "mean":
        return fmap.mean(dim=(2, 3))
    if how == "max":
        return fmap.amax(dim=(2, 3))
    if how == "meanmax":
        return torch.cat([fmap.mean(dim=(2, 3)), fmap.amax(dim=(2, 3))], 1)
    raise GenlabError(f"--pool {how}: expected one of {', '.join(POOLINGS)}")


def descriptors(fmap: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, h*w, C): every map position as a local descriptor."""
    return fmap.flatten(2).transpose(1, 2)


# ----------------------------------------------------------------------------- VLAD
def fit_codebook(desc: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """(k, D) k-means centres (MiniBatchKMeans) of local descriptors (N, D)."""
    from sklearn.cluster import MiniBatchKMeans

    if len(desc) < k:
        raise GenlabError(f"--vlad {k}: only {len(desc)} local descriptors to cluster into {k} "
                          f"centres (raise --n-train or pick a larger layer map)")
    km = MiniBatchKMeans(n_clusters=k, random_state=seed, batch_size=max(1024, 4 * k), n_init=3)
    return km.fit(desc).cluster_centers_.astype(np.float32)


def vlad_sums(desc: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """(B, P, D) descriptors, (K, D) centres -> (B, K, D): per centre, the sum of the residuals
    x - mu_k of the descriptors whose nearest centre it is (ties: the lower index)."""
    d2 = torch.cdist(desc, centres[None].expand(len(desc), -1, -1))
    assign = F.one_hot(d2.argmin(-1), len(centres)).to(desc.dtype)       # (B, P, K)
    return assign.transpose(1, 2) @ desc - assign.sum(1)[..., None] * centres  # (B, K, D)


def vlad_normalise(sums: torch.Tensor) -> torch.Tensor:
    """(B, K, D) residual sums -> (B, K*D): each block L2-normalised, then the whole vector."""
    blocks = sums / sums.norm(dim=2, keepdim=True).clamp_min(1e-12)
    v = blocks.flatten(1)
    return v / v.norm(dim=1, keepdim=True).clamp_min(1e-12)


def vlad(desc: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """(B, P, D) descriptors -> (B, K*D) intra- and L2-normalised VLAD vectors."""
    return vlad_normalise(vlad_sums(desc, centres))


__all__ = ["OUTPUT", "POOLINGS", "LayerTaps", "descriptors", "fit_codebook", "format_layers",
           "list_layers", "pool", "vlad", "vlad_normalise", "vlad_sums"]
