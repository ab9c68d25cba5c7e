"""The table of model families and data kinds: the one list that every other list derives from.

Each ``model.type`` and each ``data.type`` is one row, holding its config section, the import
path of its implementation and the extra libraries it trains with. Everything else that lists
names derives from these two tables: the section lookups below, the config's defaults and
checks, and :mod:`mlsmith.families`, which imports the implementations on first use. The
Pydantic unions (``AnyDataConfig``, ``ModelConfig``) are written out so mypy can type them;
tests/test_families.py checks that they hold exactly the classes listed here.

Implementations are import paths, not imports, so reading this table never imports torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from mlsmith.config.base import Section
from mlsmith.config.data import (
    DataConfig,
    DataSourceConfig,
    DetectionDataConfig,
    ImageDataConfig,
    SegmentationDataConfig,
    TextDataConfig,
    TimeSeriesDataConfig,
)
from mlsmith.config.models import (
    ARIMAConfig,
    BagConfig,
    CNNConfig,
    CustomConfig,
    DeepLabConfig,
    ETSConfig,
    FasterRCNNConfig,
    FCNConfig,
    FCOSConfig,
    LightGBMConfig,
    MLPConfig,
    RetinaNetConfig,
    SklearnConfig,
    ThetaConfig,
    TorchvisionConfig,
    TransformerConfig,
    UNetConfig,
    XGBoostConfig,
)


@dataclass(frozen=True)
class ModelFamily:
    """One ``model.type``: its section, the data kinds it trains on, and where it lives."""

    config: type[Section]
    data: tuple[str, ...]
    """Data kinds (``data.type``) the family works on."""
    implementation: str
    """``module:Class`` of its :class:`mlsmith.models.base.Model` subclass."""
    packages: tuple[str, ...] = ()
    """Libraries beyond the core ones it trains with, recorded in run.json."""
    lr: float | None = None
    """The family's own ``train.optimizer.lr`` default, where the shared one (1e-3) is not the
    right one (chosen leave-one-dataset-out with ``bench/defaults.py``)."""
    epochs: int | None = None
    """The family's own ``train.epochs`` default (an upper bound: early stopping is on), where
    the shared one (20) is not the right one, chosen the same way."""


@dataclass(frozen=True)
class DataKind:
    """One ``data.type``: its section, its default model family, and where it lives."""

    config: type[DataSourceConfig]
    default_model: str
    """The ``model.type`` a config gets when it names none."""
    module: str
    """Module with ``prepare(config, preprocessor=None)`` and ``load_preprocessor(directory)``."""
    packages: tuple[str, ...] = ()
    """Libraries beyond the core ones it reads data with, recorded in run.json."""
    monitor: str | None = None
    """The metric that picks ``best.pt`` and stops training early when the config names none
    (``val/loss`` otherwise)."""
    batch_size: int | None = None
    """The kind's own ``train.batch_size`` default (and 4x that for ``eval_batch_size``), where
    rows' 128 and 1024 are not right: a scene image costs as much as thousands of rows."""


