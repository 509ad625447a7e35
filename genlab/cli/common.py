"""What every command shares: click settings, the run-folder argument, --device, --checkpoint."""
from __future__ import annotations

from pathlib import Path

import click

from genlab.core.devices import DEVICE_NAMES
from genlab.core.files import require_run_dir

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}

DEVICES = click.Choice(list(DEVICE_NAMES))

#: RUN_DIR, the folder of a run (checked when it is loaded: genlab.load_run)
run_dir_argument = click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))

SPLITS = click.Choice(["train", "val", "test"])


def device_option(help: str, default: str | None = "cpu"):
    """--device NAME, one of genlab.core.devices.DEVICE_NAMES."""
    return click.option("--device", type=DEVICES, default=default, show_default=default is not None,
                        help=help)


def checkpoint_option(help: str = "best.pt (lowest val loss) or the newest step checkpoint. "
                                  "Example: --checkpoint last"):
    """--checkpoint best|last (see genlab.engine.runs)."""
    return click.option("--checkpoint", type=click.Choice(["best", "last"]), default="best",
                        show_default=True, help=help)


def require_run(run_dir: Path, needs: str = "") -> Path:
    """`run_dir` if it is a genlab run folder, else one clear error (genlab.core.files)."""
    return require_run_dir(run_dir, needs)
