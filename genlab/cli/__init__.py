"""The `genlab` command line: this package's __init__ only assembles the commands.

Each command lives in its own module (train, data, export, list, eval/predict/explain, probe,
cas, sample, play, serve); what they share is in genlab.cli.common. Nothing else in genlab imports
this package. A problem with the user's input prints one line starting with 'error:' and exits
with code 2; genlab never answers bad input with a traceback.
"""
from __future__ import annotations

import sys
from functools import lru_cache

import click

from genlab.core.errors import GenlabError


@lru_cache(maxsize=1)
def build() -> click.Group:
    """The `genlab` click group with every command attached."""
    # Imported here, not at the top: importing a submodule runs this __init__ first, so
    # top-level imports of the submodules would tie each of them to all the others.
    from genlab.cli import cas, classifier, data, export, listing, play, probe, sample, serve, train
    from genlab.cli.common import CONTEXT

    @click.group(context_settings=CONTEXT)
    @click.version_option(package_name="genlab")
    def cli():
        """genlab: autoencoders, RBMs/DBNs, GANs and a DQN maze agent, one trainer, YAML recipes.

        \b
        Start here:
          genlab train recipes/dae_brain.yaml
          tensorboard --logdir runs
        """

    for module in (train, data, export, listing, classifier, probe, cas, sample, play, serve):
        for command in module.COMMANDS:
            cli.add_command(command)
    return cli


def __getattr__(name: str):
    if name == "cli":  # the click group, for tools that embed it
        return build()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main(argv: list[str] | None = None) -> int:
    """Console entry point: user errors exit 2 with one clear line, never a traceback."""
    from genlab.core.threads import passive_openmp

    passive_openmp()  # before the commands import torch: OpenMP reads it once, when loaded
    try:
        rv = build().main(args=argv, prog_name="genlab", standalone_mode=False)
        return rv if isinstance(rv, int) else 0
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except click.BadParameter as e:  # a bad value (a path, a choice): one line, no usage block
        click.echo(f"error: {e.format_message()}", err=True)
        return e.exit_code
    except click.ClickException as e:
        e.show()
        return e.exit_code
    except GenlabError as e:
        click.echo(f"error: {e}", err=True)
        return e.exit_code


if __name__ == "__main__":
    sys.exit(main())
