"""Opening a package folder as what it holds: rows to predictions, series to forecasts, or
images to masks and boxes."""

from __future__ import annotations

from pathlib import Path

from .forecaster import SavedForecaster
from .package import DATA_DIR, PACKAGE_FILE, PAYLOAD_DIR, Package, _read_json
from .scene_package import ScenePackage, is_scene

FORECAST_KIND = "forecast"


def load(
    directory: str | Path, *, providers: list[str] | None = None
) -> Package | SavedForecaster | ScenePackage:
    """The package in ``directory`` (a package folder, or its payload): a
    :class:`~.package.Package` (``predict(rows)``), for a forecasting run's package a
    :class:`~.forecaster.SavedForecaster` (``predict(history, horizon)``), for a segmentation
    or detection run's a :class:`~.scene_package.ScenePackage` (``predict(images)``)."""
    root = Path(directory)
    data = root / DATA_DIR / PAYLOAD_DIR if (root / "MLmodel").is_file() else root
    if is_forecast(data):
        return SavedForecaster(data, providers=providers)
    if is_scene(data):
        return ScenePackage(data, providers=providers)
    return Package(root, providers=providers)


def is_forecast(payload: Path) -> bool:
    """Whether the payload folder ``payload`` is a forecasting package's."""
    return _read_json(payload / PACKAGE_FILE).get("kind") == FORECAST_KIND
