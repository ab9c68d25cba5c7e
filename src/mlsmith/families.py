"""Model families and data kinds: the one place where config strings become classes and modules.

The names and import paths come from the table in :mod:`mlsmith.config.families`; this module
imports them on first use, so listing a family costs nothing until it is used (and
``mlsmith --help`` never imports torch).
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import TYPE_CHECKING, Any

from mlsmith.config.families import FAMILIES, KINDS
from mlsmith.errors import ConfigError, did_you_mean

if TYPE_CHECKING:
    from mlsmith.config import Config
    from mlsmith.forecasting.models import Forecaster
    from mlsmith.models.base import Model

# model.type -> "module:Class" of its Model subclass.
MODEL_FAMILIES: dict[str, str] = {name: f.implementation for name, f in FAMILIES.items()}

# data.type -> module with prepare(config, preprocessor=None) and load_preprocessor(directory).
DATA_KINDS: dict[str, str] = {name: kind.module for name, kind in KINDS.items()}


def packages(config: Config) -> tuple[str, ...]:
    """The libraries ``config``'s model family and data kind use, beyond the core ones."""
    family = FAMILIES.get(config.model.type)
    kind = KINDS.get(config.data.type)
    return (family.packages if family else ()) + (kind.packages if kind else ())


def model_family(name: str) -> type[Model]:
    """The Model class registered under ``name``; a forecaster (``ets``, ``arima``, ``theta``)
    is not one: it forecasts through :mod:`mlsmith.forecasting_pipeline`."""
    from mlsmith.models.base import Model as ModelBase

    cls = _resolve(MODEL_FAMILIES, name, "model.type")
    if not (isinstance(cls, type) and issubclass(cls, ModelBase)):
        raise ConfigError(
            f"model.type '{name}' is a forecaster: it has no trained model to load, export or "
            "serve; `mlsmith predict RUN --horizon H` refits it and forecasts"
        )
    return cls


def forecaster(name: str) -> type[Forecaster]:
    """The forecaster class registered under ``name`` (``ets``, ``arima``, ``theta``)."""
    from mlsmith.forecasting.models import Forecaster as ForecasterBase

    cls = _resolve(MODEL_FAMILIES, name, "model.type")
    if not (isinstance(cls, type) and issubclass(cls, ForecasterBase)):
        raise ConfigError(f"model.type '{name}' is not a forecaster")
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
