"""SIGINT and SIGTERM for the ``mlsmith`` command: both stop a command the way Ctrl-C does.

Python turns SIGINT into KeyboardInterrupt, so every cleanup path (a run marked interrupted, its
MLflow run KILLED, a temporary file removed) already handles Ctrl-C; SIGTERM, what schedulers,
``kill`` and container runtimes send, would otherwise end the process on the spot and skip them
all. Both raise :class:`~mlsmith.errors.Interrupted` instead.

A library may catch KeyboardInterrupt and carry on, or raise an error of its own, so the arrival
of a signal is also recorded (:func:`mlsmith.interrupts.arrived`): a command that returns
normally after one, or fails after one, still exits as interrupted.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

from mlsmith import interrupts
from mlsmith.errors import Interrupted

HANDLED = (signal.SIGINT, signal.SIGTERM)


def _raise_interrupted(signum: int, frame: FrameType | None) -> None:
    interrupts.arrived(signum)
    if interrupts.holding():  # mid-write to a database: raised when the write is done
        interrupts.hold(signum)
        return
    raise Interrupted(signum)


def _record(signum: int, frame: FrameType | None) -> None:
    interrupts.arrived(signum)


def _redeliver(unraisable: Any) -> None:
    """``sys.unraisablehook`` inside :func:`interruptible`: an Interrupted raised while Python
    ran a finalizer or a weakref callback (say SQLAlchemy's, during garbage collection) cannot
    propagate, and Python would print it as a traceback and carry on. Send the signal again
    instead: it lands in the code that was running and stops it as it should (from another
    thread, a moment later: sent from here it would land in this hook, unraisable again)."""
    if isinstance(unraisable.exc_value, Interrupted):
        resend = threading.Timer(0.01, os.kill, (os.getpid(), unraisable.exc_value.signum))
        resend.daemon = True
        resend.start()
        return
    _previous_hook(unraisable)


_previous_hook = sys.unraisablehook


@contextmanager
def interruptible(restore: bool = True) -> Iterator[None]:
    """Within this block SIGINT and SIGTERM raise Interrupted (main thread only).

    With ``restore`` false the handlers are not put back: the process is about to exit after
    its work is done, and a signal arriving during interpreter shutdown must not turn a finished
    command into a failed one, so both are then ignored.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    global _previous_hook
    previous: dict[int, Any] = {s: signal.getsignal(s) for s in HANDLED}
    interrupts.reset()
    for signum in HANDLED:
        signal.signal(signum, _raise_interrupted)
    _previous_hook, sys.unraisablehook = sys.unraisablehook, _redeliver
    try:
        yield
    finally:
        sys.unraisablehook = _previous_hook
        for number, handler in previous.items():
            signal.signal(number, handler if restore else signal.SIG_IGN)


def quiet() -> None:
    """From now on only record SIGINT and SIGTERM: the command's work is over, and stopping
    the little that is left (printing, exiting) would only lose its result."""
    if threading.current_thread() is threading.main_thread():
        for signum in HANDLED:
            if signal.getsignal(signum) is _raise_interrupted:
                signal.signal(signum, _record)


def received() -> int | None:
    """The first signal that arrived inside :func:`interruptible`, if any."""
    return interrupts.received()


def exit_code(signum: int) -> int:
    """What a shell reports for a process ended by ``signum``: 130 for SIGINT, 143 for SIGTERM."""
    return 128 + signum
