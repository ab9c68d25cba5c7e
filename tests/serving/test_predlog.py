"""The prediction log: off the request path, flushed by rows, by time and at close, sampled,
and never a half-written file, even when its process is killed mid-write."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlsmith.config.serve import PredictionLogConfig
from mlsmith.errors import DataError
from mlsmith.serving import predlog
from mlsmith.serving.predlog import PredictionLog, read_prediction_log


def _rows(n: int, start: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    x = np.arange(start, start + n, dtype=float)
    inputs = pd.DataFrame({"x1": x, "color": ["red", "blue"] * (n // 2) + ["red"] * (n % 2)})
    proba = 1.0 / (1.0 + np.exp(-x))
    outputs = pd.DataFrame(
        {
            "prediction": np.where(proba > 0.5, "yes", "no"),
            "proba_no": 1 - proba,
            "proba_yes": proba,
        }
    )
    return inputs, outputs


def _config(directory: Path | None, **values: float) -> PredictionLogConfig:
    return PredictionLogConfig(directory=directory, **values)


def _files(directory: Path) -> list[Path]:
    return sorted(directory.glob("predictions-*.parquet"))


def _wait_for(condition: Callable[[], bool], seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


def test_close_writes_every_row_in_the_documented_schema(tmp_path: Path) -> None:
    log = PredictionLog(_config(tmp_path / "log"))
    assert log.append("req-1", "churn", "a", *_rows(3), latency_ms=4.5, time=1_700_000_000.25)
    assert log.append("req-2", "churn", "b", *_rows(1, start=10), latency_ms=1.0)
    log.close()

    frame = read_prediction_log(tmp_path / "log")
    assert list(frame.columns) == [
        "request_id",
        "row",
        "time",
        "model",
        "variant",
        "latency_ms",
        "input.x1",
        "input.color",
        "output.prediction",
        "output.proba_no",
        "output.proba_yes",
    ]
    assert frame["request_id"].tolist() == ["req-1"] * 3 + ["req-2"]
    assert frame["row"].tolist() == [0, 1, 2, 0]
    assert str(frame["time"].dt.tz) == "UTC"
    assert frame["time"].iloc[0] == pd.Timestamp(1_700_000_000.25, unit="s", tz="UTC")
    assert frame["variant"].tolist() == ["a", "a", "a", "b"]
    assert frame["input.x1"].tolist() == [0.0, 1.0, 2.0, 10.0]
    np.testing.assert_allclose(frame["latency_ms"], [4.5, 4.5, 4.5, 1.0])
    assert log.stats == {"logged": 4, "written": 4, "dropped": 0, "failed": 0, "files": 1}
    assert not log.append("late", "churn", "a", *_rows(1), latency_ms=1.0)  # after close


def test_a_file_is_written_every_flush_rows_and_after_flush_seconds(tmp_path: Path) -> None:
    by_rows = PredictionLog(_config(tmp_path / "rows", flush_rows=5, flush_seconds=60))
    for i in range(12):
        by_rows.append(f"r{i}", "m", "v", *_rows(1, start=i), latency_ms=1.0)
    assert _wait_for(lambda: len(_files(tmp_path / "rows")) == 2)  # 10 rows, before close
    by_rows.close()
    assert len(_files(tmp_path / "rows")) == 3
    assert len(read_prediction_log(tmp_path / "rows")) == 12

    by_time = PredictionLog(_config(tmp_path / "time", flush_rows=1000, flush_seconds=0.1))
    by_time.append("r", "m", "v", *_rows(2), latency_ms=1.0)
    assert _wait_for(lambda: len(_files(tmp_path / "time")) == 1)
    by_time.close()


def test_append_never_blocks_when_the_writer_is_stuck(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = threading.Event()
    real_write = predlog.write_parquet

    def stuck(frame: pd.DataFrame, path: Path) -> None:
        release.wait(10)
        real_write(frame, path)

    monkeypatch.setattr(predlog, "write_parquet", stuck)
    log = PredictionLog(_config(tmp_path, flush_rows=1), max_pending=4)
    inputs, outputs = _rows(2)
    slowest = 0.0
    for i in range(200):
        started = time.perf_counter()
        log.append(f"r{i}", "m", "v", inputs, outputs, latency_ms=1.0)
        slowest = max(slowest, time.perf_counter() - started)
    assert slowest < 0.05, f"an append took {slowest * 1000:.1f} ms"
    stats = log.stats
    assert stats["dropped"] > 0
    assert stats["logged"] + stats["dropped"] == 400
    release.set()
    log.close()
    assert log.stats["written"] == stats["logged"]
    assert len(read_prediction_log(tmp_path)) == stats["logged"]


def test_sampling_logs_about_the_configured_share_of_requests(tmp_path: Path) -> None:
    log = PredictionLog(_config(tmp_path, sample_rate=0.25), seed=0)
    inputs, outputs = _rows(1)
    queued = sum(log.append(f"r{i}", "m", "v", inputs, outputs, 1.0) for i in range(2000))
    log.close()
    assert 420 <= queued <= 580
    assert len(read_prediction_log(tmp_path)) == queued

    nothing = PredictionLog(_config(tmp_path / "none", sample_rate=0.0))
    assert not any(nothing.append(f"r{i}", "m", "v", inputs, outputs, 1.0) for i in range(50))
    nothing.close()
    assert not (tmp_path / "none").exists()


def test_no_directory_means_no_log() -> None:
    log = PredictionLog(_config(None))
    assert not log.enabled
    assert not log.append("r", "m", "v", *_rows(1), latency_ms=1.0)
    log.close()


def test_bytes_are_logged_as_their_length_and_mixed_values_as_text(tmp_path: Path) -> None:
    log = PredictionLog(_config(tmp_path))
    images = pd.DataFrame({"path": [b"\x89PNG" + b"\0" * 996, b"\x89PNG"]})
    log.append("img", "m", "v", images, pd.DataFrame({"prediction": ["cat", "dog"]}), 9.0)
    mixed = pd.DataFrame({"code": [1, "B7"]}, dtype=object)
    log.append("mixed", "m", "v", mixed, pd.DataFrame({"prediction": ["x", "y"]}), 1.0)
    log.close()
    frame = read_prediction_log(tmp_path)
    assert frame["input.path.bytes"].tolist()[:2] == [1000.0, 4.0]
    assert frame["input.code"].tolist()[2:] == ["1", "B7"]


def test_a_failed_write_is_counted_and_the_writer_keeps_going(tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("a file where the log directory should be")
    log = PredictionLog(_config(blocked, flush_rows=1))
    log.append("r", "m", "v", *_rows(2), latency_ms=1.0)
    log.append("s", "m", "v", *_rows(1), latency_ms=1.0)
    log.close()
    assert log.stats["failed"] == 3
    assert log.stats["written"] == 0


KILLED_WRITER = """
import sys, time
import pandas as pd
from mlsmith.config.serve import PredictionLogConfig
from mlsmith.serving import predlog

