"""The prediction log: every answered row appended to Parquet files, off the request path.

:meth:`PredictionLog.append` only decides whether the request is sampled and puts a reference
to its frames on a bounded queue; it never waits for a lock held by I/O, and when the queue is
full (the disk stalls) it drops the request and counts it rather than slow the answer down. A
daemon thread turns queued requests into rows and writes a new file every ``flush_rows`` rows
or ``flush_seconds`` seconds, under a temporary name renamed in whole (:func:`atomic_path`):
a reader, or a process killed mid-write, never leaves half a file. :meth:`PredictionLog.close`
writes what is left; the server calls it at shutdown. The format is
:mod:`mlsmith.monitoring.logs`'s, which ``mlsmith monitor`` reads.
"""

from __future__ import annotations

import itertools
import logging
import os
import queue
import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mlsmith.files import atomic_path
from mlsmith.monitoring.logs import (
    BYTES_SUFFIX,
    INPUT,
    LATENCY,
    MODEL,
    OUTPUT,
    REQUEST_ID,
    ROW,
    TIME,
    VARIANT,
    log_file_name,
    read_prediction_log,
)

if TYPE_CHECKING:
    import pandas as pd

    from mlsmith.config.serve import PredictionLogConfig

__all__ = ["PredictionLog", "read_prediction_log"]

log = logging.getLogger(__name__)

# Requests waiting for the writer, at most: beyond it the disk is not keeping up.
MAX_PENDING = 10_000
_STOP = object()


@dataclass
class _Request:
    request_id: str
    model: str
    variant: str
    inputs: pd.DataFrame
    outputs: pd.DataFrame
    latency_ms: float
    time: float

    @property
    def rows(self) -> int:
        return len(self.inputs)


class PredictionLog:
    """Appends answered requests to ``config.directory`` (nothing when it is None)."""

    def __init__(
        self,
        config: PredictionLogConfig,
        *,
        max_pending: int = MAX_PENDING,
        seed: int | None = None,
    ) -> None:
        self.config = config
        self.directory = None if config.directory is None else Path(config.directory)
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max_pending)
        self._random = random.Random(seed)
        self._sequence = itertools.count()
        self._counts_lock = threading.Lock()
        self._counts = {"logged": 0, "written": 0, "dropped": 0, "failed": 0, "files": 0}
        self._warned_drop = False
        self._closed = False
        self._thread: threading.Thread | None = None
        if self.directory is not None:
            self._thread = threading.Thread(
                target=self._run, name="mlsmith-prediction-log", daemon=True
            )
            self._thread.start()

    @property
    def enabled(self) -> bool:
        return self.directory is not None

    @property
    def stats(self) -> dict[str, int]:
        """Rows logged (queued), written, dropped (queue full) and failed (write error), and
        files written."""
        with self._counts_lock:
            return dict(self._counts)

    def append(
        self,
        request_id: str,
        model: str,
        variant: str,
        inputs: pd.DataFrame,
        outputs: pd.DataFrame,
        latency_ms: float,
        time: float | None = None,
    ) -> bool:
        """Log one answered request (its raw input rows and its output table, aligned row for
        row); True when queued. Never blocks. The frames are kept, not copied: the caller must
        not change them afterwards. ``time``: seconds since the epoch (default: now)."""
        if self._thread is None or self._closed:
            return False
        rate = self.config.sample_rate
        if rate < 1.0 and self._random.random() >= rate:
            return False
        entry = _Request(
            str(request_id),
            str(model),
            str(variant),
            inputs,
            outputs,
            float(latency_ms),
            _now() if time is None else float(time),
        )
        try:
            self._queue.put_nowait(entry)
        except queue.Full:
            self._count("dropped", entry.rows)
            if not self._warned_drop:
                self._warned_drop = True
                log.warning(
                    "prediction log: the writer is behind (%d requests queued); dropping "
                    "requests from the log until it catches up",
                    self._queue.maxsize,
                )
            return False
        self._count("logged", entry.rows)
        return True

    def close(self, timeout: float | None = 30.0) -> None:
        """Write everything queued and stop the writer (waiting ``timeout`` seconds at most)."""
        if self._closed:
            return
        self._closed = True
        if self._thread is None:
            return
        try:
            self._queue.put(_STOP, timeout=timeout)
        except queue.Full:
            log.warning(
                "prediction log: the writer is stuck; %d queued requests not written",
                self._queue.qsize(),
            )
            return
        self._thread.join(timeout)
        stats = self.stats
        if stats["dropped"] or stats["failed"]:
            log.warning(
                "prediction log: %d rows dropped (writer behind), %d failed to write",
                stats["dropped"],
                stats["failed"],
            )

    def __enter__(self) -> PredictionLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the writer thread ------------------------------------------------------------------

    def _run(self) -> None:
        pending: list[_Request] = []
        rows = 0
        deadline: float | None = None
        while True:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                item = self._queue.get(timeout=wait)
            except queue.Empty:
                item = None  # flush_seconds passed
            if item is _STOP:
                self._write(pending)
                return
            if isinstance(item, _Request):
                pending.append(item)
                rows += item.rows
                if deadline is None:
                    deadline = time.monotonic() + self.config.flush_seconds
            due = deadline is not None and time.monotonic() >= deadline
            if pending and (rows >= self.config.flush_rows or due):
                self._write(pending)
                pending, rows, deadline = [], 0, None

    def _write(self, pending: list[_Request]) -> None:
        """One new file of ``pending``'s rows; a failure is counted and logged, never raised
        (the thread must outlive a full disk)."""
        if not pending:
            return
        n = sum(r.rows for r in pending)
        assert self.directory is not None
        try:
            frame = batch_frame(pending)
            name = log_file_name(_now(), os.getpid(), next(self._sequence))
            with atomic_path(self.directory / name) as tmp:
                write_parquet(frame, tmp)
        except Exception as error:  # disk full, read-only, an unwritable value: keep serving
            self._count("failed", n)
            log.warning("prediction log: %d rows not written (%s)", n, error)
            return
        self._count("written", n)
        self._count("files", 1)

    def _count(self, key: str, n: int) -> None:
        with self._counts_lock:
            self._counts[key] += n


