"""Stretches of work a signal must not cut in half.

SIGINT and SIGTERM stop a command by raising :class:`~mlsmith.errors.Interrupted` wherever the
main thread happens to be. Inside a write to the tracking database that would abandon the write
mid-transaction, and the store then refuses the very update that records the stop (the MLflow
run would stay RUNNING). Inside :func:`shielded`, the command's signal handler holds the signal
instead (:func:`hold`), and it is raised as soon as the stretch ends: a stop is delayed by one
database call, never lost.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from mlsmith.errors import Interrupted

_depth = 0
_held: list[int] = []


@contextmanager
def shielded() -> Iterator[None]:
    """Run the block whole; a signal that arrives meanwhile is raised when it ends."""
    global _depth
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if _depth == 0 and _held:
            signum = _held[0]
            _held.clear()
            raise Interrupted(signum)


def holding() -> bool:
    """Whether a signal arriving now must wait for the end of a shielded stretch."""
    return _depth > 0


def hold(signum: int) -> None:
    """Keep ``signum`` for the end of the shielded stretch in progress."""
    _held.append(signum)
