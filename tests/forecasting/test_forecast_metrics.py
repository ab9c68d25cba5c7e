"""Forecast metrics: hand-computed cells, pooling, and intervals over series x windows."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mlsmith.forecasting.baselines import naive, seasonal_naive
from mlsmith.forecasting.metrics import (
    ForecastCell,
    cell_metrics,
    error_by_step,
    evaluate_forecasts,
    mase_scale,
    per_series,
)
from mlsmith.forecasting.windows import backtest_windows, history_and_truth


def cell(
    truth: list[float], point: list[float], history: list[float], **kw: object
) -> ForecastCell:
    return ForecastCell(
        series=str(kw.get("series", "a")),
        window=int(kw.get("window", 0)),  # type: ignore[call-overload]
        history=np.array(history),
        truth=np.array(truth),
        point=np.array(point),
        intervals=kw.get("intervals", {}),  # type: ignore[arg-type]
    )


def test_a_hand_computed_cell() -> None:
    got = cell_metrics(cell([1, 2, 3], [1, 3, 5], history=[1, 2, 4, 8]), season_length=1)
    assert got["mae"] == pytest.approx(1.0)
    assert got["rmse"] == pytest.approx(math.sqrt(5 / 3))
    assert got["smape"] == pytest.approx((0 + 2 / 5 + 4 / 8) / 3)
    assert got["mase"] == pytest.approx(1.0 / (7 / 3))  # naive one-step errors 1, 2, 4


def test_the_mase_scale_is_seasonal_and_undefined_for_a_flat_history() -> None:
    assert mase_scale(np.array([1.0, 5.0, 2.0, 7.0, 3.0]), 2) == pytest.approx((1 + 2 + 1) / 3)
    assert mase_scale(np.array([1.0, 5.0]), 12) == pytest.approx(4.0)  # too short: m = 1
    assert math.isnan(mase_scale(np.array([3.0, 3.0, 3.0]), 1))
    assert math.isnan(cell_metrics(cell([1], [1], history=[3, 3]), 1)["mase"])


def test_weighted_quantile_loss_and_coverage_by_hand() -> None:
    one = cell([2.0], [1.0], history=[0, 1], intervals={80.0: (np.array([0.0]), np.array([3.0]))})
    report = evaluate_forecasts([one], season_length=1, levels=[80.0], n_resamples=0)
    # pinball: median 0.5*1, q=0.1 at 0: 0.1*2, q=0.9 at 3: 0.1*1 -> 0.8 over 3 quantiles.
    assert report["wql"]["value"] == pytest.approx(2 * 0.8 / 3 / 2.0)
    assert report["coverage"]["value"] == report["coverage_80"]["value"] == 1.0
    assert "ci95" not in report["mae"]


def test_pooled_metrics_weigh_by_scale_and_point_metrics_by_cell() -> None:
    big = cell([100.0, 100.0], [90.0, 90.0], history=[0, 100], series="big")
    small = cell([1.0, 1.0], [1.0, 1.0], history=[0, 1], series="small")
    levels = {80.0: (np.array([0.0, 0.0]), np.array([200.0, 200.0]))}
    big_i = ForecastCell("big", 0, big.history, big.truth, big.point, levels)
    small_i = ForecastCell("small", 0, small.history, small.truth, small.point, levels)
    report = evaluate_forecasts([big_i, small_i], 1, levels=[80.0], n_resamples=0)
    assert report["mae"]["value"] == pytest.approx((10.0 + 0.0) / 2)
    assert report["coverage"]["value"] == pytest.approx(1.0)
    assert per_series([big, small], 1)["small"]["mae"] == 0.0
    assert error_by_step([big, small]) == pytest.approx([5.0, 5.0])


def seasonal_series(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    return 10 + 3 * np.sin(2 * np.pi * t / 12) + 0.02 * t + rng.normal(scale=0.3, size=n)


def backtest(forecaster: object, season: int = 12) -> list[ForecastCell]:
    cells = []
    for s in range(6):
        y = seasonal_series(96, seed=s)
        for window in backtest_windows(len(y), horizon=12, windows=3):
            history, truth = history_and_truth(y, window)
            point = forecaster(history, 12, season)  # type: ignore[operator]
            cells.append(ForecastCell(f"s{s}", window.index, history, truth, point))
    return cells


def test_on_seasonal_series_seasonal_naive_beats_naive_with_separated_intervals() -> None:
    seasonal = evaluate_forecasts(backtest(seasonal_naive), 12, n_resamples=500, seed=1)
    flat = evaluate_forecasts(backtest(naive), 12, n_resamples=500, seed=1)
    assert seasonal["mase"]["ci95"][1] < flat["mase"]["ci95"][0]  # type: ignore[index]
    for report in (seasonal, flat):
        low, high = report["mase"]["ci95"]  # type: ignore[misc]
        assert low <= report["mase"]["value"] <= high  # type: ignore[operator]
    again = evaluate_forecasts(backtest(seasonal_naive), 12, n_resamples=500, seed=1)
    assert again == seasonal


def test_bad_cells_are_refused() -> None:
    with pytest.raises(ValueError, match="one length"):
        cell_metrics(cell([1, 2], [1], history=[0, 1]), 1)
    with pytest.raises(ValueError, match="non-finite"):
        cell_metrics(cell([1, np.nan], [1, 1], history=[0, 1]), 1)
    with pytest.raises(ValueError, match="no 95% interval"):
        evaluate_forecasts([cell([1], [1], history=[0, 1])], 1, levels=[95.0])
    with pytest.raises(ValueError, match="no forecasts"):
        evaluate_forecasts([], 1)
