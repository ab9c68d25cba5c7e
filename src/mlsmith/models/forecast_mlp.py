"""``model.type: mlp`` on time series: one windowed MLP over every series, trained by the Trainer.

The same inputs and targets as the global tree model (:mod:`mlsmith.forecasting.global_trees`):
for each origin of each series, the last ``lags`` values as changes from the value at the
origin, divided by the series' scale, plus rolling means of them, the persistence of recent
changes and the position in the season (as its sine and cosine); the network outputs all
``horizon`` scaled changes per step at once (step ``h``'s change divided by ``h``: the direct
multi-output strategy), so one forward pass forecasts every step. The network is
the tabular MLP (``model.hidden``, ``dropout``, ``activation``, ``norm``) with ``horizon``
outputs, trained by the same Trainer as every other network with the ``train:`` section: the
last ``horizon`` origins of every series validate (early stopping, best weights).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mlsmith.config import Config, MLPConfig
from mlsmith.runtime.forecaster import (
    default_lags,
    from_changes,
    network_row,
    origin_features,
    series_scale,
    step_changes,
)
from mlsmith.runtime.series import Covariates

if TYPE_CHECKING:
    import torch


class SeriesObjective:
    """The Trainer's view of a multi-step forecast: the mean absolute error of the scaled
    changes over every step (robust to a series' occasional jump), and that MAE as a metric."""

    metric_names = ("mae",)

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (output.float() - target).abs().mean()

    def decode(self, raw: np.ndarray) -> np.ndarray:
        return raw

    def truth(self, encoded: np.ndarray) -> np.ndarray:
        return encoded

    def metrics(self, truth: np.ndarray, decoded: np.ndarray) -> dict[str, float]:
        return {"mae": float(np.mean(np.abs(truth - decoded)))}


class GlobalMLPForecaster:
    """Fit once on many histories, then forecast each series' next ``horizon`` values."""

    def __init__(self, config: Config, horizon: int, season_length: int, work_dir: Path) -> None:
        if not isinstance(config.model, MLPConfig):
            raise TypeError(f"the MLP forecaster got a model section of type {config.model.type}")
        self.config = config
        self.horizon = horizon
        self.season_length = max(season_length, 1)
        self.lags = default_lags(horizon, self.season_length)
        self.work_dir = work_dir
        self.network: torch.nn.Module | None = None
        # The inputs' standardisation, from the training rows (identity without covariates).
        self.mean = np.zeros(0)
        self.std = np.ones(0)

    def fit(
        self,
        histories: Sequence[np.ndarray],
        covariates: Sequence[Covariates] | None = None,
        offsets: Sequence[int] | None = None,
    ) -> GlobalMLPForecaster:
        """Train on every origin with a full horizon after it; the last ``horizon`` origins of
        each series validate. ``covariates`` (each history's) join the inputs, standardised
        with the training rows' means and deviations; ``offsets``: each history's season
        position at its first period."""
        from mlsmith.data.batches import BatchOptions, TensorBatches
        from mlsmith.models.mlp import TabularMLP
        from mlsmith.training.reproducibility import seed_everything
        from mlsmith.training.trainer import Trainer

        train_x: list[np.ndarray] = []
        train_y: list[np.ndarray] = []
        val_x: list[np.ndarray] = []
        val_y: list[np.ndarray] = []
        for i, history in enumerate(histories):
            y = np.asarray(history, dtype=np.float64)
            scale = series_scale(y)
            origins = range(self.lags, len(y) - self.horizon + 1)
            held = set(list(origins)[-self.horizon :])
            for origin in origins:
                row = origin_features(
                    y[:origin],
                    scale,
                    self.lags,
                    self.season_length,
                    cyclic=True,
                    offset=offsets[i] if offsets else 0,
                )
                if covariates:
                    row = np.concatenate([row, covariates[i].window(origin, self.horizon)])
                target = step_changes(y, origin, self.horizon, scale)
                (val_x if origin in held else train_x).append(row)
                (val_y if origin in held else train_y).append(target)
        if not train_x or not val_x:
            raise ValueError(
                f"the MLP forecaster needs series longer than {self.lags + 2 * self.horizon} "
                "values (lags, then a horizon to learn from and one to validate on)"
            )
        stacked = np.asarray(train_x)
        self.mean = stacked.mean(axis=0)
        self.std = np.where(stacked.std(axis=0) > 1e-12, stacked.std(axis=0), 1.0)
        if not covariates:  # the scaled changes are already on one scale: leave them be
            self.mean, self.std = np.zeros_like(self.mean), np.ones_like(self.std)
        train_x = [(x - self.mean) / self.std for x in train_x]
        val_x = [(x - self.mean) / self.std for x in val_x]
        seed_everything(self.config.seed)
        assert isinstance(self.config.model, MLPConfig)
        network = TabularMLP(len(train_x[0]), [], self.horizon, self.config.model)
        # One fit per backtest window: the loop's overfitting warnings would repeat for each;
        # early stopping on the held-out origins already keeps the best epoch.
        cfg = self.config.train.model_copy(update={"preflight": False, "overfit_patience": 0})

        def batches(
            x: list[np.ndarray], y: list[np.ndarray], options: BatchOptions
        ) -> TensorBatches:
            inputs: dict[str, np.ndarray] = {
                "numeric": np.asarray(x, dtype=np.float32),
                "categorical": np.zeros((len(x), 0), dtype=np.int64),
            }
            return TensorBatches(inputs, np.asarray(y, dtype=np.float32), options)

        trainer = Trainer(cfg, checkpoint_dir=self.work_dir)
        trainer.fit(
            network,
            batches(train_x, train_y, BatchOptions.training(cfg, self.config.seed)),
            batches(val_x, val_y, BatchOptions.evaluation(cfg)),
            SeriesObjective(),
        )
        self.network = network.to("cpu").eval()
        return self

    def predict(
        self, history: np.ndarray, covariates: Covariates | None = None, offset: int = 0
    ) -> np.ndarray:
        """The next ``horizon`` values after ``history`` (whose first period is at ``offset``
        in the season)."""
        import torch

        if self.network is None:
            raise RuntimeError("fit the forecaster first")
        y = np.asarray(history, dtype=np.float64)
        row, scale = network_row(
            y, self.lags, self.season_length, self.horizon, covariates, self.mean, self.std, offset
        )
        inputs = torch.from_numpy(row.astype(np.float32))[None, :]
        with torch.inference_mode():
            out = self.network(numeric=inputs, categorical=torch.zeros((1, 0), dtype=torch.int64))
        return from_changes(y, scale, out[0].double().numpy())

    def inference_graph(self) -> torch.nn.Module:
        """The trained network with one input, the standardised features (a forecaster has no
        categorical columns): what is exported to ONNX for
        :class:`~mlsmith.runtime.forecaster.SavedForecaster` (input name
        :data:`~mlsmith.runtime.forecaster.NETWORK_INPUT`, width ``len(self.mean)``)."""
        import torch

        if self.network is None:
            raise RuntimeError("fit the forecaster first")

        class FeaturesOnly(torch.nn.Module):
            def __init__(self, network: torch.nn.Module) -> None:
                super().__init__()
                self.network = network

            def forward(self, features: torch.Tensor) -> torch.Tensor:
                empty = torch.zeros((features.shape[0], 0), dtype=torch.int64)
                return self.network(numeric=features, categorical=empty)

        return FeaturesOnly(self.network).eval()
