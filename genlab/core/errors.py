"""Errors a user can act on.

Every problem caused by the user's input (a recipe, a path, a flag) is raised as a
`GenlabError`; the CLI prints its message without a traceback and exits with code 2.
Anything else is a bug in genlab and keeps its traceback.
"""
from __future__ import annotations


class GenlabError(Exception):
    """A problem with the user's input, reported as one clear message (CLI exit code 2)."""

    exit_code = 2


class RecipeError(GenlabError):
    """A recipe or `--set` override is invalid.

    `where` names the source (a file, or '--set'), `key` the dotted key path
    (e.g. 'train.lr'); the message says what was expected and what was found.
    """

    def __init__(self, key: str, message: str, where: str | None = None):
        self.key, self.message, self.where = key, message, where
        super().__init__(self._render())

    def _render(self) -> str:
        prefix = f"{self.where}: " if self.where else ""
        key = f"{self.key}: " if self.key else ""
        return f"{prefix}{key}{self.message}"

    def located(self, where: str) -> RecipeError:
        """The same error, attributed to a source file or flag."""
        return RecipeError(self.key, self.message, where)


class DataError(GenlabError):
    """A data set cannot be read or built (missing folder, offline download, bad image)."""


class CheckpointError(GenlabError):
    """No usable checkpoint or export bundle where one was expected."""


class NonFiniteLossError(GenlabError):
    """Training produced NaN or Inf; the message names the step and the last good checkpoint."""
