"""Serving a forecasting package: a history table in, its series' next periods out.

A forecasting package is served under its name beside the row models, on the same paths:

- ``POST /v2/models/{name}/infer`` (Open Inference Protocol v2): one input tensor per column of
  the history table (the id column as BYTES, the time column as BYTES or INT64, the target
  and covariates as FP64), ``parameters: {"horizon": H}`` (default: the trained horizon); the
  outputs are the forecast table's columns (``id``, ``time``, ``forecast``, ``lo_<level>``,
  ``hi_<level>``), one value per forecast period.
- ``POST /v2/models/{name}/predict``: ``{"rows": [{column: value}, ...], "horizon": H}`` in,
  ``{"forecasts": [{"id": ..., "time": ..., "forecast": ..., ...}, ...]}`` out.

Each request is forecast on its own (the histories of two requests are not one table), in a
worker thread since a statistical model fits every series it is given. A history the package
cannot read (a missing column, a gap, a missing value) is a 400 naming it. A forecasting
package has no row signature to batch, no label feedback and no drift window, and it is not
one of an A/B route's variants.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from mlsmith.errors import MlsmithError
from mlsmith.serving.protocol import ProtocolError, Tensor

if TYPE_CHECKING:
    import pandas as pd

    from mlsmith.runtime.forecaster import SavedForecaster
    from mlsmith.serving.protocol import InferRequest

# Longest forecast a request may ask for, in multiples of the trained horizon: a guard against
# a request that would keep a worker busy for minutes.
MAX_HORIZONS = 10


@dataclass(frozen=True)
class ForecastEndpoint:
    """A served name that forecasts."""

    name: str
    forecaster: SavedForecaster
    version: str
    source: str

    def metadata(self) -> dict[str, Any]:
        """The v2 model metadata: the history's columns in, the forecast's out."""
        spec = self.forecaster.spec
        inputs = []
        for column in self.forecaster.columns:
            if column == spec.id_column:
                datatype = "BYTES"
            elif column == spec.time_column:
                datatype = "BYTES" if spec.freq else "INT64"
            else:
                datatype = "FP64"
            inputs.append({"name": column, "datatype": datatype, "shape": [-1]})
        outputs = [{"name": "id", "datatype": "BYTES", "shape": [-1]}] if spec.id_column else []
        outputs.append(
            {"name": "time", "datatype": "BYTES" if spec.freq else "INT64", "shape": [-1]}
        )
        outputs.append({"name": "forecast", "datatype": "FP64", "shape": [-1]})
        for level in spec.levels:
            for side in ("lo", "hi"):
                outputs.append({"name": f"{side}_{level:g}", "datatype": "FP64", "shape": [-1]})
        return {
            "name": self.name,
            "versions": [self.version],
            "platform": f"mlsmith_{spec.family}",
            "inputs": inputs,
            "outputs": outputs,
            "parameters": {
                "task": "forecast",
                "family": spec.family,
                "horizon": spec.horizon,
                "freq": spec.freq,
                "season_length": spec.season_length,
                "levels": spec.levels,
            },
        }

    @property
    def feedback_refusal(self) -> str:
        return (
            f"'{self.name}' forecasts: label feedback scores classifiers and regressors; a "
            "forecaster is scored by its backtest (`mlsmith train`) on newer history"
        )

    async def infer(self, request: InferRequest) -> list[Tensor]:
        """A v2 request's history tensors to the forecast table's columns."""
        history = history_from_tensors(request, self)
        return output_tensors(await self.forecast(history, request.parameters.get("horizon")))

    async def predict_json(self, body: dict[str, Any]) -> dict[str, Any]:
        """``{"rows": [...], "horizon": H}`` to ``{"forecasts": [...]}``."""
        history = history_from_rows(body.get("rows"), self)
        return {"forecasts": forecast_items(await self.forecast(history, body.get("horizon")))}

    async def forecast(self, frame: pd.DataFrame, horizon: Any) -> pd.DataFrame:
        """The forecasts of ``frame``'s series (400 for a history it cannot read)."""
        steps = _horizon(horizon, self.forecaster.spec.horizon)
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(
                None, lambda: self.forecaster.predict(frame, steps, source="the request")
            )
        except MlsmithError as exc:
            raise ProtocolError(str(exc)) from None


