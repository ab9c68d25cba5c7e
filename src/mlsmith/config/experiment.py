"""The whole experiment: the top-level :class:`Config` and the checks that span its sections."""

from __future__ import annotations

from typing import Any

import yaml
from pydantic import Field, model_validator

from mlsmith.config.base import Section, flatten
from mlsmith.config.data import AnyDataConfig
from mlsmith.config.export import ExportConfig
from mlsmith.config.families import FAMILIES, KINDS, MODELS_FOR_DATA
from mlsmith.config.models import MLPConfig, ModelConfig
from mlsmith.config.track import CardConfig, EvalConfig, TrackConfig
from mlsmith.config.train import TrainConfig
from mlsmith.config.tune import TuneConfig

# The families whose networks can recompute activations in the backward pass.
GRADIENT_CHECKPOINTING = ("transformer", "torchvision")
# model.type lightgbm's defaults on time series (its global forecaster).
GLOBAL_TREE_DEFAULTS = {"n_estimators": 300, "learning_rate": 0.05, "strategy": "combined"}
# The families that learn to rank (data.task: ranking), the default first.
RANKING_FAMILIES = ("lightgbm", "xgboost", "mlp")
# The families that train from streamed table chunks (data.stream): a network fed batch by
# batch. Trees and scikit-learn estimators fit on every row at once.
STREAMING_FAMILIES = ("mlp",)


def _ranks(data: dict[str, Any]) -> bool:
    """Whether a raw data section asks for a ranking task (a query id implies one)."""
    return data.get("task") == "ranking" or (
        bool(data.get("group_column")) and data.get("task", "auto") == "auto"
    )


def _family_defaults(raw: Any) -> Any:
    """Give ``train.optimizer.lr`` and ``train.epochs`` the model family's own defaults where
    the config sets none."""
    if not isinstance(raw, dict) or not isinstance(raw.get("model"), dict):
        return raw
    family = FAMILIES.get(raw["model"].get("type"))
    train = raw.get("train", {})
    if family is None or not isinstance(train, dict):
        return raw
    if family.epochs is not None and "epochs" not in train:
        train = {**train, "epochs": family.epochs}
    optimizer = train.get("optimizer", {})
    if family.lr is not None and isinstance(optimizer, dict) and "lr" not in optimizer:
        train = {**train, "optimizer": {**optimizer, "lr": family.lr}}
    return {**raw, "train": train}


def _kind_defaults(raw: Any) -> Any:
    """Give ``train.checkpoint.monitor`` and ``train.early_stopping.monitor`` the data kind's
    own metric (val/miou, val/map_50), and the batch sizes its own defaults, where the config
    sets none."""
    if not isinstance(raw, dict) or not isinstance(raw.get("data"), dict):
        return raw
    kind = KINDS.get(raw["data"].get("type", "tabular"))
    train = raw.get("train", {})
    if kind is None or not isinstance(train, dict):
        return raw
    if kind.monitor is not None:
        for section in ("checkpoint", "early_stopping"):
            given = train.get(section, {})
            if isinstance(given, dict) and "monitor" not in given:
                train = {**train, section: {**given, "monitor": kind.monitor}}
    if kind.batch_size is not None:
        train = {"batch_size": kind.batch_size, "eval_batch_size": 4 * kind.batch_size, **train}
    return {**raw, "train": train}


