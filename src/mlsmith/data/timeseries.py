"""Time-series data (``data.type: timeseries``): a long table read into series.

A forecasting run has no row-wise preprocessing or train/val/test rows: it reads the table into
series (:mod:`mlsmith.runtime.series`) and scores forecasters by backtesting
(:mod:`mlsmith.backtest`). ``prepare`` and ``load_preprocessor``, the data-kind interface of
the supervised kinds, say so for the verbs that need rows.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from mlsmith.config import Config, TimeSeriesDataConfig
from mlsmith.data.tables import fingerprint, read_table
from mlsmith.errors import ConfigError, DataError
from mlsmith.runtime.series import SeriesSet, read_series

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)


def series_config(config: Config) -> TimeSeriesDataConfig:
    """The config's ``data`` section, which must be a time-series one."""
    if not isinstance(config.data, TimeSeriesDataConfig):
        raise TypeError(f"time-series data got a data section of type '{config.data.type}'")
    return config.data


def read_frame(config: Config, path: str | None = None) -> pd.DataFrame:
    """The raw table: ``data.path``, or another file of the same columns (a history)."""
    data = series_config(config)
    source = path or data.path
    frame = read_table(source, sep=data.sep, na_values=data.na_values)
    if len(frame) == 0:
        raise DataError(f"{source}: the table is empty (0 rows)")
    return frame


def load_series(
    config: Config, path: str | None = None, *, future: bool = False
) -> tuple[SeriesSet, str]:
    """The series of ``data.path`` (or ``path``) and the table's fingerprint; ``future``: rows
    after a series' last value may bring the known covariates of the periods to forecast."""
    data = series_config(config)
    frame = read_frame(config, path)
    used = {
        data.time_column,
        data.target,
        data.id_column,
        *data.known_covariates,
        *data.past_covariates,
    }
    unused = [str(c) for c in frame.columns if c not in used]
    if unused:
        # A column that could be a covariate: say so rather than ignore it silently.
        log.warning(
            "%s: columns %s are not used: list them in data.known_covariates or "
            "data.past_covariates to forecast with them",
            path or data.path,
            ", ".join(unused[:10]),
        )
    series = read_series(
        frame,
        time_column=data.time_column,
        target=data.target,
        id_column=data.id_column,
        freq=data.freq,
        season_length=data.season_length,
        source=path or data.path,
        known=data.known_covariates,
        past=data.past_covariates,
        future=future,
    )
    return series, fingerprint(frame)


# What the supervised verbs get for a time-series config.
NO_ROWS = (
    "data.type timeseries has no training rows to prepare: `mlsmith train` backtests a "
    "forecaster, `mlsmith predict RUN --horizon H` forecasts, and `mlsmith check` checks the "
    "series; this command works on tabular, image and text data"
)


def prepare(config: Config, *, preprocessor: Any = None) -> NoReturn:
    """Not for time series: there are no rows to split or encode."""
    raise ConfigError(NO_ROWS)


def load_preprocessor(directory: Path) -> NoReturn:
    """Not for time series (see :func:`prepare`)."""
    raise ConfigError(NO_ROWS)
