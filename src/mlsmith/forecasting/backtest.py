"""Rolling-origin backtesting of one forecaster over every series, and conformal intervals.

Window ``j`` of every series is forecast in one call (so a global model is fitted once per
window, on every series' history up to its own cutoff). A forecaster without intervals of its
own gets split-conformal ones: on each window, the absolute errors of the windows before it,
each divided by its series' MASE scale, give per-step quantiles, and the interval is the point
forecast plus or minus that many of the series' own scale. The oldest window has no earlier
errors, so it has no such intervals; with ``windows: 1`` no window does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from mlsmith.forecasting.metrics import ForecastCell
from mlsmith.forecasting.models import ForecastFn
from mlsmith.forecasting.windows import backtest_windows, history_and_truth
from mlsmith.runtime.forecaster import conformal_intervals, mase_scale
from mlsmith.runtime.series import Covariates, SeriesSet


def backtest(
    series: SeriesSet,
    forecaster: ForecastFn,
    *,
    horizon: int,
    windows: int,
    step: int | None = None,
    levels: Sequence[float] = (),
    own_intervals: bool = False,
) -> list[ForecastCell]:
    """Every series' forecast of every window, oldest window first, by ``forecaster`` (see
    :func:`mlsmith.forecasting.models.forecaster_for`); ``own_intervals``: its forecasts come
    with intervals (else conformal ones are added)."""
    plans = [backtest_windows(len(y), horizon, windows, step) for y in series.values]
    cells: list[ForecastCell] = []
    for j in range(windows):
        pieces = [
            history_and_truth(y, plan[j]) for y, plan in zip(series.values, plans, strict=True)
        ]
        covariates = None
        if series.known is not None and series.past is not None:
            # Known covariates up to the window's end (known in advance), past ones up to its
            # cutoff only: the one place they are cut for a window, as history_and_truth cuts y.
            covariates = [
                Covariates(known[: plan[j].cutoff + horizon], past[: plan[j].cutoff])
                for known, past, plan in zip(series.known, series.past, plans, strict=True)
            ]
        forecasts = forecaster([history for history, _ in pieces], horizon, levels, covariates)
        widths = (
            {} if own_intervals else conformal_widths(cells, levels, horizon, series.season_length)
        )
        for name, (history, truth), forecast in zip(series.ids, pieces, forecasts, strict=True):
            intervals = forecast.intervals or conformal_intervals(
                forecast.point, history, widths, series.season_length
            )
            cells.append(ForecastCell(name, j, history, truth, forecast.point, intervals))
    return cells


def conformal_widths(
    cells: Sequence[ForecastCell], levels: Sequence[float], horizon: int, season_length: int
) -> dict[float, np.ndarray]:
    """Per level, the per-step quantile of the scaled absolute errors of ``cells`` (empty when
    no cell has a defined scale)."""
    errors: list[list[float]] = [[] for _ in range(horizon)]
    for cell in cells:
        scale = mase_scale(cell.history, season_length)
        if not math.isfinite(scale):
            continue
        for h, error in enumerate(np.abs(cell.truth - cell.point) / scale):
            errors[h].append(float(error))
    if not all(errors):
        return {}
    widths = {}
    for level in levels:
        # The finite-sample correction of split conformal prediction: the ceil((n+1) q)-th
        # smallest of n errors (the largest when n is too small for the level).
        q = level / 100.0
        widths[level] = np.array(
            [np.sort(e)[min(len(e) - 1, math.ceil((len(e) + 1) * q) - 1)] for e in errors]
        )
    return widths
