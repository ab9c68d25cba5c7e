"""The forecasters ``model.type`` names for ``data.type: timeseries``, behind one call.

:func:`forecast_series` fits the model on every history and forecasts ``horizon`` steps after
each: StatsForecast's ``ets``, ``arima`` and ``theta`` one series at a time (with their own
prediction intervals), ``lightgbm`` one global model over all of them
(:class:`~mlsmith.forecasting.global_trees.GlobalTreeForecaster`, point forecasts), and the
four baselines (point forecasts). A forecaster holds no state between calls: a backtest window
fits it on that window's histories, ``mlsmith predict`` on the whole history given.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Protocol

import numpy as np

from mlsmith.forecasting.baselines import BASELINES
from mlsmith.forecasting.global_trees import GlobalTreeForecaster
from mlsmith.runtime.series import Covariates
from mlsmith.runtime.statistical import (
    STATISTICAL_MODELS,
    SeriesForecast,
    statistical_forecast,
)

# The global tree model's settings a LightGBM config section may set.
TREE_SETTINGS = ("n_estimators", "learning_rate", "num_leaves", "strategy")


class Forecaster:
    """A ``model.type`` of ``data.type: timeseries`` that only forecasts (no tabular form):
    what :mod:`mlsmith.families` imports for it."""

    family: ClassVar[str]

    def forecast(
        self,
        histories: Sequence[np.ndarray],
        horizon: int,
        season_length: int,
        levels: Sequence[float] = (),
    ) -> list[SeriesForecast]:
        """Each history's next ``horizon`` values (see :func:`forecast_series`)."""
        return forecast_series(self.family, histories, horizon, season_length, levels)


class ETSForecaster(Forecaster):
    """``model.type: ets``: StatsForecast's AutoETS, per series."""

    family = "ets"


class ARIMAForecaster(Forecaster):
    """``model.type: arima``: StatsForecast's AutoARIMA, per series."""

    family = "arima"


class ThetaForecaster(Forecaster):
    """``model.type: theta``: StatsForecast's AutoTheta, per series."""

    family = "theta"


def forecast_series(
    model: str,
    histories: Sequence[np.ndarray],
    horizon: int,
    season_length: int,
    levels: Sequence[float] = (),
    *,
    settings: dict[str, Any] | None = None,
    seed: int = 0,
    covariates: Sequence[Covariates] | None = None,
    offsets: Sequence[int] | None = None,
) -> list[SeriesForecast]:
    """Each history's next ``horizon`` values by ``model`` (a ``model.type`` or a baseline's
    name), with intervals at ``levels`` where the model gives them; ``covariates``: each
    history's (the baselines read none, ARIMA the known ones)."""
    if model in BASELINES:
        return [SeriesForecast(BASELINES[model](y, horizon, season_length)) for y in histories]
    if model in STATISTICAL_MODELS:
        return [
            statistical_forecast(
                model,
                y,
                horizon,
                season_length,
                levels=levels,
                known=covariates[i].known if covariates else None,
            )
            for i, y in enumerate(histories)
        ]
    if model == "lightgbm":
        tree = GlobalTreeForecaster(horizon, season_length, seed=seed)
        for key, value in (settings or {}).items():
            if key not in TREE_SETTINGS:
                raise ValueError(f"unknown setting {key!r} of the global tree forecaster")
            setattr(tree, key, value)
        tree.fit(histories, covariates, offsets)
        return [
            SeriesForecast(
                tree.predict(y, covariates[i] if covariates else None, offsets[i] if offsets else 0)
            )
            for i, y in enumerate(histories)
        ]
    raise ValueError(
        f"unknown forecaster {model!r}; one of {sorted([*BASELINES, *STATISTICAL_MODELS])} "
        "or lightgbm"
    )


def gives_intervals(model: str) -> bool:
    """Whether ``model``'s forecasts come with their own prediction intervals."""
    return model in STATISTICAL_MODELS


class ForecastFn(Protocol):
    """A forecaster ready to run: histories, horizon, levels (and each history's covariates)
    in, one forecast per history out."""

    def __call__(
        self,
        histories: Sequence[np.ndarray],
        horizon: int,
        levels: Sequence[float],
        covariates: Sequence[Covariates] | None = None,
        offsets: Sequence[int] | None = None,
    ) -> list[SeriesForecast]: ...


def forecaster_for(
    model: str, season_length: int, *, settings: dict[str, Any] | None = None, seed: int = 0
) -> tuple[ForecastFn, bool]:
    """``model``'s :data:`ForecastFn` (see :func:`forecast_series`), and whether its forecasts
    come with intervals of their own."""

    def forecast(
        histories: Sequence[np.ndarray],
        horizon: int,
        levels: Sequence[float],
        covariates: Sequence[Covariates] | None = None,
        offsets: Sequence[int] | None = None,
    ) -> list[SeriesForecast]:
        return forecast_series(
            model,
            histories,
            horizon,
            season_length,
            levels,
            settings=settings,
            seed=seed,
            covariates=covariates,
            offsets=offsets,
        )

    return forecast, gives_intervals(model)
