"""Name -> family / data source. A miss lists the known names and suggests the closest one."""
from __future__ import annotations

import difflib
import importlib
import os

from genlab.core.errors import GenlabError, RecipeError

FAMILIES: dict[str, type] = {}
DATASETS: dict[str, type] = {}

# Modules that register themselves on import. Listed here (not discovered) so that
# `genlab list` and recipe validation see the same, explicit set.
_MODULES = (
    "genlab.data.brain",
    "genlab.data.digits",
    "genlab.data.folders",
    "genlab.data.generated",
    "genlab.data.torchvision_sets",
    "genlab.data.maze_source",
    "genlab.families.ae",
    "genlab.families.atlas",
    "genlab.families.classifier",
    "genlab.families.gan",
    "genlab.families.dqn",
    "genlab.families.rbm",
    "genlab.families.dbn",
    "genlab.families.distill",
    "genlab.families.ssl",
)


def register_family(name: str):
    def deco(cls):
        FAMILIES[name] = cls
        cls.family_name = name
        return cls

    return deco


def register_dataset(name: str):
    def deco(cls):
        DATASETS[name] = cls
        cls.dataset_name = name
        return cls

    return deco


def plugin_modules() -> list[str]:
    """Extra modules that register families or data sources, named in $GENLAB_PLUGINS
    (comma-separated import paths, e.g. GENLAB_PLUGINS=mylab.families), so a user's own family
    trains with `genlab train` without editing genlab."""
    return [m.strip() for m in os.environ.get("GENLAB_PLUGINS", "").split(",") if m.strip()]


def load_all() -> None:
    for mod in _MODULES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:  # a module still being written must not break the rest
            if e.name != mod:
                raise
    for mod in plugin_modules():
        try:
            importlib.import_module(mod)
        except ImportError as e:
            raise GenlabError(f"GENLAB_PLUGINS: cannot import {mod!r} ({e})") from None


def _lookup(table: dict[str, type], kind: str, key: str, name: str) -> type:
    load_all()
    if name in table:
        return table[name]
    close = difflib.get_close_matches(name, table, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    known = ", ".join(sorted(table)) or "(none)"
    raise RecipeError(key, f"unknown {kind} {name!r}{hint} (known: {known})")


def get_family(name: str, key: str = "family") -> type:
    return _lookup(FAMILIES, "family", key, name)


def get_dataset(name: str, key: str = "data.name") -> type:
    return _lookup(DATASETS, "data set", key, name)
