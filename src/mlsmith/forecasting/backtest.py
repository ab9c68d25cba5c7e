"""Rolling-origin backtesting of one forecaster over every series, and conformal intervals.

Window ``j`` of every series is forecast in one call (so a global model is fitted once per
window, on every series' history up to its own cutoff). A forecaster without intervals of its
own gets split-conformal ones: on each window, the absolute errors of the windows before it,
each divided by its series' MASE scale, give per-step quantiles, and the interval is the point
forecast plus or minus that many of the series' own scale. The windows before it include up to
``calibration`` more windows cut before the oldest one, forecast only for their errors (not
returned, not scored), so the oldest window has intervals too and every window's quantiles rest
on more errors; each still lies wholly in the history of the window it calibrates. Without
calibration windows (series too short for them, or ``calibration=0``), the oldest window has
no such intervals; a calibration window whose histories the model refuses (a ``ValueError``:
too short for it) is skipped.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from mlsmith.forecasting.metrics import ForecastCell
from mlsmith.forecasting.models import ForecastFn
from mlsmith.forecasting.windows import backtest_windows, history_and_truth
from mlsmith.runtime.forecaster import conformal_intervals, mase_scale, season_offsets
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
    calibration: int = 3,
) -> list[ForecastCell]:
    """Every series' forecast of every window, oldest window first, by ``forecaster`` (see
    :func:`mlsmith.forecasting.models.forecaster_for`); ``own_intervals``: its forecasts come
    with intervals (else conformal ones are added, calibrated also on up to ``calibration``
    windows before the oldest)."""
    extra = (
        0
        if own_intervals or not levels
        else calibration_windows(series, horizon, windows, step, calibration)
    )
    plans = [backtest_windows(len(y), horizon, windows + extra, step) for y in series.values]
    # Every window's history starts at its series' first period: one season offset each.
    offsets = season_offsets(series)
    cells: list[ForecastCell] = []
    for j in range(windows + extra):
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
        histories = [history for history, _ in pieces]
        if j < extra:
            try:
                forecasts = forecaster(histories, horizon, levels, covariates, offsets)
            except ValueError:  # histories too short for the model: calibrate without it
                continue
        else:
            forecasts = forecaster(histories, horizon, levels, covariates, offsets)
        widths = (
            {} if own_intervals else conformal_widths(cells, levels, horizon, series.season_length)
        )
        for name, (history, truth), forecast in zip(series.ids, pieces, forecasts, strict=True):
            intervals = forecast.intervals or conformal_intervals(
                forecast.point, history, widths, series.season_length
            )
            cells.append(ForecastCell(name, j - extra, history, truth, forecast.point, intervals))
    return [cell for cell in cells if cell.window >= 0]


def calibration_windows(
    series: SeriesSet, horizon: int, windows: int, step: int | None, most: int
) -> int:
    """How many windows (up to ``most``) fit before the oldest one while every series keeps at
    least two thirds of the history its oldest window has."""
    step = horizon if step is None else step
    first = min(series.lengths) - horizon - (windows - 1) * step
    return max(0, min(most, (first // 3) // step))


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
