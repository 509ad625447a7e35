"""`genlab list`: the registered families and data sets, the shipped recipes, recipe keys."""
from __future__ import annotations

from pathlib import Path

import click

from genlab.cli.common import CONTEXT
from genlab.core.errors import GenlabError


@click.command("list", context_settings=CONTEXT)
@click.option("--keys", "keys", default=None, metavar="NAME",
              help="Document every recipe key of a family or data set, or 'train' / 'log'. "
                   "Example: --keys dae")
@click.option("--recipes-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("recipes"),
              show_default=True, help="Where to look for recipes. Example: --recipes-dir my_recipes")
def list_(keys, recipes_dir):
    """Show the registered families and data sets, and the recipes in recipes/.

    \b
    Examples:
      genlab list
      genlab list --keys dae
    """
    from genlab.core import registry

    registry.load_all()
    if keys:
        _keys(keys)
        return
    click.echo("families:")
    for n, c in sorted(registry.FAMILIES.items()):
        click.echo(f"  {n:<14} {(c.__doc__ or '').strip().splitlines()[0] if c.__doc__ else ''}")
    click.echo("data sets:")
    for n, c in sorted(registry.DATASETS.items()):
        doc = (c.__doc__ or "").strip().splitlines()
        click.echo(f"  {n:<14} {doc[0] if doc else ''}")
    click.echo(f"recipes in {recipes_dir}/:")
    found = sorted(recipes_dir.glob("*.yaml")) if recipes_dir.is_dir() else []
    for p in found:
        click.echo(f"  {p!s:<32} {_recipe_description(p)}")
    if not found:
        click.echo("  (none)")
    click.echo("keys of a family or data set: genlab list --keys NAME")


def _keys(name: str) -> None:
    """Every recipe key of a family, a data set, 'train' or 'log', with type, default, help."""
    from genlab.core import registry, schema
    from genlab.core.recipe import LogConfig, TrainConfig

    table = {"train": TrainConfig, "log": LogConfig}
    prefix = {"train": "train", "log": "log"}
    for n, c in registry.FAMILIES.items():
        table[n], prefix[n] = c.Config, "model"
    for n, c in registry.DATASETS.items():
        table.setdefault(n, c.Config)
        prefix.setdefault(n, "data")
    if name not in table:
        raise GenlabError(f"--keys {name}: unknown name (known: {', '.join(sorted(table))})")
    rows = schema.describe(table[name], prefix[name])
    width = max(len(r[0]) for r in rows)
    for key, typ, default, help_ in rows:
        click.echo(f"{key:<{width}}  {typ}  [default: {default}]\n{'':<{width}}  {help_}")


def _recipe_description(path: Path) -> str:
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
        return str(data.get("description", "")) if isinstance(data, dict) else ""
    except (yaml.YAMLError, OSError):
        return "(unreadable)"


COMMANDS = (list_,)
