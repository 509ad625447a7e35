"""MNIST and Fashion-MNIST through torchvision, with an offline story that never shows a traceback.

Files are read from `<root>/MNIST/raw/` (or `<root>/FashionMNIST/raw/`): the four IDX files
`train-images-idx3-ubyte`, `train-labels-idx1-ubyte`, `t10k-images-idx3-ubyte`,
`t10k-labels-idx1-ubyte`, or their `.gz` archives (unpacked on first use). `download: true`
fetches them when there is a network. Val is carved out of the official train set (stratified,
seeded); test is the official test set. Images are held as uint8 on `device`.
"""

from __future__ import annotations

import gzip
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch

from genlab.core.errors import DataError
from genlab.core.registry import register_dataset
from genlab.core.schema import param
from genlab.data.base import SPLITS, DataInfo, TensorSplits
from genlab.data.sampler import stratified_split

RAW_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


@dataclass
class TorchvisionConfig:
    root: Path = param(
        Path("data"),
        help="folder holding <Name>/raw/ with the IDX files (download puts them there)",
    )
    download: bool = param(False, help="fetch the files from the internet if they are missing")
    val_fraction: float = param(
        0.1, ge=0, lt=1, help="share of each class of the official train set held out for val"
    )

    def __post_init__(self):
        self.root = Path(self.root).expanduser()
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(
                f"val_fraction: expected a number >= 0 and < 1, got {self.val_fraction!r}"
            )


class _TorchvisionIDX(TensorSplits):
    """Shared body: find or fetch the raw files, load them with torchvision, split, index."""

    Config = TorchvisionConfig
    tv_name: ClassVar[str]  # torchvision class name, also the folder under root
    class_names: ClassVar[tuple[str, ...]]

    def __init__(self, cfg: TorchvisionConfig, seed: int, device: torch.device | str = "cpu"):
        import torchvision.datasets as tvd

        self.cfg, self.device = cfg, torch.device(device)
        tv_cls = getattr(tvd, self.tv_name)
        root = Path(cfg.root)
        raw = root / self.tv_name / "raw"
        self._ensure_files(tv_cls, root, raw)
        try:
            train = tv_cls(str(root), train=True, download=False)
            test = tv_cls(str(root), train=False, download=False)
        except (
            AssertionError,
            RuntimeError,
            ValueError,
            OSError,
            IndexError,
        ) as e:  # malformed IDX
            raise DataError(
                f"cannot read {self.tv_name} files in {raw}: {type(e).__name__}: {e}"
            ) from None

        parts = stratified_split(
            train.targets, cfg.val_fraction, 0.0, seed, tag=f"{self.tv_name}-val"
        )
        xs = {
            "train": train.data[parts["train"]],
            "val": train.data[parts["val"]],
            "test": test.data,
        }
        ys = {
            "train": train.targets[parts["train"]],
            "val": train.targets[parts["val"]],
            "test": test.targets,
        }
        self._x = {
            s: xs[s].to(torch.uint8).unsqueeze(1).to(self.device) for s in SPLITS
        }  # (N,1,28,28)
        self._y = {s: ys[s].long().to(self.device) for s in SPLITS}
        h, w = train.data.shape[-2:]
        self.info = DataInfo(
            name=self.dataset_name,  # set by register_dataset
            input_shape=(1, int(h), int(w)),
            num_classes=len(self.class_names),
            class_names=self.class_names,
        )

    def _ensure_files(self, tv_cls, root: Path, raw: Path) -> None:
        processed = raw.parent / "processed"  # torchvision's old format, still read by it
        if (processed / "training.pt").is_file() and (processed / "test.pt").is_file():
            return
        missing = [f for f in RAW_FILES if not (raw / f).is_file()]
        for f in list(missing):  # unpack archives placed by hand
            gz = raw / (f + ".gz")
            if gz.is_file():
                try:
                    with gzip.open(gz, "rb") as src, open(raw / f, "wb") as dst:
                        shutil.copyfileobj(src, dst)
                except (OSError, EOFError) as e:
                    (raw / f).unlink(missing_ok=True)
                    raise DataError(f"cannot unpack {gz}: {e}") from None
                missing.remove(f)
        if not missing:
            return
        if not self.cfg.download:
            raise DataError(
                f"{self.tv_name} files not found: looked in {raw.resolve()} "
                f"for {', '.join(missing)}. "
                f"Set data.download: true (needs internet), or place the four raw files "
                f"({', '.join(RAW_FILES)}, or their .gz archives) under {raw}"
            )
        try:
            tv_cls(str(root), train=True, download=True)
        except (
            OSError,
            RuntimeError,
            ValueError,
        ) as e:  # URLError/timeouts are OSError; torchvision re-wraps in RuntimeError
            detail = " ".join(line.strip() for line in str(e).splitlines() if line.strip())
            detail = detail if len(detail) <= 400 else detail[:400] + " ..."
            raise DataError(
                f"could not download {self.tv_name} into {raw.resolve()} (no network?): {detail}. "
                f"Without internet, place the four raw files ({', '.join(RAW_FILES)}, or their .gz "
                f"archives) under {raw} and set data.download: false"
            ) from None

    def _as_float(self, x: torch.Tensor) -> torch.Tensor:
        return x.float().div_(255.0)  # images are stored as uint8

@register_dataset("mnist")
class MNISTData(_TorchvisionIDX):
    """MNIST: x (B, 1, 28, 28) float32 in [0, 1], y (B,) int64 digit 0..9."""

    tv_name = "MNIST"
    class_names = tuple(str(d) for d in range(10))


@register_dataset("fashion_mnist")
class FashionMNISTData(_TorchvisionIDX):
    """Fashion-MNIST: x (B, 1, 28, 28) float32 in [0, 1], y (B,) int64 over 10 garment classes."""

    tv_name = "FashionMNIST"
    class_names = (
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    )
