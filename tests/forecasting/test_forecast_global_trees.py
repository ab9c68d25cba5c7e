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


def test_combined_the_default_forecasts_the_mean_of_direct_and_recursive() -> None:
    """``strategy: combined`` (the default) fits both strategies' boosters and averages their
    forecasts: exactly the mean of what each alone forecasts; with past covariates, which a
    recursive forecast cannot read ahead, it fits direct alone."""
    from mlsmith.runtime.series import Covariates

    histories = [trending_seasonal(84, seed) for seed in range(3)]
    combined = GlobalTreeForecaster(6, 12, n_estimators=40, bags=2).fit(histories)
    assert combined.strategy == "combined" and combined.chosen == "combined"
    assert len(combined._models) == 4  # two direct boosters, then two recursive
    alone = {
        strategy: GlobalTreeForecaster(6, 12, n_estimators=40, bags=2, strategy=strategy).fit(
            histories
        )
        for strategy in ("direct", "recursive")
    }
    for y in histories:
        direct, recursive = alone["direct"].predict(y), alone["recursive"].predict(y)
        assert not np.allclose(direct, recursive)
        np.testing.assert_allclose(combined.predict(y), (direct + recursive) / 2)
    past = [Covariates(np.zeros((84 + 6, 0)), np.ones((84, 1))) for _ in histories]
    model = GlobalTreeForecaster(6, 12, n_estimators=20, bags=1).fit(histories, past)
    assert model.chosen == "direct" and len(model._models) == 1


def test_auto_fits_the_strategy_that_forecasts_the_last_horizons_better() -> None:
    """``strategy: auto`` scores both strategies on the histories' last two horizons, fitted on
    what comes before them, then fits the winner on the whole histories: the very model that
    strategy would have fitted."""
    histories = [trending_seasonal(84, seed) for seed in range(4)]
    auto = GlobalTreeForecaster(6, 12, n_estimators=40, bags=2, strategy="auto").fit(histories)
    assert auto.strategy == "auto" and set(auto.validation) == {"direct", "recursive"}
    assert all(np.isfinite(v) and v > 0 for v in auto.validation.values())
    assert auto.chosen == min(auto.validation, key=lambda k: auto.validation[k])
    fixed = GlobalTreeForecaster(6, 12, n_estimators=40, bags=2, strategy=auto.chosen)
    fixed.fit(histories)
    for y in histories:
        np.testing.assert_allclose(auto.predict(y), fixed.predict(y))


def test_auto_without_two_horizons_to_hold_out_or_with_past_covariates_is_direct() -> None:
    from mlsmith.runtime.series import Covariates

    short = [trending_seasonal(48, seed) for seed in range(3)]  # 48 - 12 < 36 lags + 2
    model = GlobalTreeForecaster(6, 12, n_estimators=20, bags=1, strategy="auto").fit(short)
    assert model.chosen == "direct" and model.validation == {}
    histories = [trending_seasonal(84, seed) for seed in range(2)]
    past = [Covariates(np.zeros((84 + 6, 0)), np.ones((84, 1))) for _ in histories]
    model = GlobalTreeForecaster(6, 12, n_estimators=20, bags=1, strategy="auto")
    model.fit(histories, past)
    assert model.chosen == "direct" and model.validation == {}
    with pytest.raises(ValueError, match="unknown strategy 'sideways'"):
        GlobalTreeForecaster(6, 12, strategy="sideways").fit(histories)


def test_a_recursive_forecast_reads_the_known_covariates_of_each_period_ahead() -> None:
    """One step at a time, each step reads its own period's known covariate (the rows cover the
    history and the periods forecast); past covariates cannot be read ahead."""
    from mlsmith.runtime.series import Covariates

    rng = np.random.default_rng(0)
    known = [rng.integers(0, 2, size=(66, 1)).astype(float) for _ in range(3)]
    histories = [trending_seasonal(60, seed) + 30 * k[:60, 0] for seed, k in enumerate(known)]
    covariates = [Covariates(k, np.zeros((60, 0))) for k in known]
    model = GlobalTreeForecaster(6, 12, n_estimators=40, bags=1, strategy="recursive")
    model.fit(histories, covariates)
    for y, k in zip(histories, known, strict=True):
        point = model.predict(y, Covariates(k, np.zeros((60, 0))))
        flipped = model.predict(y, Covariates(np.concatenate([k[:60], 1 - k[60:]]), k[:60, :0]))
        assert point.shape == (6,) and np.isfinite(point).all()
        assert not np.allclose(point, flipped)  # the periods ahead's covariate is read
    with pytest.raises(ValueError, match="cannot read past covariates"):
        model.predict(histories[0], Covariates(known[0], np.ones((60, 1))))
