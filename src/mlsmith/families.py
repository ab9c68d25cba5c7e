"""Model families and data kinds: the one place where config strings become classes and modules.

Entries are import paths, imported on first use, so listing a family costs nothing until it
is used (and ``mlsmith --help`` never imports torch).
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import TYPE_CHECKING, Any

from mlsmith.errors import ConfigError, did_you_mean

if TYPE_CHECKING:
    from mlsmith.config import Config
    from mlsmith.models.base import Model

# model.type -> Model subclass
MODEL_FAMILIES: dict[str, str] = {
    "mlp": "mlsmith.models.mlp:MLPModel",
    "cnn": "mlsmith.models.cnn:CNNModel",
    "torchvision": "mlsmith.models.torchvision_net:TorchvisionModel",
    "bag": "mlsmith.models.bag:BagModel",
    "transformer": "mlsmith.models.transformer:TransformerModel",
    "lightgbm": "mlsmith.models.trees:LightGBMModel",
    "xgboost": "mlsmith.models.trees:XGBoostModel",
}

# data.type -> module with prepare(config, preprocessor=None) and load_preprocessor(directory)
DATA_KINDS: dict[str, str] = {
    "tabular": "mlsmith.data.tabular",
    "image": "mlsmith.data.images",
    "text": "mlsmith.data.text",
}


# Libraries a family or data kind trains with, recorded in run.json beside the core ones.
PACKAGES: dict[str, tuple[str, ...]] = {
    "torchvision": ("torchvision",),
    "lightgbm": ("lightgbm",),
    "xgboost": ("xgboost",),
    "image": ("torchvision", "pillow"),
    "text": ("tokenizers",),
}


def packages(config: Config) -> tuple[str, ...]:
    """The libraries ``config``'s model family and data kind use."""
    return PACKAGES.get(config.model.type, ()) + PACKAGES.get(config.data.type, ())


def model_family(name: str) -> type[Model]:
    """The Model class registered under ``name``."""
    cls: type[Model] = _resolve(MODEL_FAMILIES, name, "model.type")
    return cls


def data_kind(name: str) -> ModuleType:
    """The data module registered under ``name``."""
    module: ModuleType = _resolve(DATA_KINDS, name, "data.type")
    return module


def _resolve(table: dict[str, str], name: str, key: str) -> Any:
    if name not in table:
        raise ConfigError(
            f"{key}: unknown value '{name}'{did_you_mean(name, table)}; "
            f"registered: {', '.join(sorted(table))}"
        )
    module_name, _, attribute = table[name].partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, attribute) if attribute else module