def history_from_tensors(request: InferRequest, endpoint: ForecastEndpoint) -> pd.DataFrame:
    """A v2 request's input tensors as the history table (400 naming a missing or unknown
    column, or columns of different lengths)."""
    import pandas as pd

    expected = endpoint.forecaster.columns
    columns: dict[str, np.ndarray] = {}
    for tensor in request.inputs:
        if tensor.name not in expected:
            raise ProtocolError(
                f"input '{tensor.name}' is not a column of the history; '{endpoint.name}' reads "
                f"{', '.join(expected)}"
            )
        data = tensor.data
        if data.dtype == object:
            data = np.asarray([v.decode() if isinstance(v, bytes) else v for v in data])
        columns[tensor.name] = data
    missing = [c for c in expected if c not in columns]
    if missing:
        raise ProtocolError(f"the request has no input {', '.join(map(repr, missing))}")
    lengths = {len(v) for v in columns.values()}
    if len(lengths) > 1:
        raise ProtocolError(
            f"the inputs have different lengths ({sorted(lengths)}); every column of the "
            "history needs one value per row"
        )
    return pd.DataFrame(columns)


def history_from_rows(rows: Any, endpoint: ForecastEndpoint) -> pd.DataFrame:
    """``{"rows": [...]}``'s rows as the history table (400 for anything but a non-empty list
    of objects holding every column)."""
    import pandas as pd

    if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) for r in rows):
        raise ProtocolError("'rows' must be a non-empty list of objects, one per period")
    expected = endpoint.forecaster.columns
    for i, row in enumerate(rows):
        missing = [c for c in expected if c not in row]
        if missing:
            raise ProtocolError(f"rows[{i}] has no {', '.join(map(repr, missing))}")
    return pd.DataFrame([{c: row[c] for c in expected} for row in rows])


def output_tensors(forecasts: pd.DataFrame) -> list[Tensor]:
    """The forecast table's columns as v2 output tensors."""
    tensors = []
    for column in forecasts.columns:
        values = forecasts[column]
        if column in ("id", "time") and values.dtype.kind not in "iu":
            data = np.asarray([_text(v) for v in values], dtype=object)
            tensors.append(Tensor(column, "BYTES", [len(data)], data))
        elif values.dtype.kind in "iu":
            tensors.append(Tensor(column, "INT64", [len(values)], values.to_numpy(np.int64)))
        else:
            tensors.append(Tensor(column, "FP64", [len(values)], values.to_numpy(np.float64)))
    return tensors


def forecast_items(forecasts: pd.DataFrame) -> list[dict[str, Any]]:
    """The forecast table as JSON objects, one per forecast period."""
    items = []
    for record in forecasts.to_dict(orient="records"):
        items.append(
            {
                k: _text(v) if k in ("id", "time") and not isinstance(v, int | np.integer) else v
                for k, v in record.items()
            }
        )
    return [{k: v.item() if isinstance(v, np.generic) else v for k, v in i.items()} for i in items]


def _text(value: Any) -> str:
    import pandas as pd

    if isinstance(value, np.datetime64 | pd.Timestamp):
        return str(pd.Timestamp(value).isoformat())
    return str(value)


def _horizon(value: Any, trained: int) -> int:
    if value is None:
        return trained
    if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value:
        raise ProtocolError(f"'horizon' must be a whole number of periods; found {value!r}")
    steps = int(value)
    if not 1 <= steps <= MAX_HORIZONS * trained:
        raise ProtocolError(
            f"'horizon' must be between 1 and {MAX_HORIZONS * trained} periods ({MAX_HORIZONS} "
            f"times the {trained} the model was trained for); found {steps}"
        )
    return steps
