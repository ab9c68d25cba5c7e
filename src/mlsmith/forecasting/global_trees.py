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

``strategy``: ``direct`` (every step at once), ``recursive`` (one step ahead, each forecast read
back as the last value: fewer rows, errors that compound), ``combined`` (the default: both
fitted, their forecasts averaged; the two err in different ways, so their mean is steadier than
either, and than choosing one on a short stretch of history, whose choice swung from window to
window) or ``auto``, which picks one of the two per fit on the history it is given: each
strategy is fitted on every series but its last two horizons and forecasts every origin of the
horizon after that (each with a whole horizon of truth the fit never saw), the lower mean
absolute error on each series' MASE scale wins (direct on a tie, and always with past
covariates, which a recursive forecast cannot read), and the model is fitted again on the whole
histories with it (:attr:`GlobalTreeForecaster.chosen`, what a saved forecaster records).
With past covariates, which a recursive forecast cannot read ahead, ``combined`` fits direct
alone.

Only values up to the origin ever enter a row's features, and training rows come from each
series' own history (what :func:`mlsmith.forecasting.windows.history_and_truth` hands over), so
a backtest window never sees its own future.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mlsmith.runtime.engines import import_library
from mlsmith.runtime.forecaster import (
    booster_file,
    default_lags,
    from_changes,
    mase_scale,
    origin_features,
    recursive_covariates,
    series_scale,
    tree_forecast,
    tree_rows,
)
from mlsmith.runtime.series import Covariates

log = logging.getLogger(__name__)

STRATEGIES = ("direct", "recursive")
# The seasons of values before the origin that the tree reads (see n_lags).
TREE_SEASONS = 3


