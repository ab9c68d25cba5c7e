"""The errors inference raises, shared with the rest of mlsmith (which re-exports them).

A package raises :class:`DataError` for rows it cannot predict (a missing column, a value of the
wrong kind), with a message naming the column and what was expected; a server turns it into a
400, the CLI into exit 2. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class MlsmithError(Exception):
    """Base class for errors caused by user input; the message is shown as is."""

    exit_code = 2


class DataError(MlsmithError):
    """The data cannot be used as configured (missing file, column, empty table...)."""


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
