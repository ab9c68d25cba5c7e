"""Forecast accuracy over backtest windows, with bootstrap intervals over series x windows.

A cell is one series' forecast for one window. Each cell is scored on its own, then:

* ``mase``, ``smape``, ``mae``, ``rmse``: the mean over cells (each series and window counts
  once, as in the M4 competition), NaN cells left out;
* ``wql`` and ``coverage``: pooled over every cell's steps (sums over all cells, then the
  ratio), as AutoGluon and GluonTS pool the weighted quantile loss, so a large series weighs by
  its scale and a cell of zeros cannot divide by zero.

Definitions (``y`` the truth, ``f`` the point forecast, ``h`` steps):

* MASE: MAE divided by the in-sample MAE of the seasonal naive forecast on the cell's history
  (one-step errors ``|y_t - y_{t-m}|``, ``m`` the season length; ``m = 1`` when the history is
  not longer than a season). NaN for a constant history.
* sMAPE: the mean of ``2 |y - f| / (|y| + |f|)``, 0 where both are 0; a fraction in [0, 2]
  (the M4 definition without its factor 100).
* WQL: ``2 * sum_q sum_t pinball_q(y_t, f^q_t) / (|Q| * sum_t |y_t|)`` over the quantiles the
  intervals give (each level's two bounds) and the point forecast as the median.
* Coverage: the share of truths inside each level's interval (bounds included); ``coverage`` is
  the first level's, ``coverage_<level>`` every level's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from mlsmith.evaluation import json_number, mean_defined, ratio_interval
from mlsmith.runtime.forecaster import mase_scale

POINT_METRICS = ("mase", "smape", "mae", "rmse")


@dataclass(frozen=True)
class ForecastCell:
    """One series' forecast for one backtest window."""

    series: str
    window: int
    history: np.ndarray  # what the model saw (for the MASE scale)
    truth: np.ndarray
    point: np.ndarray
    # Interval level in percent (e.g. 80.0) -> (lower, upper) bounds per step.
    intervals: dict[float, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)


def cell_metrics(cell: ForecastCell, season_length: int) -> dict[str, float]:
    """MASE, sMAPE, MAE and RMSE of one cell."""
    y, f = _pair(cell)
    error = np.abs(y - f)
    denominator = np.abs(y) + np.abs(f)
    smape = np.divide(2.0 * error, denominator, out=np.zeros_like(error), where=denominator > 0)
    mae = float(error.mean())
    return {
        "mase": mae / mase_scale(cell.history, season_length),
        "smape": float(smape.mean()),
        "mae": mae,
        "rmse": float(np.sqrt(np.mean((y - f) ** 2))),
    }


def pinball(y: np.ndarray, quantile_forecast: np.ndarray, q: float) -> np.ndarray:
    """The quantile (pinball) loss of each step."""
    diff = y - quantile_forecast
    return np.maximum(q * diff, (q - 1.0) * diff)


def _interval_sums(cell: ForecastCell, levels: Sequence[float]) -> dict[str, tuple[float, float]]:
    """Each pooled metric's (numerator, denominator) contribution from one cell."""
    y, f = _pair(cell)
    sums: dict[str, tuple[float, float]] = {}
    losses = pinball(y, f, 0.5).sum()
    count = 1
    for level in levels:
        if level not in cell.intervals:
            raise ValueError(
                f"cell ({cell.series}, window {cell.window}) has no {level:g}% interval"
            )
        lo, hi = (np.asarray(b, dtype=np.float64) for b in cell.intervals[level])
        tail = (1.0 - level / 100.0) / 2.0
        losses += pinball(y, lo, tail).sum() + pinball(y, hi, 1.0 - tail).sum()
        count += 2
        sums[f"coverage_{_label(level)}"] = (float(((y >= lo) & (y <= hi)).sum()), float(len(y)))
    sums["wql"] = (2.0 * float(losses) / count, float(np.abs(y).sum()))
    return sums


