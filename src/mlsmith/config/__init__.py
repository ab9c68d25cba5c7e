"""The experiment configuration: Pydantic sections per concern, and loading them from YAML.

Every section forbids unknown keys, so a typo fails before any work starts, with a suggestion.
The sections live in ``data``, ``models``, ``train``, ``track`` and ``tune``; the top-level
``Config`` in ``experiment``; YAML, overrides and error messages in ``loading``; the table of
model families and data kinds in ``families``. Everything public is re-exported here.
"""

from __future__ import annotations

from mlsmith.config.base import BUILTIN_PREFIX, Mode, Section, Task, flatten
from mlsmith.config.data import (
    AnyDataConfig,
    AugmentConfig,
    DataConfig,
    DataSourceConfig,
    ImageDataConfig,
    SplitConfig,
    TabularDataConfig,
    TextDataConfig,
    TimeSeriesDataConfig,
    TokenizerConfig,
)
from mlsmith.config.experiment import Config
from mlsmith.config.export import ExportConfig, ExportFormat, RegisterConfig
from mlsmith.config.families import (
    DATA_CONFIGS,
    FAMILIES,
    KINDS,
    MODEL_CONFIGS,
    MODELS_FOR_DATA,
    TAGGED_SECTIONS,
    DataKind,
    ModelFamily,
)
from mlsmith.config.loading import (
    apply_overrides,
    format_validation_error,
    load_config,
    parse_yaml,
    read_yaml_mapping,
)
from mlsmith.config.models import (
    ARIMAConfig,
    BagConfig,
    CNNConfig,
    CustomConfig,
    EmbeddingConfig,
    ETSConfig,
    LightGBMConfig,
    MLPConfig,
    ModelConfig,
    SklearnConfig,
    ThetaConfig,
    TorchvisionConfig,
    TransformerConfig,
    XGBoostConfig,
)
from mlsmith.config.track import CardConfig, CVConfig, EvalConfig, TrackConfig
from mlsmith.config.train import (
    CheckpointConfig,
    EarlyStoppingConfig,
    OptimizerConfig,
    ProfileConfig,
    SchedulerConfig,
    TrainConfig,
)
from mlsmith.config.tune import (
    CategoricalParam,
    FloatParam,
    IntParam,
    SearchParam,
    TuneConfig,
)

__all__ = [
    "BUILTIN_PREFIX",
    "DATA_CONFIGS",
    "FAMILIES",
    "KINDS",
    "MODELS_FOR_DATA",
    "MODEL_CONFIGS",
    "TAGGED_SECTIONS",
    "ARIMAConfig",
    "AnyDataConfig",
    "AugmentConfig",
    "BagConfig",
    "CNNConfig",
    "CVConfig",
    "CardConfig",
    "CategoricalParam",
    "CheckpointConfig",
    "Config",
    "CustomConfig",
    "DataConfig",
    "DataKind",
    "DataSourceConfig",
    "ETSConfig",
    "EarlyStoppingConfig",
    "EmbeddingConfig",
    "EvalConfig",
    "ExportConfig",
    "ExportFormat",
    "FloatParam",
    "ImageDataConfig",
    "IntParam",
    "LightGBMConfig",
    "MLPConfig",
    "Mode",
    "ModelConfig",
    "ModelFamily",
    "OptimizerConfig",
    "ProfileConfig",
    "RegisterConfig",
    "SchedulerConfig",
    "SearchParam",
    "Section",
    "SklearnConfig",
    "SplitConfig",
    "TabularDataConfig",
    "Task",
    "TextDataConfig",
    "ThetaConfig",
    "TimeSeriesDataConfig",
    "TokenizerConfig",
    "TorchvisionConfig",
    "TrackConfig",
    "TrainConfig",
    "TransformerConfig",
    "TuneConfig",
    "XGBoostConfig",
    "apply_overrides",
    "flatten",
    "format_validation_error",
    "load_config",
    "parse_yaml",
    "read_yaml_mapping",
]