def half_then_hang(frame, path):
    with open(path, "wb") as handle:
        handle.write(b"PAR1 half a file")
    print("writing", flush=True)
    time.sleep(60)

predlog.write_parquet = half_then_hang
log = predlog.PredictionLog(PredictionLogConfig(directory=sys.argv[1], flush_rows=1))
log.append("r", "m", "v", pd.DataFrame({"x": [1.0]}), pd.DataFrame({"prediction": [0.5]}), 1.0)
time.sleep(60)
"""


@pytest.mark.slow
def test_a_process_killed_mid_write_leaves_no_half_written_file(tmp_path: Path) -> None:
    directory = tmp_path / "log"
    with subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, str(directory)], stdout=subprocess.PIPE, text=True
    ) as writer:
        try:
            assert writer.stdout is not None
            assert writer.stdout.readline().strip() == "writing"
        finally:
            os.kill(writer.pid, signal.SIGKILL)
            writer.wait(10)
    assert _files(directory) == []
    assert [p.name.startswith(".predictions-") for p in directory.iterdir()] == [True]
    with pytest.raises(DataError, match="no prediction log files"):
        read_prediction_log(directory)

    # The next writer in that directory sweeps the dead process's temporary away.
    log = PredictionLog(_config(directory))
    log.append("r", "m", "v", *_rows(1), latency_ms=1.0)
    log.close()
    assert [p.name for p in directory.iterdir()] == [p.name for p in _files(directory)]
    assert len(read_prediction_log(directory)) == 1
