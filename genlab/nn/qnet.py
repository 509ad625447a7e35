"""The DQN's Q-network: (B, 8, H, W) maze observation -> (B, 3) action values, and its bundle.

Three trunks (`QNetConfig.arch`): "conv" (3x3 stride-1 convs, the first unpadded when the outer
wall ring is cropped), "mlp" (the flat maze) and "plan" (`PlanTrunk`, a learned value-iteration
module read out around the mouse); then an MLP and a dueling head Q = V + A - mean(A).

`save_qnet` / `load_qnet` hand the net on as a weight bundle (genlab.core.bundle):
qnet.safetensors + qnet.json, whose "config" rebuilds it as `QNet(in_shape, QNetConfig(**config))`.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from genlab.core.bundle import load_bundle, save_bundle
from genlab.envs.maze import DELTAS

QNET_FORMAT = "genlab-qnet"


@dataclass
class QNetConfig:
    """What builds a QNet (the DQN family's config carries the same fields, with their help)."""

    arch: str = "conv"                 # conv | mlp | plan
    channels: list[int] = field(default_factory=lambda: [32, 32])
    plan_iters: int = 20
    plan_moves: str = "grid"           # grid | learned
    plan_actions: int = 8
    hidden: list[int] = field(default_factory=lambda: [256])
    crop_border: bool = True
    dueling: bool = True

    @classmethod
    def of(cls, cfg) -> QNetConfig:
        """The network's fields of any config that has them (e.g. the DQN family's)."""
        return cls(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(cls)})


