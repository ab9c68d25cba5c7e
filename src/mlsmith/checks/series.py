"""``mlsmith check`` on a time-series config: the series can be read and backtested.

Reading the series already refuses duplicate timestamps, gaps, off-grid times, irregular
spacing and missing values (:mod:`mlsmith.runtime.series`); here each of those is a failed
row instead of an error, and the rest is judged: series too short for the backtest windows,
constant histories (no scale for MASE), and the windows themselves.
"""

from __future__ import annotations

import numpy as np

from mlsmith.checks import CheckReport, CheckResult, config_result
from mlsmith.config import Config
from mlsmith.errors import DataError
from mlsmith.runtime.series import SeriesSet


def series_checks(config: Config) -> CheckReport:
    """Every time-series check of ``config``, in the order they are shown."""
    from mlsmith.data.timeseries import load_series, series_config
    from mlsmith.runtime.series import too_short

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
    results.append(covariate_leakage(series, data.known_covariates, data.past_covariates))
    return CheckReport(results, quick=True)


# A covariate this correlated with a future target value is that value, not a predictor.
LEAK_CORRELATION = 0.98


def covariate_leakage(series: SeriesSet, known: list[str], past: list[str]) -> CheckResult:
    """Fail a covariate that carries the target of a period a forecast cannot see yet: a known
    covariate that tracks the target of its own period (a forecast reads it for the periods it
    forecasts), or a past covariate that tracks a later period's target (its value at the
    origin would reveal the next one)."""
    if (not known and not past) or series.known is None or series.past is None:
        return CheckResult("splits", "covariate leakage", "skip", "no covariates")
    found = []
    for kind, names, matrices, first_shift in (
        ("known", known, series.known, 0),
        ("past", past, series.past, 1),
    ):
        for j, name in enumerate(names):
            for shift in range(first_shift, first_shift + 3):
                r = _mean_correlation(series.values, [m[:, j] for m in matrices], shift)
                if r >= LEAK_CORRELATION:
                    when = (
                        "the target of its own period"
                        if shift == 0
                        else f"the target {shift} period(s) later"
                    )
                    found.append(f"{kind} covariate '{name}' tracks {when} (correlation {r:.3f})")
                    break
    if found:
        return CheckResult(
            "splits",
            "covariate leakage",
            "fail",
            "; ".join(found) + ": a forecast would read the very values it must predict; "
            "drop the column, or list a measurement taken with the target in past_covariates",
        )
    return CheckResult(
        "splits",
        "covariate leakage",
        "pass",
        f"no covariate tracks a target the forecast cannot see yet "
        f"({len(known)} known, {len(past)} past)",
    )


def _mean_correlation(values: list[np.ndarray], covariate: list[np.ndarray], shift: int) -> float:
    """The mean over series of |corr(covariate[t], y[t + shift])| (series too short or flat
    are left out; 0 when none is left)."""
    found = []
    for y, x in zip(values, covariate, strict=True):
        a, b = (x[: len(x) - shift], y[shift:]) if shift else (x, y)
        if len(a) > 2 and np.ptp(a) > 0 and np.ptp(b) > 0:
            found.append(abs(float(np.corrcoef(a, b)[0, 1])))
    return float(np.mean(found)) if found else 0.0
