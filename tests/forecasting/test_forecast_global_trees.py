"""The global LightGBM forecaster: it learns across series and never reads past a history."""

from __future__ import annotations

import numpy as np
import pytest

from mlsmith.forecasting.baselines import seasonal_naive
from mlsmith.forecasting.global_trees import GlobalTreeForecaster
from mlsmith.forecasting.metrics import ForecastCell, evaluate_forecasts
from mlsmith.forecasting.windows import backtest_windows, history_and_truth

pytest.importorskip("lightgbm")


def trending_seasonal(n: int, seed: int) -> np.ndarray:
    """Series of different levels, slopes and amplitudes: one model must serve them all."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    level, slope, amplitude = rng.uniform(10, 1000), rng.uniform(-1, 3), rng.uniform(2, 20)
    noise = rng.normal(scale=amplitude / 10, size=n)
    return level + slope * t + amplitude * np.sin(2 * np.pi * t / 12) + noise


def test_one_model_over_many_series_beats_the_seasonal_naive_on_trends() -> None:
    series = [trending_seasonal(96, seed) for seed in range(12)]
    cells: dict[str, list[ForecastCell]] = {"lightgbm": [], "seasonal_naive": []}
    for j, windows in enumerate(zip(*(backtest_windows(96, 12, 2) for _ in series), strict=True)):
        pieces = [history_and_truth(y, w) for y, w in zip(series, windows, strict=True)]
        model = GlobalTreeForecaster(12, 12, n_estimators=150).fit([h for h, _ in pieces])
        for i, (history, truth) in enumerate(pieces):
            point = model.predict(history)
            cells["lightgbm"].append(ForecastCell(str(i), j, history, truth, point))
            naive = seasonal_naive(history, 12, 12)
            cells["seasonal_naive"].append(ForecastCell(str(i), j, history, truth, naive))
    trees = evaluate_forecasts(cells["lightgbm"], 12, n_resamples=0)["mase"]["value"]
    naive = evaluate_forecasts(cells["seasonal_naive"], 12, n_resamples=0)["mase"]["value"]
    assert trees < 0.8 * naive  # type: ignore[operator]


def test_a_forecast_reads_only_the_history_it_is_given() -> None:
    """Appending the future to the training histories' copies changes nothing: predict sees its
    argument only, and what comes after a history cannot reach its forecast."""
    y = trending_seasonal(80, 1)
    model = GlobalTreeForecaster(6, 12, n_estimators=50).fit([y[:60]])
    history = y[:60].copy()
    first = model.predict(history)
    y[60:] = 1e6  # the future, changed
    np.testing.assert_array_equal(model.predict(y[:60]), first)
    assert first.shape == (6,) and np.isfinite(first).all()


def test_too_short_histories_and_an_unfitted_model_are_refused() -> None:
    with pytest.raises(ValueError, match="nothing to learn from"):
        GlobalTreeForecaster(3, 1, lags=8).fit([np.arange(5.0)])
    with pytest.raises(RuntimeError, match="fit the forecaster first"):
        GlobalTreeForecaster(3).predict(np.arange(10.0))
