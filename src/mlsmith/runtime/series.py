"""Long-format tables to series: one row per (series, time), read into one array per series,
with the frequency and season length inferred, and the problems a forecast cannot start from
named (duplicate timestamps, irregular spacing, gaps, missing values, series too short).

A table has a time column, a target column and optionally an id column (many series in one
file; without it the table is one series). Times are dates (any format pandas parses) or whole
numbers (periods). The frequency is pandas' offset alias (``MS``, ``QS-OCT``, ``D``...), inferred
from the timestamps unless given; the season length follows from it (12 for monthly data, 4
for quarterly...) unless given.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .errors import DataError

if TYPE_CHECKING:
    import pandas as pd

# The season length of each frequency's base unit (the alias without its anchor or multiple):
# a year of months, quarters, weeks; a week of days; a day of hours.
SEASONS: dict[str, int] = {
    "Y": 1,
    "YS": 1,
    "A": 1,
    "AS": 1,
    "BY": 1,
    "BYS": 1,
    "Q": 4,
    "QS": 4,
    "BQ": 4,
    "BQS": 4,
    "M": 12,
    "MS": 12,
    "ME": 12,
    "BM": 12,
    "BMS": 12,
    "BME": 12,
    "SM": 24,
    "SMS": 24,
    "W": 52,
    "D": 7,
    "B": 5,
    "C": 5,
    "H": 24,
    "h": 24,
    "BH": 8,
    "bh": 8,
    "T": 60,
    "min": 60,
    "S": 60,
    "s": 60,
}
# The id given to the one series of a table without an id column.
SINGLE_SERIES = "series"


@dataclass(frozen=True)
class SeriesSet:
    """Every series of a table, each sorted by time: ``times[i]`` and ``values[i]`` are series
    ``ids[i]``'s. ``freq`` is None for integer (period) times."""

    ids: list[str]
    times: list[np.ndarray]
    values: list[np.ndarray]
    freq: str | None
    season_length: int
    # Per series: the known covariates (periods x k) and past covariates (periods x p) of its
    # observed periods, and the known covariates of the periods after them (future rows given
    # for a forecast); None without covariates.
    known: list[np.ndarray] | None = None
    past: list[np.ndarray] | None = None
    future_known: list[np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def lengths(self) -> list[int]:
        return [len(v) for v in self.values]


@dataclass(frozen=True)
class Covariates:
    """One series' covariates for one forecast: ``known`` for its history's periods and the
    ``horizon`` after them (periods x k), ``past`` for its history's periods only (x p)."""

    known: np.ndarray
    past: np.ndarray

    def extra(self, origin: int, h: int) -> np.ndarray:
        """What a model may read for step ``h`` from ``origin`` (the first period it does not
        see): the past covariates at the last seen period, the known ones there and at the
        forecast period."""
        return np.concatenate(
            [self.past[origin - 1], self.known[origin - 1], self.known[origin + h - 1]]
        )

    def window(self, origin: int, horizon: int) -> np.ndarray:
        """Every step's at once (a multi-output model): the past and known covariates at the
        last seen period, then the known ones of each of the ``horizon`` periods."""
        return np.concatenate(
            [
                self.past[origin - 1],
                self.known[origin - 1],
                self.known[origin : origin + horizon].ravel(),
            ]
        )


def read_series(
    frame: pd.DataFrame,
    *,
    time_column: str,
    target: str,
    id_column: str | None = None,
    freq: str | None = None,
    season_length: int | None = None,
    source: str = "input",
    known: Sequence[str] = (),
    past: Sequence[str] = (),
    future: bool = False,
) -> SeriesSet:
    """The series of ``frame``; a DataError naming the series and the time of the first
    duplicate, gap, irregular step or missing value.

    ``known`` and ``past`` name covariate columns (numbers, none missing). With ``future``,
    rows after a series' last value whose target is empty are its future periods: they must
    carry the known covariates, which a forecast of those periods reads.
    """
    import pandas as pd

    from .frames import require_columns

    require_columns(frame, [time_column, target], source, "time and target")
    if id_column is not None:
        require_columns(frame, [id_column], source, "data.id_column")
    require_columns(frame, [*known, *past], source, "covariate")
    times = _times(frame[time_column], time_column, source)
    values = pd.to_numeric(frame[target], errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values)
    ahead = bad if future and known else np.zeros(len(frame), dtype=bool)
    if (bad & ~ahead).any():
        row = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"{source}: {int(bad.sum())} rows have no numeric value in '{target}' (first: row "
            f"{frame.index[row]}, {frame[target].iloc[row]!r}); a forecast needs every period's "
            "value: fill or interpolate them first"
        )
    known_values = _covariates(frame, known, np.ones(len(frame), dtype=bool), source)
    past_values = _covariates(frame, past, ~ahead, source)
    ids = (
        np.asarray([str(v) for v in frame[id_column].tolist()])
        if id_column is not None
        else np.full(len(frame), SINGLE_SERIES)
    )
    if id_column is not None and frame[id_column].isna().any():
        raise DataError(f"{source}: some rows have no series id in '{id_column}'")
    order = np.lexsort((times, ids))
    names, starts = np.unique(ids[order], return_index=True)
    bounds = [*starts.tolist(), len(order)]
    rows = [order[a:b] for a, b in itertools.pairwise(bounds)]
    for name, r in zip(names, rows, strict=True):
        t = times[r]
        repeated = t[1:][t[1:] == t[:-1]]
        if len(repeated):
            raise DataError(
                f"{source}: series '{name}' has two rows for {_show(repeated[0])} in "
                f"'{time_column}'; aggregate them to one value per period"
            )
        later = ahead[r]
        if later.any() and (not later[-1] or (np.diff(later.astype(int)) < 0).any()):
            first = int(np.flatnonzero(later)[0])
            raise DataError(
                f"{source}: series '{name}' has no value in '{target}' at {_show(t[first])}, "
                "before its last value; only the periods after a series' last value (the ones "
                "to forecast) may leave the target empty"
            )
    observed = [r[~ahead[r]] for r in rows]
    integer = np.issubdtype(times.dtype, np.integer)
    chosen = None if integer else (freq or _infer_freq(names, [times[r] for r in observed], source))
    for name, r in zip(names, rows, strict=True):
        _require_regular(str(name), times[r], chosen, source)
    covaried = bool(known or past)
    return SeriesSet(
        ids=[str(n) for n in names],
        times=[times[r] for r in observed],
        values=[values[r] for r in observed],
        freq=chosen,
        season_length=season_length or season_length_of(chosen),
        known=[known_values[r] for r in observed] if covaried else None,
        past=[past_values[r] for r in observed] if covaried else None,
        future_known=[known_values[r[ahead[r]]] for r in rows] if covaried else None,
    )


