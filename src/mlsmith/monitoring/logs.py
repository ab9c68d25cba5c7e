"""The prediction log's format, and reading it (and a labels file) back.

``mlsmith serve`` appends the log (:mod:`mlsmith.serving.predlog`) as Parquet files named
``predictions-<UTC time>-<pid>-<seq>.parquet`` in one directory, each written whole under a
temporary name and renamed in, so a reader never sees half a file. One row per predicted row:

``request_id`` (text), ``row`` (the row's position in its request), ``time`` (UTC timestamp),
``model`` (the served name), ``variant``, ``latency_ms`` (of the whole request), then every
input column as ``input.<column>`` and every output column as ``output.<column>``
(``output.prediction``, ``output.proba_<class>``). Bytes (image files) are logged as their
length, ``input.<column>.bytes``, never the bytes themselves.

A labels file (CSV or Parquet) says what the true outcomes were: a ``request_id`` column and a
``label`` column, one line per predicted row, in the request's row order; a ``row`` column may
give the position explicitly instead.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import TYPE_CHECKING

from mlsmith.errors import DataError

if TYPE_CHECKING:
    import pandas as pd

LOG_PREFIX = "predictions-"
LOG_SUFFIX = ".parquet"
INPUT = "input."
OUTPUT = "output."
BYTES_SUFFIX = ".bytes"
REQUEST_ID, ROW, TIME, MODEL, VARIANT, LATENCY = (
    "request_id",
    "row",
    "time",
    "model",
    "variant",
    "latency_ms",
)
LABEL = "label"


def log_file_name(when: float, pid: int, seq: int) -> str:
    """``predictions-<UTC time>-<pid>-<seq>.parquet``: sorts in time order, and no two
    processes (server workers) ever pick the same name."""
    stamp = dt.datetime.fromtimestamp(when, tz=dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    return f"{LOG_PREFIX}{stamp}-{pid}-{seq:06d}{LOG_SUFFIX}"


def log_files(directory: str | Path) -> list[Path]:
    """The log's finished files, oldest first (temporaries are hidden and never listed)."""
    return sorted(Path(directory).glob(f"{LOG_PREFIX}*{LOG_SUFFIX}"))


def read_prediction_log(directory: str | Path) -> pd.DataFrame:
    """Every row of the prediction log in ``directory``, in time order.

    A missing directory, one without log files, or an unreadable file is a DataError naming it.
    """
    import pandas as pd

    folder = Path(directory)
    if not folder.exists():
        raise DataError(f"{folder}: prediction log directory not found")
    if not folder.is_dir():
        raise DataError(f"{folder}: not a directory; --log takes the server's log.directory")
    files = log_files(folder)
    if not files:
        raise DataError(
            f"{folder}: no prediction log files ({LOG_PREFIX}*{LOG_SUFFIX}) in it; is it the "
            "directory the server's log.directory names, and has the server answered requests?"
        )
    frames = []
    for file in files:
        try:
            frames.append(pd.read_parquet(file))
        except Exception as exc:  # pyarrow raises many types for a damaged file
            raise DataError(f"{file}: not a readable prediction log file ({exc})") from None
    log = pd.concat(frames, ignore_index=True)
    if REQUEST_ID not in log.columns or TIME not in log.columns:
        raise DataError(f"{folder}: its files lack the {REQUEST_ID} and {TIME} columns of a log")
    if not len(log):
        raise DataError(f"{folder}: the prediction log holds no rows")
    return log.sort_values(TIME, kind="stable", ignore_index=True)


def logged_columns(log: pd.DataFrame, prefix: str) -> pd.DataFrame:
    """The ``input.`` or ``output.`` columns of ``log``, named as the model names them."""
    names = {c: c[len(prefix) :] for c in log.columns if str(c).startswith(prefix)}
    return log[list(names)].rename(columns=names)


def read_labels(path: str | Path) -> pd.DataFrame:
    """A labels file as ``request_id`` (text), ``row`` and ``label`` columns."""
    import pandas as pd

    file = Path(path)
    if not file.is_file():
        raise DataError(f"{file}: labels file not found")
    suffix = file.suffix.lower()
    try:
        if suffix == ".csv":
            frame = pd.read_csv(file, dtype={REQUEST_ID: str})
        elif suffix in (".parquet", ".pq"):
            frame = pd.read_parquet(file)
        else:
            raise DataError(f"{file}: a labels file is .csv or .parquet, not '{suffix or file}'")
    except DataError:
        raise
    except Exception as exc:  # parsers raise many types for a damaged file
        raise DataError(f"{file}: not readable ({exc})") from None
    missing = [c for c in (REQUEST_ID, LABEL) if c not in frame.columns]
    if missing:
        raise DataError(
            f"{file}: labels need the columns {REQUEST_ID} and {LABEL}; '{missing[0]}' not "
            f"found (columns: {', '.join(map(str, frame.columns))})"
        )
    out = frame[[REQUEST_ID, LABEL]].copy()
    if out[REQUEST_ID].isna().any():
        raise DataError(f"{file}: {REQUEST_ID} is empty on some lines")
    out[REQUEST_ID] = out[REQUEST_ID].astype(str)
    if ROW in frame.columns:
        rows = pd.to_numeric(frame[ROW], errors="coerce")
        if rows.isna().any() or (rows < 0).any():
            raise DataError(f"{file}: {ROW} must hold row positions (0, 1, ...) on every line")
        out[ROW] = rows.astype("int64")
    else:
        # One label per predicted row, in the request's order (as the feedback endpoint takes).
        out[ROW] = out.groupby(REQUEST_ID, sort=False).cumcount().astype("int64")
    if out.duplicated([REQUEST_ID, ROW]).any():
        first = out[out.duplicated([REQUEST_ID, ROW])].iloc[0]
        raise DataError(
            f"{file}: request {first[REQUEST_ID]} row {first[ROW]} is labelled more than once"
        )
    return out
