"""Data source "generated": a training split drawn from a class-conditional generator, with the
validation and test splits of a real data set. The Classification Accuracy Score
(genlab.tools.cas) trains a classifier on it: generated images to learn from, real ones to be
scored on.

    data:
      name: generated
      generator: runs/cgan_brain/<stamp>/cas/generator   # a generator bundle (generator.json)
      train_size: 2000            # samples drawn, labelled by the class they were drawn for
      block: 32                   # samples per generator call (the GAN's training batch)
      real: {name: brain, mode: easy, size: [64, 48], val_size: 1000, test_size: 1000}

Train sample i is drawn for class i mod K (the K classes dealt in turn: any first n samples hold
n / K of each class, to within one) with noise from a torch generator seeded by (recipe seed,
i // block). The samples are drawn once, when the source is built, in blocks of `block`
consecutive indices: the generator's batch norm normalises with the statistics of the batch it
draws (genlab.nn.gan_blocks.Generator), so a sample is a fixed function of its index only when
the batches are fixed. The first n samples of a larger train_size are the same n samples. They
are kept in memory on the source's device (2,000 images of 1 x 128 x 96 in float32: 98 MB).

`val` and `test` are the real source's, built from `real` with the same recipe seed, so a
classifier trained here and one trained on the real data with the same seed are scored on the
same images. With `with_real_train: true` the train split is the real source's train split first
(e.g. its `labelled: 1000` images: the same images a real-only run with that seed trains on),
then the generated images: real data augmented with samples (scripts/augmentation_study.py).
A subclass may draw from something else than a generator bundle by overriding
`sampler` (tests draw real images, or noise).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from genlab.core import schema
from genlab.core.errors import RecipeError
from genlab.core.registry import get_dataset, register_dataset
from genlab.core.schema import param
from genlab.data.base import check_split
from genlab.data.subset import hash_uniform
from genlab.nn.gan_blocks import load_generator

# (labels (B,) int64, noise generator) -> images (B, C, H, W) in the real data's value range
Sampler = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


@dataclass
class GeneratedConfig:
    real: dict[str, Any] = param(help="the real data set whose val and test splits score the "
                                 "classifier: `name` plus its options, as a recipe's data section")
    generator: Path | None = param(None, must_exist=True, help="a class-conditional generator "
                                   "bundle folder (generator.json + generator.safetensors; genlab "
                                   "cas RUN writes RUN/cas/generator/) the training images are "
                                   "drawn from")
    train_size: int = param(2000, ge=1, help="generated training images, class i mod K for image i")
    block: int = param(64, ge=1, help="images per generator call: its batch norm uses the statistics "
                       "of the batch it draws, so use the batch size the GAN was trained with")
    with_real_train: bool = param(False, help="train on the real source's train split too (first, "
                                  "then the generated images): real images augmented with samples")


def block_noise_generator(seed: int, block: int) -> torch.Generator:
    """The CPU torch generator that draws block `block`'s noise under recipe seed `seed`, seeded
    by a hash of both (the CPU generator keeps only 32 bits of its seed, so no plain sum)."""
    u = float(hash_uniform(torch.tensor([int(block)]), seed)[0])
    return torch.Generator().manual_seed(int(u * 2**32))


@register_dataset("generated")
class GeneratedData:
    """Train: `train_size` generated images labelled by their class; val, test: the real source's."""

    Config = GeneratedConfig

    def __init__(self, cfg: GeneratedConfig, seed: int = 0, device: torch.device | str = "cpu"):
        self.cfg, self.seed, self.device = cfg, seed, torch.device(device)
        self.real = build_real(cfg.real, seed, self.device)
        self.info = self.real.info
        self._n_real = self.real.size("train") if cfg.with_real_train else 0
        k = self.info.num_classes
        self._y = torch.arange(cfg.train_size, device=self.device) % k
        draw = self.sampler(cfg)
        blocks = []
        for b, start in enumerate(range(0, cfg.train_size, cfg.block)):
            # a whole block always: the last one too, so that its batch statistics are the same
            labels = torch.arange(start, start + cfg.block) % k
            with torch.no_grad():
                x = draw(labels, block_noise_generator(seed, b)).float()
            blocks.append(x[: cfg.train_size - start].to(self.device))
        self._x = torch.cat(blocks)
        want = (cfg.train_size, *self.info.input_shape)
        if tuple(self._x.shape) != want:
            raise RecipeError("data.generator", f"draws images of shape {tuple(self._x.shape[1:])}, "
                              f"the real data are {tuple(self.info.input_shape)}")

    def sampler(self, cfg: GeneratedConfig) -> Sampler:
        """How images are drawn: the generator bundle `cfg.generator`, checked against the real
        data (conditional, the same classes, the same image shape)."""
        if cfg.generator is None:
            raise RecipeError("data.generator", "missing: a generator bundle folder (genlab cas "
                              "RUN writes one to RUN/cas/generator/, genlab export RUN to RUN/export/)")
        gen = load_generator(cfg.generator)
        meta = gen.bundle_meta
        names, real_names = list(meta.get("class_names") or []), list(self.info.class_names)
        if not meta["config"].get("num_classes"):
            raise RecipeError("data.generator", f"{cfg.generator}: an unconditional generator; "
                              "class-labelled samples need one trained with model.conditional: true")
        if names != real_names:
            raise RecipeError("data.generator", f"{cfg.generator}: draws classes {names}, the real "
                              f"data have {real_names}")
        shape = tuple(meta["config"]["out_shape"])
        if shape != tuple(self.info.input_shape):
            raise RecipeError("data.generator", f"{cfg.generator}: draws {shape} images, the real "
                              f"data are {tuple(self.info.input_shape)}")
        gen = gen.to(self.device)

        def draw(labels: torch.Tensor, g: torch.Generator) -> torch.Tensor:
            z = torch.randn(len(labels), gen.z_dim, generator=g).to(self.device)
            return gen(z, labels.to(self.device))

        return draw

    def size(self, split: str) -> int:
        check_split(split)
        return self._n_real + self.cfg.train_size if split == "train" else self.real.size(split)

    def get(self, split: str, indices: torch.Tensor) -> dict[str, torch.Tensor]:
        check_split(split)
        if split != "train":
            return self.real.get(split, indices)
        idx = torch.as_tensor(indices, dtype=torch.long).reshape(-1).to(self.device)
        if not self._n_real:
            return {"x": self._x[idx], "y": self._y[idx]}
        real = idx < self._n_real  # a batch mixes both: each image comes from its own source
        gen = (idx - self._n_real).clamp(min=0)  # a real image's slot is filled below
        x, y = self._x[gen].clone(), self._y[gen].clone()
        if bool(real.any()):
            b = self.real.get("train", idx[real])
            x[real], y[real] = b["x"].to(self.device, x.dtype), b["y"].to(self.device)
        return {"x": x, "y": y}

    def class_counts(self, split: str) -> torch.Tensor:
        """(num_classes,) examples per class in `split`."""
        check_split(split)
        if split == "train":
            gen = torch.bincount(self._y.cpu(), minlength=self.info.num_classes)
            return gen + self.real.class_counts("train").cpu() if self._n_real else gen
        return self.real.class_counts(split)


def build_real(raw: dict[str, Any], seed: int, device: torch.device):
    """The real data source of `data.real` (a recipe data section), validated like one."""
    raw = dict(raw)
    name = raw.pop("name", None)
    if not isinstance(name, str):
        raise RecipeError("data.real.name", "missing data set name (e.g. `name: brain`)")
    if name == "generated":
        raise RecipeError("data.real.name", "the real data cannot be generated ones")
    cls = get_dataset(name, "data.real.name")
    return cls(schema.build(cls.Config, raw, "data.real"), seed, device)


__all__ = ["GeneratedConfig", "GeneratedData", "Sampler", "block_noise_generator", "build_real"]