def _covariates(
    frame: pd.DataFrame, columns: Sequence[str], required: np.ndarray, source: str
) -> np.ndarray:
    """``columns`` as a float matrix (rows x columns); a missing or non-numeric value in a
    ``required`` row is a DataError naming the column and row."""
    import pandas as pd

    matrix = np.empty((len(frame), len(columns)), dtype=np.float64)
    for j, column in enumerate(columns):
        matrix[:, j] = pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=np.float64)
        bad = ~np.isfinite(matrix[:, j]) & required
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise DataError(
                f"{source}: covariate '{column}' has no numeric value in {int(bad.sum())} rows "
                f"(first: row {frame.index[row]}, {frame[column].iloc[row]!r}); a covariate "
                "needs a number for every period it is read at"
            )
    return matrix


def season_length_of(freq: str | None) -> int:
    """The season length for a frequency alias (1 when it has no known season)."""
    if freq is None:
        return 1
    base = freq.split("-")[0].lstrip("0123456789")
    return SEASONS.get(base, 1)


def too_short(series: SeriesSet, horizon: int, windows: int, step: int) -> list[str]:
    """The series too short to be backtested: each needs, before its first window, at least
    two values of history (and a season of it for a seasonal model to see one)."""
    need = horizon + step * (windows - 1) + max(2, series.season_length)
    return [i for i, n in zip(series.ids, series.lengths, strict=True) if n < need]


def _times(column: pd.Series, name: str, source: str) -> np.ndarray:
    import pandas as pd

    if column.isna().any():
        row = int(np.flatnonzero(column.isna().to_numpy())[0])
        raise DataError(f"{source}: row {column.index[row]} has no time in '{name}'")
    if pd.api.types.is_integer_dtype(column):
        return column.to_numpy(dtype=np.int64)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "could not infer format"
            return pd.to_datetime(column).to_numpy()
    except (ValueError, TypeError):
        raise DataError(
            f"{source}: time column '{name}' holds values that are neither whole numbers nor "
            f"dates, e.g. {column.iloc[0]!r}"
        ) from None


def _infer_freq(names: np.ndarray, times: list[np.ndarray], source: str) -> str:
    """The frequency most series agree on (each with at least 3 timestamps)."""
    import pandas as pd

    found: dict[str, int] = {}
    for t in times:
        if len(t) >= 3:
            alias = pd.infer_freq(pd.DatetimeIndex(t))
            if alias is not None:
                found[alias] = found.get(alias, 0) + 1
    if not found:
        raise DataError(
            f"{source}: no regular frequency in the timestamps (irregular steps, or series of "
            "fewer than 3 values); set data.freq, e.g. 'MS' for monthly or 'D' for daily"
        )
    return max(found, key=lambda alias: found[alias])


def _require_regular(name: str, times: np.ndarray, freq: str | None, source: str) -> None:
    """Every step one period: a gap or an off-grid time is a DataError naming it."""
    import pandas as pd

    if len(times) < 2:
        return
    if freq is None:  # whole-number periods
        steps = np.diff(times)
        if (steps != 1).any():
            at = int(np.flatnonzero(steps != 1)[0])
            raise DataError(
                f"{source}: series '{name}' jumps from period {times[at]} to {times[at + 1]}; "
                "every period needs a value (fill the gap or interpolate)"
            )
        return
    expected = pd.date_range(start=times[0], periods=len(times), freq=freq).to_numpy()
    if len(expected) == len(times) and (expected == times).all():
        return
    off = int(np.flatnonzero(expected != times)[0])
    raise DataError(
        f"{source}: series '{name}' has {_show(times[off])} where frequency '{freq}' expects "
        f"{_show(expected[off])} (a gap, or a timestamp off the grid); every period needs "
        "exactly one value: fill gaps, or set data.freq to the data's real frequency"
    )


def _show(value: object) -> str:
    import pandas as pd

    if isinstance(value, np.datetime64):
        return str(pd.Timestamp(value))
    return str(value)
