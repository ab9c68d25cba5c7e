"""Writing a forecasting run's package: its saved forecaster in MLflow's model format.

The payload is the run's ``forecaster/`` folder (``forecaster.json`` and the global model's
booster or ONNX network) with ``package.json`` beside it; the inference code is
:mod:`mlsmith.runtime`, copied in as for every package, and MLflow's ``MLmodel`` declares a
signature of the history table's columns in and the forecast table's out, with ``horizon`` as
a parameter. Before it replaces the destination, the finished package is loaded by the runtime
and its forecasts from the run's own history compared with the run's forecaster's.
"""

from __future__ import annotations

import logging
import shutil
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mlsmith.files import write_json
from mlsmith.packaging.writer import (
    PACKAGE_DIR,
    ExportError,
    installed_version,
    package_workspace,
    replace_folder,
    save_pyfunc,
)
from mlsmith.runtime.forecaster import SavedForecaster
from mlsmith.runtime.loading import FORECAST_KIND
from mlsmith.runtime.package import DATA_DIR, EXPORT_FILE, PACKAGE_FILE, PAYLOAD_DIR

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

# Series whose forecasts the finished package must reproduce (a statistical model refits each).
CHECK_SERIES = 20
ENGINES = {"lightgbm": "lightgbm", "mlp": "onnx"}  # statistical models: statsforecast
# What each engine imports at forecast time (beside MLflow, NumPy and pandas).
ENGINE_PACKAGES = {"lightgbm": "lightgbm", "onnx": "onnxruntime", "statsforecast": "statsforecast"}


def write_forecast_package(
    forecaster_dir: Path,
    history: pd.DataFrame,
    target: Path,
    *,
    run_name: str,
    tolerance: float = 1e-6,
) -> dict[str, Any]:
    """Write and verify the package of the forecaster saved in ``forecaster_dir`` at ``target``
    (whole or not at all); ``history`` is the run's table, the package's check and example.
    Returns ``export.json``; :class:`ExportError` when the package does not forecast as the
    run's forecaster does."""
    started = time.perf_counter()
    reference = SavedForecaster(forecaster_dir)
    spec = reference.spec
    check = _check_history(history, reference)
    expected = reference.predict(check, source="the run's history")
    engine = ENGINES.get(spec.family, "statsforecast")
    with package_workspace(target) as work:
        payload = work / PAYLOAD_DIR
        shutil.copytree(forecaster_dir, payload)
        info = {
            "format_version": 1,
            "family": spec.family,
            "kind": FORECAST_KIND,
            "engine": engine,
            "model_file": spec.model_file,
            "run": run_name,
            "mlsmith_version": installed_version("mlsmith"),
        }
        write_json(payload / PACKAGE_FILE, info)
        package_dir = work / PACKAGE_DIR
        _save_mlflow_model(package_dir, payload, reference, check, expected, info)
        package = SavedForecaster(package_dir, providers=["CPUExecutionProvider"])
        got = package.predict(check, source="the run's history")
        if list(got.columns) != list(expected.columns) or len(got) != len(expected):
            raise ExportError(
                f"the package's forecasts ({list(got.columns)}, {len(got)} rows) differ in shape "
                f"from the run's ({list(expected.columns)}, {len(expected)} rows)"
            )
        numbers = [c for c in got.columns if c not in ("id", "time")]
        diff = float(np.abs(got[numbers].to_numpy(float) - expected[numbers].to_numpy(float)).max())
        scale = max(float(np.abs(expected["forecast"].to_numpy(float)).max()), 1.0)
        if diff > tolerance * scale:
            raise ExportError(
                "the finished package does not reproduce the run's forecaster on its history: "
                f"max |difference| {diff:.3g}"
            )
        export = {
            "serves": spec.family,
            "engine": engine,
            "tolerance": tolerance,
            "series_checked": int(check[spec.id_column].nunique()) if spec.id_column else 1,
            "rows_source": "the run's history",
            "package_check": {"max_abs_diff": diff, "compared_with": "mlsmith predict"},
            "formats": {engine: {"file": spec.model_file, "max_abs_diff": diff}},
            "seconds": round(time.perf_counter() - started, 2),
        }
        write_json(package_dir / DATA_DIR / PAYLOAD_DIR / EXPORT_FILE, export)
        replace_folder(package_dir, target)
    return export


def _check_history(history: pd.DataFrame, forecaster: SavedForecaster) -> pd.DataFrame:
    """The first :data:`CHECK_SERIES` series of the run's table; with known covariates, each
    series' last ``horizon`` periods become the periods to forecast (their target emptied), as
    a forecast of the future reads the covariates of the periods ahead."""
    import pandas as pd

    spec = forecaster.spec
    column = spec.id_column
    if column is not None:
        chosen = list(dict.fromkeys(history[column].tolist()))[:CHECK_SERIES]
        history = history[history[column].isin(chosen)]
    history = history.reset_index(drop=True)
    if not spec.known:
        return history
    times = history[spec.time_column]
    order = pd.to_datetime(times) if spec.freq else pd.to_numeric(times)
    ranked = history.assign(_order=order).sort_values("_order")
    groups = ranked.groupby(column) if column is not None else ranked.groupby(lambda _: 0)
    ahead = groups.tail(spec.horizon).index
    history = history.astype({spec.target: "float64"})
    history.loc[ahead, spec.target] = float("nan")
    return history


def _example(history: pd.DataFrame, forecaster: SavedForecaster) -> pd.DataFrame:
    """One series' last periods: a history a user of the package could send."""
    spec = forecaster.spec
    frame = history[forecaster.columns]
    if spec.id_column is not None:
        frame = frame[frame[spec.id_column] == frame[spec.id_column].iloc[0]]
    keep = max(spec.lags, 2 * spec.season_length, 2 * spec.horizon) + 1
    frame = frame.tail(keep).reset_index(drop=True)
    # Times as text and ids as text: what a JSON request carries.
    frame = frame.assign(**{spec.time_column: frame[spec.time_column].astype(str)})
    if spec.id_column is not None:
        frame = frame.assign(**{spec.id_column: frame[spec.id_column].astype(str)})
    return frame


def _save_mlflow_model(
    package_dir: Path,
    payload: Path,
    forecaster: SavedForecaster,
    history: pd.DataFrame,
    forecasts: pd.DataFrame,
    info: dict[str, Any],
) -> None:
    from mlflow.models import infer_signature

    example = _example(history, forecaster)
    horizon = {"horizon": int(forecaster.spec.horizon)}
    outputs = forecasts.assign(time=forecasts["time"].astype(str))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Inferred schema contains integer column.*")
        signature = infer_signature(example, outputs, params=horizon)
    names = ["mlflow-skinny", "numpy", "pandas", ENGINE_PACKAGES[info["engine"]]]
    save_pyfunc(
        package_dir,
        payload,
        signature=signature,
        input_example=(example, horizon),
        pip_requirements=[f"{name}=={installed_version(name)}" for name in names],
        info=info,
    )