def batch_frame(requests: list[_Request]) -> pd.DataFrame:
    """The log's rows for ``requests``: one per predicted row (see mlsmith.monitoring.logs)."""
    import pandas as pd

    sizes = np.array([r.rows for r in requests], dtype=np.int64)
    meta = pd.DataFrame(
        {
            REQUEST_ID: np.repeat([r.request_id for r in requests], sizes).astype(object),
            ROW: np.concatenate([np.arange(n) for n in sizes]).astype(np.int64),
            TIME: pd.to_datetime(np.repeat([r.time for r in requests], sizes), unit="s", utc=True),
            MODEL: np.repeat([r.model for r in requests], sizes).astype(object),
            VARIANT: np.repeat([r.variant for r in requests], sizes).astype(object),
            LATENCY: np.repeat([r.latency_ms for r in requests], sizes),
        }
    )
    inputs = pd.concat([_loggable(r.inputs) for r in requests], ignore_index=True)
    outputs = pd.concat([r.outputs.reset_index(drop=True) for r in requests], ignore_index=True)
    inputs.columns = [f"{INPUT}{c}" for c in inputs.columns]
    outputs.columns = [f"{OUTPUT}{c}" for c in outputs.columns]
    return _parquet_safe(pd.concat([meta, inputs, outputs], axis=1))


def write_parquet(frame: pd.DataFrame, path: Path) -> None:
    """Write ``frame`` to ``path`` as Parquet (the writer thread's one I/O call)."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    # pyarrow reads time-zoned columns through Series.values, which pandas 3 deprecates:
    # those are converted here, as UTC nanoseconds, and put back in their places.
    zoned = [c for c in frame.columns if isinstance(frame[c].dtype, pd.DatetimeTZDtype)]
    table = pa.Table.from_pandas(frame.drop(columns=zoned), preserve_index=False)
    for column in zoned:
        utc = frame[column].dt.tz_convert("UTC").dt.tz_localize(None).to_numpy()
        values = pa.array(utc, type=pa.timestamp("ns", tz="UTC"))
        table = table.add_column(frame.columns.get_loc(column), str(column), values)
    pq.write_table(table, str(path))


def _loggable(inputs: pd.DataFrame) -> pd.DataFrame:
    """The inputs without bulky values: bytes (image files) and arrays become their size in
    bytes, in a column renamed ``<column>.bytes``."""
    frame = inputs.reset_index(drop=True)
    renamed: dict[Any, str] = {}
    for column in frame.columns:
        if frame[column].dtype != object:
            continue
        if frame[column].map(lambda v: isinstance(v, _BULKY)).any():
            # A path among file bytes is not logged either: one type per column.
            frame[column] = frame[column].map(_size)
            renamed[column] = f"{column}{BYTES_SUFFIX}"
    return frame.rename(columns=renamed) if renamed else frame


_BULKY = (bytes, bytearray, memoryview, np.ndarray)


def _size(value: Any) -> float:
    if isinstance(value, np.ndarray):
        return float(value.nbytes)
    if isinstance(value, memoryview):
        return float(value.nbytes)
    if isinstance(value, (bytes, bytearray)):
        return float(len(value))
    return float("nan")


def _parquet_safe(frame: pd.DataFrame) -> pd.DataFrame:
    """Object columns Parquet cannot type (numbers and text mixed, as requests may send them)
    become text; missing values stay missing."""
    import pandas as pd

    for column in frame.columns:
        series = frame[column]
        if series.dtype != object:
            continue
        inferred = pd.api.types.infer_dtype(series, skipna=True)
        if inferred in ("string", "empty", "bytes", "boolean", "integer", "floating", "decimal"):
            continue
        frame[column] = series.map(lambda v: v if _missing(v) else str(v)).astype(object)
    return frame


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))


def _now() -> float:
    return time.time()
