"""Where a signal lands matters: inside a tracking write it waits for the write's end; inside a
finalizer (where Python can only print an exception) it is delivered again to the running code.
Real signals, sent to this process."""

from __future__ import annotations

import gc
import signal
import time

import pytest

from mlsmith import interrupts
from mlsmith.cli import signals
from mlsmith.errors import Interrupted


def test_a_signal_inside_a_shielded_stretch_is_raised_when_it_ends() -> None:
    finished = []
    with signals.interruptible(), pytest.raises(Interrupted) as stopped:
        with interrupts.shielded():
            signal.raise_signal(signal.SIGTERM)
            finished.append("the write")  # not cut in half
        finished.append("after the stretch")  # never reached
    assert finished == ["the write"]
    assert stopped.value.signum == signal.SIGTERM


def test_nested_stretches_hold_the_signal_to_the_outermost_end() -> None:
    order = []
    with signals.interruptible(), pytest.raises(Interrupted), interrupts.shielded():
        with interrupts.shielded():
            signal.raise_signal(signal.SIGINT)
            order.append("inner")
        order.append("outer")
    assert order == ["inner", "outer"]


def test_a_signal_inside_a_finalizer_stops_the_running_code_without_a_traceback(
    capsys: pytest.CaptureFixture[str],
) -> None:
    class Finalized:
        def __del__(self) -> None:
            signal.raise_signal(signal.SIGINT)  # as if Ctrl-C arrived during garbage collection

    reached = []
    with signals.interruptible(), pytest.raises(Interrupted):
        Finalized()  # collected at once: the signal lands inside __del__
        gc.collect()
        for _ in range(200):  # the re-sent signal stops this loop
            reached.append(1)
            time.sleep(0.005)
    assert len(reached) < 200
    assert "Exception ignored" not in capsys.readouterr().err
    assert signals.received() == signal.SIGINT
