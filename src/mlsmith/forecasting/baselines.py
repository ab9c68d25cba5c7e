"""The four baselines every forecast is reported beside, computed on the same windows.

Each takes one series' history (oldest first) and returns the next ``horizon`` values:

* ``naive``: the last value, repeated.
* ``seasonal_naive``: the value one season earlier (the last full season, repeated); with a
  history shorter than a season, the naive forecast.
* ``drift``: the line through the first and last values, extended.
* ``window_average``: the mean of the last ``season_length`` values (or of the whole history
  when shorter).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Baseline = Callable[[np.ndarray, int, int], np.ndarray]


def naive(history: np.ndarray, horizon: int, season_length: int = 1) -> np.ndarray:
    """The last observed value, ``horizon`` times."""
    return np.full(horizon, _checked(history)[-1], dtype=np.float64)


def seasonal_naive(history: np.ndarray, horizon: int, season_length: int = 1) -> np.ndarray:
    """Each step's value from one season before (the last season, repeated)."""
    history = _checked(history)
    if season_length < 1:
        raise ValueError(f"season_length must be at least 1, got {season_length}")
    if len(history) < season_length:
        return naive(history, horizon)
    season = history[-season_length:]
    return np.resize(season, horizon).astype(np.float64)


def drift(history: np.ndarray, horizon: int, season_length: int = 1) -> np.ndarray:
    """The last value plus the average change per step so far, extended ``horizon`` steps."""
    history = _checked(history)
    slope = (history[-1] - history[0]) / (len(history) - 1) if len(history) > 1 else 0.0
    return history[-1] + slope * np.arange(1, horizon + 1, dtype=np.float64)


def window_average(history: np.ndarray, horizon: int, season_length: int = 1) -> np.ndarray:
    """The mean of the last season (or of the whole history when shorter)."""
    history = _checked(history)
    return np.full(horizon, history[-max(season_length, 1) :].mean(), dtype=np.float64)


BASELINES: dict[str, Baseline] = {
    "naive": naive,
    "seasonal_naive": seasonal_naive,
    "drift": drift,
    "window_average": window_average,
}


def _checked(history: np.ndarray) -> np.ndarray:
    history = np.asarray(history, dtype=np.float64)
    if history.ndim != 1 or len(history) == 0:
        raise ValueError(f"a history must be a non-empty 1-D series, got shape {history.shape}")
    if not np.isfinite(history).all():
        raise ValueError("a history must be finite (fill or drop missing values first)")
    return history
