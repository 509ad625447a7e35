"""Which device a run uses: the one list of names and the one way to pick.

torch is imported only when a device is picked: the recipe schema reads DEVICE_NAMES, and the
command line must be able to set OpenMP's environment before torch starts.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from genlab.core.errors import GenlabError

if TYPE_CHECKING:
    import torch

#: every place that takes a device name (recipes, --device flags) offers these
DEVICE_NAMES = ("auto", "cpu", "cuda", "mps")


def _mps_available() -> bool:
    import torch

    mps = getattr(torch.backends, "mps", None)
    return bool(mps and mps.is_available())


def select_device(name: str) -> torch.device:
    """'auto' picks cuda, then mps, then cpu; an explicit device that is absent is an error."""
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    if name not in DEVICE_NAMES:
        raise GenlabError(f"device {name!r}: unknown (expected one of {', '.join(DEVICE_NAMES)})")
    if name == "cuda" and not torch.cuda.is_available():
        raise GenlabError("device 'cuda' was asked for but torch sees no CUDA GPU (use --device auto or cpu)")
    if name == "mps" and not _mps_available():
        raise GenlabError("device 'mps' was asked for but is not available (use --device auto or cpu)")
    return torch.device(name)