class PlanTrunk(nn.Module):
    """A learned value-iteration module, read out in the mouse's own frame (arch: plan).

    After Tamar et al., "Value Iteration Networks" (2016): convs turn the maze (wall, food,
    shock channels) into features and a reward map R (B, A, H, W) of A internal actions; then
    `plan_iters` Bellman sweeps
        Q_k = R + gamma * conv(V_{k-1}, P),   V_k = max_a Q_k        (V_0 = 0)
    where P (A, 3, 3) is the transition kernel of internal action a and gamma in (0, 1) is
    learned: each sweep is a contraction, so V stays bounded whatever the number of sweeps, and
    V_k "sees" k cells far. `plan_moves: grid` (default) fixes the kernels to the maze's own
    moves - stay, N, E, S, W, each a one-hot on that neighbour - so R alone (learned from the
    walls, food and shocks around a cell) decides what a move is worth and values spread along
    the floor only, not through walls; `learned` makes P a softmax over the 3x3 neighbourhood
    per action (plan_actions of them), as in the VIN paper.
    Readout: the maps [V, Q, features] at the mouse's cell and the cells in front, to its right,
    behind and to its left (in that order whatever its heading), so "forward" always reads the
    same slot. Output (B, 5 * (1 + A + C)).
    """

    def __init__(self, in_shape: tuple[int, int, int], cfg: QNetConfig):
        super().__init__()
        _, h, w = in_shape
        layers: list[nn.Module] = []
        c = 3  # wall, food, shock: the mouse enters only through the readout
        for width in cfg.channels:
            layers += [nn.Conv2d(c, width, 3, padding=1), nn.ReLU()]
            c = width
        self.features = nn.Sequential(*layers)
        if cfg.plan_moves == "grid":  # stay, N, E, S, W as positions in the 3x3 neighbourhood
            a = 5
            self.register_buffer("moves", F.one_hot(torch.tensor([4, 1, 5, 7, 3]), 9).float(),
                                 persistent=False)
            self.trans_logits = None
        else:
            a = cfg.plan_actions
            self.trans_logits = nn.Parameter(0.1 * torch.randn(a, 9))
        self.reward = nn.Conv2d(c, a, 3, padding=1)
        self.gamma_logit = nn.Parameter(torch.tensor(math.log(0.9 / 0.1)))
        self.iters = cfg.plan_iters
        # flat offsets of (own, front, right, back, left) cells, by heading N, E, S, W
        offs = [[0] + [DELTAS[(hd + k) % 4][0] * w + DELTAS[(hd + k) % 4][1] for k in range(4)]
                for hd in range(4)]
        self.register_buffer("offsets", torch.tensor(offs), persistent=False)
        # neighbours[k, c, n] = 1 where cell n is neighbour k (3x3, row-major) of cell c
        nb = torch.zeros(9, h * w, h * w)
        for k in range(9):
            dr, dc = k // 3 - 1, k % 3 - 1
            for i in range(h):
                for j in range(w):
                    if 0 <= i + dr < h and 0 <= j + dc < w:
                        nb[k, i * w + j, (i + dr) * w + j + dc] = 1.0
        self.register_buffer("neighbours", nb, persistent=False)
        self.out_features = 5 * (1 + a + c)

    def plan(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """V (B, 1, H, W), Q (B, A, H, W) after the sweeps, and the features (B, C, H, W)."""
        feat = self.features(x[:, :3])
        r = self.reward(feat)
        a = r.shape[1]
        b, _, h, w = r.shape
        hw = h * w
        p = self.moves if self.trans_logits is None else torch.softmax(self.trans_logits, 1)
        kernel = torch.sigmoid(self.gamma_logit) * p                                    # (A, 9)
        # the sweep as one dense linear map V (B, HW) -> (B, A*HW): T[a, c, n] = P_a(n - c)
        # (one small matmul per sweep: far cheaper on a CPU than a 1-channel conv2d)
        t = torch.einsum("ak,kcn->acn", kernel, self.neighbours).reshape(a * hw, hw)
        r = r.flatten(1)                                                # (B, A*HW)
        v = torch.zeros(b, hw, dtype=r.dtype, device=r.device)
        q = r
        for _ in range(self.iters):
            q = torch.addmm(r, v, t.t())
            v = q.view(b, a, hw).amax(1)
        return v.view(b, 1, h, w), q.view(b, a, h, w), feat

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v, q, feat = self.plan(x)
        maps = torch.cat([v, q, feat], 1).flatten(2)                 # (B, M, H*W)
        pos = x[:, 3].flatten(1).argmax(1)                            # (B,) mouse cell
        heading = x[:, 4:8].flatten(2).amax(2).argmax(1)              # (B,) 0..3
        idx = (pos[:, None] + self.offsets[heading]).clamp(0, maps.shape[2] - 1)  # (B, 5)
        return maps.gather(2, idx[:, None, :].expand(-1, maps.shape[1], -1)).flatten(1)


class QNet(nn.Module):
    """(B, 8, H, W) maze observation -> (B, 3) action values."""

    def __init__(self, in_shape: tuple[int, int, int], cfg: QNetConfig):
        super().__init__()
        c, h, w = in_shape
        layers: list[nn.Module] = []
        if cfg.arch == "plan":
            plan = PlanTrunk(in_shape, cfg)
            layers.append(plan)
            c, h, w = plan.out_features, 1, 1
        elif cfg.arch == "conv":
            if cfg.crop_border:
                h, w = h - 2, w - 2
            for i, width in enumerate(cfg.channels):
                # cropping: the first 3x3 conv runs unpadded, so cell (r, c) of its (H-2, W-2)
                # output still sees the border walls around interior cell (r+1, c+1)
                pad = 0 if (i == 0 and cfg.crop_border) else 1
                layers += [nn.Conv2d(c, width, 3, padding=pad), nn.ReLU()]
                c = width
            layers.append(nn.Flatten())
        else:
            if cfg.crop_border:
                h, w = h - 2, w - 2
                layers.append(_Crop())
            layers.append(nn.Flatten())
        feat = c * h * w
        for width in cfg.hidden:
            layers += [nn.Linear(feat, width), nn.ReLU()]
            feat = width
        self.trunk = nn.Sequential(*layers)
        self.dueling = cfg.dueling
        self.adv = nn.Linear(feat, 3)
        self.value = nn.Linear(feat, 1) if cfg.dueling else None

    @torch.no_grad()
    def first_layer(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...], torch.Tensor]:
        """What the first layer does to one observation x (1, 8, H, W), for renders: its
        weights as kernels (units, channels read, kh, kw) - an MLP's first Linear reshaped onto
        the (cropped) maze -, the observation channels they read (indices into
        genlab.envs.maze.CHANNELS; the planning trunk reads wall, food and shock only), and
        its activations after the ReLU: (units, h, w) maps, or (units,) for an MLP."""
        first = self.trunk[0]
        if isinstance(first, PlanTrunk):
            conv = first.features[0]
            return conv.weight, (0, 1, 2), first.features[:2](x[:, :3])[0]
        if isinstance(first, nn.Conv2d):
            return first.weight, tuple(range(x.shape[1])), self.trunk[:2](x)[0]
        z, shape = x, x.shape[1:]
        for m in [*self.trunk, self.adv]:  # the MLP: crop and flatten, then the first Linear
            if isinstance(m, nn.Linear):  # (the head's, when there is no hidden layer)
                acts = m(z)
                acts = F.relu(acts) if m is not self.adv else acts
                return m.weight.view(m.out_features, *shape), tuple(range(x.shape[1])), acts[0]
            shape = z.shape[1:] if z.dim() == 4 else shape
            z = m(z)
        raise ValueError("the Q-network has no layer with weights")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.trunk(x)
        a = self.adv(z)
        if self.value is None:
            return a
        return self.value(z) + a - a.mean(1, keepdim=True)


class _Crop(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, 1:-1, 1:-1]



def save_qnet(net: QNet, in_shape, cfg: QNetConfig, out_dir: Path, meta: dict | None = None) -> Path:
    """Write out_dir/qnet.safetensors + qnet.json (see the module docstring); returns the JSON."""
    doc = {"format": QNET_FORMAT, "version": 1, "builder": "qnet", "input_shape": list(in_shape),
           "config": dataclasses.asdict(cfg), "actions": ["left", "right", "forward"], **(meta or {})}
    return save_bundle(out_dir, "qnet", net.state_dict(), doc)


def load_qnet(path: Path) -> QNet:
    """Rebuild an exported Q-network (eval mode; `.bundle_meta` holds the JSON). `path`: the
    bundle's folder, a run folder (looks in export/) or either of its two files."""
    meta, tensors = load_bundle(path, "qnet", QNET_FORMAT)
    net = QNet(tuple(meta["input_shape"]), QNetConfig(**meta["config"]))
    net.load_state_dict(tensors)
    net.bundle_meta = meta
    return net.eval()
