"""mlsmith: a dataset and one YAML config in; a trained, evaluated, tracked model out.

The public API fits on one screen::

    import mlsmith
    run = mlsmith.train("examples/tabular.yaml", overrides=["train.epochs=5"])
    run.metrics["test"]["roc_auc"]          # {"value": ..., "ci95": [low, high]}
    run.predict(frame)                      # raw rows in, predictions out
    mlsmith.load_package(run.path).predict(frame)   # the same, without torch (its package)
    mlsmith.load_run(run.path).evaluate("other.csv")

Names are imported lazily so ``import mlsmith`` (and ``mlsmith --help``) stays instant: torch is
only loaded when something trains or predicts.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "train": "mlsmith.api",
    "evaluate": "mlsmith.api",
    "predict": "mlsmith.api",
    "forecast": "mlsmith.api",
    "check": "mlsmith.api",
    "lr_find": "mlsmith.api",
    "report": "mlsmith.api",
    "compare": "mlsmith.api",
    "tune": "mlsmith.api",
    "export": "mlsmith.api",
    "load_package": "mlsmith.api",
    "reproduce": "mlsmith.api",
    "register": "mlsmith.api",
    "promote": "mlsmith.api",
    "monitor": "mlsmith.api",
    "serve": "mlsmith.api",
    "Decision": "mlsmith.registry",
    "RegisteredVersion": "mlsmith.registry",
    "Package": "mlsmith.runtime.package",
    "TuneResult": "mlsmith.tuning",
    "load_run": "mlsmith.run",
    "Run": "mlsmith.run",
    "load_config": "mlsmith.config",
    "Config": "mlsmith.config",
    "MlsmithError": "mlsmith.errors",
    "ConfigError": "mlsmith.errors",
    "DataError": "mlsmith.errors",
    "RunError": "mlsmith.errors",
}

__all__ = [
    "Config",
    "ConfigError",
    "DataError",
    "Decision",
    "MlsmithError",
    "Package",
    "RegisteredVersion",
    "Run",
    "RunError",
    "TuneResult",
    "__version__",
    "check",
    "compare",
    "evaluate",
    "export",
    "forecast",
    "load_config",
    "load_package",
    "load_run",
    "lr_find",
    "monitor",
    "predict",
    "promote",
    "register",
    "report",
    "reproduce",
    "serve",
    "train",
    "tune",
]

if TYPE_CHECKING:
    from mlsmith.api import (
        check,
        compare,
        evaluate,
        export,
        forecast,
        load_package,
        lr_find,
        monitor,
        predict,
        promote,
        register,
        report,
        reproduce,
        serve,
        train,
        tune,
    )
    from mlsmith.config import Config, load_config
    from mlsmith.errors import ConfigError, DataError, MlsmithError, RunError
    from mlsmith.registry import Decision, RegisteredVersion
    from mlsmith.run import Run, load_run
    from mlsmith.runtime.package import Package
    from mlsmith.tuning import TuneResult


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'mlsmith' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
