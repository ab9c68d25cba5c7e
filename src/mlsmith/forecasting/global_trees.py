"""A global gradient-boosted forecaster: one LightGBM model over every series' windows.

Direct strategy: for each forecast origin ``t`` of each series, the features are the last
``lags`` values as differences from the value at the origin, divided by the series' scale
(the mean absolute one-step change of its history), plus rolling means of those differences,
the lag-one autocorrelation of the recent one-step changes (how far a change persists) and the
origin's position in the season; the target for step ``h`` is the change from the origin to
``t + h`` on the same scale, per step (divided by ``h``), and ``h`` is a feature, so one model
forecasts every step. Working on scaled changes from the origin lets one model serve series of
any level and unit, and follow a trend a tree could not extrapolate on raw values; per step, a
steady trend is one target at every ``h``. The loss is the absolute error (``objective: l1``),
the error MASE scores, which one jump in a series cannot drag; ``bags`` models, each on its
own random rows and columns, are averaged, which steadies forecasts that one model's draw of
them would swing (the features live in :mod:`mlsmith.runtime.forecaster`, which a package runs).

Only values up to the origin ever enter a row's features, and training rows come from each
series' own history (what :func:`mlsmith.forecasting.windows.history_and_truth` hands over), so
a backtest window never sees its own future.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mlsmith.runtime.engines import import_library
from mlsmith.runtime.forecaster import (
    booster_file,
    default_lags,
    origin_features,
    series_scale,
    tree_forecast,
)
from mlsmith.runtime.series import Covariates


@dataclass
class GlobalTreeForecaster:
    """Fit once on many histories, then forecast each series' next ``horizon`` values."""

    horizon: int
    season_length: int = 1
    lags: int | None = None  # default: two seasons, at least the horizon, at least 8
    n_estimators: int = 300
    learning_rate: float = 0.05
    num_leaves: int = 31
    objective: str = "l1"
    bags: int = 5  # models averaged, each on its own random rows and columns (seed, seed + 1...)
    # direct: every step at once, the step a feature; recursive: one step ahead, forecast step
    # by step from its own forecasts (fewer rows to learn, errors that compound).
    strategy: str = "direct"
    seed: int = 0
    _models: list[Any] = field(default_factory=list, init=False, repr=False)

    @property
    def n_lags(self) -> int:
        return self.lags or default_lags(self.horizon, self.season_length)

    def fit(
        self,
        histories: Sequence[np.ndarray],
        covariates: Sequence[Covariates] | None = None,
        offsets: Sequence[int] | None = None,
    ) -> GlobalTreeForecaster:
        """Learn from every origin of every history that has ``n_lags`` values before it;
        ``covariates``: each history's (see :class:`Covariates`), read as raw values;
        ``offsets``: each one's season position at its first period."""
        lightgbm = import_library("lightgbm", "trees", "model.type 'lightgbm' for forecasting")
        rows, targets = [], []
        for i, history in enumerate(histories):
            y = _checked(history)
            scale = series_scale(y)
            learned = 1 if self.strategy == "recursive" else self.horizon
            for origin in range(self.n_lags, len(y)):
                steps = min(learned, len(y) - origin)
                features = origin_features(
                    y[:origin],
                    scale,
                    self.n_lags,
                    self.season_length,
                    cyclic=False,
                    offset=offsets[i] if offsets else 0,
                )
                for h in range(1, steps + 1):
                    extra = covariates[i].extra(origin, h) if covariates else np.zeros(0)
                    rows.append(np.concatenate([features, [h], extra]))
                    targets.append((y[origin + h - 1] - y[origin - 1]) / (scale * h))
        if not rows:
            raise ValueError(
                f"no history is longer than {self.n_lags} values: nothing to learn from"
            )
        x, t = np.asarray(rows), np.asarray(targets)
        self._models = [
            lightgbm.LGBMRegressor(
                n_estimators=self.n_estimators,
                learning_rate=self.learning_rate,
                num_leaves=self.num_leaves,
                objective=self.objective,
                min_child_samples=10,
                subsample=0.8,
                subsample_freq=1,
                colsample_bytree=0.8,
                random_state=self.seed + bag,
                n_jobs=1,
                verbose=-1,
            ).fit(x, t)
            for bag in range(max(self.bags, 1))
        ]
        return self

    def predict(
        self, history: np.ndarray, covariates: Covariates | None = None, offset: int = 0
    ) -> np.ndarray:
        """The next ``horizon`` values after ``history`` (whose first period is at ``offset``
        in the season)."""
        if not self._models:
            raise RuntimeError("fit the forecaster first")
        return tree_forecast(
            lambda rows: np.mean([m.predict(rows) for m in self._models], axis=0),
            _checked(history),
            lags=self.n_lags,
            season_length=self.season_length,
            steps=self.horizon,
            recursive=self.strategy == "recursive",
            covariates=covariates,
            offset=offset,
        )

    def save(self, directory: Path) -> None:
        """The fitted boosters, as :class:`~mlsmith.runtime.forecaster.SavedForecaster` reads
        them."""
        if not self._models:
            raise RuntimeError("fit the forecaster first")
        for bag, model in enumerate(self._models):
            model.booster_.save_model(str(directory / booster_file(bag)))


def _checked(history: np.ndarray) -> np.ndarray:
    y = np.asarray(history, dtype=np.float64)
    if y.ndim != 1 or len(y) < 2 or not np.isfinite(y).all():
        raise ValueError("a history must be a finite 1-D series of at least 2 values")
    return y
