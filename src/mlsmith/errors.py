"""User-facing errors.

Anything the user can fix (a bad config, a missing file, a column that is not there) raises a
subclass of :class:`MlsmithError`. The CLI prints its message and exits with ``exit_code``; no
traceback. Bugs in mlsmith itself stay ordinary exceptions so they *do* show a traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class MlsmithError(Exception):
    """Base class for errors caused by user input; the message is shown as is."""

    exit_code = 2


class ConfigError(MlsmithError):
    """The configuration (file, key or value) is invalid."""


class DataError(MlsmithError):
    """The data cannot be used as configured (missing file, column, empty table...)."""


class RunError(MlsmithError):
    """A run directory is missing, incomplete, or does not match what was asked."""


class PreflightError(MlsmithError):
    """A pre-flight check failed: training would waste time or produce a misleading model."""

    exit_code = 1


class MissingExtraError(MlsmithError):
    """An optional dependency is needed for what was asked."""

    def __init__(self, package: str, extra: str, purpose: str) -> None:
        super().__init__(
            f"{purpose} needs the '{package}' package, which is not installed. "
            f"Install it with: pip install 'mlsmith[{extra}]'"
        )


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """Return ' (did you mean 'x'?)' for the closest choice, or '' when nothing is close."""
    matches = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{matches[0]}'?)" if matches else ""
