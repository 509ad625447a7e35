"""Prototype: a denoising autoencoder on the lesion classifier's own vgg_sep, cut after block K.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/stage_dae_prototype.py --stage 2 --steps 900 \\
        --sigma 0.15 --out /tmp/stage_dae        # writes an encoder bundle to /tmp/stage_dae

The decoder (genlab.nn.blocks.UpDecoder, no skips) rebuilds the 128 x 96 slice from the map after
block K (K = 2: 32 x 16 x 12) instead of the last 8 x 6 map that `model.arch: backbone` decodes
from: the finer the map, the more of the faint lesions survive the reconstruction. Blocks after
K keep their random initialisation. Every 300 steps it prints the PSNR gain, the lesion retention
(genlab.metrics.lesion) and a logistic probe of block K's pooled map and of the whole backbone.
The bundle (builder classifier_backbone, the settings of recipes/lesion_brain.yaml) loads into
that recipe with `--set model.init=<out>`. A prototype kept for the label-efficiency study's
`vggdae` row (docs/label_efficiency_notes.md), not a family.
"""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import StandardScaler
from torch import nn

from genlab.data.brain import BrainConfig, BrainData
from genlab.families.base import EncoderSpec
from genlab.families.export import save_encoder
from genlab.metrics.lesion import lesion_contrast
from genlab.nn.backbones import build_backbone
from genlab.nn.blocks import UpDecoder, upsample_sizes

BACKBONE = {"name": "vgg_sep", "in_shape": [1, 128, 96], "channels": [16, 32, 128, 256], "stem_stride": 2,
            "pretrained": False, "clahe": False, "clahe_clip": 2.0, "clahe_grid": [8, 8]}


def probe(encode, train, val) -> tuple[float, float]:
    """(4-syndrome accuracy, lesion-vs-healthy AUC) of a logistic regression on frozen features."""
    def feats(x):
        return torch.cat([encode(x[i:i + 250]) for i in range(0, len(x), 250)]).numpy()
    a, b = feats(train["x"]), feats(val["x"])
    scaler = StandardScaler().fit(a)
    clf = LogisticRegression(max_iter=2000).fit(scaler.transform(a), train["y"].numpy())
    p, y = clf.predict_proba(scaler.transform(b)), val["y"].numpy()
    return float((p.argmax(1) == y).mean()), float(roc_auc_score(y != 3, 1 - p[:, 3]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--stage", type=int, default=2, help="decode from the map after this block")
    ap.add_argument("--steps", type=int, default=900)
    ap.add_argument("--sigma", type=float, default=0.15, help="Gaussian noise std on the input")
    ap.add_argument("--out", type=Path, required=True, help="folder for the encoder bundle")
    args = ap.parse_args()
    torch.manual_seed(0)
    data = BrainData(BrainConfig(mode="hard"), seed=0)
    backbone = build_backbone(**BACKBONE)
    trunk = nn.Sequential(backbone.pre, *backbone.features[:args.stage])
    with torch.no_grad():
        c, h, w = trunk(torch.zeros(1, 1, 128, 96)).shape[1:]
    n_up = len(upsample_sizes((h, w), (128, 96)))
    decoder = UpDecoder(c, (h, w), [1, 128, 96], [max(16, c // 2 ** i) for i in range(1, n_up + 1)])
    opt = torch.optim.AdamW([*trunk.parameters(), *decoder.parameters()], lr=2e-3, weight_decay=1e-4)
    train, val = data.get("train", torch.arange(1000)), data.get("val", torch.arange(500))
    held = data.get("val", torch.arange(500, 756))
    noise = torch.randn(held["x"].shape, generator=torch.Generator().manual_seed(5))
    noisy_held = (held["x"] + args.sigma * noise).clamp(0, 1)

    def pooled(x: torch.Tensor) -> torch.Tensor:  # block K's map: channel means and maxima
        m = trunk(x)
        return torch.cat([m.mean((2, 3)), m.amax((2, 3))], 1)

    @torch.no_grad()
    def report(step: int) -> None:
        for m in (backbone, decoder):
            m.eval()
        recon = decoder(trunk(noisy_held))
        has = held["mask"].flatten(1).any(1)
        kept = lesion_contrast(recon, held["mask"])[has] / lesion_contrast(held["x"], held["mask"])[has]
        gain = 10 * math.log10(F.mse_loss(noisy_held, held["x"]).item() / F.mse_loss(recon, held["x"]).item())
        stage = probe(pooled, train, val)
        whole = probe(backbone, train, val)
        print(f"step {step}: PSNR gain {gain:.2f} dB, lesion retention {kept.median():.3f}, probe of "
              f"block {args.stage} {stage[0]:.3f} / AUC {stage[1]:.3f}, of the backbone {whole[0]:.3f} / "
              f"{whole[1]:.3f}", flush=True)
        for m in (backbone, decoder):
            m.train()

    report(0)
    g, t0 = torch.Generator().manual_seed(1), time.time()
    for step in range(1, args.steps + 1):
        x = data.get("train", torch.randint(0, 100_000, (32,), generator=g))["x"]
        for group in opt.param_groups:  # 50 warm-up steps, then cosine
            group["lr"] = 2e-3 * min(1, step / 50) * 0.5 * (1 + math.cos(math.pi * step / args.steps))
        loss = F.mse_loss(decoder(trunk((x + args.sigma * torch.randn_like(x)).clamp(0, 1))), x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0:
            print(f"step {step}: loss {loss.item():.5f} ({time.time() - t0:.0f} s)", flush=True)
        if step % 300 == 0 or step == args.steps:
            report(step)
    spec = EncoderSpec(builder="classifier_backbone", config=BACKBONE, module=backbone, out_features=512)
    save_encoder(spec, args.out, family="dae", info=data.info, recipe_name="stage_dae_prototype",
                 step=args.steps)
    print(f"encoder bundle written to {args.out}")


if __name__ == "__main__":
    main()
