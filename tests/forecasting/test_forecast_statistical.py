"""StatsForecast's models through mlsmith, on a series statsmodels ships."""

from __future__ import annotations

import numpy as np
import pytest

from mlsmith.forecasting.baselines import seasonal_naive
from mlsmith.forecasting.metrics import ForecastCell, evaluate_forecasts
from mlsmith.forecasting.windows import backtest_windows, history_and_truth
from mlsmith.runtime.statistical import STATISTICAL_MODELS, statistical_forecast

pytest.importorskip("statsforecast")


def elnino() -> np.ndarray:
    """Monthly sea surface temperatures, 1950-2010 (statsmodels' El Nino data set)."""
    from statsmodels.datasets import elnino as data

    table = data.load_pandas().data
    return table.drop(columns="YEAR").to_numpy(dtype=np.float64).ravel()


@pytest.mark.parametrize("kind", sorted(STATISTICAL_MODELS))
def test_each_model_forecasts_with_intervals_that_nest(kind: str) -> None:
    y = elnino()[-120:]
    forecast = statistical_forecast(kind, y[:-12], 12, season_length=12, levels=[80, 95])
    assert forecast.point.shape == (12,) and np.isfinite(forecast.point).all()
    lo80, hi80 = forecast.intervals[80.0]
    lo95, hi95 = forecast.intervals[95.0]
    assert (lo95 <= lo80).all() and (lo80 <= forecast.point).all()
    assert (forecast.point <= hi80).all() and (hi80 <= hi95).all()


def backtest(y: np.ndarray, kind: str) -> list[ForecastCell]:
    """The last 3 years as 3 windows of 12 months: ``kind`` or the seasonal naive baseline."""
    cells = []
    for window in backtest_windows(len(y), horizon=12, windows=3):
        history, truth = history_and_truth(y, window)
        if kind == "seasonal_naive":
            point, intervals = seasonal_naive(history, 12, 12), {}
        else:
            forecast = statistical_forecast(kind, history, 12, 12, levels=[80])
            point, intervals = forecast.point, forecast.intervals
        cells.append(ForecastCell("y", window.index, history, truth, point, intervals))
    return cells


def test_on_el_nino_the_intervals_cover_about_as_promised() -> None:
    """Real data: 36 monthly truths, 80% intervals; MASE near the seasonal naive's (El Nino's
    last years are hard: ETS scores 1.03 there against the seasonal naive's 0.89)."""
    report = evaluate_forecasts(backtest(elnino(), "ets"), 12, levels=[80], n_resamples=0)
    naive = evaluate_forecasts(backtest(elnino(), "seasonal_naive"), 12, n_resamples=0)
    assert 0.6 <= report["coverage"]["value"] <= 1.0  # type: ignore[operator]
    assert report["mase"]["value"] < 1.5 * naive["mase"]["value"]  # type: ignore[operator]


@pytest.mark.parametrize("kind", ["ets", "arima"])
def test_a_trend_the_seasonal_naive_cannot_follow_is_followed(kind: str) -> None:
    rng = np.random.default_rng(0)
    t = np.arange(120)
    y = 50 + 0.5 * t + 4 * np.sin(2 * np.pi * t / 12) + rng.normal(scale=0.5, size=len(t))
    model = evaluate_forecasts(backtest(y, kind), 12, n_resamples=0)
    naive = evaluate_forecasts(backtest(y, "seasonal_naive"), 12, n_resamples=0)
    assert model["mase"]["value"] < 0.5 * naive["mase"]["value"]  # type: ignore[operator]


def test_an_unknown_model_and_a_bad_history_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown statistical model"):
        statistical_forecast("prophet", np.arange(10.0), 2, 1)
    with pytest.raises(ValueError, match="finite"):
        statistical_forecast("ets", np.array([1.0, np.nan, 2.0]), 2, 1)
