"""``mlsmith check`` on a time-series config: the series can be read and backtested.

Reading the series already refuses duplicate timestamps, gaps, off-grid times, irregular
spacing and missing values (:mod:`mlsmith.forecasting.series`); here each of those is a failed
row instead of an error, and the rest is judged: series too short for the backtest windows,
constant histories (no scale for MASE), and the windows themselves.
"""

from __future__ import annotations

import numpy as np

from mlsmith.checks import CheckReport, CheckResult, config_result
from mlsmith.config import Config
from mlsmith.errors import DataError


def series_checks(config: Config) -> CheckReport:
    """Every time-series check of ``config``, in the order they are shown."""
    from mlsmith.data.timeseries import load_series, series_config
    from mlsmith.forecasting.series import too_short

    data = series_config(config)
    results = [config_result(config)]
    try:
        series, _ = load_series(config)
    except DataError as error:
        results.append(CheckResult("data", "series readable", "fail", str(error)))
        return CheckReport(results, quick=True)
    lengths = series.lengths
    results.append(
        CheckResult(
            "data",
            "series readable",
            "pass",
            f"{len(series)} series of {min(lengths)} to {max(lengths)} periods; no duplicate "
            f"or missing periods; frequency {series.freq or 'whole-number periods'}, season "
            f"length {series.season_length}",
        )
    )
    flat = [i for i, y in zip(series.ids, series.values, strict=True) if np.ptp(y) == 0]
    results.append(
        CheckResult(
            "data",
            "constant series",
            "warn" if flat else "pass",
            f"{len(flat)} series never change ({', '.join(flat[:5])}): their MASE is undefined"
            if flat
            else "every series varies",
        )
    )
    step = data.step or data.horizon
    short = too_short(series, data.horizon, data.windows, step)
    results.append(
        CheckResult(
            "splits",
            "backtest windows",
            "fail" if short else "pass",
            f"{len(short)} series too short for {data.windows} window(s) of {data.horizon} "
            f"steps (step {step}) after a season of history: {', '.join(short[:5])}"
            if short
            else f"{data.windows} window(s) of {data.horizon} steps, step {step}: the last one "
            f"tests, the {data.windows - 1} before it validate; every series long enough",
        )
    )
    return CheckReport(results, quick=True)