class Config(Section):
    """The whole experiment: one YAML file."""

    experiment: str = Field("default", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    seed: int = 42
    output_dir: str = "runs"
    data: AnyDataConfig
    model: ModelConfig = Field(default_factory=MLPConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    track: TrackConfig = Field(default_factory=TrackConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    card: CardConfig = Field(default_factory=CardConfig)
    tune: TuneConfig | None = Field(None, description="search space for `mlsmith tune`")

    @model_validator(mode="before")
    @classmethod
    def _default_model_for_data(cls, raw: Any) -> Any:
        # The model's default type follows the data: an MLP for tables, a CNN for images...
        if isinstance(raw, dict) and isinstance(raw.get("data"), dict):
            kind = raw["data"].get("type", "tabular")
            model = raw.get("model", {})
            if kind in KINDS and isinstance(model, dict) and "type" not in model:
                default = KINDS[kind].default_model
                if _ranks(raw["data"]):
                    default = RANKING_FAMILIES[0]
                raw = {**raw, "model": {**model, "type": default}}
            model = raw.get("model", {})
            if kind == "timeseries" and isinstance(model, dict) and model.get("type") == "lightgbm":
                # The global forecaster has no validation rows to stop early on: fewer, slower
                # rounds than a table's LightGBM (chosen with bench/forecast.py); its forecast
                # is the mean of the direct and the recursive ones (steadier than either).
                raw = {**raw, "model": {**GLOBAL_TREE_DEFAULTS, **model}}
        return _kind_defaults(_family_defaults(raw))

    @model_validator(mode="after")
    def _model_fits_data(self) -> Config:
        allowed = MODELS_FOR_DATA.get(self.data.type, ())
        if self.model.type not in allowed:
            raise ValueError(
                f"model.type '{self.model.type}' does not work with data.type "
                f"'{self.data.type}'; use one of: {', '.join(allowed)}"
            )
        return self

    @model_validator(mode="after")
    def _ranking_fits_model(self) -> Config:
        if self.data.task != "ranking":
            return self
        if self.model.type not in RANKING_FAMILIES:
            raise ValueError(
                f"model.type '{self.model.type}' cannot rank (data.task: ranking); use one of: "
                f"{', '.join(RANKING_FAMILIES)}"
            )
        return self

    @model_validator(mode="after")
    def _forecast_fits_the_rest(self) -> Config:
        if self.data.type != "timeseries":
            if getattr(self.model, "strategy", "direct") != "direct":
                raise ValueError(
                    "model.strategy: applies to forecasting (data.type timeseries); remove it"
                )
            return self
        if self.eval.cv is not None:
            raise ValueError(
                "eval.cv: a forecast is scored by backtest windows (data.windows), not folds; "
                "remove eval.cv"
            )
        if self.eval.slices:
            raise ValueError(
                "eval.slices: a forecast is scored per series (backtest.json); remove eval.slices"
            )
        if self.train.distributed.nproc > 1:
            raise ValueError(
                "train.distributed.nproc: a forecasting run backtests in one process; set it to 1"
            )
        known = getattr(self.data, "known_covariates", [])
        past = getattr(self.data, "past_covariates", [])
        if (known or past) and self.model.type in ("ets", "theta"):
            raise ValueError(
                f"model.type '{self.model.type}' reads no covariates; use arima (known "
                "covariates), lightgbm or mlp, or remove data.known_covariates and "
                "data.past_covariates"
            )
        if past and getattr(self.model, "strategy", "direct") == "recursive":
            raise ValueError(
                "model.strategy 'recursive' forecasts from its own forecasts, and past "
                "covariates of the periods ahead are not known; use strategy 'direct' with "
                "data.past_covariates"
            )
        if past and self.model.type == "arima":
            raise ValueError(
                "model.type 'arima' reads known covariates only (it needs their future "
                "values); use lightgbm or mlp for data.past_covariates"
            )
        return self

    @model_validator(mode="after")
    def _streaming_fits_the_rest(self) -> Config:
        if not getattr(self.data, "stream", False):
            return self
        if self.model.type not in STREAMING_FAMILIES:
            raise ValueError(
                f"model.type '{self.model.type}' fits on every training row at once, which "
                f"data.stream does not hold in memory; use {', '.join(STREAMING_FAMILIES)} or "
                "remove data.stream"
            )
        if self.train.sampler == "balanced":
            raise ValueError(
                "train.sampler: 'balanced' draws rows of each class from anywhere in the "
                "training split, which data.stream reads chunk by chunk; use train.class_weights "
                "instead"
            )
        if self.eval.cv is not None:
            raise ValueError(
                "eval.cv: cross-validation refits on folds of rows held in memory, which "
                "data.stream does not hold; remove eval.cv or data.stream"
            )
        return self

    @model_validator(mode="after")
    def _checkpointing_fits_model(self) -> Config:
        if self.train.gradient_checkpointing and self.model.type not in GRADIENT_CHECKPOINTING:
            raise ValueError(
                f"train.gradient_checkpointing: applies to model.type "
                f"{' and '.join(GRADIENT_CHECKPOINTING)}, not '{self.model.type}' (the others "
                "are small networks or boosted trees, which do not need it); set it to false"
            )
        return self

    @model_validator(mode="after")
    def _mixing_fits_data(self) -> Config:
        for key in ("mixup", "cutmix"):
            if getattr(self.train, key) and self.data.type != "image":
                raise ValueError(
                    f"train.{key}: mixes images, and data.type is '{self.data.type}'; set it to 0"
                )
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-compatible dict of every value, defaults included."""
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        """Every value as YAML, in the order the sections are declared."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def flat(self) -> dict[str, Any]:
        """Dotted keys to leaf values, e.g. {'train.optimizer.lr': 0.001}."""
        return flatten(self.to_dict())
