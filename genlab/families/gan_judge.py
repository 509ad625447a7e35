"""Lesion judges: a trained classifier, frozen, that scores generated images by what it sees.

A judge folder holds two weight bundles (genlab.core.bundle), both small and pickle-free:

    encoder.json + encoder.safetensors   the classifier's backbone, exactly its ordinary export
                                         (builder classifier_backbone, preprocessing included),
                                         so the folder is also a `fid_extractor` / load_encoder
    head.json + head.safetensors         the head that turns the backbone's features into logits:
                                         linear layers with ReLU between them (format
                                         "genlab-judge-head"), the class names, which classes
                                         mean "no lesion", and the judge's name for metric keys

No optimizer state and no recipe: `load_lesion_judge(folder)` rebuilds it anywhere. Make one from
a classifier run with `genlab export RUN --format judge --out judges/NAME` (best.pt; the reload
is checked against the run's own logits). The classifier's dropout layers are left out: a judge
only ever runs in eval mode, where they are the identity.
"""
from __future__ import annotations

import itertools
import re
from pathlib import Path

import torch
from torch import nn

from genlab.core import bundle
from genlab.core.errors import CheckpointError

HEAD_NAME = "head"  # head.json + head.safetensors beside the encoder bundle
HEAD_FORMAT = "genlab-judge-head"
HEAD_VERSION = 1
MAKE_ONE = "make one from a classifier run with `genlab export RUN --format judge --out DIR`"


def judge_name(text: str) -> str:
    """A metric-key-safe name (letters, digits, _ . -), e.g. a recipe name."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", str(text)) or "judge"


def _mlp(widths: list[int]) -> nn.Sequential:
    """Linear layers through `widths` ([in, hidden..., K]) with a ReLU between each two."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(widths)):
        if i:
            layers.append(nn.ReLU())
        layers.append(nn.Linear(a, b))
    return nn.Sequential(*layers)


def head_as_mlp(head: nn.Module) -> tuple[nn.Sequential, list[int]]:
    """The classifier head (dropout, [linear, ReLU, dropout]..., linear) as its eval-mode
    equivalent: the same linear layers, ReLU between them, no dropout. (module, widths)."""
    kept = [m for m in head.modules() if not isinstance(m, (nn.Sequential, nn.Identity, nn.Dropout))]
    linears = kept[0::2]
    shape_ok = (len(kept) % 2 == 1 and all(isinstance(m, nn.Linear) for m in linears)
                and all(isinstance(m, nn.ReLU) for m in kept[1::2]))
    if not shape_ok:
        raise CheckpointError(f"a judge head must be linear layers with ReLU between them, got "
                              f"{[type(m).__name__ for m in kept]}")
    widths = [linears[0].in_features] + [m.out_features for m in linears]
    mlp = _mlp(widths)
    with torch.no_grad():
        for mine, theirs in zip(mlp[0::2], linears):
            mine.weight.copy_(theirs.weight)
            mine.bias.copy_(theirs.bias)
    return mlp.eval(), widths


