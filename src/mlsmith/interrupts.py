"""Signals that stop a command: stretches of work they must not cut in half, and how an error
that follows one is recognised as a stop.

SIGINT and SIGTERM stop a command by raising :class:`~mlsmith.errors.Interrupted` wherever the
main thread happens to be. Inside a write to the tracking database that would abandon the write
mid-transaction, and the store then refuses the very update that records the stop (the MLflow
run would stay RUNNING). Inside :func:`shielded`, the command's signal handler holds the signal
instead (:func:`hold`), and it is raised as soon as the stretch ends: a stop is delayed by one
database call, never lost.

A library can catch the Interrupted and raise an error of its own (torch's distributed
checkpoint wraps it in a CheckpointException; a peer rank that stopped breaks a collective).
The signal is therefore also recorded when it arrives (:func:`arrived`): an error raised after
one is the stop it caused (:func:`interruption`), never a failure of the run.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager

from mlsmith.errors import Interrupted

_depth = 0
_held: list[int] = []
_arrived: list[int] = []


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


def arrived(signum: int) -> None:
    """Record that ``signum`` arrived: the command is being stopped."""
    _arrived.append(signum)


def reset() -> None:
    """Forget earlier signals (a new command starts in this process)."""
    _arrived.clear()
    _held.clear()


def received() -> int | None:
    """The first signal recorded since :func:`reset`, if any."""
    return _arrived[0] if _arrived else None


def interruption(error: BaseException) -> int | None:
    """The signal that ``error`` is the result of, or None when it is a failure of its own.

    A KeyboardInterrupt is one (SIGINT unless it says otherwise); so is any error raised after
    a signal arrived, whatever a library made of the Interrupted on its way up.
    """
    if isinstance(error, KeyboardInterrupt):
        return getattr(error, "signum", None) or received() or int(signal.SIGINT)
    return received()
