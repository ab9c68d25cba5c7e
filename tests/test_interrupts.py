"""Where a signal lands matters: inside a tracking write it waits for the write's end; inside a
finalizer (where Python can only print an exception) it is delivered again to the running code.
Real signals, sent to this process."""

from __future__ import annotations

import gc
import json
import signal
import time
from pathlib import Path

import pytest
from tests.conftest import make_table

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


def test_a_run_stopped_through_a_library_s_own_error_is_recorded_as_interrupted(
    tmp_path: Path,
) -> None:
    """A signal that a library turns into its own error (torch's distributed checkpoint wraps it
    in a CheckpointException) stops the run as interrupted, with its resume hint, not failed."""
    from tests.conftest import config_dict

    import mlsmith

    class WrapsTheSignal:
        def on_epoch_end(self, state: object, row: dict[str, float]) -> None:
            try:
                signal.raise_signal(signal.SIGTERM)
            except Interrupted as stop:
                raise RuntimeError("CheckpointException ranks:dict_keys([0])") from stop

    data = tmp_path / "data.csv"
    make_table("binary", rows=120).to_csv(data, index=False)
    cfg = config_dict(data, tmp_path / "runs", train={"epochs": 3})
    with signals.interruptible(), pytest.raises(RuntimeError):
        mlsmith.train(cfg, progress=False, callbacks=[WrapsTheSignal()])
    [run] = [p.parent for p in (tmp_path / "runs").rglob("run.json")]
    assert json.loads((run / "run.json").read_text())["status"] == "interrupted"


def test_an_error_with_no_signal_is_a_failure() -> None:
    interrupts.reset()
    assert interrupts.interruption(RuntimeError("a bug")) is None
    assert interrupts.interruption(KeyboardInterrupt()) == signal.SIGINT
    assert interrupts.interruption(Interrupted(signal.SIGTERM)) == signal.SIGTERM
