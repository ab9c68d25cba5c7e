"""The statistical models, one series at a time, through StatsForecast (the ``timeseries`` extra).

``model.type: ets | arima | theta`` are StatsForecast's automatic model selection (AutoETS,
AutoARIMA, AutoTheta): each fits one series' history and forecasts its next ``horizon`` values
with prediction intervals from the model itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .engines import import_library

# model.type -> StatsForecast's class
STATISTICAL_MODELS = {"ets": "AutoETS", "arima": "AutoARIMA", "theta": "AutoTheta"}


@dataclass(frozen=True)
class SeriesForecast:
    """A point forecast and its intervals (level in percent -> lower, upper bounds)."""

    point: np.ndarray
    intervals: dict[float, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)


def statistical_forecast(
    kind: str,
    history: np.ndarray,
    horizon: int,
    season_length: int,
    levels: Sequence[float] = (),
    known: np.ndarray | None = None,
) -> SeriesForecast:
    """Fit StatsForecast's ``kind`` model on ``history`` and forecast ``horizon`` steps.

    A season length the history cannot support (fewer than two full seasons) is dropped to 1,
    as a seasonal model needs two seasons to estimate its seasonal terms. ``known``: covariates
    known in advance, for the history's periods and the ``horizon`` after them (periods x k),
    ARIMA's exogenous regressors.
    """
    if kind not in STATISTICAL_MODELS:
        raise ValueError(f"unknown statistical model {kind!r}; one of {sorted(STATISTICAL_MODELS)}")
    library = import_library(
        "statsforecast.models", "timeseries", f"model.type '{kind}' (StatsForecast)"
    )
    y = np.asarray(history, dtype=np.float64)
    if y.ndim != 1 or len(y) < 2 or not np.isfinite(y).all():
        raise ValueError("a history must be a finite 1-D series of at least 2 values")
    season = season_length if len(y) >= 2 * season_length else 1
    model = getattr(library, STATISTICAL_MODELS[kind])(season_length=season)
    levels = [float(level) for level in levels]
    exogenous: dict[str, np.ndarray] = {}
    if known is not None and known.shape[1] > 0:
        exogenous = {"X": known[: len(y)], "X_future": known[len(y) : len(y) + horizon]}
    result = model.forecast(y=y, h=horizon, level=[_level(v) for v in levels] or None, **exogenous)
    intervals = {
        level: (
            np.asarray(result[f"lo-{_level(level)}"], dtype=np.float64),
            np.asarray(result[f"hi-{_level(level)}"], dtype=np.float64),
        )
        for level in levels
    }
    return SeriesForecast(np.asarray(result["mean"], dtype=np.float64), intervals)


def _level(level: float) -> int | float:
    """StatsForecast names its columns by the level as given: 80, not 80.0."""
    return int(level) if float(level).is_integer() else level