@dataclass
class GlobalTreeForecaster:
    """Fit once on many histories, then forecast each series' next ``horizon`` values."""

    horizon: int
    season_length: int = 1
    lags: int | None = None  # default: TREE_SEASONS seasons, at least the horizon, at least 8
    n_estimators: int = 300
    learning_rate: float = 0.05
    num_leaves: int = 31
    objective: str = "l1"
    bags: int = 5  # models averaged, each on its own random rows and columns (seed, seed + 1...)
    # direct: every step at once, the step a feature; recursive: one step ahead, forecast step
    # by step from its own forecasts (fewer rows to learn, errors that compound); combined: the
    # mean of the two; auto: the one with the lower error on the last horizons of the history
    # (see the module).
    strategy: str = "combined"
    seed: int = 0
    # The strategy fitted (auto's choice; direct for combined with past covariates), and auto's
    # validation errors per strategy. Combined keeps the direct boosters, then the recursive.
    chosen: str = field(default="direct", init=False)
    validation: dict[str, float] = field(default_factory=dict, init=False, repr=False)
    _models: list[Any] = field(default_factory=list, init=False, repr=False)

    @property
    def n_lags(self) -> int:
        # Three seasons: a third lets the tree tell a season's shape from one year's anomaly
        # (El Nino's direct tree over the last 3 windows of bench/forecast.py: MASE 0.81 with
        # two seasons, 0.61 with three). The MLP keeps two: on short series (5 years of months)
        # a third season leaves it too few windows to learn from.
        return self.lags or default_lags(self.horizon, self.season_length, seasons=TREE_SEASONS)

    def fit(
        self,
        histories: Sequence[np.ndarray],
        covariates: Sequence[Covariates] | None = None,
        offsets: Sequence[int] | None = None,
    ) -> GlobalTreeForecaster:
        """Learn from every origin of every history that has ``n_lags`` values before it;
        ``covariates``: each history's (see :class:`Covariates`), read as raw values;
        ``offsets``: each one's season position at its first period. With ``strategy: auto``
        the strategy is chosen first (see the module)."""
        if self.strategy not in (*STRATEGIES, "combined", "auto"):
            raise ValueError(
                f"unknown strategy {self.strategy!r}; one of direct, recursive, combined or auto"
            )
        chosen = self.strategy
        if chosen == "auto":
            chosen = self._choose(histories, covariates, offsets)
        if chosen == "combined" and _has_past(covariates):
            chosen = "direct"  # a recursive forecast cannot read past covariates ahead
        parts = STRATEGIES if chosen == "combined" else (chosen,)
        self._models = [
            model
            for part in parts
            for model in self._boosters(histories, covariates, offsets, part)
        ]
        self.chosen = chosen
        return self

    def _choose(
        self,
        histories: Sequence[np.ndarray],
        covariates: Sequence[Covariates] | None,
        offsets: Sequence[int] | None,
    ) -> str:
        """``direct`` or ``recursive``, whichever forecasts the last horizons of the histories
        better when fitted on what comes before them (see the module)."""
        self.validation = {}
        if _has_past(covariates):
            return "direct"  # a recursive forecast cannot read past covariates ahead
        h = self.horizon
        kept = [
            i
            for i, y in enumerate(histories)
            if len(y) - 2 * h > self.n_lags + 1 and np.isfinite(np.asarray(y, dtype=float)).all()
        ]
        if not kept:
            return "direct"  # too short to hold two horizons out: the default
        cuts = [len(histories[i]) - 2 * h for i in kept]
        train = [
            np.asarray(histories[i], dtype=np.float64)[:cut]
            for i, cut in zip(kept, cuts, strict=True)
        ]
        train_covariates = [covariates[i] for i in kept] if covariates else None
        train_offsets = [offsets[i] for i in kept] if offsets else None
        for strategy in STRATEGIES:
            try:
                models = self._boosters(train, train_covariates, train_offsets, strategy)
            except ValueError:  # too few origins left to learn from
                self.validation = {}
                return "direct"
            errors = []
            for k, (i, cut) in enumerate(zip(kept, cuts, strict=True)):
                y = np.asarray(histories[i], dtype=np.float64)
                scale = mase_scale(y[:cut], self.season_length)
                if not np.isfinite(scale):
                    continue
                origins = range(cut, len(y) - h + 1)
                points = _batched_forecast(
                    models,
                    [y[:o] for o in origins],
                    lags=self.n_lags,
                    season_length=self.season_length,
                    steps=h,
                    recursive=strategy == "recursive",
                    covariates=train_covariates[k] if train_covariates else None,
                    offset=train_offsets[k] if train_offsets else 0,
                )
                truth = np.stack([y[o : o + h] for o in origins])
                errors.append(float(np.mean(np.abs(points - truth))) / scale)
            if not errors:  # constant series: no scale to compare the errors on
                self.validation = {}
                return "direct"
            self.validation[strategy] = float(np.mean(errors))
        chosen = min(STRATEGIES, key=lambda k: self.validation[k])
        log.debug("tree strategy %s (validation errors %s)", chosen, self.validation)
        return chosen

    def _boosters(
        self,
        histories: Sequence[np.ndarray],
        covariates: Sequence[Covariates] | None,
        offsets: Sequence[int] | None,
        strategy: str,
    ) -> list[Any]:
        """The ``bags`` boosters of ``strategy``, fitted on every origin of ``histories``."""
        lightgbm = import_library("lightgbm", "trees", "model.type 'lightgbm' for forecasting")
        rows, targets = [], []
        for i, history in enumerate(histories):
            y = _checked(history)
            scale = series_scale(y)
            learned = 1 if strategy == "recursive" else self.horizon
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
        return [
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

    def predict(
        self, history: np.ndarray, covariates: Covariates | None = None, offset: int = 0
    ) -> np.ndarray:
        """The next ``horizon`` values after ``history`` (whose first period is at ``offset``
        in the season)."""
        if not self._models:
            raise RuntimeError("fit the forecaster first")
        parts = STRATEGIES if self.chosen == "combined" else (self.chosen,)
        per_part = len(self._models) // len(parts)

        def boosted(models: list[Any]) -> Callable[[np.ndarray], np.ndarray]:
            return lambda rows: np.asarray(np.mean([m.predict(rows) for m in models], axis=0))

        forecasts = [
            tree_forecast(
                boosted(self._models[k * per_part : (k + 1) * per_part]),
                _checked(history),
                lags=self.n_lags,
                season_length=self.season_length,
                steps=self.horizon,
                recursive=part == "recursive",
                covariates=covariates,
                offset=offset,
            )
            for k, part in enumerate(parts)
        ]
        return np.asarray(np.mean(forecasts, axis=0))

    def save(self, directory: Path) -> None:
        """The fitted boosters, as :class:`~mlsmith.runtime.forecaster.SavedForecaster` reads
        them."""
        if not self._models:
            raise RuntimeError("fit the forecaster first")
        for bag, model in enumerate(self._models):
            model.booster_.save_model(str(directory / booster_file(bag)))


def _batched_forecast(
    models: Sequence[Any],
    histories: Sequence[np.ndarray],
    *,
    lags: int,
    season_length: int,
    steps: int,
    recursive: bool,
    covariates: Covariates | None,
    offset: int,
) -> np.ndarray:
    """:func:`tree_forecast` of several histories of one series at once (one booster call per
    step rather than per history and step): histories x ``steps``."""

    def predict(rows: np.ndarray) -> np.ndarray:
        return np.asarray(np.mean([m.predict(rows) for m in models], axis=0))

    if not recursive:
        built = [tree_rows(y, lags, season_length, steps, covariates, offset) for y in histories]
        out = predict(np.concatenate([rows for rows, _ in built]))
        return np.stack(
            [
                from_changes(y, scale, out[k * steps : (k + 1) * steps])
                for k, (y, (_, scale)) in enumerate(zip(histories, built, strict=True))
            ]
        )
    covariates = recursive_covariates(covariates)
    grown = [np.asarray(y, dtype=np.float64) for y in histories]
    for _ in range(steps):
        built = [tree_rows(y, lags, season_length, 1, covariates, offset) for y in grown]
        out = predict(np.concatenate([rows for rows, _ in built]))
        grown = [
            np.concatenate([y, from_changes(y, scale, out[k : k + 1])])
            for k, (y, (_, scale)) in enumerate(zip(grown, built, strict=True))
        ]
    return np.stack([g[len(y) :] for g, y in zip(grown, histories, strict=True)])


def _has_past(covariates: Sequence[Covariates] | None) -> bool:
    return bool(covariates) and any(c.past.shape[1] for c in covariates or ())


def _checked(history: np.ndarray) -> np.ndarray:
    y = np.asarray(history, dtype=np.float64)
    if y.ndim != 1 or len(y) < 2 or not np.isfinite(y).all():
        raise ValueError("a history must be a finite 1-D series of at least 2 values")
    return y