class LesionJudge:
    """A fixed K-class classifier used as a judge: `features(x)` (B, D) are the backbone's
    pooled features (for Fréchet distance, precision/recall), `logits(x)` (B, K) its calls.
    `negative` lists the indices of the "no lesion" classes (e.g. Z). Always in eval mode with
    frozen weights; not an nn.Module, so a model that keeps one never checkpoints it."""

    def __init__(self, backbone: nn.Module, head: nn.Module, *, name: str, class_names: list[str],
                 negative: list[int], input_shape: tuple, meta: dict | None = None):
        self.backbone = backbone.eval().requires_grad_(False)
        self.head = head.eval().requires_grad_(False)
        self.name, self.class_names, self.negative = name, list(class_names), list(negative)
        self.input_shape = tuple(int(s) for s in input_shape)
        self.meta = dict(meta or {})

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_features(self) -> int:
        return int(self.head[0].in_features)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    def features_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Both from one pass through the backbone."""
        f = self.backbone(x)
        return f, self.head(f)

    def to(self, device) -> LesionJudge:
        self.backbone.to(device)
        self.head.to(device)
        return self

    def __repr__(self) -> str:
        neg = [self.class_names[i] for i in self.negative]
        return (f"LesionJudge({self.name!r}, classes {self.class_names}, negative {neg}, "
                f"input {self.input_shape}, {self.num_features} features)")


def save_lesion_judge(model, info, out_dir: Path, *, recipe_name: str, step: int,
                      extra: dict | None = None) -> Path:
    """Write the judge of a classifier family module `model` (its backbone as the ordinary
    encoder bundle, its head as head.json/.safetensors) into out_dir; returns out_dir."""
    from genlab.families.classifier import Classifier
    from genlab.families.export import save_encoder

    if not isinstance(model, Classifier):
        raise CheckpointError(f"a judge is made from a classifier run, not a {type(model).__name__}")
    out_dir = Path(out_dir)
    save_encoder(model.encoder_spec(), out_dir, family="classifier", info=info,
                 recipe_name=recipe_name, step=step)
    mlp, widths = head_as_mlp(model.head)
    names = list(info.class_names)
    meta = {"format": HEAD_FORMAT, "version": HEAD_VERSION, "name": judge_name(recipe_name),
            "widths": widths, "class_names": names,
            "negative_classes": [names[i] for i in model.negative],
            "input_shape": list(info.input_shape), "recipe": recipe_name, "step": step,
            "lesion_call": "argmax of the logits not among negative_classes", **(extra or {})}
    bundle.save_bundle(out_dir, HEAD_NAME, mlp.state_dict(), meta)
    return out_dir


def load_lesion_judge(path: str | Path, map_location: str = "cpu") -> LesionJudge:
    """Rebuild the judge in folder `path` (see the module docstring). Anything that is not a
    judge (a missing folder, an encoder bundle alone, mismatched bundles) is a one-line
    CheckpointError."""
    from genlab.families.export import load_encoder

    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such lesion-judge folder ({MAKE_ONE})")
    if not (path / f"{HEAD_NAME}.json").is_file():
        raise CheckpointError(f"{path}: not a lesion judge: no {HEAD_NAME}.json / "
                              f"{HEAD_NAME}.safetensors beside the encoder ({MAKE_ONE})")
    meta, state = bundle.load_bundle(path, HEAD_NAME, HEAD_FORMAT, map_location)
    weights = path / f"{HEAD_NAME}.safetensors"
    try:
        widths = [int(w) for w in meta["widths"]]
        names = [str(c) for c in meta["class_names"]]
        negative = [names.index(c) for c in meta.get("negative_classes", [])]
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path / (HEAD_NAME + '.json')}: malformed judge head metadata "
                              f"({type(e).__name__}: {e})") from None
    if len(widths) < 2 or widths[-1] != len(names):
        raise CheckpointError(f"{weights}: head widths {widths} do not end in the "
                              f"{len(names)} classes {names}")
    head = _mlp(widths)
    try:
        head.load_state_dict(state, strict=True)
    except RuntimeError as e:
        detail = "; ".join(line.strip() for line in str(e).splitlines() if line.strip())
        raise CheckpointError(f"{weights}: does not fit the head it describes: {detail}") from None
    backbone = load_encoder(path, map_location)
    enc = backbone.bundle_meta
    if enc.get("builder") != "classifier_backbone":
        raise CheckpointError(f"{path}: not a lesion judge: its encoder is a {enc.get('builder')!r}, "
                              f"not a classifier backbone")
    if int(enc.get("out_features", -1)) != widths[0]:
        raise CheckpointError(f"{path}: the encoder gives {enc.get('out_features')} features, the "
                              f"head takes {widths[0]}")
    shape = tuple(meta.get("input_shape") or enc["input_shape"])
    return LesionJudge(backbone, head, name=judge_name(meta.get("name") or path.name),
                       class_names=names, negative=negative, input_shape=shape,
                       meta={**meta, "path": str(path), "encoder": enc})


__all__ = ["LesionJudge", "head_as_mlp", "judge_name", "load_lesion_judge", "save_lesion_judge"]