# model.type -> family. Error messages list the families in this order.
FAMILIES: dict[str, ModelFamily] = {
    "mlp": ModelFamily(
        MLPConfig,
        data=("tabular", "timeseries"),
        implementation="mlsmith.models.mlp:MLPModel",
        epochs=50,
    ),
    "cnn": ModelFamily(CNNConfig, data=("image",), implementation="mlsmith.models.cnn:CNNModel"),
    "torchvision": ModelFamily(
        TorchvisionConfig,
        data=("image",),
        implementation="mlsmith.models.torchvision_net:TorchvisionModel",
        packages=("torchvision",),
    ),
    "bag": ModelFamily(
        BagConfig, data=("text",), implementation="mlsmith.models.bag:BagModel", lr=3e-3
    ),
    "transformer": ModelFamily(
        TransformerConfig,
        data=("text",),
        implementation="mlsmith.models.transformer:TransformerModel",
    ),
    "lightgbm": ModelFamily(
        LightGBMConfig,
        data=("tabular", "timeseries"),
        implementation="mlsmith.models.trees:LightGBMModel",
        packages=("lightgbm",),
    ),
    "xgboost": ModelFamily(
        XGBoostConfig,
        data=("tabular",),
        implementation="mlsmith.models.trees:XGBoostModel",
        packages=("xgboost",),
    ),
    "sklearn": ModelFamily(
        SklearnConfig,
        data=("tabular",),
        implementation="mlsmith.models.estimators:SklearnModel",
        packages=("skops",),
    ),
    "custom": ModelFamily(
        CustomConfig,
        data=("tabular", "image", "text"),
        implementation="mlsmith.models.custom:CustomModel",
    ),
    # Forecasters: fitted by the backtest (mlsmith.forecasting), not through Model.fit.
    "ets": ModelFamily(
        ETSConfig,
        data=("timeseries",),
        implementation="mlsmith.forecasting.models:ETSForecaster",
        packages=("statsforecast",),
    ),
    "arima": ModelFamily(
        ARIMAConfig,
        data=("timeseries",),
        implementation="mlsmith.forecasting.models:ARIMAForecaster",
        packages=("statsforecast",),
    ),
    "theta": ModelFamily(
        ThetaConfig,
        data=("timeseries",),
        implementation="mlsmith.forecasting.models:ThetaForecaster",
        packages=("statsforecast",),
    ),
    # Segmentation: one class per pixel.
    "unet": ModelFamily(
        UNetConfig, data=("segmentation",), implementation="mlsmith.models.segmentation:UNetModel"
    ),
    "fcn": ModelFamily(
        FCNConfig,
        data=("segmentation",),
        implementation="mlsmith.models.segmentation:FCNModel",
        packages=("torchvision",),
    ),
    "deeplabv3": ModelFamily(
        DeepLabConfig,
        data=("segmentation",),
        implementation="mlsmith.models.segmentation:DeepLabModel",
        packages=("torchvision",),
    ),
    # Detection: boxes with labels and scores.
    "fasterrcnn": ModelFamily(
        FasterRCNNConfig,
        data=("detection",),
        implementation="mlsmith.models.detection:FasterRCNNModel",
        packages=("torchvision",),
        lr=3e-3,
    ),
    "retinanet": ModelFamily(
        RetinaNetConfig,
        data=("detection",),
        implementation="mlsmith.models.detection:RetinaNetModel",
        packages=("torchvision",),
        lr=3e-3,
    ),
    "fcos": ModelFamily(
        FCOSConfig,
        data=("detection",),
        implementation="mlsmith.models.detection:FCOSModel",
        packages=("torchvision",),
        lr=3e-3,
    ),
}

# data.type -> data kind.
KINDS: dict[str, DataKind] = {
    "tabular": DataKind(DataConfig, default_model="mlp", module="mlsmith.data.tabular"),
    "image": DataKind(
        ImageDataConfig,
        default_model="cnn",
        module="mlsmith.data.images",
        packages=("torchvision", "pillow"),
    ),
    "text": DataKind(
        TextDataConfig, default_model="bag", module="mlsmith.data.text", packages=("tokenizers",)
    ),
    "timeseries": DataKind(
        TimeSeriesDataConfig, default_model="arima", module="mlsmith.data.timeseries"
    ),
    "segmentation": DataKind(
        SegmentationDataConfig,
        default_model="unet",
        module="mlsmith.data.segmentation",
        packages=("torchvision", "pillow"),
        monitor="val/miou",
        batch_size=16,
    ),
    "detection": DataKind(
        DetectionDataConfig,
        default_model="fcos",
        module="mlsmith.data.detection",
        packages=("torchvision", "pillow", "pycocotools"),
        monitor="val/map_50",
        batch_size=8,
    ),
}


# --- views derived from the tables ------------------------------------------------------------

MODEL_CONFIGS: dict[str, type[Section]] = {name: f.config for name, f in FAMILIES.items()}
DATA_CONFIGS: dict[str, type[DataSourceConfig]] = {name: k.config for name, k in KINDS.items()}


def _models_for(kind: str) -> tuple[str, ...]:
    default = KINDS[kind].default_model
    others = [name for name, f in FAMILIES.items() if kind in f.data and name != default]
    return (default, *others)


# data.type -> the model types that work on it, its default first.
MODELS_FOR_DATA: dict[str, tuple[str, ...]] = {kind: _models_for(kind) for kind in KINDS}

# Sections whose class depends on their `type` key, with the classes by type.
TAGGED_SECTIONS: dict[str, Mapping[str, type[Section]]] = {
    "data": DATA_CONFIGS,
    "model": MODEL_CONFIGS,
}
