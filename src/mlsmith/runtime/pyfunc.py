"""MLflow's entry point into a package (the pyfunc flavour's ``loader_module``).

``mlflow.pyfunc.load_model`` imports this module from the package's own ``code/`` folder and
calls :func:`_load_pyfunc` with the package's ``data/`` folder; what it returns predicts on a
pandas DataFrame of raw rows. Neither torch nor mlsmith needs to be installed.
"""

from __future__ import annotations

from typing import Any

# At runtime, not only for type checkers: MLflow reads predict's hints (a DataFrame: no schema
# inference from them, the package's signature is the schema).
import pandas as pd

from .forecaster import SavedForecaster
from .loading import load
from .package import Package
from .scene_package import ScenePackage


class PackageModel:
    """What ``mlflow.pyfunc`` wraps: ``predict(rows) -> predictions``."""

    def __init__(self, package: Package) -> None:
        self.package = package

    def predict(
        self, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        return self.package.predict(frame)


class ForecastModel:
    """What ``mlflow.pyfunc`` wraps for a forecasting package: ``predict(history) ->
    forecasts``, ``params={"horizon": H}`` (default: the horizon it was trained for)."""

    def __init__(self, forecaster: SavedForecaster) -> None:
        self.forecaster = forecaster

    def predict(
        self, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        horizon = (params or {}).get("horizon")
        return self.forecaster.predict(frame, int(horizon) if horizon else None)


class SceneModel:
    """What ``mlflow.pyfunc`` wraps for a segmentation or detection package: ``predict(images)``
    (a ``path`` column of image files or their bytes) -> masks (a PNG of class ids per image)
    or boxes (a row per box); see :mod:`.scene_package`."""

    def __init__(self, package: ScenePackage) -> None:
        self.package = package

    def predict(
        self, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        return self.package.predict(frame)


def _load_pyfunc(data_path: str) -> PackageModel | ForecastModel | SceneModel:
    loaded = load(data_path)
    if isinstance(loaded, SavedForecaster):
        return ForecastModel(loaded)
    if isinstance(loaded, ScenePackage):
        return SceneModel(loaded)
    return PackageModel(loaded)