def evaluate_forecasts(
    cells: Sequence[ForecastCell],
    season_length: int,
    levels: Sequence[float] = (),
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, dict[str, float | list[float | None] | None]]:
    """Aggregated metrics with percentile-bootstrap intervals over cells, in the shape
    :func:`mlsmith.evaluation.evaluate_outputs` gives (NaN as None; no ``ci95`` when
    ``n_resamples`` is 0). ``levels``: the interval levels to score (WQL and coverage)."""
    if not cells:
        raise ValueError("no forecasts to evaluate")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    per_cell = [cell_metrics(c, season_length) for c in cells]
    means = {name: np.array([m[name] for m in per_cell]) for name in POINT_METRICS}
    pooled: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    if levels:
        sums = [_interval_sums(c, levels) for c in cells]
        for name in sums[0]:
            pooled[name] = (
                np.array([s[name][0] for s in sums]),
                np.array([s[name][1] for s in sums]),
            )
        pooled["coverage"] = pooled[f"coverage_{_label(levels[0])}"]
    report: dict[str, dict[str, float | list[float | None] | None]] = {}
    for name, values in means.items():
        defined = ~np.isnan(values)
        report[name] = _entry(np.where(defined, values, 0.0), defined.astype(np.float64))
    for name in sorted(pooled, key=lambda k: (k != "wql", k != "coverage", k)):
        report[name] = _entry(*pooled[name])
    if n_resamples > 0:
        for name, entry in report.items():
            numerator, denominator = (
                pooled[name]
                if name in pooled
                else (np.nan_to_num(means[name]), (~np.isnan(means[name])).astype(np.float64))
            )
            bounds = ratio_interval(
                numerator,
                denominator,
                n_resamples=n_resamples,
                confidence=confidence,
                seed=seed,
            )
            entry["ci95"] = [json_number(b) for b in bounds]
    return report


def per_series(cells: Sequence[ForecastCell], season_length: int) -> dict[str, dict[str, float]]:
    """Each series' point metrics, averaged over its windows (for the report's table)."""
    grouped: dict[str, list[dict[str, float]]] = {}
    for cell in cells:
        grouped.setdefault(cell.series, []).append(cell_metrics(cell, season_length))
    return {
        series: {
            name: float(mean_defined(np.array([[m[name] for m in rows]]))[0])
            for name in POINT_METRICS
        }
        for series, rows in grouped.items()
    }


def error_by_step(cells: Sequence[ForecastCell]) -> list[float]:
    """The mean absolute error at each horizon step, over every cell (for the report)."""
    horizon = max(len(c.truth) for c in cells)
    totals, counts = np.zeros(horizon), np.zeros(horizon)
    for cell in cells:
        y, f = _pair(cell)
        totals[: len(y)] += np.abs(y - f)
        counts[: len(y)] += 1
    return [float(t / c) if c else math.nan for t, c in zip(totals, counts, strict=True)]


def _entry(
    numerator: np.ndarray, denominator: np.ndarray
) -> dict[str, float | list[float | None] | None]:
    total = float(denominator.sum())
    return {"value": json_number(float(numerator.sum()) / total if total > 0 else math.nan)}


def _pair(cell: ForecastCell) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(cell.truth, dtype=np.float64)
    f = np.asarray(cell.point, dtype=np.float64)
    if y.shape != f.shape or y.ndim != 1 or len(y) == 0:
        raise ValueError(
            f"cell ({cell.series}, window {cell.window}): truth and forecast must be 1-D and of "
            f"one length, got {y.shape} and {f.shape}"
        )
    if not (np.isfinite(y).all() and np.isfinite(f).all()):
        raise ValueError(f"cell ({cell.series}, window {cell.window}): non-finite values")
    return y, f


def _label(level: float) -> str:
    return f"{level:g}".replace(".", "_")
